//! The original's administration requests against real sheep: CLUSTER_INFO in the original's
//! `struct cluster_info` layout (what the original's dog asks before format and vdi create),
//! STAT through `dog node stat`, the log level through `dog node log level`, and the disks
//! through `dog node md info`, with the original's texts and exit codes; and the daemon
//! options of the original, taken (-R, -w, -x, -W) or refused with a reason (-D, -i, -j, -u).

mod common;

use common::{pattern, rt, Cluster};
use proto::admin::{self, ClusterInfo};
use proto::{opcode, Header, SdResult};

fn cluster_info(c: &Cluster, i: usize) -> ClusterInfo {
    let port = c.port(i);
    rt().block_on(async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let conn = client::Connection::connect(addr).await.unwrap();
        // The original's dog asks for the whole struct (6144 node slots).
        let r = conn
            .read(
                Header::request(opcode::CLUSTER_INFO),
                admin::CLUSTER_INFO_SIZE as u32,
            )
            .await
            .unwrap();
        assert_eq!(r.result(), SdResult::SUCCESS);
        ClusterInfo::decode(&r.data).expect("a whole cluster_info")
    })
}

#[test]
fn cluster_info_stat_log_level_and_disks_as_the_original() {
    let c = Cluster::start(3);
    // Before format: waiting, no ctime (the original's dog says "Waiting for cluster to be
    // formatted" from this).
    let before = cluster_info(&c, 0);
    assert_eq!(before.status, admin::status::WAIT);
    assert_eq!(before.ctime, 0);
    // Vnodes are not fixed: the original's dog formats without `-V` only when it sees this.
    assert_eq!(before.flags, proto::cluster_flags::AUTO_VNODES);
    c.dog_ok(0, &["cluster", "format", "--copies=2", "-z", "23"]);
    let ci = cluster_info(&c, 1);
    assert_eq!(ci.proto_ver, admin::SHEEP_PROTO_VER);
    assert_eq!(ci.status, admin::status::OK);
    assert_eq!(ci.nr_copies, 2);
    assert_eq!(ci.block_size_shift, 23);
    assert_eq!(ci.epoch, 1);
    assert_ne!(ci.ctime, 0);
    let mut ports: Vec<u16> = ci.nodes.iter().map(|n| n.nid.port).collect();
    ports.sort_unstable();
    let mut want: Vec<u16> = (0..3).map(|i| c.port(i)).collect();
    want.sort_unstable();
    assert_eq!(ports, want);

    // STAT: a write through node 0 counts there as the client's, on the copies as peers'.
    c.dog_ok(0, &["vdi", "create", "Alice", "16M"]);
    let input = c.tmp.path().join("data");
    std::fs::write(&input, pattern(1 << 20, 7)).unwrap();
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice", "0", "1M"], Some(&input))
        .status
        .success());
    let stat = c.dog_ok(0, &["node", "stat"]);
    let lines: Vec<&str> = stat.lines().collect();
    assert_eq!(
        lines[0],
        "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD"
    );
    let client: Vec<&str> = lines[1].split('\t').collect();
    assert_eq!(client[0], "Client");
    let writes: u64 = client[3].parse().unwrap();
    assert!(writes >= 1, "{stat}");
    let raw = c.dog_ok(0, &["node", "stat", "-r"]);
    let wr: u64 = raw
        .lines()
        .next()
        .unwrap()
        .split('\t')
        .nth(6)
        .unwrap()
        .parse()
        .unwrap();
    assert!(wr >= 1 << 20, "{raw}");
    let peers: u64 = (0..3)
        .map(|i| {
            let raw = c.dog_ok(i, &["node", "stat", "-r"]);
            let peer: Vec<&str> = raw.lines().nth(1).unwrap().split('\t').collect();
            peer[2].parse::<u64>().unwrap()
        })
        .sum();
    assert!(peers >= 2, "the two copies of the write are peer writes");
    let j: serde_json::Value =
        serde_json::from_str(&c.dog_ok(0, &["node", "stat", "--json"])).unwrap();
    assert!(j["client"]["write"].as_u64().unwrap() >= writes, "{j}");
    assert!(
        j["client"]["written_bytes"].as_u64().unwrap() >= 1 << 20,
        "{j}"
    );
    assert!(j["peer"]["total"].is_u64(), "{j}");

    // The log level, changed on the running daemon.
    let get = c.dog(1, &["node", "log", "level", "get"]);
    assert!(get.status.success());
    assert_eq!(String::from_utf8_lossy(&get.stderr), "info (6)\n");
    assert!(c
        .dog(1, &["node", "log", "level", "set", "debug"])
        .status
        .success());
    let get = c.dog(1, &["node", "log", "level", "get"]);
    assert_eq!(String::from_utf8_lossy(&get.stderr), "debug (7)\n");
    let bad = c.dog(1, &["node", "log", "level", "set", "loud"]);
    assert_eq!(bad.status.code(), Some(255));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.starts_with("invalid loglevel: loud\navailable loglevels:\nemerg\t(0)\n"),
        "{err}"
    );
    let usage = c.dog(1, &["node", "log", "level"]);
    assert_eq!(usage.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&usage.stdout).starts_with(
        "Usage: dog node log level {set|get|list} [-a address] [-p port] [-h] [-T]\n"
    ));
    // An out-of-range level sent by hand changes nothing.
    let port = c.port(1);
    let r = rt().block_on(async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let conn = client::Connection::connect(addr).await.unwrap();
        conn.write(
            Header::request(opcode::SET_LOGLEVEL),
            bytes::Bytes::from_static(&[9, 0, 0, 0]),
        )
        .await
        .unwrap()
    });
    assert_eq!(r.result(), SdResult::INVALID_PARMS);
    let get = c.dog(1, &["node", "log", "level", "get"]);
    assert_eq!(String::from_utf8_lossy(&get.stderr), "debug (7)\n");

    // The disks: one, the store's object directory.
    let md = c.dog_ok(2, &["node", "md", "info"]);
    let obj = c.nodes[2].dir.join("obj");
    let mut md_lines = md.lines();
    assert_eq!(md_lines.next(), Some("Id\tSize\tUsed\tAvail\tUse%\tPath"));
    let row = md_lines.next().unwrap();
    assert!(row.starts_with(" 0\t"), "{md}");
    assert!(row.ends_with(&format!("\t{}", obj.display())), "{md}");
    let all = c.dog_ok(0, &["node", "md", "info", "-A"]);
    assert_eq!(all.matches("Node ").count(), 3, "{all}");
    let j: serde_json::Value =
        serde_json::from_str(&c.dog_ok(0, &["node", "md", "info", "-A", "--json"])).unwrap();
    let disks = j.as_array().unwrap();
    assert_eq!(disks.len(), 3, "{j}");
    assert_eq!(disks[2]["path"], obj.display().to_string(), "{j}");
    assert!(disks[2]["size"].as_u64().unwrap() > 0, "{j}");
    // A disk that cannot be plugged (here the node's own meta directory) changes nothing.
    let meta = c.nodes[0].dir.display().to_string();
    let plug = c.dog(0, &["node", "md", "plug", "-f", &meta]);
    assert_eq!(plug.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&plug.stderr)
        .contains("Failed to execute request, look for sheep.log for more information"));
}

