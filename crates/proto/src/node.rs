//! Node identity and the records that carry node lists: `struct node_id` (40 B),
//! `struct sd_node` (80 B, on the wire and in epoch files), `struct epoch_log` (STAT_CLUSTER).

use crate::le::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const NODE_ID_SIZE: usize = 40;
pub const SD_NODE_SIZE: usize = 80;
/// Offset of node_id inside sd_node (after the original's 24-byte rb_node).
const NID_OFF: usize = 24;
/// Size of the fixed part of `struct epoch_log` before its node array.
pub const EPOCH_LOG_HEADER_SIZE: usize = 48;

/// `struct node_id`: address (IPv4 as 12 zero bytes + 4 address bytes) and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub addr: [u8; 16],
    pub port: u16,
}

impl NodeId {
    pub fn new(ip: IpAddr, port: u16) -> NodeId {
        let mut addr = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => addr[12..].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => addr = v6.octets(),
        }
        NodeId { addr, port }
    }

    pub fn ip(&self) -> IpAddr {
        if self.addr[..12].iter().all(|&b| b == 0) {
            IpAddr::V4(Ipv4Addr::new(
                self.addr[12],
                self.addr[13],
                self.addr[14],
                self.addr[15],
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.addr))
        }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }

    /// The 18 bytes (addr + port) that seed the node's virtual-node hashes.
    pub fn hash_bytes(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[..16].copy_from_slice(&self.addr);
        b[16..].copy_from_slice(&self.port.to_le_bytes());
        b
    }

    /// Default zone of the original: the last 4 address bytes as a little-endian u32.
    pub fn default_zone(&self) -> u32 {
        u32::from_le_bytes([self.addr[12], self.addr[13], self.addr[14], self.addr[15]])
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            IpAddr::V4(a) => write!(f, "{}:{}", a, self.port),
            IpAddr::V6(a) => write!(f, "[{}]:{}", a, self.port),
        }
    }
}

/// `struct sd_node`: a cluster member as placement sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SdNode {
    pub nid: NodeId,
    pub nr_vnodes: u16,
    pub zone: u32,
    pub space: u64,
}

impl SdNode {
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..SD_NODE_SIZE];
        b.fill(0);
        b[NID_OFF..NID_OFF + 16].copy_from_slice(&self.nid.addr);
        put_u16(b, NID_OFF + 16, self.nid.port);
        // io_addr/io_port (separate I/O NIC) are unused here and stay zero.
        put_u16(b, 64, self.nr_vnodes);
        put_u32(b, 68, self.zone);
        put_u64(b, 72, self.space);
    }

    pub fn to_bytes(&self) -> [u8; SD_NODE_SIZE] {
        let mut b = [0u8; SD_NODE_SIZE];
        self.encode(&mut b);
        b
    }

    /// Decodes one 80-byte record; `None` if `b` is shorter.
    pub fn decode(b: &[u8]) -> Option<SdNode> {
        if b.len() < SD_NODE_SIZE {
            return None;
        }
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&b[NID_OFF..NID_OFF + 16]);
        Some(SdNode {
            nid: NodeId {
                addr,
                port: u16_at(b, NID_OFF + 16),
            },
            nr_vnodes: u16_at(b, 64),
            zone: u32_at(b, 68),
            space: u64_at(b, 72),
        })
    }

    /// Decodes a packed array of records (trailing partial record ignored).
    pub fn decode_list(b: &[u8]) -> Vec<SdNode> {
        b.chunks_exact(SD_NODE_SIZE)
            .filter_map(SdNode::decode)
            .collect()
    }

    pub fn encode_list(nodes: &[SdNode]) -> Vec<u8> {
        let mut v = vec![0u8; nodes.len() * SD_NODE_SIZE];
        for (i, n) in nodes.iter().enumerate() {
            n.encode(&mut v[i * SD_NODE_SIZE..]);
        }
        v
    }
}

/// One entry of the STAT_CLUSTER reply (`struct epoch_log` + `nodes_nr` node slots).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EpochLog {
    pub ctime: u64,
    pub time: u64,
    pub epoch: u32,
    pub disable_recovery: u8,
    pub nr_copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub flags: u16,
    pub drv_name: String,
    pub nodes: Vec<SdNode>,
}

impl EpochLog {
    /// Size of one record when the request asked for `nodes_nr` node slots.
    pub fn record_size(nodes_nr: usize) -> usize {
        EPOCH_LOG_HEADER_SIZE + nodes_nr * SD_NODE_SIZE
    }

