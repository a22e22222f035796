//! Finding VDIs and reading their inodes: GET_VDI_INFO by name [+ tag] + snapshot id, READ_OBJ
//! of the inode header and of the used part of its data_vdi_id table, and the walk over every
//! VDI in use (`parse_vdi` of the original) that `vdi list` and `node info` build on.
//! Owns: `Inode` (header + table) and the lookup messages. Never: printing listings.

use crate::cli::Snap;
use crate::conn::Sheep;
use crate::error::{failed, Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL, EXIT_USAGE};
use futures::stream::{self, StreamExt};
use proto::inode::{InodeHeader, SD_INODE_HEADER_SIZE};
use proto::{flags, opcode, Header, Oid, SdResult, Vid};

/// VDI inodes read at once while walking all VDIs.
const WALK_IN_FLIGHT: usize = 8;

/// An inode: its header and `data_vdi_id[0 .. nr_objs]` (empty when not asked for).
#[derive(Clone, Debug, Default)]
pub struct Inode {
    pub hdr: InodeHeader,
    pub table: Vec<u32>,
}

impl Inode {
    pub fn vid(&self) -> u32 {
        self.hdr.vdi_id
    }

    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.hdr.name).into_owned()
    }

    pub fn tag(&self) -> String {
        String::from_utf8_lossy(&self.hdr.tag).into_owned()
    }

    /// Object size; a block_size_shift outside 20..=31 (corrupt or pre-1.0 inode) counts as
    /// the default 22 so that a bad inode cannot make us loop over billions of tiny objects.
    pub fn object_size(&self) -> u64 {
        match self.hdr.block_size_shift {
            s @ proto::SD_MIN_BLOCK_SIZE_SHIFT..=proto::SD_MAX_BLOCK_SIZE_SHIFT => 1 << s,
            _ => proto::SD_DATA_OBJ_SIZE,
        }
    }

    /// Data objects the VDI size spans, capped at the table size (`count_data_objs`).
    pub fn nr_objs(&self) -> u64 {
        self.hdr
            .vdi_size
            .div_ceil(self.object_size())
            .min(proto::SD_INODE_DATA_INDEX)
    }

    /// `data_vdi_id[idx]`: the VDI owning data object `idx`, 0 for a hole.
    pub fn owner(&self, idx: u64) -> u32 {
        usize::try_from(idx)
            .ok()
            .and_then(|i| self.table.get(i).copied())
            .unwrap_or(0)
    }

    pub fn is_snapshot(&self) -> bool {
        self.hdr.is_snapshot()
    }

    /// A clone: first of its name but with a parent.
    pub fn is_clone(&self) -> bool {
        self.hdr.snap_id == 1 && self.hdr.parent_vdi_id != 0
    }

    /// `sd_inode_stat`: (objects this VDI owns, objects it shares with another VDI).
    pub fn stat(&self) -> (u64, u64) {
        let vid = self.vid();
        self.table
            .iter()
            .take(self.nr_objs() as usize)
            .fold((0, 0), |(mine, cow), &v| match v {
                0 => (mine, cow),
                v if v == vid => (mine + 1, cow),
                _ => (mine, cow + 1),
            })
    }

    /// The redundancy as the original shows it: "3", or "d:p" for erasure coding.
    pub fn redundancy(&self) -> String {
        redundancy(self.hdr.nr_copies, self.hdr.copy_policy)
    }
}

/// "copies", or "data:parity" when `policy` is an erasure-coding policy.
pub fn redundancy(copies: u8, policy: u8) -> String {
    if policy == 0 {
        copies.to_string()
    } else {
        let d = u32::from(policy >> 4) * 2;
        format!("{d}:{}", policy & 0xf)
    }
}

/// The 256-byte name payload of NEW_VDI.
pub fn name_payload(name: &str) -> Res<Vec<u8>> {
    client::volumes::name_payload(name).map_err(|e| Fail::new(EXIT_USAGE, e.to_string()))
}

/// GET_VDI_INFO: the vid of `name` (snapshot `snap.id` / `snap.tag`, or the working VDI).
pub async fn find_vid(s: &Sheep, name: &str, snap: &Snap) -> Res<Result<u32, SdResult>> {
    use client::volumes::{self, VolumeError};
    match volumes::find(s.conn(), name, snap.id, &snap.tag).await {
        Ok(vid) => Ok(Ok(vid)),
        Err(VolumeError::Refused { result, .. }) => Ok(Err(result)),
        Err(e) => Err(s.volume_failure("Failed to look up the VDI", e)),
    }
}

/// READ_OBJ of part of an object; `Err` carries the original's "Failed to read object" line.
pub async fn read_object(
    s: &Sheep,
    oid: u64,
    offset: u64,
    len: u32,
    direct: bool,
) -> Res<Result<Vec<u8>, String>> {
    let mut h = Header::request(opcode::READ_OBJ);
    h.set_oid(oid).set_obj_offset(offset);
    if direct {
        h.add_flags(flags::CMD_DIRECT);
    }
    let r = s.read(h, len).await?;
    Ok(match r.result() {
        SdResult::SUCCESS => {
            let mut d = r.data;
            d.resize(len as usize, 0);
            Ok(d)
        }
        e => Err(format!("Failed to read object {oid:016x} {}", e.text())),
    })
}

