//! The `local` cluster driver: any number of sheep on one machine, coordinated through one file.
//!
//! The file (default `/tmp/sheepdog_shm`, `-c local:PATH`) is an append-only log of events, one
//! JSON record per line; the order of lines is the cluster's total order. Appends happen under
//! `flock` on the file; every node reads the log from the start of the cluster's history, so a
//! joiner rebuilds the same state as the others. A history ends when no member is alive: the
//! next joiner truncates the file. Members are processes: every 100 ms each node checks the
//! pids (and start times, and zombie state) of the members and appends a leave for dead ones.
//! The cluster-wide mutex is `flock` on `PATH.lock`. Owns: that file format. Never: object data.

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
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const DEFAULT_PATH: &str = "/tmp/sheepdog_shm";
const POLL: Duration = Duration::from_millis(5);
const LIVENESS_EVERY: u32 = 20; // polls: 100 ms

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

pub struct LocalDriver {
    path: PathBuf,
    lock_path: PathBuf,
    me: Mutex<Option<SdNode>>,
    myself: Proc,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.display().to_string(),
        source,
    }
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
    fn dead(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, p)| !alive(**p))
            .map(|(n, _)| *n)
            .collect()
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

impl LocalDriver {
    pub fn new(path: PathBuf) -> LocalDriver {
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let pid = std::process::id();
        LocalDriver {
            path,
            lock_path: lock_path.into(),
            me: Mutex::new(None),
            myself: Proc {
                pid,
                start: proc_start(pid).unwrap_or(0),
            },
        }
    }

    fn me(&self) -> Option<SdNode> {
        *self.me.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_log(&self) -> Result<File, ClusterError> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(io_err(&self.path))
    }

    /// Appends one record under the log's flock; returns the offset past it.
    fn append_locked(&self, f: &mut File, ev: Event) -> Result<u64, ClusterError> {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut line = serde_json::to_vec(&Record {
            pid: self.myself.pid,
            start: self.myself.start,
            time,
            ev,
        })
        .map_err(|e| ClusterError::Other(e.to_string()))?;
        line.push(b'\n');
        let len = f.seek(SeekFrom::End(0)).map_err(io_err(&self.path))?;
        if len > 0 {
            let mut last = [0u8; 1];
            f.seek(SeekFrom::Start(len - 1))
                .map_err(io_err(&self.path))?;
            f.read_exact(&mut last).map_err(io_err(&self.path))?;
            if last[0] != b'\n' {
                line.insert(0, b'\n');
            }
        }
        f.write_all(&line).map_err(io_err(&self.path))?;
        f.seek(SeekFrom::End(0)).map_err(io_err(&self.path))
    }

    fn read_all(f: &mut File, path: &Path) -> Result<Vec<u8>, ClusterError> {
        let mut buf = Vec::new();
        f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        f.read_to_end(&mut buf).map_err(io_err(path))?;
        Ok(buf)
    }

    /// Under the log's lock: append leaves for dead members; returns whether any member lives.
    fn reap_locked(&self, f: &mut File) -> Result<bool, ClusterError> {
        let buf = Self::read_all(f, &self.path)?;
        let mut t = Tracker::default();
        for (_, r) in parse(&buf, 0).0 {
            t.see(&r);
        }
        let dead = t.dead();
        for nid in &dead {
            let node = SdNode {
                nid: *nid,
                nr_vnodes: 0,
                zone: 0,
                space: 0,
            };
            self.append_locked(f, Event::Leave { node })?;
        }
        Ok(t.members.len() > dead.len())
    }

    fn join_blocking(&self, me: SdNode, info: JoinInfo) -> Result<(), ClusterError> {
        let mut f = self.open_log()?;
        // SAFETY: flock on a valid fd, released when `f` closes at the end of this function.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&self.path)(std::io::Error::last_os_error()));
        }
        if !self.reap_locked(&mut f)? {
            // Nobody alive: this is a new history.
            f.set_len(0).map_err(io_err(&self.path))?;
        }
        self.append_locked(&mut f, Event::Join { node: me, info })?;
        Ok(())
    }

    fn append(&self, ev: Event) -> Result<u64, ClusterError> {
        let mut f = self.open_log()?;
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&self.path)(std::io::Error::last_os_error()));
        }
        self.append_locked(&mut f, ev)
    }

    fn reap(&self) -> Result<(), ClusterError> {
        let mut f = self.open_log()?;
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&self.path)(std::io::Error::last_os_error()));
        }
        self.reap_locked(&mut f).map(|_| ())
    }

    async fn deliver_loop(self: Arc<Self>, tx: mpsc::UnboundedSender<Delivery>) {
        let mut offset = 0u64;
        let mut tracker = Tracker::default();
        let mut tick = 0u32;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            if self.me().is_none() {
                return;
            }
            match read_from(&self.path, offset + pending.len() as u64) {
                Ok(more) if !more.is_empty() => {
                    pending.extend_from_slice(&more);
                    let (recs, used) = parse(&pending, offset);
                    pending.drain(..used);
                    offset += used as u64;
                    for (seq, r) in recs {
                        tracker.see(&r);
                        if tx.send((seq, r.time, r.ev)).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("local driver: {e}"),
            }
            tick += 1;
            if tick.is_multiple_of(LIVENESS_EVERY) && !tracker.dead().is_empty() {
                let me = self.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.reap()).await {
                    tracing::warn!("local driver: {e}");
                }
            }
            tokio::time::sleep(POLL).await;
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

impl Driver for LocalDriver {
    fn start(
        self: Arc<Self>,
        me: SdNode,
        info: JoinInfo,
        tx: mpsc::UnboundedSender<Delivery>,
    ) -> BoxFut<'static, Result<(), ClusterError>> {
        Box::pin(async move {
            *self.me.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
            let d = self.clone();
            blocking(move || d.join_blocking(me, info)).await?;
            tokio::spawn(self.deliver_loop(tx));
            Ok(())
        })
    }

    fn notify(&self, msg: Message) -> BoxFut<'_, Result<u64, ClusterError>> {
        Box::pin(async move {
            let from = self
                .me()
                .ok_or_else(|| ClusterError::Other("not joined".into()))?;
            let path = self.path.clone();
            let myself = self.myself;
            blocking(move || {
                let d = LocalDriver {
                    lock_path: PathBuf::new(),
                    me: Mutex::new(Some(from)),
                    myself,
                    path,
                };
                d.append(Event::Notify { from, msg })
            })
            .await
        })
    }

    fn lock(&self) -> BoxFut<'_, Result<LockGuard, ClusterError>> {
        Box::pin(async move {
            let lock_path = self.lock_path.clone();
            let path = self.path.clone();
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
            let path = self.path.clone();
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
            let me = self.me.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(node) = me {
                let path = self.path.clone();
                let myself = self.myself;
                blocking(move || {
                    let d = LocalDriver {
                        lock_path: PathBuf::new(),
                        me: Mutex::new(None),
                        myself,
                        path,
                    };
                    d.append(Event::Leave { node }).map(|_| ())
                })
                .await?;
            }
            Ok(())
        })
    }
}
