//! A node that stops answering (SIGSTOP) while a client writes and reads through another: the
//! scenario every cluster driver must pass, whatever way it notices the stopped node. The
//! stopped node leaves within a bound, I/O through node 0 goes on in the new epoch, every
//! acknowledged write reads back through every other node; requests queued on the stopped
//! node while it was stopped get an error or the newest bytes when it resumes, never its old
//! copies; it rejoins as a returning node (a restart of itself, same pid) and reads through it
//! give the newest bytes. A stopped node is never asked anything it must answer (the
//! harness's `wait_members` would wait for its answer for ever).

use super::{node_count, pattern, rt, Cluster};
use proto::{flags, opcode, Header, Oid, SdResult, Vid};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a request through a live node may take while a peer is stopped: the peer timeout
/// (10 s), the driver's and the gateway's retry, generously (a correctness bound).
pub const STALL_BOUND: Duration = Duration::from_secs(60);

/// What every sheep logs when it restarts itself to rejoin (`restart_self`).
pub const RESTARTED: &str = "this node stops serving I/O and rejoins as a new member";

pub fn signal(c: &Cluster, i: usize, sig: i32) {
    let pid = c.nodes[i].child.as_ref().expect("running").id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Members node `i` reports; `None` if it does not answer within 2 s.
pub fn members(c: &Cluster, i: usize) -> Option<usize> {
    rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(2), node_count(c.port(i)))
            .await
            .ok()
            .flatten()
    })
}

