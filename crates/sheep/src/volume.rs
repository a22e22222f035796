//! An open VDI seen as one range of bytes: reads, writes, zeroing and allocation status mapped
//! onto its data objects. Objects are created on first write (thin), a parent's object is
//! copied on the first write to it (copy-on-write), and every new object is recorded in the
//! inode before the write is acknowledged. When the VDI is snapshotted while open, the volume
//! follows the name to the new working VDI, as QEMU's driver did.
//! Owns: the cached `data_vdi_id` table of one open VDI. Never: placement or peers (that is
//! the gateway) and never the namespace (that is `vdi`).

use crate::admission::Ticket;
use crate::gateway;
use crate::node::Node;
use crate::vdi;
use bytes::Bytes;
use futures::future::try_join_all;
use proto::inode::{self, InodeHeader, SD_INODE_HEADER_SIZE};
use proto::{Oid, SdResult, Vid};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{Mutex, RwLock};

/// Locks that serialise the creation of one object (index modulo this many).
const STRIPES: usize = 64;
/// How long a write waits while a snapshot of its VDI is under way.
const ADMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The VDI this volume addresses now, and its object table.
struct Current {
    vid: u32,
    copies: u8,
    obj_shift: u8,
    table: Vec<AtomicU32>,
}

pub struct Volume {
    node: Arc<Node>,
    name: Vec<u8>,
    read_only: bool,
    size: AtomicU64,
    cur: RwLock<Current>,
    stripes: Vec<Mutex<()>>,
}

/// One piece of a byte range that falls inside one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    idx: u32,
    /// Offset inside the object.
    off: u64,
    len: u64,
    /// Offset of this piece from the start of the whole range.
    at: u64,
}

fn pieces(offset: u64, len: u64, shift: u8) -> Vec<Piece> {
    let obj = 1u64 << shift;
    let mut out = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let idx = (pos >> shift) as u32;
        let off = pos & (obj - 1);
        let n = (obj - off).min(end - pos);
        out.push(Piece {
            idx,
            off,
            len: n,
            at: pos - offset,
        });
        pos += n;
    }
    out
}

