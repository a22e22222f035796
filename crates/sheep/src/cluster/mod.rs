//! Cluster membership: drivers behind one trait, and the shared state they drive.
//!
//! A driver delivers the same ordered events (join, leave, notify) to every node, offers a
//! cluster-wide mutex, and notices dead members. `state` turns the events into membership,
//! epochs and configuration. Owns: ordering and membership. Never: object data.

pub mod corosync;
pub mod heartbeat;
pub mod local;
pub mod state;
pub mod zookeeper;

use state::{Event, JoinInfo, Message};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A delivered event: its position in the cluster's total order, when it was sent (seconds
/// since the epoch; 0 when unknown), and the event.
pub type Delivery = (u64, u64, Event);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster driver I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster driver: {0}")]
    Other(String),
}

/// Held while the cluster-wide mutex is taken; dropping it releases the mutex.
pub struct LockGuard {
    pub _inner: Box<dyn Send + Sync>,
    /// Position of the last event in the order when the lock was taken: apply up to here
    /// before acting under the lock.
    pub seq: u64,
}

pub trait Driver: Send + Sync + 'static {
    /// Join the cluster as `me` and deliver every event (from the start of the cluster's
    /// current history, own join included) on `tx`, in order, until `leave`.
    fn start(
        self: Arc<Self>,
        me: proto::SdNode,
        info: JoinInfo,
        tx: mpsc::UnboundedSender<Delivery>,
    ) -> BoxFut<'static, Result<(), ClusterError>>;
    /// Broadcast `msg`; returns its position in the order.
    fn notify(&self, msg: Message) -> BoxFut<'_, Result<u64, ClusterError>>;
    /// Take the cluster-wide mutex.
    fn lock(&self) -> BoxFut<'_, Result<LockGuard, ClusterError>>;
    /// Position of the newest event in the order now (to catch up before answering).
    fn sync(&self) -> BoxFut<'_, Result<u64, ClusterError>>;
    /// Leave the cluster (clean stop).
    fn leave(&self) -> BoxFut<'_, Result<(), ClusterError>>;
    /// Whether this node may have been declared gone by the others and must serve nothing
    /// now (the local driver: its own heartbeat is overdue). Checked on every request.
    fn fenced(&self) -> bool {
        false
    }
}

/// Set in the environment of a sheep that restarted itself after losing the cluster engine:
/// it waits for the engine to come back instead of failing at once.
const REJOIN_ENV: &str = "SHEEP_REJOIN";

/// Whether this process is such a restart.
pub(crate) fn rejoining() -> bool {
    std::env::var_os(REJOIN_ENV).is_some()
}

/// A node that may have been declared dead by the others (session expired, quorum lost) stops
/// serving at once: this process is replaced by a fresh start of the same sheep, which rejoins
/// as a new member once the engine is back. Never a split brain.
pub(crate) fn restart_self(why: &str) -> ! {
    tracing::error!("{why}: this node stops serving I/O and rejoins as a new member");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new("/proc/self/exe")
            .args(args)
            .env(REJOIN_ENV, "1"),
    );
    tracing::error!("cannot restart sheep: {err}");
    std::process::exit(1)
}

/// Builds the driver named by `-c DRIVER[:OPTIONS]`.
pub fn driver_from_option(opt: &str) -> Result<Arc<dyn Driver>, String> {
    let (name, arg) = match opt.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (opt, None),
    };
    match name {
        "local" => {
            let o = local::parse_options(arg.unwrap_or(""))?;
            Ok(Arc::new(local::LocalDriver::with_options(o)))
        }
        "zookeeper" => {
            let o = zookeeper::parse_options(arg.unwrap_or(""))?;
            Ok(Arc::new(zookeeper::ZkDriver::new(o)))
        }
        "corosync" => Ok(Arc::new(corosync::CorosyncDriver::new(arg)?)),
        "shepherd" => Err(format!(
            "cluster driver '{name}' is not supported; use 'local', 'zookeeper' or 'corosync'"
        )),
        other => Err(format!(
            "unknown cluster driver '{other}' (known: local, zookeeper, corosync)"
        )),
    }
}
