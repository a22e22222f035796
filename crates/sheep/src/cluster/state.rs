//! The cluster's shared state as a pure state machine.
//!
//! Every node applies the same ordered events (join, leave, notify) from the cluster driver to
//! a `ClusterState` and so holds the same membership, epoch, configuration and VDI table.
//! `apply` returns the effects the node must carry out locally (write an epoch file, wipe the
//! store on format, stop on shutdown). Owns: those rules. Never: I/O, clocks, sockets.

use proto::node::SdNode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Cluster status as the original's `enum sd_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not formatted yet.
    WaitForFormat,
    /// Formatted, waiting for the members of the last epoch to come back.
    WaitForJoin,
    Ok,
    Shutdown,
}

/// The cluster-wide configuration set by `dog cluster format`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Format {
    pub ctime: u64,
    pub copies: u8,
    pub copy_policy: u8,
    pub flags: u16,
    pub block_size_shift: u8,
    pub store: String,
}

/// What the cluster knows of one VDI (the original's `vdi_state`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiInfo {
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub snapshot: bool,
    pub parent: u32,
    pub deleted: bool,
}

/// A writer holding a VDI open: the node serving it and the client as that node names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// `address:port` of the serving node.
    pub node: String,
    pub client: String,
}

/// The writers of one VDI: one, or any number when every one of them asked to share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiLock {
    pub shared: bool,
    pub holders: Vec<LockHolder>,
}

/// A snapshot in progress (the original has no such state): writes to the base VDI wait until
/// it commits (`VdiAdd` with `old` = the base) or aborts (`Thaw`). The base inode on disk is
/// the commit record: once its `snap_ctime` is `snap_ctime`, the snapshot has happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// `address:port` of the node taking the snapshot.
    pub node: String,
    /// The new working VDI.
    pub new: u32,
    pub snap_ctime: u64,
}

/// A node's persistent state, sent with its join so that a restarting cluster can resume.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JoinInfo {
    /// `None` for a store that was never formatted.
    pub format: Option<Format>,
    pub epoch: u32,
    /// Members of `epoch` as recorded in the joiner's epoch log.
    #[serde(with = "node_list")]
    pub epoch_nodes: Vec<SdNode>,
    /// VDIs whose inode objects the joiner holds.
    pub vdis: BTreeMap<u32, VdiInfo>,
    /// Tells this start of the node from its earlier ones in the replayed history.
    #[serde(default)]
    pub incarnation: u64,
    /// Where the joiner serves its clients besides its Sheepdog port.
    #[serde(default)]
    pub services: Services,
}

/// A member's client ports besides the Sheepdog one (for the API's attach URIs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Services {
    /// The NBD TCP port, if it serves one.
    pub nbd_port: Option<u16>,
    /// The HTTP port, if it serves one.
    pub http_port: Option<u16>,
    /// Started with fixed vnodes (`sheep -V`): before a format, a cluster of such sheep
    /// places by their vnodes, as the original's.
    #[serde(default)]
    pub fixed_vnodes: bool,
}

