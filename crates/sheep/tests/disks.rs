//! Nodes with several disks (`sheep DIR,DISK1,DISK2,...`), as the original's md: a disk that
//! vanishes or fails with EIO under a writer is taken out and nothing acknowledged is lost,
//! disks plugged and unplugged online, a restart with other disks, and a node whose last disk
//! goes leaving the cluster. Real sheep processes, real qemu-io writers over NBD.

mod common;

use common::store::{assert_copies_agree, node_objects, wait_recovered};
use common::{pattern, Cluster};
use std::time::{Duration, Instant};

const LEN: usize = 32 << 20;

/// qemu-io commands against `uri`; panics with its output when one fails.
fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut cmd = std::process::Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let o = cmd
        .arg(uri)
        .output()
        .expect("qemu-io is installed by scripts/test.sh");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && !out.contains("failed"),
        "qemu-io: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// `n` writes of 64 KiB spread over the VDI, each of its own byte, applied to `shadow`.
fn writes(n: usize, seed: usize, shadow: &mut [u8]) -> Vec<String> {
    (0..n)
        .map(|k| {
            let off = ((k * 2_654_435_761 + seed * 977) % (LEN / 65536)) * 65536;
            let byte = ((k + seed) % 250 + 1) as u8;
            shadow[off..off + 65536].fill(byte);
            format!("write -P {byte} {off} 64k")
        })
        .collect()
}

