//! The gateway: turns one client object request into peer requests on the nodes that the ring
//! places the object on, in parallel, and retries at the new epoch when membership changes.
//! A write is acknowledged only when every copy has it (durably, unless the node runs -n).
//! Owns: fan-out, copy selection, epoch retries. Never: touching the disk directly (the local
//! copy goes through `peer::local`, like any other copy).

use crate::node::{Node, View};
use crate::peer::{self, Done, StoreOp};
use crate::peers::WriteKind;
use bytes::Bytes;
use futures::future::join_all;
use proto::{Oid, SdNode, SdResult};
use std::sync::Arc;
use std::time::Duration;

/// How long a request keeps retrying through membership changes before it gives up (a peer
/// that stops answering is out of the membership well before that).
const RETRY_FOR: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A request that takes longer than this says so in the log, with why it was retried.
const SLOW: Duration = Duration::from_secs(2);

fn retryable(r: SdResult) -> bool {
    matches!(
        r,
        SdResult::OLD_NODE_VER | SdResult::NEW_NODE_VER | SdResult::NETWORK_ERROR
    )
}

/// Rejects malformed oids and ranges past the end of the object.
pub fn check_range(
    node: &Node,
    view: &View,
    oid: Oid,
    offset: u64,
    len: u64,
) -> Result<(), SdResult> {
    if !oid.is_well_formed() {
        return Err(SdResult::INVALID_PARMS);
    }
    let size = node.object_size(view, oid);
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(SdResult::INVALID_PARMS),
    }
}

fn targets(node: &Node, view: &View, oid: Oid, copies: u8) -> Result<Vec<SdNode>, SdResult> {
    let n = node.copies_of(view, oid, copies);
    let t = view.ring.placement(oid, n);
    if t.is_empty() {
        return Err(SdResult::HALT);
    }
    Ok(t)
}

/// The copies a write goes to. With fewer zones than copies, objects get one copy per zone
/// (recovery adds the others when zones come back), unless the cluster was formatted strict
/// (`dog cluster format -t`): then writes are refused with HALT.
fn write_targets(node: &Node, view: &View, oid: Oid, copies: u8) -> Result<Vec<SdNode>, SdResult> {
    let t = targets(node, view, oid, copies)?;
    let strict = view.state.format.flags & proto::cluster_flags::STRICT != 0;
    if strict && t.len() < node.copies_of(view, oid, copies) {
        return Err(SdResult::HALT);
    }
    Ok(t)
}

async fn one_copy(
    node: &Arc<Node>,
    view: &View,
    target: &SdNode,
    oid: Oid,
    op: StoreOp,
) -> Result<Done, SdResult> {
    if target.nid == node.me.nid {
        return peer::local(node, view, oid, op).await;
    }
    let (peers, nid, epoch) = (&node.peers, target.nid, view.state.epoch);
    let version = |version| Done {
        version,
        ..Done::default()
    };
    match op {
        StoreOp::Create {
            offset,
            data,
            sync,
            keep,
            id,
        } => {
            let kind = if keep {
                WriteKind::CreateIfAbsent
            } else {
                WriteKind::Create
            };
            peers
                .write(nid, epoch, oid, offset, data, kind, sync, id)
                .await
                .map(version)
        }
        StoreOp::Write {
            offset,
            data,
            sync,
            id,
        } => peers
            .write(
                nid,
                epoch,
                oid,
                offset,
                data,
                WriteKind::Overwrite,
                sync,
                id,
            )
            .await
            .map(version),
        StoreOp::Read { offset, len } => {
            peers
                .read(nid, epoch, oid, offset, len)
                .await
                .map(|data| Done {
                    data,
                    ..Done::default()
                })
        }
        StoreOp::RecoveryRead { .. } => Err(SdResult::INVALID_PARMS),
        StoreOp::Remove => peers.remove(nid, epoch, oid).await.map(|_| Done::default()),
    }
}

