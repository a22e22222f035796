//! The `zookeeper` cluster driver: sheep on many machines coordinated through a ZooKeeper
//! ensemble (`-c zookeeper:HOST:PORT[,HOST:PORT...][/CLUSTER_ID][,timeout=MS]`).
//!
//! Layout under `/sheepdog[/CLUSTER_ID]`: `member/<address:port>` ephemeral nodes (who is
//! alive), `queue/e<seq>` persistent sequential nodes holding the events (JSON) in the
//! cluster's total order, and `lock/` for the cluster-wide mutex (ZooKeeper's lock recipe).
//! Like the local driver, a joiner reads the queue from its start and so rebuilds the same
//! state; the history is cleared when a node starts and no member is alive, and the position
//! of its first event is kept in the queue node's data. Events are read by position (the
//! sequence number ZooKeeper gave them, which is the `seq` delivered), never by listing the
//! queue, whose listing grows with the history and is bounded by ZooKeeper's packet size;
//! catching up reads ahead in parallel, and once caught up the reader watches the next
//! position. A member whose
//! ephemeral node vanishes (killed, session expired) gets a leave event from the live member
//! with the lowest address. Membership changes are transactions (ZooKeeper `multi`): a joiner
//! creates its member node together with a leave of any former process at its address and its
//! join; a leave is appended together with a check that no process with that address is
//! registered. So a leave never lands after the join of the process that replaced the one that
//! died, and a repeated leave (the announcer changed midway) is the leave of a non-member,
//! which changes nothing. A node whose own session expires stops serving at once (it starts
//! itself again and rejoins as a new member): never a split brain.
//!
//! Liveness. A sheep that stops answering (kill -STOP, a hung process) stops its session's
//! pings too: ZooKeeper expires the session after its timeout, the member node goes, and the
//! others announce the leave. Such a sheep, when it resumes, still holds its old view, and a
//! request it finds waiting could be served from its old copies before its client even notices
//! that the session is gone. So every member asks ZooKeeper for its own member node every
//! 500 ms (less with short sessions) and remembers when the newest answered question was sent:
//! the session was alive then, so it cannot expire (nor the others see this node leave) before
//! one session timeout after it. While that moment is older than 3/4 of the session timeout the
//! node answers no request (`Driver::fenced`); the next answer unfences it, or tells it that its
//! session or member node is gone, and then it restarts itself and rejoins as a returning node.
//!
//! The client is `zookeeper-client`: async on tokio, maintained, with session-state watchers
//! and the lock recipe built in. Owns: that layout. Never: object data.

use super::state::{Event, JoinInfo, Message};
use super::{BoxFut, ClusterError, Delivery, Driver, LockGuard};
use proto::SdNode;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OnceCell};
use zookeeper_client as zk;

/// Session timeout when the option does not give one (the original's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often membership and the queue are looked at even without a watch firing.
const TICK: Duration = Duration::from_millis(500);
/// Most queue positions read or deleted at once.
const BATCH: u64 = 256;
/// How often a member asks for its own member node (less with sessions under 2 s).
const PROBE_EVERY: Duration = Duration::from_millis(500);

fn zerr(what: &str) -> impl FnOnce(zk::Error) -> ClusterError + '_ {
    move |e| ClusterError::Other(format!("zookeeper: {what}: {e}"))
}

/// `HOST:PORT[,HOST:PORT...][/CLUSTER_ID][,timeout=MS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub hosts: String,
    pub base: String,
    pub timeout: Duration,
}

pub fn parse_options(arg: &str) -> Result<Options, String> {
    let mut hosts = Vec::new();
    let mut timeout = DEFAULT_TIMEOUT;
    let mut id = None;
    for part in arg.split(',').filter(|p| !p.is_empty()) {
        if let Some(ms) = part.strip_prefix("timeout=") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("bad zookeeper timeout '{ms}' (milliseconds)"))?;
            timeout = Duration::from_millis(ms.max(1000));
            continue;
        }
        let (host, cluster) = match part.split_once('/') {
            Some((h, c)) => (h, Some(c)),
            None => (part, None),
        };
        if let Some(c) = cluster {
            if c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!("bad zookeeper cluster id '{c}'"));
            }
            id = Some(c.to_string());
        }
        if !host.contains(':') {
            return Err(format!("zookeeper server '{host}' needs HOST:PORT"));
        }
        hosts.push(host.to_string());
    }
    if hosts.is_empty() {
        return Err(
            "zookeeper needs at least one server: -c zookeeper:HOST:PORT[,HOST:PORT...]".into(),
        );
    }
    let base = match id {
        Some(id) => format!("/sheepdog/{id}"),
        None => "/sheepdog".to_string(),
    };
    Ok(Options {
        hosts: hosts.join(","),
        base,
        timeout,
    })
}

