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

/// One gateway request on `s` and its answer; `None` if the socket fails (or no answer in
/// the read timeout).
fn object_request(
    s: &mut std::net::TcpStream,
    h: proto::Header,
    payload: &[u8],
) -> Option<(proto::Header, Vec<u8>)> {
    use std::io::{Read, Write};
    s.write_all(h.as_bytes()).ok()?;
    s.write_all(payload).ok()?;
    let mut hb = [0u8; proto::HEADER_SIZE];
    s.read_exact(&mut hb).ok()?;
    let r = proto::Header::from_bytes(&hb);
    let mut d = vec![0u8; r.data_length() as usize];
    s.read_exact(&mut d).ok()?;
    Some((r, d))
}

/// Longest a request through a live node may take while a peer is stopped: the peer timeout
/// (10 s), the driver's (5 s) and the gateway's retry, generously (a correctness bound).
const STALL_BOUND: Duration = Duration::from_secs(60);

/// Acknowledged writes: (offset in the VDI, bytes, when the answer came).
type Acked = std::sync::Arc<std::sync::Mutex<Vec<(usize, Vec<u8>, Instant)>>>;

#[test]
fn io_through_another_node_goes_on_while_a_peer_is_stopped() {
    use proto::{flags, opcode, Header, Oid, SdResult, Vid};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut c = Cluster::start(4);
    let mut shadow = alice(&c, 16 << 20);
    let vid = Vid(proto::hash::sd_hash_vdi(b"Alice"));
    let stopped = 2;
    const BLOCK: usize = 64 << 10;
    const OBJ: usize = 4 << 20;
    // Writes of unique bytes and reads of them, one at a time, through node 0; every
    // acknowledged write is kept with the time it was answered.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let port = c.port(0);
    let io = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(STALL_BOUND)).unwrap();
            let mut slowest = Duration::ZERO;
            for n in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let at = (n as usize * 7919 % 256) * BLOCK;
                let (idx, off) = ((at / OBJ) as u32, (at % OBJ) as u64);
                let oid = Oid::data(vid, idx);
                let bytes = pattern(BLOCK, 1000 + n);
                let mut h = Header::request(opcode::WRITE_OBJ);
                h.set_id(2 * n as u32)
                    .add_flags(flags::CMD_WRITE)
                    .set_data_length(BLOCK as u32)
                    .set_oid(oid.0)
                    .set_obj_offset(off);
                let t = Instant::now();
                let (r, _) = object_request(&mut s, h, &bytes).expect("a write answered");
                assert_eq!(r.sd_result(), SdResult::SUCCESS, "write {n}");
                acked
                    .lock()
                    .unwrap()
                    .push((at, bytes.clone(), Instant::now()));
                let mut h = Header::request(opcode::READ_OBJ);
                h.set_id(2 * n as u32 + 1)
                    .set_data_length(BLOCK as u32)
                    .set_oid(oid.0)
                    .set_obj_offset(off);
                let (r, d) = object_request(&mut s, h, &[]).expect("a read answered");
                assert_eq!(r.sd_result(), SdResult::SUCCESS, "read {n}");
                assert!(d == bytes, "read {n} did not give back write {n}");
                slowest = slowest.max(t.elapsed());
                assert!(
                    t.elapsed() < STALL_BOUND,
                    "write and read {n}: {:?}",
                    t.elapsed()
                );
            }
            slowest
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    signal(&c, stopped, libc::SIGSTOP);
    let gone = wait_members_of(&c, &[0, 1, 3], 3, Duration::from_secs(30));
    let left = Instant::now();
    // I/O goes on in the new epoch: writes acknowledged after the leave, within the bound.
    let deadline = left + STALL_BOUND;
    loop {
        let after = acked.lock().unwrap().iter().filter(|w| w.2 > left).count();
        if after >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline && !io.is_finished(),
            "only {after} writes acknowledged in {STALL_BOUND:?} after node {stopped} left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let slowest = io.join().expect("the I/O thread");
    let writes = acked.lock().unwrap().len();
    eprintln!(
        "SIGSTOP -> 3 members: {gone:?}; {writes} writes acknowledged through node 0, the \
         slowest write and read {slowest:?}"
    );
    for (at, bytes, _) in acked.lock().unwrap().iter() {
        shadow[*at..*at + BLOCK].copy_from_slice(bytes);
    }
    for i in [0, 1, 3] {
        assert_reads(&c, i, &shadow);
    }
    // Back: it rejoins as a returning node and serves the newest bytes.
    signal(&c, stopped, libc::SIGCONT);
    wait_members_of(&c, &[0, 1, 2, 3], 4, Duration::from_secs(30));
    assert!(log_of(&c, stopped).contains(DECLARED), "it did not restart");
    for i in [stopped, 0, 1, 3] {
        assert_reads(&c, i, &shadow);
    }
    assert!(c.nodes[stopped]
        .child
        .as_mut()
        .unwrap()
        .try_wait()
        .unwrap()
        .is_none());
}
