//! The payloads of the original's administration requests that dog sends and scripts rely
//! on: `struct cluster_info` (CLUSTER_INFO), `struct sd_stat` (STAT), `struct sd_md_info`
//! (MD_INFO) and the syslog log levels of GET_LOGLEVEL/SET_LOGLEVEL, byte for byte as the
//! original's include/internal_proto.h lays them out on x86-64.
//! Owns: these layouts and the level names. Never: where the values come from.

use crate::le::{put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::node::{SdNode, SD_NODE_SIZE};

/// `struct cluster_info` up to its node array (the array starts at this offset).
pub const CLUSTER_INFO_HEADER_SIZE: usize = 48;
/// `SD_MAX_NODES` of the original (without disk vnodes): the size of its node array.
pub const CLUSTER_INFO_MAX_NODES: usize = 6144;
/// `sizeof(struct cluster_info)`: what the original's dog asks for.
pub const CLUSTER_INFO_SIZE: usize =
    CLUSTER_INFO_HEADER_SIZE + CLUSTER_INFO_MAX_NODES * SD_NODE_SIZE;
/// `SD_SHEEP_PROTO_VER`.
pub const SHEEP_PROTO_VER: u8 = 0x0a;

/// `enum sd_status` of the original.
pub mod status {
    pub const OK: u8 = 1;
    pub const WAIT: u8 = 2;
    pub const SHUTDOWN: u8 = 3;
    pub const KILLED: u8 = 4;
}

/// `struct cluster_info`: the cluster's format and the members of its current epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    pub proto_ver: u8,
    pub disable_recovery: bool,
    pub epoch: u32,
    pub ctime: u64,
    pub flags: u16,
    pub nr_copies: u8,
    pub copy_policy: u8,
    /// One of `status::*`.
    pub status: u8,
    pub block_size_shift: u8,
    pub default_store: String,
    /// The nodes of `epoch` (`nr_nodes` is their count).
    pub nodes: Vec<SdNode>,
}

impl ClusterInfo {
    /// The struct with its node array cut after the last node (the original sends all
    /// `CLUSTER_INFO_MAX_NODES` slots; a reader looks at `nr_nodes` of them). At most
    /// `CLUSTER_INFO_MAX_NODES` nodes are written, as the original's array holds.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.nodes.len().min(CLUSTER_INFO_MAX_NODES);
        let mut b = vec![0u8; CLUSTER_INFO_HEADER_SIZE + n * SD_NODE_SIZE];
        b[0] = self.proto_ver;
        b[1] = u8::from(self.disable_recovery);
        put_u16(&mut b, 2, n as u16);
        put_u32(&mut b, 4, self.epoch);
        put_u64(&mut b, 8, self.ctime);
        put_u16(&mut b, 16, self.flags);
        b[18] = self.nr_copies;
        b[19] = self.copy_policy;
        b[20] = self.status;
        b[21] = self.block_size_shift;
        let store = self.default_store.as_bytes();
        let len = store.len().min(15);
        b[25..25 + len].copy_from_slice(&store[..len]);
        for (i, node) in self.nodes.iter().take(n).enumerate() {
            let at = CLUSTER_INFO_HEADER_SIZE + i * SD_NODE_SIZE;
            node.encode(&mut b[at..at + SD_NODE_SIZE]);
        }
        b
    }

    /// Decodes an answer; `None` when it is shorter than its header or than the nodes it
    /// says it holds.
    pub fn decode(b: &[u8]) -> Option<ClusterInfo> {
        if b.len() < CLUSTER_INFO_HEADER_SIZE {
            return None;
        }
        let n = usize::try_from(u16_at(b, 2) as i16).ok()?;
        let end = CLUSTER_INFO_HEADER_SIZE.checked_add(n.checked_mul(SD_NODE_SIZE)?)?;
        let nodes = b
            .get(CLUSTER_INFO_HEADER_SIZE..end)?
            .chunks_exact(SD_NODE_SIZE)
            .map(SdNode::decode)
            .collect::<Option<Vec<_>>>()?;
        Some(ClusterInfo {
            proto_ver: b[0],
            disable_recovery: b[1] != 0,
            epoch: u32_at(b, 4),
            ctime: u64_at(b, 8),
            flags: u16_at(b, 16),
            nr_copies: b[18],
            copy_policy: b[19],
            status: b[20],
            block_size_shift: b[21],
            default_store: String::from_utf8_lossy(crate::cstr_bytes(&b[25..41])).into_owned(),
            nodes,
        })
    }
}

