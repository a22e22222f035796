//! The `local` cluster driver: any number of sheep on one machine, coordinated through files.
//!
//! The log (default `/tmp/sheepdog_shm`, `-c local:PATH`) is an append-only log of events, one
//! JSON record per line; the order of lines is the cluster's total order. Appends happen under
//! `flock` on the file; every node reads the log from the start of the cluster's history, so a
//! joiner rebuilds the same state as the others. A history ends when no member is alive: the
//! next joiner truncates the file. The cluster-wide mutex is `flock` on `PATH.lock`.
//!
//! Liveness. A member is gone when its process is gone, or when it stops answering (kill -STOP,
//! a hung process). Every 100 ms a thread of each node (not the runtime that serves requests)
//! checks the members: their pids (with start times, so a reused pid is not taken for the
//! member, and zombie state), and their heartbeats. A heartbeat is the file
//! `PATH.hb/ADDRESS:PORT`, holding the member's pid, process start time and a CLOCK_MONOTONIC
//! reading; the member replaces it (write, then rename: readers never see half of one) every
//! 500 ms from a thread of its own, whatever its request load. A node remembers when it last
//! saw each member's heartbeat change, by its own monotonic clock (so no shared clock offset is
//! needed); a heartbeat that has not changed for the timeout (5 s; `-c local:PATH,timeout=MS`)
//! makes its member gone. A gone member gets a leave appended to the log, as a dead pid does,
//! so every node sees it at the same place in the order. That verdict is always taken again
//! under the log's flock, with a fresh read of the heartbeat, just before the leave is appended.
//! A node that stopped looking for more than half the timeout (it was stopped or starved
//! itself) starts counting again rather than blame the others for its own pause.
//!
//! A node that comes back after such a pause must not go on as a member. While its own last
//! heartbeat is older than 3/4 of the timeout it answers no request (`Driver::fenced`, checked
//! by `Node::gate`); its heartbeat thread then reads the log under the flock: if a leave of this
//! node follows this start's join, the node restarts itself (`restart_self`) and joins again as
//! a returning node; otherwise it writes its heartbeat under that same flock, so that every
//! later verdict finds it alive, and goes on. The deliver loop restarts the node as well when it
//! reads such a leave. Why 3/4 of the timeout is safe: another node declares this one gone only
//! if no heartbeat of it landed for longer than the timeout, and this node measures its gap
//! from before one write to after the next, which then is longer still.
//!
//! A node that joins leaves first for a former start of its own process (`restart_self` keeps
//! the pid) that is still a member, and starts a new history if that one is all there is.
//! Owns: those file formats. Never: object data.

use super::heartbeat::Heartbeat;
use super::state::{Event, JoinInfo, Message};
use super::{BoxFut, ClusterError, Delivery, Driver, LockGuard};
use proto::node::NodeId;
use proto::SdNode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const DEFAULT_PATH: &str = "/tmp/sheepdog_shm";
/// A member whose heartbeat has not changed for this long is gone.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the log is read for new events.
const POLL: Duration = Duration::from_millis(5);

