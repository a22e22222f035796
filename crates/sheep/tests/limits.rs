//! A node keeps serving when clients misbehave, and is not exposed by default: connection
//! limits, idle timeouts, payload checks from the header, back-pressure on clients that never
//! read their answers, and the default listen address. Real `sheep` processes, raw sockets.

mod common;

use common::{bin, free_port, Cluster};
use proto::nbd::{self, cmd, opt};
use proto::{flags, opcode, Header, Oid, SdNode, SdResult, Vid, HEADER_SIZE};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A blocking connection to `addr` with a read timeout.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn request(op: u8, id: u32, len: u32) -> Header {
    let mut h = Header::request(op);
    h.set_id(id).set_data_length(len);
    h
}

/// Reads one answer: its header and payload.
fn answer(s: &mut TcpStream) -> std::io::Result<(Header, Vec<u8>)> {
    let mut hb = [0u8; HEADER_SIZE];
    s.read_exact(&mut hb)?;
    let h = Header::from_bytes(&hb);
    let mut data = vec![0u8; h.data_length() as usize];
    s.read_exact(&mut data)?;
    Ok((h, data))
}

/// Sends a request (and its payload) and reads its answer.
fn ask(s: &mut TcpStream, h: Header, payload: &[u8]) -> std::io::Result<(Header, Vec<u8>)> {
    s.write_all(h.as_bytes())?;
    s.write_all(payload)?;
    answer(s)
}

/// GET_NODE_LIST on `s`: the node answers it.
fn node_list(s: &mut TcpStream, id: u32) -> std::io::Result<()> {
    let (h, _) = ask(s, request(opcode::GET_NODE_LIST, id, 80 * 64), &[])?;
    assert_eq!(h.id(), id);
    assert_eq!(h.sd_result(), SdResult::SUCCESS);
    Ok(())
}

/// True when the server closed `s`: a read sees end of file (or a reset) within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            // Answers sent before the close are read on the way.
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// Memory of the kernel's TCP buffers, machine-wide, in MiB (/proc/net/sockstat, pages).
fn tcp_buffers_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages: u64 = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|&w| w != "mem").nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096 / (1 << 20)
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn pid(c: &Cluster, i: usize) -> u32 {
    c.nodes[i].child.as_ref().expect("running").id()
}

/// The sheep's log (foreground sheep log to stderr, which the harness keeps).
fn log_of(c: &Cluster, i: usize) -> String {
    std::fs::read_to_string(c.tmp.path().join(format!("sheep{i}.err"))).unwrap_or_default()
}

fn inode_of(name: &str) -> Oid {
    Oid::inode(Vid(proto::hash::sd_hash_vdi(name.as_bytes())))
}

/// Time each answer of the well-behaved client may take at most: a correctness bound (it is
/// answered at all while the flood holds the node's buffers), not a measure of speed.
const ANSWER_BOUND: Duration = Duration::from_secs(30);

/// Latencies of `n` requests of a well-behaved client on `s`, in turn GET_NODE_LIST, a 4 KiB
/// write to `data` (an object of the VDI, created beforehand) and a 4 KiB read of what it
/// wrote, each answered within ANSWER_BOUND and the read giving back the bytes written.
/// Returns (median, worst).
fn latency(s: &mut TcpStream, data: Oid, n: u32) -> (Duration, Duration) {
    s.set_read_timeout(Some(ANSWER_BOUND)).unwrap();
    let mut times = Vec::new();
    for i in 0..n {
        let id = 10_000 + i;
        let at = (i as u64 / 3 % 64) * 4096;
        let t = Instant::now();
        match i % 3 {
            0 => node_list(s, id).expect("node list answered"),
            1 => {
                let bytes = common::pattern(4096, id as u64);
                let mut h = request(opcode::WRITE_OBJ, id, 4096);
                h.add_flags(flags::CMD_WRITE)
                    .set_oid(data.0)
                    .set_obj_offset(at);
                let (r, _) = ask(s, h, &bytes).expect("write answered");
                assert_eq!(r.sd_result(), SdResult::SUCCESS, "write {id}");
            }
            _ => {
                let mut h = request(opcode::READ_OBJ, id, 4096);
                h.set_oid(data.0).set_obj_offset(at);
                let (r, d) = ask(s, h, &[]).expect("read answered");
                assert_eq!(r.sd_result(), SdResult::SUCCESS, "read {id}");
                assert!(
                    d == common::pattern(4096, id as u64 - 1),
                    "read {id} did not give back the write before it"
                );
            }
        }
        let took = t.elapsed();
        assert!(took < ANSWER_BOUND, "request {id} took {took:?}");
        times.push(took);
    }
    times.sort();
    (times[times.len() / 2], *times.last().unwrap())
}

