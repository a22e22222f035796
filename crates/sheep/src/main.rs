//! `sheep [OPTIONS] STORE_DIR`: parse the original's command line, open the store, bind the
//! listeners, daemonize (unless -f), join the cluster, and serve until shutdown.
//! The parent of a daemonizing sheep returns only once the child listens and has joined, so
//! `for i in 0 1 2; do sheep ...; done` leaves a running cluster.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use proto::node::NodeId;
use proto::SdNode;
use sheep::node::Node;
use sheep::store::Store;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "sheep",
    version,
    about = "Sheepdog storage daemon",
    disable_version_flag = true
)]
struct Opts {
    /// Store directory (created if missing)
    #[arg(default_value = "/tmp")]
    dir: PathBuf,
    /// TCP port to listen on
    #[arg(short = 'p', long, default_value_t = proto::SD_DEFAULT_PORT)]
    port: u16,
    /// Zone id (default: derived from the address)
    #[arg(short = 'z', long)]
    zone: Option<u32>,
    /// Address to listen on
    #[arg(short = 'b', long)]
    bindaddr: Option<IpAddr>,
    /// Address advertised to the other sheep
    #[arg(short = 'y', long)]
    myaddr: Option<IpAddr>,
    /// Cluster driver: local[:PATH]
    #[arg(short = 'c', long, default_value = "local")]
    cluster: String,
    /// Stay in the foreground
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Log options: dir=PATH,level=LEVEL
    #[arg(short = 'l', long)]
    log: Option<String>,
    /// Do not sync object writes to disk
    #[arg(short = 'n', long)]
    nosync: bool,
    /// Write the pid to this file
    #[arg(short = 'P', long)]
    pidfile: Option<PathBuf>,
    /// Print the version
    #[arg(short = 'v', long)]
    version: bool,
    /// NBD port (default 10809 + PORT - 7000; 0 = no NBD on TCP)
    #[arg(long)]
    nbd_port: Option<u16>,
    /// Also serve NBD on this unix socket
    #[arg(long)]
    nbd_socket: Option<PathBuf>,
    /// Let NBD writers from different clients share a VDI (qemu-nbd's --shared)
    #[arg(long)]
    nbd_shared: bool,
    #[arg(short = 'D', long)]
    directio: bool,
    #[arg(short = 'g', long)]
    gateway: bool,
    #[arg(short = 'i', long)]
    ioaddr: Option<String>,
    #[arg(short = 'j', long)]
    journal: Option<String>,
    #[arg(short = 'R', long)]
    recovery: Option<String>,
    #[arg(short = 'u', long)]
    upgrade: bool,
    #[arg(short = 'V', long)]
    vnodes: Option<u16>,
    #[arg(short = 'w', long)]
    wq_threads: Option<String>,
    #[arg(short = 'W', long)]
    wildcard_recovery: bool,
    #[arg(short = 'x', long)]
    max_dynamic_threads: Option<String>,
}

impl Opts {
    /// Options of the original that this sheep does not implement yet: refuse, don't ignore.
    fn refuse_unsupported(&self) -> Result<()> {
        let mut bad = Vec::new();
        let flags = [
            (self.directio, "-D/--directio"),
            (self.gateway, "-g/--gateway"),
            (self.ioaddr.is_some(), "-i/--ioaddr"),
            (self.journal.is_some(), "-j/--journal"),
            (self.recovery.is_some(), "-R/--recovery"),
            (self.upgrade, "-u/--upgrade"),
            (self.vnodes.is_some(), "-V/--vnodes"),
            (self.wq_threads.is_some(), "-w/--wq-threads"),
            (self.wildcard_recovery, "-W/--wildcard-recovery"),
            (
                self.max_dynamic_threads.is_some(),
                "-x/--max-dynamic-threads",
            ),
        ];
        for (set, name) in flags {
            if set {
                bad.push(name);
            }
        }
        if !bad.is_empty() {
            bail!("option {} is not supported yet", bad.join(", "));
        }
        Ok(())
    }
}

