//! No acknowledged write is lost or read wrong: one test per way it used to happen (a node
//! that comes back serving its old copies, an online snapshot racing a writer, ...), each with
//! real sheep processes and, where a window is too narrow to hit by chance, a failpoint that
//! holds it open.

mod common;

use common::{pattern, Cluster};
use std::path::PathBuf;

fn write_file(c: &Cluster, name: &str, data: &[u8]) -> PathBuf {
    let p = c.tmp.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn write_vdi(c: &Cluster, i: usize, vdi: &str, data: &[u8]) {
    let input = write_file(c, "data", data);
    let o = c.dog_stdin(i, &["vdi", "write", vdi], Some(&input));
    assert!(
        o.status.success(),
        "write through node {i}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read_vdi(c: &Cluster, i: usize, vdi: &str, len: usize) -> Vec<u8> {
    let o = c.dog(i, &["vdi", "read", vdi, "0", &len.to_string()]);
    assert!(
        o.status.success(),
        "read through node {i}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// First differing 4 KiB block, for a readable failure.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()) / 4096);
    }
    (0..a.len() / 4096).find(|&k| a[k * 4096..(k + 1) * 4096] != b[k * 4096..(k + 1) * 4096])
}

#[test]
fn a_returning_node_never_serves_what_it_had_before_it_left() {
    let len = 32 << 20;
    let mut c = Cluster::start(4);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "32M"]);
    write_vdi(&c, 0, "Alice", &pattern(len, 1));
    c.kill(2);
    c.kill(3);
    c.wait_members(2);
    let newer = pattern(len, 2);
    write_vdi(&c, 0, "Alice", &newer);
    // The returning nodes are slow to set their old copies aside: nothing may be served from
    // them meanwhile, although the others count them as members at once.
    c.env = vec![(
        "FAILPOINTS".into(),
        "recovery::before_set_aside=sleep(1500)".into(),
    )];
    c.restart(2);
    c.restart(3);
    c.wait_members(4);
    let older = pattern(len, 1);
    for i in [2, 3, 0] {
        let got = read_vdi(&c, i, "Alice", len);
        let bad = first_diff(&got, &newer);
        assert!(
            bad.is_none(),
            "read through node {i} right after the return: block {bad:?} differs (the old \
             bytes: {})",
            bad.is_some_and(|b| got[b * 4096..(b + 1) * 4096] == older[b * 4096..(b + 1) * 4096])
        );
    }
}

/// qemu-io commands against `uri`; panics with its output when one fails.
fn qemu_io(uri: &str, cmds: &[String], read_only: bool) -> String {
    let mut cmd = std::process::Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    if read_only {
        cmd.arg("-r");
    }
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let o = cmd
        .arg(uri)
        .output()
        .expect("qemu-io is installed by scripts/test.sh");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && !out.contains("failed") && !out.contains("Pattern verification"),
        "qemu-io {cmds:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn online_snapshots_keep_writes_that_race_them() {
    // Every first write to an object pauses between creating the object and recording it in
    // the inode's table: the window in which a snapshot used to copy the table without it.
    let mut c = Cluster::with_failpoints(&["volume::before_set_slot=sleep(250)"; 3], &[]);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "64M"]);
    let objects = 12u64;
    let writes: Vec<String> = (0..objects)
        .map(|k| format!("write -P {} {} 64k", k + 1, (k << 22) + 4096))
        .collect();
    let uri = c.nbd_uri(0, "Alice");
    let writer = {
        let (uri, writes) = (uri.clone(), writes.clone());
        std::thread::spawn(move || qemu_io(&uri, &writes, false))
    };
    // Snapshots through another node while the first writes go on.
    let mut taken = 0;
    while !writer.is_finished() {
        c.dog_ok(1, &["vdi", "snapshot", "Alice"]);
        taken += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    writer.join().unwrap();
    assert!(
        taken >= 3,
        "only {taken} snapshots were taken during the writes"
    );
    let reads: Vec<String> = (0..objects)
        .map(|k| format!("read -P {} {} 64k", k + 1, (k << 22) + 4096))
        .collect();
    for i in 0..3 {
        qemu_io(&c.nbd_uri(i, "Alice"), &reads, true);
    }
    // And after a restart of the whole cluster, from what is on disk.
    c.restart_all();
    for i in 0..3 {
        qemu_io(&c.nbd_uri(i, "Alice"), &reads, true);
    }
}

