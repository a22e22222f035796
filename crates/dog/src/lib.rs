//! `dog`, the Sheepdog admin CLI: reads the original's command line, talks the Sheepdog
//! protocol to one sheep (and to every member for per-node questions), and prints what the
//! original 1.0 `dog` prints, with its messages and exit codes. `--json` adds
//! machine-readable output to `cluster info`, `node list` and `vdi list`.
//! Owns: running one invocation. Never: protocol encodings (crate `proto`).

/// `println!` that never panics (a closed stdout, e.g. `dog vdi list | head -1`, is fine).
#[macro_export]
#[doc(hidden)]
macro_rules! outln {
    ($($t:tt)*) => {{
        $crate::stdout::print(format_args!("{}\n", format_args!($($t)*)));
    }};
}

/// `print!` that never panics.
#[macro_export]
#[doc(hidden)]
macro_rules! out {
    ($($t:tt)*) => {{
        $crate::stdout::print(format_args!($($t)*));
    }};
}

/// `eprintln!` that never panics.
#[macro_export]
#[doc(hidden)]
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

mod backup;
mod benchmark;
mod check;
mod cli;
mod cluster;
mod commands;
mod conn;
mod error;
mod farm;
mod fmt;
mod inflight;
mod lifecycle;
mod lookup;
mod node;
mod node_admin;
mod nodelist;
mod progress;
mod recover;
mod redundancy;
pub mod stdout;
mod upgrade;
mod vdi;
mod vdi_rw;
mod vm;

use cli::{Action, Invocation, Opts, Parsed};
use conn::Sheep;
use error::{Fail, Res, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE};
use nodelist::NodeList;
use std::io::Write;

/// What a command gets: the sheep to talk to, the node list when the command needs it, the
/// options and the positional arguments.
pub(crate) struct Ctx<'a> {
    pub sheep: Sheep,
    nodes: Option<NodeList>,
    pub opts: &'a Opts,
    pub args: &'a [String],
}

impl Ctx<'_> {
    /// The node list fetched before the command ran.
    pub fn nodes(&self) -> Res<&NodeList> {
        self.nodes
            .as_ref()
            .ok_or_else(|| Fail::new(EXIT_SYSFAIL, "Failed to get node list"))
    }

    /// Positional argument `i`, if given and not empty.
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args
            .get(i)
            .map(String::as_str)
            .filter(|a| !a.is_empty())
    }
}

/// Runs `dog` with the process arguments; returns the exit code.
pub fn run() -> i32 {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let inv = match cli::parse(&argv) {
        Parsed::Exit {
            code,
            stdout,
            stderr,
        } => {
            out!("{stdout}");
            stdout::flush();
            let _ = std::io::stderr().write_all(stderr.as_bytes());
            return code;
        }
        Parsed::Run(inv) => *inv,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("failed to start: {e}");
            return EXIT_SYSFAIL;
        }
    };
    let start = std::time::Instant::now();
    let result = rt.block_on(dispatch(&inv));
    // Whatever is still in flight (aborted on error) goes with the runtime.
    drop(rt);
    let code = match result {
        Ok(()) => EXIT_SUCCESS,
        Err(Fail { msg, code }) => {
            if !msg.is_empty() {
                errln!("{msg}");
            }
            if code == EXIT_USAGE {
                out!("{}", inv.usage);
            }
            if code == crate::error::EXIT_USAGE_BARE {
                EXIT_USAGE
            } else {
                code
            }
        }
    };
    if inv.opts.time {
        outln!(
            "\nElapsed time: {:.3} seconds",
            start.elapsed().as_secs_f64()
        );
    }
    stdout::flush();
    code
}

/// Commands that need no sheep: they work on local files.
fn offline(inv: &Invocation) -> Option<Res<()>> {
    let (o, a) = (&inv.opts, &inv.args[..]);
    Some(match inv.action {
        Action::UpgradeInodeConvert => upgrade::inode_convert(o, a),
        Action::UpgradeEpochConvert => upgrade::epoch_convert(o, a),
        Action::UpgradeConfigConvert => upgrade::config_convert(a),
        Action::UpgradeObjectLocation => upgrade::object_location(a),
        Action::ClusterSnapshotList => farm::list(a, o.json),
        _ => return None,
    })
}