/// Runs `attempt` with a fresh view until it succeeds, fails for good, or retries run out.
async fn with_retries<T, F, Fut>(node: &Arc<Node>, mut attempt: F) -> Result<T, SdResult>
where
    F: FnMut(View) -> Fut,
    Fut: std::future::Future<Output = Result<T, SdResult>>,
{
    let start = tokio::time::Instant::now();
    let deadline = start + RETRY_FOR;
    let mut retries = Vec::new();
    loop {
        let view = node.gate(false)?;
        let epoch = view.state.epoch;
        match attempt(view).await {
            Err(e) if retryable(e) && tokio::time::Instant::now() < deadline => {
                retries.push((epoch, e));
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) if retryable(e) => {
                tracing::warn!("a request gave up after {RETRY_FOR:?} of membership changes: {e}");
                return Err(SdResult::EIO);
            }
            other => {
                if start.elapsed() >= SLOW {
                    tracing::info!(
                        "a request took {:?} (retries at epochs: {retries:?})",
                        start.elapsed()
                    );
                }
                return other;
            }
        }
    }
}

/// Reads `len` bytes at `offset` of `oid` from one copy: the local one if this node holds it.
/// Above `PEER_CHUNK` (copy-on-write of objects larger than that) the read goes out in pieces
/// of that size, as no peer answers a bigger read.
pub async fn read(
    node: &Arc<Node>,
    oid: Oid,
    offset: u64,
    len: usize,
    copies: u8,
) -> Result<Vec<u8>, SdResult> {
    if len <= PEER_CHUNK {
        return read_one(node, oid, offset, len, copies).await;
    }
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(PEER_CHUNK);
        let piece = read_one(node, oid, offset + out.len() as u64, n, copies).await?;
        let short = piece.len() < n;
        out.extend_from_slice(&piece);
        if short {
            break;
        }
    }
    Ok(out)
}