    /// Encodes into a record of `record_size(nodes_nr)` bytes (nodes beyond the slots dropped).
    pub fn encode(&self, nodes_nr: usize) -> Vec<u8> {
        let mut b = vec![0u8; Self::record_size(nodes_nr)];
        put_u64(&mut b, 0, self.ctime);
        put_u64(&mut b, 8, self.time);
        put_u32(&mut b, 16, self.epoch);
        let n = self.nodes.len().min(nodes_nr);
        put_u32(&mut b, 20, n as u32);
        b[24] = self.disable_recovery;
        b[25] = self.nr_copies;
        b[26] = self.copy_policy;
        b[27] = self.block_size_shift;
        put_u16(&mut b, 30, self.flags);
        let name = self.drv_name.as_bytes();
        let l = name.len().min(crate::STORE_LEN - 1);
        b[32..32 + l].copy_from_slice(&name[..l]);
        for (i, node) in self.nodes.iter().take(n).enumerate() {
            node.encode(&mut b[EPOCH_LOG_HEADER_SIZE + i * SD_NODE_SIZE..]);
        }
        b
    }

    /// Decodes a reply of packed records, each with `nodes_nr` node slots.
    pub fn decode_all(b: &[u8], nodes_nr: usize) -> Vec<EpochLog> {
        b.chunks_exact(Self::record_size(nodes_nr))
            .map(|r| {
                let n = (u32_at(r, 20) as usize).min(nodes_nr);
                EpochLog {
                    ctime: u64_at(r, 0),
                    time: u64_at(r, 8),
                    epoch: u32_at(r, 16),
                    disable_recovery: r[24],
                    nr_copies: r[25],
                    copy_policy: r[26],
                    block_size_shift: r[27],
                    flags: u16_at(r, 30),
                    drv_name: String::from_utf8_lossy(crate::cstr_bytes(&r[32..48])).into_owned(),
                    nodes: SdNode::decode_list(&r[EPOCH_LOG_HEADER_SIZE..][..n * SD_NODE_SIZE]),
                }
            })
            .collect()
    }
}

/// The epoch file `<store>/epoch/%08u`: packed sd_node records then a u64 time_t.
pub fn encode_epoch_file(nodes: &[SdNode], time: u64) -> Vec<u8> {
    let mut v = SdNode::encode_list(nodes);
    v.extend_from_slice(&time.to_le_bytes());
    v
}

/// Decodes an epoch file; `None` if its length is not N*80+8.
pub fn decode_epoch_file(b: &[u8]) -> Option<(Vec<SdNode>, u64)> {
    if b.len() < 8 || !(b.len() - 8).is_multiple_of(SD_NODE_SIZE) {
        return None;
    }
    let (nodes, t) = b.split_at(b.len() - 8);
    Some((SdNode::decode_list(nodes), u64_at(t, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(port: u16, zone: u32) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 128,
            zone,
            space: 1 << 30,
        }
    }

    #[test]
    fn sd_node_layout() {
        let b = node(7000, 5).to_bytes();
        assert_eq!(&b[24..36], &[0u8; 12]);
        assert_eq!(&b[36..40], &[127, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([b[40], b[41]]), 7000);
        assert_eq!(u16::from_le_bytes([b[64], b[65]]), 128);
        assert_eq!(b[68], 5);
        assert_eq!(node(7000, 5).nid.to_string(), "127.0.0.1:7000");
    }

    #[test]
    fn epoch_log_round_trip() {
        let e = EpochLog {
            ctime: 9,
            time: 10,
            epoch: 3,
            nr_copies: 3,
            flags: 4,
            drv_name: "plain".into(),
            nodes: vec![node(1, 0), node(2, 1)],
            ..Default::default()
        };
        let mut b = e.encode(4);
        b.extend(e.encode(4));
        assert_eq!(EpochLog::decode_all(&b, 4), vec![e.clone(), e]);
    }

    proptest! {
        #[test]
        fn sd_node_round_trip(addr in proptest::array::uniform16(any::<u8>()), port: u16, vn: u16, zone: u32, space: u64) {
            let n = SdNode { nid: NodeId { addr, port }, nr_vnodes: vn, zone, space };
            prop_assert_eq!(SdNode::decode(&n.to_bytes()), Some(n));
        }
        #[test]
        fn epoch_file_round_trip(ports in proptest::collection::vec(any::<u16>(), 0..20), t: u64) {
            let nodes: Vec<SdNode> = ports.iter().map(|&p| node(p, p as u32)).collect();
            prop_assert_eq!(decode_epoch_file(&encode_epoch_file(&nodes, t)), Some((nodes, t)));
        }
    }
}
