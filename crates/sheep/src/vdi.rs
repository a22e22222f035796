//! The VDI namespace: create (and snapshot/clone), look up by name/tag/snapshot id, delete,
//! and the in-use bitmap. VDI ids come from FNV-1a of the name with linear probing, as the
//! original, so the same names get the same ids. Owns: naming and inode creation.
//! Never: raw placement (every object goes through the gateway).

use crate::cluster::state::{Freeze, Message, VdiInfo};
use crate::gateway;
use crate::node::{Node, View};
use bytes::Bytes;
use proto::hash::sd_hash_vdi;
use proto::inode::{self, InodeHeader, SD_INODE_DATA_SIZE, SD_INODE_HEADER_SIZE};
use proto::{Header, Oid, SdResult, Vid};
use std::sync::Arc;
use std::time::Duration;

/// How long a snapshot waits for the writes in flight on every node to end; past it the
/// snapshot fails and the VDI stays as it was (writers wait no longer than that).
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// How long an open waits for a snapshot of its VDI to commit or thaw.
const FREEZE_WAIT: Duration = Duration::from_secs(60);

/// Whether `h` is a snapshot: the cluster's word first (a snapshot is committed by the
/// cluster event, its inode on disk may say so a moment earlier).
fn is_snap(view: &View, h: &InodeHeader) -> bool {
    view.state
        .vdis
        .get(&h.vdi_id)
        .map(|v| v.snapshot)
        .unwrap_or_else(|| h.is_snapshot())
}

/// A name and optional tag from a request payload (256 bytes each, NUL padded; a shorter
/// payload such as QEMU's RELEASE_VDI `strlen(name)+1` is accepted).
pub fn parse_name_tag(data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SdResult> {
    let name_field = &data[..data.len().min(proto::SD_MAX_VDI_LEN)];
    let name = proto::cstr_bytes(name_field);
    if name.is_empty() || name.len() >= proto::SD_MAX_VDI_LEN {
        return Err(SdResult::INVALID_PARMS);
    }
    let tag = if data.len() > proto::SD_MAX_VDI_LEN {
        let t = &data[proto::SD_MAX_VDI_LEN..data.len().min(2 * proto::SD_MAX_VDI_LEN)];
        let t = proto::cstr_bytes(t);
        if t.len() >= proto::SD_MAX_VDI_TAG_LEN {
            return Err(SdResult::INVALID_PARMS);
        }
        t.to_vec()
    } else {
        Vec::new()
    };
    Ok((name.to_vec(), tag))
}

fn next_vid(v: u32) -> u32 {
    if v + 1 >= proto::SD_NR_VDIS {
        1
    } else {
        v + 1
    }
}

/// The header and data table of the VDI a snapshot or clone starts from.
async fn read_base(node: &Arc<Node>, base: u32) -> Result<(InodeHeader, Vec<u8>), SdResult> {
    let b = read_header(node, base)
        .await
        .map_err(|_| SdResult::NO_BASE_VDI)?;
    let table = gateway::read(
        node,
        Oid::inode(Vid(base)),
        SD_INODE_HEADER_SIZE as u64,
        SD_INODE_DATA_SIZE - SD_INODE_HEADER_SIZE,
        0,
    )
    .await
    .map_err(|_| SdResult::BASE_VDI_READ)?;
    Ok((b, table))
}

pub async fn read_header(node: &Arc<Node>, vid: u32) -> Result<InodeHeader, SdResult> {
    let b = gateway::read(node, Oid::inode(Vid(vid)), 0, SD_INODE_HEADER_SIZE, 0).await?;
    InodeHeader::decode(&b).ok_or(SdResult::VDI_READ)
}

/// Every inode with `name`, walking the run of used ids that starts at the name's hash,
/// and the first free id after that run.
async fn scan(
    node: &Arc<Node>,
    view: &View,
    name: &[u8],
) -> Result<(Vec<InodeHeader>, Option<u32>), SdResult> {
    let start = sd_hash_vdi(name);
    let mut vid = start;
    let mut found = Vec::new();
    loop {
        if !view.state.vdis.contains_key(&vid) {
            return Ok((found, Some(vid)));
        }
        match read_header(node, vid).await {
            Ok(h) if h.name == name => found.push(h),
            Ok(_) => {}
            Err(SdResult::NO_OBJ) => {}
            Err(e) => return Err(e),
        }
        vid = next_vid(vid);
        if vid == start {
            return Ok((found, None));
        }
    }
}

/// Finds the VDI named by `name` and `tag` or `snapid` (neither: the working VDI).
pub async fn find(
    node: &Arc<Node>,
    view: &View,
    name: &[u8],
    tag: &[u8],
    snapid: u32,
) -> Result<InodeHeader, SdResult> {
    let deadline = tokio::time::Instant::now() + FREEZE_WAIT;
    let mut view = view.clone();
    loop {
        let w = node.admission.waiter();
        let (found, _) = scan(node, &view, name).await?;
        if found.is_empty() {
            return Err(SdResult::NO_VDI);
        }
        let hit = if snapid != 0 {
            found.into_iter().find(|h| h.snap_id == snapid)
        } else if !tag.is_empty() {
            found
                .into_iter()
                .find(|h| is_snap(&view, h) && h.tag == tag)
        } else {
            let mut h = found
                .into_iter()
                .find(|h| !is_snap(&view, h))
                .ok_or(SdResult::NO_VDI)?;
            if view.state.freezing.contains_key(&h.vdi_id) {
                // A snapshot of it is under way: it commits (the name moves on) or thaws.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(SdResult::EIO);
                }
                w.wait(left).await;
                view = node.view();
                continue;
            }
            // Working by the cluster's word, whatever a half-written snapshot left on disk.
            h.snap_ctime = 0;
            return Ok(h);
        };
        return hit.ok_or(SdResult::NO_TAG);
    }
}

