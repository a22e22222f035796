//! The original's requests that report on or tune this one node: CLUSTER_INFO (the cluster's
//! format and members as this node knows them), MD_INFO (its disks), GET_LOGLEVEL and
//! SET_LOGLEVEL (the running daemon's log level, without a restart).
//! Owns: these answers and the daemon's current log level. Never: cluster-wide changes (they
//! go through the cluster driver), or the disk (the store reports its space).

use crate::cluster::state::Status;
use crate::node::{Node, View};
use proto::admin::{self, ClusterInfo, Disk};
use proto::SdResult;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use tracing::level_filters::LevelFilter;

/// CLUSTER_INFO: `struct cluster_info` of the current epoch, cut after its last node.
pub fn cluster_info(node: &Node, view: &View) -> Vec<u8> {
    let st = &view.state;
    let f = &st.format;
    let status = if node.killed.load(Ordering::Relaxed) {
        admin::status::KILLED
    } else {
        match st.status {
            Status::Ok => admin::status::OK,
            Status::WaitForFormat | Status::WaitForJoin => admin::status::WAIT,
            Status::Shutdown => admin::status::SHUTDOWN,
        }
    };
    // Unformatted, the flags a format would keep: this sheep's vnodes are not fixed (`-V`
    // is refused), which the original's dog checks before it formats.
    let flags = if f.ctime == 0 {
        proto::cluster_flags::AUTO_VNODES
    } else {
        f.flags
    };
    ClusterInfo {
        proto_ver: admin::SHEEP_PROTO_VER,
        disable_recovery: st.recovery_disabled,
        epoch: st.epoch,
        ctime: f.ctime,
        flags,
        nr_copies: f.copies,
        copy_policy: f.copy_policy,
        status,
        block_size_shift: f.block_size_shift,
        default_store: f.store.clone(),
        nodes: st.epoch_nodes.clone(),
    }
    .encode()
}

/// MD_INFO: this node's disks, in the original's order, with their free space and the space
/// their copies take.
pub fn md_info(node: &Node) -> Result<Vec<u8>, SdResult> {
    let disks = node.store.md_info().map_err(|e| e.result())?;
    let disks: Vec<Disk> = disks
        .into_iter()
        .enumerate()
        .map(|(i, d)| Disk {
            idx: i as u32,
            free: d.free,
            used: d.used,
            path: d.path.display().to_string(),
        })
        .collect();
    Ok(admin::encode_md_info(&disks))
}

/// The syslog number of the level the daemon logs at (`-l level=`, SET_LOGLEVEL).
static LEVEL: AtomicI32 = AtomicI32::new(6);
/// Applies a level to the daemon's logger; installed once by the daemon at start.
type Apply = Box<dyn Fn(LevelFilter) + Send + Sync>;
static APPLY: OnceLock<Apply> = OnceLock::new();

/// What tracing logs at syslog level `n` (0 emerg .. 7 debug): emerg to err are errors,
/// notice and info are both info.
pub fn level_filter(n: i32) -> LevelFilter {
    match n {
        i32::MIN..=3 => LevelFilter::ERROR,
        4 => LevelFilter::WARN,
        5 | 6 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    }
}

/// Called once by the daemon: the level it starts at and how to change its logger's.
pub fn install_log_level(n: i32, apply: impl Fn(LevelFilter) + Send + Sync + 'static) {
    LEVEL.store(n, Ordering::Relaxed);
    let _ = APPLY.set(Box::new(apply));
}

/// GET_LOGLEVEL.
pub fn log_level() -> Vec<u8> {
    LEVEL.load(Ordering::Relaxed).to_le_bytes().to_vec()
}

/// SET_LOGLEVEL: an i32 from 0 (emerg) to 7 (debug); anything else is INVALID_PARMS and
/// changes nothing.
pub fn set_log_level(payload: &[u8]) -> Result<Vec<u8>, SdResult> {
    let b: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(SdResult::INVALID_PARMS)?;
    let n = i32::from_le_bytes(b);
    let Some(name) = usize::try_from(n)
        .ok()
        .and_then(|i| admin::LOG_LEVELS.get(i))
    else {
        tracing::warn!("SET_LOGLEVEL: invalid log level {n}");
        return Err(SdResult::INVALID_PARMS);
    };
    LEVEL.store(n, Ordering::Relaxed);
    if let Some(apply) = APPLY.get() {
        apply(level_filter(n));
    }
    tracing::warn!("log level is now {name} ({n})");
    Ok(Vec::new())
}