/// `dog vdi snapshot Alice` through node `i`, left running (it is to hang), then after a
/// moment a qemu-io write through node 0's NBD export, in a thread.
fn snapshot_then_write(
    c: &Cluster,
    i: usize,
    write: &str,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let snap = std::process::Command::new(common::bin("dog"))
        .args(["vdi", "snapshot", "Alice", "-p", &c.port(i).to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (uri, cmd) = (c.nbd_uri(0, "Alice"), write.to_string());
    (
        snap,
        std::thread::spawn(move || qemu_io(&uri, &[cmd], false)),
    )
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn vdi_list(c: &Cluster, i: usize) -> String {
    c.dog_ok(i, &["vdi", "list", "-r"])
}

#[test]
fn a_snapshot_that_fails_halfway_leaves_the_vdi_as_it_was_or_done() {
    // Each node fails a snapshot it takes at another step.
    let mut c = Cluster::with_failpoints(
        &[
            "",
            "vdi::snapshot_before_commit_record=return",
            "vdi::snapshot_drained=pause",
            "vdi::snapshot_committed_on_disk=pause",
        ],
        &[],
    );
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "16M"]);
    let uri = c.nbd_uri(0, "Alice");
    qemu_io(&uri, &["write -P 1 0 64k".into()], false);

    // A step fails on the snapshotting node: an error, and Alice is as she was.
    let o = c.dog(1, &["vdi", "snapshot", "Alice"]);
    assert!(!o.status.success(), "the snapshot was to fail");
    let list = vdi_list(&c, 0);
    assert_eq!(list.lines().count(), 1, "no snapshot: {list}");
    assert!(list.starts_with("= Alice "), "{list}");
    qemu_io(&uri, &["write -P 2 4M 64k".into()], false);

    // The snapshotting node dies with Alice frozen, before the commit record: writers wait,
    // then the snapshot is undone and they go on in Alice.
    let (snap, writer) = snapshot_then_write(&c, 2, "write -P 3 8M 64k");
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(
        !writer.is_finished(),
        "a write went into a VDI being snapshotted"
    );
    c.kill(2);
    writer.join().unwrap();
    stop(snap);
    c.wait_members(3);
    let list = vdi_list(&c, 0);
    assert_eq!(list.lines().count(), 1, "undone: {list}");

    // It dies after the commit record: the snapshot is finished for it, and the writer
    // follows the name to the new working VDI.
    let (snap, writer) = snapshot_then_write(&c, 3, "write -P 4 12M 64k");
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.kill(3);
    writer.join().unwrap();
    stop(snap);
    c.wait_members(2);
    let list = vdi_list(&c, 0);
    assert_eq!(list.lines().count(), 2, "committed: {list}");
    assert!(list.lines().any(|l| l.starts_with("s Alice ")), "{list}");
    let all = [
        "read -P 1 0 64k".to_string(),
        "read -P 2 4M 64k".into(),
        "read -P 3 8M 64k".into(),
        "read -P 4 12M 64k".into(),
    ];
    for i in 0..2 {
        qemu_io(&c.nbd_uri(i, "Alice"), &all, true);
    }
    // The snapshot holds what was written before it, not the write that waited for it.
    let snap_uri = format!("{}:1", c.nbd_uri(0, "Alice").trim_end_matches('/'));
    qemu_io(&snap_uri, &all[..3], true);
    qemu_io(&snap_uri, &["read -P 0 12M 64k".into()], true);
}

#[test]
fn vdi_check_repairs_a_copy_without_undoing_a_write_that_lands_meanwhile() {
    // The repair of a copy pauses between reading the good copy and installing it.
    let c = Cluster::with_failpoints(&["recovery::repair_before_install=sleep(1000)"; 3], &[]);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "8M"]);
    let uri = c.nbd_uri(0, "Alice");
    qemu_io(&uri, &["write -P 1 0 4M".into()], false);
    // Damage node 2's copy of object 0.
    let obj = common::store::objects(&c.nodes[2].dir)
        .into_iter()
        .find(|o| !o.starts_with('8') && o.ends_with("00000000"))
        .expect("object 0 on node 2");
    let path = c.nodes[2].dir.join("obj").join(&obj);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8192..8192 + 4096].fill(0xee);
    std::fs::write(&path, &bytes).unwrap();
    let check = {
        let mut cmd = std::process::Command::new(common::bin("dog"));
        cmd.args(["vdi", "check", "Alice", "-p", &c.port(0).to_string()]);
        cmd.output()
    };
    let checker =
        std::thread::spawn(move || check.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()));
    // A write lands while the repair is between its read and its install.
    std::thread::sleep(std::time::Duration::from_millis(400));
    qemu_io(&uri, &["write -P 9 0 64k".into()], false);
    let out = checker.join().unwrap().unwrap();
    assert!(out.contains("fixed"), "vdi check: {out}");
    common::store::assert_copies_agree(&c);
    for i in 0..3 {
        qemu_io(
            &c.nbd_uri(i, "Alice"),
            &["read -P 9 0 64k".into(), "read -P 1 64k 4032k".into()],
            true,
        );
    }
}