fn now_inode_time() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    inode::encode_time(d.as_secs(), d.subsec_nanos())
}

/// NEW_VDI: create, snapshot (`snapid` != 0: `base` becomes a snapshot) or clone (`base` is
/// a snapshot, new name). Returns the new header.
pub async fn create(node: &Arc<Node>, hdr: &Header, data: &[u8]) -> Result<InodeHeader, SdResult> {
    let (name, tag) = parse_name_tag(data)?;
    let _guard = node.lock().await.map_err(|_| SdResult::CLUSTER_ERROR)?;
    let view = node.gate(false)?;
    let fmt = &view.state.format;
    // No redundancy asked for (copies 0): the cluster's, copies and policy both.
    let (copies, copy_policy) = if hdr.vdi_copies() != 0 {
        (hdr.vdi_copies(), hdr.vdi_copy_policy())
    } else {
        (fmt.copies, fmt.copy_policy)
    };
    let bss = if hdr.vdi_block_size_shift() != 0 {
        hdr.vdi_block_size_shift()
    } else {
        fmt.block_size_shift
    };
    if copies == 0
        || copies > proto::SD_MAX_COPIES
        || !(proto::SD_MIN_BLOCK_SIZE_SHIFT..=proto::SD_MAX_BLOCK_SIZE_SHIFT).contains(&bss)
    {
        return Err(SdResult::INVALID_PARMS);
    }
    let max_size = (1u64 << bss) * proto::SD_INODE_DATA_INDEX;
    if hdr.vdi_size() > max_size {
        return Err(SdResult::INVALID_PARMS);
    }
    let (found, free) = scan(node, &view, &name).await?;
    let vid = free.ok_or(SdResult::FULL_VDI)?;
    let working = found.iter().find(|h| !is_snap(&view, h)).cloned();
    let base = hdr.base_vdi_id();
    let now = now_inode_time();
    let mut new = InodeHeader {
        name: name.clone(),
        create_time: now,
        vdi_size: hdr.vdi_size(),
        copy_policy,
        store_policy: hdr.store_policy(),
        nr_copies: copies,
        block_size_shift: bss,
        // After the snapshots of the same name (a rollback continues the chain); 1 for a new
        // name, which makes a VDI on a snapshot's objects a clone.
        snap_id: found.iter().map(|h| h.snap_id).max().unwrap_or(0) + 1,
        vdi_id: vid,
        ..Default::default()
    };
    if hdr.snapid() != 0 {
        // Snapshot: freeze the base, which must be this name's working VDI.
        if working.as_ref().map(|w| w.vdi_id) != Some(base) {
            return Err(SdResult::NO_BASE_VDI);
        }
        return snapshot(node, base, new, tag).await;
    }
    let mut table = Bytes::new();
    if base != 0 {
        // Snapshot of the working VDI, or a clone of a snapshot: the new inode starts with the
        // base's data table.
        let (b, t) = read_base(node, base).await?;
        table = Bytes::from(t);
        new.parent_vdi_id = base;
        new.vdi_size = if new.vdi_size == 0 {
            b.vdi_size
        } else {
            new.vdi_size
        };
        new.nr_copies = b.nr_copies;
        new.block_size_shift = b.block_size_shift;
        new.copy_policy = b.copy_policy;
        // A clone (new name), or a rollback (the name's working VDI was deleted first): a new
        // working VDI on a snapshot's objects.
        if !is_snap(&view, &b) {
            return Err(SdResult::INVALID_PARMS);
        }
        if working.is_some() {
            return Err(SdResult::VDI_EXIST);
        }
    } else if working.is_some() {
        return Err(SdResult::VDI_EXIST);
    }
    write_inode(node, &new, &table).await?;
    let info = info_of(&new);
    node.notify_everywhere(Message::VdiAdd {
        vid: new.vdi_id,
        info,
        old: None,
    })
    .await
    .map_err(|_| SdResult::CLUSTER_ERROR)?;
    Ok(new)
}

