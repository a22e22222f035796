//! Where the original's algorithm puts an object (spec section 3), for `vdi object location`:
//! every node gets `nr_vnodes` points on a 64-bit ring (h0 = sd_hash(addr || port), point k =
//! sd_hash_next^k(h0)); an object's first copy is the first point at or after
//! sd_hash_oid(oid), later copies walk clockwise skipping zones already chosen.
//! Owns: the ring. Never: I/O. (sheep has its own copy; this one answers "should be at".)

use proto::hash::{sd_hash, sd_hash_next, sd_hash_oid};
use proto::SdNode;

pub struct Ring {
    nodes: Vec<SdNode>,
    /// (hash, index into `nodes`), sorted by hash; on equal hashes the node listed first wins,
    /// as the original's rb-tree keeps the first insertion.
    points: Vec<(u64, usize)>,
    zones: usize,
}

impl Ring {
    /// `nodes` in the order the original inserts them (sorted by address, then port).
    pub fn new(nodes: &[SdNode]) -> Ring {
        let mut points = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut h = sd_hash(&n.nid.hash_bytes());
            for _ in 0..n.nr_vnodes {
                h = sd_hash_next(h);
                points.push((h, i));
            }
        }
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        let mut zones: Vec<u32> = nodes
            .iter()
            .filter(|n| n.nr_vnodes > 0)
            .map(|n| n.zone)
            .collect();
        zones.sort_unstable();
        zones.dedup();
        Ring {
            nodes: nodes.to_vec(),
            points,
            zones: zones.len(),
        }
    }

    /// The nodes of `oid`'s copies, first copy first: min(copies, zones) of them.
    pub fn locate(&self, oid: u64, copies: usize) -> Vec<&SdNode> {
        let want = copies.min(self.zones);
        let mut out: Vec<&SdNode> = Vec::with_capacity(want);
        if want == 0 || self.points.is_empty() {
            return out;
        }
        let h = sd_hash_oid(oid);
        let start = self.points.partition_point(|p| p.0 < h);
        for k in 0..self.points.len() {
            let n = &self.nodes[self.points[(start + k) % self.points.len()].1];
            if out.iter().any(|o| o.zone == n.zone) {
                continue;
            }
            out.push(n);
            if out.len() == want {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{NodeId, Oid, Vid};

    fn node(port: u16, zone: u32, vnodes: u16) -> SdNode {
        SdNode {
            nid: NodeId::new(std::net::Ipv4Addr::LOCALHOST.into(), port),
            nr_vnodes: vnodes,
            zone,
            space: 0,
        }
    }

    /// Spec section 9: four nodes, 128 vnodes, zones 0..3, Alice (vid 0x15d167), 2 copies.
    #[test]
    fn matches_the_original_test_vector() {
        let nodes: Vec<SdNode> = (0..4).map(|i| node(31200 + i, i as u32, 128)).collect();
        let ring = Ring::new(&nodes);
        let want = [
            [31203, 31201],
            [31202, 31203],
            [31201, 31203],
            [31203, 31200],
        ];
        for (idx, w) in want.iter().enumerate() {
            let got: Vec<u16> = ring
                .locate(Oid::data(Vid(0x15d167), idx as u32).0, 2)
                .iter()
                .map(|n| n.nid.port)
                .collect();
            assert_eq!(got, w.to_vec(), "index {idx}");
        }
    }

    #[test]
    fn never_more_copies_than_zones_and_zones_distinct() {
        let nodes = vec![
            node(1, 0, 64),
            node(2, 0, 64),
            node(3, 1, 64),
            node(4, 2, 0),
        ];
        let ring = Ring::new(&nodes);
        assert_eq!(ring.zones, 2);
        for i in 0..200u32 {
            let p = ring.locate(Oid::data(Vid(7), i).0, 3);
            assert_eq!(p.len(), 2);
            assert_ne!(p[0].zone, p[1].zone);
            assert!(p.iter().all(|n| n.nr_vnodes > 0));
        }
        assert!(Ring::new(&[]).locate(1, 3).is_empty());
    }
}
