//! Liveness with the local driver, with real processes: a sheep that stops answering (SIGSTOP)
//! leaves the membership within the driver's timeout, reads go on through the others, and when
//! it comes back (SIGCONT) it restarts itself and rejoins as a returning node whose old copies
//! are never served. A short pause changes nothing. A stopped node is never asked anything
//! here (the harness's `wait_members` would wait for its answer for ever).

mod common;

use common::stall::{
    alice, assert_reads, io_goes_on_while_a_node_is_stopped, log_of, members, signal,
    wait_members_of, write,
};
use common::{pattern, Cluster};
use std::time::Duration;

const DECLARED: &str = "declared this node gone";

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

#[test]
fn io_through_another_node_goes_on_while_a_peer_is_stopped() {
    let mut c = Cluster::start(4);
    let shadow = alice(&c, 16 << 20);
    let r =
        io_goes_on_while_a_node_is_stopped(&mut c, shadow, 2, Duration::from_secs(30), DECLARED);
    eprintln!("local driver, node 2 stopped: {r:?}");
}
