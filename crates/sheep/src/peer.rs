//! Peer operations: what a sheep does with its own store when a gateway (possibly itself)
//! sends it CREATE_AND_WRITE/READ/WRITE/REMOVE_PEER, and the questions other nodes and `dog`
//! ask of it (a copy's digest, tag and version, the list of copies, a sync, epochs, space).
//! Checks the sender's epoch against ours.
//! Owns: the store-level meaning of the peer opcodes; with recovery's installs, the only
//! access to the objects in the store. Never: forwarding to other nodes.

use crate::node::{Node, View};
use crate::store::StoreError;
use bytes::Bytes;
use proto::{opcode, Header, Oid, SdResult};
use std::sync::Arc;
use std::time::Duration;

/// One store operation, the same whether it came over the network or from the local gateway.
/// `sync`: durable before the answer; otherwise durable at the next flush (FLUSH_PEER).
/// `id`: the gateway's id of the write (the same on its retries; 0 from older peers), so that
/// a copy that takes a write again does not count it twice in its version.
#[derive(Clone)]
pub enum StoreOp {
    /// Creates the object with `data` at `offset`; if it exists, a plain write, unless
    /// `keep`: then it is left as it is (a copy-on-write whose object another gateway created
    /// first must not lay the parent's bytes over writes that landed since).
    Create {
        offset: u64,
        data: Bytes,
        sync: bool,
        keep: bool,
        id: u64,
    },
    Write {
        offset: u64,
        data: Bytes,
        sync: bool,
        id: u64,
    },
    Read {
        offset: u64,
        len: usize,
    },
    /// Recovery reading the copy tagged `tag` (current or stale) of an object.
    RecoveryRead {
        offset: u64,
        len: usize,
        tag: u32,
    },
    Remove,
}

fn err(e: StoreError) -> SdResult {
    e.result()
}

/// What a store operation gives back: the bytes read, and the version of the copy (after a
/// write; as read, for a recovery read; 0 otherwise).
#[derive(Debug, Default)]
pub struct Done {
    pub data: Vec<u8>,
    pub version: u64,
    /// With a recovery read: the id of the last write the copy counted.
    pub last: u64,
}

impl Done {
    fn version(version: u64) -> Done {
        Done {
            version,
            ..Done::default()
        }
    }
}

/// Runs `op` on the local store (in a blocking thread); reads return the bytes. An object
/// this node should hold but lacks (recovery has not reached it yet) is fetched first.
pub async fn local(node: &Arc<Node>, view: &View, oid: Oid, op: StoreOp) -> Result<Done, SdResult> {
    // Never a copy from before this node settled the request's epoch (a returning node sets
    // its old copies aside first).
    if !node.settled(view.state.epoch).await {
        return Err(SdResult::NEW_NODE_VER);
    }
    if !matches!(op, StoreOp::RecoveryRead { .. }) {
        node.recovery.client_io();
    }
    let fetchable = matches!(op, StoreOp::Read { .. } | StoreOp::Write { .. });
    let retry = if fetchable { Some(op.clone()) } else { None };
    match (guarded(node, view, oid, op).await, retry) {
        // The request's epoch is gone: whether this node should hold the object is decided
        // at the new one (the gateway retries there).
        (Err(SdResult::NO_OBJ), Some(_)) if node.epoch() != view.state.epoch => {
            Err(SdResult::OLD_NODE_VER)
        }
        (Err(SdResult::NO_OBJ), Some(op)) => {
            match crate::recovery::fetch_now(node, view, oid).await {
                Ok(()) => guarded(node, view, oid, op).await,
                Err(SdResult::NO_OBJ) => Err(SdResult::NO_OBJ),
                Err(e) => {
                    tracing::debug!("recovering {oid} for a request: {e}");
                    // Membership is moving: a write is tried again at the newest epoch; a
                    // read goes on to another copy.
                    if matches!(op, StoreOp::Write { .. }) {
                        Err(SdResult::NEW_NODE_VER)
                    } else {
                        Err(SdResult::NO_OBJ)
                    }
                }
            }
        }
        (r, _) => r,
    }
}