/// Opens a connection that the node serves (a slot of a full listener frees once the node
/// has seen the client of an earlier one go: retried for a while).
fn served(addr: SocketAddr, id: u32) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(addr);
        if node_list(&mut s, id).is_ok() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no connection to {addr} was served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An NBD connection in the transmission phase on `export` (EXPORT_NAME, simple replies), or
/// the error that ended the handshake.
fn try_nbd(port: u16, export: &str) -> std::io::Result<TcpStream> {
    let mut s = connect(local(port));
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting)?;
    assert_eq!(&greeting[..8], &nbd::NBDMAGIC.to_be_bytes());
    s.write_all(&(nbd::CLIENT_FLAG_FIXED_NEWSTYLE | nbd::CLIENT_FLAG_NO_ZEROES).to_be_bytes())?;
    let mut o = nbd::IHAVEOPT.to_be_bytes().to_vec();
    o.extend_from_slice(&opt::EXPORT_NAME.to_be_bytes());
    o.extend_from_slice(&(export.len() as u32).to_be_bytes());
    o.extend_from_slice(export.as_bytes());
    s.write_all(&o)?;
    let mut size_flags = [0u8; 10];
    s.read_exact(&mut size_flags)?;
    Ok(s)
}

fn nbd_request(kind: u16, handle: u64, offset: u64, length: u32) -> [u8; nbd::REQUEST_SIZE] {
    nbd::Request {
        flags: 0,
        kind,
        handle,
        offset,
        length,
    }
    .encode()
}

/// An NBD read; returns its data (the error must be 0).
fn nbd_read(s: &mut TcpStream, handle: u64, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    s.write_all(&nbd_request(cmd::READ, handle, offset, len))?;
    let mut r = [0u8; 16];
    s.read_exact(&mut r)?;
    assert_eq!(&r[..4], &nbd::SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&r[4..8], &[0u8; 4], "nbd read error");
    assert_eq!(&r[8..], &handle.to_be_bytes());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d)?;
    Ok(d)
}