/// Sequence number of a queue node name (`e0000000042` -> 42).
fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix('e')?.parse().ok()
}

fn encode(ev: &Event) -> Result<Vec<u8>, ClusterError> {
    serde_json::to_vec(ev).map_err(|e| ClusterError::Other(format!("encoding an event: {e}")))
}

/// Position of the last queue node a transaction created.
fn last_seq(results: Vec<zk::MultiWriteResult>) -> Result<u64, ClusterError> {
    results
        .into_iter()
        .rev()
        .find_map(|r| match r {
            zk::MultiWriteResult::Create { path, .. } => {
                seq_of(path.rsplit('/').next().unwrap_or_default())
            }
            _ => None,
        })
        .map(|s| s + 1)
        .ok_or_else(|| ClusterError::Other("zookeeper: transaction created no event".into()))
}

pub struct ZkDriver {
    opts: Options,
    client: OnceCell<zk::Client>,
    me: Mutex<Option<SdNode>>,
    /// Every event before this sequence number is known to be in the queue.
    tip: AtomicU64,
    /// Origin of `alive_at`.
    clock: Instant,
    /// When the newest question that ZooKeeper answered within this session was sent (ns since
    /// `clock`, plus 1; 0 before the first).
    alive_at: AtomicU64,
    /// 3/4 of the session timeout the server granted, in ns (0 before the start).
    fence_ns: AtomicU64,
    /// Set when this node leaves cleanly (its member node goes on purpose).
    leaving: AtomicBool,
}

impl ZkDriver {
    pub fn new(opts: Options) -> ZkDriver {
        ZkDriver {
            opts,
            client: OnceCell::new(),
            me: Mutex::new(None),
            tip: AtomicU64::new(0),
            clock: Instant::now(),
            alive_at: AtomicU64::new(0),
            fence_ns: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
        }
    }

