//! Test harness: real `sheep` processes on free loopback ports in temporary stores, with their
//! own local-driver file so clusters of parallel tests never meet. Every process started is
//! killed by PID when the cluster is dropped.
#![allow(dead_code)]

pub mod nbd;
pub mod qemu;
pub mod stall;
pub mod store;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the built `sheep` and `dog` binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SHEEPDOG_BIN_DIR") {
        return d.into();
    }
    PathBuf::from(env!("CARGO_BIN_EXE_sheep"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 for a listener a test starts. Taken from 10000-29999, below
/// the kernel's ephemeral range (32768-60999): a port the kernel handed out (bind to port 0)
/// can be given again as the local port of any outgoing connection before the sheep binds
/// it. Each process walks the range from its own offset, one port after the other, so the
/// tests of one binary (threads) never get the same port twice; a port that is bound now is
/// skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 10_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (BASE + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free TCP port on 127.0.0.1 in {BASE}-{}",
        BASE + SPAN - 1
    );
}

pub struct Sheep {
    pub port: u16,
    pub nbd_port: u16,
    /// `--http-port` given to it; `None`: none given (the default port rule applies).
    pub http_port: Option<u16>,
    pub zone: u32,
    pub dir: PathBuf,
    /// Its disks for objects (`sheep DIR,DISK,...`); none: the one disk `DIR/obj`.
    pub disks: Vec<PathBuf>,
    pub child: Option<Child>,
}

impl Sheep {
    /// The directories its objects are in.
    pub fn obj_dirs(&self) -> Vec<PathBuf> {
        if self.disks.is_empty() {
            vec![self.dir.join("obj")]
        } else {
            self.disks.clone()
        }
    }
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub shm: PathBuf,
    pub nodes: Vec<Sheep>,
    /// Options given to every sheep started from now on.
    pub args: Vec<String>,
    /// `-c` option; the cluster's own local-driver file when `None`.
    pub driver: Option<String>,
    /// Environment of every sheep started from now on (e.g. FAILPOINTS).
    pub env: Vec<(String, String)>,
    /// Stores on a file system of their own (`add_on_tmpfs`), unmounted at the end.
    pub mounts: Vec<PathBuf>,
}

impl Cluster {
    /// Starts `n` sheep (zones 0..n) and waits until all are members.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Starts `n` sheep with the cluster driver option `driver` (`-c`).
    pub fn start_driver(n: usize, driver: &str) -> Cluster {
        let mut c = Cluster::start_with(0, &[]);
        c.driver = Some(driver.to_string());
        for i in 0..n {
            c.add(i as u32);
        }
        c.wait_members(n);
        c
    }

    /// Starts `n` sheep with extra options.
    pub fn start_with(n: usize, args: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let shm = tmp.path().join("shm");
        let mut c = Cluster {
            tmp,
            shm,
            nodes: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
            driver: None,
            env: Vec::new(),
            mounts: Vec::new(),
        };
        for i in 0..n {
            c.add(i as u32);
        }
        c.wait_members(n);
        c
    }

    /// Starts one sheep per entry of `failpoints` (zones 0..), each with that FAILPOINTS
    /// setting ("" for none) and the options `args`, and waits until all are members.
    pub fn with_failpoints(failpoints: &[&str], args: &[&str]) -> Cluster {
        let mut c = Cluster::start_with(0, args);
        for (z, fp) in failpoints.iter().enumerate() {
            c.env = vec![("FAILPOINTS".into(), fp.to_string())];
            c.add(z as u32);
        }
        c.wait_members(failpoints.len());
        c
    }

    /// Starts one more sheep in zone `zone`, in the foreground so the harness owns its PID.
    pub fn add(&mut self, zone: u32) -> usize {
        let port = free_port();
        let dir = self.tmp.path().join(format!("st{}", self.nodes.len()));
        self.nodes.push(Sheep {
            port,
            nbd_port: free_port(),
            http_port: Some(free_port()),
            zone,
            dir,
            disks: Vec::new(),
            child: None,
        });
        let i = self.nodes.len() - 1;
        self.restart(i);
        i
    }