async fn read_one(
    node: &Arc<Node>,
    oid: Oid,
    offset: u64,
    len: usize,
    copies: u8,
) -> Result<Vec<u8>, SdResult> {
    with_retries(node, |view| async move {
        check_range(node, &view, oid, offset, len as u64)?;
        let mut t = targets(node, &view, oid, copies)?;
        if let Some(i) = t.iter().position(|n| n.nid == node.me.nid) {
            t.swap(0, i);
        }
        let mut last = SdResult::NO_OBJ;
        for target in &t {
            match one_copy(node, &view, target, oid, StoreOp::Read { offset, len }).await {
                Ok(d) => return Ok(d.data),
                Err(e) if retryable(e) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    })
    .await
}

/// Largest payload of one peer request; bigger writes (copy-on-write of objects larger than
/// this) go out in pieces of this size.
const PEER_CHUNK: usize = 8 << 20;

/// Writes `data` at `offset` on every copy in parallel; `create` makes the object first.
/// Above `PEER_CHUNK` the object is created with the first piece and the rest written after
/// it, so a failure can leave a partial new object: callers record a new object (the inode's
/// table) only after this returns.
pub async fn write(
    node: &Arc<Node>,
    oid: Oid,
    offset: u64,
    data: Bytes,
    create: bool,
    copies: u8,
) -> Result<(), SdResult> {
    write_with(node, oid, offset, data, create, copies, true).await
}

/// `write`, durable when it returns with `sync`; else durable after the next `flush`.
pub async fn write_with(
    node: &Arc<Node>,
    oid: Oid,
    offset: u64,
    data: Bytes,
    create: bool,
    copies: u8,
    sync: bool,
) -> Result<(), SdResult> {
    let kind = if create {
        WriteKind::Create
    } else {
        WriteKind::Overwrite
    };
    write_pieces(node, oid, offset, data, kind, copies, sync).await
}

/// Copy-on-write: creates `oid` with `full` (the parent's object with the new bytes laid
/// over it) where no copy of it exists yet; a copy that another gateway created first is
/// left as it is. The caller then writes its new bytes with `write_with`, so they land
/// either way and the parent's bytes never cover a write that came first.
pub async fn copy_on_write(
    node: &Arc<Node>,
    oid: Oid,
    full: Bytes,
    copies: u8,
    sync: bool,
) -> Result<(), SdResult> {
    write_pieces(node, oid, 0, full, WriteKind::CreateIfAbsent, copies, sync).await
}

async fn write_pieces(
    node: &Arc<Node>,
    oid: Oid,
    offset: u64,
    data: Bytes,
    kind: WriteKind,
    copies: u8,
    sync: bool,
) -> Result<(), SdResult> {
    if data.len() <= PEER_CHUNK {
        return write_one(node, oid, offset, data, kind, copies, sync).await;
    }
    let mut at = 0;
    while at < data.len() {
        let end = (at + PEER_CHUNK).min(data.len());
        let piece = data.slice(at..end);
        // Only the first piece creates; the others are written into what it made.
        let k = if at == 0 { kind } else { WriteKind::Overwrite };
        write_one(node, oid, offset + at as u64, piece, k, copies, sync).await?;
        at = end;
    }
    Ok(())
}

async fn write_one(
    node: &Arc<Node>,
    oid: Oid,
    offset: u64,
    data: Bytes,
    kind: WriteKind,
    copies: u8,
    sync: bool,
) -> Result<(), SdResult> {
    // One id for every attempt: a copy that takes the write twice counts it once.
    let id = node.writes.next_id();
    with_retries(node, |view| {
        let data = data.clone();
        async move {
            check_range(node, &view, oid, offset, data.len() as u64)?;
            let t = write_targets(node, &view, oid, copies)?;
            // Overlapping writes go out one after the other, so every copy takes them in the
            // same order.
            let range = node
                .writes
                .lock(oid, offset, offset + data.len() as u64)
                .await;
            let ops = t.iter().map(|target| {
                let data = data.clone();
                let op = match kind {
                    WriteKind::Overwrite => StoreOp::Write {
                        offset,
                        data,
                        sync,
                        id,
                    },
                    WriteKind::Create | WriteKind::CreateIfAbsent => StoreOp::Create {
                        offset,
                        data,
                        sync,
                        keep: kind == WriteKind::CreateIfAbsent,
                        id,
                    },
                };
                one_copy(node, &view, target, oid, op)
            });
            let results = join_all(ops).await;
            agree(node, &view, oid, &t, results, range).await
        }
    })
    .await
}

/// After a write went to every copy: Ok when every copy took it and they all have the same
/// version. Copies that failed it, or whose versions differ (one missed an earlier write, or
/// took one the others did not), are healed from the newest copy that took this write, with
/// no other write of this gateway to the object in flight; then the write is done. A
/// retryable failure anywhere redoes the whole write (it is idempotent).
async fn agree(
    node: &Arc<Node>,
    view: &View,
    oid: Oid,
    targets: &[SdNode],
    results: Vec<Result<Done, SdResult>>,
    range: Range<'_>,
) -> Result<(), SdResult> {
    let mut took: Vec<(proto::node::NodeId, u64)> = Vec::new();
    let mut failed = Vec::new();
    for (t, r) in targets.iter().zip(results) {
        match r {
            Ok(d) => took.push((t.nid, d.version)),
            Err(e) if retryable(e) => return Err(e),
            Err(e) => failed.push((t.nid, e)),
        }
    }
    let Some(&(best, newest)) = took.iter().max_by_key(|(_, v)| *v) else {
        return Err(failed.first().map(|f| f.1).unwrap_or(SdResult::EIO));
    };
    // A copy on a full disk cannot take the write, nor be healed (that needs room too):
    // the write is refused at once (not acknowledged: it may have reached the other
    // copies, as the original; `dog vdi check` makes them agree again).
    if let Some((nid, _)) = failed.iter().find(|(_, e)| *e == SdResult::NO_SPACE) {
        tracing::warn!(
            "{oid}: no space on {nid}; the write is refused ({} copies took it)",
            took.len()
        );
        return Err(SdResult::NO_SPACE);
    }
    // Versions say something only of a write that had the object to itself: with other
    // writes to it in flight, copies take them in different orders and answer different
    // counts for the same history. Then only copies that failed are healed.
    if !range.alone() {
        took.retain(|(n, _)| *n == best);
    }
    if failed.is_empty() && took.iter().all(|(_, v)| *v == newest) {
        return Ok(());
    }
    tracing::warn!(
        "copies of {oid} disagree (versions {took:?}, failed {failed:?}): healing from {best}"
    );
    drop(range);
    let _whole = node.writes.lock(oid, 0, u64::MAX).await;
    let stale = took
        .iter()
        .filter(|(_, v)| *v != newest)
        .map(|(n, _)| *n)
        .chain(failed.iter().map(|(n, _)| *n));
    for nid in stale {
        let healed = if nid == node.me.nid {
            crate::recovery::repair(node, view, oid, best).await
        } else {
            node.peers.repair(nid, view.state.epoch, oid, best).await
        };
        if let Err(e) = healed {
            // Most often membership moved under the heal (a copy set aside, a node at another
            // epoch): the whole write is redone at a fresh view, within the retry bound.
            tracing::warn!("healing the copy of {oid} on {nid}: {e}; the write is redone");
            return Err(SdResult::NEW_NODE_VER);
        }
    }
    Ok(())
}

/// Writes in flight on this gateway, per object and byte range: a write waits for the
/// overlapping ones that came before it (first come, first served), so that overlapping
/// writes reach every copy in the same order; a heal takes the whole object.
#[derive(Default)]
pub struct Writes {
    /// The last id given, and per object with writes in flight: the ranges held or waited
    /// for (start, end, id), and the last id given for it.
    inner: std::sync::Mutex<(u64, InFlight)>,
    released: tokio::sync::Notify,
    /// Write ids: a base drawn at the first write, and a count.
    id_base: std::sync::OnceLock<u64>,
    ids: std::sync::atomic::AtomicU64,
}

type InFlight = std::collections::HashMap<Oid, (Vec<(u64, u64, u64)>, u64)>;

/// Bytes `start..end` of an object, held by one write.
pub struct Range<'a> {
    writes: &'a Writes,
    oid: Oid,
    id: u64,
    /// No other write to the object was in flight when this one began.
    first: bool,
}

impl Writes {
    /// A new write id, unique to this start of this node (its start time in the high bits).
    pub fn next_id(&self) -> u64 {
        let base = *self.id_base.get_or_init(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            (t << 24) | 1
        });
        base.wrapping_add(
            self.ids
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_mul(2),
        )
    }

    pub async fn lock(&self, oid: Oid, start: u64, end: u64) -> Range<'_> {
        let (id, first) = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.0 += 1;
            let id = g.0;
            let e = g.1.entry(oid).or_default();
            let first = e.0.is_empty();
            e.0.push((start, end, id));
            e.1 = id;
            (id, first)
        };
        let range = Range {
            writes: self,
            oid,
            id,
            first,
        };
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let blocked = {
                let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                g.1.get(&oid)
                    .is_some_and(|(l, _)| l.iter().any(|&(s, e, i)| i < id && s < end && start < e))
            };
            if !blocked {
                return range;
            }
            released.await;
        }
    }
}

