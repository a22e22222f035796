//! The fault checker: a writer sends random writes with unique bytes through one node (the
//! gateway) over NBD and keeps a shadow of every acknowledged write, while a nemesis kills -9
//! and restarts other nodes, takes online snapshots through other nodes (and deletes the
//! older ones) and restarts the whole cluster. After every step the writer pauses, flushes, and every block of the VDI is
//! compared with the shadow through every running node.
//!
//! Every 4 KiB block written carries a header (magic, write id, block index) and bytes derived
//! from both, so a wrong block tells which write it came from. A block of a write that failed
//! may hold the old or the new bytes; either is accepted until the block is rewritten.
//!
//! Knobs (environment): FAULT_SEED (printed), FAULT_CYCLES, FAULT_SECS (wall-time bound on
//! the cycles), FAULT_VDI_MB, FAULT_TASKS (writes in flight), FAULT_MAX_WRITE_KB,
//! FAULT_IO_TIMEOUT (seconds), FAULT_ALLOW_ERRORS (client errors reported, not fatal),
//! FAULT_STEPS (a comma list of kill1, kill2, snapshot, restart: each cycle runs those steps
//! in that order instead of the random mix, to repeat one sequence).
//! `bench/soak.sh` runs the long form.

mod common;

use common::nbd::{Client, Failure};
use common::{bin, rt, Cluster};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const BLOCK: u64 = 4096;
const OBJECT: u64 = 4 << 20;
/// "FAULTCHK": the first 8 bytes of every block the writer writes.
const MAGIC: u64 = 0x4641_554c_5443_484b;
const EXPORT: &str = "V";
const NODES: usize = 4;
/// Failures printed in full.
const SHOW: usize = 20;

// ---------------------------------------------------------------------------------------------
// Configuration and randomness

#[derive(Clone, Debug)]
struct Config {
    seed: u64,
    cycles: u64,
    secs: u64,
    vdi_mb: u64,
    tasks: usize,
    max_write_blocks: u64,
    io_timeout: Duration,
    allow_errors: bool,
    /// Each cycle's steps, in order; None: the random mix.
    steps: Option<Vec<Step>>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

impl Config {
    fn from_env(vdi_mb: u64) -> Config {
        let seed = match std::env::var("FAULT_SEED") {
            Ok(v) => v.trim().parse().expect("FAULT_SEED: not a number"),
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32)
            }
        };
        Config {
            seed,
            cycles: env_u64("FAULT_CYCLES", 3),
            secs: env_u64("FAULT_SECS", 120),
            vdi_mb: env_u64("FAULT_VDI_MB", vdi_mb),
            tasks: env_u64("FAULT_TASKS", 4).max(1) as usize,
            max_write_blocks: (env_u64("FAULT_MAX_WRITE_KB", 64) / 4).clamp(1, 8192),
            io_timeout: Duration::from_secs(env_u64("FAULT_IO_TIMEOUT", 60)),
            allow_errors: std::env::var_os("FAULT_ALLOW_ERRORS").is_some(),
            steps: std::env::var("FAULT_STEPS").ok().map(|v| {
                v.split(',')
                    .map(|s| match s.trim() {
                        "kill1" => Step::KillOne,
                        "kill2" => Step::KillTwo,
                        "snapshot" => Step::Snapshot,
                        "restart" => Step::Restart,
                        other => panic!("FAULT_STEPS: unknown step {other:?}"),
                    })
                    .collect()
            }),
        }
    }
}

/// xorshift64*, seeded: the same seed gives the same choices (timing aside).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut r = Rng((seed ^ 0x9e37_79b9_7f4a_7c15).max(1));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

// ---------------------------------------------------------------------------------------------
// Block contents

/// The bytes write `id` puts in block `block`.
fn fill_block(out: &mut [u8], id: u64, block: u64) {
    out[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&id.to_le_bytes());
    out[16..24].copy_from_slice(&block.to_le_bytes());
    let mut x =
        (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ block.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)) | 1;
    for c in out[24..BLOCK as usize].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
}

/// What a block read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    Zeros,
    /// A block of write `id` for block index `block`; `intact` when every byte is as written.
    Write {
        id: u64,
        block: u64,
        intact: bool,
    },
    Garbage,
}

fn decode(b: &[u8]) -> Got {
    if b.iter().all(|&x| x == 0) {
        return Got::Zeros;
    }
    if b[0..8] != MAGIC.to_le_bytes() {
        return Got::Garbage;
    }
    let id = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let block = u64::from_le_bytes(b[16..24].try_into().unwrap());
    let mut want = vec![0u8; BLOCK as usize];
    fill_block(&mut want, id, block);
    Got::Write {
        id,
        block,
        intact: want == b,
    }
}

impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Got::Zeros => write!(f, "zeros"),
            Got::Garbage => write!(f, "garbage (no header)"),
            Got::Write { id, block, intact } => {
                write!(f, "write {id} of block {block}")?;
                if !intact {
                    write!(f, " (torn/corrupt bytes)")?;
                }
                Ok(())
            }
        }
    }
}

/// Write ids a block may hold (0: never written, zeros).
type Accept = Vec<u64>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Good,
    Lost,
    Wrong,
}

fn judge(block: u64, got: Got, accept: &[u64]) -> Verdict {
    match got {
        Got::Zeros if accept.contains(&0) => Verdict::Good,
        Got::Zeros => Verdict::Lost,
        Got::Write {
            id,
            block: b,
            intact: true,
        } if b == block && accept.contains(&id) => Verdict::Good,
        _ => Verdict::Wrong,
    }
}

// ---------------------------------------------------------------------------------------------
// Shadow: what every block must hold

struct Shadow {
    /// Per block, the write ids it may hold: exactly one after an acknowledged write, more
    /// after failed ones.
    accept: Vec<Accept>,
    /// Blocks of writes in flight: no two writes in flight overlap, so the order of
    /// acknowledgements is the order of the bytes.
    busy: Vec<bool>,
    /// Writes in flight: id -> (first block, blocks).
    inflight: HashMap<u64, (u64, u64)>,
    /// Writes started while a snapshot is being taken.
    window: Option<Vec<(u64, u64, u64)>>,
    next_id: u64,
}

impl Shadow {
    fn new(blocks: u64) -> Shadow {
        Shadow {
            accept: vec![vec![0]; blocks as usize],
            busy: vec![false; blocks as usize],
            inflight: HashMap::new(),
            window: None,
            next_id: 1,
        }
    }

    fn blocks(&self) -> u64 {
        self.accept.len() as u64
    }

    /// Picks the blocks of a new write (half of them in a hot 8 MiB region, so blocks and
    /// objects are rewritten often) and registers it: (write id, first block, blocks).
    fn start_write(&mut self, rng: &mut Rng, max_blocks: u64) -> Option<(u64, u64, u64)> {
        let blocks = self.blocks();
        let hot = ((8 << 20) / BLOCK).min(blocks);
        for _ in 0..8 {
            let span = if rng.chance(1, 2) { hot } else { blocks };
            let n = rng.range(1, max_blocks.min(span));
            let first = rng.below(span - n + 1);
            let range = first as usize..(first + n) as usize;
            if self.busy[range.clone()].iter().any(|&b| b) {
                continue;
            }
            self.busy[range].fill(true);
            let id = self.next_id;
            self.next_id += 1;
            self.inflight.insert(id, (first, n));
            if let Some(w) = self.window.as_mut() {
                w.push((id, first, n));
            }
            return Some((id, first, n));
        }
        None
    }

    /// Write `id` ended: acknowledged (its bytes are the only ones acceptable) or failed
    /// (its bytes become acceptable too).
    fn end_write(&mut self, id: u64, acked: bool) {
        let (first, n) = self.inflight.remove(&id).expect("write in flight");
        for b in first..first + n {
            let b = b as usize;
            self.busy[b] = false;
            if acked {
                self.accept[b] = vec![id];
            } else if !self.accept[b].contains(&id) {
                self.accept[b].push(id);
            }
        }
    }

    /// A snapshot is being taken: what it may hold so far (every acknowledged write, and the
    /// writes in flight); the writes started until `end_snapshot` are added then.
    fn begin_snapshot(&mut self) -> Vec<Accept> {
        let mut exp = self.accept.clone();
        for (&id, &(first, n)) in &self.inflight {
            for b in first..first + n {
                exp[b as usize].push(id);
            }
        }
        self.window = Some(Vec::new());
        exp
    }

