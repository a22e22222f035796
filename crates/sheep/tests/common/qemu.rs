//! A real QEMU (qemu-system-x86_64, TCG, no guest) with its disk on an NBD export of a sheep,
//! driven over QMP on a unix socket: HMP commands (`qemu-io`), migration, run state. Every
//! process started is killed by its PID when dropped, also when a test fails.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The qdev path of the disk's block backend, as HMP `qemu-io -d` takes it.
pub const DISK: &str = "/machine/peripheral/vd0/virtio-backend";

pub struct Qemu {
    child: Child,
    qmp: BufReader<UnixStream>,
    /// QEMU's stdout and stderr (qemu-io prints its results there).
    pub log: PathBuf,
}

fn installed(name: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin")])
        .any(|d| d.join(name).exists())
}

impl Qemu {
    /// Starts a stopped (`-S`) machine named `name` in `dir` whose virtio disk is export
    /// `export` on NBD port `nbd_port`; with `incoming`, it waits for a migration on that
    /// port.
    pub fn start(
        dir: &Path,
        name: &str,
        nbd_port: u16,
        export: &str,
        incoming: Option<u16>,
    ) -> Qemu {
        assert!(
            installed("qemu-system-x86_64"),
            "qemu-system-x86_64 is not installed: scripts/test.sh installs qemu-system-x86"
        );
        let sock = dir.join(format!("{name}.qmp"));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("qemu log");
        // qemu-io's results go to stdout: line-buffered, so that they are in the log when
        // the HMP command returns.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "-eL", "qemu-system-x86_64"])
            .args(["-accel", "tcg", "-M", "pc", "-m", "64", "-S"])
            .args(["-nodefaults", "-display", "none", "-no-user-config"])
            .arg("-blockdev")
            .arg(format!(
                "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={nbd_port},\
                 export={export},node-name=disk0"
            ))
            .args(["-device", "virtio-blk-pci,drive=disk0,id=vd0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()));
        if let Some(p) = incoming {
            cmd.arg("-incoming").arg(format!("tcp:127.0.0.1:{p}"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn qemu-system-x86_64");
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                break s;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "qemu {name} exited ({st}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("qemu {name} did not open its QMP socket");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut q = Qemu {
            child,
            qmp: BufReader::new(stream),
            log,
        };
        let greeting = q.line();
        assert!(greeting.get("QMP").is_some(), "not QMP: {greeting}");
        q.ok("qmp_capabilities", json!({}));
        q
    }

    fn line(&mut self) -> Value {
        let mut l = String::new();
        let n = self.qmp.read_line(&mut l).expect("QMP read");
        assert!(n > 0, "QMP closed: {}", self.log_text());
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("QMP sent {l:?}: {e}"))
    }

    /// Runs a QMP command: its "return" or its "error".
    pub fn cmd(&mut self, name: &str, args: Value) -> Result<Value, Value> {
        let msg = json!({"execute": name, "arguments": args});
        let stream = self.qmp.get_mut();
        writeln!(stream, "{msg}").expect("QMP write");
        loop {
            let v = self.line();
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e.clone());
            }
            // An event: not the answer.
        }
    }

    pub fn ok(&mut self, name: &str, args: Value) -> Value {
        self.cmd(name, args)
            .unwrap_or_else(|e| panic!("QMP {name}: {e}"))
    }

    /// An HMP command through QMP; its output.
    pub fn hmp(&mut self, line: &str) -> String {
        let r = self.ok("human-monitor-command", json!({"command-line": line}));
        r.as_str().unwrap_or_default().to_string()
    }

    /// `qemu-io` on the disk, as HMP runs it: what it added to the log (it prints its result,
    /// "wrote ..."/"read ... bytes at offset ..." or "... failed: ...", on stdout).
    pub fn qemu_io(&mut self, command: &str) -> String {
        let before = self.log_text().len();
        let out = self.hmp(&format!("qemu-io -d {DISK} \"{command}\""));
        assert!(out.trim().is_empty(), "HMP qemu-io {command}: {out}");
        // A bounded wait for the result line to reach the log.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log_text();
            let new = text.get(before..).unwrap_or_default().to_string();
            let done = ["bytes at offset", "failed", "verification"]
                .iter()
                .any(|r| new.contains(r));
            if (done && new.ends_with('\n')) || Instant::now() > deadline {
                return new;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The run state (`query-status`).
    pub fn status(&mut self) -> String {
        let s = self.ok("query-status", json!({}));
        s["status"].as_str().unwrap_or_default().to_string()
    }

    /// Waits (bounded) until the run state is `want`.
    pub fn wait_status(&mut self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            if s == want {
                return;
            }
            assert!(Instant::now() < deadline, "qemu stayed {s}, not {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Migrates to a QEMU waiting on `port` and waits (bounded) for the migration to end.
    pub fn migrate(&mut self, port: u16) {
        self.ok("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self.ok("query-migrate", json!({}));
            match m["status"].as_str() {
                Some("completed") => return,
                Some("failed") | Some("cancelled") => panic!("migration: {m}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "migration not done: {m}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