/// Cluster-wide messages, delivered in the same order to every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Format(Format),
    Shutdown,
    /// A VDI was created (or a snapshot taken: `old` becomes a snapshot).
    VdiAdd {
        vid: u32,
        info: VdiInfo,
        old: Option<u32>,
    },
    /// A snapshot of `vid` starts: no new writes to it until it commits or thaws.
    Freeze {
        vid: u32,
        freeze: Freeze,
    },
    /// The snapshot of `vid` did not happen: writes to it go on.
    Thaw {
        vid: u32,
    },
    /// A VDI was deleted.
    VdiDel {
        vid: u32,
    },
    /// Leave WAIT state with the nodes present (`dog cluster recover force`).
    ForceRecover,
    /// A writer asks for a VDI's lock; granted when free, or when both sides share.
    Lock {
        vid: u32,
        holder: LockHolder,
        shared: bool,
    },
    /// A writer lets a VDI go.
    Unlock {
        vid: u32,
        holder: LockHolder,
    },
    /// The node of `from`, the only holder of a VDI's exclusive lock, hands it to `to` (an NBD
    /// writer through another node or client asked for it, and `from` has flushed and
    /// stopped writing: live migration). Applies only while `from` is still the only holder;
    /// otherwise (the lock was handed to someone else first, dropped, or is shared) nothing
    /// changes.
    Handover {
        vid: u32,
        from: LockHolder,
        to: LockHolder,
    },
    /// Every holder of a VDI's lock is dropped (`dog vdi lock unlock`).
    ForceUnlock {
        vid: u32,
    },
    /// `node` (address:port) holds every object the ring gives it at `epoch`.
    RecoveryDone {
        epoch: u32,
        node: String,
    },
    /// `dog cluster recover enable/disable`: automatic recovery after membership changes.
    AutoRecovery {
        enabled: bool,
    },
    /// A member's vnodes or space changed (`dog node vnodes set`, `dog cluster reweight`):
    /// the ring follows in a new epoch.
    UpdateNode {
        #[serde(with = "node")]
        node: SdNode,
    },
    /// `dog cluster reweight`: every member measures its space again.
    Reweight,
    /// `dog cluster alter-copy`: the copies of VDIs created from now on.
    AlterClusterCopy {
        copies: u8,
    },
    /// `dog vdi alter-copy`: the copies of one VDI; its objects move in a new epoch (each node
    /// sets aside the copies the ring no longer gives it and fetches the new ones).
    AlterVdiCopy {
        vid: u32,
        copies: u8,
    },
}

/// One ordered cluster event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Join {
        #[serde(with = "node")]
        node: SdNode,
        info: JoinInfo,
    },
    Leave {
        #[serde(with = "node")]
        node: SdNode,
    },
    Notify {
        #[serde(with = "node")]
        from: SdNode,
        msg: Message,
    },
}

/// A joiner with a newer epoch than the running cluster's: the cluster was started without it
/// (`recover force`), and both sides may hold copies the other lacks. Epoch numbers go on from
/// the newer side (never reused), every member sets all its copies aside tagged `tag`, and
/// recovery keeps, per object, the copy that took the most writes (its version). The members
/// take the epoch log up to `tag` from `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merge {
    pub tag: u32,
    pub from: SdNode,
}

/// What a node must do after applying an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A new epoch with these members: record it in the epoch log.
    NewEpoch {
        epoch: u32,
        nodes: Vec<SdNode>,
        /// Members of the epoch it follows, as the cluster decided it (after a restart, the
        /// newest epoch any joiner had): a member not among them is a returning node.
        prev_nodes: Vec<SdNode>,
        /// The running cluster and a joiner went through different epochs (the cluster was
        /// started with `recover force` without it): see `Merge`.
        merge: Option<Merge>,
    },
    /// The cluster was formatted: wipe objects and epochs, write the config.
    Formatted(Format),
    /// The node joined a formatted cluster: make its config match.
    Adopted(Format),
    /// The joiner was refused (belongs to another cluster).
    JoinRefused {
        node: SdNode,
        reason: String,
    },
    Shutdown,
    /// Every node of the epoch has recovered: stale copies can go.
    PurgeStale {
        epoch: u32,
    },
    /// Automatic recovery was switched back on: recover the current epoch now.
    StartRecovery {
        epoch: u32,
    },
    /// Measure this node's space again and announce it if it changed (`Message::Reweight`).
    Reweigh,
    /// The cluster's configuration changed (`Message::AlterClusterCopy`): record it.
    Reconfigured(Format),
    /// The node taking a snapshot of `vid` left before it ended: `resolver` (the lowest
    /// member) commits or thaws it, as the base inode on disk says.
    ResolveSnapshot {
        vid: u32,
        freeze: Freeze,
        resolver: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    pub status: Status,
    pub format: Format,
    pub epoch: u32,
    /// Nodes present now, sorted by id.
    pub members: Vec<SdNode>,
    /// Nodes of the current epoch (the ring's members), sorted by id.
    pub epoch_nodes: Vec<SdNode>,
    pub vdis: BTreeMap<u32, VdiInfo>,
    /// VDIs open for writing, and by whom.
    pub locks: BTreeMap<u32, VdiLock>,
    /// Automatic recovery switched off (`dog cluster recover disable`).
    pub recovery_disabled: bool,
    /// Nodes (address:port) done recovering the current epoch.
    pub recovered: std::collections::BTreeSet<String>,
    /// Snapshots in progress, by base VDI.
    pub freezing: BTreeMap<u32, Freeze>,
    /// While the cluster waits for its members: the epoch each one brought (address:port).
    pub join_epochs: BTreeMap<String, u32>,
    /// The client ports of each member (address:port), as it said when it joined.
    pub services: BTreeMap<String, Services>,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            status: Status::WaitForFormat,
            format: Format::default(),
            epoch: 0,
            members: Vec::new(),
            epoch_nodes: Vec::new(),
            vdis: BTreeMap::new(),
            locks: BTreeMap::new(),
            recovery_disabled: false,
            recovered: Default::default(),
            freezing: BTreeMap::new(),
            join_epochs: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }
}

