//! The `zookeeper` cluster driver against a real ZooKeeper server (Debian's `zookeeper`
//! package, standalone, on a free loopback port, killed by PID at the end).

mod common;

use common::{free_port, pattern, Cluster};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";

/// A standalone ZooKeeper server owned by the test.
struct ZooKeeper {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ZooKeeper {
    fn start(dir: &Path) -> ZooKeeper {
        assert!(
            Path::new(ZK_JAR).exists(),
            "{ZK_JAR} is missing: scripts/test.sh installs Debian's zookeeper package"
        );
        let mut zk = ZooKeeper {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        zk.restart();
        zk
    }

    fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join("zookeeper.log")).expect("log");
        // tickTime 500 ms: sessions may be as short as 1 s, so losses show quickly.
        let child = Command::new("java")
            .args(["-cp", &format!("{ZK_JAR}:/etc/zookeeper/conf")])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.port.to_string())
            .arg(self.dir.join("data"))
            .arg("500")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("java is installed with the zookeeper package");
        self.child = Some(child);
        // Ready once it answers the `srvr` four-letter command.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.serving() {
            assert!(Instant::now() < deadline, "ZooKeeper did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn serving(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut out = String::new();
        s.write_all(b"srvr").is_ok() && s.read_to_string(&mut out).is_ok() && out.contains("Mode:")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn option(&self, cluster: &str) -> String {
        format!("zookeeper:127.0.0.1:{}/{cluster},timeout=2000", self.port)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_file(c: &Cluster, name: &str, data: &[u8]) -> PathBuf {
    let p = c.tmp.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn read_until(c: &Cluster, i: usize, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = c.dog(i, &["vdi", "read", "Alice", "0", "16M"]);
        if o.status.success() {
            assert!(o.stdout == want, "node {i} returned other bytes");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no read through node {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_sheep_on_zookeeper_survive_a_kill_and_a_zookeeper_restart() {
    let zdir = tempfile::tempdir().unwrap();
    let mut zk = ZooKeeper::start(zdir.path());
    let mut c = Cluster::start_driver(3, &zk.option("one"));
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(1, &["vdi", "create", "Alice", "1G"]);
    let data = pattern(16 << 20, 2);
    let input = write_file(&c, "data", &data);
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    read_until(&c, 2, &data);

    // kill -9: the others see it go when its session ends, and recover.
    c.kill(2);
    c.wait_members(2);
    read_until(&c, 1, &data);

    // ZooKeeper restarts while the cluster is idle: nothing is lost, everyone stays.
    zk.kill();
    std::thread::sleep(Duration::from_millis(300));
    zk.restart();
    std::thread::sleep(Duration::from_secs(2));
    c.dog_ok(0, &["vdi", "create", "Bob", "1G"]);
    let list = c.dog_ok(1, &["vdi", "list", "-r"]);
    assert!(list.contains(" Bob "), "{list}");
    c.restart(2);
    c.wait_members(3);
    read_until(&c, 2, &data);

    // A second cluster shares the ensemble under its own id.
    let other = Cluster::start_driver(1, &zk.option("two"));
    other.dog_ok(0, &["cluster", "format", "--copies=1"]);
    assert_eq!(other.dog_ok(0, &["vdi", "list", "-r"]), "");
    assert_eq!(c.dog_ok(0, &["node", "list", "-r"]).lines().count(), 3);
}

#[test]
fn an_unreachable_zookeeper_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = Command::new(common::bin("sheep"))
        .args([
            "-f",
            "-c",
            &format!("zookeeper:127.0.0.1:{port},timeout=2000"),
        ])
        .args(["-p", &free_port().to_string(), "--nbd-port", "0"])
        .arg(dir.path().join("st"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach ZooKeeper"), "{err}");
    let objs = dir.path().join("st").join("obj");
    assert!(std::fs::read_dir(&objs).map(|d| d.count()).unwrap_or(0) == 0);
}
