//! `sheep [OPTIONS] STORE_DIR`: parse the original's command line, open the store, bind the
//! listeners, daemonize (unless -f), join the cluster, and serve until shutdown.
//! The parent of a daemonizing sheep returns only once the child listens and has joined, so
//! `for i in 0 1 2; do sheep ...; done` leaves a running cluster.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use proto::node::NodeId;
use proto::SdNode;
use sheep::node::Node;
use sheep::server::{self, Limits};
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
    /// Store directory (created if missing), then the disks for objects if there are several:
    /// META[,DISK1,DISK2,...]
    #[arg(default_value = "/tmp")]
    dir: PathBuf,
    /// TCP port to listen on
    #[arg(
        short = 'p',
        long = "port",
        value_name = "PORT",
        default_value = "7000",
        allow_hyphen_values = true
    )]
    port_arg: String,
    /// The port, checked (`-p`).
    #[arg(skip)]
    port: u16,
    /// Zone id (default: derived from the address)
    #[arg(
        short = 'z',
        long = "zone",
        value_name = "ZONE",
        allow_hyphen_values = true
    )]
    zone_arg: Option<String>,
    /// The zone, checked (`-z`).
    #[arg(skip)]
    zone: Option<u32>,
    /// Address to listen on, Sheepdog, NBD and HTTP (default: the -y address, else 127.0.0.1 only;
    /// 0.0.0.0 for every address)
    #[arg(short = 'b', long)]
    bindaddr: Option<IpAddr>,
    /// Address advertised to the other sheep (default: the -b address, else 127.0.0.1)
    #[arg(short = 'y', long)]
    myaddr: Option<IpAddr>,
    /// Cluster driver: local[:PATH][,timeout=MS], zookeeper:HOST:PORT[,HOST:PORT...][/ID][,timeout=MS]
    /// or corosync[:GROUP][,timeout=MS]
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
    /// Require TLS on NBD (TCP and unix socket) with the credentials in DIR, laid out as
    /// qemu's tls-creds-x509 server endpoint: server-cert.pem, server-key.pem and, to require
    /// client certificates signed by it, ca-cert.pem
    #[arg(long, value_name = "DIR")]
    nbd_tls_creds: Option<PathBuf>,
    /// HTTP port of /metrics (default 8000 + PORT - 7000; 0 = no HTTP)
    #[arg(long)]
    http_port: Option<u16>,
    /// File whose first line is the token HTTP requests that change things must present
    /// (Authorization: Bearer TOKEN); without it only loopback clients may
    #[arg(long, value_name = "PATH")]
    api_token_file: Option<PathBuf>,
    /// Connections each listener (Sheepdog and NBD, TCP and unix socket; HTTP) serves at once;
    /// one more is closed at once (0: no limit)
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Close a connection that has nothing in flight and sends no request for SECS, or whose
    /// client takes no reply for SECS (0: never)
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    idle_timeout: f64,
    /// Requests one connection may have in flight or answered but not yet sent; at the limit
    /// the connection is not read from
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_REQUESTS)]
    max_requests: usize,
    /// Bytes of request payloads and unsent replies one connection may hold (K, M, G); at the
    /// limit the connection is not read from; a larger request takes all of it
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size)]
    conn_buffer: usize,
    /// Bytes of request payloads and unsent replies all client connections together may hold
    /// (K, M, G; as many again for requests of other sheep); a connection that would go over
    /// it is not read from until replies drain; one small request per connection always runs
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    max_buffered: usize,
    /// Refused: see the README (Daemon options of the original)
    #[arg(short = 'D', long)]
    directio: bool,
    /// Gateway only: serve clients and forward their requests, store no object
    #[arg(short = 'g', long)]
    gateway: bool,
    /// Refused: see the README (Daemon options of the original)
    #[arg(short = 'i', long)]
    ioaddr: Option<String>,
    /// Refused: see the README (Daemon options of the original)
    #[arg(short = 'j', long)]
    journal: Option<String>,
    /// Recovery throttle from the start: max=N,interval=MS (N objects at a time, MS between
    /// batches; as `dog cluster recover throttle N MS`)
    #[arg(short = 'R', long)]
    recovery: Option<String>,
    /// Refused: see the README (Daemon options of the original)
    #[arg(short = 'u', long)]
    upgrade: bool,
    /// Virtual nodes of this sheep on the placement ring, for clusters formatted with fixed
    /// vnodes (`dog cluster format -V`); without it a cluster gives vnodes by disk space
    #[arg(short = 'V', long, value_name = "VNODES", allow_hyphen_values = true)]
    vnodes: Option<String>,
    /// Threads serving requests (the runtime's worker threads; default: one per core)
    #[arg(short = 'w', long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    wq_threads: Option<u16>,
    /// Accepted: recovery always asks every node for the objects it needs
    #[arg(short = 'W', long)]
    wildcard_recovery: bool,
    /// Most threads doing disk I/O at once (default 512)
    #[arg(short = 'x', long, value_parser = clap::value_parser!(u16).range(1..=4096))]
    max_dynamic_threads: Option<u16>,
}