/// `run`, a change of the object holding off the install of a whole copy of it.
async fn guarded(node: &Arc<Node>, view: &View, oid: Oid, op: StoreOp) -> Result<Done, SdResult> {
    if matches!(op, StoreOp::Read { .. } | StoreOp::RecoveryRead { .. }) {
        return run(node, view, oid, op).await;
    }
    let _writing = node.recovery.writing(oid).await;
    run(node, view, oid, op).await
}

async fn run(node: &Arc<Node>, view: &View, oid: Oid, op: StoreOp) -> Result<Done, SdResult> {
    if matches!(op, StoreOp::Create { .. } | StoreOp::Write { .. }) {
        // A copy that fails a write, or says it took one it did not (a lost write).
        fail::fail_point!("peer::write", |_| Err(SdResult::EIO));
        fail::fail_point!("peer::lose_write", |_| Ok(Done::version(0)));
    }
    let store = node.store.clone();
    let size = node.object_size(view, oid);
    let r = tokio::task::spawn_blocking(move || -> Result<Done, StoreError> {
        match op {
            StoreOp::Create {
                offset,
                data,
                sync,
                keep,
                id,
            } => store
                .create_and_write(oid, size, offset, &data, sync, keep, id)
                .map(Done::version),
            StoreOp::Write {
                offset,
                data,
                sync,
                id,
            } => store
                .write_as(oid, offset, &data, sync, id)
                .map(Done::version),
            StoreOp::Read { offset, len } => store.read(oid, offset, len).map(|data| Done {
                data,
                ..Done::default()
            }),
            StoreOp::RecoveryRead { offset, len, tag } => {
                // The version the bytes belong to: unchanged across the read, else again.
                for _ in 0..3 {
                    let before = store.stamp(oid, tag)?;
                    let data = store.read_tagged(oid, tag, offset, len)?;
                    if store.stamp(oid, tag)? == before {
                        return Ok(Done {
                            data,
                            version: before.0,
                            last: before.1,
                        });
                    }
                }
                Err(StoreError::Busy)
            }
            StoreOp::Remove => store.remove(oid).map(|_| Done::default()),
        }
    })
    .await;
    match r {
        Ok(r) => r.map_err(err),
        Err(_) => Err(SdResult::SYSTEM_ERROR),
    }
}

