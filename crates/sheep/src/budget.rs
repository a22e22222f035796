//! What connections may hold in memory: request slots and bytes per connection, and bytes
//! node-wide (request payloads read and not yet done with, replies not yet written) across
//! every connection of every listener, Sheepdog and NBD. A request takes its share before its
//! connection reads on, and waits for it when there is none (back-pressure: a client that
//! never reads its replies stops being read, and so does a connection that would take the
//! node over its budget, until replies drain). Requests of other sheep have a node-wide budget
//! of their own, so that clients filling theirs never stall the cluster's own traffic (a
//! gateway's copies, recovery). Each connection may have one request of at most `FLOOR` bytes
//! in flight outside the node-wide budget, so a connection is never starved by the others,
//! whatever they hold; larger requests wait for the budget in arrival order.
//! Owns: the accounting. Never: I/O, what a request means.

use std::sync::Arc;
use tokio::sync::Semaphore;

/// Default node-wide budget of each class (`--max-buffered`).
pub const DEFAULT_MAX_BUFFERED: usize = 256 << 20;
/// A request of at most this many bytes may always run, once per connection, outside the
/// node-wide budget (a node list, a 4 KiB read or write, an inode header).
pub const FLOOR: u64 = 128 << 10;
/// The node-wide budget counts in KiB, so that it may be larger than 4 GiB.
const UNIT: u64 = 1024;

/// Whose request: a client's, or another sheep's (a peer opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Client,
    Peer,
}

/// The node-wide budgets, shared by every listener.
pub struct NodeBudget {
    client: Arc<Semaphore>,
    peer: Arc<Semaphore>,
    /// Units of each.
    units: u32,
}

impl NodeBudget {
    /// `max` bytes for client requests, and as many for requests of other sheep.
    pub fn new(max: usize) -> Arc<NodeBudget> {
        let units = (max as u64)
            .div_ceil(UNIT)
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u64)
            as u32;
        Arc::new(NodeBudget {
            client: Arc::new(Semaphore::new(units as usize)),
            peer: Arc::new(Semaphore::new(units as usize)),
            units,
        })
    }

    fn pool(&self, class: Class) -> &Arc<Semaphore> {
        match class {
            Class::Client => &self.client,
            Class::Peer => &self.peer,
        }
    }

    /// Bytes of the client budget in use now.
    pub fn client_in_use(&self) -> u64 {
        (self.units as u64 - self.client.available_permits() as u64) * UNIT
    }
}

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_requests: usize,
    pub max_bytes: usize,
}

/// What one connection holds: request slots and bytes (payloads read, replies not yet sent),
/// and its one request outside the node-wide budget.
pub(crate) struct Budget {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    pub(crate) max_requests: u32,
    max_bytes: u32,
    node: Arc<NodeBudget>,
    floor: Arc<Semaphore>,
}

/// Where a request's node-wide share comes from.
enum Share {
    /// Nothing (a request of no bytes).
    None,
    /// `units` of the class's node-wide budget.
    Pool(Class, u32),
    /// The connection's one request outside it.
    Floor,
}

/// One request's share of its connection's budget and of the node's, given back when it is
/// dropped (its reply was sent, or will never be).
pub(crate) struct Held {
    budget: Arc<Budget>,
    bytes: u32,
    share: Share,
}

