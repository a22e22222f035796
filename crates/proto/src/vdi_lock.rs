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

/// Size of the original's `struct vdi_state` (GET_VDI_COPIES): vid, copies, snapshot,
/// deleted, copy policy, block size shift, pad, parent, lock state, lock owner (node_id),
/// participants (count, 31 states, 31 node_ids).
pub const VDI_STATE_SIZE: usize = 1428;
const NODE_ID_SIZE: usize = 40;
pub const LOCK_STATE_UNLOCKED: u32 = 1;
pub const LOCK_STATE_LOCKED: u32 = 2;
pub const LOCK_STATE_SHARED: u32 = 3;
/// `SHARED_LOCK_STATE_SHARED`: a participant of a shared lock.
const PARTICIPANT_SHARED: u32 = 2;

/// One `struct vdi_state` as the original's dog reads it (`vdi lock list`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VdiState {
    pub vid: u32,
    pub copies: u8,
    pub snapshot: bool,
    pub deleted: bool,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub parent: u32,
    /// Nodes holding the lock: one for a normal lock, several for a shared one.
    pub owners: Vec<crate::NodeId>,
    pub shared: bool,
}

fn put_nid(b: &mut [u8], n: &crate::NodeId) {
    b[..16].copy_from_slice(&n.addr);
    b[16..18].copy_from_slice(&n.port.to_le_bytes());
}

impl VdiState {
    pub fn encode_list(states: &[VdiState]) -> Vec<u8> {
        let mut out = vec![0u8; states.len() * VDI_STATE_SIZE];
        for (s, b) in states.iter().zip(out.chunks_exact_mut(VDI_STATE_SIZE)) {
            put_u32(b, 0, s.vid);
            b[4] = s.copies;
            b[5] = s.snapshot as u8;
            b[6] = s.deleted as u8;
            b[7] = s.copy_policy;
            b[8] = s.block_size_shift;
            put_u32(b, 12, s.parent);
            let state = match (s.owners.is_empty(), s.shared) {
                (true, _) => LOCK_STATE_UNLOCKED,
                (false, false) => LOCK_STATE_LOCKED,
                (false, true) => LOCK_STATE_SHARED,
            };
            put_u32(b, 16, state);
            if let (Some(o), false) = (s.owners.first(), s.shared) {
                put_nid(&mut b[20..20 + NODE_ID_SIZE], o);
            }
            if s.shared {
                let n = s.owners.len().min(crate::SD_MAX_COPIES as usize);
                put_u32(b, 60, n as u32);
                for (i, o) in s.owners.iter().take(n).enumerate() {
                    put_u32(b, 64 + 4 * i, PARTICIPANT_SHARED);
                    let at = 188 + NODE_ID_SIZE * i;
                    put_nid(&mut b[at..at + NODE_ID_SIZE], o);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    #[test]
    fn vdi_states_in_the_original_layout() {
        let owner = crate::NodeId::new("127.0.0.1".parse().unwrap(), 7001);
        let s = VdiState {
            vid: 0x7c2b25,
            copies: 3,
            block_size_shift: 22,
            parent: 0x7c2b24,
            owners: vec![owner],
            ..Default::default()
        };
        let b = VdiState::encode_list(&[s.clone(), VdiState::default()]);
        assert_eq!(b.len(), 2 * VDI_STATE_SIZE);
        assert_eq!(u32_at(&b, 0), 0x7c2b25);
        assert_eq!((b[4], b[8]), (3, 22));
        assert_eq!(u32_at(&b, 12), 0x7c2b24);
        assert_eq!(u32_at(&b, 16), LOCK_STATE_LOCKED);
        assert_eq!(&b[20..36], &owner.addr);
        assert_eq!(u16::from_le_bytes([b[36], b[37]]), 7001);
        assert_eq!(u32_at(&b, VDI_STATE_SIZE + 16), LOCK_STATE_UNLOCKED);
        let shared = VdiState {
            owners: vec![owner, owner],
            shared: true,
            ..s
        };
        let b = VdiState::encode_list(&[shared]);
        assert_eq!(u32_at(&b, 16), LOCK_STATE_SHARED);
        assert_eq!(u32_at(&b, 60), 2);
        assert_eq!(u32_at(&b, 68), 2);
        assert_eq!(&b[188 + 40..188 + 56], &owner.addr);
    }
}