/// `struct sd_stat`: request counters of one node since it started. "Gateway" requests are
/// the object I/O of clients (Sheepdog's object opcodes and NBD's commands), "peer" ones the
/// copies other nodes send; rx is data received (written), tx data sent (read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub gway_active_nr: u64,
    pub peer_active_nr: u64,
    pub gway_total_nr: u64,
    pub peer_total_nr: u64,
    pub gway_total_rx: u64,
    pub gway_total_tx: u64,
    pub peer_total_rx: u64,
    pub peer_total_tx: u64,
    pub gway_total_remove_nr: u64,
    pub gway_total_read_nr: u64,
    pub gway_total_write_nr: u64,
    pub gway_total_flush_nr: u64,
    pub peer_total_remove_nr: u64,
    pub peer_total_read_nr: u64,
    pub peer_total_write_nr: u64,
}

pub const STAT_SIZE: usize = 15 * 8;

impl Stat {
    fn fields(&self) -> [u64; 15] {
        [
            self.gway_active_nr,
            self.peer_active_nr,
            self.gway_total_nr,
            self.peer_total_nr,
            self.gway_total_rx,
            self.gway_total_tx,
            self.peer_total_rx,
            self.peer_total_tx,
            self.gway_total_remove_nr,
            self.gway_total_read_nr,
            self.gway_total_write_nr,
            self.gway_total_flush_nr,
            self.peer_total_remove_nr,
            self.peer_total_read_nr,
            self.peer_total_write_nr,
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        self.fields().iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    pub fn decode(b: &[u8]) -> Option<Stat> {
        if b.len() < STAT_SIZE {
            return None;
        }
        let f = |i: usize| u64_at(b, i * 8);
        Some(Stat {
            gway_active_nr: f(0),
            peer_active_nr: f(1),
            gway_total_nr: f(2),
            peer_total_nr: f(3),
            gway_total_rx: f(4),
            gway_total_tx: f(5),
            peer_total_rx: f(6),
            peer_total_tx: f(7),
            gway_total_remove_nr: f(8),
            gway_total_read_nr: f(9),
            gway_total_write_nr: f(10),
            gway_total_flush_nr: f(11),
            peer_total_remove_nr: f(12),
            peer_total_read_nr: f(13),
            peer_total_write_nr: f(14),
        })
    }
}

/// `PATH_MAX` of the path in `struct md_info`.
const MD_PATH_SIZE: usize = 4096;
/// `struct md_info`: idx (i32, padded to 8), free, used, path.
const MD_ENTRY_SIZE: usize = 24 + MD_PATH_SIZE;
/// `MD_MAX_DISK`.
pub const MD_MAX_DISKS: usize = 64;
/// `sizeof(struct sd_md_info)`: 64 entries, then `nr` (i32, padded to 8).
pub const MD_INFO_SIZE: usize = MD_MAX_DISKS * MD_ENTRY_SIZE + 8;

/// One disk of a node, as MD_INFO reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub idx: u32,
    pub free: u64,
    pub used: u64,
    pub path: String,
}

/// `struct sd_md_info`, always its full size as the original answers. Disks past
/// `MD_MAX_DISKS` are left out; a path is cut to fit its field with its NUL.
pub fn encode_md_info(disks: &[Disk]) -> Vec<u8> {
    let mut b = vec![0u8; MD_INFO_SIZE];
    let n = disks.len().min(MD_MAX_DISKS);
    for (i, d) in disks.iter().take(n).enumerate() {
        let at = i * MD_ENTRY_SIZE;
        put_u32(&mut b, at, d.idx);
        put_u64(&mut b, at + 8, d.free);
        put_u64(&mut b, at + 16, d.used);
        let p = d.path.as_bytes();
        let len = p.len().min(MD_PATH_SIZE - 1);
        b[at + 24..at + 24 + len].copy_from_slice(&p[..len]);
    }
    put_u32(&mut b, MD_MAX_DISKS * MD_ENTRY_SIZE, n as u32);
    b
}

/// Decodes an MD_INFO answer; `None` when it is short or counts more disks than it holds.
pub fn decode_md_info(b: &[u8]) -> Option<Vec<Disk>> {
    if b.len() < MD_MAX_DISKS * MD_ENTRY_SIZE + 4 {
        return None;
    }
    let n = u32_at(b, MD_MAX_DISKS * MD_ENTRY_SIZE) as usize;
    if n > MD_MAX_DISKS {
        return None;
    }
    Some(
        (0..n)
            .map(|i| {
                let at = i * MD_ENTRY_SIZE;
                Disk {
                    idx: u32_at(b, at),
                    free: u64_at(b, at + 8),
                    used: u64_at(b, at + 16),
                    path: String::from_utf8_lossy(crate::cstr_bytes(
                        &b[at + 24..at + MD_ENTRY_SIZE],
                    ))
                    .into_owned(),
                }
            })
            .collect(),
    )
}

/// The syslog levels GET_LOGLEVEL and SET_LOGLEVEL carry (an i32), by number.
pub const LOG_LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// The number of a level's name (`LOG_LEVELS`).
pub fn log_level(name: &str) -> Option<i32> {
    LOG_LEVELS.iter().position(|&l| l == name).map(|i| i as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeId;

    fn node(port: u16) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 128,
            zone: u32::from(port),
            space: 1 << 30,
        }
    }