impl Range<'_> {
    /// Whether this write has had the object to itself on this gateway all along: none in
    /// flight when it began, none begun since.
    pub fn alone(&self) -> bool {
        let g = self.writes.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.first && g.1.get(&self.oid).is_some_and(|(_, last)| *last == self.id)
    }
}

impl Drop for Range<'_> {
    fn drop(&mut self) {
        {
            let mut g = self.writes.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((l, _)) = g.1.get_mut(&self.oid) {
                l.retain(|&(_, _, i)| i != self.id);
                if l.is_empty() {
                    g.1.remove(&self.oid);
                }
            }
        }
        self.writes.released.notify_waiters();
    }
}

/// Makes every write acknowledged so far durable on every node of the current epoch (each
/// syncs its store), including writes other gateways sent without sync.
pub async fn flush(node: &Arc<Node>) -> Result<(), SdResult> {
    with_retries(node, |view| async move {
        let nodes = view.state.epoch_nodes.clone();
        let results = join_all(nodes.iter().map(|n| {
            let view = &view;
            async move {
                if n.nid == node.me.nid {
                    return peer::sync(node).await.map(|_| Vec::new());
                }
                node.peers
                    .flush(n.nid, view.state.epoch)
                    .await
                    .map(|_| Vec::new())
            }
        }))
        .await;
        first_error(results)
    })
    .await
}

/// Removes `oid` from every node of the epoch (its copies, and stale copies elsewhere, so
/// recovery cannot bring it back); nodes without it are fine.
pub async fn remove(node: &Arc<Node>, oid: Oid) -> Result<(), SdResult> {
    with_retries(node, |view| async move {
        let t = view.state.epoch_nodes.clone();
        let results = join_all(
            t.iter()
                .map(|target| one_copy(node, &view, target, oid, StoreOp::Remove)),
        )
        .await;
        first_error(results.into_iter().map(|r| match r {
            Err(SdResult::NO_OBJ) => Ok(Vec::new()),
            other => other.map(|d| d.data),
        }))
    })
    .await
}

fn first_error(
    results: impl IntoIterator<Item = Result<Vec<u8>, SdResult>>,
) -> Result<(), SdResult> {
    let mut out = Ok(());
    for r in results {
        if let Err(e) = r {
            // A retryable failure wins so the whole write is redone at the new epoch.
            if retryable(e) || out.is_ok() {
                out = Err(e);
            }
        }
    }
    out
}
