//! What each opcode does: the dispatch table from a decoded request to the gateway, the VDI
//! namespace, the cluster driver or this node's own state. Owns: per-opcode argument checks
//! and response fields. Never: socket I/O (the server hands requests in and answers out).

use crate::cluster::state::{Format, LockHolder, Message, Status};
use crate::node::{now_secs, Node};
use crate::{gateway, peer, vdi};
use bytes::Bytes;
use proto::node::{EpochLog, NodeId, SdNode};
use proto::oid::OidKind;
use proto::vdi_lock::LockRecord;
use proto::{cluster_flags, flags, opcode, Header, Oid, SdResult};
use std::sync::Arc;
use std::time::Duration;

/// A finished request: the result, response fields, and payload.
pub struct Reply {
    pub header: Header,
    pub data: Vec<u8>,
}

/// The client of one connection, as VDI locks know it, and whether it is another sheep.
pub struct Client {
    name: String,
    /// VDIs this connection locked (LOCK_VDI on a cluster formatted with `--lock`).
    locks: std::sync::Mutex<std::collections::BTreeSet<u32>>,
    /// The member this connection said it is (HELLO_PEER): only then are peer opcodes served.
    member: std::sync::OnceLock<NodeId>,
    /// A peer opcode was refused on this connection (logged once).
    refused: std::sync::atomic::AtomicBool,
}

impl Client {
    pub fn new(name: String) -> Client {
        Client {
            name,
            locks: Default::default(),
            member: Default::default(),
            refused: Default::default(),
        }
    }

    /// The connection said it is a member of the cluster (HELLO_PEER).
    pub fn is_member(&self) -> bool {
        self.member.get().is_some()
    }