struct LogOpts {
    dir: Option<PathBuf>,
    level: tracing::Level,
}

fn parse_log(s: Option<&str>) -> Result<LogOpts> {
    let mut o = LogOpts {
        dir: None,
        level: tracing::Level::INFO,
    };
    for part in s.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("bad log option '{part}' (expected dir=PATH,level=LEVEL)"))?;
        match k {
            "dir" => o.dir = Some(v.into()),
            "level" => {
                o.level = match v {
                    "emerg" | "alert" | "crit" | "err" | "error" => tracing::Level::ERROR,
                    "warning" | "warn" => tracing::Level::WARN,
                    "notice" | "info" => tracing::Level::INFO,
                    "debug" => tracing::Level::DEBUG,
                    other => bail!(
                    "unknown log level '{other}' (emerg alert crit err warning notice info debug)"
                ),
                }
            }
            "format" | "dst" => {}
            other => bail!("unknown log option '{other}'"),
        }
    }
    Ok(o)
}

fn main() {
    let opts = Opts::parse();
    if opts.version {
        println!("Sheepdog daemon version {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if let Err(e) = run(opts) {
        eprintln!("sheep: {e:#}");
        std::process::exit(1);
    }
}

fn run(opts: Opts) -> Result<()> {
    opts.refuse_unsupported()?;
    let log = parse_log(opts.log.as_deref())?;
    // Checked now for a clear error; built again after the fork, as it records its pid.
    sheep::cluster::driver_from_option(&opts.cluster).map_err(|e| anyhow!(e))?;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let dir = opts.dir.canonicalize()?;
    let store = Arc::new(Store::open(&dir, opts.nosync)?);

    let bind = opts.bindaddr.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let listener = std::net::TcpListener::bind(SocketAddr::new(bind, opts.port))
        .with_context(|| format!("cannot listen on {bind}:{}", opts.port))?;
    listener.set_nonblocking(true)?;
    let sock_path = dir.join("sock");
    let _ = std::fs::remove_file(&sock_path);
    let unix = std::os::unix::net::UnixListener::bind(&sock_path)
        .with_context(|| format!("cannot listen on {}", sock_path.display()))?;
    unix.set_nonblocking(true)?;
    let nbd = nbd_listeners(&opts, bind)?;

    let advertised = opts
        .myaddr
        .or(opts.bindaddr.filter(|a| !a.is_unspecified()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let nid = NodeId::new(advertised, opts.port);
    let space = store.space().map(|(t, _)| t).unwrap_or(0);
    let me = SdNode {
        nid,
        nr_vnodes: proto::SD_DEFAULT_VNODES,
        zone: opts.zone.unwrap_or_else(|| nid.default_zone()),
        space,
    };

    let log_dir = log.dir.clone().unwrap_or_else(|| dir.clone());
    let ready = if opts.foreground {
        None
    } else {
        Some(daemonize()?)
    };
    init_logging(&log_dir, log.level, opts.foreground)?;
    let driver = sheep::cluster::driver_from_option(&opts.cluster).map_err(|e| anyhow!(e))?;
    let pidfile = opts
        .pidfile
        .clone()
        .unwrap_or_else(|| dir.join("sheep.pid"));
    std::fs::write(&pidfile, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", pidfile.display()))?;

    // Failpoints named in FAILPOINTS (builds with the `failpoints` feature only; tests).
    let _failpoints = fail::FailScenario::setup();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(store, driver, me, listener, unix, nbd, ready));
    let _ = std::fs::remove_file(&pidfile);
    let _ = std::fs::remove_file(&sock_path);
    result
}

async fn serve(
    store: Arc<Store>,
    driver: Arc<dyn sheep::cluster::Driver>,
    me: SdNode,
    listener: std::net::TcpListener,
    unix: std::os::unix::net::UnixListener,
    nbd: NbdListeners,
    ready: Option<std::fs::File>,
) -> Result<()> {
    let node = Node::new(me, store, driver);
    let tcp = tokio::net::TcpListener::from_std(listener)?;
    let unix = tokio::net::UnixListener::from_std(unix)?;
    tokio::spawn(sheep::server::listen_tcp(node.clone(), tcp));
    tokio::spawn(sheep::server::listen_unix(node.clone(), unix));
    let nbd_server = sheep::nbd::NbdServer::new(node.clone(), nbd.shared);
    if let Some(l) = nbd.tcp {
        let l = tokio::net::TcpListener::from_std(l)?;
        tokio::spawn(sheep::nbd::listen_tcp(nbd_server.clone(), l));
    }
    if let Some(l) = nbd.unix {
        let l = tokio::net::UnixListener::from_std(l)?;
        tokio::spawn(sheep::nbd::listen_unix(nbd_server.clone(), l));
    }
    let joined = node.start().await;
    if let Some(mut r) = ready {
        let msg = match &joined {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let _ = r.write_all(msg.as_bytes());
    }
    joined?;
    tracing::info!("sheep {} joined, serving", me.nid);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = node.stop.notified() => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    node.request_stop();
    // Let answers already computed (e.g. the shutdown request's own) reach their clients.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    if let Err(e) = node.driver.leave().await {
        tracing::warn!("leaving the cluster: {e}");
    }
    tracing::info!("sheep {} stopped", me.nid);
    Ok(())
}

/// The NBD listeners, bound before the fork so that a busy port is reported at once.
struct NbdListeners {
    tcp: Option<std::net::TcpListener>,
    unix: Option<std::os::unix::net::UnixListener>,
    shared: bool,
}

fn nbd_listeners(opts: &Opts, bind: IpAddr) -> Result<NbdListeners> {
    let port = match opts.nbd_port {
        Some(p) => p,
        None => u16::try_from(10809 + i64::from(opts.port) - 7000).map_err(|_| {
            anyhow!(
                "no default NBD port for sheep port {}; give --nbd-port",
                opts.port
            )
        })?,
    };
    let tcp = if port == 0 {
        None
    } else {
        let l = std::net::TcpListener::bind(SocketAddr::new(bind, port))
            .with_context(|| format!("cannot listen for NBD on {bind}:{port} (--nbd-port)"))?;
        l.set_nonblocking(true)?;
        Some(l)
    };
    let unix = match &opts.nbd_socket {
        None => None,
        Some(p) => {
            let _ = std::fs::remove_file(p);
            let l = std::os::unix::net::UnixListener::bind(p)
                .with_context(|| format!("cannot listen for NBD on {}", p.display()))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
    };
    Ok(NbdListeners {
        tcp,
        unix,
        shared: opts.nbd_shared,
    })
}

fn init_logging(dir: &Path, level: tracing::Level, foreground: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("sheep.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false);
    if foreground {
        builder.with_writer(std::io::stderr).init();
    } else {
        builder.with_writer(std::sync::Mutex::new(file)).init();
    }
    Ok(())
}

/// Forks; the parent waits for the child's word (ready, or why it failed) and exits with it.
/// Returns, in the child, the pipe to send that word on.
fn daemonize() -> Result<std::fs::File> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe() fills two valid descriptors on success.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the descriptors are fresh and owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no threads exist yet (the runtime starts after this), so fork is sound.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: setsid and dup2 on valid descriptors in the single-threaded child.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    libc::dup2(null, 1);
                    libc::dup2(null, 2);
                    if null > 2 {
                        libc::close(null);
                    }
                }
            }
            Ok(std::fs::File::from(wr))
        }
        _ => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg == "ok" {
                std::process::exit(0);
            }
            if msg.is_empty() {
                msg = "the daemon exited before it joined (see sheep.log in the store)".into();
            }
            eprintln!("sheep: {msg}");
            std::process::exit(1);
        }
    }
}
