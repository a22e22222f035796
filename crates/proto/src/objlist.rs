//! The answer to OBJ_LIST_TAGGED (an extension of this implementation): every copy a node
//! holds, as 16-byte records: oid u64, tag u32 (`TAG_CURRENT` for a current copy, else the
//! epoch in which the stale copy was last current), pad u32; all little endian.
//! Owns: that record layout. Never: what a tag means to recovery.

use crate::le::{put_u32, u32_at};
use crate::Oid;

pub const RECORD_SIZE: usize = 16;
/// Tag of a current copy.
pub const TAG_CURRENT: u32 = u32::MAX;

pub fn encode(list: &[(Oid, u32)]) -> Vec<u8> {
    let mut b = vec![0u8; list.len() * RECORD_SIZE];
    for ((oid, tag), r) in list.iter().zip(b.chunks_exact_mut(RECORD_SIZE)) {
        r[..8].copy_from_slice(&oid.0.to_le_bytes());
        put_u32(r, 8, *tag);
    }
    b
}

/// The records of `b`; `None` unless it is a whole number of records.
pub fn decode(b: &[u8]) -> Option<Vec<(Oid, u32)>> {
    if !b.len().is_multiple_of(RECORD_SIZE) {
        return None;
    }
    Some(
        b.chunks_exact(RECORD_SIZE)
            .map(|r| {
                let mut o = [0u8; 8];
                o.copy_from_slice(&r[..8]);
                (Oid(u64::from_le_bytes(o)), u32_at(r, 8))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_ragged_ones_are_refused() {
        let l = vec![
            (Oid(0x0015d16700000003), TAG_CURRENT),
            (Oid(0x8015_d167_0000_0000), 7),
        ];
        assert_eq!(decode(&encode(&l)), Some(l));
        assert_eq!(decode(&[]), Some(vec![]));
        assert_eq!(decode(&[1, 2, 3]), None);
    }
}