    fn holder(&self, node: &Node) -> LockHolder {
        LockHolder {
            node: node.me.nid.to_string(),
            client: self.name.clone(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u32>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Releases every VDI lock `client` holds (its connection closed).
pub async fn release_all(node: &Arc<Node>, client: &Client) {
    let vids: Vec<u32> = std::mem::take(&mut *client.held()).into_iter().collect();
    for vid in vids {
        let holder = client.holder(node);
        if let Err(e) = node.notify(Message::Unlock { vid, holder }).await {
            tracing::warn!("releasing the lock of {vid:x}: {e}");
        }
    }
}

/// Request flag (an extension of this implementation) of `dog vdi lock unlock`: RELEASE_VDI
/// drops every holder of the VDI.
pub const FLAG_FORCE_RELEASE: u16 = 0x800;

/// LOCK_VDI: with the cluster formatted `--lock`, the VDI is locked for this client, cluster
/// wide; a second opener gets VDI_LOCKED (shared locks, `vdi.type` 1, may stack).
async fn lock_vdi(
    node: &Arc<Node>,
    client: &Client,
    req: &Header,
    vid: u32,
) -> Result<(), SdResult> {
    let view = node.view();
    if view.state.format.flags & cluster_flags::USE_LOCK == 0 || client.held().contains(&vid) {
        return Ok(());
    }
    let holder = client.holder(node);
    let msg = Message::Lock {
        vid,
        holder: holder.clone(),
        shared: req.lock_type() == 1,
    };
    node.notify(msg)
        .await
        .map_err(|_| SdResult::CLUSTER_ERROR)?;
    let got = node
        .view()
        .state
        .locks
        .get(&vid)
        .is_some_and(|l| l.holders.contains(&holder));
    if !got {
        return Err(SdResult::VDI_LOCKED);
    }
    client.held().insert(vid);
    Ok(())
}

/// RELEASE_VDI: lets go of this client's lock of `vdi.base_vdi_id`; with the force flag, of
/// every holder's (`dog vdi lock unlock`).
async fn release_vdi(node: &Arc<Node>, client: &Client, req: &Header) -> Result<(), SdResult> {
    let vid = req.base_vdi_id();
    // The original's `dog vdi lock unlock` sends RELEASE_VDI with no payload (QEMU's release
    // always names the VDI): a forced unlock, as our dog's FORCE_RELEASE flag.
    let forced = req.has_flag(FLAG_FORCE_RELEASE)
        || (req.data_length() == 0 && !client.held().contains(&vid));
    let msg = if forced {
        node.catch_up().await;
        if !node.view().state.locks.contains_key(&vid) {
            return Err(SdResult::VDI_NOT_LOCKED);
        }
        Message::ForceUnlock { vid }
    } else if client.held().remove(&vid) {
        Message::Unlock {
            vid,
            holder: client.holder(node),
        }
    } else {
        return Ok(());
    };
    node.notify(msg).await.map_err(|_| SdResult::CLUSTER_ERROR)
}

/// Runs one request. `data` is the request payload (empty unless WRITE was set).
pub async fn handle(node: &Arc<Node>, client: &Client, req: &Header, data: Bytes) -> Reply {
    let counted = crate::metrics::Request::sheepdog(req, data.len());
    let mut rsp = Header::response_to(req, node.epoch(), SdResult::SUCCESS);
    let out = run(node, client, req, data, &mut rsp).await;
    let data = match out {
        Ok(d) => d,
        Err(e) => {
            rsp.set_result(e.0);
            Vec::new()
        }
    };
    rsp.set_epoch(node.epoch());
    counted.finish_sd(rsp.sd_result(), data.len());
    Reply { header: rsp, data }
}

type Out = Result<Vec<u8>, SdResult>;

async fn run(
    node: &Arc<Node>,
    client: &Client,
    req: &Header,
    data: Bytes,
    rsp: &mut Header,
) -> Out {
    // Catch up with the cluster before answering "not formatted" or "waiting".
    let _ = node.gate_synced(true).await;
    if opcode::is_peer(req.opcode()) && !client.is_member() {
        if !client
            .refused
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "{}: refused peer opcode {:#x}: the connection did not say it is a member \
                 of this cluster (HELLO_PEER); refusing every peer opcode on it",
                client.name,
                req.opcode()
            );
        }
        return Err(SdResult::INVALID_PARMS);
    }
    match req.opcode() {
        opcode::HELLO_PEER => hello(node, client, req).await,
        opcode::CREATE_AND_WRITE_OBJ => create_and_write(node, req, data, rsp).await,
        opcode::READ_OBJ => {
            node.gate(false)?;
            let oid = Oid(req.oid());
            gateway::read(
                node,
                oid,
                req.obj_offset(),
                req.data_length() as usize,
                req.obj_copies(),
            )
            .await
        }
        opcode::WRITE_OBJ => {
            node.gate(false)?;
            let oid = Oid(req.oid());
            let _ticket = node.admission.enter(oid.vid().0, ADMIT_WAIT).await?;
            let view = node.gate(false)?;
            writable(&view, oid, req.obj_offset(), data.len())?;
            let slots = table_slots(oid, req.obj_offset(), data.len());
            let before = match &slots {
                Some((first, n)) => Some(read_slots(node, oid, *first, *n).await?),
                None => None,
            };
            let offset = req.obj_offset();
            let written = data.clone();
            gateway::write(node, oid, offset, data, false, req.obj_copies()).await?;
            rsp.set_rsp_obj_copies(node.copies_of(&view, oid, req.obj_copies()) as u8);
            // Entries of the inode's table that changed may leave an object without users.
            if let (Some((first, n)), Some(before)) = (slots, before) {
                let at = proto::inode::data_vdi_id_offset(first) as u64;
                let after = if at == offset && written.len() == n as usize * 4 {
                    // The whole entries were written: their new values are the payload.
                    written
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                } else {
                    read_slots(node, oid, first, n).await?
                };
                for (k, (&old, &new)) in before.iter().zip(&after).enumerate() {
                    if old != new {
                        let idx = first + k as u32;
                        if let Err(e) = vdi::unlinked(node, oid.vid().0, idx, old).await {
                            tracing::warn!("reclaiming object {idx} of {old:x}: {e}");
                        }
                    }
                }
            }
            Ok(Vec::new())
        }
        opcode::REMOVE_OBJ => {
            node.gate(false)?;
            gateway::remove(node, Oid(req.oid()))
                .await
                .map(|_| Vec::new())
        }
        opcode::DISCARD_OBJ => discard(node, req).await,
        opcode::NEW_VDI => {
            node.gate(false)?;
            let h = vdi::create(node, req, &data).await?;
            rsp.set_rsp_vdi_id(h.vdi_id)
                .set_rsp_vdi_copies(h.nr_copies)
                .set_rsp_vdi_block_size_shift(h.block_size_shift);
            Ok(Vec::new())
        }
        opcode::GET_VDI_INFO | opcode::LOCK_VDI => {
            let view = node.gate(false)?;
            let (name, tag) = vdi::parse_name_tag(&data)?;
            let h = vdi::find(node, &view, &name, &tag, req.snapid()).await?;
            if req.opcode() == opcode::LOCK_VDI {
                lock_vdi(node, client, req, h.vdi_id).await?;
            }
            rsp.set_rsp_vdi_id(h.vdi_id)
                .set_rsp_vdi_copies(h.nr_copies)
                .set_rsp_vdi_block_size_shift(h.block_size_shift);
            Ok(Vec::new())
        }
        opcode::RELEASE_VDI => {
            node.gate(false)?;
            release_vdi(node, client, req).await.map(|_| Vec::new())
        }
        opcode::DEL_VDI => {
            node.gate(false)?;
            vdi::delete(node, req, &data).await.map(|_| Vec::new())
        }
        opcode::READ_VDIS => {
            let view = node.gate(true)?;
            Ok(vdi::bitmap(&view, false))
        }
        opcode::READ_DEL_VDIS => {
            let view = node.gate(true)?;
            Ok(vdi::bitmap(&view, true))
        }
        // Writes are durable on every copy before they are acknowledged, so there is nothing
        // to flush; INVALID_PARMS tells QEMU to stop sending flushes, as the original does.
        opcode::FLUSH_VDI => Err(SdResult::INVALID_PARMS),
        opcode::GET_CLUSTER_DEFAULT => {
            let view = node.gate(true)?;
            let f = &view.state.format;
            rsp.set_rsp_default_copies(f.copies)
                .set_rsp_default_copy_policy(f.copy_policy)
                .set_rsp_default_block_size_shift(f.block_size_shift);
            Ok(Vec::new())
        }
        opcode::GET_NODE_LIST => {
            let view = node.gate(true)?;
            // While a restarted cluster waits for its members, the nodes that are back.
            let waiting = view.state.status == Status::WaitForJoin;
            let nodes = if waiting || view.state.epoch_nodes.is_empty() {
                view.state.placed(&view.state.members)
            } else {
                view.state.epoch_nodes.clone()
            };
            rsp.set_rsp_nr_nodes(nodes.len() as u32);
            Ok(SdNode::encode_list(&nodes))
        }
        opcode::MAKE_FS => make_fs(node, req, &data).await,
        opcode::SHUTDOWN => {
            node.gate(true)?;
            node.notify(Message::Shutdown)
                .await
                .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::STAT_SHEEP => {
            node.gate(false)?;
            let (total, free) = peer::space(node)?;
            rsp.set_rsp_store_size(total).set_rsp_store_free(free);
            Ok(Vec::new())
        }
        opcode::STAT_CLUSTER => stat_cluster(node, req, rsp).await,
        opcode::STAT_RECOVERY => {
            node.gate(false)?;
            let progress = node.recovery.progress();
            let mut b = progress.encode();
            // Past `struct recovery_state`, for a reader that asks for more: why a running
            // recovery is not done yet (NUL-terminated text).
            let room = (req.data_length() as usize).saturating_sub(b.len() + 1);
            if let Some(why) = node.recovery.problem().filter(|_| progress.running) {
                if room > 0 {
                    b.extend(why.bytes().take(room));
                    b.push(0);
                }
            }
            Ok(b)
        }
        opcode::NOTIFY_VDI_ADD => {
            // A VDI whose objects were written from outside (`dog cluster snapshot load`):
            // the cluster learns of it, as a snapshot when its inode (written first by our
            // dog) says so.
            node.gate(false)?;
            let vid = req.new_vid();
            if vid == 0 || vid >= 1 << 24 {
                return Err(SdResult::INVALID_PARMS);
            }
            let h = vdi::read_header(node, vid).await.ok();
            let info = crate::cluster::state::VdiInfo {
                copies: req.vs_copies(),
                copy_policy: req.vs_copy_policy(),
                block_size_shift: req.vs_block_size_shift(),
                snapshot: h.as_ref().is_some_and(|h| h.is_snapshot()),
                parent: h.as_ref().map_or(0, |h| h.parent_vdi_id),
                deleted: h.as_ref().is_some_and(|h| h.name.is_empty()),
            };
            node.notify(Message::VdiAdd {
                vid,
                info,
                old: None,
            })
            .await
            .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::ALTER_CLUSTER_COPY => {
            node.gate(false)?;
            let copies = req.cluster_copies();
            if req.cluster_copy_policy() != 0 || copies == 0 || copies > proto::SD_MAX_COPIES {
                return Err(SdResult::INVALID_PARMS);
            }
            node.notify(Message::AlterClusterCopy { copies })
                .await
                .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::ALTER_VDI_COPY => {
            let view = node.gate(false)?;
            let (vid, copies) = (req.new_vid(), req.vs_copies());
            if req.vs_copy_policy() != 0 || copies == 0 || copies > proto::SD_MAX_COPIES {
                return Err(SdResult::INVALID_PARMS);
            }
            match view.state.vdis.get(&vid) {
                Some(v) if !v.deleted && v.copy_policy == 0 => {}
                Some(v) if !v.deleted => return Err(SdResult::INVALID_PARMS),
                _ => return Err(SdResult::NO_VDI),
            }
            node.notify(Message::AlterVdiCopy { vid, copies })
                .await
                .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::REWEIGHT => {
            node.gate(false)?;
            node.notify(Message::Reweight)
                .await
                .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::GET_VNODES => Ok(i32::from(node.vnodes()).to_le_bytes().to_vec()),
        opcode::SET_VNODES => {
            let view = node.gate(false)?;
            let n = data
                .get(..4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(SdResult::INVALID_PARMS)?;
            if node.me.nr_vnodes == 0 {
                return Err(SdResult::GATEWAY_MODE);
            }
            if view.state.format.flags & proto::cluster_flags::AUTO_VNODES != 0 {
                return Err(SdResult::INVALID_VNODES_STRATEGY);
            }
            let n = u16::try_from(n)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or(SdResult::INVALID_PARMS)?;
            let mut me = view
                .state
                .members
                .iter()
                .find(|m| m.nid == node.me.nid)
                .copied()
                .ok_or(SdResult::SYSTEM_ERROR)?;
            me.nr_vnodes = n;
            node.notify(Message::UpdateNode { node: me })
                .await
                .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::ENABLE_RECOVER | opcode::DISABLE_RECOVER => {
            node.gate(false)?;
            let enabled = req.opcode() == opcode::ENABLE_RECOVER;
            node.notify(Message::AutoRecovery { enabled })
                .await
                .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::FORCE_RECOVER => {
            let view = node.gate(true)?;
            if view.state.status != Status::WaitForJoin {
                return Err(SdResult::INVALID_PARMS);
            }
            node.notify(Message::ForceRecover)
                .await
                .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::GET_RECOVERY => {
            node.gate(true)?;
            let (max, interval) = node.recovery.throttle();
            // Not throttled (no pause between batches): the original's "max (0), interval (0)".
            let max = if interval == 0 { 0 } else { max };
            Ok(encode_throttle(max, interval))
        }
        opcode::SET_RECOVERY => {
            node.gate(true)?;
            let (max, interval) = decode_throttle(&data).ok_or(SdResult::INVALID_PARMS)?;
            node.recovery.set_throttle(max, interval);
            Ok(Vec::new())
        }
        opcode::GET_VDI_ATTR => {
            node.gate(false)?;
            let mode = crate::attr::Mode {
                create: req.has_flag(flags::CMD_CREAT),
                exclusive: req.has_flag(flags::CMD_EXCL),
                delete: req.has_flag(flags::CMD_DEL),
            };
            let (r, vid, id) = match crate::attr::get(node, req.snapid(), &data, mode).await {
                Ok((vid, id)) => (SdResult::SUCCESS, vid, id),
                Err((e, id)) => (e, 0, id),
            };
            let vid = if vid == 0 {
                vdi::parse_name_tag(&data)
                    .map(|(n, _)| proto::hash::sd_hash_vdi(&n))
                    .unwrap_or(0)
            } else {
                vid
            };
            rsp.set_rsp_vdi_id(vid).set_rsp_attr_id(id);
            if r.is_ok() {
                Ok(Vec::new())
            } else {
                Err(r)
            }
        }
        opcode::GET_HASH => {
            node.gate(false)?;
            let digest = peer::digest(node, Oid(req.oid())).await?;
            rsp.set_rsp_digest(&digest);
            Ok(Vec::new())
        }
        opcode::REPAIR_REPLICA => {
            let view = node.gate(false)?;
            // A gateway healing a copy says its epoch (dog does not): at another one, the
            // gateway redoes its write at the new epoch.
            if req.epoch() != 0 && req.epoch() != view.state.epoch {
                return Err(SdResult::NEW_NODE_VER);
            }
            if !node.settled(view.state.epoch).await {
                return Err(SdResult::NEW_NODE_VER);
            }
            let from = proto::NodeId {
                addr: req.forw_addr(),
                port: req.forw_port(),
            };
            crate::recovery::repair(node, &view, Oid(req.oid()), from).await?;
            Ok(Vec::new())
        }
        opcode::OBJ_TAG => {
            node.gate(false)?;
            let (tag, version) = peer::best(node, Oid(req.oid())).await?;
            rsp.set_rsp_obj_offset(tag as u64)
                .set_rsp_obj_version(version);
            Ok(Vec::new())
        }
        opcode::OBJ_LIST_TAGGED => {
            node.gate(false)?;
            // One page: the copies of objects from `oid` on, in oid order, as many as fit.
            let mut list = peer::list(node).await?;
            list.sort_unstable_by_key(|r| r.0);
            let from = list.partition_point(|r| r.0 .0 < req.oid());
            let room = req.data_length() as usize / proto::objlist::RECORD_SIZE;
            if room == 0 {
                return Err(SdResult::BUFFER_SMALL);
            }
            let page = &list[from..list.len().min(from.saturating_add(room))];
            Ok(proto::objlist::encode(page))
        }
        opcode::CLUSTER_INFO => {
            let view = node.gate(true)?;
            Ok(crate::admin::cluster_info(node, &view))
        }
        opcode::STAT => Ok(crate::metrics::sd_stat().encode()),
        opcode::MD_INFO => crate::admin::md_info(node),
        opcode::MD_PLUG | opcode::MD_UNPLUG => {
            node.gate(true)?;
            let plug = req.opcode() == opcode::MD_PLUG;
            let text = data.split(|&b| b == 0).next().unwrap_or_default();
            let paths: Vec<std::path::PathBuf> = String::from_utf8_lossy(text)
                .split(',')
                .filter(|p| !p.is_empty())
                .map(Into::into)
                .collect();
            if paths.is_empty() {
                return Err(SdResult::INVALID_PARMS);
            }
            let store = node.store.clone();
            let done = tokio::task::spawn_blocking(move || {
                if plug {
                    store.plug(&paths)
                } else {
                    store.unplug(&paths)
                }
            })
            .await
            .map_err(|_| SdResult::SYSTEM_ERROR)?
            .map_err(|e| e.result())?;
            tracing::info!(
                "{}: {} {done:?}",
                client.name,
                if plug { "plugged" } else { "unplugged" }
            );
            // Nothing changed: the original's answer.
            if done.is_empty() {
                return Err(SdResult::UNKNOWN);
            }
            Ok(Vec::new())
        }
        opcode::GET_LOGLEVEL => Ok(crate::admin::log_level()),
        opcode::SET_LOGLEVEL => crate::admin::set_log_level(&data),
        // There is no object cache.
        opcode::GET_CACHE_INFO => Err(SdResult::NO_CACHE),
        opcode::GET_STORE_LIST => Ok(b"plain ".to_vec()),
        opcode::FLUSH_DEL_CACHE => Ok(Vec::new()),
        opcode::KILL_NODE => {
            node.gate(true)?;
            node.killed.store(true, std::sync::atomic::Ordering::SeqCst);
            node.request_stop();
            Ok(Vec::new())
        }
        opcode::EXIST => {
            node.gate(true)?;
            if peer::exists(node, Oid(req.oid())) {
                Ok(Vec::new())
            } else {
                Err(SdResult::NO_OBJ)
            }
        }
        opcode::GET_EPOCH => {
            node.gate(true)?;
            match peer::epoch(node, req.tgt_epoch())? {
                Some((nodes, t)) => Ok(proto::node::encode_epoch_file(&nodes, t)),
                None => Err(SdResult::NO_TAG),
            }
        }
        opcode::FLUSH_PEER => {
            node.gate(false)?;
            peer::sync(node).await?;
            Ok(Vec::new())
        }
        opcode::GET_VDI_LOCKS => {
            node.catch_up().await;
            let view = node.gate(true)?;
            let records: Vec<LockRecord> = view
                .state
                .locks
                .iter()
                .flat_map(|(&vid, l)| {
                    l.holders.iter().map(move |h| LockRecord {
                        vid,
                        shared: l.shared,
                        node: h.node.clone(),
                        client: h.client.clone(),
                    })
                })
                .collect();
            Ok(LockRecord::encode_list(&records))
        }
        opcode::GET_VDI_COPIES => {
            // The original's `struct vdi_state` of every VDI the cluster knows, with who
            // holds its lock (the original's dog lists locks with it).
            node.catch_up().await;
            let view = node.gate(true)?;
            let st = &view.state;
            let nid_of = |s: &str| st.members.iter().find(|m| m.nid.to_string() == s);
            let states: Vec<proto::vdi_lock::VdiState> = st
                .vdis
                .iter()
                .map(|(&vid, v)| {
                    let lock = st.locks.get(&vid);
                    let mut owners: Vec<proto::NodeId> = Vec::new();
                    for h in lock.map(|l| &l.holders[..]).unwrap_or_default() {
                        if let Some(m) = nid_of(&h.node).filter(|m| !owners.contains(&m.nid)) {
                            owners.push(m.nid);
                        }
                    }
                    proto::vdi_lock::VdiState {
                        vid,
                        copies: v.copies,
                        snapshot: v.snapshot,
                        deleted: v.deleted,
                        copy_policy: v.copy_policy,
                        block_size_shift: v.block_size_shift,
                        parent: v.parent,
                        owners,
                        shared: lock.is_some_and(|l| l.shared),
                    }
                })
                .collect();
            let need = states.len() * proto::vdi_lock::VDI_STATE_SIZE;
            if (req.data_length() as usize) < need {
                return Err(SdResult::BUFFER_SMALL);
            }
            Ok(proto::vdi_lock::VdiState::encode_list(&states))
        }
        opcode::TRACE_STATUS
        | opcode::TRACE_READ_BUF
        | opcode::TRACE_ENABLE
        | opcode::TRACE_DISABLE
        | opcode::NFS_CREATE
        | opcode::NFS_DELETE => Err(SdResult::NO_SUPPORT),
        opcode::WAIT_APPLIED => {
            let seq = req.oid();
            tokio::time::timeout(Duration::from_secs(5), node.wait_applied(seq))
                .await
                .map_err(|_| SdResult::CLUSTER_ERROR)?;
            Ok(Vec::new())
        }
        opcode::DRAIN_VDI => {
            node.gate(false)?;
            vdi::drain_here(node, req.oid(), req.tgt_epoch()).await?;
            Ok(Vec::new())
        }
        opcode::NBD_HANDOVER => {
            node.gate(false)?;
            let records = LockRecord::decode_list(&data);
            let [from, to] = records.as_slice() else {
                return Err(SdResult::INVALID_PARMS);
            };
            if from.node != node.me.nid.to_string() {
                return Err(SdResult::INVALID_PARMS);
            }
            // A node without NBD holds no NBD writer's lock.
            let server = node
                .nbd
                .get()
                .and_then(std::sync::Weak::upgrade)
                .ok_or(SdResult::VDI_LOCKED)?;
            let to = LockHolder {
                node: to.node.clone(),
                client: to.client.clone(),
            };
            server.hand_over(req.tgt_epoch(), &from.client, &to).await?;
            Ok(Vec::new())
        }
        opcode::CREATE_AND_WRITE_PEER
        | opcode::READ_PEER
        | opcode::WRITE_PEER
        | opcode::REMOVE_PEER => {
            let done = peer::serve(node, req, data).await?;
            rsp.set_rsp_obj_version(done.version)
                .set_rsp_obj_last(done.last);
            Ok(done.data)
        }
        _ => Err(SdResult::INVALID_PARMS),
    }
}

/// HELLO_PEER: the connection is member `forw_addr:forw_port` of the cluster formatted at
/// `oid` (a sheep's peer client, once per connection). A node or ctime this node does not know
/// yet is looked up again once it has applied what the cluster ordered so far (the sender
/// may be ahead of it).
async fn hello(node: &Arc<Node>, client: &Client, req: &Header) -> Out {
    let nid = NodeId {
        addr: req.forw_addr(),
        port: req.forw_port(),
    };
    let ctime = req.oid();
    let check = |v: &crate::node::View| {
        if v.state.format.ctime != ctime {
            Err(SdResult::INVALID_CTIME)
        } else if !v.state.members.iter().any(|m| m.nid == nid) {
            Err(SdResult::INVALID_PARMS)
        } else {
            Ok(())
        }
    };
    let mut r = check(&node.view());
    if r.is_err() {
        node.catch_up().await;
        r = check(&node.view());
    }
    match r {
        Ok(()) => {
            let _ = client.member.set(nid);
            tracing::debug!("{}: member {nid}", client.name);
            Ok(Vec::new())
        }
        Err(e) => {
            tracing::warn!(
                "{}: refused HELLO_PEER from {nid} (ctime {ctime:#x}): {}",
                client.name,
                e.text()
            );
            Err(e)
        }
    }
}

/// The data_vdi_id entries (first index, count) a write to an inode covers.
fn table_slots(oid: Oid, offset: u64, len: usize) -> Option<(u32, u32)> {
    if oid.kind() != OidKind::Inode || len == 0 {
        return None;
    }
    let start = proto::inode::DATA_VDI_ID_OFFSET as u64;
    let end = start + 4 * proto::SD_INODE_DATA_INDEX;
    let (a, b) = (offset.max(start), (offset + len as u64).min(end));
    if a >= b {
        return None;
    }
    let first = (a - start) / 4;
    let last = (b - start).div_ceil(4);
    Some((first as u32, (last - first) as u32))
}

async fn read_slots(node: &Arc<Node>, oid: Oid, first: u32, n: u32) -> Result<Vec<u32>, SdResult> {
    let off = proto::inode::data_vdi_id_offset(first) as u64;
    let b = gateway::read(node, oid, off, n as usize * 4, 0).await?;
    Ok(b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// How long a write waits while a snapshot of its VDI is under way.
const ADMIT_WAIT: Duration = Duration::from_secs(60);

/// Data objects of a snapshot, and its inode's table, are read-only (the client reloads the
/// inode on READONLY and writes to the new working VDI).
fn writable(view: &crate::node::View, oid: Oid, offset: u64, len: usize) -> Result<(), SdResult> {
    match oid.kind() {
        OidKind::Inode => match view.state.vdis.get(&oid.vid().0) {
            Some(v) if v.snapshot && table_slots(oid, offset, len).is_some() => {
                Err(SdResult::READONLY)
            }
            _ => Ok(()),
        },
        OidKind::Attr | OidKind::Ledger | OidKind::Btree => Ok(()),
        OidKind::Data | OidKind::Vmstate => match view.state.vdis.get(&oid.vid().0) {
            None => Err(SdResult::NO_VDI),
            Some(v) if v.snapshot => Err(SdResult::READONLY),
            Some(_) => Ok(()),
        },
    }
}

async fn create_and_write(node: &Arc<Node>, req: &Header, data: Bytes, rsp: &mut Header) -> Out {
    node.gate(false)?;
    let oid = Oid(req.oid());
    let _ticket = node.admission.enter(oid.vid().0, ADMIT_WAIT).await?;
    let view = node.gate(false)?;
    if !view.state.vdis.contains_key(&oid.vid().0) {
        return Err(SdResult::NO_VDI);
    }
    let offset = req.obj_offset();
    writable(&view, oid, offset, data.len())?;
    gateway::check_range(node, &view, oid, offset, data.len() as u64)?;
    if req.has_flag(flags::CMD_COW) {
        // Copy-on-write: the whole source object, the new bytes laid over it.
        let cow = Oid(req.cow_oid());
        let size = node.object_size(&view, oid) as usize;
        let mut full = gateway::read(node, cow, 0, size, req.obj_copies()).await?;
        full.resize(size, 0);
        full[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        gateway::copy_on_write(node, oid, Bytes::from(full), req.obj_copies(), true).await?;
        // Another gateway may have made the object first: the new bytes land either way.
        gateway::write(node, oid, offset, data, false, req.obj_copies()).await?;
    } else {
        gateway::write(node, oid, offset, data, true, req.obj_copies()).await?;
    }
    rsp.set_rsp_obj_copies(node.copies_of(&view, oid, req.obj_copies()) as u8);
    Ok(Vec::new())
}

/// DISCARD_OBJ: clear the inode's slot for the object, then remove the object.
async fn discard(node: &Arc<Node>, req: &Header) -> Out {
    node.gate(false)?;
    let oid = Oid(req.oid());
    if !oid.is_data() {
        return Err(SdResult::INVALID_PARMS);
    }
    let (vid, idx) = (oid.vid(), oid.index());
    if idx as u64 >= proto::SD_INODE_DATA_INDEX {
        return Err(SdResult::INVALID_PARMS);
    }
    let _ticket = node.admission.enter(vid.0, ADMIT_WAIT).await?;
    if node
        .view()
        .state
        .vdis
        .get(&vid.0)
        .is_some_and(|v| v.snapshot)
    {
        return Err(SdResult::READONLY);
    }
    let ioid = Oid::inode(vid);
    let off = proto::inode::data_vdi_id_offset(idx) as u64;
    let cur = gateway::read(node, ioid, off, 4, 0).await?;
    if cur != [0u8; 4] {
        gateway::write(node, ioid, off, Bytes::from_static(&[0u8; 4]), false, 0).await?;
        let old = u32::from_le_bytes([cur[0], cur[1], cur[2], cur[3]]);
        if let Err(e) = vdi::unlinked(node, vid.0, idx, old).await {
            tracing::warn!("discard {oid}: {e}");
        }
    }
    Ok(Vec::new())
}

async fn make_fs(node: &Arc<Node>, req: &Header, data: &[u8]) -> Out {
    let view = node.gate(true)?;
    if view.state.status == Status::WaitForJoin {
        return Err(SdResult::WAIT_FOR_JOIN);
    }
    let copies = req.cluster_copies();
    if copies == 0 || copies > proto::SD_MAX_COPIES {
        return Err(SdResult::INVALID_PARMS);
    }
    let bss = match req.cluster_block_size_shift() {
        0 => proto::SD_DEFAULT_BLOCK_SIZE_SHIFT,
        b if (proto::SD_MIN_BLOCK_SIZE_SHIFT..=proto::SD_MAX_BLOCK_SIZE_SHIFT).contains(&b) => b,
        _ => return Err(SdResult::INVALID_PARMS),
    };
    let store = String::from_utf8_lossy(proto::cstr_bytes(data)).into_owned();
    let store = if store.is_empty() {
        "plain".to_string()
    } else {
        store
    };
    if store != "plain" {
        return Err(SdResult::NO_STORE);
    }
    let ctime = match req.cluster_ctime() {
        0 => now_secs() << 32,
        t => t,
    };
    let f = Format {
        ctime,
        copies,
        copy_policy: req.cluster_copy_policy(),
        flags: req.cluster_flags()
            & (cluster_flags::STRICT
                | cluster_flags::AUTO_VNODES
                | cluster_flags::USE_LOCK
                | cluster_flags::RECYCLE_VID
                | cluster_flags::AVOID_DISKFULL),
        block_size_shift: bss,
        store,
    };
    node.notify(Message::Format(f))
        .await
        .map_err(|_| SdResult::CLUSTER_ERROR)?;
    Ok(Vec::new())
}

async fn stat_cluster(node: &Arc<Node>, req: &Header, rsp: &mut Header) -> Out {
    let view = node.gate(true)?;
    let status = match view.state.status {
        Status::Ok => SdResult::SUCCESS,
        Status::WaitForFormat => SdResult::WAIT_FOR_FORMAT,
        Status::WaitForJoin => SdResult::WAIT_FOR_JOIN,
        Status::Shutdown => SdResult::SHUTDOWN,
    };
    let nodes_nr = req.cluster_nodes_nr() as usize;
    let max = req.data_length() as usize / EpochLog::record_size(nodes_nr);
    let f = &view.state.format;
    let mut out = Vec::new();
    let mut epoch = view.state.epoch;
    while epoch > 0 && out.len() / EpochLog::record_size(nodes_nr) < max {
        // An epoch this node was away for: a member's record of it, as the original's.
        let (nodes, time) = node.epoch_log(&view, epoch).await.unwrap_or_default();
        if nodes.len() > nodes_nr {
            // The caller's slots cannot hold this epoch's members: say how many it needs.
            rsp.set_rsp_nr_nodes(nodes.len() as u32);
            return Err(SdResult::BUFFER_SMALL);
        }
        let first = out.is_empty();
        let log = EpochLog {
            ctime: if first { f.ctime } else { 0 },
            time,
            epoch,
            disable_recovery: 0,
            nr_copies: if first { f.copies } else { 0 },
            copy_policy: if first { f.copy_policy } else { 0 },
            block_size_shift: if first { f.block_size_shift } else { 0 },
            flags: if first { f.flags } else { 0 },
            drv_name: if first {
                f.store.clone()
            } else {
                String::new()
            },
            nodes,
        };
        out.extend_from_slice(&log.encode(nodes_nr));
        epoch -= 1;
    }
    rsp.set_result(status.0);
    Ok(out)
}

/// `struct recovery_throttling`: max_exec_count u32, pad, queue_work_interval u64 (ms),
/// throttling u8 (interval in effect), pad to 24 bytes.
fn encode_throttle(max: u32, interval: u64) -> Vec<u8> {
    let mut b = vec![0u8; 24];
    b[..4].copy_from_slice(&max.to_le_bytes());
    b[8..16].copy_from_slice(&interval.to_le_bytes());
    b[16] = (interval > 0) as u8;
    b
}

fn decode_throttle(b: &[u8]) -> Option<(u32, u64)> {
    if b.len() < 17 {
        return None;
    }
    let max = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut i = [0u8; 8];
    i.copy_from_slice(&b[8..16]);
    let interval = if b[16] != 0 { u64::from_le_bytes(i) } else { 0 };
    Some((max, interval))
}