    /// Records that a question sent at `at` was answered within this session.
    fn stamp(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.clock).as_nanos() as u64 + 1;
        self.alive_at.fetch_max(ns, Ordering::SeqCst);
    }

    /// Whether the session may have expired unnoticed: no answer to a question sent in the
    /// last 3/4 of the session timeout.
    fn is_fenced(&self) -> bool {
        let at = self.alive_at.load(Ordering::SeqCst);
        let fence = self.fence_ns.load(Ordering::SeqCst);
        let now = self.clock.elapsed().as_nanos() as u64 + 1;
        at != 0 && fence != 0 && now.saturating_sub(at) > fence
    }

    fn path(&self, sub: &str) -> String {
        format!("{}/{sub}", self.opts.base)
    }

    fn client(&self) -> Result<&zk::Client, ClusterError> {
        self.client
            .get()
            .ok_or_else(|| ClusterError::Other("zookeeper: not connected".into()))
    }

    /// Connects, trying for up to one session timeout (for ever when rejoining).
    async fn connect(&self) -> Result<zk::Client, ClusterError> {
        let rejoin = super::rejoining();
        let give_up = tokio::time::Instant::now() + self.opts.timeout;
        loop {
            let r = zk::Client::connector()
                .with_session_timeout(self.opts.timeout)
                .with_connection_timeout(self.opts.timeout.min(Duration::from_secs(5)))
                .with_fail_eagerly()
                .connect(&self.opts.hosts)
                .await;
            match r {
                Ok(c) => return Ok(c),
                Err(e) if rejoin || tokio::time::Instant::now() < give_up => {
                    tracing::warn!(
                        "zookeeper {} not reachable ({e}); retrying",
                        self.opts.hosts
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(ClusterError::Other(format!(
                        "cannot reach ZooKeeper at {}: {e}",
                        self.opts.hosts
                    )))
                }
            }
        }
    }

    /// Appends an event to the queue; returns its position.
    async fn append(&self, ev: &Event) -> Result<u64, ClusterError> {
        let c = self.client()?;
        let data = encode(ev)?;
        let opts = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        let (_, seq) = c
            .create(&self.path("queue/e"), &data, &opts)
            .await
            .map_err(zerr("appending an event"))?;
        Ok(seq.into_i64() as u64 + 1)
    }

    /// Registers `me` as a live member and appends its join, in one transaction: nobody can
    /// see the member node without the join being in the order, and a leave announced for a
    /// former process with the same address can only land before it (see `announce_leave`).
    /// In a new history the join is its first event, and its position is kept in the queue
    /// node's data as the start of the history. Otherwise the join is preceded by a leave of
    /// `me`: a former process
    /// whose end nobody has announced yet (killed and restarted within its session timeout)
    /// is then out of the membership before the new one comes in, as with the local driver's
    /// reaping; the leave of a non-member changes nothing.
    async fn register(
        &self,
        me: SdNode,
        info: JoinInfo,
        new_history: bool,
    ) -> Result<u64, ClusterError> {
        let c = self.client()?;
        let me_path = self.path(&format!("member/{}", me.nid));
        let eph = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        let seqn = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        let queue = self.path("queue/e");
        let mut w = c.new_multi_writer();
        w.add_create(&me_path, &me.to_bytes(), &eph)
            .map_err(zerr("registering as a member"))?;
        if !new_history {
            w.add_create(&queue, &encode(&Event::Leave { node: me })?, &seqn)
                .map_err(zerr("registering as a member"))?;
        }
        w.add_create(&queue, &encode(&Event::Join { node: me, info })?, &seqn)
            .map_err(zerr("registering as a member"))?;
        let results = w
            .commit()
            .await
            .map_err(|e| zerr("registering as a member")(e.into()))?;
        let joined = last_seq(results)?;
        if new_history {
            // Not in the transaction (the position is known only after it); a mark lost here
            // is found stale by `history_start`, which then looks for the oldest event.
            c.set_data(
                &self.path("queue"),
                (joined - 1).to_string().as_bytes(),
                None,
            )
            .await
            .map_err(zerr("marking the start of the history"))?;
        }
        Ok(joined)
    }

    /// Appends a leave for `node` if, at that point of the order, no process with its address
    /// is registered: the check (creating and removing its member node) and the append are one
    /// transaction, so a leave never lands after the join of a process that replaced it.
    /// Returns whether the leave was appended.
    pub async fn announce_leave(&self, node: SdNode) -> Result<bool, ClusterError> {
        let c = self.client()?;
        let path = self.path(&format!("member/{}", node.nid));
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let seqn = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        let mut w = c.new_multi_writer();
        let build = |w: &mut zk::MultiWriter<'_>| -> Result<(), zk::Error> {
            w.add_create(&path, b"", &persistent)?;
            w.add_delete(&path, None)?;
            let ev = encode(&Event::Leave { node })
                .map_err(|e| zk::Error::UnexpectedError(format!("encoding a leave event: {e}")))?;
            w.add_create(&self.path("queue/e"), &ev, &seqn)
        };
        build(&mut w).map_err(zerr("announcing a leave"))?;
        match w.commit().await {
            Ok(_) => Ok(true),
            Err(zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::NodeExists,
            }) => Ok(false),
            Err(e) => Err(zerr("announcing a leave")(e.into())),
        }
    }

    async fn take_lock(&self) -> Result<zk::OwnedLockClient, ClusterError> {
        let c = self.client()?;
        let dir = self.path("lock");
        let prefix = zk::LockPrefix::new_curator(&dir, "lock-").map_err(zerr("lock path"))?;
        let lock = c
            .lock(prefix, b"", zk::LockOptions::new(zk::Acls::anyone_all()))
            .await
            .map_err(zerr("taking the cluster lock"))?;
        Ok(lock.into_owned())
    }
}

/// Members as the delivered events say (address -> node).
type Tracked = Arc<Mutex<BTreeMap<String, SdNode>>>;

