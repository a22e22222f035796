//! The life of a VDI with real sheep processes and `dog`: snapshot, copy-on-write, clone,
//! tree, rollback, resize, attributes, delete with space coming back.

mod common;

use common::{pattern, Cluster};
use std::path::Path;

fn write_file(c: &Cluster, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = c.tmp.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Data objects (not inodes, not attributes) in a store.
fn data_objects(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("obj"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| u64::from_str_radix(n, 16).ok())
                })
                .filter(|oid| oid >> 56 == 0)
                .count()
        })
        .unwrap_or(0)
}

fn row<'a>(list: &'a str, prefix: &str) -> &'a str {
    list.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no row starting {prefix:?} in\n{list}"))
}

#[test]
fn snapshot_clone_rollback_resize_attributes_delete() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "1G"]);
    let data = pattern(8 << 20, 1);
    let input = write_file(&c, "a8", &data);
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    c.dog_ok(0, &["vdi", "snapshot", "-s", "first", "Alice"]);
    let list = c.dog_ok(1, &["vdi", "list", "-r"]);
    assert!(row(&list, "s Alice 1 ").contains(" 8388608 0 "), "{list}");
    assert!(row(&list, "= Alice 0 ").contains(" 0 8388608 "), "{list}");
    assert!(row(&list, "s Alice 1 ").contains(" first "), "{list}");

    // Copy-on-write: the snapshot keeps the old bytes, by tag and by id.
    let new = write_file(&c, "new", b"new");
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice", "0"], Some(&new))
        .status
        .success());
    assert_eq!(c.dog(2, &["vdi", "read", "Alice", "0", "3"]).stdout, b"new");
    assert!(
        c.dog(2, &["vdi", "read", "-s", "first", "Alice", "0", "3"])
            .stdout
            == data[..3]
    );
    assert!(c.dog(1, &["vdi", "read", "-s", "1", "Alice"]).stdout[..8 << 20] == data[..]);
    let list = c.dog_ok(0, &["vdi", "list", "-r"]);
    assert!(
        row(&list, "= Alice 0 ").contains(" 4194304 4194304 "),
        "{list}"
    );

    // Clones come from snapshots only.
    c.dog_ok(0, &["vdi", "clone", "-s", "first", "Alice", "Charlie"]);
    let o = c.dog(0, &["vdi", "clone", "Alice", "Dave"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Only snapshot VDIs can be cloned"));
    let list = c.dog_ok(0, &["vdi", "list", "-r"]);
    assert!(row(&list, "c Charlie 0 ").contains(" 0 8388608 "), "{list}");
    assert!(c.dog(1, &["vdi", "read", "Charlie", "0", "8M"]).stdout == data);
    let tree = c.dog_ok(0, &["vdi", "tree"]);
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 2, "{tree}");
    assert!(lines[0].starts_with("Alice---[") && lines[0].ends_with("]-+-(you are here)"));
    assert!(
        lines[1]
            .trim_start()
            .starts_with("`-Charlie---(you are here)"),
        "{tree}"
    );
    // The same family as a Graphviz graph, which Graphviz itself reads: root, Alice's
    // snapshot under it, the working Alice and Charlie under the snapshot.
    let graph = c.dog_ok(1, &["vdi", "graph"]);
    assert!(graph.starts_with("digraph G {\n"), "{graph}");
    let dot = std::process::Command::new("dot")
        .arg("-Tplain")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            use std::io::Write;
            p.stdin.take().unwrap().write_all(graph.as_bytes())?;
            p.wait_with_output()
        })
        .expect("run Graphviz's dot (apt-get install graphviz)");
    assert!(dot.status.success(), "{graph}");
    let plain = String::from_utf8_lossy(&dot.stdout).replace('"', "");
    let edges: Vec<&str> = plain.lines().filter(|l| l.starts_with("edge ")).collect();
    assert_eq!(edges.len(), 3, "{plain}");
    let vid = |name: &str, flag: &str| -> String {
        let list = c.dog_ok(0, &["vdi", "list", "-r"]);
        let f: Vec<&str> = row(&list, &format!("{flag} {name} ")).split(' ').collect();
        f[7].to_string()
    };
    let (snap, alice, charlie) = (vid("Alice", "s"), vid("Alice", "="), vid("Charlie", "c"));
    let tree: serde_json::Value =
        serde_json::from_str(&c.dog_ok(2, &["vdi", "tree", "--json"])).unwrap();
    let by_id = |id: &str| {
        tree.as_array()
            .unwrap()
            .iter()
            .find(|v| v["vdi_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {tree}"))
    };
    assert_eq!(by_id(&charlie)["parent"], snap.as_str());
    assert_eq!(by_id(&alice)["parent"], snap.as_str());
    assert_eq!(by_id(&snap)["snapshot"], true);
    for (from, to) in [("0", &snap), (&snap, &alice), (&snap, &charlie)] {
        assert!(
            edges
                .iter()
                .any(|e| e.starts_with(&format!("edge {from} {to} "))),
            "{from} -> {to}: {plain}"
        );
    }

    // Rollback: Alice is the snapshot's contents again, and stays a plain VDI.
    c.dog_ok(0, &["vdi", "rollback", "-f", "-s", "first", "Alice"]);
    assert!(c.dog(2, &["vdi", "read", "Alice", "0", "8M"]).stdout == data);
    let list = c.dog_ok(0, &["vdi", "list", "-r"]);
    assert!(list.lines().any(|l| l.starts_with("= Alice 0 ")), "{list}");

    // Resize grows only.
    c.dog_ok(0, &["vdi", "resize", "Alice", "2G"]);
    let list = c.dog_ok(0, &["vdi", "list", "-r"]);
    assert!(row(&list, "= Alice 0 ").contains(" 2147483648 "), "{list}");
    let o = c.dog(0, &["vdi", "resize", "Alice", "1G"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Shrinking VDIs is not implemented"));

    // Attributes: set, get, exclusive, delete.
    c.dog_ok(0, &["vdi", "setattr", "Alice", "owner", "bob"]);
    assert_eq!(c.dog_ok(1, &["vdi", "getattr", "Alice", "owner"]), "bob");
    let o = c.dog(0, &["vdi", "setattr", "-x", "Alice", "owner", "eve"]);
    assert_eq!(o.status.code(), Some(3));
    c.dog_ok(0, &["vdi", "setattr", "Alice", "owner", "eve"]);
    assert_eq!(c.dog_ok(2, &["vdi", "getattr", "Alice", "owner"]), "eve");
    c.dog_ok(0, &["vdi", "setattr", "-d", "Alice", "owner"]);
    assert_eq!(
        c.dog(0, &["vdi", "getattr", "Alice", "owner"])
            .status
            .code(),
        Some(5)
    );
    assert_eq!(
        c.dog(0, &["vdi", "getattr", "Nobody", "owner"])
            .status
            .code(),
        Some(5)
    );

    // Deleting what is not there says what was looked for, as the original (046).
    let o = c.dog(0, &["vdi", "delete", "-s", "nosuch", "Alice"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Failed to open VDI Alice (snapshot id: 0 snapshot tag: nosuch): Failed to find \
         requested tag\n"
    );
    let o = c.dog(0, &["vdi", "delete", "Nobody"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Failed to open VDI Nobody (snapshot id: 0 snapshot tag: ): No VDI found\n"
    );
    // Deletes in any order: objects stay while anyone uses them, then every one goes.
    c.dog_ok(0, &["vdi", "delete", "-s", "first", "Alice"]);
    assert!(c.dog(1, &["vdi", "read", "Charlie", "0", "8M"]).stdout == data);
    assert!(c.dog(1, &["vdi", "read", "Alice", "0", "8M"]).stdout == data);
    c.dog_ok(0, &["vdi", "delete", "Charlie"]);
    assert!(c.dog(2, &["vdi", "read", "Alice", "0", "8M"]).stdout == data);
    c.dog_ok(0, &["vdi", "delete", "Alice"]);
    assert_eq!(c.dog_ok(0, &["vdi", "list", "-r"]), "");
    for n in &c.nodes {
        assert_eq!(
            data_objects(&n.dir),
            0,
            "data objects left in {}",
            n.dir.display()
        );
    }
}

#[test]
fn an_open_vdi_cannot_be_deleted() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let mut io = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write 0 4k",
            "-c",
            "sleep 3000",
            &c.nbd_uri(0, "Bob"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-io is installed by scripts/test.sh");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.dog_ok(1, &["vm", "list", "-r"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = c.dog(1, &["vdi", "delete", "Bob"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("locked"),
        "{o:?}"
    );
    io.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !c.dog_ok(1, &["vm", "list", "-r"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock outlived its writer"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    c.dog_ok(1, &["vdi", "delete", "Bob"]);
}

#[test]
fn sheepdog_protocol_locks_on_a_cluster_formatted_with_lock() {
    use proto::{opcode, Header, SdResult};
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2", "-l"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "1G"]);
    async fn lock(conn: &client::Connection) -> SdResult {
        let h = Header::request(opcode::LOCK_VDI);
        let payload = proto::padded(b"Alice", 256).unwrap();
        conn.write(h, payload.into()).await.unwrap().result()
    }
    common::rt().block_on(async {
        let first = c.conn(0).await;
        let second = c.conn(1).await;
        assert_eq!(lock(&first).await, SdResult::SUCCESS);
        assert_eq!(lock(&second).await, SdResult::VDI_LOCKED, "a second opener");
        let list = c.dog_ok(1, &["vdi", "lock", "list", "-r"]);
        assert!(list.starts_with("Alice 15d167 "), "{list}");
        // The holder goes away: its lock goes with it.
        drop(first);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lock(&second).await != SdResult::SUCCESS {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock outlived its client"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // dog vdi lock unlock drops a lock whose holder is gone for good.
        c.dog_ok(0, &["vdi", "lock", "unlock", "Alice"]);
        assert_eq!(c.dog_ok(0, &["vdi", "lock", "list", "-r"]), "");
        let o = c.dog(0, &["vdi", "lock", "unlock", "Alice"]);
        assert!(!o.status.success(), "nothing left to unlock");
    });
}

#[test]
fn names_with_blanks_and_colliding_ids() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    // Two names whose hashes give the same first VDI id: the second probes to the next.
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0u32..)
        .find_map(|i| {
            let name = format!("disk-{i}");
            let id = proto::hash::sd_hash_vdi(name.as_bytes());
            seen.insert(id, name.clone()).map(|other| (other, name))
        })
        .unwrap();
    let odd = "Alice's \"Disk\" 1";
    for name in [a.as_str(), b.as_str(), odd] {
        c.dog_ok(0, &["vdi", "create", name, "64M"]);
    }
    for (k, name) in [a.as_str(), b.as_str(), odd].iter().enumerate() {
        let data = pattern(1 << 20, 40 + k as u64);
        let input = write_file(&c, &format!("in{k}"), &data);
        assert!(c
            .dog_stdin(1, &["vdi", "write", name], Some(&input))
            .status
            .success());
        assert!(
            c.dog(0, &["vdi", "read", name, "0", "1M"]).stdout == data,
            "{name}"
        );
    }
    let ids: Vec<String> = c
        .dog_ok(0, &["vdi", "list", "-r"])
        .lines()
        .map(|l| l.to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let first = proto::hash::sd_hash_vdi(a.as_bytes());
    let list = c.dog_ok(0, &["vdi", "list"]);
    assert!(list.contains(&format!("{first:x}")), "{list}");
    assert!(list.contains(&format!("{:x}", first + 1)), "{list}");
    // Deleting the first of the pair leaves the second reachable.
    c.dog_ok(0, &["vdi", "delete", &a]);
    assert!(c.dog(1, &["vdi", "read", &b, "0", "1M"]).status.success());
}

#[test]
fn incremental_backup_between_snapshots_and_restore() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "64M"]);
    let mut data = pattern(8 << 20, 50);
    let input = write_file(&c, "a", &data);
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    c.dog_ok(0, &["vdi", "snapshot", "-s", "s1", "Alice"]);
    let change = pattern(4 << 20, 51);
    let input = write_file(&c, "b", &change);
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice", "2M"], Some(&input))
        .status
        .success());
    data[2 << 20..6 << 20].copy_from_slice(&change);
    c.dog_ok(0, &["vdi", "snapshot", "-s", "s2", "Alice"]);

    let diff = c.dog(1, &["vdi", "backup", "-F", "s1", "-s", "s2", "Alice"]);
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    let full = c.dog(1, &["vdi", "backup", "-s", "s2", "Alice"]);
    assert!(full.status.success());
    assert!(
        diff.stdout.len() < (4 << 20) + 100,
        "only the change: {}",
        diff.stdout.len()
    );
    assert!(
        full.stdout.len() >= 8 << 20,
        "everything: {}",
        full.stdout.len()
    );

    // The working VDI wanders off; restoring the diff on s1 gives s2's contents back.
    let junk = write_file(&c, "junk", &pattern(8 << 20, 52));
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&junk))
        .status
        .success());
    let diff_file = write_file(&c, "diff", &diff.stdout);
    let o = c.dog_stdin(
        0,
        &["vdi", "restore", "-s", "s1", "Alice"],
        Some(&diff_file),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(c.dog(1, &["vdi", "read", "Alice", "0", "8M"]).stdout == data);
    // As the original (041): the restored state is a snapshot of its own (id 3, s2's data),
    // with the working VDI on it.
    assert!(
        c.dog(1, &["vdi", "read", "-s", "3", "Alice", "0", "8M"])
            .stdout
            == data
    );
    let list = c.dog_ok(0, &["vdi", "list", "-r"]);
    assert_eq!(
        list.lines().filter(|l| l.starts_with("s Alice ")).count(),
        3,
        "{list}"
    );
    let o = c.dog_stdin(
        0,
        &["vdi", "restore", "-s", "nosuch", "Alice"],
        Some(&diff_file),
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Snapshot ID 0 or tag nosuch doesn't exist\n"
    );
    // A stream that is not a backup is refused and changes nothing.
    let bad = write_file(&c, "bad", b"not a backup at all");
    let o = c.dog_stdin(0, &["vdi", "restore", "-s", "s1", "Alice"], Some(&bad));
    assert!(!o.status.success());
    assert!(c.dog(1, &["vdi", "read", "Alice", "0", "8M"]).stdout == data);
}