#[test]
fn a_copy_that_fails_or_loses_a_write_is_healed_before_the_write_is_acknowledged() {
    // Node 1 fails its first two writes; node 2 says it took its first two but did not.
    let c = Cluster::with_failpoints(
        &["", "peer::write=2*return", "peer::lose_write=2*return"],
        &[],
    );
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "8M"]);
    let uri = c.nbd_uri(0, "Alice");
    // Each write reaches all three copies; the ones that went wrong are healed from a copy
    // that took it, so every write is acknowledged and every copy is the same.
    qemu_io(
        &uri,
        &[
            "write -P 1 0 64k".into(),
            "write -P 2 64k 64k".into(),
            "write -P 3 4M 64k".into(),
        ],
        false,
    );
    common::store::assert_copies_agree(&c);
    let reads = [
        "read -P 1 0 64k".to_string(),
        "read -P 2 64k 64k".into(),
        "read -P 3 4M 64k".into(),
    ];
    for i in 0..3 {
        qemu_io(&c.nbd_uri(i, "Alice"), &reads, true);
    }
}

#[test]
fn exports_on_different_nodes_see_each_others_copy_on_write_and_trim() {
    use common::nbd::Client;
    // Writers through several nodes at once (as with QEMU's driver and NBD together).
    let c = Cluster::start_with(3, &["--nbd-shared"]);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "16M"]);
    let (a, b) = (pattern(4 << 20, 31), pattern(4096, 32));
    common::rt().block_on(async {
        let mut w = Client::open(None, c.nodes[0].nbd_port, "Alice")
            .await
            .unwrap();
        w.write(0, &a).await.unwrap();
        w.write(4 << 20, &a).await.unwrap();
        // A reader on another node, open all along.
        let mut r = Client::open(None, c.nodes[1].nbd_port, "Alice")
            .await
            .unwrap();
        assert!(r.read(0, 4096).await.unwrap() == a[..4096]);
        // A snapshot, then a write through node 0 copies object 0 into the new VDI.
        c.dog_ok(2, &["vdi", "snapshot", "Alice"]);
        w.write(8192, &b).await.unwrap();
        assert!(
            r.read(8192, 4096).await.unwrap() == b,
            "the reader on node 1 still reads the snapshot's object"
        );
        assert!(r.read(0, 4096).await.unwrap() == a[..4096]);
        // Object 1 is trimmed through node 0: node 1 reads zeros, not an error.
        let trim = w.req(proto::nbd::cmd::TRIM, 0, 4 << 20, 4 << 20, &[]).await;
        assert!(trim.is_ok(), "{trim:?}");
        w.write(8 << 20, &a).await.unwrap();
        let got = r.read(4 << 20, 4096).await;
        assert!(
            got == Ok(vec![0u8; 4096]),
            "after a TRIM elsewhere: {:?}",
            got.map(|d| d[0])
        );
        assert!(r.read(8 << 20, 4096).await.unwrap() == a[..4096]);
        w.disconnect().await;
        r.disconnect().await;
    });
    // Its own object trimmed through another node, a volume writes it anew.
    common::rt().block_on(async {
        let mut w = Client::open(None, c.nodes[0].nbd_port, "Alice")
            .await
            .unwrap();
        w.write(8 << 20, &b).await.unwrap();
        let mut t = Client::open(None, c.nodes[2].nbd_port, "Alice")
            .await
            .unwrap();
        t.req(proto::nbd::cmd::TRIM, 0, 8 << 20, 4 << 20, &[])
            .await
            .unwrap();
        t.disconnect().await;
        w.write(8 << 20, &b).await.unwrap();
        assert!(w.read(8 << 20, 4096).await.unwrap() == b);
        assert!(w.read((8 << 20) + 4096, 4096).await.unwrap() == vec![0u8; 4096]);
        w.disconnect().await;
    });
}