/// Queue node of sequence number `n` (ZooKeeper's `%010d` suffix).
fn event_path(queue: &str, n: u64) -> String {
    format!("{queue}/e{n:010}")
}

/// Sequence number of the first event of the current history: kept in the queue node's data
/// by the node that started the history; without it (or if no event is there), the oldest
/// event in the queue.
async fn history_start(c: &zk::Client, queue: &str) -> Result<u64, zk::Error> {
    let (data, _) = c.get_data(queue).await?;
    if let Some(n) = std::str::from_utf8(&data)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        if c.check_stat(&event_path(queue, n)).await?.is_some() {
            return Ok(n);
        }
    }
    oldest_after(c, queue, 0).await
}

/// Sequence number of the oldest event at or after `n`; without any, the one after the newest
/// (lists the queue: only when the start of the history is unknown, or for a gap).
async fn oldest_after(c: &zk::Client, queue: &str, n: u64) -> Result<u64, zk::Error> {
    let names = c.list_children(queue).await?;
    let seqs = names.iter().filter_map(|n| seq_of(n));
    Ok(seqs
        .clone()
        .filter(|&s| s >= n)
        .min()
        .unwrap_or_else(|| seqs.max().map_or(n, |m| m.max(n))))
}

/// Deletes the events of the ended history: from its start on, in parallel batches, up to the
/// first position with no event (a history has no holes), then whatever else is left.
async fn clear_history(c: &zk::Client, queue: &str) -> Result<(), zk::Error> {
    let mut n = history_start(c, queue).await?;
    loop {
        let batch = (n..n + BATCH).map(|k| {
            let path = event_path(queue, k);
            async move {
                match c.delete(&path, None).await {
                    Ok(()) => Ok(true),
                    Err(zk::Error::NoNode) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        });
        let deleted = futures::future::try_join_all(batch).await?;
        if deleted.iter().any(|d| !d) {
            break;
        }
        n += BATCH;
    }
    for name in c.list_children(queue).await? {
        match c.delete(&format!("{queue}/{name}"), None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What is at one position of the queue.
enum Slot {
    /// No node there (not yet, or never: a gap).
    Missing,
    /// A node that is not a sheep's event: no part of the order.
    Unreadable,
    /// An event and when it was appended (seconds since the epoch).
    Event(Event, u64),
}

async fn read_event(c: &zk::Client, queue: &str, n: u64) -> Result<Slot, zk::Error> {
    match c.get_data(&event_path(queue, n)).await {
        Ok((data, stat)) => match serde_json::from_slice(&data) {
            Ok(ev) => Ok(Slot::Event(ev, (stat.ctime / 1000).max(0) as u64)),
            Err(e) => {
                tracing::error!("zookeeper: unreadable event {n}: {e}");
                Ok(Slot::Unreadable)
            }
        },
        Err(zk::Error::NoNode) => Ok(Slot::Missing),
        Err(e) => Err(e),
    }
}

impl Driver for ZkDriver {
    fn start(
        self: Arc<Self>,
        me: SdNode,
        info: JoinInfo,
        tx: mpsc::UnboundedSender<Delivery>,
    ) -> BoxFut<'static, Result<(), ClusterError>> {
        Box::pin(async move {
            let client = self.connect().await?;
            let _ = self.client.set(client.clone());
            *self.me.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
            let dir_opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            for sub in ["queue", "member", "lock"] {
                client
                    .mkdir(&self.path(sub), &dir_opts)
                    .await
                    .map_err(zerr("creating the cluster's nodes"))?;
            }
            let me_path = self.path(&format!("member/{}", me.nid));
            {
                let _lock = self.take_lock().await?;
                // A node of ours from a session that has not expired yet (a quick restart
                // after kill -9) goes away by itself; another live sheep with our address
                // does not.
                let deadline =
                    tokio::time::Instant::now() + self.opts.timeout + Duration::from_secs(2);
                while client
                    .check_stat(&me_path)
                    .await
                    .map_err(zerr("looking at members"))?
                    .is_some()
                {
                    if tokio::time::Instant::now() > deadline {
                        return Err(ClusterError::Other(format!(
                            "a sheep with address {} is already a member of the cluster",
                            me.nid
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let members = client
                    .list_children(&self.path("member"))
                    .await
                    .map_err(zerr("listing members"))?;
                let new_history = members.is_empty();
                if new_history {
                    // Nobody alive: the history ends here, this node starts a new one.
                    clear_history(&client, &self.path("queue"))
                        .await
                        .map_err(zerr("clearing the history"))?;
                }
                let asked = Instant::now();
                let joined = self.register(me, info, new_history).await?;
                self.tip.fetch_max(joined, Ordering::SeqCst);
                let timeout = client.session_timeout();
                self.fence_ns
                    .store((timeout * 3 / 4).as_nanos() as u64, Ordering::SeqCst);
                self.stamp(asked);
            }
            let first = history_start(&client, &self.path("queue"))
                .await
                .map_err(zerr("reading the history"))?;
            let tracked: Tracked = Arc::new(Mutex::new(BTreeMap::new()));
            tokio::spawn(read_queue(self.clone(), first, tx, tracked.clone()));
            tokio::spawn(watch_members(self.clone(), me, tracked));
            tokio::spawn(probe_session(self.clone(), client.clone(), me_path));
            tokio::spawn(watch_session(client));
            Ok(())
        })
    }

    fn notify(&self, msg: Message) -> BoxFut<'_, Result<u64, ClusterError>> {
        Box::pin(async move {
            let from = self
                .me
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ok_or_else(|| ClusterError::Other("zookeeper: not started".into()))?;
            self.append(&Event::Notify { from, msg }).await
        })
    }

    fn lock(&self) -> BoxFut<'_, Result<LockGuard, ClusterError>> {
        Box::pin(async move {
            let guard = self.take_lock().await?;
            let seq = self.sync().await?;
            Ok(LockGuard {
                _inner: Box::new(guard),
                seq,
            })
        })
    }

    fn sync(&self) -> BoxFut<'_, Result<u64, ClusterError>> {
        Box::pin(async move {
            let c = self.client()?;
            let queue = self.path("queue");
            c.sync(&queue).await.map_err(zerr("sync"))?;
            // Every event before `tip` is known to exist; walk on to the first one that does
            // not (the newest event's position is its sequence number + 1).
            let mut k = self.tip.load(Ordering::SeqCst);
            while c
                .check_stat(&event_path(&queue, k))
                .await
                .map_err(zerr("sync"))?
                .is_some()
            {
                k += 1;
            }
            Ok(self.tip.fetch_max(k, Ordering::SeqCst).max(k))
        })
    }

    fn leave(&self) -> BoxFut<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let me = *self.me.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(me) = me {
                self.leaving.store(true, Ordering::SeqCst);
                self.append(&Event::Leave { node: me }).await?;
                let c = self.client()?;
                let _ = c
                    .delete(&self.path(&format!("member/{}", me.nid)), None)
                    .await;
            }
            Ok(())
        })
    }

    fn fenced(&self) -> bool {
        self.is_fenced()
    }
}

/// Asks for this node's member node at a fixed interval and stamps every answer that shows it
/// still owned by this session (see the module's comment on liveness). A session that expired
/// or a member node that is gone or another's means the others declared this node gone: it
/// restarts itself.
async fn probe_session(d: Arc<ZkDriver>, c: zk::Client, me_path: String) {
    let timeout = c.session_timeout();
    let every = PROBE_EVERY.min(timeout / 4);
    let session = c.session_id().0;
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        if d.leaving.load(Ordering::SeqCst) {
            return;
        }
        if d.is_fenced() && !warned {
            warned = true;
            tracing::warn!(
                "zookeeper: no answer within this session for 3/4 of its timeout {timeout:?} \
                 (stopped, starved or cut off?): serving nothing until ZooKeeper answers"
            );
        }
        let asked = Instant::now();
        let answer = tokio::time::timeout(timeout, c.check_stat(&me_path)).await;
        if d.leaving.load(Ordering::SeqCst) {
            return;
        }
        match answer {
            Ok(Ok(Some(stat))) if stat.ephemeral_owner == session => {
                d.stamp(asked);
                if std::mem::take(&mut warned) {
                    tracing::info!("zookeeper: the session is alive; serving again");
                }
            }
            Ok(Ok(_)) => super::restart_self("zookeeper: this node's member node is gone"),
            Ok(Err(zk::Error::SessionExpired)) => super::restart_self("zookeeper session expired"),
            Ok(Err(e)) => tracing::warn!("zookeeper: looking at this node's member node: {e}"),
            Err(_) => tracing::warn!(
                "zookeeper: no answer about this node's member node within {timeout:?}"
            ),
        }
    }
}

/// Delivers the queue from `first` (the start of the history), then every new event, in
/// order. Events are read by their position, never by listing the queue (whose listing grows
/// with the history): catching up reads ahead in parallel, in windows that double while every
/// position is there; once caught up it watches the next position.
async fn read_queue(
    d: Arc<ZkDriver>,
    first: u64,
    tx: mpsc::UnboundedSender<Delivery>,
    tracked: Tracked,
) {
    let Ok(c) = d.client().cloned() else { return };
    let queue = d.path("queue");
    let mut next = first;
    let mut window = 1u64;
    loop {
        if tx.is_closed() {
            return;
        }
        let reads = (next..next + window).map(|n| read_event(&c, &queue, n));
        let slots = match futures::future::try_join_all(reads).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("zookeeper: reading events: {e}");
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        let found = slots.iter().filter(|s| !matches!(s, Slot::Missing)).count();
        let mut caught_up = false;
        for (i, slot) in slots.into_iter().enumerate() {
            let n = next;
            match slot {
                Slot::Event(ev, time) => {
                    track(&tracked, &ev);
                    if tx.send((n + 1, time, ev)).is_err() {
                        return;
                    }
                }
                Slot::Unreadable => {
                    // Its position still counts (`sync` may have given it out): deliver the
                    // leave of no node, which changes nothing.
                    let nobody = Event::Leave {
                        node: SdNode {
                            nid: proto::node::NodeId::new([0u8; 4].into(), 0),
                            nr_vnodes: 0,
                            zone: 0,
                            space: 0,
                        },
                    };
                    if tx.send((n + 1, 0, nobody)).is_err() {
                        return;
                    }
                }
                Slot::Missing if found > i => {
                    // A later position is there. Events become visible in the order of their
                    // positions, so this one is there now, or never will be (a gap): look
                    // again from here.
                    break;
                }
                Slot::Missing => {
                    caught_up = true;
                    break;
                }
            }
            next = n + 1;
        }
        d.tip.fetch_max(next, Ordering::SeqCst);
        if !caught_up {
            if found as u64 == window {
                window = (window * 2).min(BATCH);
            } else {
                // Stopped before a missing position with later ones present.
                match read_event(&c, &queue, next).await {
                    Ok(Slot::Missing) => {
                        tracing::warn!("zookeeper: no event at position {next}; skipped");
                        next += 1;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("zookeeper: reading events: {e}"),
                }
            }
            continue;
        }
        window = 1;
        let path = event_path(&queue, next);
        match c.check_and_watch_stat(&path).await {
            Ok((Some(_), _)) => continue,
            Ok((None, w)) => {
                if tokio::time::timeout(TICK, w.changed()).await.is_err() {
                    skip_gap(&c, &queue, first, &mut next).await;
                }
            }
            Err(e) => {
                tracing::warn!("zookeeper: watching events: {e}");
                tokio::time::sleep(TICK).await;
            }
        }
    }
}

/// Keeps `tracked` as the delivered joins and leaves say.
fn track(tracked: &Tracked, ev: &Event) {
    let mut t = tracked.lock().unwrap_or_else(|e| e.into_inner());
    match ev {
        Event::Join { node, .. } => {
            t.insert(node.nid.to_string(), *node);
        }
        Event::Leave { node } => {
            t.remove(&node.nid.to_string());
        }
        Event::Notify { .. } => {}
    }
}

/// While idle: if the queue holds more events than the positions read so far, but the next
/// one is missing, there is a hole of a whole window (or the history started elsewhere than
/// its mark said); move on to the oldest event after it. Never happens in a queue only sheep
/// write; this keeps the reader from stalling.
async fn skip_gap(c: &zk::Client, queue: &str, first: u64, next: &mut u64) {
    let Ok(Some(stat)) = c.check_stat(queue).await else {
        return;
    };
    if (stat.num_children.max(0) as u64) <= next.saturating_sub(first) {
        return;
    }
    if !matches!(read_event(c, queue, *next).await, Ok(Slot::Missing)) {
        return;
    }
    if let Ok(n) = oldest_after(c, queue, *next).await {
        if n > *next {
            tracing::warn!("zookeeper: no events at positions {next}..{n}; skipped");
            *next = n;
        }
    }
}

/// Appends a leave for members whose ephemeral node vanished; the live member with the lowest
/// address does it, so each loss is announced once.
async fn watch_members(d: Arc<ZkDriver>, me: SdNode, tracked: Tracked) {
    let members = d.path("member");
    let mut announced: BTreeSet<String> = BTreeSet::new();
    loop {
        let Ok(c) = d.client() else { return };
        let (live, watcher) = match c.list_and_watch_children(&members).await {
            Ok((l, w)) => (l, Some(w)),
            Err(e) => {
                tracing::warn!("zookeeper: watching members: {e}");
                (Vec::new(), None)
            }
        };
        if watcher.is_some() {
            let live: BTreeSet<String> = live.into_iter().collect();
            let lowest = live.iter().next().cloned();
            let vanished: Vec<SdNode> = tracked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(k, _)| !live.contains(*k))
                .map(|(_, n)| *n)
                .collect();
            announced.retain(|k| !live.contains(k));
            if lowest.as_deref() == Some(&me.nid.to_string()) {
                for node in vanished {
                    let key = node.nid.to_string();
                    if announced.insert(key.clone()) {
                        tracing::info!("zookeeper: {key} is gone");
                        match d.announce_leave(node).await {
                            Ok(true) => {}
                            // Back already: its own join came with a leave of the former one.
                            Ok(false) => tracing::info!("zookeeper: {key} is back"),
                            Err(e) => {
                                tracing::warn!("announcing that {key} left: {e}");
                                announced.remove(&key);
                            }
                        }
                    }
                }
            }
        }
        match watcher {
            Some(w) => {
                let _ = tokio::time::timeout(TICK, w.changed()).await;
            }
            None => tokio::time::sleep(TICK).await,
        }
    }
}

/// A node cut off from ZooKeeper for longer than its session timeout may have been declared
/// dead by the others: it stops serving at once and starts again as a new member.
async fn watch_session(c: zk::Client) {
    // The timeout the server granted, which may differ from the one asked for.
    let timeout = c.session_timeout();
    let mut states = c.state_watcher();
    loop {
        let state = states.changed().await;
        match state {
            zk::SessionState::Disconnected => {
                tracing::warn!("zookeeper: connection lost; the session expires in {timeout:?}");
                match tokio::time::timeout(timeout, states.changed()).await {
                    Ok(zk::SessionState::SyncConnected) => {
                        tracing::info!("zookeeper: connection back");
                        continue;
                    }
                    Ok(zk::SessionState::Expired) | Err(_) => {
                        super::restart_self("zookeeper session expired")
                    }
                    Ok(other) => tracing::warn!("zookeeper: session {other:?}"),
                }
            }
            zk::SessionState::Expired | zk::SessionState::Closed => {
                super::restart_self("zookeeper session expired")
            }
            other => tracing::info!("zookeeper: session {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_the_original() {
        let o = parse_options("10.0.0.1:2181,10.0.0.2:2181/prod,timeout=5000").unwrap();
        assert_eq!(o.hosts, "10.0.0.1:2181,10.0.0.2:2181");
        assert_eq!(o.base, "/sheepdog/prod");
        assert_eq!(o.timeout, Duration::from_millis(5000));
        let o = parse_options("127.0.0.1:2181").unwrap();
        assert_eq!((o.base.as_str(), o.timeout), ("/sheepdog", DEFAULT_TIMEOUT));
        assert!(parse_options("").is_err());
        assert!(parse_options("localhost").is_err());
        assert!(parse_options("h:1,timeout=x").is_err());
        assert!(parse_options("h:1/bad id").is_err());
        assert_eq!(seq_of("e0000000042"), Some(42));
        assert_eq!(seq_of("lock"), None);
    }
}
