//! The `corosync` cluster driver with one real corosync daemon on loopback (Debian's corosync
//! package) and three sheep processes in its CPG group: format, write, read, kill, recovery.

mod common;

use common::{pattern, stall, Cluster};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const CONF: &str = "totem {
  version: 2
  cluster_name: sheepdog-test
  transport: knet
  crypto_cipher: none
  crypto_hash: none
}
nodelist {
  node {
    ring0_addr: 127.0.0.1
    nodeid: 1
  }
}
quorum {
  provider: corosync_votequorum
}
logging {
  to_stderr: yes
  to_syslog: no
  to_logfile: no
}
";

/// A corosync daemon owned by the test, killed by PID at the end. The tests of this file run
/// in parallel threads and a machine runs one corosync: each holds `ONE_DAEMON` while its
/// daemon lives (the lock is dropped after the daemon is killed).
struct Corosync(Child, #[allow(dead_code)] MutexGuard<'static, ()>);

static ONE_DAEMON: Mutex<()> = Mutex::new(());

impl Corosync {
    fn start(dir: &Path) -> Corosync {
        // A test that failed while holding the lock poisons it; its daemon is gone all the same.
        let turn = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
        let corosync = ["/usr/sbin/corosync", "/usr/bin/corosync"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("corosync is not installed: scripts/test.sh installs Debian's corosync");
        let running = Command::new("pgrep").args(["-x", "corosync"]).output();
        assert!(
            !running.is_ok_and(|o| o.status.success()),
            "a corosync daemon already runs on this machine; the test needs its own"
        );
        let conf = dir.join("corosync.conf");
        std::fs::write(&conf, CONF).unwrap();
        let log = std::fs::File::create(dir.join("corosync.log")).unwrap();
        let child = Command::new(corosync)
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start corosync");
        let cs = Corosync(child, turn);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let q = Command::new("corosync-quorumtool").arg("-s").output();
            if q.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Quorate:          Yes"))
            {
                return cs;
            }
            assert!(
                Instant::now() < deadline,
                "corosync did not become quorate: {}",
                std::fs::read_to_string(dir.join("corosync.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Corosync {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn three_sheep_in_one_cpg_group() {
    let dir = tempfile::tempdir().unwrap();
    // Without corosync: a clear error, a non-zero exit, nothing written.
    let st = dir.path().join("lonely");
    let out = Command::new(common::bin("sheep"))
        .args([
            "-f",
            "-c",
            "corosync",
            "-p",
            &common::free_port().to_string(),
        ])
        .args(["--nbd-port", "0", "--http-port", "0"])
        .arg(&st)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach corosync"), "{err}");
    assert_eq!(
        std::fs::read_dir(st.join("obj"))
            .map(|d| d
                .filter(|e| !e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.'))
                .count())
            .unwrap_or(0),
        0
    );
    let _cs = Corosync::start(dir.path());
    let group = format!("corosync:sheepdog-{}", std::process::id());
    let mut c = Cluster::start_driver(3, &group);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(1, &["vdi", "create", "Alice", "1G"]);
    let data = pattern(16 << 20, 4);
    let input = c.tmp.path().join("data");
    std::fs::write(&input, &data).unwrap();
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    assert!(c.dog(2, &["vdi", "read", "Alice", "0", "16M"]).stdout == data);

    // A sheep killed with -9 leaves the group at once; the others recover without it.
    c.kill(2);
    c.wait_members(2);
    assert!(c.dog(1, &["vdi", "read", "Alice", "0", "16M"]).stdout == data);
    let info = c.dog_ok(0, &["cluster", "info"]);
    assert!(info.contains("Cluster status: running"), "{info}");

    // It comes back: the group hands it the history, it catches up.
    c.restart(2);
    c.wait_members(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = c.dog(2, &["vdi", "read", "Alice", "0", "16M"]);
        if o.status.success() {
            assert!(o.stdout == data);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no read through the returned node"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.dog_ok(0, &["vdi", "list", "-r"]).lines().count(), 1);
}

/// A sheep that stops answering (SIGSTOP) stays a CPG member (its corosync daemon is alive):
/// its heartbeats stop, and after the driver's timeout (2 s here) the oldest live member
/// evicts it, which every member turns into a leave at the same point of the order. I/O
/// through node 0 goes on; when the stopped sheep resumes it reads its own eviction, serves
/// nothing, restarts itself and rejoins as a returning node.
#[test]
fn a_stopped_sheep_is_evicted_and_rejoins_when_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let _cs = Corosync::start(dir.path());
    let group = format!("corosync:stall-{},timeout=2000", std::process::id());
    let mut c = Cluster::start_driver(4, &group);
    let shadow = stall::alice(&c, 16 << 20);
    let r = stall::io_goes_on_while_a_node_is_stopped(
        &mut c,
        shadow,
        2,
        Duration::from_secs(30),
        stall::RESTARTED,
    );
    eprintln!("corosync (timeout 2 s), node 2 stopped: {r:?}");
    assert!(
        stall::log_of(&c, 2).contains("evicted this node"),
        "{}",
        stall::log_of(&c, 2)
    );
}

/// A pause well within the timeout changes nothing: no eviction, no restart.
#[test]
fn a_short_pause_evicts_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let _cs = Corosync::start(dir.path());
    let group = format!("corosync:pause-{},timeout=2000", std::process::id());
    let c = Cluster::start_driver(3, &group);
    let data = stall::alice(&c, 8 << 20);
    stall::a_short_pause_changes_nothing(&c, &data, 1, Duration::from_millis(700));
}