#[test]
fn first_writes_and_copy_on_write_through_two_nodes_at_once_lose_nothing() {
    // Both writers pause between making an object and recording it, so each finds the
    // object absent (or still the parent's) and makes it: the second must not undo the first.
    let c = Cluster::with_failpoints(
        &["volume::before_set_slot=sleep(300)"; 3],
        &["--nbd-shared"],
    );
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "32M"]);
    let objects = 6u64;
    let round = |c: &Cluster, base: u64| {
        let writer = |node: usize, block: u64| {
            let uri = c.nbd_uri(node, "Alice");
            let cmds: Vec<String> = (0..objects)
                .map(|k| {
                    format!(
                        "write -P {} {} 4k",
                        base + k * 2 + block,
                        (k << 22) + (block << 12)
                    )
                })
                .collect();
            std::thread::spawn(move || qemu_io(&uri, &cmds, false))
        };
        let (a, b) = (writer(0, 0), writer(1, 1));
        a.join().unwrap();
        b.join().unwrap();
        let reads: Vec<String> = (0..objects)
            .flat_map(|k| {
                (0..2).map(move |block| {
                    format!(
                        "read -P {} {} 4k",
                        base + k * 2 + block,
                        (k << 22) + (block << 12)
                    )
                })
            })
            .collect();
        for i in 0..3 {
            qemu_io(&c.nbd_uri(i, "Alice"), &reads, true);
        }
    };
    // First writes into holes, then (after a snapshot) copy-on-write of every object.
    round(&c, 1);
    c.dog_ok(2, &["vdi", "snapshot", "Alice"]);
    round(&c, 101);
    common::store::assert_copies_agree(&c);
}

#[test]
fn vdi_check_with_two_copies_keeps_the_newest_not_the_larger_digest() {
    use sha1::Digest;
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "4M"]);
    let good = pattern(4 << 20, 71);
    write_vdi(&c, 0, "Alice", &good);
    write_vdi(&c, 0, "Alice", &good);
    // Node 1's copy of object 0 becomes an older one (version 0) with other bytes, chosen so
    // that its digest is the larger of the two: a tie broken by digests would keep it.
    let obj = common::store::objects(&c.nodes[1].dir)
        .into_iter()
        .find(|o| !o.starts_with('8'))
        .expect("object 0 on node 1");
    let path = c.nodes[1].dir.join("obj").join(&obj);
    let good_digest: [u8; 20] = sha1::Sha1::digest(&good).into();
    let older = (100..)
        .map(|seed| pattern(4 << 20, seed))
        .find(|b| <[u8; 20]>::from(sha1::Sha1::digest(b)) > good_digest)
        .unwrap();
    std::fs::write(&path, &older).unwrap();
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let zero = 0u64.to_le_bytes();
    // SAFETY: a valid path and attribute name, and a buffer of the length given.
    let r = unsafe {
        libc::setxattr(
            name.as_ptr(),
            c"user.sheepdog.version".as_ptr(),
            zero.as_ptr().cast(),
            zero.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr");
    let out = c.dog_ok(0, &["vdi", "check", "Alice"]);
    assert!(out.contains("fixed replica"), "{out}");
    common::store::assert_copies_agree(&c);
    for i in 0..2 {
        assert!(read_vdi(&c, i, "Alice", 4 << 20) == good, "node {i}");
    }
}

#[test]
fn two_nodes_down_at_once_under_a_writer_then_every_copy_is_the_same() {
    let mut c = Cluster::start(5);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "64M"]);
    let uri = c.nbd_uri(0, "Alice");
    let fio = common::fio_randwrite(&c, &uri, "16k", "64m");
    std::thread::sleep(std::time::Duration::from_millis(800));
    c.kill(2);
    c.kill(4);
    c.wait_members(3);
    std::thread::sleep(std::time::Duration::from_millis(800));
    c.restart(2);
    c.restart(4);
    common::fio_ok(fio);
    c.wait_members(5);
    common::store::wait_recovered(&c, 3);
    common::store::assert_copies_agree(&c);
    // And every node serves the same bytes.
    let first = read_vdi(&c, 0, "Alice", 64 << 20);
    for i in 1..5 {
        assert!(read_vdi(&c, i, "Alice", 64 << 20) == first, "node {i}");
    }
}