    #[test]
    fn cluster_info_is_laid_out_as_the_original() {
        // Offsets printed by a C program built against the original's internal_proto.h.
        assert_eq!(CLUSTER_INFO_SIZE, 491_568);
        let ci = ClusterInfo {
            proto_ver: SHEEP_PROTO_VER,
            disable_recovery: true,
            epoch: 0x0102_0304,
            ctime: 0x1122_3344_5566_7788,
            flags: 0x0024,
            nr_copies: 3,
            copy_policy: 0x42,
            status: status::OK,
            block_size_shift: 22,
            default_store: "tree".into(),
            nodes: vec![node(7000), node(7001)],
        };
        let b = ci.encode();
        assert_eq!(b.len(), 48 + 2 * 80);
        assert_eq!(&b[..4], &[0x0a, 1, 2, 0]);
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(u64_at(&b, 8), 0x1122_3344_5566_7788);
        assert_eq!(&b[16..22], &[0x24, 0, 3, 0x42, 1, 22]);
        assert_eq!(&b[25..30], b"tree\0");
        assert_eq!(&b[48..128], &node(7000).to_bytes());
        assert_eq!(ClusterInfo::decode(&b), Some(ci.clone()));
        // An answer cut short of the nodes it counts is refused, not misread.
        assert_eq!(ClusterInfo::decode(&b[..100]), None);
        assert_eq!(ClusterInfo::decode(&b[..47]), None);
    }

    #[test]
    fn stat_is_fifteen_counters() {
        let s = Stat {
            gway_active_nr: 1,
            peer_total_write_nr: 15,
            gway_total_flush_nr: 12,
            ..Stat::default()
        };
        let b = s.encode();
        assert_eq!(b.len(), STAT_SIZE);
        assert_eq!(u64_at(&b, 0), 1);
        assert_eq!(u64_at(&b, 11 * 8), 12);
        assert_eq!(u64_at(&b, 14 * 8), 15);
        assert_eq!(Stat::decode(&b), Some(s));
        assert_eq!(Stat::decode(&b[..119]), None);
    }

    #[test]
    fn md_info_is_laid_out_as_the_original() {
        assert_eq!(MD_INFO_SIZE, 263_688);
        let disks = vec![
            Disk {
                idx: 0,
                free: 10,
                used: 20,
                path: "/var/lib/sheepdog/obj".into(),
            },
            Disk {
                idx: 1,
                free: 30,
                used: 40,
                path: "/mnt/disk1".into(),
            },
        ];
        let b = encode_md_info(&disks);
        assert_eq!(b.len(), MD_INFO_SIZE);
        assert_eq!(u32_at(&b, 4120), 1);
        assert_eq!(u64_at(&b, 4120 + 8), 30);
        assert_eq!(&b[4120 + 24..4120 + 35], b"/mnt/disk1\0");
        assert_eq!(u32_at(&b, 263_680), 2);
        assert_eq!(decode_md_info(&b), Some(disks));
        let mut bad = b.clone();
        put_u32(&mut bad, 263_680, 65);
        assert_eq!(decode_md_info(&bad), None);
        assert_eq!(decode_md_info(&b[..1000]), None);
    }

    #[test]
    fn log_levels_by_name() {
        assert_eq!(log_level("emerg"), Some(0));
        assert_eq!(log_level("debug"), Some(7));
        assert_eq!(log_level("info"), Some(6));
        assert_eq!(log_level("verbose"), None);
    }
}