#[test]
fn benchmark_io_overwrites_a_preallocated_vdi_and_says_how_fast() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "-c", "2"]);
    c.dog_ok(0, &["vdi", "create", "-P", "Bench", "16M"]);
    let input = c.tmp.path().join("ones");
    std::fs::write(&input, vec![1u8; 16 << 20]).unwrap();
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Bench"], Some(&input))
        .status
        .success());
    let out = c.dog_ok(
        1,
        &[
            "benchmark",
            "io",
            "-f",
            "-t",
            "20",
            "-w",
            "dynamic",
            "--json",
            "Bench",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["writes"], 20);
    assert_eq!(v["bytes"], 20u64 * (4 << 20));
    assert_eq!(v["in_flight"], 16);
    assert!(v["iops"].as_f64().unwrap() > 0.0, "{v}");
    // The original's text: nothing; and the data is overwritten (zeros).
    assert_eq!(
        c.dog_ok(1, &["benchmark", "io", "-f", "-t", "4", "Bench"]),
        ""
    );
    let back = c.dog(2, &["vdi", "read", "Bench"]);
    assert!(back.stdout.iter().all(|&b| b == 0) && back.stdout.len() == 16 << 20);

    c.dog_ok(0, &["vdi", "create", "Thin", "16M"]);
    let o = c.dog(0, &["benchmark", "io", "-f", "Thin"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "VDI Thin has unallocated data\n"
    );
    let o = c.dog(0, &["benchmark", "io", "-f", "-w", "lazy", "Bench"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("unknown workqueue type: lazy\n"));
}

#[test]
fn a_write_stops_at_the_end_of_the_vdi_as_the_original() {
    // The original's 009 pipes an endless stream into `dog vdi write`.
    let c = Cluster::start(1);
    c.dog_ok(0, &["cluster", "format", "-c", "1"]);
    c.dog_ok(0, &["vdi", "create", "Small", "4M"]);
    let input = c.tmp.path().join("more");
    let data = pattern(6 << 20, 5);
    std::fs::write(&input, &data).unwrap();
    let w = c.dog_stdin(0, &["vdi", "write", "Small"], Some(&input));
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert!(c.dog(0, &["vdi", "read", "Small"]).stdout == data[..4 << 20]);
    // A length past the end is cut off there too.
    let w = c.dog_stdin(0, &["vdi", "write", "Small", "1M", "8M"], Some(&input));
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let back = c.dog(0, &["vdi", "read", "Small"]).stdout;
    assert!(back[1 << 20..] == data[..3 << 20]);
    let o = c.dog_stdin(0, &["vdi", "write", "Small", "5M"], Some(&input));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Write offset is beyond the end of the VDI\n"
    );
}
