//! The recovery plan: from the object lists of every member of the epoch, which objects this
//! node must fetch and from which copies, best first. A pure function of the lists and of what
//! the view says (placement, which objects are still wanted), so that it can be tested on any
//! lists without sockets or disks. Also the space each node needs once recovery is done
//! (`-F`, avoid disk full).
//! Owns: the choice of what to fetch and from where. Never: I/O, the clock, the store.

use crate::store::CURRENT;
use proto::node::NodeId;
use proto::Oid;
use std::collections::{BTreeMap, HashMap};

/// A copy of an object somewhere: its node, tag (`CURRENT` or the stale epoch it was last
/// current in) and version (the writes it took).
pub type Holder = (NodeId, u32, u64);

/// Every copy every member listed: oid -> its copies.
pub type Lists = BTreeMap<Oid, Vec<Holder>>;

/// What the view says about objects, for one node.
pub struct Facts<'a> {
    pub me: NodeId,
    /// Whether the ring gives `oid` to this node at the epoch.
    pub placed_here: &'a dyn Fn(Oid) -> bool,
    /// Whether `oid` still belongs to a VDI (a live one, or a deleted one a live VDI made
    /// from it still points at).
    pub wanted: &'a dyn Fn(Oid) -> bool,
}

/// One object to fetch, with the copies to try in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub oid: Oid,
    pub sources: Vec<Holder>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Objects with a current copy elsewhere, to fetch.
    pub fetch: Vec<Fetch>,
    /// Data objects of which only stale copies are left: they may have been removed (TRIM, a
    /// discard, a delete) while their nodes were away, so they are fetched only if a live
    /// table still points at them (deletions win over resurrection).
    pub only_stale: Vec<Fetch>,
}

/// What this node must fetch, given every member's list (its own included).
pub fn plan(lists: &Lists, f: &Facts<'_>) -> Plan {
    let mut p = Plan::default();
    for (&oid, holders) in lists {
        let held = holders.iter().any(|&(n, t, _)| n == f.me && t == CURRENT);
        if held || !(f.placed_here)(oid) || !(f.wanted)(oid) {
            continue;
        }
        let sources = sources(f.me, holders);
        if sources.is_empty() {
            continue;
        }
        let fetch = Fetch { oid, sources };
        if fetch.sources[0].1 != CURRENT && oid.is_data() {
            p.only_stale.push(fetch);
        } else {
            p.fetch.push(fetch);
        }
    }
    p
}

/// The copies of an object to fetch from, best first: current copies, then stale ones by
/// the epoch they were last current in; among those, the one that took the most writes;
/// among equals, another node's copy before a stale one of this node. When a current copy
/// exists elsewhere, only current copies: a stale one could be older than a current copy
/// that cannot be read right now. This node's current copy is never a source.
pub fn sources(me: NodeId, holders: &[Holder]) -> Vec<Holder> {
    let mut s: Vec<Holder> = holders
        .iter()
        .copied()
        .filter(|&(n, t, _)| !(n == me && t == CURRENT))
        .collect();
    s.sort_by_key(|&(n, t, v)| (std::cmp::Reverse(t), std::cmp::Reverse(v), n == me));
    s.dedup();
    if s.iter().any(|&(_, t, _)| t == CURRENT) {
        s.retain(|&(_, t, _)| t == CURRENT);
    }
    s
}