/// The throttle node `i` recovers with: (objects at a time, ms between batches).
fn throttle(c: &Cluster, i: usize) -> (u32, u64) {
    let port = c.port(i);
    let r = rt().block_on(async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let conn = client::Connection::connect(addr).await.unwrap();
        conn.read(Header::request(opcode::GET_RECOVERY), 24)
            .await
            .unwrap()
    });
    assert_eq!(r.result(), SdResult::SUCCESS);
    let max = u32::from_le_bytes(r.data[..4].try_into().unwrap());
    let interval = u64::from_le_bytes(r.data[8..16].try_into().unwrap());
    (max, interval)
}

#[test]
fn daemon_options_of_the_original_work_or_are_refused_with_a_reason() {
    // -R, -w, -x and -W are taken; the daemon runs with them.
    let c = Cluster::start_with(
        2,
        &["-R", "max=5,interval=250", "-w", "6", "-x", "16", "-W"],
    );
    assert_eq!(throttle(&c, 0), (5, 250));
    assert_eq!(throttle(&c, 1), (5, 250));
    c.dog_ok(0, &["cluster", "format", "-c", "2"]);
    c.dog_ok(1, &["vdi", "create", "Alice", "8M"]);
    let threads = std::fs::read_dir(format!(
        "/proc/{}/task",
        c.nodes[0].child.as_ref().unwrap().id()
    ))
    .unwrap()
    .filter_map(|t| t.ok())
    .filter(|t| {
        std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.starts_with("tokio-r"))
    })
    .count();
    // Six workers (a machine of this project has two cores: without -w, two).
    assert!(threads >= 6, "{threads} runtime threads");

    let dir = c.tmp.path().join("refused");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(common::bin("sheep"))
            .args(args)
            .args(["-p", "1"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} was taken");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    for (opt, why) in [
        (&["-D"][..], "direct I/O is not offered"),
        (&["-i", "127.0.0.2"][..], "a second address for their I/O"),
        (&["-j", "dir=/tmp"][..], "no journal to replay"),
        (&["-u"][..], "current store layout"),
        (&["-R", "max=5"][..], "-R needs max=N and interval=MS"),
        (&["-R", "speed=1"][..], "invalid -R argument 'speed=1'"),
        (
            &["-V", "-1"][..],
            "Invalid number of vnodes '-1': must be an integer between 1 and 65535",
        ),
    ] {
        let err = run(opt);
        assert!(err.contains(why), "{opt:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{opt:?}: one line: {err}"
        );
    }
    assert!(run(&["-w", "0"]).contains("0 is not in 1..=1024"));
    // Ports and zones are checked as the original (108, 109).
    for bad in ["0", "65536", "-1", "42a", "+"] {
        let o = std::process::Command::new(common::bin("sheep"))
            .args(["-p", bad])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!("Invalid port number '{bad}'\n")
        );
    }
    for bad in ["4294967296", "-1", "a"] {
        assert_eq!(
            run(&["-z", bad]),
            format!("Invalid zone id '{bad}': must be an integer between 0 and 4294967295\n")
        );
    }
}