async fn dispatch(inv: &Invocation) -> Res<()> {
    if let Some(done) = offline(inv) {
        return done;
    }
    let o = &inv.opts;
    let sheep = Sheep::connect(&o.address, o.port).await.map_err(|f| {
        if inv.need_nodelist && f.code == EXIT_SYSFAIL {
            f.then("Failed to get node list")
        } else {
            f
        }
    })?;
    let nodes = if inv.need_nodelist {
        Some(NodeList::fetch(&sheep).await?)
    } else {
        None
    };
    let ctx = Ctx {
        sheep,
        nodes,
        opts: o,
        args: &inv.args,
    };
    match inv.action {
        Action::ClusterInfo => cluster::info(&ctx).await,
        Action::ClusterFormat => cluster::format(&ctx).await,
        Action::ClusterShutdown => cluster::shutdown(&ctx).await,
        Action::NodeList => node::list(&ctx),
        Action::NodeInfo => node::info(&ctx).await,
        Action::VdiCreate => vdi::create(&ctx).await,
        Action::VdiDelete => vdi::delete(&ctx).await,
        Action::VdiList => vdi::list(&ctx).await,
        Action::VdiObjectLocation => vdi::object_location(&ctx).await,
        Action::VdiObjectMap => vdi::object_map(&ctx).await,
        Action::VdiObjectDumpInode => vdi::object_dump_inode(&ctx).await,
        Action::VdiRead => vdi_rw::read(&ctx).await,
        Action::VdiWrite => vdi_rw::write(&ctx).await,
        Action::VmList => vm::list(&ctx).await,
        Action::VdiLockUnlock => vm::unlock(&ctx).await,
        Action::VdiBackup => backup::backup(&ctx).await,
        Action::VdiRestore => backup::restore(&ctx).await,
        Action::NodeRecovery => recover::node_recovery(&ctx).await,
        Action::NodeRecoverySetThrottle => recover::set_throttle(&ctx).await,
        Action::NodeRecoveryGetThrottle => recover::get_throttle(&ctx).await,
        Action::NodeKill => recover::node_kill(&ctx).await,
        Action::NodeStat => node_admin::stat(&ctx).await,
        Action::NodeLogLevelGet => node_admin::log_level_get(&ctx).await,
        Action::NodeLogLevelSet => node_admin::log_level_set(&ctx).await,
        Action::NodeLogLevelList => node_admin::log_level_list(&ctx),
        Action::NodeMdInfo => node_admin::md_info(&ctx).await,
        Action::VdiGraph => lifecycle::graph(&ctx).await,
        Action::VdiTrack => vdi::track(&ctx).await,
        Action::BenchmarkIo => benchmark::io(&ctx).await,
        Action::UpgradeInodeConvert
        | Action::UpgradeEpochConvert
        | Action::UpgradeConfigConvert
        | Action::UpgradeObjectLocation
        | Action::ClusterSnapshotList => Err(Fail::new(EXIT_SYSFAIL, "an offline command")),
        Action::ClusterSnapshotSave => farm::save(&ctx).await,
        Action::ClusterSnapshotLoad => farm::load(&ctx).await,
        Action::ClusterSnapshotShow => farm::show(&ctx).await,
        Action::VdiAlterCopy => redundancy::vdi_alter_copy(&ctx).await,
        Action::ClusterAlterCopy => redundancy::cluster_alter_copy(&ctx).await,
        Action::NodeVnodesSet => node_admin::vnodes_set(&ctx).await,
        Action::ClusterReweight => node_admin::reweight(&ctx).await,
        Action::NodeMdPlug => node_admin::md_plug(&ctx, true).await,
        Action::NodeMdUnplug => node_admin::md_plug(&ctx, false).await,
        Action::ClusterRecover => recover::cluster_recover(&ctx).await,
        Action::ClusterCheck => check::cluster_check(&ctx).await,
        Action::VdiCheck => check::vdi_check(&ctx).await,
        Action::VdiSnapshot => lifecycle::snapshot(&ctx).await,
        Action::VdiClone => lifecycle::clone(&ctx).await,
        Action::VdiRollback => lifecycle::rollback(&ctx).await,
        Action::VdiResize => lifecycle::resize(&ctx).await,
        Action::VdiTree => lifecycle::tree(&ctx).await,
        Action::VdiSetattr => lifecycle::setattr(&ctx).await,
        Action::VdiGetattr => lifecycle::getattr(&ctx).await,
    }
}