    fn end_snapshot(&mut self, exp: &mut [Accept]) {
        for (id, first, n) in self.window.take().unwrap_or_default() {
            for b in first..first + n {
                if !exp[b as usize].contains(&id) {
                    exp[b as usize].push(id);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workload: tasks writing through the gateway, on a thread of their own

#[derive(Default)]
struct Ctl {
    paused: bool,
    stop: bool,
    /// Tasks between their pause check and the end of their write.
    active: usize,
}

/// What the writer saw in one measuring window (a nemesis step, paused time excluded).
#[derive(Clone, Debug, Default)]
struct Window {
    writes: u64,
    errors: u64,
    max_latency: Duration,
    /// Longest time between two acknowledgements (of any task).
    max_gap: Duration,
}

#[derive(Default)]
struct Stats {
    writes: u64,
    bytes: u64,
    write_errors: u64,
    messages: Vec<String>,
    win: Window,
    last_ack: Option<Instant>,
}

struct Writer {
    cfg: Config,
    port: u16,
    shadow: Mutex<Shadow>,
    ctl: Mutex<Ctl>,
    cv: Condvar,
    stats: Mutex<Stats>,
    /// Connection generation: tasks reconnect when it changes (after a whole-cluster restart).
    gen: AtomicU64,
}

impl Writer {
    fn new(cfg: Config, port: u16) -> Arc<Writer> {
        let blocks = (cfg.vdi_mb << 20) / BLOCK;
        Arc::new(Writer {
            cfg,
            port,
            shadow: Mutex::new(Shadow::new(blocks)),
            ctl: Mutex::new(Ctl {
                paused: true,
                ..Ctl::default()
            }),
            cv: Condvar::new(),
            stats: Mutex::new(Stats::default()),
            gen: AtomicU64::new(0),
        })
    }

    /// Starts the tasks on their own thread and runtime, paused.
    fn spawn(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let w = self.clone();
        std::thread::spawn(move || {
            rt().block_on(async move {
                let tasks: Vec<_> = (0..w.cfg.tasks)
                    .map(|t| tokio::spawn(write_task(w.clone(), t)))
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            })
        })
    }

    /// Stops new writes and waits until none is in flight.
    fn pause(&self) {
        let deadline = Instant::now() + self.cfg.io_timeout * 2 + Duration::from_secs(30);
        let mut c = self.ctl.lock().unwrap();
        c.paused = true;
        while c.active > 0 {
            assert!(Instant::now() < deadline, "writer did not pause");
            c = self
                .cv
                .wait_timeout(c, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    fn resume(&self) {
        self.stats.lock().unwrap().last_ack = Some(Instant::now());
        self.ctl.lock().unwrap().paused = false;
    }

    fn stop(&self) {
        let mut c = self.ctl.lock().unwrap();
        c.stop = true;
        c.paused = true;
    }

    fn reconnect(&self) {
        self.gen.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends the current measuring window and starts the next.
    fn take_window(&self) -> Window {
        std::mem::take(&mut self.stats.lock().unwrap().win)
    }

    fn error(&self, msg: String) {
        let mut s = self.stats.lock().unwrap();
        s.write_errors += 1;
        s.win.errors += 1;
        if s.messages.len() < SHOW {
            s.messages.push(msg);
        }
    }

    fn acked(&self, latency: Duration, bytes: u64) {
        let now = Instant::now();
        let mut s = self.stats.lock().unwrap();
        s.writes += 1;
        s.bytes += bytes;
        s.win.writes += 1;
        s.win.max_latency = s.win.max_latency.max(latency);
        if let Some(last) = s.last_ack {
            s.win.max_gap = s.win.max_gap.max(now - last);
        }
        s.last_ack = Some(now);
    }

    fn expected(&self) -> Vec<Accept> {
        self.shadow.lock().unwrap().accept.clone()
    }
}

async fn write_task(w: Arc<Writer>, task: usize) {
    let mut rng = Rng::new(w.cfg.seed ^ (task as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    let mut conn: Option<(u64, Client)> = None;
    loop {
        let go = {
            let mut c = w.ctl.lock().unwrap();
            if c.stop {
                break;
            }
            if !c.paused {
                c.active += 1;
            }
            !c.paused
        };
        if !go {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let wrote = one_write(&w, &mut conn, &mut rng, task).await;
        w.ctl.lock().unwrap().active -= 1;
        w.cv.notify_all();
        if !wrote {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    if let Some((_, c)) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.disconnect()).await;
    }
}

/// One write through the gateway, (re)connecting first if needed. False if none was sent.
async fn one_write(
    w: &Writer,
    conn: &mut Option<(u64, Client)>,
    rng: &mut Rng,
    task: usize,
) -> bool {
    let gen = w.gen.load(Ordering::SeqCst);
    if conn.as_ref().map(|(g, _)| *g) != Some(gen) {
        *conn = None;
        match tokio::time::timeout(w.cfg.io_timeout, Client::try_open(None, w.port, EXPORT)).await {
            Ok(Ok(c)) => *conn = Some((gen, c)),
            Ok(Err(e)) => {
                w.error(format!("task {task}: connect to the gateway: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                return false;
            }
            Err(_) => {
                w.error(format!("task {task}: connect to the gateway: timed out"));
                return false;
            }
        }
    }
    let Some((id, first, n)) = w
        .shadow
        .lock()
        .unwrap()
        .start_write(rng, w.cfg.max_write_blocks)
    else {
        return false;
    };
    let mut data = vec![0u8; (n * BLOCK) as usize];
    for (k, b) in data.chunks_mut(BLOCK as usize).enumerate() {
        fill_block(b, id, first + k as u64);
    }
    let fua = rng.chance(1, 4);
    let client = &mut conn.as_mut().unwrap().1;
    let t0 = Instant::now();
    // A write that times out, or whose connection breaks, may still land later, after a
    // rewrite of its blocks through a new connection: that would show up as a wrong block
    // ("an older write"), but such a write is a client error in itself.
    let r = match tokio::time::timeout(
        w.cfg.io_timeout,
        client.try_write(first * BLOCK, &data, fua),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Failure::Io(format!("no reply in {:?}", w.cfg.io_timeout))),
    };
    let latency = t0.elapsed();
    w.shadow.lock().unwrap().end_write(id, r.is_ok());
    match r {
        Ok(()) => w.acked(latency, n * BLOCK),
        Err(f) => {
            if matches!(f, Failure::Io(_)) {
                *conn = None;
            }
            w.error(format!(
                "task {task}: write {id} at {} len {} (fua {fua}) after {latency:?}: {f}",
                first * BLOCK,
                n * BLOCK
            ));
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Verify: every block through every running node

#[derive(Debug)]
struct Bad {
    step: String,
    export: String,
    node: usize,
    block: u64,
    verdict: Verdict,
    accept: Accept,
    got: Got,
}

#[derive(Default)]
struct Tally {
    checked: u64,
    lost: u64,
    wrong: u64,
    read_errors: u64,
    bad: Vec<Bad>,
    read_messages: Vec<String>,
    /// Every check that found bad blocks: what, and per node lost, wrong and the objects.
    bad_steps: Vec<String>,
}

/// What reading one export through one node found.
#[derive(Default)]
struct NodeCheck {
    checked: u64,
    lost: u64,
    wrong: u64,
    read_errors: u64,
    bad: Vec<(u64, Verdict, Got)>,
    /// Objects (4 MiB indexes) with a lost or wrong block.
    objects: std::collections::BTreeSet<u64>,
    messages: Vec<String>,
}

/// Opens `export` on `port`, retrying for up to 30 s (a node that just joined may still be
/// starting).
async fn open_retry(port: u16, export: &str, io_timeout: Duration) -> Result<Client, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = match tokio::time::timeout(io_timeout, Client::try_open(None, port, export)).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => e,
            Err(_) => "timed out".to_string(),
        };
        if Instant::now() > deadline {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn check_node(port: u16, export: &str, accept: &[Accept], io_timeout: Duration) -> NodeCheck {
    let mut r = NodeCheck::default();
    let mut conn = match open_retry(port, export, io_timeout).await {
        Ok(c) => Some(c),
        Err(e) => {
            r.read_errors += 1;
            r.messages.push(format!("open {export}: {e}"));
            return r;
        }
    };
    let blocks = accept.len() as u64;
    let per = OBJECT / BLOCK;
    let mut first = 0;
    while first < blocks {
        let n = per.min(blocks - first);
        let mut data = None;
        for _attempt in 0..3 {
            if conn.is_none() {
                match open_retry(port, export, io_timeout).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        r.read_errors += 1;
                        r.messages.push(format!("reopen {export}: {e}"));
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let res =
                tokio::time::timeout(io_timeout, c.try_read(first * BLOCK, (n * BLOCK) as u32))
                    .await
                    .unwrap_or_else(|_| Err(Failure::Io("timed out".into())));
            match res {
                Ok(d) => {
                    data = Some(d);
                    break;
                }
                Err(f) => {
                    r.read_errors += 1;
                    r.messages
                        .push(format!("read {export} at {}: {f}", first * BLOCK));
                    if matches!(f, Failure::Io(_)) {
                        conn = None;
                    }
                }
            }
        }
        if data.is_none() {
            r.messages.push(format!(
                "{export}: {} bytes at {} not checked",
                n * BLOCK,
                first * BLOCK
            ));
        }
        if let Some(data) = data {
            for (k, b) in data.chunks(BLOCK as usize).enumerate() {
                let block = first + k as u64;
                let got = decode(b);
                let v = judge(block, got, &accept[block as usize]);
                r.checked += 1;
                match v {
                    Verdict::Good => continue,
                    Verdict::Lost => r.lost += 1,
                    Verdict::Wrong => r.wrong += 1,
                }
                r.objects.insert(block * BLOCK / OBJECT);
                if r.bad.len() < SHOW {
                    r.bad.push((block, v, got));
                }
            }
        }
        first += n;
    }
    if let Some(c) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.disconnect()).await;
    }
    r
}

fn running(c: &Cluster) -> Vec<usize> {
    (0..c.nodes.len())
        .filter(|&i| c.nodes[i].child.is_some())
        .collect()
}

/// Compares every block of `export` with `accept` through each of `nodes`, all at once.
fn verify(
    c: &Cluster,
    nodes: &[usize],
    export: &str,
    accept: &[Accept],
    io_timeout: Duration,
    step: &str,
    t: &mut Tally,
) -> (u64, u64) {
    let checks = rt().block_on(futures::future::join_all(nodes.iter().map(|&i| {
        let port = c.nodes[i].nbd_port;
        async move { (i, check_node(port, export, accept, io_timeout).await) }
    })));
    let (mut lost, mut wrong) = (0, 0);
    let mut per_node = Vec::new();
    for (node, r) in checks {
        if r.lost + r.wrong > 0 {
            per_node.push(format!(
                "node {node}: lost={} wrong={} objects {:?}",
                r.lost, r.wrong, r.objects
            ));
        }
        t.checked += r.checked;
        t.lost += r.lost;
        t.wrong += r.wrong;
        t.read_errors += r.read_errors;
        lost += r.lost;
        wrong += r.wrong;
        for m in r.messages {
            if t.read_messages.len() < SHOW {
                t.read_messages.push(format!("{step}: node {node}: {m}"));
            }
        }
        for (block, verdict, got) in r.bad {
            if t.bad.len() < SHOW {
                t.bad.push(Bad {
                    step: step.to_string(),
                    export: export.to_string(),
                    node,
                    block,
                    verdict,
                    accept: accept[block as usize].clone(),
                    got,
                });
            }
        }
    }
    if lost + wrong > 0 {
        t.bad_steps.push(format!(
            "{step} ({export}): lost={lost} wrong={wrong}: {}",
            per_node.join("; ")
        ));
    }
    (lost, wrong)
}

// ---------------------------------------------------------------------------------------------
// The cluster and the nemesis

/// `dog ARGS -p PORT(node)` with a time limit: Ok(stdout) or Err(why).
fn dog_within(c: &Cluster, node: usize, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut child = Command::new(bin("dog"))
        .args(args)
        .arg("-p")
        .arg(c.port(node).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            let o = child.wait_with_output().map_err(|e| e.to_string())?;
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            return if o.status.success() {
                Ok(out)
            } else {
                Err(format!(
                    "dog {args:?} via node {node}: {}: {}{out}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                ))
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "dog {args:?} via node {node}: no answer in {limit:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// No fault: the baseline latency.
    Steady,
    /// kill -9 one node other than the gateway, writes go on, restart it.
    KillOne,
    /// kill -9 two nodes other than the gateway at once, restart both.
    KillTwo,
    /// `dog vdi snapshot` through node 1 or 2 while the writer runs.
    Snapshot,
    /// FLUSH, `dog cluster shutdown`, start every node again, reconnect.
    Restart,
}

/// A progress or failure line, marked with the test it comes from (tests run in parallel).
macro_rules! say {
    ($run:expr, $($arg:tt)*) => {
        println!("[{}] {}", $run.name, format!($($arg)*))
    };
}

struct Run {
    /// Marks this test's lines.
    name: &'static str,
    c: Cluster,
    w: Arc<Writer>,
    thread: Option<std::thread::JoinHandle<()>>,
    rng: Rng,
    t: Tally,
    /// Write stalls of the steps that change membership.
    stalls: Vec<Duration>,
    /// How long each snapshot took, and the writer's longest write during each snapshot step.
    snapshot_times: Vec<Duration>,
    snapshot_stalls: Vec<Duration>,
    steps: u64,
    snapshots: u64,
    /// Snapshots still checked after each whole-cluster restart: (export, what it may hold).
    snaps: Vec<(String, Vec<Accept>)>,
    keep_snaps: usize,
    nemesis_errors: Vec<String>,
    flush_errors: u64,
    started: Instant,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.w.stop();
    }
}

impl Run {
    /// A 4-node, 3-copy cluster with the VDI and the writer (paused) on node 0.
    fn start(name: &'static str, cfg: Config, keep_snaps: usize) -> Run {
        println!(
            "[{name}] seed={} (FAULT_SEED to repeat) cycles={} secs={} vdi={}M tasks={} max_write={}K",
            cfg.seed,
            cfg.cycles,
            cfg.secs,
            cfg.vdi_mb,
            cfg.tasks,
            cfg.max_write_blocks * 4
        );
        let c = Cluster::start(NODES);
        c.dog_ok(0, &["cluster", "format", "--copies=3"]);
        c.dog_ok(0, &["vdi", "create", EXPORT, &format!("{}M", cfg.vdi_mb)]);
        let w = Writer::new(cfg.clone(), c.nodes[0].nbd_port);
        let thread = Some(w.spawn());
        Run {
            name,
            c,
            w,
            thread,
            rng: Rng::new(cfg.seed),
            t: Tally::default(),
            stalls: Vec::new(),
            snapshot_times: Vec::new(),
            snapshot_stalls: Vec::new(),
            steps: 0,
            snapshots: 0,
            snaps: Vec::new(),
            keep_snaps,
            nemesis_errors: Vec::new(),
            flush_errors: 0,
            started: Instant::now(),
        }
    }

    fn cfg(&self) -> &Config {
        &self.w.cfg
    }

    /// Writes whose copies disagreed and were healed before the acknowledgement, from every
    /// node's log (a heal costs time, never data: this says how often copies diverged).
    fn heals(&self) -> usize {
        (0..self.c.nodes.len())
            .filter_map(|i| {
                std::fs::read_to_string(self.c.tmp.path().join(format!("sheep{i}.err"))).ok()
            })
            .map(|log| log.matches("disagree (versions").count())
            .sum()
    }

    /// Lets the writer run for lo..=hi ms.
    fn writes_for(&mut self, lo: u64, hi: u64) {
        self.w.resume();
        std::thread::sleep(self.rng.ms(lo, hi));
    }

    /// FLUSH through the gateway (it syncs every node's store).
    fn flush(&mut self) {
        let (port, limit) = (self.c.nodes[0].nbd_port, self.cfg().io_timeout);
        let r = rt().block_on(async {
            let mut c = open_retry(port, EXPORT, limit).await?;
            let r = tokio::time::timeout(limit, c.try_flush())
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|f| f.to_string());
            let _ = tokio::time::timeout(Duration::from_secs(2), c.disconnect()).await;
            r
        });
        if let Err(e) = r {
            self.flush_errors += 1;
            if self.t.read_messages.len() < SHOW {
                self.t.read_messages.push(format!("flush: {e}"));
            }
        }
    }

    /// Pauses the writer, flushes and compares every block through every running node.
    fn check(&mut self, step: &str) {
        self.w.pause();
        self.flush();
        let accept = self.w.expected();
        let written = accept.iter().filter(|a| a[..] != [0]).count();
        let nodes = running(&self.c);
        let t0 = Instant::now();
        let (lost, wrong) = verify(
            &self.c,
            &nodes,
            EXPORT,
            &accept,
            self.cfg().io_timeout,
            step,
            &mut self.t,
        );
        say!(
            self,
            "  check {step}: nodes {nodes:?} written_blocks={written} lost={lost} wrong={wrong} ({:.1}s)",
            t0.elapsed().as_secs_f64()
        );
    }

    /// Checks the snapshots kept (after a restart, say).
    fn check_snapshots(&mut self, step: &str) {
        let nodes = running(&self.c);
        let snaps = std::mem::take(&mut self.snaps);
        for (export, accept) in &snaps {
            let (lost, wrong) = verify(
                &self.c,
                &nodes,
                export,
                accept,
                self.cfg().io_timeout,
                step,
                &mut self.t,
            );
            say!(
                self,
                "  check {step}: snapshot {export} lost={lost} wrong={wrong}"
            );
        }
        self.snaps = snaps;
    }

    fn wait_members(&self, n: usize) -> Duration {
        let t0 = Instant::now();
        self.c.wait_members(n);
        t0.elapsed()
    }

    /// Two distinct nodes other than the gateway.
    fn victims(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (1..NODES).collect();
        for i in (1..v.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
        v.truncate(n);
        v.sort();
        v
    }

    fn kill_restart(&mut self, n: usize, label: &str) {
        let victims = self.victims(n);
        self.writes_for(300, 1000);
        for &v in &victims {
            self.c.kill(v);
        }
        let seen = self.wait_members(NODES - n);
        self.writes_for(500, 1500);
        self.check(&format!("{label} {victims:?} down"));
        self.w.resume();
        for &v in &victims {
            self.c.restart(v);
        }
        let joined = self.wait_members(NODES);
        self.writes_for(500, 1500);
        self.check(&format!("{label} {victims:?} back"));
        say!(
            self,
            "  {label} {victims:?}: leave seen in {}ms, join in {}ms",
            seen.as_millis(),
            joined.as_millis()
        );
    }

    /// An online snapshot through node 1 or 2 while the writer runs; its contents are checked
    /// through every node.
    fn snapshot(&mut self, node: usize) {
        self.snapshots += 1;
        let tag = format!("s{}", self.snapshots);
        let mut accept = self.w.shadow.lock().unwrap().begin_snapshot();
        let t0 = Instant::now();
        let r = dog_within(
            &self.c,
            node,
            &["vdi", "snapshot", "-s", &tag, EXPORT],
            Duration::from_secs(60),
        );
        self.w.shadow.lock().unwrap().end_snapshot(&mut accept);
        let took = t0.elapsed();
        self.snapshot_times.push(took);
        match r {
            Ok(_) => {
                self.snaps.push((format!("{EXPORT}@{tag}"), accept));
                if self.snaps.len() > self.keep_snaps {
                    // The oldest is deleted while the writer runs (what the working VDI still
                    // shares with it must stay), which also bounds a long soak's disk use.
                    let (old, _) = self.snaps.remove(0);
                    let old_tag = old.rsplit('@').next().unwrap_or_default().to_string();
                    let del = ["vdi", "delete", "-s", old_tag.as_str(), EXPORT];
                    if let Err(e) = dog_within(&self.c, node, &del, Duration::from_secs(60)) {
                        self.nemesis_errors.push(e);
                    }
                }
            }
            Err(e) => self.nemesis_errors.push(e),
        }
        say!(
            self,
            "  snapshot {tag} via node {node}: {}ms",
            took.as_millis()
        );
    }

    /// Whole-cluster restart with every write flushed first.
    fn restart_all(&mut self) {
        self.writes_for(300, 1000);
        self.w.pause();
        self.flush();
        if let Err(e) = dog_within(
            &self.c,
            0,
            &["cluster", "shutdown"],
            Duration::from_secs(60),
        ) {
            self.nemesis_errors.push(e);
            for i in 0..NODES {
                self.c.kill(i);
            }
        }
        for i in 0..NODES {
            self.c.wait_exit(i);
        }
        for i in 0..NODES {
            self.c.restart(i);
        }
        let back = self.wait_members(NODES);
        // The writer's connections died with the gateway; it opens new ones.
        self.w.reconnect();
        say!(self, "  restart: members back in {}ms", back.as_millis());
        self.check("restart (flushed writes)");
        self.check_snapshots("restart");
        self.writes_for(300, 1000);
        self.check("restart + writes");
    }

    fn step(&mut self, step: Step) {
        self.steps += 1;
        say!(
            self,
            "step {} {step:?} (t={:.0}s)",
            self.steps,
            self.started.elapsed().as_secs_f64()
        );
        self.w.take_window();
        match step {
            Step::Steady => {
                self.writes_for(1000, 1000);
                self.check("steady");
            }
            Step::KillOne => self.kill_restart(1, "kill1"),
            Step::KillTwo => self.kill_restart(2, "kill2"),
            Step::Snapshot => {
                self.writes_for(200, 800);
                let node = 1 + self.rng.below(2) as usize;
                self.snapshot(node);
                self.writes_for(300, 800);
                self.check("snapshot");
                self.check_snapshots("snapshot");
            }
            Step::Restart => self.restart_all(),
        }
        let win = self.w.take_window();
        if matches!(step, Step::KillOne | Step::KillTwo) {
            self.stalls.push(win.max_latency);
        }
        if step == Step::Snapshot {
            self.snapshot_stalls.push(win.max_latency);
        }
        say!(
            self,
            "  writer: writes={} errors={} max_latency={}ms max_ack_gap={}ms",
            win.writes,
            win.errors,
            win.max_latency.as_millis(),
            win.max_gap.as_millis()
        );
    }

    /// Stops the writer, prints the summary line and what went wrong, and asserts.
    fn finish(mut self, cycles: u64) {
        self.w.stop();
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        let s = self.w.stats.lock().unwrap();
        let (median, max) = median_max(&self.stalls);
        let (snap_median, snap_max) = median_max(&self.snapshot_times);
        let (_, snap_stall_max) = median_max(&self.snapshot_stalls);
        let heals = self.heals();
        let t = &self.t;
        let client_errors = s.write_errors + t.read_errors + self.flush_errors;
        println!(
            "cycles={cycles} blocks_checked={} lost={} wrong={} client_errors={client_errors} \
             stall_ms_median={median} stall_ms_max={max} snapshot_ms_median={snap_median} \
             snapshot_ms_max={snap_max} snapshot_stall_ms_max={snap_stall_max} heals={heals} \
             writes={} written_mb={} write_errors={} read_errors={} flush_errors={} \
             nemesis_errors={} snapshots={} seed={} secs={:.0} test={}",
            t.checked,
            t.lost,
            t.wrong,
            s.writes,
            s.bytes >> 20,
            s.write_errors,
            t.read_errors,
            self.flush_errors,
            self.nemesis_errors.len(),
            self.snapshots,
            self.cfg().seed,
            self.started.elapsed().as_secs_f64(),
            self.name
        );
        for b in t.bad_steps.iter().take(3 * SHOW) {
            say!(self, "bad step: {b}");
        }
        for b in &t.bad {
            let older = match b.got {
                Got::Write { id, .. } if b.accept.iter().all(|&a| id < a) => " (an older write)",
                _ => "",
            };
            say!(
                self,
                "bad block: step \"{}\" export {} node {} offset {} (object {} block {}): {:?}, \
                 expected write {:?}, got {}{older}",
                b.step,
                b.export,
                b.node,
                b.block * BLOCK,
                b.block * BLOCK / OBJECT,
                b.block,
                b.verdict,
                b.accept,
                b.got
            );
        }
        for m in s.messages.iter().chain(&t.read_messages) {
            say!(self, "client error: {m}");
        }
        for m in &self.nemesis_errors {
            say!(self, "nemesis error: {m}");
        }
        assert!(
            t.lost == 0 && t.wrong == 0,
            "acknowledged writes lost={} wrong={} (seed {})",
            t.lost,
            t.wrong,
            self.cfg().seed
        );
        assert!(
            self.nemesis_errors.is_empty(),
            "nemesis steps failed: {:?}",
            self.nemesis_errors
        );
        assert!(
            client_errors == 0 || self.cfg().allow_errors,
            "clients saw {client_errors} errors (FAULT_ALLOW_ERRORS to report only; seed {})",
            self.cfg().seed
        );
    }
}

/// Median and maximum, in milliseconds.
fn median_max(d: &[Duration]) -> (u128, u128) {
    let mut ms: Vec<u128> = d.iter().map(|d| d.as_millis()).collect();
    ms.sort();
    (
        ms.get(ms.len() / 2).copied().unwrap_or(0),
        ms.last().copied().unwrap_or(0),
    )
}

/// The fault checker: FAULT_CYCLES cycles (bounded by FAULT_SECS) of kill -9 of one node,
/// of two nodes at once and an online snapshot in random order, and every third cycle a
/// whole-cluster restart.
#[test]
fn acknowledged_writes_survive_kills_snapshots_and_restarts() {
    let cfg = Config::from_env(128);
    let (cycles, secs) = (cfg.cycles, cfg.secs);
    let mut run = Run::start("fault", cfg, 2);
    run.step(Step::Steady);
    let mut done = 0;
    while done < cycles && run.started.elapsed() < Duration::from_secs(secs) {
        if let Some(steps) = run.cfg().steps.clone() {
            for s in steps {
                run.step(s);
            }
            done += 1;
            continue;
        }
        let mut steps = [Step::KillOne, Step::KillTwo, Step::Snapshot];
        for i in (1..steps.len()).rev() {
            let j = run.rng.below(i as u64 + 1) as usize;
            steps.swap(i, j);
        }
        for s in steps {
            run.step(s);
        }
        if done % 3 == 1 {
            run.step(Step::Restart);
        }
        done += 1;
    }
    run.finish(done);
}

/// Online snapshots through another node while a client writes: every write acknowledged
/// must stay in the working VDI (and each snapshot holds what was acknowledged before it),
/// through every node, and after a whole-cluster restart.
#[test]
fn online_snapshots_under_a_writer_keep_every_write() {
    let cfg = Config::from_env(64);
    let mut run = Run::start("snapshots", cfg, 10);
    run.writes_for(500, 500);
    for _ in 0..10 {
        run.w.resume();
        std::thread::sleep(Duration::from_millis(300));
        run.snapshot(1);
    }
    run.writes_for(300, 300);
    run.check("after 10 snapshots");
    run.check_snapshots("after 10 snapshots");
    run.step(Step::Restart);
    run.finish(1);
}