/// One flooding client: pipelines `h` (ids counting up) without ever reading an answer,
/// until `stop`. `sent` counts the requests written (taken by the sheep, or still in the
/// kernel's socket buffers: a write that blocks is the sheep not reading, back-pressure).
fn flood(addr: SocketAddr, h: Header, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut id = 1u32;
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        for _ in 0..16 {
            let mut r = h;
            r.set_id(id);
            id += 1;
            buf.extend_from_slice(r.as_bytes());
        }
        let mut at = 0;
        while at < buf.len() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.write(&buf[at..]) {
                Ok(n) => {
                    at += n;
                    sent.fetch_add(n as u64 / HEADER_SIZE as u64, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }
}

/// One flooding NBD client: pipelines 4 MiB reads without ever reading a reply, until
/// `stop`.
fn nbd_flood(port: u16, export: &str, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let Ok(mut s) = try_nbd(port, export) else {
        return;
    };
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut handle = 1u64;
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        for _ in 0..16 {
            buf.extend_from_slice(&nbd_request(cmd::READ, handle, 0, 4 << 20));
            handle += 1;
        }
        let mut at = 0;
        while at < buf.len() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.write(&buf[at..]) {
                Ok(n) => {
                    at += n;
                    sent.fetch_add(n as u64 / nbd::REQUEST_SIZE as u64, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }
}

/// The flood: connections that pipeline requests and never read an answer. The Sheepdog ones
/// read the whole inode object (12,587,576 bytes), the largest answer a cluster of the
/// default object size gives; the NBD ones read 4 MiB at a time. Every connection alone
/// could pin more than a 256 MiB node-wide budget allows for all of them.
const FLOODERS: usize = 160;
const NBD_FLOODERS: usize = 40;
/// The node-wide budget of buffered bytes (sheep's default --max-buffered), in MiB.
const MAX_BUFFERED_MIB: u64 = 256;
/// What a connection holds besides the budget (its read and write buffers, a small request
/// it may always have in flight, its tasks and socket), generously, in MiB.
const CONN_OVERHEAD_MIB: u64 = 1;
/// The node's own memory besides (allocator slack, the store's and the gateway's buffers of
/// requests in flight), in MiB.
const NODE_SLACK_MIB: u64 = 128;

#[test]
fn clients_that_never_read_cannot_exhaust_memory_and_others_are_served() {
    let c = Cluster::start(1);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "1G"]);
    // The object the well-behaved client writes and reads, created by a first write.
    let mut zero = tempfile::NamedTempFile::new().unwrap();
    zero.write_all(&[0u8; 4096]).unwrap();
    let out = c.dog_stdin(
        0,
        &["vdi", "write", "Alice", "0", "4096"],
        Some(zero.path()),
    );
    assert!(out.status.success(), "dog vdi write: {out:?}");
    let inode = inode_of("Alice");
    let data = Oid::data(inode.vid(), 0);
    let pid = pid(&c, 0);
    let addr = local(c.port(0));
    let nbd_port = c.nodes[0].nbd_port;
    let mut good = connect(addr);
    node_list(&mut good, 1).unwrap();
    // The well-behaved client without a flood, to compare with.
    let (calm_median, calm_worst) = latency(&mut good, data, 300);
    let rss_before = rss_kib(pid) / 1024;
    let bound = rss_before
        + MAX_BUFFERED_MIB
        + (FLOODERS + NBD_FLOODERS) as u64 * CONN_OVERHEAD_MIB
        + NODE_SLACK_MIB;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..FLOODERS {
        let mut h = request(opcode::READ_OBJ, 0, proto::inode::SD_INODE_SIZE as u32);
        h.set_oid(inode.0);
        let (stop, sent) = (stop.clone(), sent.clone());
        threads.push(std::thread::spawn(move || flood(addr, h, stop, sent)));
    }
    for _ in 0..NBD_FLOODERS {
        let (stop, sent) = (stop.clone(), sent.clone());
        threads.push(std::thread::spawn(move || {
            nbd_flood(nbd_port, "Alice", stop, sent)
        }));
    }
    // Let the flood pile up until the sheep stops taking requests, sampling its memory (and
    // stopping early, before the machine suffers, if the bound does not hold).
    let mut peak = 0;
    let mut tcp_peak = 0;
    let mut last_sent = 0;
    let mut still = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) && peak <= bound {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(rss_kib(pid) / 1024);
        tcp_peak = tcp_peak.max(tcp_buffers_mib());
        let now = sent.load(Ordering::Relaxed);
        still = if now == last_sent { still + 1 } else { 0 };
        last_sent = now;
        if still >= 8 && t0.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let settled = t0.elapsed();
    // The well-behaved client, during the flood: every answer within the bound, and right.
    let (flood_median, flood_worst) = if peak <= bound {
        latency(&mut good, data, 300)
    } else {
        (Duration::ZERO, Duration::ZERO)
    };
    for _ in 0..8 {
        peak = peak.max(rss_kib(pid) / 1024);
        std::thread::sleep(Duration::from_millis(100));
    }
    // A new client is served too, Sheepdog and NBD.
    let newcomer = peak <= bound && node_list(&mut connect(addr), 7).is_ok();
    let nbd_newcomer = peak <= bound
        && try_nbd(nbd_port, "Alice")
            .and_then(|mut s| nbd_read(&mut s, 1, 0, 4096))
            .is_ok();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let requests = sent.load(Ordering::Relaxed);
    eprintln!(
        "flood of {FLOODERS} Sheepdog connections reading the whole inode and {NBD_FLOODERS} \
         NBD connections reading 4 MiB, never reading answers: {requests} requests written \
         (most of them still in socket buffers) before the sheep stopped reading (settled \
         after {settled:?}; the kernel's TCP buffers peaked at {tcp_peak} MiB); sheep RSS \
         {rss_before} MiB before, peak {peak} MiB during (bound {bound} MiB); well-behaved \
         client (node list, 4 KiB write, 4 KiB read): median {calm_median:?} / worst \
         {calm_worst:?} without the flood, median {flood_median:?} / worst {flood_worst:?} \
         during it"
    );
    assert!(
        peak <= bound,
        "sheep RSS reached {peak} MiB under the flood (bound {bound} MiB)"
    );
    assert!(newcomer, "a new connection was not served during the flood");
    assert!(
        nbd_newcomer,
        "a new NBD connection was not served during the flood"
    );
    // The node still answers once the flood is gone.
    node_list(&mut good, 2).unwrap();
    c.dog_ok(0, &["node", "list"]);
}

#[test]
fn nbd_clients_that_never_read_are_not_read_from() {
    const DEAF: usize = 8;
    let c = Cluster::start(1);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let port = c.nodes[0].nbd_port;
    let pid = pid(&c, 0);
    let mut good = try_nbd(port, "Bob").unwrap();
    nbd_read(&mut good, 1, 0, 4096).unwrap();
    let rss_before = rss_kib(pid) / 1024;
    // Each pipelines 1 MiB reads and never reads a reply: the node takes at most its
    // --conn-buffer (8 MiB) of them, then stops reading it.
    let mut deaf = Vec::new();
    for _ in 0..DEAF {
        let mut s = try_nbd(port, "Bob").unwrap();
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        // Until a write blocks for 1 s: the node stopped reading, and the socket buffers
        // between it and the client are full (a few MiB of requests).
        let batch: Vec<u8> = (0..1000u64)
            .flat_map(|h| nbd_request(cmd::READ, h, 0, 1 << 20))
            .collect();
        let mut blocked = false;
        for _ in 0..10_000 {
            if s.write_all(&batch).is_err() {
                blocked = true;
                break;
            }
        }
        assert!(blocked, "the node never stopped reading");
        deaf.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kib(pid) / 1024;
    let bound = rss_before + DEAF as u64 * (8 + CONN_OVERHEAD_MIB) + 64;
    let t = Instant::now();
    nbd_read(&mut good, 2, 1 << 20, 4096).unwrap();
    eprintln!(
        "{DEAF} nbd clients that never read: RSS {rss_before} MiB before, {rss} MiB with them \
         (bound {bound} MiB); a well-behaved read took {:?}",
        t.elapsed()
    );
    assert!(rss <= bound, "RSS {rss} MiB, bound {bound} MiB");
}

#[test]
fn connections_over_the_limit_are_closed_at_once_and_the_others_go_on() {
    let c = Cluster::start_with(1, &["--max-connections", "4"]);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "16M"]);
    let addr = local(c.port(0));
    let mut held: Vec<TcpStream> = (0..4).map(|i| served(addr, i)).collect();
    // The fifth is closed as soon as it is accepted.
    let mut extra = connect(addr);
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(5)),
        "a connection over the limit stayed open"
    );
    for (i, s) in held.iter_mut().enumerate() {
        node_list(s, 100 + i as u32).expect("an earlier connection is still served");
    }
    assert!(log_of(&c, 0).contains("--max-connections"), "no log line");
    // One goes: its slot is free again.
    drop(held.pop());
    let mut again = served(addr, 200);
    node_list(&mut again, 201).unwrap();

    // The NBD listener counts its own connections.
    let port = c.nodes[0].nbd_port;
    let mut nbd_held: Vec<TcpStream> = (0..4).map(|_| try_nbd(port, "Alice").unwrap()).collect();
    let refused = try_nbd(port, "Alice");
    assert!(
        refused.is_err(),
        "an NBD connection over the limit got a greeting"
    );
    for (i, s) in nbd_held.iter_mut().enumerate() {
        nbd_read(s, i as u64, 0, 4096).expect("an earlier NBD connection is still served");
    }
    drop(nbd_held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match try_nbd(port, "Alice") {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no NBD connection after one closed: {e}"),
        }
    };
    nbd_read(&mut s, 9, 0, 4096).unwrap();
}