    /// Starts one more sheep in zone `zone` with `n` disks (`stI/d0..`, the meta files in
    /// `stI`).
    pub fn add_with_disks(&mut self, zone: u32, n: usize) -> usize {
        let dir = self.tmp.path().join(format!("st{}", self.nodes.len()));
        self.nodes.push(Sheep {
            port: free_port(),
            nbd_port: free_port(),
            http_port: Some(free_port()),
            zone,
            disks: (0..n).map(|d| dir.join(format!("d{d}"))).collect(),
            dir,
            child: None,
        });
        let i = self.nodes.len() - 1;
        self.restart(i);
        i
    }

    /// Starts one more sheep in zone `zone` on a store of its own `mb` MiB tmpfs (a small
    /// disk that fills up). Needs root, as CI has: fails loudly without it.
    pub fn add_on_tmpfs(&mut self, zone: u32, mb: u64) -> usize {
        let dir = self.tmp.path().join(format!("st{}", self.nodes.len()));
        std::fs::create_dir_all(&dir).expect("store dir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mount a tmpfs on {} (this test needs root)",
            dir.display()
        );
        self.mounts.push(dir);
        self.add(zone)
    }

    /// Gives node `i`'s tmpfs store `mb` MiB (the disk is no longer full).
    pub fn resize_tmpfs(&self, i: usize, mb: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(&self.nodes[i].dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount the tmpfs of node {i}");
    }

    /// (Re)starts node `i` on its store and port.
    pub fn restart(&mut self, i: usize) {
        let n = &self.nodes[i];
        // The cluster's options may set the HTTP port themselves (`--http-port 0`).
        let http = n
            .http_port
            .filter(|_| !self.args.iter().any(|a| a.starts_with("--http-port")))
            .map(|p| vec!["--http-port".to_string(), p.to_string()])
            .unwrap_or_default();
        let child = Command::new(bin("sheep"))
            .arg("-f")
            .arg("-c")
            .arg(
                self.driver
                    .clone()
                    .unwrap_or_else(|| format!("local:{}", self.shm.display())),
            )
            .arg("-p")
            .arg(n.port.to_string())
            .arg("-z")
            .arg(n.zone.to_string())
            .arg("--nbd-port")
            .arg(n.nbd_port.to_string())
            .arg("--nbd-socket")
            .arg(n.dir.join("nbd.sock"))
            .args(&http)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg(
                std::iter::once(n.dir.as_os_str())
                    .chain(n.disks.iter().map(|d| d.as_os_str()))
                    .collect::<Vec<_>>()
                    .join(std::ffi::OsStr::new(",")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                // Appended to: the log of every start of the node, in order.
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.tmp.path().join(format!("sheep{i}.err")))
                    .expect("log"),
            ))
            .spawn()
            .expect("spawn sheep");
        self.nodes[i].child = Some(child);
        let port = self.nodes[i].port;
        let err = self.tmp.path().join(format!("sheep{i}.err"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(&err).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "sheep {i} on port {port} did not start listening ({exited:?}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `i` exits by itself (shutdown, kill request); panics after 10 s.
    pub fn wait_exit(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(child) = self.nodes[i].child.as_mut() {
            while child.try_wait().expect("wait").is_none() {
                assert!(Instant::now() < deadline, "node {i} did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.nodes[i].child = None;
    }

    /// `dog cluster shutdown` through node 0, then every node that was running started
    /// again on its store; returns once all of them are members.
    pub fn restart_all(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        self.dog_ok(0, &["cluster", "shutdown"]);
        for &i in &running {
            self.wait_exit(i);
        }
        for &i in &running {
            self.restart(i);
        }
        self.wait_members(running.len());
    }

    /// kill -9 node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// `nbd+unix://` URI of `export` on node `i`'s NBD socket.
    pub fn nbd_unix_uri(&self, i: usize, export: &str) -> String {
        format!(
            "nbd+unix:///{export}?socket={}",
            self.nodes[i].dir.join("nbd.sock").display()
        )
    }

    /// `nbd://` URI of `export` on node `i`.
    pub fn nbd_uri(&self, i: usize, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.nodes[i].nbd_port)
    }

    /// Runs `dog ARGS -p <port of node i>`.
    pub fn dog(&self, i: usize, args: &[&str]) -> Output {
        self.dog_stdin(i, args, None)
    }

    pub fn dog_stdin(&self, i: usize, args: &[&str], input: Option<&Path>) -> Output {
        let mut cmd = Command::new(bin("dog"));
        cmd.args(args).arg("-p").arg(self.port(i).to_string());
        cmd.stdin(match input {
            Some(p) => Stdio::from(std::fs::File::open(p).expect("input")),
            None => Stdio::null(),
        });
        cmd.output().expect("run dog")
    }

    /// `dog` that must succeed; returns stdout.
    pub fn dog_ok(&self, i: usize, args: &[&str]) -> String {
        let o = self.dog(i, args);
        assert!(
            o.status.success(),
            "dog {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until every running node sees `n` members.
    pub fn wait_members(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, s) in self.nodes.iter().enumerate() {
            if s.child.is_none() {
                continue;
            }
            loop {
                let count = rt().block_on(node_count(self.port(i)));
                if count == Some(n) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {i} did not see {n} members (last: {count:?})"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A protocol connection to node `i`.
    /// The node list node `i` answers (GET_NODE_LIST: vnodes as the ring has them).
    pub fn node_list(&self, i: usize) -> Vec<proto::SdNode> {
        rt().block_on(async {
            let conn = self.conn(i).await;
            let r = conn
                .read(
                    proto::Header::request(proto::opcode::GET_NODE_LIST),
                    80 * 64,
                )
                .await
                .unwrap();
            proto::SdNode::decode_list(&r.data)
        })
    }

    pub async fn conn(&self, i: usize) -> client::Connection {
        client::Connection::connect(("127.0.0.1", self.port(i)).into_addr())
            .await
            .expect("connect")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for m in std::mem::take(&mut self.mounts) {
            // A kept store's contents are copied off its tmpfs first.
            let keep = std::thread::panicking() || std::env::var_os("KEEP_STORES").is_some();
            if keep {
                let copy = m.with_extension("kept");
                let _ = Command::new("cp").arg("-a").arg(&m).arg(&copy).status();
            }
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        // A failed test (or any, with KEEP_STORES) leaves its stores and logs behind.
        let failed = std::thread::panicking() && std::env::var_os("KEEP_FAILED").is_some();
        if failed || std::env::var_os("KEEP_STORES").is_some() {
            let kept = std::mem::replace(&mut self.tmp, tempfile::tempdir().expect("tempdir"));
            eprintln!("stores and logs kept in {}", kept.keep().display());
        }
    }
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sheep on port {port} did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// fio's random writes of `bs`, verified (crc32c), over the first `size` of NBD export `uri`,
/// started in the background; `fio_ok` waits for it and checks it saw no error.
pub fn fio_randwrite(c: &Cluster, uri: &str, bs: &str, size: &str) -> Child {
    Command::new("fio")
        .current_dir(c.tmp.path())
        .args([
            "--name=randwrite",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            &format!("--bs={bs}"),
            &format!("--size={size}"),
            "--iodepth=8",
            "--verify=crc32c",
            "--verify_fatal=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio is installed by scripts/test.sh")
}

pub fn fio_ok(fio: Child) {
    let out = fio.wait_with_output().expect("fio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("err= 0"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic pseudo-random bytes (xorshift), so failures can be reproduced.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

trait IntoAddr {
    fn into_addr(self) -> std::net::SocketAddr;
}
impl IntoAddr for (&str, u16) {
    fn into_addr(self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.0.parse().expect("ip"), self.1)
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Members node at `port` reports (GET_NODE_LIST), or None if it does not answer.
pub async fn node_count(port: u16) -> Option<usize> {
    let c = client::Connection::connect(("127.0.0.1", port).into_addr())
        .await
        .ok()?;
    let r = c
        .read(
            proto::Header::request(proto::opcode::GET_NODE_LIST),
            80 * 1024,
        )
        .await
        .ok()?;
    r.result()
        .is_ok()
        .then_some(r.header.rsp_nr_nodes() as usize)
}