/// `-R max=N,interval=MS`: (objects at a time, pause between batches in ms).
fn parse_recovery(s: &str) -> Result<(u32, u64)> {
    let (mut max, mut interval) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("max", v)) => max = v.parse::<u32>().ok().filter(|&n| n > 0),
            Some(("interval", v)) => interval = v.parse::<u64>().ok().filter(|&n| n > 0),
            _ => bail!("invalid -R argument '{part}': max=N,interval=MS"),
        }
    }
    match (max, interval) {
        (Some(m), Some(i)) => Ok((m, i)),
        _ => bail!("-R needs max=N and interval=MS, both above 0 (e.g. -R max=50,interval=1000)"),
    }
}

impl Opts {
    /// Options of the original that this sheep does not offer: refused with the reason,
    /// never ignored.
    fn refuse_unsupported(&self) -> Result<()> {
        let refused = [
            (
                self.directio,
                "-D/--directio",
                "every write is synced (fsync) on every copy before it is acknowledged; \
                 direct I/O is not offered",
            ),
            (
                self.ioaddr.is_some(),
                "-i/--ioaddr",
                "peers talk on the advertised address (-y); a second address for their I/O \
                 is not offered",
            ),
            (
                self.journal.is_some(),
                "-j/--journal",
                "every write is synced on every copy before it is acknowledged, so there is \
                 no journal to replay",
            ),
            (
                self.upgrade,
                "-u/--upgrade",
                "this sheep reads the current store layout (version 6) only; upgrade an older \
                 store with the original's sheep -u first",
            ),
        ];
        match refused.iter().find(|(set, _, _)| *set) {
            Some((_, name, why)) => bail!("option {name} is not supported: {why}"),
            None => Ok(()),
        }
    }

    /// This node's virtual nodes: none for a gateway (`-g`), `-V N`, else the default (a
    /// cluster of auto vnodes gives it vnodes by space in the ring whatever it says here).
    fn vnodes(&self) -> Result<u16> {
        match (self.gateway, &self.vnodes) {
            (true, Some(_)) => bail!("Options '-g' and '-V' can not be both specified"),
            (true, None) => Ok(0),
            (false, Some(v)) => plain_number(v)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n >= 1)
                .ok_or_else(|| {
                    anyhow!(
                        "Invalid number of vnodes '{v}': must be an integer between 1 and {}",
                        u16::MAX
                    )
                }),
            (false, None) => Ok(proto::SD_DEFAULT_VNODES),
        }
    }

    /// The limits of the listeners and connections.
    fn limits(&self) -> Result<Limits> {
        if self.max_requests == 0 {
            bail!("--max-requests must be at least 1");
        }
        if self.conn_buffer == 0 || self.conn_buffer > u32::MAX as usize {
            bail!("--conn-buffer must be between 1 byte and 4G");
        }
        if self.max_buffered < 1 << 20 {
            bail!("--max-buffered must be at least 1M");
        }
        if !(self.idle_timeout >= 0.0 && self.idle_timeout.is_finite()) {
            bail!("--idle-timeout must be a number of seconds (0: never)");
        }
        Ok(Limits {
            max_connections: self.max_connections,
            idle_timeout: (self.idle_timeout > 0.0)
                .then(|| std::time::Duration::from_secs_f64(self.idle_timeout)),
            max_requests: self.max_requests,
            conn_buffer: self.conn_buffer,
            max_buffered: self.max_buffered,
        })
    }
}

/// A size in bytes, with an optional K, M, G or T suffix (powers of 1024).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("bad size '{s}' (a number, with K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size '{s}' (a number, with K, M, G or T)"))?;
    n.checked_mul(1u64 << shift)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// What the log says about the addresses at start.
enum Note {
    Info(String),
    Warn(String),
}