fn sorted(mut v: Vec<SdNode>) -> Vec<SdNode> {
    v.sort_by_key(|n| n.nid);
    v.dedup_by(|a, b| a.nid == b.nid);
    v
}

impl ClusterState {
    pub fn is_member(&self, n: &SdNode) -> bool {
        self.members.iter().any(|m| m.nid == n.nid)
    }

    pub fn is_formatted(&self) -> bool {
        self.format.ctime != 0
    }

    /// `nodes` with the virtual nodes the ring gives them: by space (the original's auto
    /// vnodes) unless the cluster was formatted with fixed vnodes (`dog cluster format -V`),
    /// then as each sheep was started (`-V`; a gateway, `-g`, has none either way).
    pub fn placed(&self, nodes: &[SdNode]) -> Vec<SdNode> {
        let fixed = if self.is_formatted() {
            self.format.flags & proto::cluster_flags::AUTO_VNODES == 0
        } else {
            // Before a format: fixed when every sheep was started with -V.
            !nodes.is_empty()
                && nodes.iter().all(|n| {
                    self.services
                        .get(&n.nid.to_string())
                        .is_some_and(|s| s.fixed_vnodes)
                })
        };
        if fixed {
            nodes.to_vec()
        } else {
            proto::ring::auto_vnodes(nodes)
        }
    }

    fn new_epoch(&mut self, effects: &mut Vec<Effect>) {
        self.new_epoch_after(None, effects)
    }

    fn new_epoch_after(&mut self, merge: Option<Merge>, effects: &mut Vec<Effect>) {
        if let Some(m) = &merge {
            self.epoch = self.epoch.max(m.tag);
        }
        self.epoch += 1;
        let placed = self.placed(&self.members);
        let prev_nodes = std::mem::replace(&mut self.epoch_nodes, placed);
        self.recovered.clear();
        effects.push(Effect::NewEpoch {
            epoch: self.epoch,
            nodes: self.epoch_nodes.clone(),
            prev_nodes,
            merge,
        });
    }

    /// Adopt a joiner's persistent state (cluster restart, or a joiner with a newer epoch).
    fn adopt(&mut self, info: &JoinInfo, format: &Format) {
        self.format = format.clone();
        self.epoch = info.epoch;
        self.epoch_nodes = sorted(info.epoch_nodes.clone());
        self.status = Status::WaitForJoin;
    }

    /// In WAIT_FOR_JOIN: start once every member of the last epoch is back.
    fn check_gathered(&mut self, effects: &mut Vec<Effect>) {
        if self.status != Status::WaitForJoin {
            return;
        }
        let all_back = self.epoch_nodes.iter().all(|n| self.is_member(n));
        if !all_back {
            return;
        }
        self.status = Status::Ok;
        // A member of the last epoch that did not record it (killed before it wrote it) may
        // have missed its writes: a new epoch takes it in as a returning node.
        let behind = self.members.iter().any(|m| {
            self.join_epochs
                .get(&m.nid.to_string())
                .is_some_and(|&e| e < self.epoch)
        });
        self.join_epochs.clear();
        let same = self.members.len() == self.epoch_nodes.len() && !behind;
        if !same || self.epoch == 0 {
            self.new_epoch(effects);
        } else if !self.recovery_disabled {
            // The same members back: a recovery the stop cut short goes on (it finds nothing
            // to do if it had finished).
            effects.push(Effect::StartRecovery { epoch: self.epoch });
        }
    }

