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
    for i in [2, 3, 0] {
        let got = read_vdi(&c, i, "Alice", len);
        assert!(
            got == newer,
            "read through node {i} right after the return: block {:?} differs",
            first_diff(&got, &newer)
        );
    }
}
