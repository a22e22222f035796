//! Placement exactly as the original: each node gets virtual nodes on a 64-bit hash ring
//! (h0 = sd_hash(addr || port), vnode k = sd_hash_next^k(h0)); an object's copies are the first
//! distinct zones walking clockwise from sd_hash_oid(oid).
//! Owns: virtual nodes and zone-aware placement. Never: I/O.

use crate::hash::{sd_hash, sd_hash_next, sd_hash_oid};
use crate::{NodeId, Oid, SdNode};

#[derive(Clone, Debug, Default)]
pub struct Ring {
    nodes: Vec<SdNode>,
    /// (hash, index into `nodes`), sorted by hash.
    vnodes: Vec<(u64, usize)>,
    zones: usize,
}

impl Ring {
    pub fn new(nodes: &[SdNode]) -> Ring {
        let nodes = nodes.to_vec();
        let mut vnodes = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut h = sd_hash(&n.nid.hash_bytes());
            for _ in 0..n.nr_vnodes {
                h = sd_hash_next(h);
                vnodes.push((h, i));
            }
        }
        vnodes.sort_by_key(|v| v.0);
        // The original's rb-tree refuses duplicate hashes: keep the first.
        vnodes.dedup_by_key(|v| v.0);
        let mut zones: Vec<u32> = nodes
            .iter()
            .filter(|n| n.nr_vnodes > 0)
            .map(|n| n.zone)
            .collect();
        zones.sort_unstable();
        zones.dedup();
        Ring {
            nodes,
            vnodes,
            zones: zones.len(),
        }
    }

    pub fn nodes(&self) -> &[SdNode] {
        &self.nodes
    }

    /// Distinct zones among nodes that store data.
    pub fn nr_zones(&self) -> usize {
        self.zones
    }

    /// The nodes holding `oid`'s copies, first replica first: min(copies, zones) of them.
    pub fn placement(&self, oid: Oid, copies: usize) -> Vec<SdNode> {
        let want = copies.min(self.zones);
        let mut out: Vec<SdNode> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let h = sd_hash_oid(oid.0);
        let start = self.vnodes.partition_point(|v| v.0 < h);
        for k in 0..self.vnodes.len() {
            let (_, i) = self.vnodes[(start + k) % self.vnodes.len()];
            let n = &self.nodes[i];
            if out.iter().any(|o| o.zone == n.zone) {
                continue;
            }
            out.push(*n);
            if out.len() == want {
                break;
            }
        }
        out
    }

    /// Does `nid` hold a copy of `oid`?
    pub fn holds(&self, oid: Oid, copies: usize, nid: &NodeId) -> bool {
        self.placement(oid, copies).iter().any(|n| n.nid == *nid)
    }
}

/// The original's auto vnodes (`recalculate_vnodes`, the default strategy of a cluster not
/// formatted with `-V`): each node gets `rint(128 * space / average space)` virtual nodes,
/// the average taken over the nodes that have space (a gateway has none and gets none).
/// Computed in single precision, as the original does, so that both place alike.
pub fn auto_vnodes(nodes: &[SdNode]) -> Vec<SdNode> {
    let with_space: Vec<u64> = nodes.iter().map(|n| n.space).filter(|&s| s > 0).collect();
    if with_space.is_empty() {
        return nodes.to_vec();
    }
    let total: u128 = with_space.iter().map(|&s| u128::from(s)).sum();
    let avg = (total / with_space.len() as u128) as u64;
    nodes
        .iter()
        .map(|n| {
            let factor = n.space as f32 / avg as f32;
            let v = (crate::SD_DEFAULT_VNODES as f32 * factor).round_ties_even();
            SdNode {
                nr_vnodes: v.clamp(0.0, f32::from(u16::MAX)) as u16,
                ..*n
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Vid;

    #[test]
    fn auto_vnodes_follow_space_as_the_original() {
        // The original's functional tests 011 (2, 4, 8 GiB disks) and 054 (1..6 GiB).
        let gib = 1u64 << 30;
        let with = |spaces: &[u64]| -> Vec<u16> {
            let nodes: Vec<SdNode> = spaces
                .iter()
                .enumerate()
                .map(|(i, &s)| SdNode {
                    space: s,
                    ..node(7000 + i as u16, i as u32)
                })
                .collect();
            auto_vnodes(&nodes).iter().map(|n| n.nr_vnodes).collect()
        };
        assert_eq!(with(&[2 * gib, 4 * gib, 8 * gib]), [55, 110, 219]);
        assert_eq!(
            with(&[gib, 2 * gib, 3 * gib, 3 * gib, 4 * gib, 5 * gib]),
            [43, 85, 128, 128, 171, 213]
        );
        // A gateway (no space) stores nothing; equal disks keep the default.
        assert_eq!(with(&[0, 5 * gib, 5 * gib]), [0, 128, 128]);
        assert_eq!(with(&[0, 0]), [128, 128], "no space anywhere: as given");
    }
    use proptest::prelude::*;

    fn node(port: u16, zone: u32) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 128,
            zone,
            space: 0,
        }
    }

    #[test]
    fn matches_the_original_test_vector() {
        let nodes: Vec<SdNode> = (0..4).map(|i| node(31200 + i, i as u32)).collect();
        let ring = Ring::new(&nodes);
        let want = [
            [31203, 31201],
            [31202, 31203],
            [31201, 31203],
            [31203, 31200],
        ];
        for (idx, w) in want.iter().enumerate() {
            let got: Vec<u16> = ring
                .placement(Oid::data(Vid(0x15d167), idx as u32), 2)
                .iter()
                .map(|n| n.nid.port)
                .collect();
            assert_eq!(got, w.to_vec(), "index {idx}");
        }
    }

    #[test]
    fn balanced_within_ten_percent() {
        for n in 3..=10u16 {
            let nodes: Vec<SdNode> = (0..n).map(|i| node(7000 + i, i as u32)).collect();
            let ring = Ring::new(&nodes);
            let mut count = vec![0usize; n as usize];
            let objs = 40_000u32;
            for i in 0..objs {
                for c in ring.placement(Oid::data(Vid(0x100 + i / 1000), i % 1000), 3) {
                    count[(c.nid.port - 7000) as usize] += 1;
                }
            }
            let mean = count.iter().sum::<usize>() as f64 / n as f64;
            for (i, &c) in count.iter().enumerate() {
                let dev = (c as f64 - mean).abs() / mean;
                assert!(
                    dev <= 0.10,
                    "{n} nodes: node {i} holds {c}, mean {mean:.0} ({:.1}%)",
                    dev * 100.0
                );
            }
        }
    }

    proptest! {
        #[test]
        fn zone_rule_always_honoured(zones in proptest::collection::vec(0u32..5, 1..12), copies in 1usize..6, oid: u64) {
            let nodes: Vec<SdNode> = zones.iter().enumerate().map(|(i, &z)| node(9000 + i as u16, z)).collect();
            let ring = Ring::new(&nodes);
            let p = ring.placement(Oid(oid), copies);
            let mut zs: Vec<u32> = p.iter().map(|n| n.zone).collect();
            zs.sort_unstable();
            zs.dedup();
            prop_assert_eq!(zs.len(), p.len());
            prop_assert_eq!(p.len(), copies.min(ring.nr_zones()));
            let mut rev = nodes.clone();
            rev.reverse();
            prop_assert_eq!(Ring::new(&rev).placement(Oid(oid), copies), p);
        }
    }
}
