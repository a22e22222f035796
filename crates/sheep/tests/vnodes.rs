//! Virtual nodes as the original gives them: by disk space when the cluster is not formatted
//! with `-V` (a node with twice the space holds twice the data: the original's functional
//! test 011), fixed as each sheep was started with `-V N` when it is, and none for a gateway
//! (`sheep -g`), which serves clients and stores nothing. `dog node vnodes set` changes a
//! node's vnodes in a cluster of fixed vnodes, `dog cluster reweight` weighs the nodes by
//! their space again after a disk grew; `dog vdi track` tells where an object was at every
//! epoch, and it is where the newest one says.

mod common;

use common::store::objects;
use common::{pattern, Cluster};

/// (port, vnodes) of each line of `dog node list -r`.
fn vnodes(c: &Cluster, i: usize) -> Vec<(u16, u16)> {
    c.dog_ok(i, &["node", "list", "-r"])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let port = f[1].rsplit_once(':').unwrap().1.parse().unwrap();
            (port, f[2].parse().unwrap())
        })
        .collect()
}

fn near(got: u16, want: u16) -> bool {
    got.abs_diff(want) <= 1
}

#[test]
fn vnodes_follow_disk_space_unless_fixed() {
    // Disks of 64, 128 and 256 MiB: 55, 110 and 219 vnodes (128 x space / mean).
    let mut c = Cluster::start_with(0, &[]);
    for (zone, mb) in [(0, 64), (1, 128), (2, 256)] {
        c.add_on_tmpfs(zone, mb);
    }
    c.wait_members(3);
    for i in 0..3 {
        let v = vnodes(&c, i);
        let got: Vec<u16> = v.iter().map(|&(_, n)| n).collect();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(
            near(got[0], 55) && near(got[1], 110) && near(got[2], 219),
            "node {i} lists {v:?} before the format"
        );
    }
    c.dog_ok(0, &["cluster", "format", "-c", "1"]);
    let info = c.dog_ok(1, &["cluster", "info"]);
    assert!(
        info.contains(":55, ") || info.contains(":54, ") || info.contains(":56, "),
        "{info}"
    );
    // Data lands in proportion: 96 objects of 1 MiB, one copy each.
    c.dog_ok(0, &["vdi", "create", "-z", "20", "Alice", "200M"]);
    let input = c.tmp.path().join("data");
    std::fs::write(&input, pattern(96 << 20, 3)).unwrap();
    let w = c.dog_stdin(0, &["vdi", "write", "Alice", "0", "96M"], Some(&input));
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let held: Vec<usize> = (0..3)
        .map(|i| {
            objects(&c.nodes[i].dir)
                .iter()
                .filter(|o| !o.starts_with("80"))
                .count()
        })
        .collect();
    assert_eq!(held.iter().sum::<usize>(), 96, "{held:?}");
    // Expected 14, 28 and 54: the largest disk holds the most, by far.
    assert!(
        held[0] < held[2] && held[1] < held[2],
        "the largest disk holds the most: {held:?}"
    );

    // Formatted with -V: every sheep keeps the vnodes it was started with.
    let mut f = Cluster::start_with(0, &[]);
    for (zone, v) in [(0, "64"), (1, "128"), (2, "200")] {
        f.args = vec!["-V".into(), v.into()];
        f.add(zone);
    }
    f.wait_members(3);
    // Sheep started with -V keep their vnodes before the format too (the original's 110).
    let v: Vec<u16> = vnodes(&f, 1).iter().map(|&(_, n)| n).collect();
    assert_eq!(v, [64, 128, 200]);
    f.dog_ok(0, &["cluster", "format", "-V"]);
    let v = vnodes(&f, 2);
    assert_eq!(
        v.iter().map(|&(_, n)| n).collect::<Vec<_>>(),
        [64, 128, 200],
        "{v:?}"
    );
    // And `node vnodes set` changes one in a new epoch.
    let before = epoch(&f);
    f.dog_ok(1, &["node", "vnodes", "set", "32"]);
    let v: Vec<u16> = vnodes(&f, 0).iter().map(|&(_, n)| n).collect();
    assert_eq!(v, [64, 32, 200]);
    assert_eq!(epoch(&f), before + 1);
    let bad = f.dog(1, &["node", "vnodes", "set", "0"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Invalid number of vnodes '0'"));
}

/// The newest epoch `dog cluster info -r` lists.
fn epoch(c: &Cluster) -> u32 {
    let info = c.dog_ok(0, &["cluster", "info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    v["logs"][0]["epoch"].as_u64().unwrap() as u32
}

#[test]
fn a_gateway_serves_and_stores_nothing() {
    let mut c = Cluster::start(3);
    c.args = vec!["-g".into()];
    let gw = c.add(3);
    c.args.clear();
    c.wait_members(4);
    let v = vnodes(&c, gw);
    assert_eq!(v.len(), 4);
    assert_eq!(v[gw].1, 0, "{v:?}");
    // On one file system: about the default each (by the free space each saw first).
    assert!(
        v[..3].iter().all(|&(_, n)| (100..=160).contains(&n)),
        "{v:?}"
    );
    // Three copies on the three nodes that store; the gateway is not a zone.
    c.dog_ok(gw, &["cluster", "format", "-c", "3"]);
    let info = c.dog_ok(gw, &["cluster", "info"]);
    assert!(!info.contains("Degraded"), "{info}");
    c.dog_ok(gw, &["vdi", "create", "Alice", "64M"]);
    let input = c.tmp.path().join("data");
    let data = pattern(8 << 20, 5);
    std::fs::write(&input, &data).unwrap();
    let w = c.dog_stdin(gw, &["vdi", "write", "Alice", "0", "8M"], Some(&input));
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let back = c.dog(gw, &["vdi", "read", "Alice", "0", "8M"]);
    assert!(back.status.success());
    assert!(back.stdout == data, "read back through the gateway");
    assert!(
        objects(&c.nodes[gw].dir).is_empty(),
        "the gateway stores nothing: {:?}",
        objects(&c.nodes[gw].dir)
    );
    for i in 0..3 {
        // Two data objects and the inode, on every storing node.
        assert_eq!(objects(&c.nodes[i].dir).len(), 3, "node {i}");
    }
    // A gateway has no vnodes to set.
    let set = c.dog(gw, &["node", "vnodes", "set", "10"]);
    assert_eq!(set.status.code(), Some(255));
    // Options that contradict each other are refused.
    let o = std::process::Command::new(common::bin("sheep"))
        .args(["-g", "-V", "10", "-p", "1"])
        .arg(c.tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("'-g' and '-V' can not be both"));
}

/// The nodes (ports) listed under each "locations at epoch N" of `dog vdi track`.
fn tracked(text: &str) -> Vec<(u32, Vec<u16>)> {
    let mut out: Vec<(u32, Vec<u16>)> = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("obj ") {
            let epoch = rest
                .split("epoch ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap();
            out.push((epoch.parse().unwrap(), Vec::new()));
        } else if let Some((_, port)) = l.rsplit_once(':') {
            if let (Some(last), Ok(p)) = (out.last_mut(), port.parse()) {
                last.1.push(p);
            }
        }
    }
    out
}

#[test]
fn track_shows_where_an_object_was_at_every_epoch() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "-c", "2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "16M"]);
    let input = c.tmp.path().join("data");
    std::fs::write(&input, pattern(4 << 20, 8)).unwrap();
    let w = c.dog_stdin(0, &["vdi", "write", "Alice", "0", "4M"], Some(&input));
    assert!(w.status.success());
    c.add(3);
    c.wait_members(4);
    let text = c.dog_ok(1, &["vdi", "track", "-i", "0", "Alice"]);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("Tracking the object 00") && first.ends_with(" idx 0) with 4 nodes"),
        "{text}"
    );
    let epochs = tracked(&text);
    assert_eq!(epochs.len(), 2, "{text}");
    assert_eq!(epochs[0].0, 2, "newest first: {text}");
    assert_eq!(epochs[1].0, 1, "{text}");
    // Where the newest epoch says, the object is (once recovery has put it there).
    let oid = first.split(' ').nth(3).unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let holders: Vec<u16> = c
            .nodes
            .iter()
            .filter(|n| objects(&n.dir).contains(&oid))
            .map(|n| n.port)
            .collect();
        let mut want = epochs[0].1.clone();
        want.sort();
        if holders == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{holders:?} vs {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The inode, by default; an object id, with -o.
    let inode = c.dog_ok(0, &["vdi", "track", "Alice"]);
    assert!(inode.starts_with("Tracking the inode object 0x"), "{inode}");
    assert_eq!(tracked(&inode).len(), 2);
    let by_oid = c.dog_ok(0, &["vdi", "track", "-o", &oid, "Alice"]);
    assert_eq!(tracked(&by_oid), epochs);
}