fn info_of(h: &InodeHeader) -> VdiInfo {
    VdiInfo {
        copies: h.nr_copies,
        copy_policy: h.copy_policy,
        block_size_shift: h.block_size_shift,
        snapshot: false,
        parent: h.parent_vdi_id,
        deleted: false,
    }
}

/// Writes a new inode object: `h` and its data table.
async fn write_inode(node: &Arc<Node>, h: &InodeHeader, table: &[u8]) -> Result<(), SdResult> {
    let vid = h.vdi_id;
    let mut obj = h.to_bytes();
    obj.extend_from_slice(table);
    gateway::write(
        node,
        Oid::inode(Vid(vid)),
        0,
        Bytes::from(obj),
        true,
        h.nr_copies,
    )
    .await
    .map_err(|e| {
        tracing::warn!("creating inode {vid:x}: {e}");
        match e {
            // A full disk is worth saying; anything else (too few nodes included) is the
            // original's "Failed to write to requested VDI".
            SdResult::NO_SPACE => e,
            _ => SdResult::VDI_WRITE,
        }
    })
}

/// An online snapshot of the working VDI `base`, `new` being the new working VDI's header
/// (name, id, time). One atomic switch:
///
/// 1. `Freeze`: every node stops admitting writes to `base` (they wait), and the writes in
///    flight on every node end (drain). From here the base's table cannot change.
/// 2. The new inode is written with a copy of the base's table.
/// 3. The base's inode is marked a snapshot on disk (`snap_ctime`): the commit record, which a
///    cluster restarted from disk goes by.
/// 4. `VdiAdd` with `old` = base: the cluster switches, the waiting writers follow the name.
///
/// A failure before 3 thaws the base (it stays the working VDI, as it was); after 3 the
/// snapshot is committed. If this node dies in between, the lowest member resolves it from
/// the base inode on disk (`resolve_snapshot`).
async fn snapshot(
    node: &Arc<Node>,
    base: u32,
    mut new: InodeHeader,
    tag: Vec<u8>,
) -> Result<InodeHeader, SdResult> {
    let freeze = Freeze {
        node: node.me.nid.to_string(),
        new: new.vdi_id,
        snap_ctime: new.create_time,
    };
    let seq = node
        .driver
        .notify(Message::Freeze {
            vid: base,
            freeze: freeze.clone(),
        })
        .await
        .map_err(|_| SdResult::CLUSTER_ERROR)?;
    node.wait_applied(seq).await;
    if node.view().state.freezing.get(&base) != Some(&freeze) {
        // Another snapshot of it is still being resolved.
        return Err(SdResult::BASE_VDI_WRITE);
    }
    let mut original = None;
    if let Err(e) = frozen_snapshot(node, seq, base, &mut new, &tag, &mut original).await {
        // Undo: the base's header as it was (its marking may have reached some copies), then
        // the new inode. If the base cannot be restored, the snapshot goes ahead instead.
        let restored = match original {
            None => Ok(()),
            Some(h) => write_header(node, &h).await,
        };
        if restored.is_ok() {
            tracing::warn!("snapshot of {base:x}: {e}; it stays the working VDI");
            if let Err(e) = blank_inode(node, new.vdi_id).await {
                tracing::warn!("clearing the unused inode {:x}: {e}", new.vdi_id);
            }
            thaw(node, base).await;
            return Err(e);
        }
        tracing::warn!("snapshot of {base:x}: {e}, and its inode cannot be restored: committing");
    }
    commit(node, base, &new).await?;
    Ok(new)
}