#[test]
fn vdi_states_as_the_original_dog_reads_them_for_its_lock_list() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "-c", "2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "8M"]);
    let rt = rt();
    let ask = |len: u32| {
        let port = c.port(1);
        rt.block_on(async {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let conn = client::Connection::connect(addr).await.unwrap();
            conn.read(Header::request(opcode::GET_VDI_COPIES), len)
                .await
                .unwrap()
        })
    };
    let size = proto::vdi_lock::VDI_STATE_SIZE;
    assert_eq!(ask(size as u32 - 1).result(), SdResult::BUFFER_SMALL);
    let r = ask(16 * size as u32);
    assert_eq!(r.result(), SdResult::SUCCESS);
    assert_eq!(r.data.len(), size);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    assert_eq!(r.data[4], 2, "copies");
    assert_eq!(u32_at(&r.data, 16), proto::vdi_lock::LOCK_STATE_UNLOCKED);
    // An NBD writer through node 0 holds it: locked, owned by node 0.
    let nbd_port = c.nodes[0].nbd_port;
    let mut w = rt.block_on(async {
        let mut w = common::nbd::Client::open(None, nbd_port, "Alice")
            .await
            .unwrap();
        w.write(0, b"x").await.unwrap();
        w
    });
    let r = ask(16 * size as u32);
    assert_eq!(u32_at(&r.data, 16), proto::vdi_lock::LOCK_STATE_LOCKED);
    assert_eq!(
        u16::from_le_bytes([r.data[36], r.data[37]]),
        c.port(0),
        "the owner is the node serving the writer"
    );
    rt.block_on(async { w.flush().await.unwrap() });
    // The original's `dog vdi lock unlock`: RELEASE_VDI of the vid with no payload, from a
    // connection that holds nothing, is a forced unlock.
    let vid = u32_at(&r.data, 0);
    let port = c.port(1);
    let released = rt.block_on(async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let conn = client::Connection::connect(addr).await.unwrap();
        let mut h = Header::request(opcode::RELEASE_VDI);
        h.set_base_vdi_id(vid);
        conn.read(h, 0).await.unwrap()
    });
    assert_eq!(released.result(), SdResult::SUCCESS);
    let r = ask(16 * size as u32);
    assert_eq!(u32_at(&r.data, 16), proto::vdi_lock::LOCK_STATE_UNLOCKED);
}

#[test]
fn node_recovery_set_and_get_throttle_as_the_original() {
    // The original's 107.
    let c = Cluster::start(1);
    c.dog_ok(0, &["cluster", "format", "-c", "1"]);
    // The port goes before `--`, after which everything is an argument.
    let port = c.port(0).to_string();
    let run = |args: &[&str]| {
        let mut a = vec!["node", "recovery", args[0], "-p", &port];
        a.extend_from_slice(&args[1..]);
        let o = std::process::Command::new(common::bin("dog"))
            .args(&a)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for (args, err) in [
        (
            &["set-throttle", "--", "0", "1"][..],
            "Invalid interval max (0), interval (1)\n",
        ),
        (
            &["set-throttle", "--", "0", "-1"][..],
            "Invalid interval (-1)\n",
        ),
        (&["set-throttle", "--", "-2", "0"][..], "Invalid max (-2)\n"),
        (
            &["set-throttle", "--", "4294967296", "1"][..],
            "Invalid max (4294967296)\n",
        ),
        (
            &["set-throttle", "--", "1", "9223372036854775808"][..],
            "Invalid interval (9223372036854775808)\n",
        ),
    ] {
        assert_eq!(run(args), (Some(64), err.to_string()), "{args:?}");
        assert_eq!(run(&["get-throttle"]).1, "max (0), interval (0)\n");
    }
    assert_eq!(
        run(&["set-throttle", "4294967295", "9223372036854775807"]).0,
        Some(0)
    );
    assert_eq!(
        run(&["get-throttle"]).1,
        "max (4294967295), interval (9223372036854775807)\n"
    );
    assert_eq!(throttle(&c, 0), (4294967295, 9223372036854775807));
    // Without a subcommand, and with `info`, the recovery table as before.
    for a in [&[][..], &["info"][..]] {
        let mut args = vec!["node", "recovery"];
        args.extend_from_slice(a);
        assert!(c.dog_ok(0, &args).starts_with("Nodes In Recovery:"));
    }
}
