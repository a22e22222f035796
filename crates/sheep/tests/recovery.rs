//! Membership changes with real sheep processes: a node killed with -9, a new node, a node
//! back with stale copies, a whole-cluster restart, zones, `vdi check`. After recovery every
//! object has its copies exactly where the ring puts them, and reads return the newest bytes.

mod common;

use common::store::{assert_placement, copies, objects, wait_recovered};
use common::{pattern, Cluster};
use std::time::{Duration, Instant};

fn write_file(c: &Cluster, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = c.tmp.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Creates VDI Alice of `size` and writes `len` bytes of pattern `seed` to it; returns them.
fn alice(c: &Cluster, size: &str, len: usize, seed: u64) -> Vec<u8> {
    c.dog_ok(0, &["vdi", "create", "Alice", size]);
    let data = pattern(len, seed);
    let input = write_file(c, "data", &data);
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    data
}

fn read_all(c: &Cluster, i: usize, len: &str) -> Vec<u8> {
    let o = c.dog(i, &["vdi", "read", "Alice", "0", len]);
    assert!(
        o.status.success(),
        "read through node {i}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn nodes_die_join_and_come_back_and_no_byte_is_lost() {
    let mut c = Cluster::start(4);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let mut data = alice(&c, "4G", 48 << 20, 5);
    wait_recovered(&c, 3);
    let objs = copies(&c).len();
    assert_eq!(objs, 13, "12 data objects and the inode");

    // A node dies: the others bring every object back to 3 copies.
    c.kill(2);
    c.wait_members(3);
    wait_recovered(&c, 3);
    assert_eq!(copies(&c).len(), objs);
    for i in [0, 1, 3] {
        assert!(read_all(&c, i, "48M") == data, "node {i}");
    }
    let check = c.dog_ok(0, &["vdi", "check", "Alice"]);
    assert!(!check.contains("fixed"), "{check}");
    let info = c.dog_ok(0, &["cluster", "info"]);
    assert!(
        info.lines().filter(|l| l.starts_with("20")).count() >= 2,
        "{info}"
    );

    // A new machine joins: objects rebalance onto it.
    let n4 = c.add(4);
    c.wait_members(4);
    wait_recovered(&c, 3);
    assert_placement(&c, 3);
    assert!(
        !objects(&c.nodes[n4].dir).is_empty(),
        "nothing moved to the new node"
    );

    // While node 2 is away, part of the VDI is overwritten; when it comes back its stale
    // copies are never served, not even through itself as the gateway.
    let new = pattern(8 << 20, 6);
    let input = write_file(&c, "new", &new);
    assert!(c
        .dog_stdin(1, &["vdi", "write", "Alice", "0", "8M"], Some(&input))
        .status
        .success());
    data[..8 << 20].copy_from_slice(&new);
    std::thread::sleep(Duration::from_millis(1100));
    c.restart(2);
    assert!(read_all(&c, 2, "48M") == data, "stale bytes served");
    c.wait_members(5);
    wait_recovered(&c, 3);
    // Every node has the same epoch log, times included (the returned node replayed them).
    let info = c.dog_ok(0, &["cluster", "info"]);
    for i in 1..5 {
        assert_eq!(c.dog_ok(i, &["cluster", "info"]), info, "node {i}");
    }
    for i in 0..5 {
        assert!(read_all(&c, i, "48M") == data, "node {i}");
    }

    // The whole cluster stops and comes back with every byte.
    c.restart_all();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = c.dog(3, &["vdi", "read", "Alice", "0", "48M"]);
        if o.status.success() {
            assert!(o.stdout == data, "bytes changed across restart");
            break;
        }
        assert!(Instant::now() < deadline, "no read after restart");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn vdi_check_repairs_missing_and_differing_copies() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    alice(&c, "1G", 12 << 20, 9);
    let obj = |i: usize, idx: u32| {
        c.nodes[i].dir.join("obj").join(format!(
            "{:016x}",
            proto::Oid::data(proto::Vid(0x15d167), idx).0
        ))
    };
    std::fs::remove_file(obj(1, 0)).unwrap();
    let mut bad = std::fs::read(obj(2, 1)).unwrap();
    bad[100] ^= 0xff;
    std::fs::write(obj(2, 1), &bad).unwrap();
    let out = c.dog_ok(0, &["vdi", "check", "Alice"]);
    assert!(out.contains("fixed missing 0015d16700000000"), "{out}");
    assert!(out.contains("fixed replica 0015d16700000001"), "{out}");
    assert!(out.contains("finish check&repair Alice"), "{out}");
    for idx in 0..3 {
        let a = std::fs::read(obj(0, idx)).unwrap();
        for i in 1..3 {
            assert!(
                std::fs::read(obj(i, idx)).unwrap() == a,
                "node {i} idx {idx}"
            );
        }
    }
    let again = c.dog_ok(0, &["cluster", "check"]);
    assert!(!again.contains("fixed"), "{again}");
}

#[test]
fn fewer_zones_than_copies_and_switching_recovery() {
    // Two zones for three copies: two copies each, visible in cluster info.
    let mut c = Cluster::start(0);
    c.add(0);
    c.add(0);
    c.add(1);
    c.wait_members(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3", "-f"]);
    let data = alice(&c, "1G", 8 << 20, 3);
    let info: serde_json::Value =
        serde_json::from_str(&c.dog_ok(0, &["cluster", "info", "--json"])).expect("json");
    assert_eq!(
        (info["zones"].clone(), info["degraded"].clone()),
        (2.into(), true.into())
    );
    assert!(!c.dog_ok(0, &["cluster", "info"]).contains("egraded"));
    wait_recovered(&c, 2);

    // With automatic recovery off, a third zone gets nothing until it is switched on.
    c.dog_ok(0, &["cluster", "recover", "disable"]);
    c.add(2);
    c.wait_members(4);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        copies(&c).values().all(|&n| n == 2),
        "recovered while disabled"
    );
    assert!(read_all(&c, 3, "8M") == data, "reads work meanwhile");
    c.dog_ok(0, &["cluster", "recover", "enable"]);
    wait_recovered(&c, 3);
    drop(c);

    // Formatted strict, the same cluster refuses writes instead.
    let mut c = Cluster::start(0);
    c.add(0);
    c.add(1);
    c.wait_members(2);
    c.dog_ok(0, &["cluster", "format", "--copies=3", "-t", "-f"]);
    // Even the new VDI's inode cannot get its three copies (the original's words, 080).
    let o = c.dog(0, &["vdi", "create", "Alice", "1G"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err,
        "Failed to create VDI Alice: Failed to write to requested VDI\n"
    );
}

#[test]
fn io_never_stops_while_nodes_die_and_join() {
    let mut c = Cluster::start(4);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "256M"]);
    // Recovery throttled to a few objects at a time: I/O and recovery share the nodes.
    c.dog_ok(0, &["cluster", "recover", "throttle", "2", "5"]);
    let uri = c.nbd_uri(0, "Bob");
    let fio = common::fio_randwrite(&c, &uri, "64k", "64m");
    std::thread::sleep(Duration::from_millis(500));
    c.kill(2);
    std::thread::sleep(Duration::from_millis(500));
    c.add(4);
    common::fio_ok(fio);
    c.wait_members(4);
    wait_recovered(&c, 3);
}

#[test]
fn a_cluster_short_of_nodes_starts_with_recover_force() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    let data = alice(&c, "1G", 8 << 20, 4);
    c.dog_ok(0, &["cluster", "shutdown"]);
    for i in 0..3 {
        c.wait_exit(i);
    }
    // Node 2 never comes back: the others wait for it, then are told to go on.
    c.restart(0);
    c.restart(1);
    std::thread::sleep(Duration::from_millis(300));
    let info = c.dog(0, &["cluster", "info"]);
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("Waiting for other nodes to join"),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );
    c.dog_ok(0, &["cluster", "recover", "force", "-f"]);
    c.wait_members(2);
    wait_recovered(&c, 2);
    assert!(read_all(&c, 1, "8M") == data);
    // `dog node kill` stops a node as the original's.
    let list = c.dog_ok(0, &["node", "list", "-r"]);
    let idx = list
        .lines()
        .find(|l| l.contains(&format!(":{} ", c.port(1))))
        .and_then(|l| l.split(' ').next())
        .expect("node 1 listed")
        .to_string();
    c.dog_ok(0, &["node", "kill", &idx]);
    c.wait_exit(1);
}