/// Steps 1 to 3 of `snapshot`, with the base frozen.
async fn frozen_snapshot(
    node: &Arc<Node>,
    seq: u64,
    base: u32,
    new: &mut InodeHeader,
    tag: &[u8],
    original: &mut Option<InodeHeader>,
) -> Result<(), SdResult> {
    drain_everywhere(node, seq, base).await?;
    fail::fail_point!("vdi::snapshot_drained");
    let (b, table) = read_base(node, base).await?;
    new.parent_vdi_id = base;
    if new.vdi_size == 0 {
        new.vdi_size = b.vdi_size;
    }
    new.nr_copies = b.nr_copies;
    new.block_size_shift = b.block_size_shift;
    new.copy_policy = b.copy_policy;
    new.snap_id = b.snap_id + 1;
    write_inode(node, new, &table).await?;
    fail::fail_point!("vdi::snapshot_before_commit_record", |_| Err(
        SdResult::BASE_VDI_WRITE
    ));
    let mut frozen = b.clone();
    *original = Some(b);
    frozen.snap_ctime = new.create_time;
    if !tag.is_empty() {
        frozen.tag = tag.to_vec();
    }
    write_header(node, &frozen)
        .await
        .map_err(|_| SdResult::BASE_VDI_WRITE)?;
    fail::fail_point!("vdi::snapshot_committed_on_disk");
    Ok(())
}

