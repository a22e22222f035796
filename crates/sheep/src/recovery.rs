//! Recovery: after a membership change, every object goes to the nodes the ring gives it in the
//! new epoch. Each node works out which objects it must now hold, fetches the ones it lacks
//! from whichever node has the best copy (a current copy, else the stale copy that was current
//! most recently), and tells the cluster when it is done; once every node is done, stale copies
//! are purged. An object a request needs before its turn is recovered at once. What to fetch
//! is worked out by a pure function of the gathered lists (`plan`); a run reports done only
//! when every list was had, every fetch succeeded and a fresh look at its own store finds
//! nothing left to fetch. Client I/O goes first: recovery rests after each batch of fetches
//! during which clients used this node's copies.
//!
//! Invariant: `obj/` holds only current copies. At each new epoch, a node moves the objects the
//! ring no longer gives it into the stale area (tagged with the last epoch they were current
//! in), and a node that rejoins a running cluster moves all of its objects there (writes
//! happened while it was away), so a stale copy is never served.
//! Owns: working out and fetching what is missing, progress, throttling. Never: serving client
//! requests (it is called from the peer path only to fetch an object first).

mod plan;

use crate::cluster::state::Message;
use crate::node::{Node, View};
use crate::store::CURRENT;
use futures::future::join_all;
use plan::{Holder, Lists};
use proto::node::NodeId;
use proto::oid::OidKind;
use proto::{Oid, SdResult};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Locks that serialise the fetch of one object with requests on it (oid modulo this many).
const STRIPES: usize = 256;
/// Largest piece of an object fetched with one peer read.
const FETCH_CHUNK: usize = 8 << 20;
/// Pauses between two tries of an incomplete recovery: the first, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Objects fetched at once by default.
const DEFAULT_MAX_EXEC: u32 = 8;
/// Client I/O goes first: after a batch of fetches during which clients did I/O on this
/// node, recovery rests this many times as long as the batch took (it then takes about a
/// third of the time it would alone), at most `MAX_REST`.
const TRANQUILITY: u32 = 2;
const MAX_REST: Duration = Duration::from_secs(2);

/// What `dog node recovery` shows (the original's `struct recovery_state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub epoch: u32,
    pub running: bool,
    pub done: u64,
    pub total: u64,
}

impl Progress {
    /// `struct recovery_state`: in_recovery u8, pad, state u32, nr_finished u64, nr_total u64.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[0] = self.running as u8;
        // RW_RECOVER_OBJ while running.
        b[4..8].copy_from_slice(&(self.running as u32).to_le_bytes());
        b[8..16].copy_from_slice(&self.done.to_le_bytes());
        b[16..24].copy_from_slice(&self.total.to_le_bytes());
        b
    }
}

pub struct Recovery {
    progress: Mutex<Progress>,
    /// Why the running recovery is not done yet, when a try of it failed (`dog node
    /// recovery` shows it).
    problem: Mutex<Option<String>>,
    /// Held by the running recovery: the next epoch's waits until the previous one's fetches
    /// in flight are done, so none of them lands after the next one has swept.
    running: tokio::sync::Mutex<()>,
    /// Per object (hashed): writes on this node hold it shared, installing a whole copy
    /// (recovery, repair) holds it alone, so no write lands between the read of the source and
    /// the install and is undone by it.
    stripes: Vec<tokio::sync::RwLock<()>>,
    /// Objects fetched at once (`dog node recovery set-throttle`).
    max_exec: AtomicU32,
    /// Pause between two fetches, in milliseconds (0: none).
    interval_ms: AtomicU64,
    /// Client reads and writes on this node's copies so far (recovery yields to them).
    client_ops: AtomicU64,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            progress: Mutex::new(Progress::default()),
            problem: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
            stripes: (0..STRIPES).map(|_| tokio::sync::RwLock::new(())).collect(),
            max_exec: AtomicU32::new(DEFAULT_MAX_EXEC),
            interval_ms: AtomicU64::new(0),
            client_ops: AtomicU64::new(0),
        }
    }
}

