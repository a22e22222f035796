//! The Sheepdog wire protocol and on-disk formats, byte-compatible with the original 1.0.
//!
//! Owns: the 48-byte request/response headers and their union views, opcodes, result codes
//! and their texts, flags, the object-id bit layout, the FNV-1a hashes used for VDI ids and
//! placement, the inode layout, node/epoch/config records.
//! Never: I/O, async, or allocation on the hot path beyond payloads.
//! All integers are little endian, as the original copies raw x86 structs.

pub mod admin;
pub mod attr;
pub mod config;
pub mod consts;
pub mod frame;
pub mod fuzz;
pub mod hash;
pub mod header;
pub mod inode;
pub mod nbd;
pub mod node;
pub mod objlist;
pub mod oid;
pub mod opcode;
pub mod result;
pub mod ring;
pub mod vdi_lock;

pub use consts::*;
pub use header::{Header, HEADER_SIZE};
pub use node::{EpochLog, NodeId, SdNode};
pub use oid::{Oid, Vid};
pub use result::SdResult;

/// Little-endian field access on byte slices; every decoder here goes through these.
pub(crate) mod le {
    pub fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }
    pub fn u32_at(b: &[u8], off: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[off..off + 4]);
        u32::from_le_bytes(a)
    }
    pub fn u64_at(b: &[u8], off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(a)
    }
    pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// A NUL-padded fixed-size name field (VDI name, tag, store name): bytes up to the first NUL.
pub fn cstr_bytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    &field[..end]
}

/// Copies `s` into a NUL-padded field of `len` bytes; `None` if it does not fit with its NUL.
pub fn padded(s: &[u8], len: usize) -> Option<Vec<u8>> {
    if s.len() >= len || s.contains(&0) {
        return None;
    }
    let mut v = vec![0u8; len];
    v[..s.len()].copy_from_slice(s);
    Some(v)
}