/// Step 4: the cluster switches from the frozen base to `new`. The snapshot is committed on
/// disk already, so this is retried; if it cannot be sent, the base stays frozen (a writer
/// gets an error, never a write into the snapshot) until this node leaves and the resolver
/// sends it.
async fn commit(node: &Arc<Node>, base: u32, new: &InodeHeader) -> Result<(), SdResult> {
    let msg = Message::VdiAdd {
        vid: new.vdi_id,
        info: info_of(new),
        old: Some(base),
    };
    for attempt in 0..5 {
        match node.notify_everywhere(msg.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!("committing the snapshot of {base:x} (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(SdResult::CLUSTER_ERROR)
}

async fn thaw(node: &Arc<Node>, vid: u32) {
    if let Err(e) = node.notify(Message::Thaw { vid }).await {
        tracing::warn!("thawing {vid:x}: {e}");
    }
}

/// Clears an inode that never became a VDI (a snapshot that did not happen), so that a
/// cluster restarted from disk does not find it; an absent one is fine.
async fn blank_inode(node: &Arc<Node>, vid: u32) -> Result<(), SdResult> {
    match read_header(node, vid).await {
        Err(SdResult::NO_OBJ) => return Ok(()),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let blank = InodeHeader {
        vdi_id: vid,
        ..Default::default()
    };
    write_header(node, &blank).await
}

/// Writes `h` over the header of its (existing) inode object; the table stays.
async fn write_header(node: &Arc<Node>, h: &InodeHeader) -> Result<(), SdResult> {
    let oid = Oid::inode(Vid(h.vdi_id));
    gateway::write(node, oid, 0, Bytes::from(h.to_bytes()), false, 0).await
}

/// Waits until every member has applied event `seq` (the freeze of `base`) and has no write
/// to `base` in flight. A member that leaves meanwhile is not waited for.
async fn drain_everywhere(node: &Arc<Node>, seq: u64, base: u32) -> Result<(), SdResult> {
    let members = node.view().state.members.clone();
    let waits = members.iter().map(|m| async move {
        if m.nid == node.me.nid {
            return if node.admission.drain(base, DRAIN_WAIT).await {
                Ok(())
            } else {
                Err(SdResult::EIO)
            };
        }
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        loop {
            match node.peers.drain_vdi(m.nid, seq, base).await {
                Ok(()) => return Ok(()),
                _ if !node.view().state.is_member(m) => return Ok(()),
                other if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!("{}: writes to {base:x} did not drain: {other:?}", m.nid);
                    return Err(SdResult::EIO);
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    futures::future::try_join_all(waits).await.map(|_| ())
}

/// DRAIN_VDI: answers once event `seq` is applied here and no write to `vid` is in flight.
pub async fn drain_here(node: &Arc<Node>, seq: u64, vid: u32) -> Result<(), SdResult> {
    tokio::time::timeout(Duration::from_secs(5), node.wait_applied(seq))
        .await
        .map_err(|_| SdResult::CLUSTER_ERROR)?;
    // Shorter than the snapshotting node's own bound, so that it hears back in time.
    if node.admission.drain(vid, DRAIN_WAIT / 2).await {
        Ok(())
    } else {
        Err(SdResult::EIO)
    }
}

/// The node that froze `base` is gone: commit the snapshot if the base inode on disk says it
/// happened, else undo it. Under the cluster lock, as any VDI operation.
pub async fn resolve_snapshot(node: &Arc<Node>, base: u32, freeze: Freeze) {
    for attempt in 0..10u64 {
        match try_resolve(node, base, &freeze).await {
            Ok(done) => {
                tracing::info!(
                    "snapshot of {base:x} by the departed {}: {done}",
                    freeze.node
                );
                return;
            }
            Err(e) => {
                tracing::warn!("resolving the snapshot of {base:x} (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
            }
        }
    }
}

async fn try_resolve(
    node: &Arc<Node>,
    base: u32,
    freeze: &Freeze,
) -> Result<&'static str, SdResult> {
    let _guard = node.lock().await.map_err(|_| SdResult::CLUSTER_ERROR)?;
    if node.view().state.freezing.get(&base) != Some(freeze) {
        return Ok("already resolved");
    }
    let b = read_header(node, base).await?;
    if b.snap_ctime == freeze.snap_ctime {
        let new = read_header(node, freeze.new).await?;
        commit(node, base, &new).await?;
        return Ok("committed");
    }
    blank_inode(node, freeze.new).await?;
    node.notify(Message::Thaw { vid: base })
        .await
        .map_err(|_| SdResult::CLUSTER_ERROR)?;
    Ok("undone")
}

/// Data objects the deleted VDI points at that no live VDI's table still points at: its own,
/// and those of deleted VDIs it kept alive (a snapshot deleted before its child).
async fn reclaimable(
    node: &Arc<Node>,
    view: &View,
    vid: u32,
    table: &[u8],
) -> Result<Vec<Oid>, SdResult> {
    let gone = |owner: u32| owner == vid || view.state.vdis.get(&owner).is_some_and(|v| v.deleted);
    let mut candidates: Vec<Oid> = (0..proto::SD_INODE_DATA_INDEX as u32)
        .filter_map(|i| {
            let owner = inode::data_vdi_id(table, i);
            (owner != 0 && gone(owner)).then(|| Oid::data(Vid(owner), i))
        })
        .collect();
    for (&other, info) in &view.state.vdis {
        if other == vid || info.deleted || candidates.is_empty() {
            continue;
        }
        let t = gateway::read(node, Oid::inode(Vid(other)), 0, SD_INODE_DATA_SIZE, 0).await?;
        candidates.retain(|o| inode::data_vdi_id(&t, o.index()) != o.vid().0);
    }
    Ok(candidates)
}

/// DEL_VDI: removes the VDI's objects that nobody else references, then blanks its inode.
pub async fn delete(node: &Arc<Node>, hdr: &Header, data: &[u8]) -> Result<(), SdResult> {
    let (name, tag) = parse_name_tag(data)?;
    let _guard = node.lock().await.map_err(|_| SdResult::CLUSTER_ERROR)?;
    let view = node.gate(false)?;
    let h = find(node, &view, &name, &tag, hdr.snapid()).await?;
    let vid = h.vdi_id;
    if view.state.locks.contains_key(&vid) {
        // Open for writing (`dog vm list` says by whom).
        return Err(SdResult::VDI_LOCKED);
    }
    let table = gateway::read(node, Oid::inode(Vid(vid)), 0, SD_INODE_DATA_SIZE, 0).await?;
    for oid in reclaimable(node, &view, vid, &table).await? {
        gateway::remove(node, oid).await?;
    }
    // The inode stays (its id stays used, as the original) with name, size and table cleared.
    let mut blank = vec![0u8; SD_INODE_DATA_SIZE];
    let mut hh = h.clone();
    hh.name.clear();
    hh.tag.clear();
    hh.vdi_size = 0;
    hh.encode_into(&mut blank);
    gateway::write(node, Oid::inode(Vid(vid)), 0, Bytes::from(blank), false, 0).await?;
    node.notify(Message::VdiDel { vid })
        .await
        .map_err(|_| SdResult::CLUSTER_ERROR)?;
    Ok(())
}

/// After `vid`'s table stopped pointing at object `idx` of `old` (it copied the object away
/// from a deleted parent, or discarded its own), removes that object when no live VDI points
/// at it any more, so that no object outlives its last user.
pub async fn unlinked(node: &Arc<Node>, vid: u32, idx: u32, old: u32) -> Result<(), SdResult> {
    let view = node.view();
    let own = old == vid && view.state.vdis.get(&vid).is_some_and(|v| !v.snapshot);
    let orphan = old != 0 && (own || view.state.vdis.get(&old).is_some_and(|v| v.deleted));
    if !orphan {
        return Ok(());
    }
    if own {
        // A working VDI's own objects have no other user (snapshots own theirs).
        return gateway::remove(node, Oid::data(Vid(old), idx)).await;
    }
    let slot = inode::data_vdi_id_offset(idx) as u64;
    for (&other, info) in &view.state.vdis {
        if info.deleted || other == vid {
            continue;
        }
        let b = gateway::read(node, Oid::inode(Vid(other)), slot, 4, 0).await?;
        if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == old {
            return Ok(());
        }
    }
    gateway::remove(node, Oid::data(Vid(old), idx)).await
}

/// READ_VDIS (every id in use) or READ_DEL_VDIS (`deleted`: the ids of deleted VDIs): bit v
/// in byte v/8, least significant bit first.
pub fn bitmap(view: &View, deleted: bool) -> Vec<u8> {
    let mut b = vec![0u8; proto::SD_VDI_BITMAP_SIZE];
    for (&vid, info) in &view.state.vdis {
        if vid < proto::SD_NR_VDIS && (!deleted || info.deleted) {
            b[(vid / 8) as usize] |= 1 << (vid % 8);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names_and_tags() {
        let mut p = vec![0u8; 512];
        p[..5].copy_from_slice(b"Alice");
        p[256..261].copy_from_slice(b"first");
        assert_eq!(
            parse_name_tag(&p),
            Ok((b"Alice".to_vec(), b"first".to_vec()))
        );
        assert_eq!(parse_name_tag(b"Bob\0"), Ok((b"Bob".to_vec(), vec![])));
        assert_eq!(parse_name_tag(&[b'x'; 256]), Err(SdResult::INVALID_PARMS));
        assert_eq!(parse_name_tag(&[0; 256]), Err(SdResult::INVALID_PARMS));
    }
}
