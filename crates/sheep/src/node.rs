//! This node's runtime: its identity, store, view of the cluster, and the core loop that
//! applies cluster events in order and carries out their effects.
//!
//! Owns: `Node`, the single shared handle every request handler uses. Never: wire parsing.

use crate::cluster::state::{
    ClusterState, Effect, Event, Format, JoinInfo, Message, Status, VdiInfo,
};
use crate::cluster::{ClusterError, Driver};
use crate::peers::Peers;
use crate::ring::Ring;
use crate::store::Store;
use proto::config::{Config, SD_FORMAT_VERSION};
use proto::inode::InodeHeader;
use proto::oid::OidKind;
use proto::{Oid, SdNode, SdResult};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// The state a request sees: one consistent snapshot of membership, epoch and ring.
#[derive(Clone)]
pub struct View {
    pub state: Arc<ClusterState>,
    pub ring: Arc<Ring>,
}

pub struct Node {
    pub me: SdNode,
    pub store: Arc<Store>,
    pub driver: Arc<dyn Driver>,
    pub peers: Peers,
    pub recovery: crate::recovery::Recovery,
    /// Tickets of the writes running here, per VDI; VDIs being snapshotted admit none.
    pub admission: crate::admission::Admission,
    /// Writes this node sends out as the gateway, by object and range.
    pub writes: crate::gateway::Writes,
    /// The newest epoch in this node's store when it started, before it joined.
    pub own_epoch: std::sync::atomic::AtomicU32,
    /// The newest epoch this node took part in as a member (its copies were current then):
    /// at start the newest of its epoch log that lists it, then every epoch it carries out.
    member_epoch: std::sync::atomic::AtomicU32,
    /// Set once this node has filled the gaps of its epoch log from the others.
    history_filled: AtomicBool,
    /// This start of the node (its join event carries it).
    incarnation: u64,
    /// The space the ring weighs this node by (auto vnodes): `me.space` at start, then what
    /// the last `dog cluster reweight` measured.
    space: std::sync::atomic::AtomicU64,
    /// The client ports this node serves besides its Sheepdog port (its join carries them);
    /// set before `start`.
    pub services: std::sync::OnceLock<crate::cluster::state::Services>,
    /// Set once this start's own join event has been applied: events before it are history.
    joined: AtomicBool,
    view: RwLock<View>,
    applied: watch::Sender<u64>,
    /// The newest epoch whose effects this node has carried out (old copies set aside): the
    /// view moves first, and nothing may be served at an epoch before it is settled here.
    settled: watch::Sender<u32>,
    /// Woken when the node must stop (shutdown, kill, join refused).
    pub stop: Notify,
    pub stopping: AtomicBool,
    pub killed: AtomicBool,
    join_error: RwLock<Option<String>>,
    /// This node's NBD server, for the writer-lock handovers other nodes ask of it.
    pub nbd: std::sync::OnceLock<std::sync::Weak<crate::nbd::NbdServer>>,
}