    /// Whether `vid` is `ancestor` or was made from it by snapshots and clones.
    pub fn descends(&self, mut vid: u32, ancestor: u32) -> bool {
        for _ in 0..4096 {
            if vid == ancestor {
                return true;
            }
            match self.vdis.get(&vid) {
                Some(v) if v.parent != 0 => vid = v.parent,
                _ => return false,
            }
        }
        false
    }

    pub fn apply(&mut self, ev: &Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match ev {
            Event::Join { node, info } => self.join(node, info, &mut fx),
            Event::Leave { node } => {
                if self.is_member(node) {
                    self.members.retain(|m| m.nid != node.nid);
                    // A dead node's clients are gone with it.
                    let gone = node.nid.to_string();
                    self.services.remove(&gone);
                    self.locks.retain(|_, l| {
                        l.holders.retain(|h| h.node != gone);
                        !l.holders.is_empty()
                    });
                    if self.status == Status::Ok {
                        self.new_epoch(&mut fx);
                    }
                    self.orphaned_freezes(&mut fx);
                }
            }
            Event::Notify { msg, .. } => self.notify(msg, &mut fx),
        }
        fx
    }

    /// Snapshots whose node is gone are handed to the lowest member to finish or undo.
    fn orphaned_freezes(&self, fx: &mut Vec<Effect>) {
        let Some(resolver) = self.members.first() else {
            return;
        };
        for (vid, f) in &self.freezing {
            if !self.members.iter().any(|m| m.nid.to_string() == f.node) {
                fx.push(Effect::ResolveSnapshot {
                    vid: *vid,
                    freeze: f.clone(),
                    resolver: resolver.nid.to_string(),
                });
            }
        }
    }

    fn join(&mut self, node: &SdNode, info: &JoinInfo, fx: &mut Vec<Effect>) {
        let mut merge = None;
        if self.is_member(node) {
            fx.push(Effect::JoinRefused {
                node: *node,
                reason: format!("a node with address {} is already in the cluster", node.nid),
            });
            return;
        }
        if let Some(f) = &info.format {
            if self.status == Status::Shutdown {
                fx.push(Effect::JoinRefused {
                    node: *node,
                    reason: "the cluster is shutting down".into(),
                });
                return;
            }
            if !self.is_formatted() {
                self.adopt(info, f);
            } else if f.ctime != self.format.ctime {
                fx.push(Effect::JoinRefused {
                    node: *node,
                    reason: "its store belongs to another cluster (creation times differ)".into(),
                });
                return;
            } else if self.status == Status::WaitForJoin && info.epoch > self.epoch {
                self.adopt(info, f);
            } else if self.status == Status::Ok && info.epoch > self.epoch {
                merge = Some(Merge {
                    tag: info.epoch,
                    from: *node,
                });
            }
            if self.status == Status::WaitForJoin {
                self.join_epochs.insert(node.nid.to_string(), info.epoch);
            }
            for (vid, v) in &info.vdis {
                let e = self.vdis.entry(*vid).or_insert_with(|| v.clone());
                // A VDI once frozen or deleted on any node's disk stays so.
                e.snapshot |= v.snapshot;
                e.deleted |= v.deleted;
            }
        }
        self.members = sorted([self.members.clone(), vec![*node]].concat());
        self.services.insert(node.nid.to_string(), info.services);
        match self.status {
            Status::Ok => self.new_epoch_after(merge, fx),
            Status::WaitForJoin => self.check_gathered(fx),
            Status::WaitForFormat | Status::Shutdown => {}
        }
        if self.is_formatted() {
            fx.push(Effect::Adopted(self.format.clone()));
        }
    }