#[test]
fn idle_connections_are_closed_and_busy_ones_are_not() {
    let c = Cluster::start_with(1, &["--idle-timeout", "1"]);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "16M"]);
    let addr = local(c.port(0));
    let port = c.nodes[0].nbd_port;
    let mut idle = served(addr, 1);
    let mut busy = served(addr, 2);
    let mut nbd_idle = try_nbd(port, "Alice").unwrap();
    let mut nbd_busy = try_nbd(port, "Alice").unwrap();
    let t = Instant::now();
    let mut n = 10;
    while t.elapsed() < Duration::from_secs(3) {
        node_list(&mut busy, n).expect("a busy connection is served");
        nbd_read(&mut nbd_busy, n as u64, 0, 4096).expect("a busy NBD connection is served");
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(3)),
        "an idle connection stayed open"
    );
    assert!(
        closed_by_server(&mut nbd_idle, Duration::from_secs(3)),
        "an idle NBD connection stayed open"
    );
    node_list(&mut busy, 1000).unwrap();
    nbd_read(&mut nbd_busy, 1000, 0, 4096).unwrap();

    // A client that takes none of its answers for the idle timeout is closed as well, and
    // what it held goes.
    let mut deaf = connect(addr);
    deaf.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for id in 0..64 {
        if deaf
            .write_all(request(opcode::READ_VDIS, id, 2 << 20).as_bytes())
            .is_err()
        {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        closed_by_server(&mut deaf, Duration::from_secs(10)),
        "a client that took no answers stayed connected"
    );
    node_list(&mut connect(addr), 1001).unwrap();
}

