//! The `corosync` cluster driver (`-c corosync[:GROUP][,timeout=MS]`): membership and the
//! total order of events come from corosync's closed process groups (CPG), which deliver
//! messages and membership changes in the same order to every member (virtual synchrony).
//!
//! Every sheep joins the CPG group (default `sheepdog`) and multicasts its join; a member that
//! leaves or dies shows up in a configuration change, which becomes a leave event at the same
//! point of the order everywhere. CPG keeps no history, so the oldest member multicasts the
//! history (and the state of the cluster mutex) to each joiner, which replays it before the
//! events that follow its join, exactly as the other drivers replay their logs. The mutex is a
//! queue of lock requests kept by every member in the same order. A node in a partition
//! without quorum (votequorum) stops serving and restarts, waiting for quorum.
//!
//! Liveness. CPG membership follows a process's connection to its corosync daemon, not whether
//! the process answers: a sheep that stops (kill -STOP, a hung process) stays a CPG member for
//! ever. So every member multicasts a heartbeat (`Wire::Beat`, not a cluster event) every
//! 500 ms (less with timeouts under 2 s) from a thread of its own, and each member remembers,
//! by its own monotonic clock, when it last heard each other one. A member not heard from for
//! the timeout (5 s; `timeout=MS`) is evicted: the oldest member that is itself not overdue
//! multicasts `Wire::Evict`, which every member turns into a leave at that point of the total
//! order (a second eviction of the same member finds it gone and changes nothing). A node that
//! stopped looking for more than half the timeout (it was stopped itself) starts counting again
//! rather than blame the others for its own pause.
//!
//! A sheep that resumes after such a pause must not go on as a member. Each beat carries when
//! it was sent; when this node's own beat comes back in the order with no eviction of it before
//! it, nobody can evict it until a timeout after that beat was sent (the others count from
//! when they heard it, which is later). While the newest such beat is older than 3/4 of the
//! timeout it answers no request (`Driver::fenced`); it unfences when its next beat comes back,
//! or it reads its own eviction first (everything queued for it comes before its next beat) and
//! restarts itself (`restart_self`), to rejoin as a returning node. Messages of an evicted
//! process (events, locks, beats) change nothing. `restart_self` keeps the pid, which CPG uses
//! to name a member: corosync refuses the restarted sheep's join until it has delivered the
//! former process's leave, so the two are never taken for each other.
//!
//! libcpg and libquorum are loaded at run time (`libloading`), so building sheep needs no
//! corosync headers; only `-c corosync` needs the libraries (Debian: libcpg4, libquorum5).
//! Owns: the CPG wire messages. Never: object data.

use super::heartbeat::Heartbeat;
use super::state::{Event, JoinInfo, Message};
use super::{BoxFut, ClusterError, Delivery, Driver, LockGuard};
use proto::SdNode;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const CS_OK: c_int = 1;
const CS_ERR_TRY_AGAIN: c_int = 6;
const CS_ERR_EXIST: c_int = 14;
const CS_DISPATCH_BLOCKING: c_int = 3;
const CPG_TYPE_AGREED: c_int = 2;

