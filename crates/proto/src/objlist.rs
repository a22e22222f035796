//! The answer to OBJ_LIST_TAGGED (an extension of this implementation): the best copy of
//! every object a node holds, as 24-byte records: oid u64, tag u32 (`TAG_CURRENT` for a
//! current copy, else the epoch in which the stale copy was last current), pad u32, version
//! u64 (writes the copy has taken); all little endian. The request's oid field pages the
//! answer: the records of objects from that oid on, in oid order, as many as its data length
//! holds (a full page means there may be more from the last oid + 1).
//! Owns: that record layout. Never: what a tag or a version means to recovery.

use crate::le::{put_u32, u32_at};
use crate::Oid;

pub const RECORD_SIZE: usize = 24;
/// Tag of a current copy.
pub const TAG_CURRENT: u32 = u32::MAX;

/// One copy: its object, tag and version.
pub type Record = (Oid, u32, u64);

pub fn encode(list: &[Record]) -> Vec<u8> {
    let mut b = vec![0u8; list.len() * RECORD_SIZE];
    for ((oid, tag, version), r) in list.iter().zip(b.chunks_exact_mut(RECORD_SIZE)) {
        r[..8].copy_from_slice(&oid.0.to_le_bytes());
        put_u32(r, 8, *tag);
        r[16..24].copy_from_slice(&version.to_le_bytes());
    }
    b
}

/// The records of `b`; `None` unless it is a whole number of records.
pub fn decode(b: &[u8]) -> Option<Vec<Record>> {
    if !b.len().is_multiple_of(RECORD_SIZE) {
        return None;
    }
    let u64_at = |r: &[u8], at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&r[at..at + 8]);
        u64::from_le_bytes(a)
    };
    Some(
        b.chunks_exact(RECORD_SIZE)
            .map(|r| (Oid(u64_at(r, 0)), u32_at(r, 8), u64_at(r, 16)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_ragged_ones_are_refused() {
        let l = vec![
            (Oid(0x0015d16700000003), TAG_CURRENT, 12),
            (Oid(0x8015_d167_0000_0000), 7, 0),
        ];
        assert_eq!(decode(&encode(&l)), Some(l));
        assert_eq!(decode(&[]), Some(vec![]));
        assert_eq!(decode(&[1, 2, 3]), None);
    }
}