#[test]
fn payload_claims_are_checked_from_the_header() {
    let c = Cluster::start(1);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    let addr = local(c.port(0));
    // A small payload on an opcode that takes none: refused, and skipped (a header forged
    // inside it is never answered); the next request is served.
    let mut s = connect(addr);
    let mut payload = request(opcode::GET_NODE_LIST, 999, 4096)
        .as_bytes()
        .to_vec();
    payload.resize(100, 0);
    let mut h = request(opcode::GET_NODE_LIST, 1, payload.len() as u32);
    h.add_flags(flags::CMD_WRITE);
    let (r, d) = ask(&mut s, h, &payload).unwrap();
    assert_eq!((r.id(), r.sd_result()), (1, SdResult::INVALID_PARMS));
    assert!(d.is_empty());
    node_list(&mut s, 2).unwrap();

    // A header claiming 2 GiB for an opcode that takes none: refused at once, before any of
    // it is read, and the connection closed.
    for (op, len) in [
        (opcode::GET_NODE_LIST, proto::SD_MAX_PAYLOAD),
        (opcode::READ_VDIS, 1 << 30),
        // NEW_VDI takes a name and a tag (512 bytes), not 64 MiB.
        (opcode::NEW_VDI, 64 << 20),
    ] {
        let mut s = connect(addr);
        let mut h = request(op, 3, len);
        h.add_flags(flags::CMD_WRITE);
        s.write_all(h.as_bytes()).unwrap();
        let (r, _) = answer(&mut s).expect("an answer before the close");
        assert_eq!(
            (r.id(), r.sd_result()),
            (3, SdResult::INVALID_PARMS),
            "opcode {op:#x}"
        );
        assert!(closed_by_server(&mut s, Duration::from_secs(5)));
    }
    // The node keeps serving.
    node_list(&mut connect(addr), 4).unwrap();
    c.dog_ok(0, &["vdi", "create", "After", "4M"]);
    assert!(c.dog_ok(0, &["vdi", "list", "-r"]).contains(" After 0 "));
}