#[test]
fn two_nodes_killed_one_after_the_other_during_recovery() {
    let mut c = Cluster::start(5);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let data = alice(&c, "1G", 48 << 20, 12);
    wait_recovered(&c, 3);
    // Slow recovery down so that the second loss lands in the middle of it.
    c.dog_ok(0, &["cluster", "recover", "throttle", "1", "200"]);
    c.kill(1);
    c.wait_members(4);
    c.kill(3);
    c.wait_members(3);
    for i in [0, 2, 4] {
        assert!(read_all(&c, i, "48M") == data, "node {i} during recovery");
    }
    c.dog_ok(0, &["cluster", "recover", "throttle", "8", "0"]);
    wait_recovered(&c, 3);
    assert_placement(&c, 3);
    for i in [0, 2, 4] {
        assert!(read_all(&c, i, "48M") == data, "node {i}");
    }
}

#[test]
fn objects_of_a_deleted_snapshot_that_alice_still_uses_keep_their_copies() {
    let mut c = Cluster::start(4);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let data = alice(&c, "16M", 16 << 20, 21);
    c.dog_ok(0, &["vdi", "snapshot", "-s", "s1", "Alice"]);
    c.dog_ok(0, &["vdi", "delete", "-s", "s1", "Alice"]);
    wait_recovered(&c, 3);
    c.kill(3);
    c.wait_members(3);
    // Alice's table points at the deleted snapshot's objects: they are Alice's data, and
    // recovery brings every one back to three copies.
    wait_recovered(&c, 3);
    for i in 0..3 {
        assert!(read_all(&c, i, "16M") == data, "node {i}");
    }
}