async fn load(node: &Arc<Node>, h: &InodeHeader) -> Result<Current, SdResult> {
    let shift = h.block_size_shift.max(proto::SD_MIN_BLOCK_SIZE_SHIFT);
    let count = h
        .vdi_size
        .div_ceil(1u64 << shift)
        .min(proto::SD_INODE_DATA_INDEX) as usize;
    let raw = if count == 0 {
        Vec::new()
    } else {
        gateway::read(
            node,
            Oid::inode(Vid(h.vdi_id)),
            SD_INODE_HEADER_SIZE as u64,
            count * 4,
            h.nr_copies,
        )
        .await?
    };
    let table = raw
        .chunks_exact(4)
        .map(|c| AtomicU32::new(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    Ok(Current {
        vid: h.vdi_id,
        copies: h.nr_copies,
        obj_shift: shift,
        table,
    })
}

impl Volume {
    /// Opens the working VDI `name`, or its snapshot by `tag` or `snapid` (read-only).
    pub async fn open(
        node: &Arc<Node>,
        name: &[u8],
        tag: &[u8],
        snapid: u32,
    ) -> Result<Volume, SdResult> {
        let view = node.gate(false)?;
        let h = vdi::find(node, &view, name, tag, snapid).await?;
        let cur = load(node, &h).await?;
        Ok(Volume {
            node: node.clone(),
            name: name.to_vec(),
            read_only: h.is_snapshot(),
            size: AtomicU64::new(h.vdi_size),
            cur: RwLock::new(cur),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The VDI id written to now.
    pub async fn vid(&self) -> u32 {
        self.cur.read().await.vid
    }

    /// Object size of the VDI.
    pub async fn object_size(&self) -> u64 {
        1u64 << self.cur.read().await.obj_shift
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), SdResult> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(SdResult::INVALID_PARMS),
        }
    }

    /// Reads `len` bytes at `offset`; never-written ranges read as zeros.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, SdResult> {
        self.check(offset, len as u64)?;
        let cur = self.follow().await?;
        let ps = pieces(offset, len as u64, cur.obj_shift);
        let parts = try_join_all(ps.iter().map(|p| {
            let cached = cur
                .table
                .get(p.idx as usize)
                .map(|a| a.load(Ordering::Acquire))
                .unwrap_or(0);
            let node = &self.node;
            let copies = cur.copies;
            let cur = &cur;
            async move {
                // A hole, or a parent's object, may have been written (copied) through another
                // node since; a snapshot's table never changes.
                let owner = if !self.read_only && cached != cur.vid {
                    self.fresh_slot(cur, p.idx).await?
                } else {
                    cached
                };
                if owner == 0 {
                    return Ok(vec![0u8; p.len as usize]);
                }
                let oid = Oid::data(Vid(owner), p.idx);
                match gateway::read(node, oid, p.off, p.len as usize, copies).await {
                    // Discarded through another node since: the table says what it is now.
                    Err(SdResult::NO_OBJ) if !self.read_only => {
                        match self.fresh_slot(cur, p.idx).await? {
                            0 => Ok(vec![0u8; p.len as usize]),
                            o if o != owner => {
                                let oid = Oid::data(Vid(o), p.idx);
                                gateway::read(node, oid, p.off, p.len as usize, copies).await
                            }
                            _ => Err(SdResult::NO_OBJ),
                        }
                    }
                    r => r,
                }
            }
        }))
        .await?;
        let mut out = Vec::with_capacity(len);
        for part in parts {
            out.extend_from_slice(&part);
        }
        Ok(out)
    }

    /// When the VDI was snapshotted under us, follows the name to its new working VDI.
    async fn writable(&self) -> Result<tokio::sync::RwLockReadGuard<'_, Current>, SdResult> {
        if self.read_only {
            return Err(SdResult::READONLY);
        }
        self.follow().await
    }

    /// The VDI the name stands for now: a volume opened by name follows it to the new working
    /// VDI when its VDI became a snapshot (through any node), for reads as for writes; a
    /// snapshot opened as such stays.
    async fn follow(&self) -> Result<tokio::sync::RwLockReadGuard<'_, Current>, SdResult> {
        loop {
            let cur = self.cur.read().await;
            if self.read_only {
                return Ok(cur);
            }
            let frozen = self
                .node
                .view()
                .state
                .vdis
                .get(&cur.vid)
                .map(|v| v.snapshot || v.deleted)
                .unwrap_or(true);
            if !frozen {
                return Ok(cur);
            }
            let old = cur.vid;
            drop(cur);
            let mut w = self.cur.write().await;
            if w.vid == old {
                let view = self.node.gate(false)?;
                let h = vdi::find(&self.node, &view, &self.name, &[], 0).await?;
                tracing::info!(
                    "{}: {:x} became a snapshot; writing to {:x} now",
                    String::from_utf8_lossy(&self.name),
                    old,
                    h.vdi_id
                );
                if h.vdi_id == old {
                    return Err(SdResult::READONLY);
                }
                *w = load(&self.node, &h).await?;
                self.size.store(h.vdi_size, Ordering::Relaxed);
            }
        }
    }

    /// The VDI to write to now, with a ticket for it: while a snapshot of it is under way
    /// this waits, then follows the name to the new working VDI.
    async fn admitted(
        &self,
    ) -> Result<(tokio::sync::RwLockReadGuard<'_, Current>, Ticket<'_>), SdResult> {
        let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
        loop {
            let w = self.node.admission.waiter();
            let cur = self.writable().await?;
            if let Some(t) = self.node.admission.try_enter(cur.vid) {
                return Ok((cur, t));
            }
            drop(cur);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(SdResult::EIO);
            }
            w.wait(left).await;
        }
    }

    /// Writes `data` at `offset` on every copy; durable when it returns with `sync`, else
    /// after the next `flush`.
    pub async fn write(&self, offset: u64, data: Bytes, sync: bool) -> Result<(), SdResult> {
        self.check(offset, data.len() as u64)?;
        let (cur, _ticket) = self.admitted().await?;
        let ps = pieces(offset, data.len() as u64, cur.obj_shift);
        try_join_all(ps.iter().map(|p| {
            let d = data.slice(p.at as usize..(p.at + p.len) as usize);
            self.write_piece(&cur, *p, d, sync)
        }))
        .await?;
        Ok(())
    }

    async fn write_piece(
        &self,
        cur: &Current,
        p: Piece,
        data: Bytes,
        sync: bool,
    ) -> Result<(), SdResult> {
        let slot = cur
            .table
            .get(p.idx as usize)
            .ok_or(SdResult::INVALID_PARMS)?;
        if slot.load(Ordering::Acquire) == cur.vid {
            let oid = Oid::data(Vid(cur.vid), p.idx);
            match gateway::write_with(
                &self.node,
                oid,
                p.off,
                data.clone(),
                false,
                cur.copies,
                sync,
            )
            .await
            {
                // Discarded through another node since: created again below.
                Err(SdResult::NO_OBJ) => {}
                r => return r,
            }
        }
        let _g = self.stripes[p.idx as usize % STRIPES].lock().await;
        // Decide from the inode, not the cache: another client may have written it.
        let owner = self.fresh_slot(cur, p.idx).await?;
        let oid = Oid::data(Vid(cur.vid), p.idx);
        if owner == cur.vid {
            return gateway::write_with(&self.node, oid, p.off, data, false, cur.copies, sync)
                .await;
        }
        if owner == 0 {
            gateway::write_with(&self.node, oid, p.off, data, true, cur.copies, sync).await?;
        } else {
            // Copy-on-write: the parent's whole object with the new bytes laid over it.
            let size = 1usize << cur.obj_shift;
            let parent = Oid::data(Vid(owner), p.idx);
            let mut full = gateway::read(&self.node, parent, 0, size, cur.copies).await?;
            full.resize(size, 0);
            full[p.off as usize..(p.off + p.len) as usize].copy_from_slice(&data);
            let full = Bytes::from(full);
            gateway::copy_on_write(&self.node, oid, full, cur.copies, sync).await?;
            // Another gateway may have made the object first: the new bytes land either way.
            gateway::write_with(&self.node, oid, p.off, data, false, cur.copies, sync).await?;
        }
        fail::fail_point!("volume::before_set_slot");
        self.set_slot(cur, p.idx, cur.vid, sync).await?;
        slot.store(cur.vid, Ordering::Release);
        if owner != 0 {
            // Copied away from a parent: a deleted parent's object may now have no user.
            if let Err(e) = vdi::unlinked(&self.node, cur.vid, p.idx, owner).await {
                tracing::warn!("reclaiming object {} of {owner:x}: {e}", p.idx);
            }
        }
        Ok(())
    }

    /// Entry `idx` of the table as the inode has it now; the cache follows.
    async fn fresh_slot(&self, cur: &Current, idx: u32) -> Result<u32, SdResult> {
        self.fresh_slots(cur, idx, 1).await?;
        Ok(cur
            .table
            .get(idx as usize)
            .map(|a| a.load(Ordering::Acquire))
            .unwrap_or(0))
    }

    /// Reloads `n` entries of the table from `first` from the inode.
    async fn fresh_slots(&self, cur: &Current, first: u32, n: u32) -> Result<(), SdResult> {
        let b = gateway::read(
            &self.node,
            Oid::inode(Vid(cur.vid)),
            inode::data_vdi_id_offset(first) as u64,
            n as usize * 4,
            cur.copies,
        )
        .await?;
        for (k, c) in b.chunks_exact(4).enumerate() {
            if let Some(slot) = cur.table.get(first as usize + k) {
                slot.store(
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    Ordering::Release,
                );
            }
        }
        Ok(())
    }

    async fn set_slot(
        &self,
        cur: &Current,
        idx: u32,
        value: u32,
        sync: bool,
    ) -> Result<(), SdResult> {
        gateway::write_with(
            &self.node,
            Oid::inode(Vid(cur.vid)),
            inode::data_vdi_id_offset(idx) as u64,
            Bytes::copy_from_slice(&value.to_le_bytes()),
            false,
            cur.copies,
            sync,
        )
        .await
    }

    /// Makes `len` bytes at `offset` read as zeros. Whole objects are dropped from the VDI
    /// (and reclaimed when it owns them) unless `allocate`; partial ones get zeros written.
    pub async fn zero(
        &self,
        offset: u64,
        len: u64,
        allocate: bool,
        sync: bool,
    ) -> Result<(), SdResult> {
        self.check(offset, len)?;
        let (cur, _ticket) = self.admitted().await?;
        let obj = 1u64 << cur.obj_shift;
        for p in pieces(offset, len, cur.obj_shift) {
            let slot = cur
                .table
                .get(p.idx as usize)
                .ok_or(SdResult::INVALID_PARMS)?;
            let mut owner = slot.load(Ordering::Acquire);
            if owner == 0 {
                owner = self.fresh_slot(&cur, p.idx).await?;
            }
            if owner == 0 && !allocate {
                continue;
            }
            if p.len == obj && !allocate {
                let _g = self.stripes[p.idx as usize % STRIPES].lock().await;
                let owner = self.fresh_slot(&cur, p.idx).await?;
                if owner == 0 {
                    continue;
                }
                self.set_slot(&cur, p.idx, 0, sync).await?;
                slot.store(0, Ordering::Release);
                // Its own object goes; a parent's goes when it was its last user.
                vdi::unlinked(&self.node, cur.vid, p.idx, owner).await?;
                continue;
            }
            let zeros = Bytes::from(vec![0u8; p.len as usize]);
            self.write_piece(&cur, p, zeros, sync).await?;
        }
        Ok(())
    }

    /// Makes every write acknowledged so far durable on every copy.
    pub async fn flush(&self) -> Result<(), SdResult> {
        gateway::flush(&self.node).await
    }

    /// Allocation of `len` bytes at `offset` as runs of (length, allocated), at most `max`.
    pub async fn extents(&self, offset: u64, len: u64, max: usize) -> Vec<(u64, bool)> {
        let cur = match self.follow().await {
            Ok(c) => c,
            Err(_) => self.cur.read().await,
        };
        let mut out: Vec<(u64, bool)> = Vec::new();
        let ps = pieces(
            offset,
            len.min(self.size().saturating_sub(offset)),
            cur.obj_shift,
        );
        // From the inode as it is now: other clients may have written or discarded since.
        if let (Some(first), Some(last)) = (ps.first(), ps.last()) {
            if let Err(e) = self
                .fresh_slots(&cur, first.idx, last.idx - first.idx + 1)
                .await
            {
                tracing::debug!("refreshing the object table: {e}");
            }
        }
        for p in ps {
            let allocated = cur
                .table
                .get(p.idx as usize)
                .map(|a| a.load(Ordering::Acquire) != 0)
                .unwrap_or(false);
            let n = out.len();
            match out.last_mut() {
                Some((l, a)) if *a == allocated => *l += p.len,
                _ if n == max => break,
                _ => out.push((p.len, allocated)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_at_object_boundaries() {
        let ps = pieces((4 << 20) - 10, 30, 22);
        assert_eq!(
            ps,
            vec![
                Piece {
                    idx: 0,
                    off: (4 << 20) - 10,
                    len: 10,
                    at: 0
                },
                Piece {
                    idx: 1,
                    off: 0,
                    len: 20,
                    at: 10
                }
            ]
        );
        assert!(pieces(5, 0, 22).is_empty());
        assert_eq!(pieces(0, 12 << 20, 22).len(), 3);
    }
}