impl Recovery {
    pub fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_progress(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A client read or write reached one of this node's copies.
    pub fn client_io(&self) {
        self.client_ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Why the running recovery is not done, if a try of it failed.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_problem(&self, p: impl Into<Option<String>>) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = p.into();
    }

    /// (objects fetched at once, pause between fetches in ms).
    pub fn throttle(&self) -> (u32, u64) {
        (
            self.max_exec.load(Ordering::Relaxed),
            self.interval_ms.load(Ordering::Relaxed),
        )
    }

    pub fn set_throttle(&self, max_exec: u32, interval_ms: u64) {
        let m = if max_exec == 0 {
            DEFAULT_MAX_EXEC
        } else {
            max_exec
        };
        self.max_exec.store(m, Ordering::Relaxed);
        self.interval_ms.store(interval_ms, Ordering::Relaxed);
    }

    fn stripe(&self, oid: Oid) -> &tokio::sync::RwLock<()> {
        &self.stripes[(proto::hash::sd_hash_oid(oid.0) % STRIPES as u64) as usize]
    }

    /// Held by a write to `oid` on this node while it runs.
    pub async fn writing(&self, oid: Oid) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.stripe(oid).read().await
    }
}

/// Does the ring give `oid` to this node now?
pub fn placed_here(node: &Node, view: &View, oid: Oid) -> bool {
    view.ring
        .holds(oid, node.copies_of(view, oid, 0), &node.me.nid)
}

/// Whether an object still belongs to a VDI: a live one's, or a deleted one's that a live
/// VDI made from it by snapshots and clones may still point at. Objects of VDIs deleted for
/// good are not brought back.
fn wanted(view: &View, oid: Oid) -> bool {
    let vid = oid.vid().0;
    match oid.kind() {
        OidKind::Inode => view.state.vdis.contains_key(&vid),
        _ => match view.state.vdis.get(&vid) {
            None => false,
            Some(v) if !v.deleted => true,
            Some(_) => view
                .state
                .vdis
                .iter()
                .any(|(&other, i)| !i.deleted && view.state.descends(other, vid)),
        },
    }
}

/// Called for every new epoch before its epoch file is written: moves aside the copies this
/// node must no longer serve, then starts recovery unless it is switched off. `all_aside`:
/// every copy is suspect (the membership says why: a node back from an absence, or a merge of
/// two histories) and is set aside with that tag.
pub async fn new_epoch(
    node: &Arc<Node>,
    view: &View,
    all_aside: Option<u32>,
) -> anyhow::Result<()> {
    let st = &view.state;
    if !st.epoch_nodes.iter().any(|n| n.nid == node.me.nid) {
        return Ok(());
    }
    let rejoined = all_aside.is_some();
    let store = node.store.clone();
    let last_own = all_aside.unwrap_or(0);
    let node2 = node.clone();
    let view2 = view.clone();
    let epoch = st.epoch;
    let moved = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        fail::fail_point!("recovery::before_set_aside");
        let mut moved = 0;
        for oid in store.list()? {
            if rejoined || !placed_here(&node2, &view2, oid) {
                let tag = if rejoined { last_own } else { epoch - 1 };
                store.make_stale(oid, tag)?;
                moved += 1;
            }
        }
        Ok(moved)
    })
    .await??;
    if moved > 0 {
        tracing::info!("epoch {epoch}: {moved} copies moved aside (rejoined: {rejoined})");
    }
    if !st.recovery_disabled {
        start(node, epoch);
    }
    Ok(())
}

