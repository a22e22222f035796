//! What the stores of a test cluster hold, read straight from their directories: objects,
//! stale copies, copies per object and their digests, and waiting for recovery to end.

use super::{Cluster, Sheep};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Objects in the current area of a store (the stale area excluded).
pub fn objects(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("obj"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 16 && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Objects on every disk of a node, and the disk each is on.
pub fn node_objects(n: &Sheep) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    for d in n.obj_dirs() {
        let names: Vec<String> = std::fs::read_dir(&d)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.len() == 16 && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.extend(names.into_iter().map(|o| (o, d.clone())));
    }
    v.sort();
    v
}

/// Stale copies on every disk of a node.
pub fn node_stale(n: &Sheep) -> usize {
    n.obj_dirs()
        .iter()
        .map(|d| {
            std::fs::read_dir(d.join(".stale"))
                .map(|rd| rd.count())
                .unwrap_or(0)
        })
        .sum()
}

pub fn stale(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("obj").join(".stale"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// oid -> number of live nodes holding it.
pub fn copies(c: &Cluster) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in c.nodes.iter().filter(|n| n.child.is_some()) {
        for (o, _) in node_objects(n) {
            *m.entry(o).or_insert(0) += 1;
        }
    }
    m
}

/// Waits until recovery is over: no node in recovery, no stale copies left, and every
/// object on exactly `want` live nodes.
pub fn wait_recovered(c: &Cluster, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: Vec<usize> = (0..c.nodes.len())
            .filter(|&i| c.nodes[i].child.is_some())
            .collect();
        let busy = live
            .iter()
            .any(|&i| !c.dog(i, &["node", "recovery", "-r"]).stdout.is_empty());
        let stale_left: usize = live.iter().map(|&i| node_stale(&c.nodes[i])).sum();
        let m = copies(c);
        let exact = !m.is_empty() && m.values().all(|&n| n == want);
        if !busy && stale_left == 0 && exact {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "recovery did not finish: busy {busy}, stale {stale_left}, copies {:?}",
            m.values().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every live node holds exactly the copies the ring gives it (its share; the ring's balance
/// is checked by the unit tests).
pub fn assert_placement(c: &Cluster, copies: usize) {
    let nodes = c.node_list(0);
    let ring = sheep::ring::Ring::new(&nodes);
    for n in c.nodes.iter().filter(|n| n.child.is_some()) {
        let mine: Vec<String> = node_objects(n).into_iter().map(|(o, _)| o).collect();
        for o in &mine {
            let oid = proto::Oid(u64::from_str_radix(o, 16).unwrap());
            assert!(
                ring.placement(oid, copies)
                    .iter()
                    .any(|p| p.nid.port == n.port),
                "port {} holds {o}, which the ring gives to others",
                n.port
            );
        }
    }
}

/// oid -> (node index, SHA-1 of the copy) for every copy on a live node.
pub fn digests(c: &Cluster) -> BTreeMap<String, Vec<(usize, [u8; 20])>> {
    use sha1::Digest;
    let mut m: BTreeMap<String, Vec<(usize, [u8; 20])>> = BTreeMap::new();
    for (i, n) in c
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.child.is_some())
    {
        for (o, disk) in node_objects(n) {
            let b = std::fs::read(disk.join(&o)).unwrap_or_default();
            m.entry(o)
                .or_default()
                .push((i, sha1::Sha1::digest(&b).into()));
        }
    }
    m
}

/// Every object's copies are byte for byte the same.
pub fn assert_copies_agree(c: &Cluster) {
    for (o, d) in digests(c) {
        assert!(
            d.iter().all(|(_, x)| *x == d[0].1),
            "copies of {o} differ: nodes {:?}",
            d.iter().map(|(i, x)| (*i, x[0])).collect::<Vec<_>>()
        );
    }
}