fn write_all(c: &Cluster, vdi: &str, data: &[u8]) {
    let p = c.tmp.path().join("data");
    std::fs::write(&p, data).unwrap();
    let o = c.dog_stdin(0, &["vdi", "write", vdi], Some(&p));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn assert_reads(c: &Cluster, vdi: &str, shadow: &[u8]) {
    for i in (0..c.nodes.len()).filter(|&i| c.nodes[i].child.is_some()) {
        let o = c.dog(i, &["vdi", "read", vdi]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let bad = (0..LEN / 4096)
            .find(|&k| o.stdout[k * 4096..(k + 1) * 4096] != shadow[k * 4096..(k + 1) * 4096]);
        assert_eq!(o.stdout.len(), shadow.len());
        assert!(
            bad.is_none(),
            "node {i}: block {bad:?} differs from what was acknowledged"
        );
    }
}

/// The disk paths `dog node md info` lists for node `i`.
fn md_paths(c: &Cluster, i: usize) -> Vec<String> {
    c.dog_ok(i, &["node", "md", "info"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').nth(5).map(str::to_string))
        .collect()
}

/// Three nodes of three disks each, two copies, a VDI written whole; then a writer on node 0
/// whose writes are slowed (so it is surely still running) while `break_disk` breaks one
/// disk. Every acknowledged byte is read back from every node, and recovery gives every object
/// its two copies again.
fn lose_a_disk_under_a_writer(failpoints: [&str; 3], break_disk: impl FnOnce(&Cluster)) -> Cluster {
    let mut c = Cluster::start_with(0, &[]);
    for (z, fp) in failpoints.iter().enumerate() {
        c.env = vec![("FAILPOINTS".into(), fp.to_string())];
        c.add_with_disks(z as u32, 3);
    }
    c.wait_members(3);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "32M"]);
    let mut shadow = pattern(LEN, 1);
    write_all(&c, "Alice", &shadow);
    let cmds = writes(600, 7, &mut shadow);
    let uri = c.nbd_uri(0, "Alice");
    let writer = std::thread::spawn(move || qemu_io(&uri, &cmds));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !writer.is_finished(),
        "the writer ended before the disk broke"
    );
    break_disk(&c);
    writer.join().unwrap();
    assert_reads(&c, "Alice", &shadow);
    // Copies are counted on the disks in use (a failed disk keeps its files).
    for i in 0..3 {
        c.nodes[i].disks = md_paths(&c, i).into_iter().map(Into::into).collect();
    }
    wait_recovered(&c, 2);
    assert_copies_agree(&c);
    assert_reads(&c, "Alice", &shadow);
    c
}

/// The disk of node `i` that holds the most objects.
fn busiest_disk(c: &Cluster, i: usize) -> std::path::PathBuf {
    let objs = node_objects(&c.nodes[i]);
    let d = c.nodes[i]
        .disks
        .iter()
        .max_by_key(|d| objs.iter().filter(|(_, p)| p == *d).count())
        .unwrap()
        .clone();
    assert!(objs.iter().any(|(_, p)| *p == d));
    d
}

#[test]
fn a_disk_that_vanishes_under_a_writer_is_unplugged_and_nothing_is_lost() {
    let slow = "peer::write=sleep(4)";
    let mut gone = None;
    let c = lose_a_disk_under_a_writer([slow, slow, slow], |c| {
        let d = busiest_disk(c, 0);
        std::fs::rename(&d, d.with_extension("gone")).unwrap();
        gone = Some(d);
    });
    let gone = gone.unwrap().display().to_string();
    let paths = md_paths(&c, 0);
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(!paths.contains(&gone), "{paths:?}");
    assert_eq!(md_paths(&c, 1).len(), 3);
    let m = std::process::Command::new("curl")
        .args(["-sf"])
        .arg(format!(
            "http://127.0.0.1:{}/metrics",
            c.nodes[0].http_port.unwrap()
        ))
        .output()
        .expect("curl is installed by scripts/test.sh");
    let text = String::from_utf8_lossy(&m.stdout);
    assert!(text.lines().any(|l| l == "sheep_disks 2"), "{text}");
    let log = std::fs::read_to_string(c.tmp.path().join("sheep0.err")).unwrap();
    assert!(log.contains("failed: unplugged, 2 disks left"), "{log}");
}

#[test]
fn a_disk_that_fails_with_eio_under_a_writer_is_unplugged_and_nothing_is_lost() {
    // On node 1, once, after its first operations: EIO from the disk of the object.
    let slow = "peer::write=sleep(4)";
    let eio = "peer::write=sleep(4);store::disk_eio=150*off->1*return->off";
    let c = lose_a_disk_under_a_writer([slow, eio, slow], |_| {});
    let paths = md_paths(&c, 1);
    assert_eq!(paths.len(), 2, "{paths:?}");
    let log = std::fs::read_to_string(c.tmp.path().join("sheep1.err")).unwrap();
    assert!(log.contains("failed: unplugged, 2 disks left"), "{log}");
}

#[test]
fn disks_plugged_and_unplugged_online_and_a_restart_with_other_disks_keep_every_byte() {
    let mut c = Cluster::start_with(0, &[]);
    for z in 0..3 {
        c.add_with_disks(z, 2);
    }
    c.wait_members(3);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "32M"]);
    let mut shadow = pattern(LEN, 3);
    write_all(&c, "Alice", &shadow);
    let st0 = c.nodes[0].dir.clone();
    let (d2, d3) = (st0.join("d2"), st0.join("d3"));
    // Plug two disks into node 0 while a writer runs through node 1.
    let cmds = writes(300, 11, &mut shadow);
    let uri = c.nbd_uri(1, "Alice");
    let writer = std::thread::spawn(move || qemu_io(&uri, &cmds));
    let plug = format!("{},{}", d2.display(), d3.display());
    c.dog_ok(0, &["node", "md", "plug", "-f", &plug]);
    writer.join().unwrap();
    c.nodes[0].disks.extend([d2.clone(), d3.clone()]);
    assert_eq!(md_paths(&c, 0).len(), 4);
    // Plugging one that is plugged already changes nothing, and says so as the original.
    let again = c.dog(0, &["node", "md", "plug", "-f", &d2.display().to_string()]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).trim(),
        "Failed to execute request, look for sheep.log for more information"
    );
    wait_recovered(&c, 2);
    let on_new = node_objects(&c.nodes[0])
        .iter()
        .filter(|(_, d)| *d == d2 || *d == d3)
        .count();
    assert!(on_new > 0, "the plugged disks take their share");
    assert_reads(&c, "Alice", &shadow);

    // Unplug the first two while writing: their copies move to the others; nothing is lost.
    let cmds = writes(300, 13, &mut shadow);
    let uri = c.nbd_uri(0, "Alice");
    let writer = std::thread::spawn(move || qemu_io(&uri, &cmds));
    let (d0, d1) = (st0.join("d0"), st0.join("d1"));
    let unplug = format!("{},{}", d0.display(), d1.display());
    c.dog_ok(0, &["node", "md", "unplug", "-f", &unplug]);
    writer.join().unwrap();
    c.nodes[0].disks = vec![d2.clone(), d3.clone()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while md_paths(&c, 0).len() != 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_recovered(&c, 2);
    assert_copies_agree(&c);
    assert_reads(&c, "Alice", &shadow);

    // A whole-cluster restart with node 0 given its old disks back and a new one: what the
    // old ones held from before they were unplugged is never served.
    c.kill(0);
    c.nodes[0].disks = vec![d0, d1, d2, d3, st0.join("d4")];
    c.dog_ok(1, &["cluster", "shutdown"]);
    c.wait_exit(1);
    c.wait_exit(2);
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_members(3);
    assert_reads(&c, "Alice", &shadow);
    wait_recovered(&c, 2);
    assert_copies_agree(&c);
    let cmds = writes(100, 17, &mut shadow);
    qemu_io(&c.nbd_uri(0, "Alice"), &cmds);
    assert_reads(&c, "Alice", &shadow);
}

#[test]
fn a_node_whose_last_disk_goes_leaves_the_cluster_and_the_others_serve() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "32M"]);
    let mut shadow = pattern(LEN, 5);
    write_all(&c, "Alice", &shadow);
    let obj = c.nodes[2].dir.join("obj");
    std::fs::rename(&obj, obj.with_extension("gone")).unwrap();
    // A write finds it: the node leaves, the write goes on with the others' copies.
    let cmds = writes(50, 19, &mut shadow);
    qemu_io(&c.nbd_uri(0, "Alice"), &cmds);
    c.wait_exit(2);
    c.wait_members(2);
    let log = std::fs::read_to_string(c.tmp.path().join("sheep2.err")).unwrap();
    assert!(log.contains("no disks available, going down"), "{log}");
    assert_reads(&c, "Alice", &shadow);
}