/// Starts the background recovery of `epoch`.
pub fn start(node: &Arc<Node>, epoch: u32) {
    node.recovery.set_problem(None);
    node.recovery.set_progress(|p| {
        *p = Progress {
            epoch,
            running: true,
            done: 0,
            total: 0,
        }
    });
    let node = node.clone();
    tokio::spawn(async move {
        let mut backoff = RETRY_FIRST;
        loop {
            match run(&node, epoch).await {
                Ok(true) => {
                    node.recovery.set_problem(None);
                    node.recovery.set_progress(|p| p.running = false);
                    tracing::info!("epoch {epoch}: recovery done");
                    let msg = Message::RecoveryDone {
                        epoch,
                        node: node.me.nid.to_string(),
                    };
                    if let Err(e) = node.notify(msg).await {
                        tracing::warn!("reporting recovery of epoch {epoch}: {e}");
                    }
                    return;
                }
                Ok(false) => {
                    tracing::info!("epoch {epoch}: recovery superseded");
                    return;
                }
                // Not done: nothing is reported (so nothing is purged); it goes on until it
                // is complete or a newer epoch takes over.
                Err(e) => {
                    tracing::warn!(
                        "epoch {epoch}: recovery incomplete ({e}); again in {backoff:?}"
                    );
                    if node.recovery.problem().is_none() {
                        node.recovery.set_problem(format!("incomplete: {e}"));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    if node.epoch() != epoch || node.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    });
}

/// Every copy each member of the epoch has: oid -> [(node, tag, version)]. Every list or none: a
/// member whose list cannot be had fails the whole gathering, as what it holds is unknown.
async fn gather(node: &Arc<Node>, view: &View) -> Result<Lists, SdResult> {
    let lists = join_all(view.state.epoch_nodes.iter().map(|n| async move {
        if n.nid == node.me.nid {
            let store = node.store.clone();
            let l = tokio::task::spawn_blocking(move || store.tagged_list())
                .await
                .map_err(|_| SdResult::EIO)
                .and_then(|r| r.map_err(|e| e.result()));
            return (n.nid, l);
        }
        fail::fail_point!("recovery::list", |_| (n.nid, Err(SdResult::NETWORK_ERROR)));
        (n.nid, node.peers.list_tagged(n.nid, view.state.epoch).await)
    }))
    .await;
    let mut all = Lists::new();
    for (nid, l) in lists {
        let l = l.inspect_err(|e| {
            tracing::warn!("object list of {nid}: {e}");
            node.recovery
                .set_problem(format!("the object list of {nid} cannot be had: {e}"));
        })?;
        for (oid, tag, version) in l {
            all.entry(oid).or_default().push((nid, tag, version));
        }
    }
    Ok(all)
}

/// Recovers everything this node lacks at `epoch`; false when a newer epoch took over.
async fn run(node: &Arc<Node>, epoch: u32) -> Result<bool, SdResult> {
    let _one_at_a_time = node.recovery.running.lock().await;
    let view = node.view();
    if view.state.epoch != epoch {
        return Ok(false);
    }
    let mut all = gather(node, &view).await?;
    avoid_disk_full(node, &view, &all)?;
    let mut tables = Tables::default();
    let todo = to_fetch(node, &view, &all, &mut tables).await?;
    node.recovery.set_progress(|p| {
        p.done = 0;
        p.total = todo.len() as u64;
    });
    let (max_exec, _) = node.recovery.throttle();
    let mut failed = 0usize;
    let mut first_error = None;
    for batch in todo.chunks(max_exec.max(1) as usize) {
        if node.epoch() != epoch {
            return Ok(false);
        }
        let (ops_before, started) = (
            node.recovery.client_ops.load(Ordering::Relaxed),
            tokio::time::Instant::now(),
        );
        let results = join_all(batch.iter().map(|f| {
            let view = &view;
            async move { fetch(node, view, f.oid, &f.sources, true).await }
        }))
        .await;
        for (r, f) in results.into_iter().zip(batch) {
            if let Err(e) = r {
                failed += 1;
                first_error.get_or_insert(e);
                tracing::warn!("epoch {epoch}: cannot recover {}: {e}", f.oid);
            }
        }
        node.recovery.set_progress(|p| p.done += batch.len() as u64);
        let busy = node.recovery.client_ops.load(Ordering::Relaxed) != ops_before;
        let rest = if busy {
            (started.elapsed() * TRANQUILITY).min(MAX_REST)
        } else {
            Duration::ZERO
        };
        let (_, pause) = node.recovery.throttle();
        let rest = rest + Duration::from_millis(pause);
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
    }
    if failed > 0 {
        tracing::warn!("epoch {epoch}: {failed} objects could not be recovered");
    }
    if node.epoch() != epoch {
        return Ok(false);
    }
    // A request of the previous epoch still in flight when the epoch changed (or a fetch that
    // finished after it) can leave a copy the ring does not give this node: set it aside too.
    let (n, v) = (node.clone(), node.view());
    let swept = tokio::task::spawn_blocking(move || -> Result<usize, crate::store::StoreError> {
        let mut moved = 0;
        for oid in n.store.list()? {
            if !placed_here(&n, &v, oid) && n.store.make_stale(oid, epoch - 1).is_ok() {
                moved += 1;
            }
        }
        Ok(moved)
    })
    .await
    .map_err(|_| SdResult::EIO)?
    .map_err(|e| e.result())?;
    if swept > 0 {
        tracing::info!("epoch {epoch}: {swept} late copies set aside");
    }
    if node.epoch() != epoch {
        return Ok(false);
    }
    if failed > 0 {
        let e = first_error.unwrap_or(SdResult::EIO);
        node.recovery
            .set_problem(format!("{failed} objects could not be recovered: {e}"));
        return Err(e);
    }
    // Checked, not assumed: with this node's list as it is now, nothing is left to fetch.
    let me = node.me.nid;
    let store = node.store.clone();
    let own = tokio::task::spawn_blocking(move || store.tagged_list())
        .await
        .map_err(|_| SdResult::EIO)?
        .map_err(|e| e.result())?;
    for holders in all.values_mut() {
        holders.retain(|h| h.0 != me);
    }
    for (oid, tag, version) in own {
        all.entry(oid).or_default().push((me, tag, version));
    }
    let left = to_fetch(node, &view, &all, &mut tables).await?;
    if !left.is_empty() {
        let msg = format!("{} objects still missing after the fetches", left.len());
        tracing::warn!("epoch {epoch}: {msg}");
        node.recovery.set_problem(msg);
        return Err(SdResult::EIO);
    }
    Ok(node.epoch() == epoch)
}

/// What this node must fetch at `view`'s epoch: the plan, less the objects of which only
/// stale copies are left and that no live table points at any more.
async fn to_fetch(
    node: &Arc<Node>,
    view: &View,
    all: &Lists,
    tables: &mut Tables,
) -> Result<Vec<plan::Fetch>, SdResult> {
    let placed = |oid| placed_here(node, view, oid);
    let want = |oid| wanted(view, oid);
    let p = plan::plan(
        all,
        &plan::Facts {
            me: node.me.nid,
            placed_here: &placed,
            wanted: &want,
        },
    );
    let mut todo = p.fetch;
    for f in p.only_stale {
        if tables.referenced(node, view, f.oid).await? {
            todo.push(f);
        }
    }
    Ok(todo)
}

/// `-F` (the cluster formatted to avoid a full disk): recovery does not start while a node
/// would need more room for the data objects the ring gives it than its disk has, as the
/// original; the copies stay where they are and nothing is purged until a node is added.
fn avoid_disk_full(node: &Arc<Node>, view: &View, all: &Lists) -> Result<(), SdResult> {
    if view.state.format.flags & proto::cluster_flags::AVOID_DISKFULL == 0 {
        return Ok(());
    }
    let placement = |oid| {
        let n = node.copies_of(view, oid, 0);
        view.ring.placement(oid, n).iter().map(|n| n.nid).collect()
    };
    let want = |oid| wanted(view, oid);
    let size = |oid| node.object_size(view, oid);
    let need = plan::space_needed(all, &placement, &want, &size);
    let short: Vec<String> = view
        .state
        .epoch_nodes
        .iter()
        .filter_map(|n| {
            let needs = need.get(&n.nid).copied().unwrap_or(0);
            (n.space < needs).then(|| format!("{} needs {needs} bytes, has {}", n.nid, n.space))
        })
        .collect();
    if short.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "not started: it would fill a disk ({}); add a node",
        short.join(", ")
    );
    tracing::error!("epoch {}: recovery {msg}", view.state.epoch);
    node.recovery.set_problem(format!("recovery {msg}"));
    Err(SdResult::NO_SPACE)
}

/// Entries of the inode tables read during one recovery run: (vid, index) -> owner.
#[derive(Default)]
struct Tables(std::collections::HashMap<(u32, u32), u32>);

impl Tables {
    /// Whether a live VDI's table points at data object `oid`: its own VDI's, or that of a
    /// VDI made from it by snapshots and clones.
    async fn referenced(
        &mut self,
        node: &Arc<Node>,
        view: &View,
        oid: Oid,
    ) -> Result<bool, SdResult> {
        let (owner, idx) = (oid.vid().0, oid.index());
        let users: Vec<u32> = view
            .state
            .vdis
            .iter()
            .filter(|(&v, i)| !i.deleted && view.state.descends(v, owner))
            .map(|(&v, _)| v)
            .collect();
        for vid in users {
            let entry = match self.0.get(&(vid, idx)) {
                Some(&e) => e,
                None => {
                    let at = proto::inode::data_vdi_id_offset(idx) as u64;
                    let b =
                        crate::gateway::read(node, Oid::inode(proto::Vid(vid)), at, 4, 0).await?;
                    let e = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    self.0.insert((vid, idx), e);
                    e
                }
            };
            if entry == owner {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Fetches `oid` now if this node should hold it and lacks it (a request needs it first).
pub async fn fetch_now(node: &Arc<Node>, view: &View, oid: Oid) -> Result<(), SdResult> {
    if node.store.exists(oid) || !placed_here(node, view, oid) {
        return Ok(());
    }
    let asks = view
        .state
        .epoch_nodes
        .iter()
        .filter(|n| n.nid != node.me.nid)
        .map(|n| async move {
            let tag = node.peers.tag(n.nid, view.state.epoch, oid).await;
            tag.map(|t| t.map(|(t, v)| (n.nid, t, v)))
        });
    let answers = join_all(asks).await;
    let complete = answers.iter().all(|a| a.is_ok());
    let mut holders: Vec<Holder> = answers.into_iter().flatten().flatten().collect();
    if let Ok(Some((t, v))) = node.store.best(oid) {
        holders.push((node.me.nid, t, v));
    }
    fetch(node, view, oid, &holders, complete).await
}

/// Installs the best copy among `holders` as this node's current copy. `complete`: every
/// member of the epoch said what it holds; without that, only a current copy is taken (a
/// stale one could be older than a current copy on a member that did not answer).
async fn fetch(
    node: &Arc<Node>,
    view: &View,
    oid: Oid,
    holders: &[Holder],
    complete: bool,
) -> Result<(), SdResult> {
    let _g = node.recovery.stripe(oid).write().await;
    if node.store.exists(oid) {
        return Ok(());
    }
    // The epoch may have moved on since the caller looked: fetch only what is ours now.
    if !placed_here(node, &node.view(), oid) {
        return Err(SdResult::NO_OBJ);
    }
    // A stale copy only when no current copy exists anywhere: if current copies exist but
    // cannot be read now (their node moved to a newer epoch, or is gone), a stale one could
    // be older than them, so this fails and is tried again.
    let sources = plan::sources(node.me.nid, holders);
    if !complete && sources.first().is_some_and(|s| s.1 != CURRENT) {
        return Err(SdResult::NETWORK_ERROR);
    }
    let size = node.object_size(view, oid) as usize;
    let mut last = SdResult::NO_OBJ;
    for (nid, tag, _) in sources {
        let copy = if nid == node.me.nid {
            read_own(node, oid, tag, size).await
        } else {
            read_remote(node, view, nid, oid, tag, size).await
        };
        match copy {
            Ok((data, stamp)) => return install(node, oid, data, stamp).await,
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A copy's version and the id of the last write it counted, carried to where it is
/// installed: the write in flight that it already holds is then not counted twice there.
type Stamp = (u64, u64);

async fn install(node: &Arc<Node>, oid: Oid, data: Vec<u8>, stamp: Stamp) -> Result<(), SdResult> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || store.install(oid, &data, stamp))
        .await
        .map_err(|_| SdResult::EIO)?
        .map_err(|e| e.result())
}

/// REPAIR_REPLICA (`dog vdi check`, or a gateway whose copies disagree): replaces this node's
/// copy of `oid` with `from`'s current one, version included.
pub async fn repair(node: &Arc<Node>, view: &View, oid: Oid, from: NodeId) -> Result<(), SdResult> {
    if !oid.is_well_formed() || from == node.me.nid {
        return Err(SdResult::INVALID_PARMS);
    }
    if !view.state.epoch_nodes.iter().any(|n| n.nid == from) {
        // Not a member of this node's epoch: membership moved, or a bad request.
        return Err(SdResult::NEW_NODE_VER);
    }
    let _g = node.recovery.stripe(oid).write().await;
    let size = node.object_size(view, oid) as usize;
    let (data, stamp) = read_remote(node, view, from, oid, CURRENT, size).await?;
    fail::fail_point!("recovery::repair_before_install");
    install(node, oid, data, stamp).await
}

/// This node's own copy tagged `tag` of `oid`, whole, with its stamp.
async fn read_own(
    node: &Arc<Node>,
    oid: Oid,
    tag: u32,
    size: usize,
) -> Result<(Vec<u8>, Stamp), SdResult> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(
        move || -> Result<(Vec<u8>, Stamp), crate::store::StoreError> {
            let stamp = store.stamp(oid, tag)?;
            Ok((store.read_tagged(oid, tag, 0, size)?, stamp))
        },
    )
    .await
    .map_err(|_| SdResult::EIO)?
    .map_err(|e| e.result())
}

/// Reads the whole copy tagged `tag` of `oid` from `nid`, in pieces, with its stamp (the same
/// for every piece, else the copy changed meanwhile and it is read again later).
async fn read_remote(
    node: &Arc<Node>,
    view: &View,
    nid: NodeId,
    oid: Oid,
    tag: u32,
    size: usize,
) -> Result<(Vec<u8>, Stamp), SdResult> {
    let mut out = Vec::with_capacity(size);
    let mut stamp = None;
    while out.len() < size {
        let n = (size - out.len()).min(FETCH_CHUNK);
        let at = out.len() as u64;
        let (piece, v, last) = node
            .peers
            .read_tagged(nid, view.state.epoch, oid, tag, at, n)
            .await?;
        if *stamp.get_or_insert((v, last)) != (v, last) {
            return Err(SdResult::NETWORK_ERROR);
        }
        out.extend_from_slice(&piece);
    }
    Ok((out, stamp.unwrap_or((0, 0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_layout() {
        let p = Progress {
            epoch: 3,
            running: true,
            done: 5,
            total: 9,
        };
        let b = p.encode();
        assert_eq!(b.len(), 24);
        assert_eq!(b[0], 1);
        assert_eq!(&b[8..16], &5u64.to_le_bytes());
        assert_eq!(&b[16..24], &9u64.to_le_bytes());
    }
}