/// The bytes of data objects each node holds once recovery is done: every wanted data object
/// listed anywhere counted once on each node of its placement (the original's check for
/// `-F`; inodes and other small objects are left out, as there).
pub fn space_needed(
    lists: &Lists,
    placement: &dyn Fn(Oid) -> Vec<NodeId>,
    wanted: &dyn Fn(Oid) -> bool,
    size: &dyn Fn(Oid) -> u64,
) -> HashMap<NodeId, u64> {
    let mut need: HashMap<NodeId, u64> = HashMap::new();
    for &oid in lists.keys() {
        if !oid.is_data() || !wanted(oid) {
            continue;
        }
        for n in placement(oid) {
            *need.entry(n).or_default() += size(oid);
        }
    }
    need
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::ring::Ring;
    use proto::{SdNode, Vid};
    use std::collections::BTreeSet;

    fn nid(i: u8) -> NodeId {
        NodeId::new(
            std::net::Ipv4Addr::new(127, 0, 0, 1).into(),
            7000 + i as u16,
        )
    }

    fn node(i: u8) -> SdNode {
        SdNode {
            nid: nid(i),
            nr_vnodes: 128,
            zone: i as u32,
            space: 1 << 40,
        }
    }

    #[test]
    fn sources_prefer_current_then_newest_then_others() {
        let (a, b, me) = (nid(1), nid(2), nid(0));
        // A current copy elsewhere: stale ones are not sources, whatever their versions.
        let s = sources(me, &[(a, 3, 99), (b, CURRENT, 4), (me, 5, 50)]);
        assert_eq!(s, vec![(b, CURRENT, 4)]);
        // Only stale copies: the most recent epoch, then the most writes, then another
        // node's copy before this node's own.
        let s = sources(me, &[(a, 3, 9), (b, 5, 1), (me, 5, 1), (a, 5, 2)]);
        assert_eq!(s, vec![(a, 5, 2), (b, 5, 1), (me, 5, 1), (a, 3, 9)]);
        // This node's current copy is never a source.
        assert!(sources(me, &[(me, CURRENT, 3)]).is_empty());
    }

    #[test]
    fn only_stale_data_objects_wait_for_the_tables() {
        let (me, a) = (nid(0), nid(1));
        let data = Oid::data(Vid(7), 1);
        let inode = Oid::inode(Vid(7));
        let lists: Lists = [(data, vec![(a, 4, 1)]), (inode, vec![(a, 4, 1)])].into();
        let p = plan(
            &lists,
            &Facts {
                me,
                placed_here: &|_| true,
                wanted: &|_| true,
            },
        );
        assert_eq!(p.only_stale.len(), 1);
        assert_eq!(p.only_stale[0].oid, data);
        assert_eq!(p.fetch.len(), 1);
        assert_eq!(p.fetch[0].oid, inode);
    }

    #[test]
    fn space_counts_each_data_object_once_per_placement() {
        let ring = Ring::new(&[node(0), node(1), node(2)]);
        let lists: Lists = (0..10u32)
            .map(|i| {
                (
                    Oid::data(Vid(1), i),
                    vec![(nid(0), CURRENT, 1), (nid(1), CURRENT, 1)],
                )
            })
            .chain([(Oid::inode(Vid(1)), vec![(nid(0), CURRENT, 1)])])
            .collect();
        let need = space_needed(
            &lists,
            &|o| ring.placement(o, 2).iter().map(|n| n.nid).collect(),
            &|_| true,
            &|_| 4 << 20,
        );
        assert_eq!(need.values().sum::<u64>(), 10 * 2 * (4 << 20));
    }

    /// A random cluster: the epoch's nodes (a subset of 6), objects with copies on any of
    /// the 6 (current or stale, any version), and which objects are still wanted.
    /// An object of a random world: its oid, whether it is wanted, its copies (node index,
    /// tag, version).
    type Object = (Oid, bool, Vec<(u8, u32, u64)>);

    fn world() -> impl Strategy<Value = (Vec<u8>, Vec<Object>, usize)> {
        let members = proptest::sample::subsequence((0u8..6).collect::<Vec<_>>(), 1..=6);
        let copy = (0u8..6, prop_oneof![Just(CURRENT), 1u32..6], 0u64..4);
        let object = (
            0u32..40,
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(copy, 0..5),
        )
            .prop_map(|(i, inode, wanted, copies)| {
                let oid = if inode {
                    Oid::inode(Vid(i + 1))
                } else {
                    Oid::data(Vid(1), i)
                };
                (oid, wanted, copies)
            });
        (members, proptest::collection::vec(object, 0..60), 1usize..4)
    }

    proptest! {
        /// Every node plans against the same lists; carrying out the plans (each fetch from
        /// its first source) leaves every wanted object that has any copy on exactly its
        /// placement, from a best copy, and nothing unwanted or misplaced is fetched.
        #[test]
        fn plans_give_every_wanted_object_its_copies((members, objects, copies) in world()) {
            let ring = Ring::new(&members.iter().map(|&i| node(i)).collect::<Vec<_>>());
            let mut lists: Lists = BTreeMap::new();
            let mut wanted_set = BTreeSet::new();
            for (oid, wanted, cs) in &objects {
                let l = lists.entry(*oid).or_default();
                for &(n, t, v) in cs {
                    // Members list what they hold; nodes out of the epoch list nothing.
                    if members.contains(&n) && !l.iter().any(|h| h.0 == nid(n) && h.1 == t) {
                        l.push((nid(n), t, v));
                    }
                }
                if *wanted {
                    wanted_set.insert(*oid);
                }
            }
            lists.retain(|_, l| !l.is_empty());
            let wanted = |o: Oid| wanted_set.contains(&o);
            let placement = |o: Oid| -> Vec<NodeId> {
                ring.placement(o, copies).iter().map(|n| n.nid).collect()
            };
            // Every table points at every object: only-stale ones are fetched too.
            let mut after: BTreeMap<Oid, BTreeSet<NodeId>> = BTreeMap::new();
            for (&oid, l) in &lists {
                for &(n, t, _) in l {
                    if t == CURRENT {
                        after.entry(oid).or_default().insert(n);
                    }
                }
            }
            for &m in &members {
                let me = nid(m);
                let placed_here = |o: Oid| placement(o).contains(&me);
                let p = plan(&lists, &Facts { me, placed_here: &placed_here, wanted: &wanted });
                for f in p.fetch.iter().chain(&p.only_stale) {
                    prop_assert!(placed_here(f.oid), "{} fetched off its placement", f.oid);
                    prop_assert!(wanted(f.oid), "{} fetched though unwanted", f.oid);
                    let best = sources(me, &lists[&f.oid]);
                    prop_assert_eq!(&f.sources, &best);
                    let all = &lists[&f.oid];
                    let top = all.iter().filter(|h| h.0 != me || h.1 != CURRENT)
                        .map(|h| (h.1, h.2)).max();
                    prop_assert_eq!(Some((f.sources[0].1, f.sources[0].2)), top);
                    prop_assert!(after.entry(f.oid).or_default().insert(me), "fetched twice");
                }
            }
            for (&oid, l) in &lists {
                if !wanted(oid) {
                    continue;
                }
                let holders = after.get(&oid).cloned().unwrap_or_default();
                for n in placement(oid) {
                    prop_assert!(holders.contains(&n), "{oid} missing on {n} (copies {l:?})");
                }
            }
        }
    }
}
