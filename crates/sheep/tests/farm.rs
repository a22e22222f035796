//! `dog cluster snapshot save|list|load|show` (the original's farm, functional test 030):
//! the snapshots of a cluster saved into a local directory, deduplicated, listed, shown, and
//! loaded into a freshly formatted cluster, where every VDI reads back what it held.

mod common;

use common::{pattern, Cluster};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `data` to the start of VDI `name` through node 0.
fn write(c: &Cluster, name: &str, data: &[u8]) {
    let input = c.tmp.path().join("input");
    std::fs::write(&input, data).unwrap();
    let w = c.dog_stdin(0, &["vdi", "write", name], Some(&input));
    assert!(w.status.success(), "{}", stderr(&w));
}

fn read(c: &Cluster, args: &[&str]) -> Vec<u8> {
    let mut a = vec!["vdi", "read"];
    a.extend_from_slice(args);
    let o = c.dog(1, &a);
    assert!(o.status.success(), "{a:?}: {}", stderr(&o));
    o.stdout
}

fn files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("objects"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum()
}

#[test]
fn a_cluster_snapshot_is_saved_listed_and_loaded_into_a_new_cluster() {
    let farm_dir = tempfile::tempdir().unwrap();
    let farm = farm_dir.path().join("farm");
    let farm_s = farm.to_str().unwrap();
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "-c", "3"]);
    c.dog_ok(0, &["vdi", "create", "test1", "10M"]);
    c.dog_ok(0, &["vdi", "create", "-c", "2", "test2", "10M"]);

    // Nothing to save before there are snapshots.
    let o = c.dog(0, &["cluster", "snapshot", "save", "s0", farm_s]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        format!(
            "Cannot execute. It may be caused by:\n1. The cluster is empty.\n2. All VDIs of \
             the cluster don't have snapshots.\nFail to save snapshot to path: {farm_s}.\n"
        )
    );
    let o = c.dog(0, &["cluster", "snapshot", "save", "1s", farm_s]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).starts_with("Tag should not start with number.\n"));

    let (a1, b1) = (pattern(10 << 20, 1), pattern(10 << 20, 2));
    write(&c, "test1", &a1);
    write(&c, "test2", &b1);
    c.dog_ok(0, &["vdi", "snapshot", "test1"]);
    c.dog_ok(0, &["vdi", "snapshot", "test2"]);
    c.dog_ok(0, &["cluster", "snapshot", "save", "s1", farm_s]);
    let after_one = files(&farm);
    let list = c.dog_ok(2, &["cluster", "snapshot", "list", farm_s]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], "Index\t\tTag\t\tSnapshot Time");
    assert!(lines[1].starts_with("1\t\ts1\t\t"), "{list}");

    // Half of each VDI changes: the second save stores only what is new.
    let (mut a2, mut b2) = (a1.clone(), b1.clone());
    a2[..4 << 20].copy_from_slice(&pattern(4 << 20, 3));
    b2[..4 << 20].copy_from_slice(&pattern(4 << 20, 4));
    write(&c, "test1", &a2);
    write(&c, "test2", &b2);
    c.dog_ok(0, &["vdi", "snapshot", "test1"]);
    c.dog_ok(0, &["vdi", "snapshot", "test2"]);
    c.dog_ok(0, &["cluster", "snapshot", "save", "s2", farm_s]);
    let o = c.dog(0, &["cluster", "snapshot", "save", "s2", farm_s]);
    assert!(
        stderr(&o).starts_with("Snapshot tag has already been used"),
        "{o:?}"
    );
    let list = c.dog_ok(2, &["cluster", "snapshot", "list", farm_s]);
    assert!(
        list.lines().nth(2).unwrap().starts_with("2\t\ts2\t\t"),
        "{list}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&c.dog_ok(2, &["cluster", "snapshot", "list", "--json", farm_s]))
            .unwrap();
    assert_eq!(j[1]["index"], 2);
    assert_eq!(j[1]["tag"], "s2");
    let added = files(&farm) - after_one;
    assert!(
        added < after_one,
        "the second save added {added} files, the first wrote {after_one}"
    );
    let show = c.dog_ok(0, &["cluster", "snapshot", "show", "s2", farm_s]);
    assert_eq!(show.lines().count(), 4, "{show}");
    assert!(show.contains(", name: test1, tag: "), "{show}");
    drop(c);

    // Into a new cluster: s1 has one snapshot of each VDI, and a working VDI on it.
    let n = Cluster::start(3);
    n.dog_ok(0, &["cluster", "format"]);
    let o = n.dog(0, &["cluster", "snapshot", "load", "s1", farm_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = n.dog_ok(1, &["vdi", "list", "-r"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(read(&n, &["test1"]) == a1 && read(&n, &["-s", "1", "test1"]) == a1);
    assert!(read(&n, &["test2"]) == b1);
    assert!(
        list.lines()
            .any(|l| l.starts_with("s test2 1 ") && l.contains(" 2 ")),
        "{list}"
    );
    // Writes go to the new working VDI, not the loaded snapshot.
    write(&n, "test1", &a2);
    assert!(read(&n, &["-s", "1", "test1"]) == a1);
    drop(n);

    // s2 by its index, into an unformatted cluster: both generations come back.
    let m = Cluster::start(3);
    let o = m.dog(0, &["cluster", "snapshot", "load", "2", farm_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(read(&m, &["-s", "1", "test1"]) == a1);
    assert!(read(&m, &["-s", "2", "test1"]) == a2);
    assert!(read(&m, &["test1"]) == a2);
    assert!(read(&m, &["-s", "1", "test2"]) == b1 && read(&m, &["test2"]) == b2);
    // Only the VDIs named (the cluster is not empty: loading formats it, after asking).
    let yes = m.tmp.path().join("yes");
    std::fs::write(&yes, "yes\n").unwrap();
    let o = m.dog_stdin(
        0,
        &["cluster", "snapshot", "load", "s2", farm_s, "test2"],
        Some(&yes),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let list = m.dog_ok(1, &["vdi", "list", "-r"]);
    assert!(!list.contains("test1"), "{list}");
    assert!(read(&m, &["test2"]) == b2);
    let o = m.dog(0, &["cluster", "snapshot", "load", "s9", farm_s]);
    assert!(
        stderr(&o).starts_with("Snapshot index or tag does not exist.\n"),
        "{o:?}"
    );
}