    fn notify(&mut self, msg: &Message, fx: &mut Vec<Effect>) {
        match msg {
            Message::Format(f) => {
                if self.status == Status::Shutdown {
                    return;
                }
                self.format = f.clone();
                self.vdis.clear();
                self.locks.clear();
                self.freezing.clear();
                self.join_epochs.clear();
                self.recovery_disabled = false;
                self.epoch = 0;
                self.status = Status::Ok;
                fx.push(Effect::Formatted(f.clone()));
                self.new_epoch(fx);
            }
            Message::Shutdown => {
                self.status = Status::Shutdown;
                fx.push(Effect::Shutdown);
            }
            Message::Freeze { vid, freeze } => {
                let working = self
                    .vdis
                    .get(vid)
                    .is_some_and(|v| !v.snapshot && !v.deleted);
                if working && !self.freezing.contains_key(vid) {
                    self.freezing.insert(*vid, freeze.clone());
                }
            }
            Message::Thaw { vid } => {
                self.freezing.remove(vid);
            }
            Message::VdiAdd { vid, info, old } => {
                if let Some(o) = old {
                    self.freezing.remove(o);
                    if let Some(v) = self.vdis.get_mut(o) {
                        v.snapshot = true;
                    }
                    // Writers follow the name to the new working VDI.
                    if let Some(l) = self.locks.remove(o) {
                        self.locks.insert(*vid, l);
                    }
                }
                self.vdis.insert(*vid, info.clone());
            }
            Message::VdiDel { vid } => {
                if let Some(v) = self.vdis.get_mut(vid) {
                    v.deleted = true;
                }
            }
            Message::ForceRecover => {
                if self.status == Status::WaitForJoin {
                    self.join_epochs.clear();
                    self.status = Status::Ok;
                    self.new_epoch(fx);
                }
            }
            Message::Lock {
                vid,
                holder,
                shared,
            } => match self.locks.get_mut(vid) {
                None => {
                    self.locks.insert(
                        *vid,
                        VdiLock {
                            shared: *shared,
                            holders: vec![holder.clone()],
                        },
                    );
                }
                Some(l) if l.holders.contains(holder) => {}
                Some(l) if l.shared && *shared => l.holders.push(holder.clone()),
                Some(_) => {}
            },
            Message::RecoveryDone { epoch, node } => {
                if *epoch == self.epoch && self.status == Status::Ok {
                    self.recovered.insert(node.clone());
                    let all = self
                        .epoch_nodes
                        .iter()
                        .all(|n| self.recovered.contains(&n.nid.to_string()));
                    if all {
                        fx.push(Effect::PurgeStale { epoch: *epoch });
                    }
                }
            }
            Message::AutoRecovery { enabled } => {
                let was = !self.recovery_disabled;
                self.recovery_disabled = !enabled;
                if *enabled && !was && self.status == Status::Ok {
                    fx.push(Effect::StartRecovery { epoch: self.epoch });
                }
            }
            Message::ForceUnlock { vid } => {
                self.locks.remove(vid);
            }
            Message::UpdateNode { node } => {
                let Some(m) = self.members.iter_mut().find(|m| m.nid == node.nid) else {
                    return;
                };
                *m = *node;
                if self.status == Status::Ok && self.placed(&self.members) != self.epoch_nodes {
                    self.new_epoch(fx);
                }
            }
            Message::Reweight => fx.push(Effect::Reweigh),
            Message::AlterClusterCopy { copies } => {
                if !self.is_formatted() || *copies == 0 {
                    return;
                }
                self.format.copies = *copies;
                fx.push(Effect::Reconfigured(self.format.clone()));
            }
            Message::AlterVdiCopy { vid, copies } => {
                let Some(v) = self.vdis.get_mut(vid).filter(|v| !v.deleted) else {
                    return;
                };
                if *copies == 0 || v.copies == *copies {
                    return;
                }
                v.copies = *copies;
                if self.status == Status::Ok {
                    self.new_epoch(fx);
                }
            }
            Message::Handover { vid, from, to } => {
                // As for Unlock, the lock may have followed the VDI to a descendant.
                let at = self
                    .locks
                    .iter()
                    .find(|(v, l)| {
                        !l.shared
                            && l.holders.len() == 1
                            && l.holders[0] == *from
                            && self.descends(**v, *vid)
                    })
                    .map(|(v, _)| *v);
                if let Some(l) = at.and_then(|v| self.locks.get_mut(&v)) {
                    l.holders = vec![to.clone()];
                }
            }
            Message::Unlock { vid, holder } => {
                // The lock may have moved to a descendant by snapshots since it was taken.
                let at = self
                    .locks
                    .iter()
                    .find(|(v, l)| l.holders.contains(holder) && self.descends(**v, *vid))
                    .map(|(v, _)| *v);
                if let Some(v) = at {
                    if let Some(l) = self.locks.get_mut(&v) {
                        l.holders.retain(|h| h != holder);
                        if l.holders.is_empty() {
                            self.locks.remove(&v);
                        }
                    }
                }
            }
        }
    }
}