#[test]
fn a_version_mismatch_consumes_its_payload() {
    let c = Cluster::start(1);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    let addr = local(c.port(0));
    let mut s = connect(addr);
    // Payloads made of valid headers: answered if they were parsed as the next request.
    let forged = |ids: &[u32]| -> Vec<u8> {
        ids.iter()
            .flat_map(|&id| request(opcode::GET_NODE_LIST, id, 4096).as_bytes().to_vec())
            .collect()
    };
    // A public opcode of a newer protocol, with a payload.
    let payload = forged(&[901, 902]);
    let mut h = Header::new(proto::SD_PROTO_VER + 1, opcode::WRITE_OBJ);
    h.set_id(1)
        .add_flags(flags::CMD_WRITE)
        .set_data_length(payload.len() as u32)
        .set_oid(Oid::data(Vid(1), 0).0);
    let (r, _) = ask(&mut s, h, &payload).unwrap();
    assert_eq!((r.id(), r.sd_result()), (1, SdResult::VER_MISMATCH));
    node_list(&mut s, 2).unwrap();
    // An internal opcode with the public version (another release's dog), with a payload.
    let payload = forged(&[903]);
    let mut h = Header::new(proto::SD_PROTO_VER, opcode::MAKE_FS);
    h.set_id(3)
        .add_flags(flags::CMD_WRITE)
        .set_data_length(payload.len() as u32);
    let (r, _) = ask(&mut s, h, &payload).unwrap();
    assert_eq!((r.id(), r.sd_result()), (3, SdResult::VER_MISMATCH));
    node_list(&mut s, 4).unwrap();
    // Nothing else comes: no answer to a forged header.
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(s.read(&mut b), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "an answer to a header inside a payload"
    );
    // A mismatch claiming more than its opcode could take: answered, then closed.
    let mut s = connect(addr);
    let mut h = Header::new(0x09, opcode::GET_NODE_LIST);
    h.set_id(5)
        .add_flags(flags::CMD_WRITE)
        .set_data_length(1 << 30);
    s.write_all(h.as_bytes()).unwrap();
    let (r, _) = answer(&mut s).unwrap();
    assert_eq!((r.id(), r.sd_result()), (5, SdResult::VER_MISMATCH));
    assert!(closed_by_server(&mut s, Duration::from_secs(5)));
    node_list(&mut connect(addr), 6).unwrap();
}

/// A sheep started by hand (the harness waits on 127.0.0.1, which some of these do not
/// serve), killed by PID when dropped.
struct Solo {
    child: Child,
    port: u16,
    nbd_port: u16,
    _dir: tempfile::TempDir,
}

impl Solo {
    fn start(args: &[&str], reach: IpAddr) -> Solo {
        let dir = tempfile::tempdir().unwrap();
        let (port, nbd_port) = (free_port(), free_port());
        let child = Command::new(bin("sheep"))
            .arg("-f")
            .arg("-c")
            .arg(format!("local:{}", dir.path().join("shm").display()))
            .args(["-p", &port.to_string(), "--nbd-port", &nbd_port.to_string()])
            .args(["--http-port", "0"])
            .args(args)
            .arg(dir.path().join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("sheep.err")).unwrap(),
            ))
            .spawn()
            .expect("spawn sheep");
        let solo = Solo {
            child,
            port,
            nbd_port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((reach, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sheep {args:?} does not listen on {reach}:{port}: {}",
                solo.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        solo
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("sheep.err")).unwrap_or_default()
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refused(ip: IpAddr, port: u16) -> bool {
    match TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2)) {
        Ok(_) => false,
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
    }
}

