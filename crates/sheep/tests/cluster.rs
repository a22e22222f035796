//! Real sheep processes on loopback: format, write through one node and read through the
//! others, placement on distinct nodes, membership, shutdown and restart.

mod common;
use common::*;
use proto::{opcode, Header, Oid, SdResult, Vid};
use std::time::{Duration, Instant};

fn write_file(c: &Cluster, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = c.tmp.path().join(name);
    std::fs::write(&p, data).expect("write input");
    p
}

/// Stores that hold object file `oid`.
fn holders(c: &Cluster, oid: Oid) -> Vec<usize> {
    (0..c.nodes.len())
        .filter(|&i| c.nodes[i].dir.join("obj").join(oid.file_name()).exists())
        .collect()
}

#[test]
fn readme_walkthrough_on_three_nodes() {
    let c = Cluster::start(3);
    let out = c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    assert!(out.contains("using backend plain store"), "{out}");
    let list = c.dog_ok(0, &["node", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(list.contains("V-Nodes"), "{list}");
    c.dog_ok(0, &["vdi", "create", "Alice", "256G"]);
    let vdis = c.dog_ok(1, &["vdi", "list"]);
    assert!(
        vdis.contains("Alice") && vdis.contains("256 GB") && vdis.contains("15d167"),
        "{vdis}"
    );

    // 16 MiB through node 0, read back through every node.
    let data = pattern(16 << 20, 7);
    let input = write_file(&c, "in", &data);
    let o = c.dog_stdin(0, &["vdi", "write", "Alice"], Some(&input));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for i in 0..3 {
        let o = c.dog(i, &["vdi", "read", "Alice", "0", "16M"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout == data, "node {i} returned different bytes");
    }
    // Offsets inside the VDI.
    let o = c.dog(2, &["vdi", "read", "Alice", "5000000", "100"]);
    assert_eq!(o.stdout, &data[5_000_000..5_000_100]);

    // Object 0 has three copies on three distinct nodes.
    let oid = Oid::data(Vid(0x15d167), 0);
    assert_eq!(holders(&c, oid), vec![0, 1, 2]);
    let loc = c.dog_ok(0, &["vdi", "object", "location", "-i", "0", "Alice"]);
    assert_eq!(loc.matches("has the object").count(), 3, "{loc}");

    // Shutdown stops every node.
    c.dog_ok(0, &["cluster", "shutdown"]);
    let mut c = c;
    for i in 0..3 {
        c.wait_exit(i);
    }

    // The whole cluster comes back with every byte.
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_members(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = c.dog(1, &["vdi", "read", "Alice", "0", "16M"]);
        if o.status.success() {
            assert!(o.stdout == data, "bytes changed across restart");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no read after restart: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn requests_before_format_say_so() {
    let c = Cluster::start(1);
    let o = c.dog(0, &["vdi", "create", "Bob", "1G"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Waiting for cluster to be formatted"), "{err}");
    let info = c.dog(0, &["cluster", "info"]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("Waiting for cluster to be formatted"));
}

#[test]
fn copies_land_on_distinct_zones_and_the_ring() {
    let c = Cluster::start(4);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "64M"]);
    let data = pattern(16 << 20, 3);
    let input = write_file(&c, "in", &data);
    assert!(c
        .dog_stdin(3, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    // The ring of the node list (vnodes as the cluster gives them: by space).
    let mut nodes = c.node_list(0);
    nodes.sort_by_key(|n| (0..4).position(|i| c.port(i) == n.nid.port));
    let ring = sheep::ring::Ring::new(&nodes);
    for idx in 0..4 {
        let oid = Oid::data(Vid(0x15d167), idx);
        let mut want: Vec<usize> = ring
            .placement(oid, 2)
            .iter()
            .map(|n| nodes.iter().position(|m| m.nid == n.nid).unwrap())
            .collect();
        want.sort();
        assert_eq!(holders(&c, oid), want, "object {idx}");
    }
}

#[test]
fn killed_node_is_seen_gone_within_five_seconds() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    let t = Instant::now();
    c.kill(2);
    c.wait_members(2);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let info = c.dog_ok(0, &["cluster", "info"]);
    assert!(
        info.lines().filter(|l| l.contains("127.0.0.1:")).count() >= 2,
        "{info}"
    );
}

#[test]
fn second_sheep_on_the_same_store_is_refused() {
    let c = Cluster::start(1);
    let o = std::process::Command::new(bin("sheep"))
        .args(["-f", "-c"])
        .arg(format!("local:{}", c.shm.display()))
        .arg("-p")
        .arg(free_port().to_string())
        .args(["--nbd-port", "0", "--http-port", "0"])
        .arg(&c.nodes[0].dir)
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already running"), "{err}");
}

#[test]
fn daemon_mode_returns_once_joined() {
    let tmp = tempfile::tempdir().unwrap();
    let shm = tmp.path().join("shm");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut guard = PidGuard(Vec::new());
    for (i, p) in ports.iter().enumerate() {
        let dir = tmp.path().join(format!("st{i}"));
        let o = std::process::Command::new(bin("sheep"))
            .arg("-c")
            .arg(format!("local:{}", shm.display()))
            .args(["-p", &p.to_string(), "-z", &i.to_string()])
            .args(["--nbd-port", &free_port().to_string(), "--http-port", "0"])
            .arg(&dir)
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let pid: i32 = std::fs::read_to_string(dir.join("sheep.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        guard.0.push(pid);
    }
    // Returned means joined: the first node already counts all three members.
    assert_eq!(rt().block_on(node_count(ports[0])), Some(3));
}

/// Kills, by PID, the daemons a test started, whether it passes or fails.
struct PidGuard(Vec<i32>);
impl Drop for PidGuard {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: sending a signal to a pid this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

async fn raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    out
}

#[test]
fn bad_input_gets_errors_and_harms_nothing() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "1G"]);
    let data = pattern(4 << 20, 11);
    let input = write_file(&c, "in", &data);
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    let port = c.port(1);
    rt().block_on(async {
        let conn = c.conn(1).await;
        let alice = Oid::data(Vid(0x15d167), 0);
        // Unknown opcode.
        let r = conn
            .request(Header::new(2, 0x7f), Default::default())
            .await
            .unwrap();
        assert_eq!(r.result(), SdResult::INVALID_PARMS);
        // Internal opcode with the wrong version.
        let r = conn
            .request(Header::new(2, opcode::GET_NODE_LIST), Default::default())
            .await
            .unwrap();
        assert_eq!(r.result(), SdResult::VER_MISMATCH);
        // Public opcode from the future.
        let r = conn
            .request(Header::new(9, opcode::READ_OBJ), Default::default())
            .await
            .unwrap();
        assert_eq!(r.result(), SdResult::VER_MISMATCH);
        // Read beyond the object size.
        let mut h = Header::request(opcode::READ_OBJ);
        h.set_oid(alice.0).set_obj_offset(4 << 20);
        let r = conn.read(h, 4096).await.unwrap();
        assert_eq!(r.result(), SdResult::INVALID_PARMS);
        // Write past the end of the object.
        let mut h = Header::request(opcode::WRITE_OBJ);
        h.set_oid(alice.0).set_obj_offset((4 << 20) - 10);
        let r = conn.write(h, vec![1u8; 100].into()).await.unwrap();
        assert_eq!(r.result(), SdResult::INVALID_PARMS);
        // An object of a VDI that does not exist.
        let mut h = Header::request(opcode::CREATE_AND_WRITE_OBJ);
        h.set_oid(Oid::data(Vid(0x123456), 0).0);
        let r = conn.write(h, vec![1u8; 512].into()).await.unwrap();
        assert_eq!(r.result(), SdResult::NO_VDI);
        let mut h = Header::request(opcode::READ_OBJ);
        h.set_oid(Oid::data(Vid(0x123456), 0).0);
        let r = conn.read(h, 512).await.unwrap();
        assert_ne!(r.result(), SdResult::SUCCESS);
        // A name too long, and a size beyond the maximum.
        let mut h = Header::request(opcode::NEW_VDI);
        h.set_vdi_size(1 << 30);
        let r = conn.write(h, vec![b'x'; 256].into()).await.unwrap();
        assert_eq!(r.result(), SdResult::INVALID_PARMS);
        let mut h = Header::request(opcode::NEW_VDI);
        h.set_vdi_size((4u64 << 40) + 1);
        let r = conn
            .write(h, proto::padded(b"Huge", 256).unwrap().into())
            .await
            .unwrap();
        assert_eq!(r.result(), SdResult::INVALID_PARMS);
        // An epoch history that does not fit the caller's node slots: BUFFER_SMALL with the
        // number of slots needed, never a silently truncated record.
        let mut h = Header::request(opcode::STAT_CLUSTER);
        h.set_cluster_nodes_nr(1);
        let r = conn.read(h, 4096).await.unwrap();
        assert_eq!(r.result(), SdResult::BUFFER_SMALL);
        assert_eq!(r.header.rsp_nr_nodes(), 3);
        // Deleted VDI ids: none yet.
        let r = conn
            .read(Header::request(opcode::READ_DEL_VDIS), 1 << 21)
            .await
            .unwrap();
        assert!(r.result().is_ok());
        assert!(r.data.iter().all(|&b| b == 0));
        // Many requests in flight on one connection, answered by id.
        let mut futs = Vec::new();
        for k in 0..32u64 {
            let mut h = Header::request(opcode::READ_OBJ);
            h.set_oid(alice.0).set_obj_offset(k * 4096);
            futs.push(conn.read(h, 4096));
        }
        for (k, r) in futures_join(futs).await.into_iter().enumerate() {
            let r = r.unwrap();
            assert!(r.result().is_ok());
            assert_eq!(r.data, &data[k * 4096..(k + 1) * 4096]);
        }
        // Garbage, a truncated header, and a huge payload claim: closed, node unaffected.
        let _ = raw(port, &[0xff; 100]).await;
        let _ = raw(port, &[2, 2, 0, 0]).await;
        let mut h = Header::request(opcode::WRITE_OBJ);
        h.set_oid(alice.0)
            .set_flags(proto::flags::CMD_WRITE)
            .set_data_length(u32::MAX);
        let out = raw(port, h.as_bytes()).await;
        assert_eq!(out.len(), 48, "one error answer, then closed");
        assert_eq!(
            Header::from_bytes(out[..48].try_into().unwrap()).sd_result(),
            SdResult::INVALID_PARMS
        );
    });
    // Nothing stored changed; every node still serves.
    for i in 0..3 {
        let o = c.dog(i, &["vdi", "read", "Alice", "0", "4M"]);
        assert!(o.stdout == data, "node {i}");
    }
}

/// Polls the requests together: every one is sent before any answer is awaited.
async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    futures::future::join_all(fs).await
}
