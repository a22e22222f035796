//! The answer to GET_VDI_LOCKS (an extension of this implementation): which VDIs are open for
//! writing, by which client, through which node. Records of 200 bytes: vid u32, shared u8,
//! 3 pad, node (64 bytes, NUL padded "address:port"), client (128 bytes, NUL padded).
//! Owns: that record layout. Never: lock rules (the cluster state has them).

use crate::le::{put_u32, u32_at};

pub const LOCK_RECORD_SIZE: usize = 200;
const NODE_LEN: usize = 64;
const CLIENT_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRecord {
    pub vid: u32,
    pub shared: bool,
    pub node: String,
    pub client: String,
}

fn put_str(b: &mut [u8], s: &str) {
    let n = s.len().min(b.len() - 1);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

impl LockRecord {
    pub fn encode_list(records: &[LockRecord]) -> Vec<u8> {
        let mut out = vec![0u8; records.len() * LOCK_RECORD_SIZE];
        for (r, b) in records.iter().zip(out.chunks_exact_mut(LOCK_RECORD_SIZE)) {
            put_u32(b, 0, r.vid);
            b[4] = r.shared as u8;
            put_str(&mut b[8..8 + NODE_LEN], &r.node);
            put_str(&mut b[8 + NODE_LEN..], &r.client);
        }
        out
    }

    pub fn decode_list(b: &[u8]) -> Vec<LockRecord> {
        let text = |f: &[u8]| String::from_utf8_lossy(crate::cstr_bytes(f)).into_owned();
        b.chunks_exact(LOCK_RECORD_SIZE)
            .map(|r| LockRecord {
                vid: u32_at(r, 0),
                shared: r[4] != 0,
                node: text(&r[8..8 + NODE_LEN]),
                client: text(&r[8 + NODE_LEN..8 + NODE_LEN + CLIENT_LEN]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = vec![
            LockRecord {
                vid: 0x316b4,
                shared: false,
                node: "127.0.0.1:7000".into(),
                client: "nbd 127.0.0.1".into(),
            },
            LockRecord {
                vid: 7,
                shared: true,
                node: "x".repeat(100),
                client: String::new(),
            },
        ];
        let b = LockRecord::encode_list(&r);
        assert_eq!(b.len(), 2 * LOCK_RECORD_SIZE);
        let d = LockRecord::decode_list(&b);
        assert_eq!(d[0], r[0]);
        assert_eq!(d[1].node.len(), NODE_LEN - 1);
        assert!(d[1].shared);
    }
}