/// A non-loopback IPv4 address of this machine, if it has one.
fn other_address() -> Option<IpAddr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|&t| t == "inet")?;
            w.next()?.split('/').next()?.parse::<IpAddr>().ok()
        })
        .find(|a| !a.is_loopback())
}

/// The members node `addr` reports.
fn members(addr: SocketAddr) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(addr);
        let (h, d) = ask(&mut s, request(opcode::GET_NODE_LIST, 1, 80 * 64), &[]).unwrap();
        let nodes: Vec<String> = SdNode::decode_list(&d)
            .iter()
            .map(|n| n.nid.to_string())
            .collect();
        if h.sd_result() == SdResult::SUCCESS && !nodes.is_empty() {
            return nodes;
        }
        assert!(Instant::now() < deadline, "no members at {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn listens_on_loopback_only_unless_told_otherwise() {
    let loopback: IpAddr = [127, 0, 0, 1].into();
    // 127.0.0.2 is loopback too: a sheep that binds 127.0.0.1 only refuses it.
    let second: IpAddr = [127, 0, 0, 2].into();
    let other = other_address();
    if other.is_none() {
        eprintln!("this machine has no non-loopback address: 127.0.0.2 shows the bind");
    }
    // Neither -b nor -y: 127.0.0.1 only, Sheepdog and NBD, and the log says so.
    let c = Cluster::start(1);
    let (port, nbd_port) = (c.port(0), c.nodes[0].nbd_port);
    node_list(&mut connect(local(port)), 1).unwrap();
    for ip in [Some(second), other].into_iter().flatten() {
        assert!(refused(ip, port), "the sheep port answers on {ip}");
        assert!(refused(ip, nbd_port), "the NBD port answers on {ip}");
    }
    assert!(
        log_of(&c, 0).contains("listening on 127.0.0.1 only"),
        "the log does not say where it listens"
    );
    assert_eq!(members(local(port)), [format!("127.0.0.1:{port}")]);
    drop(c);

    // -y ADDR: listens where it says it is, and only there.
    let s = Solo::start(&["-y", "127.0.0.2"], second);
    assert!(
        refused(loopback, s.port),
        "-y 127.0.0.2 also listens on 127.0.0.1"
    );
    assert!(refused(loopback, s.nbd_port));
    assert!(!refused(second, s.nbd_port), "NBD is not on the -y address");
    assert_eq!(
        members(SocketAddr::new(second, s.port)),
        [format!("127.0.0.2:{}", s.port)]
    );
    drop(s);

    // -b 0.0.0.0 without -y: every address, advertising 127.0.0.1, with a warning.
    let c = Cluster::start_with(1, &["-b", "0.0.0.0"]);
    let (port, nbd_port) = (c.port(0), c.nodes[0].nbd_port);
    for ip in [Some(second), other].into_iter().flatten() {
        assert!(!refused(ip, port), "-b 0.0.0.0 does not listen on {ip}");
        assert!(!refused(ip, nbd_port));
    }
    assert!(log_of(&c, 0).contains("advertising 127.0.0.1"));
    assert_eq!(members(local(port)), [format!("127.0.0.1:{port}")]);
}