/// Waits (bounded) for our epoch to reach `epoch`; the view at that point.
async fn catch_up(node: &Arc<Node>, epoch: u32) -> Option<View> {
    for _ in 0..100 {
        let v = node.view();
        if v.state.epoch >= epoch {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Serves a peer request.
pub async fn serve(node: &Arc<Node>, hdr: &Header, data: Bytes) -> Result<Done, SdResult> {
    let view = match node.gate(false) {
        Ok(v) => v,
        Err(e) => return Err(e),
    };
    let view = if hdr.epoch() < view.state.epoch {
        return Err(SdResult::OLD_NODE_VER);
    } else if hdr.epoch() > view.state.epoch {
        match catch_up(node, hdr.epoch()).await {
            Some(v) => v,
            None => return Err(SdResult::NEW_NODE_VER),
        }
    } else {
        view
    };
    let oid = Oid(hdr.oid());
    let offset = hdr.obj_offset();
    // CMD_CACHE (the original's writeback flag): the gateway will flush later.
    let sync = !hdr.has_flag(proto::flags::CMD_CACHE);
    let op = match hdr.opcode() {
        // The write's id travels in cow_oid, which peer writes do not use otherwise.
        opcode::CREATE_AND_WRITE_PEER => StoreOp::Create {
            offset,
            data,
            sync,
            keep: hdr.has_flag(proto::flags::CMD_EXCL),
            id: hdr.cow_oid(),
        },
        opcode::WRITE_PEER => StoreOp::Write {
            offset,
            data,
            sync,
            id: hdr.cow_oid(),
        },
        opcode::READ_PEER if hdr.has_flag(proto::flags::CMD_RECOVERY) => StoreOp::RecoveryRead {
            offset,
            len: hdr.data_length() as usize,
            tag: hdr.tgt_epoch(),
        },
        opcode::READ_PEER => StoreOp::Read {
            offset,
            len: hdr.data_length() as usize,
        },
        opcode::REMOVE_PEER => StoreOp::Remove,
        _ => return Err(SdResult::INVALID_PARMS),
    };
    crate::gateway::check_range(node, &view, oid, offset, op_len(&op))?;
    // A snapshot's data never changes: a write that reaches it after the switch (a client
    // that has not reloaded its inode) is refused, never applied.
    let frozen = oid.kind() == proto::oid::OidKind::Data
        && view
            .state
            .vdis
            .get(&oid.vid().0)
            .is_some_and(|v| v.snapshot);
    if frozen && matches!(op, StoreOp::Create { .. } | StoreOp::Write { .. }) {
        return Err(SdResult::READONLY);
    }
    match local(node, &view, oid, op).await {
        // The epoch changed under the request (its object may have moved aside): the gateway
        // retries at the new one rather than reporting a missing object.
        Err(SdResult::NO_OBJ) if node.epoch() != view.state.epoch => Err(SdResult::OLD_NODE_VER),
        r => r,
    }
}

pub fn op_len(op: &StoreOp) -> u64 {
    match op {
        StoreOp::Create { data, .. } | StoreOp::Write { data, .. } => data.len() as u64,
        StoreOp::Read { len, .. } | StoreOp::RecoveryRead { len, .. } => *len as u64,
        StoreOp::Remove => 0,
    }
}

/// Runs `f` on the store in a blocking thread.
async fn blocking<T: Send + 'static>(
    node: &Arc<Node>,
    f: impl FnOnce(&crate::store::Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SdResult> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|_| SdResult::EIO)?
        .map_err(err)
}

/// GET_HASH: the SHA-1 of this node's current copy of `oid`.
pub async fn digest(node: &Arc<Node>, oid: Oid) -> Result<[u8; 20], SdResult> {
    blocking(node, move |store| {
        use sha1::Digest;
        let size = store.object_size(oid)?;
        let b = store.read(oid, 0, size as usize)?;
        Ok(sha1::Sha1::digest(&b).into())
    })
    .await
}

/// OBJ_TAG: the tag and version of this node's best copy of `oid`.
pub async fn best(node: &Arc<Node>, oid: Oid) -> Result<(u32, u64), SdResult> {
    blocking(node, move |store| store.best(oid))
        .await?
        .ok_or(SdResult::NO_OBJ)
}

/// OBJ_LIST_TAGGED: the best copy of every object here.
pub async fn list(node: &Arc<Node>) -> Result<Vec<proto::objlist::Record>, SdResult> {
    blocking(node, |store| store.tagged_list()).await
}

/// EXIST: whether this node holds a current copy of `oid`.
pub fn exists(node: &Node, oid: Oid) -> bool {
    node.store.exists(oid)
}

/// FLUSH_PEER: every write this node took is durable.
pub async fn sync(node: &Arc<Node>) -> Result<(), SdResult> {
    blocking(node, |store| store.sync_all()).await
}

/// The members of `epoch` in this node's epoch log, and when it began.
pub fn epoch(node: &Node, epoch: u32) -> Result<Option<(Vec<proto::SdNode>, u64)>, SdResult> {
    node.store.read_epoch(epoch).map_err(err)
}

/// (total, free) bytes of this node's store.
pub fn space(node: &Node) -> Result<(u64, u64), SdResult> {
    node.store.space().map_err(err)
}