#[test]
fn what_was_removed_while_nodes_were_away_does_not_come_back() {
    use common::nbd::Client;
    use proto::nbd::{cflag, cmd};
    // Three copies: with two of five nodes away every object (Bob's inode too) keeps one.
    let mut c = Cluster::start(5);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "40M"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "8M"]);
    let old = pattern(40 << 20, 41);
    let input = c.tmp.path().join("old");
    std::fs::write(&input, &old).unwrap();
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Bob", "0", "8M"], Some(&input))
        .status
        .success());
    wait_recovered(&c, 3);
    let bob = c.dog_ok(0, &["vdi", "list", "-r", "Bob"]);
    let bob_vid: String = bob.split_whitespace().nth(3).expect("vid").to_string();
    // Two nodes go away; meanwhile every object of Alice is removed (TRIM of half of them,
    // WRITE_ZEROES that may unmap of the others), and Bob is deleted.
    c.kill(3);
    c.kill(4);
    c.wait_members(3);
    common::rt().block_on(async {
        let mut w = Client::open(None, c.nodes[0].nbd_port, "Alice")
            .await
            .unwrap();
        for k in 0..10u64 {
            let kind = if k % 2 == 0 {
                cmd::TRIM
            } else {
                cmd::WRITE_ZEROES
            };
            let r = w.req(kind, 0, k << 22, 4 << 20, &[]).await;
            assert!(r.is_ok(), "{kind} of object {k}: {r:?}");
        }
        w.disconnect().await;
    });
    c.dog_ok(0, &["vdi", "delete", "Bob"]);
    c.restart(3);
    c.restart(4);
    c.wait_members(5);
    wait_recovered(&c, 3);
    // A write into each removed object: the rest of it reads as zeros, not as before.
    common::rt().block_on(async {
        let mut w = Client::open(None, c.nodes[1].nbd_port, "Alice")
            .await
            .unwrap();
        let mark = pattern(4096, 42);
        for k in 0..10u64 {
            w.write((k << 22) + 8192, &mark).await.unwrap();
        }
        for k in 0..10u64 {
            let got = w.read(k << 22, 3 * 4096).await.unwrap();
            assert!(got[..8192].iter().all(|&b| b == 0), "object {k} came back");
            assert!(got[8192..] == mark[..]);
        }
        let _ = cflag::FUA;
        w.disconnect().await;
    });
    for n in &c.nodes {
        let back: Vec<String> = objects(&n.dir)
            .into_iter()
            .filter(|o| o[2..8] == bob_vid[..] && !o.starts_with('8'))
            .collect();
        assert!(
            back.is_empty(),
            "Bob's objects came back on {}: {back:?}",
            n.port
        );
    }
}

