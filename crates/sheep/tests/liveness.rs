//! Liveness with the local driver, with real processes: a sheep that stops answering (SIGSTOP)
//! leaves the membership within the driver's timeout, reads go on through the others, and when
//! it comes back (SIGCONT) it restarts itself and rejoins as a returning node whose old copies
//! are never served. A short pause changes nothing. A stopped node is never asked anything
//! here (the harness's `wait_members` would wait for its answer for ever).

mod common;

use common::{node_count, pattern, rt, Cluster};
use std::time::{Duration, Instant};

fn signal(c: &Cluster, i: usize, sig: i32) {
    let pid = c.nodes[i].child.as_ref().expect("running").id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Members node `i` reports; `None` if it does not answer within 2 s.
fn members(c: &Cluster, i: usize) -> Option<usize> {
    rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(2), node_count(c.port(i)))
            .await
            .ok()
            .flatten()
    })
}

/// Waits until each of `nodes` reports `n` members; returns how long that took. Panics
/// after `bound`.
fn wait_members_of(c: &Cluster, nodes: &[usize], n: usize, bound: Duration) -> Duration {
    let t = Instant::now();
    for &i in nodes {
        loop {
            let m = members(c, i);
            if m == Some(n) {
                break;
            }
            assert!(
                t.elapsed() < bound,
                "node {i} did not see {n} members within {bound:?} (last: {m:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    t.elapsed()
}

fn write(c: &Cluster, i: usize, name: &str, offset: &str, data: &[u8]) {
    let p = c.tmp.path().join(name);
    std::fs::write(&p, data).unwrap();
    let o = c.dog_stdin(i, &["vdi", "write", "Alice", offset], Some(&p));
    assert!(
        o.status.success(),
        "write through node {i}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn assert_reads(c: &Cluster, i: usize, want: &[u8]) {
    let o = c.dog(i, &["vdi", "read", "Alice", "0", &want.len().to_string()]);
    assert!(
        o.status.success(),
        "read through node {i}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout == want, "node {i} read other bytes");
}

fn log_of(c: &Cluster, i: usize) -> String {
    std::fs::read_to_string(c.tmp.path().join(format!("sheep{i}.err"))).unwrap_or_default()
}

const DECLARED: &str = "declared this node gone";

/// The formatted cluster of `c` (3 copies) with VDI Alice holding `len` known bytes.
fn alice(c: &Cluster, len: usize) -> Vec<u8> {
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "1G"]);
    let data = pattern(len, 21);
    write(c, 0, "data", "0", &data);
    data
}

#[test]
fn a_stopped_node_leaves_within_the_timeout_and_rejoins_when_it_resumes() {
    let mut c = Cluster::start(4);
    let mut data = alice(&c, 40 << 20);
    let (stopped, others) = (2, [0, 1, 3]);

    signal(&c, stopped, libc::SIGSTOP);
    let gone = wait_members_of(&c, &others, 3, Duration::from_secs(20));
    eprintln!("SIGSTOP -> 3 members on every other node: {gone:?} (timeout 5 s)");
    assert!(
        gone >= Duration::from_secs(4),
        "left after {gone:?}: before its heartbeat was 5 s old"
    );
    for i in others {
        assert_reads(&c, i, &data);
    }
    // Writes go on without it: the copies it holds are stale from now on.
    let new = pattern(8 << 20, 22);
    write(&c, 1, "new", "0", &new);
    data[..new.len()].copy_from_slice(&new);
    for i in others {
        assert_reads(&c, i, &data);
    }

    signal(&c, stopped, libc::SIGCONT);
    let back = wait_members_of(&c, &[0, 1, 2, 3], 4, Duration::from_secs(20));
    eprintln!("SIGCONT -> 4 members on every node: {back:?}");
    assert!(
        c.nodes[stopped]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the node restarts in place (same pid)"
    );
    let log = log_of(&c, stopped);
    assert!(log.contains(DECLARED), "it did not restart itself:\n{log}");
    for i in [stopped, 0, 1, 3] {
        assert_reads(&c, i, &data);
    }
    let info = c.dog_ok(0, &["cluster", "info"]);
    assert!(info.contains("running"), "{info}");
}

#[test]
fn a_short_pause_changes_nothing() {
    let c = Cluster::start(3);
    let data = alice(&c, 8 << 20);
    let before = c.dog_ok(0, &["cluster", "info"]);
    signal(&c, 1, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(2));
    signal(&c, 1, libc::SIGCONT);
    // Well past the timeout: nobody left, no epoch was added, nobody restarted.
    std::thread::sleep(Duration::from_secs(6));
    for i in 0..3 {
        assert_eq!(members(&c, i), Some(3), "node {i}");
        assert_reads(&c, i, &data);
    }
    assert_eq!(c.dog_ok(0, &["cluster", "info"]), before);
    let log = log_of(&c, 1);
    assert!(!log.contains(DECLARED), "{log}");
}

#[test]
fn the_timeout_is_a_driver_option() {
    let shm = tempfile::tempdir().unwrap();
    let driver = format!("local:{},timeout=2000", shm.path().join("shm").display());
    let c = Cluster::start_driver(3, &driver);
    let data = alice(&c, 8 << 20);
    signal(&c, 2, libc::SIGSTOP);
    let gone = wait_members_of(&c, &[0, 1], 2, Duration::from_secs(10));
    eprintln!("timeout=2000: SIGSTOP -> 2 members: {gone:?}");
    assert!(
        gone >= Duration::from_secs(1),
        "{gone:?}: before the 2 s timeout"
    );
    assert!(
        gone < Duration::from_secs(5),
        "{gone:?}: the default timeout?"
    );
    signal(&c, 2, libc::SIGCONT);
    let back = wait_members_of(&c, &[0, 1, 2], 3, Duration::from_secs(20));
    eprintln!("timeout=2000: SIGCONT -> 3 members: {back:?}");
    assert!(log_of(&c, 2).contains(DECLARED));
    for i in 0..3 {
        assert_reads(&c, i, &data);
    }
}
