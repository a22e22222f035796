//! FNV-1a 64 and the two-step hashes of the original (`sd_hash`, `sd_hash_next`,
//! `sd_hash_oid`, `sd_hash_vdi`).

pub const FNV1A_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `buf`, starting from `seed`.
pub fn fnv64a(buf: &[u8], seed: u64) -> u64 {
    let mut h = seed;
    for &b in buf {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_64_PRIME);
    }
    h
}

/// Re-hash of a hash with its own bytes as seed.
pub fn sd_hash_next(h: u64) -> u64 {
    fnv64a(&h.to_le_bytes(), h)
}

/// `sd_hash`: FNV-1a of the buffer, then re-hashed once more.
pub fn sd_hash(buf: &[u8]) -> u64 {
    sd_hash_next(fnv64a(buf, FNV1A_64_INIT))
}

/// Placement hash of an object id.
pub fn sd_hash_oid(oid: u64) -> u64 {
    sd_hash(&oid.to_le_bytes())
}

/// Starting VDI id for a name: FNV-1a 64 of the name, low 24 bits (0 is never used).
pub fn sd_hash_vdi(name: &[u8]) -> u32 {
    let v = (fnv64a(name, FNV1A_64_INIT) & 0xff_ffff) as u32;
    if v == 0 {
        1
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdi_ids_match_the_original() {
        assert_eq!(sd_hash_vdi(b"Alice"), 0x15d167);
        assert_eq!(sd_hash_vdi(b"Charlie"), 0x3ca881);
        assert_eq!(sd_hash_vdi(b"test"), 0x7c2b25);
    }

    #[test]
    fn fnv_of_empty_is_basis() {
        assert_eq!(fnv64a(b"", FNV1A_64_INIT), FNV1A_64_INIT);
        // Published FNV-1a 64 vector: "a" -> 0xaf63dc4c8601ec8c
        assert_eq!(fnv64a(b"a", FNV1A_64_INIT), 0xaf63dc4c8601ec8c);
    }
}