#[test]
fn a_recovery_cut_short_by_a_shutdown_goes_on_after_the_restart() {
    let mut c = Cluster::start(4);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    let data = alice(&c, "1G", 40 << 20, 51);
    wait_recovered(&c, 3);
    // Slow recovery, then stop the cluster in the middle of it.
    for i in 0..4 {
        c.dog_ok(i, &["cluster", "recover", "throttle", "1", "1000"]);
    }
    c.kill(3);
    c.wait_members(3);
    std::thread::sleep(Duration::from_millis(1500));
    let busy = (0..3).any(|i| !c.dog(i, &["node", "recovery", "-r"]).stdout.is_empty());
    assert!(busy, "recovery ended before the shutdown");
    c.restart_all();
    wait_recovered(&c, 3);
    for i in 0..3 {
        assert!(read_all(&c, i, "40M") == data, "node {i}");
    }
}

#[test]
fn object_lists_that_fail_make_recovery_wait_and_purge_nothing() {
    // One copy of each object: a node that joins takes over some of them, whose only copies
    // are then the stale ones its peers set aside.
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    let data = alice(&c, "1G", 24 << 20, 61);
    // The new node's first object-list requests to its peers fail: it must not take that
    // for "they hold nothing", report done, and let the stale copies be purged.
    c.env = vec![("FAILPOINTS".into(), "recovery::list=4*return".into())];
    c.add(3);
    c.wait_members(4);
    wait_recovered(&c, 1);
    for i in 0..4 {
        assert!(read_all(&c, i, "24M") == data, "node {i}");
    }
}