/// (address to listen on, address advertised to the other sheep, what to log about them).
/// The daemon binds what it advertises: -b defaults to -y; with neither it listens on
/// 127.0.0.1 only. An unspecified -b (0.0.0.0, ::) without -y advertises 127.0.0.1.
fn addresses(bind: Option<IpAddr>, my: Option<IpAddr>) -> (IpAddr, IpAddr, Option<Note>) {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    match (bind, my) {
        (None, None) => (
            loopback,
            loopback,
            Some(Note::Info(
                "listening on 127.0.0.1 only (no -b or -y given): other machines cannot reach \
                 this sheep; give -y ADDR (the address to serve and advertise) or -b ADDR"
                    .into(),
            )),
        ),
        (None, Some(y)) => (y, y, None),
        (Some(b), None) if b.is_unspecified() => (
            b,
            loopback,
            Some(Note::Warn(format!(
                "listening on every address ({b}) but advertising 127.0.0.1 to the other sheep: \
                 sheep on other machines cannot reach this one; give -y ADDR"
            ))),
        ),
        (Some(b), None) => (b, b, None),
        (Some(b), Some(y)) if !b.is_unspecified() && b != y => (
            b,
            y,
            Some(Note::Warn(format!(
                "listening on {b} but advertising {y}: the other sheep connect to {y}"
            ))),
        ),
        (Some(b), Some(y)) => (b, y, None),
    }
}

/// Raises the soft limit of open files to the hard one: every connection is a descriptor,
/// and each listener may serve --max-connections of them.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

struct LogOpts {
    dir: Option<PathBuf>,
    /// Syslog number, 0 (emerg) to 7 (debug).
    level: i32,
}