/// Waits until each of `nodes` reports `n` members; returns how long that took. Panics
/// after `bound`.
pub fn wait_members_of(c: &Cluster, nodes: &[usize], n: usize, bound: Duration) -> Duration {
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

pub fn write(c: &Cluster, i: usize, name: &str, offset: &str, data: &[u8]) {
    let p = c.tmp.path().join(name);
    std::fs::write(&p, data).unwrap();
    let o = c.dog_stdin(i, &["vdi", "write", "Alice", offset], Some(&p));
    assert!(
        o.status.success(),
        "write through node {i}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn assert_reads(c: &Cluster, i: usize, want: &[u8]) {
    let o = c.dog(i, &["vdi", "read", "Alice", "0", &want.len().to_string()]);
    assert!(
        o.status.success(),
        "read through node {i}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout == want, "node {i} read other bytes");
}

pub fn log_of(c: &Cluster, i: usize) -> String {
    std::fs::read_to_string(c.tmp.path().join(format!("sheep{i}.err"))).unwrap_or_default()
}

/// The formatted cluster of `c` (3 copies) with VDI Alice holding `len` known bytes.
pub fn alice(c: &Cluster, len: usize) -> Vec<u8> {
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "1G"]);
    let data = pattern(len, 21);
    write(c, 0, "data", "0", &data);
    data
}

/// One gateway request on `s` and its answer; `None` if the socket fails (or no answer in
/// the read timeout).
pub fn object_request(s: &mut TcpStream, h: Header, payload: &[u8]) -> Option<(Header, Vec<u8>)> {
    s.write_all(h.as_bytes()).ok()?;
    s.write_all(payload).ok()?;
    answer(s)
}

fn answer(s: &mut TcpStream) -> Option<(Header, Vec<u8>)> {
    let mut hb = [0u8; proto::HEADER_SIZE];
    s.read_exact(&mut hb).ok()?;
    let r = Header::from_bytes(&hb);
    let mut d = vec![0u8; r.data_length() as usize];
    s.read_exact(&mut d).ok()?;
    Some((r, d))
}

const BLOCK: usize = 64 << 10;
const OBJ: usize = 4 << 20;

fn vid() -> Vid {
    Vid(proto::hash::sd_hash_vdi(b"Alice"))
}

fn read_header(id: u32, at: usize) -> Header {
    let mut h = Header::request(opcode::READ_OBJ);
    h.set_id(id)
        .set_data_length(BLOCK as u32)
        .set_oid(Oid::data(vid(), (at / OBJ) as u32).0)
        .set_obj_offset((at % OBJ) as u64);
    h
}

/// Acknowledged writes: (offset in the VDI, bytes, when the answer came).
type Acked = Arc<Mutex<Vec<(usize, Vec<u8>, Instant)>>>;

/// What one run of the scenario saw.
#[derive(Debug)]
pub struct Stalled {
    /// From SIGSTOP until every other node counted one member less.
    pub gone: Duration,
    /// Writes acknowledged through node 0, in all.
    pub writes: usize,
    /// The slowest write and read back through node 0.
    pub slowest: Duration,
    /// Reads queued on the stopped node: how many were refused or cut off when it resumed
    /// (none gave old bytes: the scenario fails then), and how many gave the newest bytes.
    pub refused: usize,
    pub served: usize,
    /// From SIGCONT until every node counted every member again.
    pub back: Duration,
}

/// Runs the scenario on `c` (formatted by `alice`, holding `shadow`): node `stopped` is
/// stopped while node 0 writes and reads, must leave within `leave_bound`, and when continued
/// must log `restarted` (how its driver tells it restarted itself to rejoin).
pub fn io_goes_on_while_a_node_is_stopped(
    c: &mut Cluster,
    mut shadow: Vec<u8>,
    stopped: usize,
    leave_bound: Duration,
    restarted: &str,
) -> Stalled {
    assert!(stopped != 0, "the I/O goes through node 0");
    let n = c.nodes.len();
    let others: Vec<usize> = (0..n).filter(|&i| i != stopped).collect();
    // Writes of unique bytes and reads of them, one at a time, through node 0; every
    // acknowledged write is kept with the time it was answered.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let port = c.port(0);
    let io = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(STALL_BOUND)).unwrap();
            let mut slowest = Duration::ZERO;
            for n in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let at = (n as usize * 7919 % 256) * BLOCK;
                let bytes = pattern(BLOCK, 1000 + n);
                let mut h = Header::request(opcode::WRITE_OBJ);
                h.set_id(2 * n as u32)
                    .add_flags(flags::CMD_WRITE)
                    .set_data_length(BLOCK as u32)
                    .set_oid(Oid::data(vid(), (at / OBJ) as u32).0)
                    .set_obj_offset((at % OBJ) as u64);
                let t = Instant::now();
                let (r, _) = object_request(&mut s, h, &bytes).expect("a write answered");
                assert_eq!(r.sd_result(), SdResult::SUCCESS, "write {n}");
                acked
                    .lock()
                    .unwrap()
                    .push((at, bytes.clone(), Instant::now()));
                let h = read_header(2 * n as u32 + 1, at);
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
    signal(c, stopped, libc::SIGSTOP);
    let gone = wait_members_of(c, &others, n - 1, leave_bound);
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
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    for (at, bytes, _) in &acked {
        shadow[*at..*at + BLOCK].copy_from_slice(bytes);
    }
    for &i in &others {
        assert_reads(c, i, &shadow);
    }
    // Reads of blocks written after the leave (the stopped node's copies of them are old),
    // queued on the stopped node: the kernel takes the connections and the bytes, and the
    // node finds them the moment it resumes, before it can know it was declared gone.
    let mut queued: Vec<(TcpStream, usize)> = Vec::new();
    let mut blocks: Vec<usize> = acked.iter().filter(|w| w.2 > left).map(|w| w.0).collect();
    blocks.dedup();
    for (k, &at) in blocks.iter().take(8).enumerate() {
        let mut s = TcpStream::connect(("127.0.0.1", c.port(stopped))).unwrap();
        s.set_read_timeout(Some(STALL_BOUND)).unwrap();
        s.write_all(read_header(k as u32, at).as_bytes()).unwrap();
        queued.push((s, at));
    }
    signal(c, stopped, libc::SIGCONT);
    let t = Instant::now();
    let (mut refused, mut served) = (0, 0);
    for (mut s, at) in queued {
        match answer(&mut s) {
            Some((r, d)) if r.sd_result() == SdResult::SUCCESS => {
                assert!(
                    d[..] == shadow[at..at + BLOCK],
                    "the resumed node served an old copy of block {at} ({:?} after SIGCONT)",
                    t.elapsed()
                );
                served += 1;
            }
            _ => refused += 1,
        }
    }
    // Back: it rejoins as a returning node and serves the newest bytes.
    let all: Vec<usize> = (0..n).collect();
    let back = wait_members_of(c, &all, n, Duration::from_secs(30));
    let log = log_of(c, stopped);
    assert!(log.contains(restarted), "it did not restart itself:\n{log}");
    for i in std::iter::once(stopped).chain(others) {
        assert_reads(c, i, &shadow);
    }
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
    let info = c.dog_ok(0, &["cluster", "info"]);
    assert!(info.contains("running"), "{info}");
    Stalled {
        gone,
        writes: acked.len(),
        slowest,
        refused,
        served,
        back,
    }
}

/// Node `paused` of `c` (formatted by `alice`, holding `data`) is stopped for `pause`, well
/// under its driver's timeout, and continued: well past the timeout nobody has left, no epoch
/// was added, it did not restart, and every node serves the data.
pub fn a_short_pause_changes_nothing(c: &Cluster, data: &[u8], paused: usize, pause: Duration) {
    let n = c.nodes.len();
    let before = c.dog_ok(0, &["cluster", "info"]);
    signal(c, paused, libc::SIGSTOP);
    std::thread::sleep(pause);
    signal(c, paused, libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(4));
    for i in 0..n {
        assert_eq!(members(c, i), Some(n), "node {i}");
        assert_reads(c, i, data);
    }
    assert_eq!(c.dog_ok(0, &["cluster", "info"]), before);
    let log = log_of(c, paused);
    assert!(!log.contains(RESTARTED), "{log}");
}