/// Copies of every object, current or set aside, on the live nodes: what a purge would
/// lose if it ran too early.
fn copies_anywhere(c: &Cluster) -> std::collections::BTreeMap<String, usize> {
    let mut m = copies(c);
    for n in c.nodes.iter().filter(|n| n.child.is_some()) {
        let stale = std::fs::read_dir(n.dir.join("obj").join(".stale"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for s in stale {
            // Stale copies are named OID.EPOCH.
            let oid = s.split('.').next().unwrap_or_default().to_string();
            *m.entry(oid).or_insert(0) += 1;
        }
    }
    m
}

/// Waits (bounded) until `dog node recovery --json` through node 0 says why node `i` is not
/// done, and returns what it says.
fn wait_problem(c: &Cluster, i: usize, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let me = format!("127.0.0.1:{}", c.port(i));
    loop {
        let out = c.dog_ok(0, &["node", "recovery", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
        let said = rows.iter().find_map(|r| {
            let p = r["problem"].as_str()?;
            (r["address"] == me.as_str() && p.contains(what)).then(|| p.to_string())
        });
        if let Some(p) = said {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "dog node recovery never said \"{what}\" of node {i}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_full_disk_stops_recovery_with_a_clear_error_and_nothing_is_purged() {
    let mut c = Cluster::start(2);
    // Fixed vnodes (-V): by space, the small disk would get no share at all.
    c.dog_ok(0, &["cluster", "format", "--copies=2", "-V"]);
    let data = alice(&c, "1G", 48 << 20, 71);
    // The third node's disk holds 16 MiB: about two thirds of the 12 objects are its now.
    let small = c.add_on_tmpfs(2, 16);
    c.wait_members(3);
    let why = wait_problem(&c, small, "space");
    assert!(why.contains("could not be recovered"), "{why}");
    // The original's text is as it was: the node in its table, nothing more.
    let text = c.dog_ok(0, &["node", "recovery"]);
    assert!(text.starts_with("Nodes In Recovery:\n"), "{text}");
    assert!(!text.contains("space"), "{text}");
    // Nothing is purged while it cannot finish: every object keeps its two copies
    // (current, or set aside on the nodes that held them), and reads are right everywhere.
    std::thread::sleep(Duration::from_secs(2));
    let m = copies_anywhere(&c);
    assert_eq!(m.len(), 13, "12 data objects and the inode: {m:?}");
    assert!(m.values().all(|&n| n >= 2), "a copy was lost: {m:?}");
    for i in 0..3 {
        assert!(read_all(&c, i, "48M") == data, "node {i}");
    }
    // Room again: recovery goes on by itself, and ends with every copy where it belongs.
    c.resize_tmpfs(small, 256);
    wait_recovered(&c, 2);
    assert_placement(&c, 2);
    for i in 0..3 {
        assert!(read_all(&c, i, "48M") == data, "node {i}");
    }
}

#[test]
fn avoid_diskfull_does_not_start_a_recovery_that_would_fill_a_disk() {
    let mut c = Cluster::start(2);
    // Fixed vnodes (-V): by space, the small disk would get no share at all.
    c.dog_ok(0, &["cluster", "format", "--copies=2", "-F", "-V"]);
    // 24 objects: the new node's share (about two thirds) is far more than its 16 MiB.
    let data = alice(&c, "1G", 96 << 20, 72);
    let small = c.add_on_tmpfs(2, 16);
    c.wait_members(3);
    // Every node sees that the new one cannot take its share: none recovers.
    wait_problem(&c, 0, "would fill a disk");
    wait_problem(&c, small, "would fill a disk");
    std::thread::sleep(Duration::from_secs(2));
    let none: Vec<String> = objects(&c.nodes[small].dir)
        .into_iter()
        .filter(|o| !o.starts_with("80"))
        .collect();
    assert!(
        none.is_empty(),
        "data objects fetched onto the small disk: {none:?}"
    );
    let m = copies_anywhere(&c);
    assert!(m.len() == 25 && m.values().all(|&n| n >= 2), "{m:?}");
    // The small node goes: the two others recover everything between them.
    c.kill(small);
    c.wait_members(2);
    wait_recovered(&c, 2);
    for i in 0..2 {
        assert!(read_all(&c, i, "96M") == data, "node {i}");
    }
}

#[test]
fn object_lists_longer_than_one_answer_are_read_page_by_page() {
    // Pages of two records: every node's list takes several answers (as a node with more
    // objects than one 32 MiB answer holds would).
    let mut c = Cluster::with_failpoints(&["peers::list_page=return(48)"; 3], &[]);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    let data = alice(&c, "1G", 40 << 20, 81);
    c.env = vec![("FAILPOINTS".into(), "peers::list_page=return(48)".into())];
    c.add(3);
    c.wait_members(4);
    wait_recovered(&c, 2);
    assert_placement(&c, 2);
    for i in 0..4 {
        assert!(read_all(&c, i, "40M") == data, "node {i}");
    }
}

/// The original's 042: two nodes of four have small disks that fill up. Writes whose copies
/// fall on them fail at once with "no space" (never hang, never EIO), VDI creation fails as
/// the original says, and the cluster goes on serving.
#[test]
fn writes_to_a_cluster_with_full_disks_fail_with_no_space_at_once() {
    // Disks of 1 GiB, 1 GiB, 30 MiB and 30 MiB: 249, 249, 7 and 7 vnodes.
    let mut c = Cluster::start(0);
    for (zone, mb) in [(0, 1024), (1, 1024), (2, 30), (3, 30)] {
        c.add_on_tmpfs(zone, mb);
    }
    c.wait_members(4);
    c.dog_ok(0, &["cluster", "format"]);
    let list = c.dog_ok(0, &["node", "list", "-r"]);
    assert!(list.lines().nth(2).unwrap().contains(" 7 "), "{list}");
    c.dog_ok(0, &["vdi", "create", "test0", "100M"]);
    c.dog_ok(0, &["vdi", "create", "test1", "100M"]);
    for i in [2, 3] {
        let filler = c.nodes[i].dir.join("zero");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=1M"])
            .arg(format!("of={}", filler.display()))
            .output();
    }
    let input = write_file(&c, "one", b"1\n");
    for (vdi, node) in [("test0", 0), ("test1", 2)] {
        for i in 0..4u64 {
            let started = std::time::Instant::now();
            let o = c.dog_stdin(
                node,
                &["vdi", "write", vdi, &(i * (4 << 20)).to_string(), "512"],
                Some(&input),
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "a write to a full disk hung"
            );
            assert!(!o.status.success());
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.ends_with(": Server has no space for new objects\nFailed to write VDI\n"),
                "{err}"
            );
        }
    }
    let o = c.dog(0, &["vdi", "create", "test2", "100M"]);
    assert!(!o.status.success());
    // The cluster still answers.
    c.dog_ok(1, &["node", "list"]);
    c.dog_ok(3, &["vdi", "list"]);
}