/// What follows `-c local:`: `[PATH][,timeout=MS]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub path: PathBuf,
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            path: DEFAULT_PATH.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Heartbeat for Options {
    fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Parses `[PATH][,timeout=MS]`: the path is everything before the first comma-separated item
/// holding `=` (so `-c local:PATH` means what it always meant), an empty or missing path is
/// the default one, and the items after it are options.
pub fn parse_options(arg: &str) -> Result<Options, String> {
    let mut o = Options::default();
    let mut path: Vec<&str> = Vec::new();
    let mut in_options = false;
    for (i, item) in arg.split(',').enumerate() {
        let is_option = if i == 0 {
            item.starts_with("timeout=")
        } else {
            item.contains('=')
        };
        if !is_option && !in_options {
            path.push(item);
            continue;
        }
        in_options = true;
        match item.split_once('=') {
            Some(("timeout", ms)) => {
                let ms: u64 = ms.parse().map_err(|_| {
                    format!("local driver: timeout={ms}: not a number of milliseconds")
                })?;
                o.timeout = Duration::from_millis(ms);
                if o.timeout < MIN_TIMEOUT {
                    return Err(format!(
                        "local driver: timeout={ms}: at least {} ms",
                        MIN_TIMEOUT.as_millis()
                    ));
                }
            }
            _ if item.is_empty() => {}
            _ => {
                return Err(format!(
                    "local driver: unknown option '{item}' (known: timeout=MS)"
                ))
            }
        }
    }
    let path = path.join(",");
    if !path.is_empty() {
        o.path = path.into();
    }
    Ok(o)
}

#[derive(Serialize, Deserialize)]
struct Record {
    pid: u32,
    start: u64,
    /// When it was appended (seconds since the epoch).
    #[serde(default)]
    time: u64,
    ev: Event,
}

/// A process identity that survives pid reuse: pid and its start time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Proc {
    pid: u32,
    start: u64,
}

/// A member's heartbeat as this node last saw it.
struct Seen {
    /// The file's content (`None`: no file).
    value: Option<Vec<u8>>,
    /// When this node saw it change (or first saw it).
    changed: Instant,
    /// When this node last looked.
    looked: Instant,
}

pub struct LocalDriver {
    opts: Options,
    lock_path: PathBuf,
    hb_dir: PathBuf,
    me: Mutex<Option<SdNode>>,
    myself: Proc,
    /// Members as the delivered part of the log says.
    delivered: Mutex<Tracker>,
    /// The other members' heartbeats as this node saw them.
    seen: Mutex<HashMap<NodeId, Seen>>,
    /// Origin of `beat_at`.
    clock: Instant,
    /// When the newest heartbeat known to have landed in time started to be written (ns since
    /// `clock`, plus 1; 0 before the first).
    beat_at: AtomicU64,
    /// Set while this node looks whether the others declared it gone.
    fencing: AtomicBool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start time (clock ticks since boot) and liveness of a pid, from /proc; `None` if gone or a
/// zombie (a zombie is dead for us even though kill(pid, 0) still succeeds).
fn proc_start(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn alive(p: Proc) -> bool {
    proc_start(p.pid) == Some(p.start)
}

/// CLOCK_MONOTONIC in nanoseconds: a heartbeat's content, new at every beat, also across a
/// restart of the same process.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// This node was declared gone: restart (`restart_self`), once; a second thread that finds
/// the same waits for the first one's exec.
fn restart() -> ! {
    static RESTARTING: AtomicBool = AtomicBool::new(false);
    if RESTARTING.swap(true, Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    super::restart_self(
        "the other members declared this node gone (no heartbeat within the local driver's \
         timeout)",
    )
}

struct Flock(File);

impl Flock {
    fn exclusive(path: &Path) -> Result<Flock, ClusterError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        // SAFETY: flock on a valid open fd; the lock is released when the file is closed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            return Err(io_err(path)(std::io::Error::last_os_error()));
        }
        Ok(Flock(f))
    }
}

/// The log, opened for appending and locked (until the file closes).
fn lock_log(path: &Path) -> Result<File, ClusterError> {
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(path))?;
    // SAFETY: flock on a valid fd, released when `f` closes.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err(path)(std::io::Error::last_os_error()));
    }
    Ok(f)
}

/// Appends one record to the locked log `f`; returns the offset past it.
fn append_locked(path: &Path, by: Proc, f: &mut File, ev: Event) -> Result<u64, ClusterError> {
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut line = serde_json::to_vec(&Record {
        pid: by.pid,
        start: by.start,
        time,
        ev,
    })
    .map_err(|e| ClusterError::Other(e.to_string()))?;
    line.push(b'\n');
    let len = f.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).map_err(io_err(path))?;
        f.read_exact(&mut last).map_err(io_err(path))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    f.write_all(&line).map_err(io_err(path))?;
    f.seek(SeekFrom::End(0)).map_err(io_err(path))
}