/// Reads the inode of `vid`: header, and with `table` the used part of data_vdi_id.
pub async fn read_inode(s: &Sheep, vid: u32, table: bool) -> Res<Result<Inode, String>> {
    let oid = Oid::inode(Vid(vid)).0;
    let head = match read_object(s, oid, 0, SD_INODE_HEADER_SIZE as u32, true).await? {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    let Some(hdr) = InodeHeader::decode(&head) else {
        return Ok(Err(format!("Failed to read object {oid:016x} short inode")));
    };
    let mut ino = Inode {
        hdr,
        table: Vec::new(),
    };
    let n = ino.nr_objs();
    if table && n > 0 {
        let bytes =
            match read_object(s, oid, SD_INODE_HEADER_SIZE as u64, (n * 4) as u32, true).await? {
                Ok(b) => b,
                Err(e) => return Ok(Err(e)),
            };
        ino.table = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
    }
    Ok(Ok(ino))
}

/// `read_vdi_obj`: looks `name` up and reads its inode, with the original's messages.
pub async fn open(s: &Sheep, name: &str, snap: &Snap, table: bool) -> Res<Inode> {
    let vid = find_vid(s, name, snap).await?.map_err(|e| {
        failed(
            &format!(
                "Failed to open VDI {name} (snapshot id: {} snapshot tag: {})",
                snap.id, snap.tag
            ),
            e,
            EXIT_FAILURE,
        )
    })?;
    read_inode(s, vid, table).await?.map_err(|line| {
        let what = if snap.id != 0 {
            format!("Failed to read a snapshot {name}:{}", snap.id)
        } else if !snap.tag.is_empty() {
            format!("Failed to read a snapshot {name}:{}", snap.tag)
        } else {
            format!("Failed to read a vdi {name}")
        };
        Fail::new(EXIT_FAILURE, format!("{line}\n{what}"))
    })
}

/// The vids set in a 2^24-bit bitmap (bit v in byte v/8, least significant bit first).
pub fn bitmap_vids(bits: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, &b) in bits.iter().enumerate() {
        if b == 0 {
            continue;
        }
        for k in 0..8 {
            if b & (1 << k) != 0 {
                out.push((i * 8 + k) as u32);
            }
        }
    }
    out
}

/// `parse_vdi`: every VDI in use and not deleted, in vid order, with its inode (and table).
/// Inodes that cannot be read are reported on stderr and skipped, as the original does.
pub async fn walk(s: &Sheep, table: bool, mut f: impl FnMut(Inode)) -> Res<()> {
    let bitmap = proto::SD_VDI_BITMAP_SIZE as u32;
    let r = s.read(Header::request(opcode::READ_VDIS), bitmap).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(EXIT_SYSFAIL, r.result().text()));
    }
    let mut vids = bitmap_vids(&r.data);
    // Deleted VDIs keep their bit in use; READ_DEL_VDIS says which. A sheep without it
    // (INVALID_PARMS) leaves the name check below to skip them.
    let d = s
        .read(Header::request(opcode::READ_DEL_VDIS), bitmap)
        .await?;
    if d.result() == SdResult::SUCCESS {
        let deleted = d.data;
        vids.retain(|&v| {
            deleted
                .get((v / 8) as usize)
                .is_none_or(|b| b & (1 << (v % 8)) == 0)
        });
    }
    let mut inodes = stream::iter(vids)
        .map(|vid| async move { read_inode(s, vid, table).await })
        .buffered(WALK_IN_FLIGHT);
    while let Some(r) = inodes.next().await {
        match r? {
            Ok(ino) if ino.hdr.name.is_empty() => {}
            Ok(ino) => f(ino),
            Err(line) => {
                crate::errln!("{line}");
                crate::errln!("Failed to read inode header");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_bits_lsb_first() {
        let mut b = vec![0u8; 16];
        b[0] = 0b0000_0010;
        b[0x0f] = 0b1000_0001;
        assert_eq!(bitmap_vids(&b), vec![1, 120, 127]);
    }

    #[test]
    fn used_and_shared() {
        let ino = Inode {
            hdr: InodeHeader {
                vdi_id: 0x15d168,
                vdi_size: 3 * (4 << 20) + 1,
                block_size_shift: 22,
                ..Default::default()
            },
            table: vec![0x15d168, 0x15d167, 0, 0x15d167, 7],
        };
        assert_eq!(ino.nr_objs(), 4);
        assert_eq!(ino.stat(), (1, 2));
        assert_eq!(ino.owner(1), 0x15d167);
        assert_eq!(ino.owner(99), 0);
        assert_eq!(ino.owner(u64::MAX), 0);
    }

    #[test]
    fn corrupt_shift_does_not_panic() {
        let mut ino = Inode::default();
        ino.hdr.block_size_shift = 200;
        ino.hdr.vdi_size = u64::MAX;
        assert_eq!(ino.object_size(), 4 << 20);
        assert_eq!(ino.nr_objs(), 1 << 20);
    }

    #[test]
    fn payloads() {
        let p = client::volumes::name_tag_payload("Alice", "first").unwrap();
        assert_eq!(p.len(), 512);
        assert_eq!(&p[..6], b"Alice\0");
        assert_eq!(&p[256..262], b"first\0");
        assert_eq!(name_payload(&"x".repeat(255)).unwrap().len(), 256);
        assert_eq!(name_payload(&"x".repeat(256)).unwrap_err().code, EXIT_USAGE);
        assert_eq!(redundancy(3, 0), "3");
        assert_eq!(redundancy(6, 0x22), "4:2");
        assert_eq!(redundancy(31, 0x8f), "16:15");
    }
}