#[test]
fn peer_opcodes_are_refused_from_connections_that_are_not_members() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "16M"]);
    let data = common::pattern(1 << 20, 7);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&data).unwrap();
    let out = c.dog_stdin(0, &["vdi", "write", "Alice"], Some(f.path()));
    assert!(out.status.success(), "dog vdi write: {out:?}");
    let oid = Oid::data(inode_of("Alice").vid(), 0);
    let epoch = 1;
    let peer_request = |op: u8, id: u32| {
        let mut h = Header::request(op);
        h.set_id(id).set_epoch(epoch).set_oid(oid.0);
        h
    };
    for i in 0..2 {
        let mut s = connect(local(c.port(i)));
        // A read of a copy: refused, no data.
        let mut h = peer_request(opcode::READ_PEER, 1);
        h.set_data_length(4096);
        let (r, d) = ask(&mut s, h, &[]).unwrap();
        assert_eq!((r.id(), r.sd_result()), (1, SdResult::INVALID_PARMS));
        assert!(d.is_empty(), "a refused read came with data");
        // An overwrite and a new object: refused, their payloads read and dropped.
        for (op, id) in [(opcode::WRITE_PEER, 2), (opcode::CREATE_AND_WRITE_PEER, 3)] {
            let mut h = peer_request(op, id);
            h.add_flags(flags::CMD_WRITE).set_data_length(4096);
            let (r, _) = ask(&mut s, h, &[0xee; 4096]).unwrap();
            assert_eq!((r.id(), r.sd_result()), (id, SdResult::INVALID_PARMS));
        }
        // Removals, store syncs and object lists: refused.
        for (op, id) in [
            (opcode::REMOVE_PEER, 4),
            (opcode::FLUSH_PEER, 5),
            (opcode::GET_OBJ_LIST, 6),
        ] {
            let (r, _) = ask(&mut s, peer_request(op, id), &[]).unwrap();
            assert_eq!((r.id(), r.sd_result()), (id, SdResult::INVALID_PARMS));
        }
        let mut h = peer_request(opcode::OBJ_LIST_TAGGED, 7);
        h.set_data_length(1 << 20);
        let (r, d) = ask(&mut s, h, &[]).unwrap();
        assert_eq!((r.sd_result(), d.len()), (SdResult::INVALID_PARMS, 0));
        // A hello from a node that is not a member, or of another cluster, identifies
        // nothing: peer opcodes stay refused.
        let stranger = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut h = Header::request(opcode::HELLO_PEER);
        h.set_id(8)
            .set_oid(0)
            .set_forw_addr(&proto::NodeId::new(stranger.ip(), stranger.port()).addr)
            .set_forw_port(stranger.port());
        let (r, _) = ask(&mut s, h, &[]).unwrap();
        assert_ne!(r.sd_result(), SdResult::SUCCESS, "a stranger's hello");
        let member = c.nodes[1 - i].port;
        let mut h = Header::request(opcode::HELLO_PEER);
        h.set_id(9)
            .set_oid(0x1234)
            .set_forw_addr(&proto::NodeId::new([127, 0, 0, 1].into(), member).addr)
            .set_forw_port(member);
        let (r, _) = ask(&mut s, h, &[]).unwrap();
        assert_eq!((r.id(), r.sd_result()), (9, SdResult::INVALID_CTIME));
        let (r, _) = ask(&mut s, peer_request(opcode::REMOVE_PEER, 10), &[]).unwrap();
        assert_eq!((r.id(), r.sd_result()), (10, SdResult::INVALID_PARMS));
        // The connection still serves client opcodes.
        node_list(&mut s, 11).unwrap();
        let log = log_of(&c, i);
        assert_eq!(
            log.matches("refused peer opcode").count(),
            1,
            "one log line per connection"
        );
    }
    // Every copy is intact, and the cluster still works: a write goes to both copies through
    // the peers' own (identified) connections, and reads through either node see it.
    for i in 0..2 {
        let out = c.dog(i, &["vdi", "read", "Alice", "0", "1M"]);
        assert!(out.stdout == data, "node {i} serves other bytes");
    }
    c.dog_ok(0, &["vdi", "check", "Alice"]);
    let more = common::pattern(4096, 8);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&more).unwrap();
    let out = c.dog_stdin(1, &["vdi", "write", "Alice", "0", "4096"], Some(f.path()));
    assert!(out.status.success(), "dog vdi write: {out:?}");
    for i in 0..2 {
        let out = c.dog(i, &["vdi", "read", "Alice", "0", "4096"]);
        assert!(out.stdout == more, "node {i} does not serve the new write");
    }
}