impl Budget {
    pub fn new(limits: ConnLimits, node: &Arc<NodeBudget>) -> Arc<Budget> {
        let max_requests = limits.max_requests.clamp(1, 1 << 20) as u32;
        let max_bytes = limits.max_bytes.clamp(1, u32::MAX as usize) as u32;
        Arc::new(Budget {
            requests: Arc::new(Semaphore::new(max_requests as usize)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_requests,
            max_bytes,
            node: node.clone(),
            floor: Arc::new(Semaphore::new(1)),
        })
    }

    /// Waits for a request slot and `bytes` of the connection's budget (all of it, if more:
    /// the request is then the connection's only one), then for `bytes` of the node's budget
    /// of `class` (all of it, if more), or, for a small request, the connection's floor if
    /// that comes first.
    pub async fn take(self: &Arc<Self>, bytes: u64, class: Class) -> Held {
        let n = bytes.min(self.max_bytes as u64) as u32;
        // Owned permits until all are there, so that a dropped wait gives back what it got.
        let r = self.requests.clone().acquire_owned().await;
        let b = self.bytes.clone().acquire_many_owned(n).await;
        let (Ok(r), Ok(b)) = (r, b) else {
            unreachable!("the budget's semaphores are never closed")
        };
        let units = bytes.div_ceil(UNIT).min(self.node.units as u64) as u32;
        let pool = self.node.pool(class).clone();
        let share = if units == 0 {
            Share::None
        } else if bytes <= FLOOR {
            tokio::select! {
                biased;
                p = pool.acquire_many_owned(units) => {
                    p.expect("never closed").forget();
                    Share::Pool(class, units)
                }
                f = self.floor.clone().acquire_owned() => {
                    f.expect("never closed").forget();
                    Share::Floor
                }
            }
        } else {
            let p = pool.acquire_many_owned(units).await;
            p.expect("never closed").forget();
            Share::Pool(class, units)
        };
        r.forget();
        b.forget();
        Held {
            budget: self.clone(),
            bytes: n,
            share,
        }
    }

    /// Something is in flight or waits to be sent.
    pub fn busy(&self) -> bool {
        self.requests.available_permits() < self.max_requests as usize
    }

    /// Waits until every request taken has been given back.
    pub async fn drained(&self) {
        let _ = self.requests.acquire_many(self.max_requests).await;
    }
}

impl Held {
    /// Keeps only `bytes` of what was taken (a reply smaller than the buffer asked for).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.min(self.bytes as usize) as u32;
        self.budget.bytes.add_permits((self.bytes - keep) as usize);
        self.bytes = keep;
        if let Share::Pool(class, units) = self.share {
            let keep = (bytes as u64).div_ceil(UNIT).min(units as u64) as u32;
            self.budget
                .node
                .pool(class)
                .add_permits((units - keep) as usize);
            self.share = Share::Pool(class, keep);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        match self.share {
            Share::None => {}
            Share::Pool(class, units) => self.budget.node.pool(class).add_permits(units as usize),
            Share::Floor => self.budget.floor.add_permits(1),
        }
        self.budget.bytes.add_permits(self.bytes as usize);
        self.budget.requests.add_permits(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `f`'s output if it is there within 50 ms (to show that it waits).
    async fn quick<F: std::future::Future>(f: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .ok()
    }

    /// `f`'s output if it is there within 10 s (it does not wait: there is room).
    async fn soon<F: std::future::Future>(f: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_secs(10), f).await.ok()
    }

    #[tokio::test]
    async fn a_connection_is_bounded_in_requests_and_bytes() {
        let node = NodeBudget::new(1 << 30);
        let b = Budget::new(
            ConnLimits {
                max_requests: 2,
                max_bytes: 1000,
            },
            &node,
        );
        let mut one = b.take(600, Class::Client).await;
        assert!(b.busy());
        // 600 + 600 > 1000: waits, until the first gives some back.
        assert!(quick(b.take(600, Class::Client)).await.is_none());
        one.shrink_to(100);
        let two = soon(b.take(600, Class::Client)).await.expect("fits now");
        // Two requests: a third waits for a slot even with bytes to spare.
        assert!(quick(b.take(0, Class::Client)).await.is_none());
        drop(one);
        drop(two);
        // Larger than the whole budget: taken alone.
        let big = b.take(1 << 30, Class::Client).await;
        assert!(quick(b.take(1, Class::Client)).await.is_none());
        drop(big);
        b.drained().await;
        assert!(!b.busy());
        assert_eq!(node.client_in_use(), 0);
    }

    #[tokio::test]
    async fn the_node_budget_is_shared_and_a_small_request_always_runs() {
        let node = NodeBudget::new(8 << 20);
        let conn = ConnLimits {
            max_requests: 128,
            max_bytes: 64 << 20,
        };
        let (a, b, c) = (
            Budget::new(conn, &node),
            Budget::new(conn, &node),
            Budget::new(conn, &node),
        );
        // `a` takes the whole node budget (a reply nobody reads).
        let held = a.take(8 << 20, Class::Client).await;
        assert_eq!(node.client_in_use(), 8 << 20);
        // `b` cannot take a large request, from any connection...
        assert!(quick(b.take(1 << 20, Class::Client)).await.is_none());
        // ...but each connection has one small one outside the budget.
        let small = soon(b.take(4096, Class::Client)).await.expect("floor");
        assert!(quick(b.take(4096, Class::Client)).await.is_none());
        let other = soon(c.take(4096, Class::Client))
            .await
            .expect("its own floor");
        drop(small);
        let again = soon(b.take(4096, Class::Client)).await.expect("floor back");
        // Peers have a budget of their own.
        let peer = soon(c.take(4 << 20, Class::Peer))
            .await
            .expect("peer budget");
        // A reply smaller than asked gives the rest back at once.
        let mut held = held;
        held.shrink_to(1 << 20);
        assert_eq!(node.client_in_use(), 1 << 20);
        let large = soon(b.take(4 << 20, Class::Client))
            .await
            .expect("room now");
        drop((held, large, other, again, peer));
        assert_eq!(node.client_in_use(), 0);
        // A waiting request given up takes nothing with it.
        let all = a.take(8 << 20, Class::Client).await;
        assert!(quick(b.take(2 << 20, Class::Client)).await.is_none());
        drop(all);
        assert_eq!(node.client_in_use(), 0);
        let _ = b.take(8 << 20, Class::Client).await;
    }
}
