//! The VDI namespace: create (and snapshot/clone), look up by name/tag/snapshot id, delete,
//! and the in-use bitmap. VDI ids come from FNV-1a of the name with linear probing, as the
//! original, so the same names get the same ids. Owns: naming and inode creation.
//! Never: raw placement (every object goes through the gateway).

use crate::cluster::state::{Message, VdiInfo};
use crate::gateway;
use crate::node::{Node, View};
use bytes::Bytes;
use proto::hash::sd_hash_vdi;
use proto::inode::{self, InodeHeader, SD_INODE_DATA_SIZE, SD_INODE_HEADER_SIZE};
use proto::{Header, Oid, SdResult, Vid};
use std::sync::Arc;

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
    let (found, _) = scan(node, view, name).await?;
    if found.is_empty() {
        return Err(SdResult::NO_VDI);
    }
    let hit = if snapid != 0 {
        found.into_iter().find(|h| h.snap_id == snapid)
    } else if !tag.is_empty() {
        found.into_iter().find(|h| h.is_snapshot() && h.tag == tag)
    } else {
        return found
            .into_iter()
            .find(|h| !h.is_snapshot())
            .ok_or(SdResult::NO_VDI);
    };
    hit.ok_or(SdResult::NO_TAG)
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
    let copies = if hdr.vdi_copies() != 0 {
        hdr.vdi_copies()
    } else {
        fmt.copies
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
    let working = found.iter().find(|h| !h.is_snapshot()).cloned();
    let base = hdr.base_vdi_id();
    let now = now_inode_time();
    let mut new = InodeHeader {
        name: name.clone(),
        create_time: now,
        vdi_size: hdr.vdi_size(),
        copy_policy: hdr.vdi_copy_policy(),
        store_policy: hdr.store_policy(),
        nr_copies: copies,
        block_size_shift: bss,
        // After the snapshots of the same name (a rollback continues the chain); 1 for a new
        // name, which makes a VDI on a snapshot's objects a clone.
        snap_id: found.iter().map(|h| h.snap_id).max().unwrap_or(0) + 1,
        vdi_id: vid,
        ..Default::default()
    };
    let mut table = Bytes::new();
    let mut old = None;
    if hdr.snapid() != 0 || base != 0 {
        // Snapshot of the working VDI, or a clone of a snapshot: the new inode starts with the
        // base's data table.
        let b = read_header(node, base)
            .await
            .map_err(|_| SdResult::NO_BASE_VDI)?;
        let t = gateway::read(
            node,
            Oid::inode(Vid(base)),
            SD_INODE_HEADER_SIZE as u64,
            SD_INODE_DATA_SIZE - SD_INODE_HEADER_SIZE,
            0,
        )
        .await
        .map_err(|_| SdResult::BASE_VDI_READ)?;
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
        if hdr.snapid() != 0 {
            // Snapshot: freeze the base, which must be this name's working VDI.
            if working.as_ref().map(|w| w.vdi_id) != Some(base) {
                return Err(SdResult::NO_BASE_VDI);
            }
            let mut frozen = b.clone();
            frozen.snap_ctime = now;
            if !tag.is_empty() {
                frozen.tag = tag.clone();
            }
            gateway::write(
                node,
                Oid::inode(Vid(base)),
                0,
                Bytes::from(frozen.to_bytes()),
                false,
                0,
            )
            .await
            .map_err(|_| SdResult::BASE_VDI_WRITE)?;
            new.snap_id = b.snap_id + 1;
            old = Some(base);
        } else {
            // A clone (new name), or a rollback (the name's working VDI was deleted first):
            // a new working VDI on a snapshot's objects.
            if !b.is_snapshot() {
                return Err(SdResult::INVALID_PARMS);
            }
            if working.is_some() {
                return Err(SdResult::VDI_EXIST);
            }
        }
    } else if working.is_some() {
        return Err(SdResult::VDI_EXIST);
    }
    let mut obj = new.to_bytes();
    obj.extend_from_slice(&table);
    gateway::write(
        node,
        Oid::inode(Vid(vid)),
        0,
        Bytes::from(obj),
        true,
        new.nr_copies,
    )
    .await
    .map_err(|e| {
        tracing::warn!("creating inode {vid:x}: {e}");
        if e == SdResult::HALT {
            e
        } else {
            SdResult::VDI_WRITE
        }
    })?;
    let info = VdiInfo {
        copies: new.nr_copies,
        copy_policy: new.copy_policy,
        block_size_shift: new.block_size_shift,
        snapshot: false,
        parent: new.parent_vdi_id,
        deleted: false,
    };
    node.notify_everywhere(Message::VdiAdd { vid, info, old })
        .await
        .map_err(|_| SdResult::CLUSTER_ERROR)?;
    Ok(new)
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