fn parse_log(s: Option<&str>) -> Result<LogOpts> {
    let mut o = LogOpts {
        dir: None,
        level: 6,
    };
    for part in s.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("bad log option '{part}' (expected dir=PATH,level=LEVEL)"))?;
        match k {
            "dir" => o.dir = Some(v.into()),
            "level" => {
                o.level = match v {
                    "error" => 3,
                    "warn" => 4,
                    name => proto::admin::log_level(name).ok_or_else(|| {
                        anyhow!(
                            "unknown log level '{name}' (emerg alert crit err warning notice \
                             info debug)"
                        )
                    })?,
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
        eprintln!("{e:#}");
        std::process::exit(1);
    }
}

/// A decimal number with nothing else around it (no sign, no space), as the original's
/// checks of -p and -z want.
fn plain_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn run(mut opts: Opts) -> Result<()> {
    opts.port = plain_number(&opts.port_arg)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| anyhow!("Invalid port number '{}'", opts.port_arg))?;
    opts.zone = match &opts.zone_arg {
        None => None,
        Some(z) => Some(
            plain_number(z)
                .and_then(|z| u32::try_from(z).ok())
                .ok_or_else(|| {
                    anyhow!(
                        "Invalid zone id '{z}': must be an integer between 0 and {}",
                        u32::MAX
                    )
                })?,
        ),
    };
    opts.refuse_unsupported()?;
    let nr_vnodes = opts.vnodes()?;
    let throttle = opts.recovery.as_deref().map(parse_recovery).transpose()?;
    let limits = opts.limits()?;
    let log = parse_log(opts.log.as_deref())?;
    // Checked now for a clear error; built again after the fork, as it records its pid.
    sheep::cluster::driver_from_option(&opts.cluster).map_err(|e| anyhow!(e))?;
    // META[,DISK...]: the meta directory, then the disks of a multi-disk node.
    let mut parts = opts
        .dir
        .as_os_str()
        .as_encoded_bytes()
        .split(|&b| b == b',');
    let meta = PathBuf::from(String::from_utf8_lossy(parts.next().unwrap_or_default()).as_ref());
    let disks: Vec<PathBuf> = parts
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).as_ref()))
        .collect();
    opts.dir = meta;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let dir = opts.dir.canonicalize()?;
    let store = Arc::new(Store::open_disks(&dir, &disks, opts.nosync)?);

    raise_nofile();
    let (bind, advertised, note) = addresses(opts.bindaddr, opts.myaddr);
    let listener = std::net::TcpListener::bind(SocketAddr::new(bind, opts.port))
        .with_context(|| format!("cannot listen on {bind}:{}", opts.port))?;
    listener.set_nonblocking(true)?;
    let sock_path = dir.join("sock");
    let _ = std::fs::remove_file(&sock_path);
    let unix = std::os::unix::net::UnixListener::bind(&sock_path)
        .with_context(|| format!("cannot listen on {}", sock_path.display()))?;
    unix.set_nonblocking(true)?;
    let nbd = nbd_listeners(&opts, bind)?;
    let http = http_listener(&opts, bind)?;

    let nid = NodeId::new(advertised, opts.port);
    // The space the ring weighs this node by (auto vnodes), as the original: none for a
    // gateway, else what the store's config recorded, else its disks' space when first used.
    let space = if opts.gateway {
        0
    } else {
        match store.read_config()?.map(|c| c.space).filter(|&s| s > 0) {
            Some(s) => s,
            None => store.disk_space(),
        }
    };
    let me = SdNode {
        nid,
        nr_vnodes,
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
    tracing::info!(
        "sheepdog daemon (version {}) started",
        env!("CARGO_PKG_VERSION")
    );
    match &note {
        Some(Note::Info(m)) => tracing::info!("{m}"),
        Some(Note::Warn(m)) => tracing::warn!("{m}"),
        None => {}
    }
    let nbd_at = match nbd.tcp.as_ref().and_then(|l| l.local_addr().ok()) {
        Some(a) if nbd.tls.is_some() => format!(", NBD on {a} (TLS required)"),
        Some(a) => format!(", NBD on {a}"),
        None => String::new(),
    };
    let http_at = match http.as_ref().and_then(|h| h.tcp.local_addr().ok()) {
        Some(a) => format!(", HTTP on {a}"),
        None => String::new(),
    };
    tracing::info!(
        "listening on {}{nbd_at}{http_at}, advertising {}:{}",
        SocketAddr::new(bind, opts.port),
        advertised,
        opts.port
    );
    let driver = sheep::cluster::driver_from_option(&opts.cluster).map_err(|e| anyhow!(e))?;
    let pidfile = opts
        .pidfile
        .clone()
        .unwrap_or_else(|| dir.join("sheep.pid"));
    std::fs::write(&pidfile, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", pidfile.display()))?;

    // Failpoints named in FAILPOINTS (builds with the `failpoints` feature only; tests).
    let _failpoints = fail::FailScenario::setup();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = opts.wq_threads {
        rt.worker_threads(usize::from(n));
    }
    if let Some(n) = opts.max_dynamic_threads {
        rt.max_blocking_threads(usize::from(n));
    }
    let rt = rt.build()?;
    let listeners = Listeners {
        tcp: listener,
        unix,
        nbd,
        http,
        limits,
    };
    let fixed_vnodes = opts.vnodes.is_some();
    let result = rt.block_on(serve(
        store,
        driver,
        me,
        listeners,
        throttle,
        fixed_vnodes,
        ready,
    ));
    let _ = std::fs::remove_file(&pidfile);
    let _ = std::fs::remove_file(&sock_path);
    result
}

/// Every listener, bound before the fork, and the limits they apply.
struct Listeners {
    tcp: std::net::TcpListener,
    unix: std::os::unix::net::UnixListener,
    nbd: NbdListeners,
    http: Option<HttpListener>,
    limits: Limits,
}

async fn serve(
    store: Arc<Store>,
    driver: Arc<dyn sheep::cluster::Driver>,
    me: SdNode,
    listeners: Listeners,
    throttle: Option<(u32, u64)>,
    fixed_vnodes: bool,
    ready: Option<std::fs::File>,
) -> Result<()> {
    let Listeners {
        tcp,
        unix,
        nbd,
        http,
        limits,
    } = listeners;
    let node = Node::new(me, store, driver);
    if let Some((max, interval)) = throttle {
        node.recovery.set_throttle(max, interval);
    }
    let sheep_at = tcp.local_addr()?;
    let nbd_port = nbd
        .tcp
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let http_port = http
        .as_ref()
        .and_then(|h| h.tcp.local_addr().ok())
        .map(|a| a.port());
    let _ = node.services.set(sheep::cluster::state::Services {
        nbd_port,
        http_port,
        fixed_vnodes,
    });
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    let unix = tokio::net::UnixListener::from_std(unix)?;
    let buffers = sheep::budget::NodeBudget::new(limits.max_buffered);
    tokio::spawn(server::listen_tcp(
        node.clone(),
        tcp,
        limits,
        buffers.clone(),
    ));
    tokio::spawn(server::listen_unix(
        node.clone(),
        unix,
        limits,
        buffers.clone(),
    ));
    let nbd_server = sheep::nbd::NbdServer::new(node.clone(), nbd.shared, limits, buffers, nbd.tls);
    if let Some(l) = nbd.tcp {
        let l = tokio::net::TcpListener::from_std(l)?;
        tokio::spawn(sheep::nbd::listen_tcp(nbd_server.clone(), l));
    }
    if let Some(l) = nbd.unix {
        let l = tokio::net::UnixListener::from_std(l)?;
        tokio::spawn(sheep::nbd::listen_unix(nbd_server.clone(), l));
    }
    if let Some(h) = http {
        let l = tokio::net::TcpListener::from_std(h.tcp)?;
        let max = limits.max_connections;
        let api = sheep::api::Api::new(node.clone(), sheep_at);
        tokio::spawn(sheep::http::listen(api, l, h.access, max));
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
    tls: Option<sheep::nbd::tls::NbdTls>,
}

fn nbd_listeners(opts: &Opts, bind: IpAddr) -> Result<NbdListeners> {
    // Read first: bad credentials are reported before any port is taken.
    let tls = match &opts.nbd_tls_creds {
        None => None,
        Some(dir) => Some(
            sheep::nbd::tls::NbdTls::load(dir)
                .with_context(|| format!("--nbd-tls-creds {}", dir.display()))?,
        ),
    };
    let port = match opts.nbd_port {
        Some(p) => p,
        // A sheep port whose default NBD port would not fit serves no NBD unless asked.
        None => u16::try_from(10809 + i64::from(opts.port) - 7000).unwrap_or(0),
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
        tls,
    })
}

/// The HTTP listener and its access rule, bound and read before the fork.
struct HttpListener {
    tcp: std::net::TcpListener,
    access: sheep::http::Access,
}

fn http_listener(opts: &Opts, bind: IpAddr) -> Result<Option<HttpListener>> {
    let port = match opts.http_port {
        Some(p) => p,
        // Nor HTTP.
        None => u16::try_from(8000 + i64::from(opts.port) - 7000).unwrap_or(0),
    };
    if port == 0 {
        if opts.api_token_file.is_some() {
            bail!("--api-token-file needs the HTTP port (--http-port is 0)");
        }
        return Ok(None);
    }
    let access = match &opts.api_token_file {
        Some(p) => sheep::http::Access::from_file(p)?,
        None => sheep::http::Access::default(),
    };
    let tcp = std::net::TcpListener::bind(SocketAddr::new(bind, port))
        .with_context(|| format!("cannot listen for HTTP on {bind}:{port} (--http-port)"))?;
    tcp.set_nonblocking(true)?;
    Ok(Some(HttpListener { tcp, access }))
}

/// Logs to stderr in the foreground, else to `dir/sheep.log`, at syslog level `level`; the
/// level can be changed while running (SET_LOGLEVEL, `dog node log level set`).
fn init_logging(dir: &Path, level: i32, foreground: bool) -> Result<()> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload};
    std::fs::create_dir_all(dir)?;
    let path = dir.join("sheep.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let (filter, handle) = reload::Layer::new(sheep::admin::level_filter(level));
    let layer = fmt::layer().with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    if foreground {
        registry.with(layer.with_writer(std::io::stderr)).init();
    } else {
        registry
            .with(layer.with_writer(std::sync::Mutex::new(file)))
            .init();
    }
    sheep::admin::install_log_level(level, move |f| {
        let _ = handle.reload(f);
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("4160k"), Ok(4160 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("8X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn the_daemon_binds_what_it_advertises() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lo = ip("127.0.0.1");
        let (b, a, n) = addresses(None, None);
        assert_eq!((b, a), (lo, lo));
        assert!(matches!(n, Some(Note::Info(m)) if m.contains("127.0.0.1 only")));
        let (b, a, n) = addresses(None, Some(ip("10.0.0.11")));
        assert_eq!((b, a), (ip("10.0.0.11"), ip("10.0.0.11")));
        assert!(n.is_none());
        let (b, a, n) = addresses(Some(ip("10.0.0.11")), None);
        assert_eq!((b, a), (ip("10.0.0.11"), ip("10.0.0.11")));
        assert!(n.is_none());
        let (b, a, n) = addresses(Some(ip("0.0.0.0")), None);
        assert_eq!((b, a), (ip("0.0.0.0"), lo));
        assert!(matches!(n, Some(Note::Warn(_))));
        let (b, a, n) = addresses(Some(ip("0.0.0.0")), Some(ip("10.0.0.11")));
        assert_eq!((b, a), (ip("0.0.0.0"), ip("10.0.0.11")));
        assert!(n.is_none());
        let (_, _, n) = addresses(Some(ip("10.0.0.12")), Some(ip("10.0.0.11")));
        assert!(matches!(n, Some(Note::Warn(_))));
    }
}