#[repr(C)]
struct CpgName {
    length: u32,
    value: [u8; 128],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CpgAddress {
    nodeid: u32,
    pid: u32,
    reason: u32,
}

type DeliverFn = unsafe extern "C" fn(u64, *const CpgName, u32, u32, *mut c_void, usize);
type ConfchgFn = unsafe extern "C" fn(
    u64,
    *const CpgName,
    *const CpgAddress,
    usize,
    *const CpgAddress,
    usize,
    *const CpgAddress,
    usize,
);
type QuorumNotifyFn = unsafe extern "C" fn(u64, u32, u64, u32, *mut u32);

#[repr(C)]
struct CpgCallbacks {
    deliver: DeliverFn,
    confchg: ConfchgFn,
}

#[repr(C)]
struct IoVec {
    base: *const c_void,
    len: usize,
}

/// The functions of libcpg and libquorum this driver uses.
struct Api {
    cpg_initialize: unsafe extern "C" fn(*mut u64, *mut CpgCallbacks) -> c_int,
    cpg_dispatch: unsafe extern "C" fn(u64, c_int) -> c_int,
    cpg_join: unsafe extern "C" fn(u64, *const CpgName) -> c_int,
    cpg_leave: unsafe extern "C" fn(u64, *const CpgName) -> c_int,
    cpg_mcast_joined: unsafe extern "C" fn(u64, c_int, *const IoVec, c_uint) -> c_int,
    cpg_local_get: unsafe extern "C" fn(u64, *mut c_uint) -> c_int,
    quorum_initialize: unsafe extern "C" fn(*mut u64, *mut QuorumNotifyFn, *mut u32) -> c_int,
    quorum_getquorate: unsafe extern "C" fn(u64, *mut c_int) -> c_int,
    _cpg: libloading::Library,
    _quorum: libloading::Library,
}

impl Api {
    fn load() -> Result<Api, String> {
        // SAFETY: loading corosync's client libraries runs no initialisers with preconditions.
        let open = |names: &[&str]| -> Result<libloading::Library, String> {
            let mut last = String::new();
            for n in names {
                match unsafe { libloading::Library::new(n) } {
                    Ok(l) => return Ok(l),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(format!(
                "cannot load {} (install corosync's client libraries: {last})",
                names[0]
            ))
        };
        let cpg = open(&["libcpg.so.4", "libcpg.so"])?;
        let quorum = open(&["libquorum.so.5", "libquorum.so"])?;
        // SAFETY: the symbols have these C signatures (corosync/cpg.h, corosync/quorum.h).
        unsafe {
            macro_rules! sym {
                ($lib:expr, $name:literal) => {
                    *$lib
                        .get($name)
                        .map_err(|e| format!("corosync library lacks a symbol: {e}"))?
                };
            }
            Ok(Api {
                cpg_initialize: sym!(cpg, b"cpg_initialize\0"),
                cpg_dispatch: sym!(cpg, b"cpg_dispatch\0"),
                cpg_join: sym!(cpg, b"cpg_join\0"),
                cpg_leave: sym!(cpg, b"cpg_leave\0"),
                cpg_mcast_joined: sym!(cpg, b"cpg_mcast_joined\0"),
                cpg_local_get: sym!(cpg, b"cpg_local_get\0"),
                quorum_initialize: sym!(quorum, b"quorum_initialize\0"),
                quorum_getquorate: sym!(quorum, b"quorum_getquorate\0"),
                _cpg: cpg,
                _quorum: quorum,
            })
        }
    }
}

/// A CPG member: corosync node id and process id.
type Member = (u32, u32);

/// A member not heard from for this long is evicted.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a restarted sheep waits for corosync to forget its former connection.
const REJOIN_WAIT: Duration = Duration::from_secs(30);

/// What follows `-c corosync:`: `[GROUP][,timeout=MS]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub group: String,
    pub timeout: Duration,
}

impl Heartbeat for Options {
    fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Parses `[GROUP][,timeout=MS]` (an empty group is the default one, `sheepdog`).
pub fn parse_options(arg: &str) -> Result<Options, String> {
    let mut o = Options {
        group: "sheepdog".into(),
        timeout: DEFAULT_TIMEOUT,
    };
    for (i, item) in arg.split(',').enumerate() {
        match item.split_once('=') {
            None if i == 0 => {
                if !item.is_empty() {
                    o.group = item.to_string();
                }
            }
            Some(("timeout", ms)) => {
                let ms: u64 = ms.parse().map_err(|_| {
                    format!("corosync driver: timeout={ms}: not a number of milliseconds")
                })?;
                o.timeout = Duration::from_millis(ms);
                if o.timeout < MIN_TIMEOUT {
                    return Err(format!(
                        "corosync driver: timeout={ms}: at least {} ms",
                        MIN_TIMEOUT.as_millis()
                    ));
                }
            }
            _ if item.is_empty() => {}
            _ => {
                return Err(format!(
                    "corosync driver: unknown option '{item}' (known: GROUP, timeout=MS)"
                ))
            }
        }
    }
    if o.group.len() > 127 {
        return Err("corosync group name is too long".into());
    }
    Ok(o)
}

/// Origin of the nanosecond readings of this process (`now_ns`).
static CLOCK: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since `CLOCK`, plus 1 (0 stays "never").
fn now_ns() -> u64 {
    CLOCK.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// What sheep multicast to each other.
#[derive(Serialize, Deserialize)]
enum Wire {
    /// A cluster event (join, clean leave, notify); `id` lets the sender find its delivery.
    Event {
        id: u64,
        ev: Event,
    },
    /// The history and mutex queue, for the member `to` that just joined.
    History {
        to: Member,
        events: Vec<(u64, Event)>,
        /// Members that joined, oldest first, with their 80-byte node records.
        joined: Vec<(Member, Vec<u8>)>,
        locks: Vec<(Member, u64)>,
    },
    Lock {
        id: u64,
    },
    Unlock {
        id: u64,
    },
    /// A heartbeat; `at`: when it was sent, by the sender's clock (`now_ns`).
    Beat {
        at: u64,
    },
    /// `who` was not heard from for the timeout: it leaves here in the order.
    Evict {
        who: Member,
    },
}

#[derive(Default)]
struct Shared {
    me: Option<Member>,
    /// Members that sent their join, oldest first.
    joined: Vec<(Member, SdNode)>,
    /// Every event delivered so far with its time (what a joiner needs).
    history: Vec<(u64, Event)>,
    /// Events received before this node's own history arrived.
    pending: Vec<(u64, Event)>,
    ready: bool,
    seq: u64,
    tx: Option<mpsc::UnboundedSender<Delivery>>,
    sent: HashMap<u64, oneshot::Sender<u64>>,
    locks: VecDeque<(Member, u64)>,
    lock_waiters: HashMap<u64, oneshot::Sender<u64>>,
    /// When this node last heard each other member (a beat, or its join).
    heard: HashMap<Member, Instant>,
    /// When the newest beat of this node that came back while it was a member was sent
    /// (`now_ns`; 0 before the first).
    alive_at: u64,
}

impl Shared {
    fn deliver(&mut self, time: u64, ev: Event) {
        self.seq += 1;
        self.history.push((time, ev.clone()));
        if let Some(tx) = &self.tx {
            let _ = tx.send((self.seq, time, ev));
        }
    }

    /// An event delivered now, in order.
    fn event(&mut self, ev: Event) {
        let time = crate::node::now_secs();
        if self.ready {
            self.deliver(time, ev);
        } else {
            self.pending.push((time, ev));
        }
    }

    /// `m` is no longer a member: its locks go, and its leave is delivered.
    fn remove(&mut self, m: Member) {
        self.locks.retain(|&(who, _)| who != m);
        self.heard.remove(&m);
        if let Some(pos) = self.joined.iter().position(|(j, _)| *j == m) {
            let (_, node) = self.joined.remove(pos);
            self.event(Event::Leave { node });
        }
    }

    fn is_member(&self, m: Member) -> bool {
        self.joined.iter().any(|(j, _)| *j == m)
    }

    /// Grants the mutex when our request reached the head of the queue.
    fn grant(&mut self) {
        if let (Some(&(who, id)), Some(me)) = (self.locks.front(), self.me) {
            if who == me {
                if let Some(w) = self.lock_waiters.remove(&id) {
                    let _ = w.send(self.seq);
                }
            }
        }
    }
}

/// One driver per process: the C callbacks find it here.
static SHARED: OnceLock<Arc<Mutex<Shared>>> = OnceLock::new();
static DRIVER: OnceLock<Arc<CorosyncDriver>> = OnceLock::new();

fn shared() -> Option<std::sync::MutexGuard<'static, Shared>> {
    SHARED
        .get()
        .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
}

unsafe extern "C" fn on_deliver(
    _h: u64,
    _g: *const CpgName,
    nodeid: u32,
    pid: u32,
    msg: *mut c_void,
    len: usize,
) {
    if msg.is_null() {
        return;
    }
    // SAFETY: corosync hands us `len` readable bytes at `msg` for the call's duration.
    let bytes = unsafe { std::slice::from_raw_parts(msg as *const u8, len) };
    let Ok(wire) = serde_json::from_slice::<Wire>(bytes) else {
        tracing::error!("corosync: unreadable message from {nodeid}/{pid}");
        return;
    };
    let Some(mut s) = shared() else { return };
    let sender = (nodeid, pid);
    // An evicted process that goes on (it has not seen its eviction yet) changes nothing.
    let evicted = s.ready && !s.is_member(sender);
    match wire {
        Wire::Event { ev, .. } if evicted && !matches!(ev, Event::Join { .. }) => {
            tracing::warn!("corosync: ignoring an event of {nodeid}/{pid}, not a member");
        }
        Wire::Lock { .. } | Wire::Unlock { .. } | Wire::Evict { .. } if evicted => {}
        Wire::Beat { at } => {
            if s.me == Some(sender) {
                if s.is_member(sender) {
                    s.alive_at = s.alive_at.max(at);
                } else if s.ready {
                    drop(s);
                    restart("this node is no longer a member of the CPG group's cluster");
                }
            } else if s.is_member(sender) {
                s.heard.insert(sender, Instant::now());
            }
        }
        Wire::Evict { who } => {
            if s.me == Some(who) {
                drop(s);
                restart("the other members evicted this node (no heartbeat within the timeout)");
            }
            if s.is_member(who) {
                tracing::warn!(
                    "corosync: member {}/{} leaves: evicted by {nodeid}/{pid}",
                    who.0,
                    who.1
                );
            }
            s.remove(who);
            s.grant();
        }
        Wire::Event { id, ev } => {
            let joiner = matches!(ev, Event::Join { .. }) && s.me != Some(sender);
            if let Event::Join { node, .. } = &ev {
                s.joined.retain(|(m, _)| *m != sender);
                s.joined.push((sender, *node));
                s.heard.insert(sender, Instant::now());
            }
            if let Event::Leave { .. } = &ev {
                s.joined.retain(|(m, _)| *m != sender);
            }
            s.event(ev);
            if s.me == Some(sender) {
                let seq = if s.ready { s.seq } else { 0 };
                if let Some(w) = s.sent.remove(&id) {
                    let _ = w.send(seq);
                }
            }
            // The oldest member hands a joiner the history (from another thread: the
            // dispatch thread must not wait on corosync's flow control).
            let oldest = s.joined.iter().map(|(m, _)| *m).find(|m| *m != sender);
            if joiner && s.ready && oldest == s.me {
                let wire = Wire::History {
                    to: sender,
                    events: s.history.clone(),
                    joined: s
                        .joined
                        .iter()
                        .map(|(m, n)| (*m, n.to_bytes().to_vec()))
                        .collect(),
                    locks: s.locks.iter().copied().collect(),
                };
                drop(s);
                if let Some(d) = DRIVER.get() {
                    let d = d.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = d.mcast(&wire) {
                            tracing::error!("corosync: sending the history: {e}");
                        }
                    });
                }
            }
        }
        Wire::History {
            to,
            events,
            joined,
            locks,
        } => {
            if s.me != Some(to) || s.ready {
                return;
            }
            // Our own join and what came after it were delivered here already (pending);
            // the history ends with our join.
            let mut pending = std::mem::take(&mut s.pending);
            let after = pending
                .iter()
                .position(|(_, e)| matches!(e, Event::Join { .. }))
                .map(|p| p + 1)
                .unwrap_or(0);
            let rest = pending.split_off(after.min(pending.len()));
            // Oldest first: the history's members, then those we saw join since.
            let mut all: Vec<(Member, SdNode)> = joined
                .into_iter()
                .filter_map(|(m, b)| SdNode::decode(&b).map(|n| (m, n)))
                .collect();
            for (m, n) in std::mem::take(&mut s.joined) {
                if !all.iter().any(|(k, _)| *k == m) {
                    all.push((m, n));
                }
            }
            s.joined = all;
            let now = Instant::now();
            for m in s.joined.iter().map(|(m, _)| *m).collect::<Vec<_>>() {
                s.heard.insert(m, now);
            }
            let mut q: VecDeque<(Member, u64)> = locks.into_iter().collect();
            q.extend(s.locks.drain(..));
            s.locks = q;
            s.ready = true;
            for (t, ev) in events.into_iter().chain(rest) {
                s.deliver(t, ev);
            }
            s.grant();
        }
        Wire::Lock { id } => {
            s.locks.push_back((sender, id));
            s.grant();
        }
        Wire::Unlock { id } => {
            s.locks.retain(|&(m, i)| !(m == sender && i == id));
            s.grant();
        }
    }
}

unsafe extern "C" fn on_confchg(
    _h: u64,
    _g: *const CpgName,
    members: *const CpgAddress,
    n_members: usize,
    left: *const CpgAddress,
    n_left: usize,
    _joined: *const CpgAddress,
    _n_joined: usize,
) {
    let Some(mut s) = shared() else { return };
    // SAFETY: corosync passes arrays of the given lengths, valid for the call.
    let left = if left.is_null() {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(left, n_left) }
    };
    let members = if members.is_null() {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(members, n_members) }
    };
    // Alone in the group when our own join arrives: we start the history.
    if !s.ready && members.len() == 1 && s.me == Some((members[0].nodeid, members[0].pid)) {
        s.ready = true;
        let pending = std::mem::take(&mut s.pending);
        for (t, ev) in pending {
            s.deliver(t, ev);
        }
    }
    for a in left {
        s.remove((a.nodeid, a.pid));
    }
    s.grant();
}

