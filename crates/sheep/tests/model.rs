//! A randomized model test of the VDI lifecycle: a few hundred random create / write /
//! snapshot / clone / rollback / delete steps on a 3-node cluster, each checked against an
//! in-memory model of every VDI's and snapshot's bytes; at the end the stores must hold
//! exactly the data objects that live VDIs still point at, each on its copies.

mod common;

use common::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SIZE: usize = 2 << 20;
const STEPS: usize = 200;

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Default)]
struct Vdi {
    /// The working VDI's bytes, if it still exists.
    working: Option<Vec<u8>>,
    /// Snapshots by tag.
    snaps: BTreeMap<String, Vec<u8>>,
}

fn read(c: &Cluster, node: usize, args: &[&str]) -> Vec<u8> {
    let o = c.dog(node, args);
    assert!(
        o.status.success(),
        "dog {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn check(c: &Cluster, name: &str, v: &Vdi, node: usize) {
    if let Some(w) = &v.working {
        assert!(
            read(c, node, &["vdi", "read", name]) == *w,
            "{name} differs"
        );
    }
    for (tag, bytes) in &v.snaps {
        assert!(
            read(c, node, &["vdi", "read", "-s", tag, name]) == *bytes,
            "{name}@{tag} differs"
        );
    }
}

/// Data objects (oid) in each store.
fn stored(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir.join("obj"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| u64::from_str_radix(e.file_name().to_str()?, 16).ok())
        .collect()
}

#[test]
fn random_lifecycle_steps_match_the_model() {
    let seed = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_u64);
    eprintln!("model seed {seed} (MODEL_SEED=... to replay)");
    let mut rng = Rng(seed | 1);
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=2", "-z", "20"]);
    let mut model: BTreeMap<String, Vdi> = BTreeMap::new();
    let (mut names, mut tags) = (0, 0);
    let input = c.tmp.path().join("input");
    for step in 0..STEPS {
        let node = rng.below(3);
        let live: Vec<String> = model
            .iter()
            .filter(|(_, v)| v.working.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let with_snaps: Vec<String> = model
            .iter()
            .filter(|(_, v)| !v.snaps.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        let touched;
        match rng.below(10) {
            0 if model.len() < 5 => {
                names += 1;
                let name = format!("v{names}");
                c.dog_ok(node, &["vdi", "create", &name, "2M"]);
                model.entry(name.clone()).or_default().working = Some(vec![0u8; SIZE]);
                touched = name;
            }
            1..=4 if !live.is_empty() => {
                let name = live[rng.below(live.len())].clone();
                let off = rng.below(SIZE - 1);
                let len = 1 + rng.below((SIZE - off).min(300 << 10));
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                std::fs::write(&input, &bytes).unwrap();
                let o = c.dog_stdin(
                    node,
                    &["vdi", "write", &name, &off.to_string(), &len.to_string()],
                    Some(&input),
                );
                assert!(o.status.success(), "step {step}: write {name}");
                let w = model.get_mut(&name).unwrap().working.as_mut().unwrap();
                w[off..off + len].copy_from_slice(&bytes);
                touched = name;
            }
            5 if !live.is_empty() => {
                let name = live[rng.below(live.len())].clone();
                tags += 1;
                let tag = format!("t{tags}");
                c.dog_ok(node, &["vdi", "snapshot", "-s", &tag, &name]);
                let v = model.get_mut(&name).unwrap();
                let w = v.working.clone().unwrap();
                v.snaps.insert(tag, w);
                touched = name;
            }
            6 if !with_snaps.is_empty() && model.len() < 6 => {
                let src = with_snaps[rng.below(with_snaps.len())].clone();
                let v = model[&src].clone();
                let tag = v
                    .snaps
                    .keys()
                    .nth(rng.below(v.snaps.len()))
                    .unwrap()
                    .clone();
                names += 1;
                let name = format!("v{names}");
                c.dog_ok(node, &["vdi", "clone", "-s", &tag, &src, &name]);
                model.entry(name.clone()).or_default().working = Some(v.snaps[&tag].clone());
                touched = name;
            }
            7 if !with_snaps.is_empty() => {
                let name = with_snaps[rng.below(with_snaps.len())].clone();
                let v = model.get_mut(&name).unwrap();
                if v.working.is_none() {
                    continue;
                }
                let tag = v
                    .snaps
                    .keys()
                    .nth(rng.below(v.snaps.len()))
                    .unwrap()
                    .clone();
                c.dog_ok(node, &["vdi", "rollback", "-f", "-s", &tag, &name]);
                v.working = Some(v.snaps[&tag].clone());
                touched = name;
            }
            8 if !with_snaps.is_empty() => {
                let name = with_snaps[rng.below(with_snaps.len())].clone();
                let v = model.get_mut(&name).unwrap();
                let tag = v
                    .snaps
                    .keys()
                    .nth(rng.below(v.snaps.len()))
                    .unwrap()
                    .clone();
                c.dog_ok(node, &["vdi", "delete", "-s", &tag, &name]);
                v.snaps.remove(&tag);
                touched = name;
            }
            9 if !live.is_empty() => {
                let name = live[rng.below(live.len())].clone();
                c.dog_ok(node, &["vdi", "delete", &name]);
                model.get_mut(&name).unwrap().working = None;
                touched = name;
            }
            _ => continue,
        }
        model.retain(|_, v| v.working.is_some() || !v.snaps.is_empty());
        if let Some(v) = model.get(&touched) {
            check(&c, &touched, v, rng.below(3));
        }
        if step % 50 == 49 {
            for (name, v) in &model {
                check(&c, name, v, rng.below(3));
            }
        }
    }
    for (name, v) in &model {
        check(&c, name, v, 0);
    }

    // The stores hold exactly the data objects live VDIs point at, each on 2 nodes.
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    let mut inodes = BTreeSet::new();
    for n in &c.nodes {
        for oid in stored(&n.dir) {
            if oid >> 63 == 1 {
                inodes.insert(oid);
            } else if oid >> 56 == 0 {
                *copies.entry(oid).or_default() += 1;
            }
        }
    }
    let mut referenced = BTreeSet::new();
    for &ioid in &inodes {
        let file = c
            .nodes
            .iter()
            .map(|n| n.dir.join("obj").join(format!("{ioid:016x}")))
            .find(|p| p.exists())
            .unwrap();
        let b = std::fs::read(file).unwrap();
        let h = proto::inode::InodeHeader::decode(&b).unwrap();
        if h.name.is_empty() {
            continue;
        }
        for idx in 0..(SIZE >> 20) as u32 {
            let owner = proto::inode::data_vdi_id(&b, idx);
            if owner != 0 {
                referenced.insert(proto::Oid::data(proto::Vid(owner), idx).0);
            }
        }
    }
    let present: BTreeSet<u64> = copies.keys().copied().collect();
    assert_eq!(
        present, referenced,
        "stores hold other data objects than referenced"
    );
    assert!(copies.values().all(|&n| n == 2), "{copies:?}");
}