mod node {
    use proto::node::SdNode;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(n: &SdNode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&n.to_bytes())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SdNode, D::Error> {
        let v: Vec<u8> = Deserialize::deserialize(d)?;
        SdNode::decode(&v).ok_or_else(|| D::Error::custom("short node record"))
    }
}

mod node_list {
    use proto::node::SdNode;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(n: &[SdNode], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&SdNode::encode_list(n))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SdNode>, D::Error> {
        let v: Vec<u8> = Deserialize::deserialize(d)?;
        Ok(SdNode::decode_list(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::node::NodeId;

    fn n(port: u16) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 128,
            zone: port as u32,
            space: 0,
        }
    }
    fn join(port: u16) -> Event {
        Event::Join {
            node: n(port),
            info: JoinInfo::default(),
        }
    }
    fn fmt() -> Format {
        Format {
            ctime: 42,
            copies: 3,
            block_size_shift: 22,
            store: "plain".into(),
            ..Default::default()
        }
    }

    #[test]
    fn locks_exclusive_shared_and_dropped_with_their_node() {
        let mut s = ClusterState::default();
        s.apply(&join(1));
        s.apply(&join(2));
        let h = |node: u16, c: &str| LockHolder {
            node: n(node).nid.to_string(),
            client: c.into(),
        };
        let lock = |s: &mut ClusterState, holder: LockHolder, shared: bool| {
            s.apply(&Event::Notify {
                from: n(1),
                msg: Message::Lock {
                    vid: 7,
                    holder,
                    shared,
                },
            });
        };
        lock(&mut s, h(1, "a"), false);
        lock(&mut s, h(2, "b"), true);
        assert_eq!(
            s.locks[&7].holders,
            vec![h(1, "a")],
            "exclusive holder stays alone"
        );
        s.apply(&Event::Leave { node: n(1) });
        assert!(s.locks.is_empty(), "a dead node's locks go with it");
        lock(&mut s, h(2, "b"), true);
        lock(&mut s, h(2, "c"), true);
        assert_eq!(s.locks[&7].holders.len(), 2);
        lock(&mut s, h(2, "d"), false);
        assert_eq!(
            s.locks[&7].holders.len(),
            2,
            "no exclusive lock over sharers"
        );
        for c in ["b", "c"] {
            s.apply(&Event::Notify {
                from: n(2),
                msg: Message::Unlock {
                    vid: 7,
                    holder: h(2, c),
                },
            });
        }
        assert!(s.locks.is_empty());
    }

    #[test]
    fn a_handover_moves_an_exclusive_lock_only_from_its_holder() {
        let mut s = ClusterState::default();
        s.apply(&join(1));
        s.apply(&join(2));
        s.apply(&join(3));
        let h = |node: u16, c: &str| LockHolder {
            node: n(node).nid.to_string(),
            client: c.into(),
        };
        let send = |s: &mut ClusterState, msg: Message| {
            s.apply(&Event::Notify { from: n(1), msg });
        };
        let lock = |holder: LockHolder, shared: bool| Message::Lock {
            vid: 7,
            holder,
            shared,
        };
        let hand = |from: LockHolder, to: LockHolder| Message::Handover { vid: 7, from, to };
        send(&mut s, lock(h(1, "a"), false));
        send(&mut s, hand(h(1, "a"), h(2, "b")));
        assert_eq!(s.locks[&7].holders, vec![h(2, "b")], "handed over");
        assert!(!s.locks[&7].shared);
        // A newcomer that asked at the same time: its handover names the old holder, who
        // no longer holds the lock, and changes nothing.
        send(&mut s, hand(h(1, "a"), h(3, "c")));
        assert_eq!(s.locks[&7].holders, vec![h(2, "b")], "second newcomer");
        // The old holder asks again through the cluster: refused, as any second writer.
        send(&mut s, lock(h(1, "a"), false));
        assert_eq!(s.locks[&7].holders, vec![h(2, "b")]);
        // The old holder's connections close: its unlock leaves the new holder's lock alone.
        send(
            &mut s,
            Message::Unlock {
                vid: 7,
                holder: h(1, "a"),
            },
        );
        assert_eq!(s.locks[&7].holders, vec![h(2, "b")], "stale unlock");
        // The lock follows the VDI across a snapshot; a handover of the old id finds it.
        let info = VdiInfo {
            copies: 3,
            copy_policy: 0,
            block_size_shift: 22,
            snapshot: false,
            parent: 7,
            deleted: false,
        };
        send(
            &mut s,
            Message::VdiAdd {
                vid: 8,
                info,
                old: Some(7),
            },
        );
        send(&mut s, hand(h(2, "b"), h(1, "a")));
        assert_eq!(s.locks[&8].holders, vec![h(1, "a")], "taken back");
        // Shared locks and locks nobody holds are never handed over.
        let mut shared = ClusterState::default();
        shared.apply(&join(1));
        send(&mut shared, lock(h(1, "x"), true));
        send(&mut shared, hand(h(1, "x"), h(2, "y")));
        assert_eq!(shared.locks[&7].holders, vec![h(1, "x")], "shared lock");
        send(&mut shared, Message::ForceUnlock { vid: 7 });
        send(&mut shared, hand(h(1, "x"), h(2, "y")));
        assert!(shared.locks.is_empty(), "no lock, nothing to hand over");
    }

    #[test]
    fn format_then_join_and_leave_bump_epochs() {
        let mut s = ClusterState::default();
        s.apply(&join(1));
        s.apply(&join(2));
        assert_eq!(s.status, Status::WaitForFormat);
        let fx = s.apply(&Event::Notify {
            from: n(1),
            msg: Message::Format(fmt()),
        });
        assert!(matches!(fx[0], Effect::Formatted(_)));
        assert_eq!(s.epoch, 1);
        assert_eq!(s.status, Status::Ok);
        s.apply(&join(3));
        assert_eq!(s.epoch, 2);
        assert_eq!(s.epoch_nodes.len(), 3);
        s.apply(&Event::Leave { node: n(2) });
        assert_eq!(s.epoch, 3);
        assert_eq!(s.epoch_nodes, vec![n(1), n(3)]);
    }

    #[test]
    fn restart_waits_for_every_member_of_the_last_epoch() {
        let info = JoinInfo {
            format: Some(fmt()),
            epoch: 5,
            epoch_nodes: vec![n(1), n(2)],
            vdis: BTreeMap::new(),
            incarnation: 1,
            services: Services::default(),
        };
        let mut s = ClusterState::default();
        s.apply(&Event::Join {
            node: n(1),
            info: info.clone(),
        });
        assert_eq!(s.status, Status::WaitForJoin);
        let fx = s.apply(&Event::Join { node: n(2), info });
        assert_eq!(s.status, Status::Ok);
        assert_eq!(s.epoch, 5, "same members: no new epoch");
        assert!(!fx.iter().any(|f| matches!(f, Effect::NewEpoch { .. })));
    }

    fn info(epoch: u32, nodes: &[u16]) -> JoinInfo {
        JoinInfo {
            format: Some(fmt()),
            epoch,
            epoch_nodes: nodes.iter().map(|&p| n(p)).collect(),
            vdis: BTreeMap::new(),
            incarnation: 1,
            services: Services::default(),
        }
    }

    fn join_with(s: &mut ClusterState, port: u16, i: JoinInfo) -> Vec<Effect> {
        s.apply(&Event::Join {
            node: n(port),
            info: i,
        })
    }

    #[test]
    fn the_newest_epoch_decides_and_its_predecessor_is_the_one_decided() {
        // The original's 001: node 1 (epoch 1), node 2 (epoch 3), node 3 (epoch 4) come back.
        let mut s = ClusterState::default();
        join_with(&mut s, 1, info(1, &[1, 2]));
        join_with(&mut s, 2, info(3, &[2, 3]));
        assert_eq!(s.status, Status::WaitForJoin);
        assert_eq!((s.epoch, s.epoch_nodes.clone()), (3, vec![n(2), n(3)]));
        let fx = join_with(&mut s, 3, info(4, &[3]));
        assert_eq!(s.status, Status::Ok);
        let Some(Effect::NewEpoch {
            epoch, prev_nodes, ..
        }) = fx.iter().find(|f| matches!(f, Effect::NewEpoch { .. }))
        else {
            panic!("no new epoch: {fx:?}");
        };
        assert_eq!(*epoch, 5);
        assert_eq!(prev_nodes, &vec![n(3)], "epoch 4's members, not epoch 3's");
    }

    #[test]
    fn a_member_back_without_the_last_epoch_gets_a_new_one() {
        let mut s = ClusterState::default();
        join_with(&mut s, 1, info(5, &[1, 2]));
        // Node 2 was killed before it recorded epoch 5.
        let fx = join_with(&mut s, 2, info(4, &[1, 2]));
        assert_eq!(s.status, Status::Ok);
        assert_eq!(s.epoch, 6);
        assert!(fx.iter().any(|f| matches!(f, Effect::NewEpoch { .. })));
    }

    #[test]
    fn a_newer_joiner_of_a_forced_cluster_merges_and_epochs_go_on_from_it() {
        let mut s = ClusterState::default();
        join_with(&mut s, 1, info(1, &[1, 2, 3]));
        s.apply(&Event::Notify {
            from: n(1),
            msg: Message::ForceRecover,
        });
        assert_eq!((s.status, s.epoch), (Status::Ok, 2));
        let fx = join_with(&mut s, 3, info(3, &[3]));
        assert_eq!(s.epoch, 4, "epoch numbers are not reused");
        assert!(fx.iter().any(|f| matches!(
            f,
            Effect::NewEpoch { merge: Some(Merge { tag: 3, from }), .. } if *from == n(3)
        )));
        // An older one is an ordinary returning node.
        let fx = join_with(&mut s, 2, info(2, &[2, 3]));
        assert_eq!(s.epoch, 5);
        assert!(fx
            .iter()
            .any(|f| matches!(f, Effect::NewEpoch { merge: None, .. })));
    }

    #[test]
    fn foreign_store_is_refused() {
        let mut s = ClusterState::default();
        s.apply(&join(1));
        s.apply(&Event::Notify {
            from: n(1),
            msg: Message::Format(fmt()),
        });
        let other = JoinInfo {
            format: Some(Format { ctime: 7, ..fmt() }),
            epoch: 9,
            ..Default::default()
        };
        let fx = s.apply(&Event::Join {
            node: n(2),
            info: other,
        });
        assert!(matches!(fx[0], Effect::JoinRefused { .. }));
        assert!(!s.is_member(&n(2)));
        let dup = s.apply(&join(1));
        assert!(matches!(dup[0], Effect::JoinRefused { .. }));
    }

    #[test]
    fn events_survive_serialisation() {
        let ev = Event::Join {
            node: n(9),
            info: JoinInfo {
                format: Some(fmt()),
                epoch: 2,
                epoch_nodes: vec![n(1)],
                vdis: BTreeMap::new(),
                incarnation: 2,
                services: Services {
                    nbd_port: Some(10809),
                    http_port: None,
                    fixed_vnodes: true,
                },
            },
        };
        let s = serde_json::to_string(&ev).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), ev);
    }
}