/// This node was evicted: restart (`restart_self`), once; another thread that finds the same
/// waits for the first one's exec.
fn restart(why: &str) -> ! {
    static RESTARTING: AtomicBool = AtomicBool::new(false);
    if RESTARTING.swap(true, Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    super::restart_self(&format!("corosync: {why}"))
}

pub struct CorosyncDriver {
    group: String,
    opts: Options,
    /// Set when this node leaves cleanly.
    leaving: AtomicBool,
    api: OnceLock<Api>,
    handle: Mutex<u64>,
    next_id: std::sync::atomic::AtomicU64,
}

// SAFETY: the loaded function pointers and libraries are plain data usable from any thread;
// libcpg serialises calls on one handle itself.
unsafe impl Send for CorosyncDriver {}
unsafe impl Sync for CorosyncDriver {}

fn group_name(group: &str) -> CpgName {
    let mut n = CpgName {
        length: group.len().min(127) as u32,
        value: [0; 128],
    };
    n.value[..n.length as usize].copy_from_slice(&group.as_bytes()[..n.length as usize]);
    n
}

impl CorosyncDriver {
    pub fn new(arg: Option<&str>) -> Result<CorosyncDriver, String> {
        let opts = parse_options(arg.unwrap_or(""))?;
        Ok(CorosyncDriver {
            group: opts.group.clone(),
            opts,
            leaving: AtomicBool::new(false),
            api: OnceLock::new(),
            handle: Mutex::new(0),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    fn api(&self) -> Result<&Api, ClusterError> {
        self.api
            .get()
            .ok_or_else(|| ClusterError::Other("corosync: not started".into()))
    }

    fn handle(&self) -> u64 {
        *self.handle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Multicasts in the group's total order, waiting out corosync's flow control.
    fn mcast(&self, w: &Wire) -> Result<(), ClusterError> {
        let api = self.api()?;
        let data = serde_json::to_vec(w).map_err(|e| ClusterError::Other(e.to_string()))?;
        let iov = IoVec {
            base: data.as_ptr() as *const c_void,
            len: data.len(),
        };
        for _ in 0..1000 {
            // SAFETY: `iov` points at `data`, alive for the call.
            let r = unsafe { (api.cpg_mcast_joined)(self.handle(), CPG_TYPE_AGREED, &iov, 1) };
            match r {
                CS_OK => return Ok(()),
                CS_ERR_TRY_AGAIN => std::thread::sleep(Duration::from_millis(10)),
                e => {
                    return Err(ClusterError::Other(format!(
                        "corosync: multicast failed ({e})"
                    )))
                }
            }
        }
        Err(ClusterError::Other(
            "corosync: multicast kept being refused".into(),
        ))
    }

    /// Whether this node's newest beat back in the order is older than the fence.
    fn is_fenced(&self) -> bool {
        let Some(s) = shared() else { return false };
        let at = s.alive_at;
        drop(s);
        at != 0 && now_ns().saturating_sub(at) > self.opts.fence().as_nanos() as u64
    }

    /// Multicasts this node's heartbeat at a fixed interval.
    fn heartbeat(self: Arc<Self>) {
        loop {
            std::thread::sleep(self.opts.beat_every());
            if self.leaving.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.mcast(&Wire::Beat { at: now_ns() }) {
                tracing::warn!("corosync: heartbeat: {e}");
            }
        }
    }

    /// Looks at the members' heartbeats; the oldest member that is not overdue itself evicts
    /// the overdue ones.
    fn watch(self: Arc<Self>) {
        let mut looked = Instant::now();
        let mut evicting: HashSet<Member> = HashSet::new();
        loop {
            std::thread::sleep(self.opts.watch_every());
            if self.leaving.load(Ordering::SeqCst) {
                return;
            }
            let Some(mut s) = shared() else { return };
            let now = Instant::now();
            if now.saturating_duration_since(looked) > self.opts.timeout / 2 {
                // This node was stopped or starved itself: what it missed is no evidence
                // against the others.
                for t in s.heard.values_mut() {
                    *t = now;
                }
            }
            looked = now;
            if !s.ready {
                continue;
            }
            let Some(me) = s.me else { continue };
            let overdue = |m: &Member| {
                *m != me
                    && s.heard
                        .get(m)
                        .is_none_or(|t| now.saturating_duration_since(*t) > self.opts.timeout)
            };
            let stale: Vec<Member> = s.joined.iter().map(|(m, _)| *m).filter(overdue).collect();
            let evictor = s.joined.iter().map(|(m, _)| *m).find(|m| !overdue(m));
            evicting.retain(|m| s.is_member(*m));
            drop(s);
            if evictor != Some(me) {
                continue;
            }
            for who in stale {
                if !evicting.insert(who) {
                    continue;
                }
                tracing::warn!(
                    "corosync: member {}/{} not heard from for {:?}: evicting it",
                    who.0,
                    who.1,
                    self.opts.timeout
                );
                if let Err(e) = self.mcast(&Wire::Evict { who }) {
                    tracing::warn!("corosync: evicting {}/{}: {e}", who.0, who.1);
                    evicting.remove(&who);
                }
            }
        }
    }

    fn quorate(api: &Api, q: u64) -> bool {
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid out parameter.
        let r = unsafe { (api.quorum_getquorate)(q, &mut v) };
        r == CS_OK && v != 0
    }
}

unsafe extern "C" fn on_quorum(_h: u64, _q: u32, _s: u64, _n: u32, _l: *mut u32) {}

impl Driver for CorosyncDriver {
    fn start(
        self: Arc<Self>,
        me: SdNode,
        info: JoinInfo,
        tx: mpsc::UnboundedSender<Delivery>,
    ) -> BoxFut<'static, Result<(), ClusterError>> {
        Box::pin(async move {
            let api = Api::load().map_err(ClusterError::Other)?;
            let api = self.api.get_or_init(|| api);
            let mut q: u64 = 0;
            let mut notify: QuorumNotifyFn = on_quorum;
            let mut qtype: u32 = 0;
            // SAFETY: out parameters and a callback table that outlives the call.
            let r = unsafe { (api.quorum_initialize)(&mut q, &mut notify, &mut qtype) };
            if r != CS_OK {
                return Err(ClusterError::Other(format!(
                    "cannot reach corosync (is corosync running?): quorum_initialize failed ({r})"
                )));
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !Self::quorate(api, q) {
                if !super::rejoining() && std::time::Instant::now() > deadline {
                    return Err(ClusterError::Other(
                        "corosync: this partition has no quorum".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let mut callbacks = Box::new(CpgCallbacks {
                deliver: on_deliver,
                confchg: on_confchg,
            });
            let mut h: u64 = 0;
            // SAFETY: out parameter; the callback table is leaked below and lives for ever.
            let r = unsafe { (api.cpg_initialize)(&mut h, &mut *callbacks) };
            if r != CS_OK {
                return Err(ClusterError::Other(format!(
                    "cannot reach corosync (is corosync running?): cpg_initialize failed ({r})"
                )));
            }
            Box::leak(callbacks);
            *self.handle.lock().unwrap_or_else(|e| e.into_inner()) = h;
            let mut nodeid: c_uint = 0;
            // SAFETY: out parameter.
            unsafe { (api.cpg_local_get)(h, &mut nodeid) };
            let member = (nodeid, std::process::id());
            let shared = SHARED.get_or_init(|| Arc::new(Mutex::new(Shared::default())));
            {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                s.me = Some(member);
                s.tx = Some(tx);
            }
            let _ = DRIVER.set(self.clone());
            let name = group_name(&self.group);
            // A restarted sheep keeps its pid: corosync refuses the join while a connection
            // of that pid is in the group (CS_ERR_EXIST) or its leave is not delivered yet
            // (CS_ERR_TRY_AGAIN), so the former process's leave always comes first.
            let deadline = std::time::Instant::now() + REJOIN_WAIT;
            loop {
                // SAFETY: `name` is a valid group name for the call.
                let r = unsafe { (api.cpg_join)(h, &name) };
                if r == CS_OK {
                    break;
                }
                if (r == CS_ERR_EXIST || r == CS_ERR_TRY_AGAIN)
                    && std::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                return Err(ClusterError::Other(format!(
                    "corosync: cannot join group {} ({r})",
                    self.group
                )));
            }
            let d = self.clone();
            std::thread::Builder::new()
                .name("corosync".into())
                .spawn(move || loop {
                    let Ok(api) = d.api() else { return };
                    // SAFETY: the handle stays valid for the life of the process.
                    let r = unsafe { (api.cpg_dispatch)(d.handle(), CS_DISPATCH_BLOCKING) };
                    if r != CS_OK {
                        super::restart_self("lost corosync");
                    }
                })
                .map_err(|e| ClusterError::Other(e.to_string()))?;
            let d = self.clone();
            std::thread::Builder::new()
                .name("corosync-quorum".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let Ok(api) = d.api() else { return };
                    if !Self::quorate(api, q) {
                        super::restart_self("corosync: this partition lost quorum");
                    }
                })
                .map_err(|e| ClusterError::Other(e.to_string()))?;
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::task::spawn_blocking({
                let d = self.clone();
                move || {
                    d.mcast(&Wire::Event {
                        id,
                        ev: Event::Join { node: me, info },
                    })
                }
            })
            .await
            .map_err(|e| ClusterError::Other(e.to_string()))??;
            let d = self.clone();
            std::thread::Builder::new()
                .name("corosync-heartbeat".into())
                .spawn(move || d.heartbeat())
                .map_err(|e| ClusterError::Other(e.to_string()))?;
            let d = self.clone();
            std::thread::Builder::new()
                .name("corosync-watch".into())
                .spawn(move || d.watch())
                .map_err(|e| ClusterError::Other(e.to_string()))?;
            Ok(())
        })
    }

    fn notify(&self, msg: Message) -> BoxFut<'_, Result<u64, ClusterError>> {
        Box::pin(async move {
            let from = {
                let s =
                    shared().ok_or_else(|| ClusterError::Other("corosync: not started".into()))?;
                let me = s.me;
                s.joined
                    .iter()
                    .find(|(m, _)| Some(*m) == me)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| ClusterError::Other("corosync: not joined yet".into()))?
            };
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            if let Some(mut s) = shared() {
                s.sent.insert(id, tx);
            }
            self.mcast(&Wire::Event {
                id,
                ev: Event::Notify { from, msg },
            })?;
            rx.await
                .map_err(|_| ClusterError::Other("corosync: message lost".into()))
        })
    }

    fn lock(&self) -> BoxFut<'_, Result<LockGuard, ClusterError>> {
        Box::pin(async move {
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            if let Some(mut s) = shared() {
                s.lock_waiters.insert(id, tx);
            }
            self.mcast(&Wire::Lock { id })?;
            let seq = rx
                .await
                .map_err(|_| ClusterError::Other("corosync: lock lost".into()))?;
            let d = DRIVER
                .get()
                .cloned()
                .ok_or_else(|| ClusterError::Other("corosync: not started".into()))?;
            Ok(LockGuard {
                _inner: Box::new(Unlock { d, id }),
                seq,
            })
        })
    }

    fn sync(&self) -> BoxFut<'_, Result<u64, ClusterError>> {
        Box::pin(async move { Ok(shared().map(|s| s.seq).unwrap_or(0)) })
    }

    fn leave(&self) -> BoxFut<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            self.leaving.store(true, Ordering::SeqCst);
            let api = self.api()?;
            let name = group_name(&self.group);
            // SAFETY: valid handle and group name.
            unsafe { (api.cpg_leave)(self.handle(), &name) };
            Ok(())
        })
    }

    fn fenced(&self) -> bool {
        self.is_fenced()
    }
}

/// Releases the cluster mutex when dropped.
struct Unlock {
    d: Arc<CorosyncDriver>,
    id: u64,
}

impl Drop for Unlock {
    fn drop(&mut self) {
        if let Err(e) = self.d.mcast(&Wire::Unlock { id: self.id }) {
            tracing::error!("corosync: releasing the cluster lock: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_group_and_timeout() {
        let o = |s: &str| parse_options(s).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(
            (o("").group.as_str(), o("").timeout),
            ("sheepdog", ms(5000))
        );
        assert_eq!(o("g1").group, "g1");
        assert_eq!(o("g1").timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            o("g1,timeout=2000"),
            Options {
                group: "g1".into(),
                timeout: ms(2000)
            }
        );
        assert_eq!(o("timeout=2000").group, "sheepdog");
        assert_eq!(o("timeout=2000").timeout, ms(2000));
        assert_eq!(o(",timeout=1500,").timeout, ms(1500));
        for bad in [
            "g,timeout=",
            "g,timeout=2s",
            "g,timeout=10",
            "g,timout=5000",
            "g,x",
        ] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
        assert!(parse_options(&"g".repeat(128)).is_err());
        let d = o("");
        assert_eq!(
            (d.beat_every(), d.watch_every(), d.fence()),
            (ms(500), ms(100), ms(3750))
        );
        assert_eq!(
            (
                o("timeout=1000").beat_every(),
                o("timeout=1000").watch_every()
            ),
            (ms(250), ms(100))
        );
    }
}