/// How long a request waits for this node to settle a new epoch before it is retried.
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// Most epoch records looked at by one scan of the epoch log.
const MAX_EPOCH_SCAN: usize = 1 << 20;
/// Tries at filling the gaps of the epoch log before giving up.
const HISTORY_ROUNDS: u32 = 6;

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Node {
    pub fn new(me: SdNode, store: Arc<Store>, driver: Arc<dyn Driver>) -> Arc<Node> {
        let state = Arc::new(ClusterState::default());
        let ring = Arc::new(Ring::new(&[]));
        let peers = Peers::new();
        peers.identify(me.nid, 0);
        Arc::new(Node {
            me,
            store,
            driver,
            peers,
            recovery: Default::default(),
            admission: Default::default(),
            writes: Default::default(),
            own_epoch: Default::default(),
            member_epoch: Default::default(),
            history_filled: AtomicBool::new(false),
            incarnation: {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                t ^ (u64::from(std::process::id()) << 32)
            },
            space: std::sync::atomic::AtomicU64::new(me.space),
            services: std::sync::OnceLock::new(),
            joined: AtomicBool::new(false),
            view: RwLock::new(View { state, ring }),
            applied: watch::channel(0).0,
            settled: watch::channel(0).0,
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            join_error: RwLock::new(None),
            nbd: std::sync::OnceLock::new(),
        })
    }

    pub fn view(&self) -> View {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn epoch(&self) -> u32 {
        self.view().state.epoch
    }

    /// The persistent state this node brings to the cluster when it joins.
    pub fn join_info(&self) -> Result<JoinInfo, crate::store::StoreError> {
        let cfg = self.store.read_config()?;
        let format = cfg.filter(|c| c.ctime != 0).map(|c| Format {
            ctime: c.ctime,
            copies: c.copies,
            copy_policy: c.copy_policy,
            flags: c.flags,
            block_size_shift: c.block_size_shift,
            store: c.store,
        });
        let epoch = self.store.latest_epoch()?;
        let epoch_nodes = match self.store.read_epoch(epoch)? {
            Some((nodes, _)) => nodes,
            None => Vec::new(),
        };
        let mut vdis = BTreeMap::new();
        if format.is_some() {
            // Every inode here, current or set aside: a VDI whose inode this node holds only
            // as a stale copy (set aside when it came back, before recovery put it back,
            // and the cluster was stopped again) is still a VDI the cluster must know, so
            // that recovery brings its objects back.
            for (oid, tag, _) in self.store.tagged_list()? {
                if oid.kind() != OidKind::Inode {
                    continue;
                }
                let Ok(b) = self
                    .store
                    .read_tagged(oid, tag, 0, proto::inode::SD_INODE_HEADER_SIZE)
                else {
                    continue;
                };
                let Some(h) = InodeHeader::decode(&b) else {
                    continue;
                };
                vdis.insert(
                    oid.vid().0,
                    VdiInfo {
                        copies: h.nr_copies,
                        copy_policy: h.copy_policy,
                        block_size_shift: h.block_size_shift,
                        snapshot: h.is_snapshot(),
                        parent: h.parent_vdi_id,
                        deleted: h.name.is_empty(),
                    },
                );
            }
        }
        Ok(JoinInfo {
            format,
            epoch: if epoch_nodes.is_empty() { 0 } else { epoch },
            epoch_nodes,
            vdis,
            incarnation: self.incarnation,
            services: self.services.get().copied().unwrap_or_default(),
        })
    }

    /// The newest epoch up to `latest` whose record lists this node (0: none). A record of a
    /// later epoch can be history it replayed, or took from the others, without a part in it.
    fn last_member_epoch(&self, latest: u32) -> Result<u32, crate::store::StoreError> {
        for e in (1..=latest).rev().take(MAX_EPOCH_SCAN) {
            if let Some((nodes, _)) = self.store.read_epoch(e)? {
                if nodes.iter().any(|n| n.nid == self.me.nid) {
                    return Ok(e);
                }
            }
        }
        Ok(0)
    }

    /// The record of `epoch`: this node's, else (a node that was away then) a member's.
    pub async fn epoch_log(&self, view: &View, epoch: u32) -> Option<(Vec<SdNode>, u64)> {
        if let Ok(Some(r)) = self.store.read_epoch(epoch) {
            return Some(r);
        }
        for m in view.state.members.iter().filter(|m| m.nid != self.me.nid) {
            if let Ok(Some(r)) = self.peers.epoch_log(m.nid, epoch).await {
                return Some(r);
            }
        }
        None
    }

    /// Writes into this node's epoch log the records of the epochs before `upto` that it
    /// lacks (it was away), taken from the members; with `from`, the records up to its epoch
    /// are taken from that node even where this node has its own (the cluster went on from
    /// that node's history). Bounded: a few rounds, then it gives up with a log line.
    async fn fill_history(self: Arc<Self>, upto: u32, from: Option<(SdNode, u32)>) {
        let mut pause = Duration::from_millis(200);
        for round in 0..HISTORY_ROUNDS {
            let view = self.view();
            let mut missing = 0usize;
            for e in (1..upto).rev().take(MAX_EPOCH_SCAN) {
                let record = match from {
                    Some((n, tag)) if e <= tag => match self.peers.epoch_log(n.nid, e).await {
                        Ok(Some(r)) => Some(r),
                        Ok(None) => continue,
                        Err(_) => None,
                    },
                    _ => match self.store.read_epoch(e) {
                        Ok(Some(_)) => continue,
                        _ => self.epoch_log(&view, e).await,
                    },
                };
                let Some((nodes, time)) = record else {
                    missing += 1;
                    continue;
                };
                let store = self.store.clone();
                let written =
                    tokio::task::spawn_blocking(move || store.write_epoch(e, &nodes, time)).await;
                if !matches!(written, Ok(Ok(()))) {
                    missing += 1;
                }
            }
            if missing == 0 {
                return;
            }
            tracing::warn!(
                "epoch log: {missing} records before epoch {upto} not found on any member                  (round {round})"
            );
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }

    /// Joins the cluster and runs the core loop; returns once this node is a member.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        let info = self.join_info()?;
        self.own_epoch.store(info.epoch, Ordering::SeqCst);
        self.member_epoch
            .store(self.last_member_epoch(info.epoch)?, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        self.driver.clone().start(self.me, info, tx).await?;
        tokio::spawn(self.clone().core_loop(rx));
        tokio::spawn(self.clone().watch_disks());
        let mut applied = self.applied.subscribe();
        loop {
            if let Some(e) = self
                .join_error
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                anyhow::bail!("failed to join the cluster: {e}");
            }
            let v = self.view();
            // This start's own join, not an earlier one in the replayed history.
            let joined = self.joined.load(Ordering::SeqCst);
            if joined && v.state.is_member(&self.me) && self.settled(v.state.epoch).await {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
        }
    }

    async fn core_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<crate::cluster::Delivery>) {
        while let Some((seq, time, ev)) = rx.recv().await {
            let time = if time == 0 { now_secs() } else { time };
            if let Event::Join { node, info } = &ev {
                if node.nid == self.me.nid && info.incarnation == self.incarnation {
                    self.joined.store(true, Ordering::SeqCst);
                }
            }
            let (effects, view, prev) = {
                let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
                let prev = v.state.clone();
                let mut st = (*v.state).clone();
                let fx = st.apply(&ev);
                if st.format.ctime != v.state.format.ctime {
                    self.peers.identify(self.me.nid, st.format.ctime);
                }
                let epoch_changed = st.epoch_nodes != v.state.epoch_nodes;
                v.state = Arc::new(st);
                if epoch_changed {
                    v.ring = Arc::new(Ring::new(&v.state.epoch_nodes));
                }
                // Under the view's lock: a writer that sees the old view got its ticket before
                // the freeze, so a drain that follows this event waits for it.
                self.admission.set_frozen(v.state.freezing.keys().copied());
                (fx, v.clone(), prev)
            };
            // Requests waiting on a node that left end now (the gateway retries elsewhere).
            for gone in prev
                .members
                .iter()
                .filter(|m| !view.state.is_member(m) && m.nid != self.me.nid)
            {
                self.peers.forget(gone.nid);
            }
            for fx in effects {
                if let Err(e) = self.carry_out(fx, &view, time).await {
                    tracing::error!("cluster event {ev:?}: {e}");
                }
            }
            self.settled.send_replace(view.state.epoch);
            self.applied.send_replace(seq);
            // Once running as a member, the epochs it was away for go into its log too.
            if view.state.status == Status::Ok
                && self.joined.load(Ordering::SeqCst)
                && view.state.epoch_nodes.iter().any(|n| n.nid == self.me.nid)
                && !self.history_filled.swap(true, Ordering::SeqCst)
            {
                tokio::spawn(self.clone().fill_history(view.state.epoch, None));
            }
        }
    }

    /// Waits (bounded) until this node has carried out the effects of `epoch` (a returning
    /// node has set its old copies aside); false if it did not in time.
    pub async fn settled(&self, epoch: u32) -> bool {
        let mut rx = self.settled.subscribe();
        let done = tokio::time::timeout(SETTLE_WAIT, rx.wait_for(|&e| e >= epoch))
            .await
            .is_ok_and(|r| r.is_ok());
        done
    }

    async fn carry_out(self: &Arc<Self>, fx: Effect, view: &View, time: u64) -> anyhow::Result<()> {
        let store = self.store.clone();
        // Events from before this node's own join are history it replays to rebuild the
        // state: they are not to be carried out on its store again.
        let replaying = !self.joined.load(Ordering::SeqCst);
        if replaying
            && matches!(
                fx,
                Effect::Formatted(_)
                    | Effect::PurgeStale { .. }
                    | Effect::StartRecovery { .. }
                    | Effect::Reweigh
                    | Effect::ResolveSnapshot { .. }
                    | Effect::Shutdown
            )
        {
            return Ok(());
        }
        match fx {
            Effect::NewEpoch {
                epoch,
                nodes,
                prev_nodes,
                merge,
            } => {
                tracing::info!("epoch {epoch}: {} nodes", nodes.len());
                let member = nodes.iter().any(|n| n.nid == self.me.nid);
                if !replaying {
                    let (zones, copies) = (view.ring.nr_zones(), view.state.format.copies);
                    if zones < usize::from(copies) {
                        tracing::warn!(
                            "epoch {epoch}: degraded, {zones} zones for {copies} copies: objects \
                             keep {zones} copies until more zones join"
                        );
                    }
                    let aside = self.set_aside(epoch, &prev_nodes, merge.as_ref());
                    crate::recovery::new_epoch(self, view, aside).await?;
                }
                // The time of the event that made the epoch, also when replaying history.
                tokio::task::spawn_blocking(move || store.write_epoch(epoch, &nodes, time))
                    .await??;
                if !replaying && member {
                    self.member_epoch.store(epoch, Ordering::SeqCst);
                    if let Some(m) = merge.filter(|m| m.from.nid != self.me.nid) {
                        tokio::spawn(self.clone().fill_history(epoch, Some((m.from, m.tag))));
                    }
                }
            }
            Effect::Formatted(f) => {
                tracing::info!("cluster formatted with {} copies", f.copies);
                let cfg = self.config_of(&f, false);
                tokio::task::spawn_blocking(move || -> Result<(), crate::store::StoreError> {
                    store.purge_objects()?;
                    store.remove_epochs()?;
                    store.write_config(&cfg)
                })
                .await??;
            }
            Effect::Reconfigured(f) => {
                let shutdown = false;
                let cfg = self.config_of(&f, shutdown);
                tokio::task::spawn_blocking(move || store.write_config(&cfg)).await??;
            }
            Effect::Adopted(f) => {
                let current = self.store.read_config()?;
                if current.as_ref().map(|c| c.ctime) != Some(f.ctime)
                    || current.as_ref().is_some_and(|c| c.shutdown)
                {
                    let cfg = self.config_of(&f, false);
                    tokio::task::spawn_blocking(move || store.write_config(&cfg)).await??;
                }
            }
            Effect::JoinRefused { node, reason } => {
                if node.nid == self.me.nid && !view.state.is_member(&self.me) {
                    *self.join_error.write().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                }
            }
            Effect::PurgeStale { epoch } => {
                // Copies of VDIs no member knows of (their inodes are on nodes still away)
                // are kept: recovery could not tell whether they are wanted.
                let known: std::collections::BTreeSet<u32> =
                    view.state.vdis.keys().copied().collect();
                let n = tokio::task::spawn_blocking(move || {
                    store.purge_stale_except(|oid| !known.contains(&oid.vid().0))
                })
                .await??;
                tracing::info!("epoch {epoch}: every node recovered; {n} stale copies purged");
            }
            Effect::StartRecovery { epoch } => crate::recovery::start(self, epoch),
            Effect::Reweigh => {
                // Off the core loop: the announcement is a cluster event of its own.
                tokio::spawn(self.clone().reweigh());
            }
            Effect::ResolveSnapshot {
                vid,
                freeze,
                resolver,
            } => {
                if resolver == self.me.nid.to_string() {
                    // Not on the core loop: resolving takes peer requests and cluster events.
                    let node = self.clone();
                    tokio::spawn(async move {
                        crate::vdi::resolve_snapshot(&node, vid, freeze).await;
                    });
                }
            }
            Effect::Shutdown => {
                if view.state.is_member(&self.me) {
                    if let Some(mut cfg) = self.store.read_config()? {
                        cfg.shutdown = true;
                        tokio::task::spawn_blocking(move || store.write_config(&cfg)).await??;
                    }
                    tracing::info!("cluster shutdown");
                    self.request_stop();
                }
            }
        }
        Ok(())
    }

    /// Whether this node must set all its copies aside at the new `epoch`, and the tag they
    /// get (the last epoch they were current in): it returns from an absence (not a member of
    /// the epoch before, or one that it never recorded: killed first), or the cluster merges
    /// with a node that went through other epochs (then every copy competes by its version).
    fn set_aside(
        &self,
        epoch: u32,
        prev_nodes: &[SdNode],
        merge: Option<&crate::cluster::state::Merge>,
    ) -> Option<u32> {
        if let Some(m) = merge {
            return Some(m.tag);
        }
        let last = self.member_epoch.load(Ordering::SeqCst);
        let was_member = prev_nodes.iter().any(|n| n.nid == self.me.nid);
        (!was_member || last + 1 < epoch).then_some(last)
    }

    fn config_of(&self, f: &Format, shutdown: bool) -> Config {
        let space = self.space.load(Ordering::SeqCst);
        Config {
            ctime: f.ctime,
            flags: f.flags,
            copies: f.copies,
            store: f.store.clone(),
            shutdown,
            copy_policy: f.copy_policy,
            block_size_shift: f.block_size_shift,
            version: SD_FORMAT_VERSION,
            space,
        }
    }

    /// `dog cluster reweight` on this node, as the original's `node_size_varied`: the space
    /// is the disk's free space and what the objects take; a change of 1% or more is
    /// recorded in the config and announced (`Message::UpdateNode`). A gateway has none.
    /// Follows the changes of this node's disks: once at start and after every plug, unplug
    /// or failed disk, puts each copy on its disk; then recovers at the current epoch what a
    /// disk that went took with it. With no disk left the node leaves the cluster.
    async fn watch_disks(self: Arc<Self>) {
        let mut events = self.store.disk_events();
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    r = events.changed() => if r.is_err() { return },
                    _ = self.stop.notified() => return,
                }
            }
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            if self.store.disk_count() == 0 {
                tracing::error!("no disks available, going down");
                self.request_stop();
                return;
            }
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.rebalance()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!("{n} copies moved to the disks that hold them now"),
                Ok(Err(e)) => tracing::error!("moving copies between disks: {e}"),
                Err(e) => tracing::error!("moving copies between disks: {e}"),
            }
            let view = self.view();
            if !first
                && view.state.status == crate::cluster::state::Status::Ok
                && view.state.is_member(&self.me)
                && !view.state.recovery_disabled
            {
                crate::recovery::start(&self, view.state.epoch);
            }
            first = false;
        }
    }

    async fn reweigh(self: Arc<Self>) {
        if self.me.space == 0 {
            return;
        }
        let store = self.store.clone();
        let measured =
            tokio::task::spawn_blocking(move || -> Result<u64, crate::store::StoreError> {
                let (_, free) = store.space()?;
                Ok(free + store.usage()?.bytes)
            })
            .await;
        let new = match measured {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return tracing::warn!("reweight: {e}"),
            Err(e) => return tracing::warn!("reweight: {e}"),
        };
        let old = self.space.load(Ordering::SeqCst);
        if old != 0 && (new.abs_diff(old) as f64) / (old as f64) < 0.01 {
            return;
        }
        self.space.store(new, Ordering::SeqCst);
        let view = self.view();
        if let Ok(Some(mut cfg)) = self.store.read_config() {
            cfg.space = new;
            if let Err(e) = self.store.write_config(&cfg) {
                tracing::warn!("reweight: recording the space: {e}");
            }
        }
        let Some(mut me) = view
            .state
            .members
            .iter()
            .find(|m| m.nid == self.me.nid)
            .copied()
        else {
            return;
        };
        tracing::info!("reweight: space {old} -> {new} bytes");
        me.space = new;
        if let Err(e) = self.notify(Message::UpdateNode { node: me }).await {
            tracing::warn!("reweight: {e}");
        }
    }

    /// This node's vnodes now (`-V`, or `dog node vnodes set` since).
    pub fn vnodes(&self) -> u16 {
        self.view()
            .state
            .members
            .iter()
            .find(|m| m.nid == self.me.nid)
            .map_or(self.me.nr_vnodes, |m| m.nr_vnodes)
    }

    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
        self.stop.notify_one();
    }

    /// Waits until this node has applied every event up to `seq`.
    pub async fn wait_applied(&self, seq: u64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|&s| s >= seq).await;
    }

    /// Broadcasts `msg` and returns once this node has applied it.
    pub async fn notify(&self, msg: Message) -> Result<(), ClusterError> {
        let seq = self.driver.notify(msg).await?;
        self.wait_applied(seq).await;
        Ok(())
    }

    /// Broadcasts `msg` and returns once every member has applied it, so that whatever a
    /// client does next, through any node, sees it (a snapshot freezes its VDI everywhere
    /// before it is acknowledged). A member that does not answer in time is left behind.
    pub async fn notify_everywhere(&self, msg: Message) -> Result<(), ClusterError> {
        let seq = self.driver.notify(msg).await?;
        self.wait_applied(seq).await;
        let view = self.view();
        let waits = view
            .state
            .members
            .iter()
            .filter(|m| m.nid != self.me.nid)
            .map(|m| self.peers.wait_applied(m.nid, seq));
        for r in futures::future::join_all(waits).await {
            if let Err(e) = r {
                tracing::warn!("a member did not confirm event {seq}: {e}");
            }
        }
        Ok(())
    }

    /// Takes the cluster-wide mutex, with every earlier event applied here.
    pub async fn lock(&self) -> Result<crate::cluster::LockGuard, ClusterError> {
        let g = self.driver.lock().await?;
        self.wait_applied(g.seq).await;
        Ok(g)
    }

    /// Gate of the original's `queue_request`: may a request of this kind run now?
    pub fn gate(&self, force: bool) -> Result<View, SdResult> {
        if self.killed.load(Ordering::Relaxed) {
            return Err(SdResult::KILLED);
        }
        if self.driver.fenced() {
            // Maybe no longer a member (the cluster driver knows soon): peers retry elsewhere.
            return Err(SdResult::NETWORK_ERROR);
        }
        let v = self.view();
        match v.state.status {
            Status::Shutdown => Err(SdResult::SHUTDOWN),
            _ if force => Ok(v),
            Status::Ok => Ok(v),
            Status::WaitForFormat => Err(SdResult::WAIT_FOR_FORMAT),
            Status::WaitForJoin => Err(SdResult::WAIT_FOR_JOIN),
        }
    }

    /// `gate`, but a node that is not running yet first catches up with the cluster's order:
    /// a request may arrive here just after another node saw the format.
    pub async fn gate_synced(&self, force: bool) -> Result<View, SdResult> {
        // While it replays the cluster's history to its own join, its view is partial.
        if !self.joined.load(Ordering::SeqCst) {
            let mut rx = self.applied.subscribe();
            let joined = rx.wait_for(|_| self.joined.load(Ordering::SeqCst));
            let _ = tokio::time::timeout(SETTLE_WAIT, joined).await;
        }
        if self.view().state.status != Status::Ok {
            self.catch_up().await;
        }
        self.gate(force)
    }

    /// Applies every event the cluster has ordered so far (bounded wait), so that this node
    /// answers with what another node has just done.
    pub async fn catch_up(&self) {
        if let Ok(seq) = self.driver.sync().await {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wait_applied(seq)).await;
        }
    }

    /// Size of an object, from the kind of object and its VDI's block size.
    pub fn object_size(&self, view: &View, oid: Oid) -> u64 {
        let bss = |vid: u32| {
            view.state
                .vdis
                .get(&vid)
                .map(|v| v.block_size_shift)
                .filter(|&b| b != 0)
                .unwrap_or(
                    view.state
                        .format
                        .block_size_shift
                        .max(proto::SD_MIN_BLOCK_SIZE_SHIFT),
                )
        };
        match oid.kind() {
            OidKind::Inode => proto::inode::SD_INODE_SIZE as u64,
            OidKind::Attr => proto::SD_ATTR_OBJ_SIZE,
            OidKind::Ledger => proto::SD_DATA_OBJ_SIZE,
            OidKind::Btree => proto::SD_DATA_OBJ_SIZE,
            OidKind::Data | OidKind::Vmstate => 1u64 << bss(oid.vid().0),
        }
    }

    /// Copies an object has: its VDI's, else the request's, else the cluster default.
    pub fn copies_of(&self, view: &View, oid: Oid, requested: u8) -> usize {
        let c = view
            .state
            .vdis
            .get(&oid.vid().0)
            .map(|v| v.copies)
            .filter(|&c| c != 0);
        let c = c
            .or(Some(requested).filter(|&c| c != 0))
            .unwrap_or(view.state.format.copies);
        c.max(1) as usize
    }
}
