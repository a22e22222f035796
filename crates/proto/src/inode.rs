//! The inode (VDI) object, `struct sd_inode`, byte for byte as the original.
//!
//! | off | size | field |
//! | 0 | 256 | name | 256 | 256 | tag | 512 | 8 | create_time | 520 | 8 | snap_ctime |
//! | 528 | 8 | vm_clock_nsec | 536 | 8 | vdi_size | 544 | 8 | vm_state_size |
//! | 552 | 1 | copy_policy | 553 | 1 | store_policy | 554 | 1 | nr_copies |
//! | 555 | 1 | block_size_shift | 556 | 4 | snap_id | 560 | 4 | vdi_id |
//! | 564 | 4 | parent_vdi_id | 568 | 4 | btree_counter | 572 | 4092 | unused |
//! | 4664 | 4 MiB | data_vdi_id[2^20] | 4664+4 MiB | 8 MiB | gref[2^20] |

use crate::le::*;

pub const SD_INODE_HEADER_SIZE: usize = 4664;
pub const DATA_VDI_ID_OFFSET: usize = SD_INODE_HEADER_SIZE;
pub const SD_INODE_DATA_INDEX: usize = 1 << 20;
/// What QEMU reads at open: header + data_vdi_id table.
pub const SD_INODE_DATA_SIZE: usize = SD_INODE_HEADER_SIZE + 4 * SD_INODE_DATA_INDEX;
pub const GREF_OFFSET: usize = SD_INODE_DATA_SIZE;
/// The whole inode object, generation references included.
pub const SD_INODE_SIZE: usize = SD_INODE_DATA_SIZE + 8 * SD_INODE_DATA_INDEX;

/// The header fields of an inode (first 4664 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InodeHeader {
    pub name: Vec<u8>,
    pub tag: Vec<u8>,
    pub create_time: u64,
    pub snap_ctime: u64,
    pub vm_clock_nsec: u64,
    pub vdi_size: u64,
    pub vm_state_size: u64,
    pub copy_policy: u8,
    pub store_policy: u8,
    pub nr_copies: u8,
    pub block_size_shift: u8,
    pub snap_id: u32,
    pub vdi_id: u32,
    pub parent_vdi_id: u32,
    pub btree_counter: u32,
}

impl InodeHeader {
    /// Decodes from at least the first 4664 bytes of an inode.
    pub fn decode(b: &[u8]) -> Option<InodeHeader> {
        if b.len() < 572 {
            return None;
        }
        Some(InodeHeader {
            name: crate::cstr_bytes(&b[0..256]).to_vec(),
            tag: crate::cstr_bytes(&b[256..512]).to_vec(),
            create_time: u64_at(b, 512),
            snap_ctime: u64_at(b, 520),
            vm_clock_nsec: u64_at(b, 528),
            vdi_size: u64_at(b, 536),
            vm_state_size: u64_at(b, 544),
            copy_policy: b[552],
            store_policy: b[553],
            nr_copies: b[554],
            block_size_shift: b[555],
            snap_id: u32_at(b, 556),
            vdi_id: u32_at(b, 560),
            parent_vdi_id: u32_at(b, 564),
            btree_counter: u32_at(b, 568),
        })
    }

    /// Writes the header fields into `b` (at least 572 bytes); name/tag are truncated to 255.
    pub fn encode_into(&self, b: &mut [u8]) {
        b[..572].fill(0);
        let n = self.name.len().min(255);
        b[..n].copy_from_slice(&self.name[..n]);
        let t = self.tag.len().min(255);
        b[256..256 + t].copy_from_slice(&self.tag[..t]);
        put_u64(b, 512, self.create_time);
        put_u64(b, 520, self.snap_ctime);
        put_u64(b, 528, self.vm_clock_nsec);
        put_u64(b, 536, self.vdi_size);
        put_u64(b, 544, self.vm_state_size);
        b[552] = self.copy_policy;
        b[553] = self.store_policy;
        b[554] = self.nr_copies;
        b[555] = self.block_size_shift;
        put_u32(b, 556, self.snap_id);
        put_u32(b, 560, self.vdi_id);
        put_u32(b, 564, self.parent_vdi_id);
        put_u32(b, 568, self.btree_counter);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SD_INODE_HEADER_SIZE];
        self.encode_into(&mut b);
        b
    }

    pub fn is_snapshot(&self) -> bool {
        self.snap_ctime != 0
    }

    pub fn object_size(&self) -> u64 {
        1u64 << self.block_size_shift
    }

    /// Number of data objects the VDI's size spans.
    pub fn count_data_objs(&self) -> u64 {
        self.vdi_size.div_ceil(self.object_size())
    }
}

/// Byte offset of `data_vdi_id[idx]` in the inode object.
pub fn data_vdi_id_offset(idx: u32) -> usize {
    DATA_VDI_ID_OFFSET + 4 * idx as usize
}

/// Reads `data_vdi_id[idx]` from a buffer holding the inode from offset 0.
pub fn data_vdi_id(inode: &[u8], idx: u32) -> u32 {
    let off = data_vdi_id_offset(idx);
    if off + 4 > inode.len() {
        0
    } else {
        u32_at(inode, off)
    }
}

pub fn set_data_vdi_id(inode: &mut [u8], idx: u32, vid: u32) {
    put_u32(inode, data_vdi_id_offset(idx), vid);
}

/// Time in the inode's create_time / snap_ctime form: seconds << 32 | nanoseconds.
pub fn encode_time(secs: u64, nanos: u32) -> u64 {
    (secs << 32) | nanos as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(SD_INODE_SIZE, 12_587_576);
        assert_eq!(SD_INODE_DATA_SIZE, 4_198_968);
    }
    #[test]
    fn header_round_trip() {
        let h = InodeHeader {
            name: b"Alice".to_vec(),
            vdi_size: 1 << 30,
            nr_copies: 3,
            block_size_shift: 22,
            snap_id: 1,
            vdi_id: 0x15d167,
            create_time: encode_time(5, 6),
            ..Default::default()
        };
        let b = h.to_bytes();
        assert_eq!(&b[..5], b"Alice");
        assert_eq!(b[554], 3);
        assert_eq!(InodeHeader::decode(&b), Some(h));
    }
}