fn append(path: &Path, by: Proc, ev: Event) -> Result<u64, ClusterError> {
    let mut f = lock_log(path)?;
    append_locked(path, by, &mut f, ev)
}

fn read_all(f: &mut File, path: &Path) -> Result<Vec<u8>, ClusterError> {
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    f.read_to_end(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// Members as the log says: joined and not left, first join of an address wins.
#[derive(Default)]
struct Tracker {
    members: HashMap<NodeId, Proc>,
}

impl Tracker {
    fn see(&mut self, r: &Record) {
        match &r.ev {
            Event::Join { node, .. } => {
                self.members.entry(node.nid).or_insert(Proc {
                    pid: r.pid,
                    start: r.start,
                });
            }
            Event::Leave { node } => {
                self.members.remove(&node.nid);
            }
            Event::Notify { .. } => {}
        }
    }
}

/// Parses complete lines of `buf` (which starts at file offset `base`); returns records with
/// the offset just past their line, and how many bytes were consumed.
fn parse(buf: &[u8], base: u64) -> (Vec<(u64, Record)>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    while let Some(nl) = buf[used..].iter().position(|&b| b == b'\n') {
        let line = &buf[used..used + nl];
        used += nl + 1;
        // A torn line (writer killed mid-append) is skipped by every node alike.
        if let Ok(r) = serde_json::from_slice::<Record>(line) {
            out.push((base + used as u64, r));
        }
    }
    (out, used)
}

/// Whether the log `buf` no longer has `nid` as a member since its join of `incarnation`: the
/// join is not there (a new history) or a leave of `nid` follows it.
fn declared_gone(buf: &[u8], nid: NodeId, incarnation: u64) -> bool {
    let mut member = false;
    for (_, r) in parse(buf, 0).0 {
        match r.ev {
            Event::Join { node, info } if node.nid == nid && info.incarnation == incarnation => {
                member = true
            }
            Event::Leave { node } if node.nid == nid => member = false,
            _ => {}
        }
    }
    !member
}

impl LocalDriver {
    /// The driver on log `path` with the default timeout.
    pub fn new(path: PathBuf) -> LocalDriver {
        LocalDriver::with_options(Options {
            path,
            ..Options::default()
        })
    }

    pub fn with_options(opts: Options) -> LocalDriver {
        let beside = |suffix: &str| {
            let mut p = opts.path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        let pid = std::process::id();
        LocalDriver {
            lock_path: beside(".lock"),
            hb_dir: beside(".hb"),
            opts,
            me: Mutex::new(None),
            myself: Proc {
                pid,
                start: proc_start(pid).unwrap_or(0),
            },
            delivered: Mutex::new(Tracker::default()),
            seen: Mutex::new(HashMap::new()),
            clock: Instant::now(),
            beat_at: AtomicU64::new(0),
            fencing: AtomicBool::new(false),
        }
    }

    fn path(&self) -> &Path {
        &self.opts.path
    }

    fn me(&self) -> Option<SdNode> {
        *locked(&self.me)
    }

    fn hb_file(&self, nid: NodeId) -> PathBuf {
        self.hb_dir.join(nid.to_string())
    }

    /// Writes the heartbeat of `nid` (this process).
    fn beat(&self, nid: NodeId) -> Result<(), ClusterError> {
        let name = nid.to_string();
        let tmp = self.hb_dir.join(format!(".{name}.tmp"));
        let file = self.hb_dir.join(&name);
        std::fs::create_dir_all(&self.hb_dir).map_err(io_err(&self.hb_dir))?;
        let line = format!(
            "{} {} {}\n",
            self.myself.pid,
            self.myself.start,
            monotonic_ns()
        );
        std::fs::write(&tmp, line).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &file).map_err(io_err(&file))
    }

    /// Records that a heartbeat started at `at` landed in time.
    fn stamp(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.clock).as_nanos() as u64;
        self.beat_at.store(ns + 1, Ordering::SeqCst);
    }

    fn is_fenced(&self) -> bool {
        if self.fencing.load(Ordering::SeqCst) {
            return true;
        }
        let at = self.beat_at.load(Ordering::SeqCst);
        let now = self.clock.elapsed().as_nanos() as u64 + 1;
        at != 0 && now.saturating_sub(at) > self.opts.fence().as_nanos() as u64
    }

    /// Whether the heartbeat of `nid` has not changed for the timeout, as this node saw it.
    fn stale(&self, nid: NodeId) -> bool {
        let before = Instant::now();
        let value = std::fs::read(self.hb_file(nid)).ok();
        let after = Instant::now();
        let mut seen = locked(&self.seen);
        match seen.get_mut(&nid) {
            Some(s) if s.value == value => {
                // Not looking for a while: this node was stopped or starved itself; what it
                // missed is no evidence against the others.
                if before.saturating_duration_since(s.looked) > self.opts.timeout / 2 {
                    s.changed = after;
                }
                s.looked = after;
                before.saturating_duration_since(s.changed) > self.opts.timeout
            }
            _ => {
                seen.insert(
                    nid,
                    Seen {
                        value,
                        changed: after,
                        looked: after,
                    },
                );
                false
            }
        }
    }

    /// Members of `members` that are gone, and why. This process (also a former start of it,
    /// which keeps the pid) is never one of them.
    fn dead(&self, members: &HashMap<NodeId, Proc>) -> Vec<(NodeId, &'static str)> {
        let mut out = Vec::new();
        for (nid, p) in members {
            if *p == self.myself {
                continue;
            }
            if !alive(*p) {
                out.push((*nid, "its process is gone"));
            } else if self.stale(*nid) {
                out.push((*nid, "its heartbeat is older than the timeout"));
            }
        }
        out
    }

    /// Under the log's lock: appends leaves for gone members; returns the members left.
    fn reap_locked(&self, f: &mut File) -> Result<HashMap<NodeId, Proc>, ClusterError> {
        let buf = read_all(f, self.path())?;
        let mut t = Tracker::default();
        for (_, r) in parse(&buf, 0).0 {
            t.see(&r);
        }
        for (nid, why) in self.dead(&t.members) {
            tracing::warn!(
                "local driver: member {nid} leaves: {why} (timeout {:?})",
                self.opts.timeout
            );
            let node = SdNode {
                nid,
                nr_vnodes: 0,
                zone: 0,
                space: 0,
            };
            append_locked(self.path(), self.myself, f, Event::Leave { node })?;
            t.members.remove(&nid);
        }
        Ok(t.members)
    }

    /// Appends the join of `me`; returns the offset past it.
    fn join_blocking(&self, me: SdNode, info: JoinInfo) -> Result<u64, ClusterError> {
        let mut f = lock_log(self.path())?;
        let members = self.reap_locked(&mut f)?;
        if members.values().all(|p| *p == self.myself) {
            // Nobody else alive: this is a new history.
            f.set_len(0).map_err(io_err(self.path()))?;
        } else if members.get(&me.nid) == Some(&self.myself) {
            // A former start of this process, still a member: it leaves first.
            append_locked(self.path(), self.myself, &mut f, Event::Leave { node: me })?;
        }
        append_locked(
            self.path(),
            self.myself,
            &mut f,
            Event::Join { node: me, info },
        )
    }

    fn reap(&self) -> Result<(), ClusterError> {
        let mut f = lock_log(self.path())?;
        self.reap_locked(&mut f).map(|_| ())
    }

    async fn deliver_loop(
        self: Arc<Self>,
        tx: mpsc::UnboundedSender<Delivery>,
        me: SdNode,
        incarnation: u64,
    ) {
        let mut offset = 0u64;
        let mut joined = false;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            if self.me().is_none() {
                return;
            }
            match read_from(self.path(), offset + pending.len() as u64) {
                Ok(more) if !more.is_empty() => {
                    pending.extend_from_slice(&more);
                    let (recs, used) = parse(&pending, offset);
                    pending.drain(..used);
                    offset += used as u64;
                    for (seq, r) in recs {
                        match &r.ev {
                            Event::Join { node, info }
                                if node.nid == me.nid && info.incarnation == incarnation =>
                            {
                                joined = true
                            }
                            Event::Leave { node } if joined && node.nid == me.nid => {
                                if self.me().is_none() {
                                    return; // our own clean leave
                                }
                                restart();
                            }
                            _ => {}
                        }
                        locked(&self.delivered).see(&r);
                        if tx.send((seq, r.time, r.ev)).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("local driver: {e}"),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Checks the members' pids and heartbeats, and appends leaves for gone ones.
    fn watch(self: Arc<Self>) {
        loop {
            std::thread::sleep(self.opts.watch_every());
            if self.me().is_none() {
                return;
            }
            let members = locked(&self.delivered).members.clone();
            locked(&self.seen).retain(|n, _| members.contains_key(n));
            if !self.dead(&members).is_empty() {
                if let Err(e) = self.reap() {
                    tracing::warn!("local driver: {e}");
                }
            }
        }
    }

    /// Writes this node's heartbeat at a fixed interval; after a gap, looks whether the others
    /// declared this node gone meanwhile. `last`: when the last heartbeat started.
    fn heartbeat(self: Arc<Self>, me: SdNode, incarnation: u64, mut last: Instant) {
        let fence = self.opts.fence();
        loop {
            std::thread::sleep(self.opts.beat_every());
            if self.me().is_none() {
                return;
            }
            let start = Instant::now();
            if start.saturating_duration_since(last) <= fence {
                match self.beat(me.nid) {
                    Ok(()) if last.elapsed() <= fence => {
                        self.stamp(start);
                        last = start;
                        continue;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!("local driver: heartbeat: {e}");
                        continue;
                    }
                }
            }
            if let Some(at) = self.recheck(me, incarnation, last) {
                last = at;
            }
        }
    }

    /// This node did not beat for a while: it serves nothing while it reads, under the log's
    /// lock, whether it is still a member; restarts if not, beats again if so. Returns when
    /// the new heartbeat started, `None` if it could not be written.
    fn recheck(&self, me: SdNode, incarnation: u64, last: Instant) -> Option<Instant> {
        self.fencing.store(true, Ordering::SeqCst);
        tracing::warn!(
            "local driver: no heartbeat for {:?} (stopped or starved?): serving nothing until \
             the log says whether this node is still a member",
            last.elapsed()
        );
        let r = (|| -> Result<Option<Instant>, ClusterError> {
            let mut f = lock_log(self.path())?;
            let buf = read_all(&mut f, self.path())?;
            if self.me().is_none() {
                return Ok(None); // leaving anyway
            }
            if declared_gone(&buf, me.nid, incarnation) {
                restart();
            }
            let at = Instant::now();
            self.beat(me.nid)?;
            self.stamp(at);
            Ok(Some(at))
        })();
        match r {
            Ok(Some(at)) => {
                self.fencing.store(false, Ordering::SeqCst);
                tracing::info!("local driver: still a member; serving again");
                Some(at)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("local driver: {e}");
                None
            }
        }
    }
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len <= offset {
        return Ok(Vec::new());
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity((len - offset) as usize);
    f.take(len - offset).read_to_end(&mut buf)?;
    Ok(buf)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClusterError> + Send + 'static,
) -> Result<T, ClusterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClusterError::Other(e.to_string()))?
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), ClusterError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| ClusterError::Other(format!("local driver: cannot start {name}: {e}")))
}

impl Driver for LocalDriver {
    fn start(
        self: Arc<Self>,
        me: SdNode,
        info: JoinInfo,
        tx: mpsc::UnboundedSender<Delivery>,
    ) -> BoxFut<'static, Result<(), ClusterError>> {
        Box::pin(async move {
            let incarnation = info.incarnation;
            *locked(&self.me) = Some(me);
            let d = self.clone();
            // The heartbeat is there before the join: nobody sees the member without one.
            let first = blocking(move || {
                let at = Instant::now();
                d.beat(me.nid)?;
                d.stamp(at);
                d.join_blocking(me, info)?;
                Ok(at)
            })
            .await?;
            tokio::spawn(self.clone().deliver_loop(tx, me, incarnation));
            let d = self.clone();
            thread("local-heartbeat", move || {
                d.heartbeat(me, incarnation, first)
            })?;
            let d = self.clone();
            thread("local-watch", move || d.watch())?;
            Ok(())
        })
    }

    fn notify(&self, msg: Message) -> BoxFut<'_, Result<u64, ClusterError>> {
        Box::pin(async move {
            let from = self
                .me()
                .ok_or_else(|| ClusterError::Other("not joined".into()))?;
            let path = self.path().to_path_buf();
            let by = self.myself;
            blocking(move || append(&path, by, Event::Notify { from, msg })).await
        })
    }

    fn lock(&self) -> BoxFut<'_, Result<LockGuard, ClusterError>> {
        Box::pin(async move {
            let lock_path = self.lock_path.clone();
            let path = self.path().to_path_buf();
            blocking(move || {
                let g = Flock::exclusive(&lock_path)?;
                let seq = std::fs::metadata(&path)
                    .map(|m| m.len())
                    .map_err(io_err(&path))?;
                Ok(LockGuard {
                    _inner: Box::new(g.0),
                    seq,
                })
            })
            .await
        })
    }

    fn sync(&self) -> BoxFut<'_, Result<u64, ClusterError>> {
        Box::pin(async move {
            let path = self.path().to_path_buf();
            blocking(move || {
                std::fs::metadata(&path)
                    .map(|m| m.len())
                    .map_err(io_err(&path))
            })
            .await
        })
    }

    fn leave(&self) -> BoxFut<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            let me = locked(&self.me).take();
            if let Some(node) = me {
                let path = self.path().to_path_buf();
                let hb = self.hb_file(node.nid);
                let by = self.myself;
                blocking(move || {
                    append(&path, by, Event::Leave { node })?;
                    let _ = std::fs::remove_file(hb);
                    Ok(())
                })
                .await?;
            }
            Ok(())
        })
    }

    fn fenced(&self) -> bool {
        self.is_fenced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn options_path_and_timeout() {
        let o = |s: &str| parse_options(s).unwrap();
        assert_eq!(o(""), Options::default());
        assert_eq!(o("").path, PathBuf::from("/tmp/sheepdog_shm"));
        assert_eq!(o("").timeout, ms(5000));
        assert_eq!(o("/tmp/x").path, PathBuf::from("/tmp/x"));
        assert_eq!(o("/tmp/x").timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            o("/tmp/x,timeout=2500"),
            Options {
                path: "/tmp/x".into(),
                timeout: ms(2500)
            }
        );
        assert_eq!(o("timeout=1000").path, PathBuf::from(DEFAULT_PATH));
        assert_eq!(o("timeout=1000").timeout, ms(1000));
        assert_eq!(o(",timeout=1000").path, PathBuf::from(DEFAULT_PATH));
        assert_eq!(o("/tmp/x,timeout=1000,").timeout, ms(1000));
        // Paths as they always were: commas and '=' in a path stay in it.
        assert_eq!(o("/tmp/a,b").path, PathBuf::from("/tmp/a,b"));
        assert_eq!(o("/tmp/a=b").path, PathBuf::from("/tmp/a=b"));
        assert_eq!(o("/tmp/a,b,timeout=900").path, PathBuf::from("/tmp/a,b"));
        assert_eq!(o("/tmp/a,b,timeout=900").timeout, ms(900));
        for bad in [
            "/tmp/x,timeout=",
            "/tmp/x,timeout=5s",
            "/tmp/x,timeout=-1",
            "/tmp/x,timeout=10",
            "/tmp/x,timout=5000",
            "/tmp/x,timeout=1000,extra",
        ] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
        let d = Options {
            timeout: ms(5000),
            ..Options::default()
        };
        assert_eq!(
            (d.beat_every(), d.watch_every(), d.fence()),
            (ms(500), ms(100), ms(3750))
        );
        let short = Options {
            timeout: ms(400),
            ..Options::default()
        };
        assert_eq!((short.beat_every(), short.watch_every()), (ms(100), ms(40)));
    }

    fn driver(dir: &Path, timeout_ms: u64) -> LocalDriver {
        LocalDriver::with_options(Options {
            path: dir.join("shm"),
            timeout: ms(timeout_ms),
        })
    }

    fn nid(port: u16) -> NodeId {
        NodeId::new("127.0.0.1".parse().unwrap(), port)
    }

    /// Looks at `n`'s heartbeat every 20 ms for `dur`; whether it was found stale.
    fn watch_for(d: &LocalDriver, n: NodeId, dur: Duration) -> bool {
        let end = Instant::now() + dur;
        while Instant::now() < end {
            if d.stale(n) {
                return true;
            }
            std::thread::sleep(ms(20));
        }
        false
    }

    #[test]
    fn a_heartbeat_that_stops_changing_is_stale_after_the_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), 300);
        let other = driver(tmp.path(), 300);
        let n = nid(7001);
        other.beat(n).unwrap();
        let t = Instant::now();
        assert!(!d.stale(n), "first sight is never stale");
        // Beating every 100 ms: never stale.
        for _ in 0..6 {
            assert!(!watch_for(&d, n, ms(100)));
            other.beat(n).unwrap();
        }
        // No more beats: stale after the timeout, not before.
        let t0 = Instant::now();
        assert!(watch_for(&d, n, ms(1000)));
        let took = t0.elapsed();
        assert!(took >= ms(300) && took < ms(600), "{took:?}");
        // A new beat: alive again.
        other.beat(n).unwrap();
        assert!(!d.stale(n));
        // A watcher that did not look for a while (stopped itself) starts counting again.
        std::thread::sleep(ms(400));
        assert!(!d.stale(n), "a paused watcher blames nobody at once");
        assert!(watch_for(&d, n, ms(1000)));
        // A member without a heartbeat file gets the same timeout.
        let missing = nid(7002);
        assert!(!d.stale(missing));
        assert!(watch_for(&d, missing, ms(1000)));
        assert!(t.elapsed() > ms(1000));
    }

    #[test]
    fn a_node_whose_heartbeat_is_late_serves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), 400);
        assert!(!d.is_fenced(), "not started: nothing to say");
        d.stamp(Instant::now());
        assert!(!d.is_fenced());
        std::thread::sleep(ms(350)); // past 3/4 of the timeout
        assert!(d.is_fenced());
        d.stamp(Instant::now());
        assert!(!d.is_fenced());
        d.fencing.store(true, Ordering::SeqCst);
        assert!(d.is_fenced());
    }

    #[test]
    fn a_node_back_from_a_pause_and_still_a_member_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), 400);
        let me = SdNode {
            nid: nid(7000),
            nr_vnodes: 128,
            zone: 0,
            space: 0,
        };
        let info = JoinInfo {
            incarnation: 5,
            ..Default::default()
        };
        *locked(&d.me) = Some(me);
        d.beat(me.nid).unwrap();
        let before = std::fs::read(d.hb_file(me.nid)).unwrap();
        d.stamp(Instant::now());
        d.join_blocking(me, info).unwrap();
        std::thread::sleep(ms(350));
        assert!(d.is_fenced(), "late: serves nothing");
        // Nobody declared it gone: a new heartbeat, and it serves again.
        let last = Instant::now() - ms(350);
        assert!(d.recheck(me, 5, last).is_some());
        assert!(!d.is_fenced());
        assert_ne!(std::fs::read(d.hb_file(me.nid)).unwrap(), before);
    }

    fn line(ev: Event) -> Vec<u8> {
        let mut v = serde_json::to_vec(&Record {
            pid: 1,
            start: 1,
            time: 0,
            ev,
        })
        .unwrap();
        v.push(b'\n');
        v
    }

    #[test]
    fn a_leave_after_this_start_s_join_means_declared_gone() {
        let node = |port| SdNode {
            nid: nid(port),
            nr_vnodes: 128,
            zone: 0,
            space: 0,
        };
        let join = |port, incarnation| Event::Join {
            node: node(port),
            info: JoinInfo {
                incarnation,
                ..Default::default()
            },
        };
        let leave = |port| Event::Leave { node: node(port) };
        let log = |evs: Vec<Event>| evs.into_iter().flat_map(line).collect::<Vec<u8>>();
        // An earlier start's leave is history.
        let buf = log(vec![join(1, 1), leave(1), join(2, 9), join(1, 2)]);
        assert!(!declared_gone(&buf, nid(1), 2));
        // Others' leaves do not matter; ours does.
        let buf = log(vec![join(1, 2), join(2, 9), leave(2)]);
        assert!(!declared_gone(&buf, nid(1), 2));
        let buf = log(vec![join(1, 2), join(2, 9), leave(1)]);
        assert!(declared_gone(&buf, nid(1), 2));
        // A new history without our join.
        let buf = log(vec![join(2, 9)]);
        assert!(declared_gone(&buf, nid(1), 2));
    }

    #[test]
    fn joins_reap_and_a_former_start_of_this_process_leaves_first() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), 5000);
        let me = SdNode {
            nid: nid(7000),
            nr_vnodes: 128,
            zone: 0,
            space: 0,
        };
        let info = |incarnation| JoinInfo {
            incarnation,
            ..Default::default()
        };
        let events = |d: &LocalDriver| -> Vec<Event> {
            let buf = std::fs::read(d.path()).unwrap();
            parse(&buf, 0).0.into_iter().map(|(_, r)| r.ev).collect()
        };
        d.join_blocking(me, info(1)).unwrap();
        assert_eq!(events(&d).len(), 1);
        // A dead member (a pid that is no process) is reaped by the next joiner; a live
        // other one (this test's parent) keeps the history.
        let dead = Proc {
            pid: u32::MAX - 1,
            start: 1,
        };
        let parent = std::os::unix::process::parent_id();
        let live = Proc {
            pid: parent,
            start: proc_start(parent).unwrap(),
        };
        let mut f = lock_log(d.path()).unwrap();
        for (p, port) in [(dead, 7001), (live, 7002)] {
            let node = SdNode {
                nid: nid(port),
                ..me
            };
            append_locked(
                d.path(),
                p,
                &mut f,
                Event::Join {
                    node,
                    info: info(3),
                },
            )
            .unwrap();
        }
        drop(f);
        // This process starts again (as restart_self does: same pid) with itself a member.
        d.join_blocking(me, info(2)).unwrap();
        let evs = events(&d);
        assert_eq!(evs.len(), 6, "{evs:?}");
        assert!(matches!(&evs[3], Event::Leave { node } if node.nid == nid(7001)));
        assert!(matches!(&evs[4], Event::Leave { node } if node.nid == me.nid));
        assert!(matches!(&evs[5], Event::Join { node, .. } if node.nid == me.nid));
        assert!(!declared_gone(&std::fs::read(d.path()).unwrap(), me.nid, 2));
        // Alone with a former self: a new history.
        let alone = driver(&tmp.path().join("b"), 5000);
        std::fs::create_dir_all(tmp.path().join("b")).unwrap();
        alone.join_blocking(me, info(1)).unwrap();
        alone.join_blocking(me, info(2)).unwrap();
        let evs = events(&alone);
        assert_eq!(evs.len(), 1, "{evs:?}");
    }
}
