//! Object ids: the one place that knows the oid bit layout.
//!
//! bit 63 VDI (inode), 62 VMSTATE, 61 VDI_ATTR, 60 VDI_BTREE, 59 LEDGER, 32..55 vid,
//! 0..31 index (data index, attr id, btree id, vmstate index).

use std::fmt;

pub const VDI_BIT: u64 = 1 << 63;
pub const VMSTATE_BIT: u64 = 1 << 62;
pub const VDI_ATTR_BIT: u64 = 1 << 61;
pub const VDI_BTREE_BIT: u64 = 1 << 60;
pub const LEDGER_BIT: u64 = 1 << 59;
pub const VDI_SPACE_SHIFT: u32 = 32;
const KIND_BITS: u64 = VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT;

/// A 24-bit VDI id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Vid(pub u32);

impl Vid {
    pub const MASK: u32 = 0x00ff_ffff;
    /// Checked constructor: `None` for ids beyond 24 bits.
    pub fn new(v: u32) -> Option<Vid> {
        (v <= Self::MASK).then_some(Vid(v))
    }
}

impl fmt::Display for Vid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// What an object id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OidKind {
    Data,
    Inode,
    Vmstate,
    Attr,
    Btree,
    Ledger,
}

/// A 64-bit object id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Oid(pub u64);

impl Oid {
    pub fn inode(vid: Vid) -> Oid {
        Oid(VDI_BIT | ((vid.0 as u64) << VDI_SPACE_SHIFT))
    }
    pub fn data(vid: Vid, idx: u32) -> Oid {
        Oid(((vid.0 as u64) << VDI_SPACE_SHIFT) | idx as u64)
    }
    pub fn attr(vid: Vid, attr_id: u32) -> Oid {
        Oid(VDI_ATTR_BIT | ((vid.0 as u64) << VDI_SPACE_SHIFT) | attr_id as u64)
    }
    pub fn vmstate(vid: Vid, idx: u32) -> Oid {
        Oid(VMSTATE_BIT | ((vid.0 as u64) << VDI_SPACE_SHIFT) | idx as u64)
    }
    pub fn ledger(data: Oid) -> Oid {
        Oid(data.0 | LEDGER_BIT)
    }
    pub fn vid(self) -> Vid {
        Vid(((self.0 >> VDI_SPACE_SHIFT) & Vid::MASK as u64) as u32)
    }
    /// Low 32 bits: data index, attr id, btree id or vmstate index.
    pub fn index(self) -> u32 {
        self.0 as u32
    }
    pub fn kind(self) -> OidKind {
        if self.0 & VDI_BIT != 0 {
            OidKind::Inode
        } else if self.0 & VMSTATE_BIT != 0 {
            OidKind::Vmstate
        } else if self.0 & VDI_ATTR_BIT != 0 {
            OidKind::Attr
        } else if self.0 & VDI_BTREE_BIT != 0 {
            OidKind::Btree
        } else if self.0 & LEDGER_BIT != 0 {
            OidKind::Ledger
        } else {
            OidKind::Data
        }
    }
    pub fn is_data(self) -> bool {
        self.0 & KIND_BITS == 0
    }
    pub fn is_inode(self) -> bool {
        self.kind() == OidKind::Inode
    }
    /// True when bits reserved by the layout (56..58) are clear and at most one kind bit is set.
    pub fn is_well_formed(self) -> bool {
        let reserved = 0x7u64 << 56;
        self.0 & reserved == 0 && (self.0 & KIND_BITS).count_ones() <= 1
    }
    /// 16 lowercase hex digits: the object's file name in the plain store.
    pub fn file_name(self) -> String {
        format!("{:016x}", self.0)
    }
    pub fn parse_file_name(s: &str) -> Option<Oid> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Oid)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_original_file_names() {
        let v = Vid(0x7c2b25);
        assert_eq!(Oid::inode(v).file_name(), "807c2b2500000000");
        assert_eq!(Oid::data(v, 3).file_name(), "007c2b2500000003");
        assert_eq!(Oid::ledger(Oid::data(v, 0)).file_name(), "087c2b2500000000");
        assert_eq!(Oid::data(v, 3).vid(), v);
        assert_eq!(Oid::data(v, 3).index(), 3);
        assert!(Oid::data(v, 3).is_data());
        assert_eq!(Oid::inode(v).kind(), OidKind::Inode);
        assert_eq!(Oid::attr(v, 1).kind(), OidKind::Attr);
        assert_eq!(Oid::vmstate(v, 1).kind(), OidKind::Vmstate);
        assert_eq!(
            Oid::parse_file_name("807c2b2500000000"),
            Some(Oid::inode(v))
        );
    }
}
