//! The `zookeeper` cluster driver against a real ZooKeeper server (Debian's `zookeeper`
//! package, standalone, on a free loopback port, killed by PID at the end).

mod common;

use common::{free_port, pattern, stall, Cluster};
use sheep::cluster::state::{ClusterState, Event, JoinInfo, Message};
use sheep::cluster::zookeeper::{parse_options, ZkDriver};
use sheep::cluster::{Delivery, Driver};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use zookeeper_client as zkc;

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

/// Number of epochs in `dog cluster info` (one line per epoch, starting with its date).
fn epoch_count(c: &Cluster) -> usize {
    let info = c.dog_ok(0, &["cluster", "info"]);
    info.lines().filter(|l| l.starts_with("20")).count()
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

    // Killed and started again before its session ends: it waits for its former member node
    // to go, then comes back as a new member (its former self leaves first).
    let epochs = epoch_count(&c);
    c.kill(1);
    c.restart(1);
    c.wait_members(3);
    read_until(&c, 1, &data);
    assert!(epoch_count(&c) >= epochs + 2, "no leave and join epochs");

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
        .args([
            "-p",
            &free_port().to_string(),
            "--nbd-port",
            "0",
            "--http-port",
            "0",
        ])
        .arg(dir.path().join("st"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach ZooKeeper"), "{err}");
    let objs = dir.path().join("st").join("obj");
    let stored = std::fs::read_dir(&objs).map(|d| {
        d.filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count()
    });
    assert_eq!(
        stored.unwrap_or(0),
        0,
        "nothing stored but the empty stale area"
    );
}

fn node(port: u16) -> proto::SdNode {
    proto::SdNode {
        nid: proto::node::NodeId::new("127.0.0.1".parse().unwrap(), port),
        nr_vnodes: 128,
        zone: u32::from(port),
        space: 0,
    }
}

fn info(incarnation: u64) -> JoinInfo {
    JoinInfo {
        incarnation,
        ..JoinInfo::default()
    }
}

/// Events delivered on `rx` until none comes for a second.
async fn drain(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Vec<(u64, Event)> {
    let mut out = Vec::new();
    while let Ok(Some((seq, _, ev))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
    {
        out.push((seq, ev));
    }
    out
}

/// The ordering rules of the driver, checked on the queue itself. A process registered by hand
/// plays a sheep that died before anyone announced it (the only other member is stalled): its
/// successor's join is preceded by its leave. A leave is never appended for an address that
/// is registered, and a repeated leave changes nothing.
#[test]
fn a_replaced_member_leaves_before_its_successor_joins() {
    let zdir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(zdir.path());
    let hosts = format!("127.0.0.1:{}", zk.port);
    let option = format!("{hosts}/replace,timeout=2000");
    let (a, x) = (node(7001), node(7002));
    common::rt().block_on(async {
        // A stalled member `a` and a member `x`, each on its own session, as a driver would
        // have registered them.
        let raw = |hosts: String| async move {
            zkc::Client::connector()
                .with_session_timeout(Duration::from_secs(30))
                .connect(&hosts)
                .await
                .expect("connect to ZooKeeper")
        };
        let (sa, sx) = (raw(hosts.clone()).await, raw(hosts.clone()).await);
        let dir = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
        for sub in ["queue", "member", "lock"] {
            sa.mkdir(&format!("/sheepdog/replace/{sub}"), &dir)
                .await
                .unwrap();
        }
        let eph = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
        let seqn = zkc::CreateMode::PersistentSequential.with_acls(zkc::Acls::anyone_all());
        for (s, n) in [(&sa, a), (&sx, x)] {
            s.create(&format!("/sheepdog/replace/member/{}", n.nid), b"", &eph)
                .await
                .unwrap();
            let ev = serde_json::to_vec(&Event::Join {
                node: n,
                info: info(1),
            })
            .unwrap();
            s.create("/sheepdog/replace/queue/e", &ev, &seqn)
                .await
                .unwrap();
        }
        // `x` dies (its member node goes with its session); nobody announces it.
        drop(sx);
        let d = Arc::new(ZkDriver::new(parse_options(&option).unwrap()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        d.clone().start(x, info(2), tx).await.expect("start");
        let evs = drain(&mut rx).await;
        let kinds: Vec<String> = evs
            .iter()
            .map(|(_, e)| match e {
                Event::Join { node, info } => format!("join {} {}", node.nid, info.incarnation),
                Event::Leave { node } => format!("leave {}", node.nid),
                Event::Notify { .. } => "notify".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "join 127.0.0.1:7001 1",
                "join 127.0.0.1:7002 1",
                "leave 127.0.0.1:7002",
                "join 127.0.0.1:7002 2"
            ]
        );
        assert!(evs.windows(2).all(|w| w[0].0 < w[1].0), "positions rise");
        let mut st = ClusterState::default();
        for (_, e) in &evs {
            st.apply(e);
        }
        assert!(st.is_member(&x) && st.is_member(&a));

        // `x` is registered: no leave can be announced for it.
        assert!(!d.announce_leave(x).await.unwrap());
        // `a` goes: its leave is appended (twice, as two announcers might), and changes the
        // membership once.
        drop(sa);
        let probe = raw(hosts.clone()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while probe
            .check_stat(&format!("/sheepdog/replace/member/{}", a.nid))
            .await
            .unwrap()
            .is_some()
        {
            assert!(Instant::now() < deadline, "the closed session's node stays");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(d.announce_leave(a).await.unwrap());
        assert!(d.announce_leave(a).await.unwrap());
        let more = drain(&mut rx).await;
        assert!(
            more.iter()
                .all(|(_, e)| matches!(e, Event::Leave { node } if node.nid == a.nid)),
            "{more:?}"
        );
        assert!(more.len() >= 2, "{more:?}");
        for (_, e) in &more {
            st.apply(e);
        }
        assert!(st.is_member(&x) && !st.is_member(&a));
        assert_eq!(d.sync().await.unwrap(), more.last().map(|m| m.0).unwrap());
        d.leave().await.unwrap();
    });
}

/// A node that starts a history marks where it starts and later nodes replay it from there
/// (a long one read ahead in windows, every position once, in order); once every member has
/// left, the next node clears it and starts a new one.
#[test]
fn a_history_is_replayed_from_its_start_and_cleared_when_nobody_is_left() {
    let zdir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(zdir.path());
    let hosts = format!("127.0.0.1:{}", zk.port);
    let option = format!("{hosts}/history,timeout=2000");
    let queue = "/sheepdog/history/queue";
    let (a, x) = (node(7001), node(7002));
    let raw = || async {
        zkc::Client::connector()
            .with_session_timeout(Duration::from_secs(30))
            .connect(&hosts)
            .await
            .expect("connect to ZooKeeper")
    };
    let mark = |c: zkc::Client| async move {
        let (data, _) = c.get_data(queue).await.unwrap();
        String::from_utf8(data).unwrap().parse::<u64>().unwrap()
    };
    let start = |n: proto::SdNode| {
        let option = option.clone();
        async move {
            let d = Arc::new(ZkDriver::new(parse_options(&option).unwrap()));
            let (tx, rx) = mpsc::unbounded_channel();
            d.clone().start(n, info(1), tx).await.expect("start");
            (d, rx)
        }
    };

    // The drivers' own tasks end with their runtime.
    let first = common::rt().block_on(async {
        let (d1, mut rx1) = start(a).await;
        for vid in 0..600 {
            d1.notify(Message::VdiDel { vid }).await.unwrap();
        }
        let evs1 = drain(&mut rx1).await;
        assert_eq!(evs1.len(), 601);
        assert!(matches!(evs1[0].1, Event::Join { node, .. } if node == a));
        assert_eq!(evs1[0].0, mark(raw().await).await + 1);
        assert!(evs1.windows(2).all(|w| w[1].0 == w[0].0 + 1));

        let (d2, mut rx2) = start(x).await;
        let evs2 = drain(&mut rx2).await;
        assert_eq!(evs2.len(), 603);
        assert!(evs2[..601] == evs1[..], "the same history");
        assert!(matches!(evs2[601].1, Event::Leave { node } if node == x));
        assert!(matches!(evs2[602].1, Event::Join { node, .. } if node == x));
        assert_eq!(d1.sync().await.unwrap(), evs2[602].0);
        d2.leave().await.unwrap();
        d1.leave().await.unwrap();
        evs1[0].0
    });

    common::rt().block_on(async {
        let (_d3, mut rx3) = start(a).await;
        let evs3 = drain(&mut rx3).await;
        assert_eq!(evs3.len(), 1, "{evs3:?}");
        assert!(evs3[0].0 > first + 600);
        let c = raw().await;
        assert_eq!(c.list_children(queue).await.unwrap().len(), 1);
        assert_eq!(evs3[0].0, mark(c).await + 1);
    });
}

/// A sheep that stops answering (SIGSTOP) loses its session after the session timeout (2 s
/// here); its member node goes, the others see it leave and I/O through node 0 goes on. When
/// it resumes it serves nothing it had (its session is gone), restarts itself and rejoins as
/// a returning node.
#[test]
fn a_stopped_sheep_s_session_expires_and_it_rejoins_when_it_resumes() {
    let zdir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(zdir.path());
    let mut c = Cluster::start_driver(4, &zk.option("stall"));
    let shadow = stall::alice(&c, 16 << 20);
    let r = stall::io_goes_on_while_a_node_is_stopped(
        &mut c,
        shadow,
        2,
        Duration::from_secs(30),
        stall::RESTARTED,
    );
    eprintln!("zookeeper (session timeout 2 s), node 2 stopped: {r:?}");
    assert!(log_of_expired(&c, 2), "{}", stall::log_of(&c, 2));
}

/// A pause well within the session timeout changes nothing.
#[test]
fn a_short_pause_keeps_the_session() {
    let zdir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(zdir.path());
    let c = Cluster::start_driver(3, &zk.option("pause"));
    let data = stall::alice(&c, 8 << 20);
    stall::a_short_pause_changes_nothing(&c, &data, 1, Duration::from_millis(700));
}

fn log_of_expired(c: &Cluster, i: usize) -> bool {
    stall::log_of(c, i).contains("zookeeper session expired")
}
