//! The NBD front end driven by real clients (qemu-img, qemu-io, nbdinfo, nbdcopy) and by a
//! small raw client for what those tools cannot do on purpose: hold a connection open, send
//! bad bytes, come from another address.

mod common;

use common::nbd::{connect_from, greet, option, option_reply, Client};
use common::{pattern, rt, Cluster};
use proto::nbd::{self, cmd, opt, rep};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tool(name: &str) -> Command {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([std::path::PathBuf::from("/usr/bin")])
        .any(|d| d.join(name).exists());
    assert!(
        found,
        "{name} is not installed: scripts/test.sh installs qemu-utils and libnbd-bin"
    );
    Command::new(name)
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A sparse image of `size` with known data at a few places; returns its path.
fn sparse_image(dir: &Path, size: u64) -> std::path::PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    let p = dir.join("disk.raw");
    let mut f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    for (at, seed) in [(0u64, 1u64), (5 << 20, 2), (size - (3 << 20), 3)] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&pattern(3 << 20, seed)).unwrap();
    }
    p
}

#[test]
fn qemu_and_libnbd_tools_reach_every_vdi() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "2G"]);
    let size = 2u64 << 30;
    let img = sparse_image(c.tmp.path(), size);
    let bob = c.nbd_uri(0, "Bob");
    run(tool("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&img)
        .arg(&bob));
    let info = run(tool("qemu-img").args(["info", "--output=json", &bob]));
    assert!(info.contains("\"virtual-size\": 2147483648"), "{info}");
    let cmp = run(tool("qemu-img").arg("compare").arg(&img).arg(&bob));
    assert!(cmp.contains("Images are identical"), "{cmp}");
    // Through every other node too.
    let cmp = run(tool("qemu-img")
        .arg("compare")
        .arg(&img)
        .arg(c.nbd_uri(2, "Bob")));
    assert!(cmp.contains("Images are identical"), "{cmp}");

    let io = run(tool("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "read -P 0xab 0 1M",
        "-c",
        "discard 0 4M",
        "-c",
        "read -P 0 0 4M",
        &bob,
    ]));
    assert!(!io.contains("Pattern verification failed"), "{io}");

    // Holes where nothing is written or everything was trimmed: object 0 is one now, and at
    // most the other written regions are data.
    let map = run(tool("qemu-img").args(["map", "--output=json", &bob]));
    let first = map.lines().next().unwrap_or_default();
    assert!(
        first.contains("\"start\": 0,") && first.contains("\"data\": false"),
        "object 0 was trimmed: {map}"
    );
    let data_bytes: u64 = map
        .lines()
        .filter(|l| l.contains("\"data\": true"))
        .map(|l| {
            let i = l.find("\"length\": ").unwrap() + 10;
            l[i..]
                .split(',')
                .next()
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(data_bytes > 0 && data_bytes <= 3 * (4 << 20), "{map}");

    // The unix socket serves the same exports.
    let info = run(tool("qemu-img").args(["info", &c.nbd_unix_uri(1, "Bob")]));
    assert!(info.contains("2 GiB"), "{info}");

    // Every VDI and snapshot is an export; a snapshot is read-only.
    c.dog_ok(0, &["vdi", "create", "Carol", "64M"]);
    let list = run(tool("nbdinfo").args(["--list", &c.nbd_uri(1, "")]));
    assert!(list.contains("export=\"Bob\""), "{list}");
    assert!(list.contains("export=\"Carol\""), "{list}");
    let unknown = tool("qemu-img")
        .args(["info", &c.nbd_uri(0, "Nobody")])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("Nobody"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    // nbdcopy skips holes: the copy is sparse and equal.
    let out = c.tmp.path().join("copy.raw");
    run(tool("nbdcopy").arg(&bob).arg(&out));
    let mut expect = std::fs::read(&img).unwrap();
    expect[..4 << 20].fill(0);
    let got = std::fs::read(&out).unwrap();
    assert!(got == expect, "nbdcopy output differs");
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        blocks < 64 << 20,
        "copy is not sparse: {blocks} bytes allocated"
    );
}

#[test]
fn snapshots_are_read_only_exports_and_writers_follow_the_name() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let old = pattern(1 << 20, 7);
    let new = pattern(1 << 20, 8);
    let (p0, p1) = (c.nodes[0].nbd_port, c.nodes[1].nbd_port);
    rt().block_on(async {
        let mut w = Client::open(None, p0, "Bob").await.unwrap();
        assert_eq!(w.size, 64 << 20);
        assert_eq!(w.flags & nbd::tflag::READ_ONLY, 0);
        w.write(3 << 20, &old).await.unwrap();
        // An online snapshot through the sheepdog protocol while the writer stays connected.
        let conn = c.conn(1).await;
        let mut h = proto::Header::request(proto::opcode::NEW_VDI);
        h.set_vdi_size(64 << 20)
            .set_base_vdi_id(0x316b4)
            .set_snapid(1);
        let mut payload = proto::padded(b"Bob", 256).unwrap();
        payload.extend(proto::padded(b"first", 256).unwrap());
        let r = conn.write(h, payload.into()).await.unwrap();
        assert!(r.result().is_ok(), "snapshot: {:?}", r.result());
        // Later writes go to the new working VDI (copy-on-write); the snapshot keeps its bytes.
        w.write(3 << 20, &new).await.unwrap();
        assert!(w.read(3 << 20, 1 << 20).await.unwrap() == new);
        for export in ["Bob:1", "Bob@first"] {
            let mut s = Client::open(None, p1, export).await.unwrap();
            assert_ne!(s.flags & nbd::tflag::READ_ONLY, 0);
            assert!(s.read(3 << 20, 1 << 20).await.unwrap() == old, "{export}");
            assert_eq!(s.write(0, &[1]).await, Err(nbd::errno::EPERM));
            s.disconnect().await;
        }
        let mut r = Client::open(None, p1, "Bob").await.unwrap();
        assert!(r.read(3 << 20, 1 << 20).await.unwrap() == new);
        w.disconnect().await;
        r.disconnect().await;
    });
}

/// Snapshot of the working VDI `name` (vid `vid`) through the Sheepdog protocol.
async fn snapshot(c: &Cluster, vid: u32, name: &str, size: u64) {
    let conn = c.conn(1).await;
    let mut h = proto::Header::request(proto::opcode::NEW_VDI);
    h.set_vdi_size(size).set_base_vdi_id(vid).set_snapid(1);
    let r = conn
        .write(h, proto::padded(name.as_bytes(), 256).unwrap().into())
        .await
        .unwrap();
    assert!(r.result().is_ok(), "snapshot: {:?}", r.result());
}

#[test]
fn copy_on_write_of_objects_larger_than_a_peer_request() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    // 64 MiB objects (block_size_shift 26): a copy is bigger than one peer request.
    c.dog_ok(0, &["vdi", "create", "-z", "26", "Big", "256M"]);
    let vid = proto::hash::sd_hash_vdi(b"Big");
    let before = pattern(4 << 20, 21);
    let after = pattern(1 << 20, 22);
    let p = c.nodes[0].nbd_port;
    rt().block_on(async {
        let mut w = Client::open(None, p, "Big").await.unwrap();
        w.write(60 << 20, &before).await.unwrap();
        snapshot(&c, vid, "Big", 256 << 20).await;
        w.write(61 << 20, &after).await.unwrap();
        let mut expect = before.clone();
        expect[1 << 20..2 << 20].copy_from_slice(&after);
        assert!(
            w.read(60 << 20, 4 << 20).await.unwrap() == expect,
            "working VDI"
        );
        let mut s = Client::open(None, p, "Big:1").await.unwrap();
        assert!(
            s.read(60 << 20, 4 << 20).await.unwrap() == before,
            "snapshot"
        );
        w.disconnect().await;
        s.disconnect().await;
    });
}

#[test]
fn flushed_writes_survive_kill_9_and_a_restart() {
    let mut c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let data = pattern(6 << 20, 31);
    let p = c.nodes[0].nbd_port;
    rt().block_on(async {
        let mut w = Client::open(None, p, "Bob").await.unwrap();
        w.write_cached(1 << 20, &data).await.unwrap();
        w.req(cmd::TRIM, 0, 8 << 20, 4 << 20, &[]).await.unwrap();
        w.flush().await.unwrap();
        w.disconnect().await;
    });
    c.kill(2);
    c.wait_members(2);
    rt().block_on(async {
        let mut r = Client::open(None, c.nodes[1].nbd_port, "Bob")
            .await
            .unwrap();
        assert!(r.read(1 << 20, 6 << 20).await.unwrap() == data);
        r.disconnect().await;
    });
    // Every node killed, then the last epoch's members start again.
    c.kill(0);
    c.kill(1);
    c.restart(0);
    c.restart(1);
    c.wait_members(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = rt().block_on(async {
            let mut r = Client::open(None, c.nodes[1].nbd_port, "Bob").await.ok()?;
            r.read(1 << 20, 6 << 20).await.ok()
        });
        if let Some(got) = got {
            assert!(got == data, "bytes changed across kill -9 and restart");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no read after restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn one_writer_per_vdi_unless_shared() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let (p0, p1) = (c.nodes[0].nbd_port, c.nodes[1].nbd_port);
    rt().block_on(async {
        let mut a = Client::open(None, p0, "Bob").await.unwrap();
        a.write(0, b"first writer").await.unwrap();
        // A second connection of the same client (multi-conn) keeps working.
        let mut a2 = Client::open(None, p0, "Bob").await.unwrap();
        a2.write(4096, b"same client").await.unwrap();
        // Another client, through this node or another, may read but not write.
        let mut b = Client::open(Some("127.0.0.2"), p0, "Bob").await.unwrap();
        assert_eq!(b.read(0, 12).await.unwrap(), b"first writer");
        assert_eq!(b.write(0, b"x").await, Err(nbd::errno::EPERM));
        let mut b1 = Client::open(None, p1, "Bob").await.unwrap();
        assert_eq!(b1.write(0, b"x").await, Err(nbd::errno::EPERM));
        // `dog vm list` shows the writer, through any node.
        let vm = c.dog_ok(1, &["vm", "list", "-r"]);
        assert_eq!(
            vm.trim(),
            format!(
                "Bob 316b4 67108864 4194304 exclusive nbd_127.0.0.1 127.0.0.1:{}",
                c.port(0)
            )
        );
        let info = tool("qemu-img")
            .args(["info", &c.nbd_uri(1, "Bob")])
            .output()
            .unwrap();
        assert!(info.status.success(), "readers always get in");
        // Once the writer's connections close, the next writer gets the lock.
        a.disconnect().await;
        assert_eq!(
            b.write(0, b"x").await,
            Err(nbd::errno::EPERM),
            "a2 still open"
        );
        a2.disconnect().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.write(0, b"second").await.unwrap();
        assert_eq!(b1.read(0, 6).await.unwrap(), b"second");
        b.disconnect().await;
        b1.disconnect().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(c.dog_ok(0, &["vm", "list", "-r"]), "");
    });
    drop(c);

    let c = Cluster::start_with(2, &["--nbd-shared"]);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let (p0, p1) = (c.nodes[0].nbd_port, c.nodes[1].nbd_port);
    rt().block_on(async {
        let mut a = Client::open(None, p0, "Bob").await.unwrap();
        let mut b = Client::open(Some("127.0.0.2"), p1, "Bob").await.unwrap();
        a.write(0, b"aaaa").await.unwrap();
        b.write(4, b"bbbb").await.unwrap();
        a.disconnect().await;
        b.disconnect().await;
    });
}

#[test]
fn bad_input_gets_nbd_errors_and_harms_nothing() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let p = c.nodes[0].nbd_port;
    let data = pattern(2 << 20, 3);
    rt().block_on(async {
        let mut w = Client::open(None, p, "Bob").await.unwrap();
        w.write(1 << 20, &data).await.unwrap();

        // Unknown export: ERR_UNKNOWN with a message; unknown option: ERR_UNSUP.
        assert!(Client::open(None, p, "Nobody")
            .await
            .unwrap_err()
            .contains("Nobody"));
        let mut s = connect_from(None, p).await;
        greet(&mut s).await;
        option(&mut s, 99, b"junk").await;
        assert_eq!(option_reply(&mut s).await.0, rep::ERR_UNSUP);
        option(&mut s, opt::GO, &[0, 0, 0, 9, b'x']).await;
        assert_eq!(option_reply(&mut s).await.0, rep::ERR_INVALID);
        option(&mut s, opt::SET_META_CONTEXT, &[0; 8]).await;
        assert_eq!(
            option_reply(&mut s).await.0,
            rep::ERR_INVALID,
            "before structured"
        );
        option(&mut s, opt::ABORT, &[]).await;
        drop(s);

        // Garbage handshakes: closed.
        for junk in [&[0xffu8; 64][..], &[0, 0, 0, 3, 1, 2, 3][..]] {
            let mut s = connect_from(None, p).await;
            let mut g = [0u8; 18];
            s.read_exact(&mut g).await.unwrap();
            let _ = s.write_all(junk).await;
            let mut rest = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await;
            assert!(r.is_ok(), "server must close, not hang");
        }

        // Out of range, oversized, zero-length requests.
        let mut r = Client::open(None, p, "Bob").await.unwrap();
        assert_eq!(r.read(64 << 20, 512).await, Err(nbd::errno::EINVAL));
        assert_eq!(r.read(u64::MAX - 10, 512).await, Err(nbd::errno::EINVAL));
        assert_eq!(r.read(0, 33 << 20).await, Err(nbd::errno::EOVERFLOW));
        assert_eq!(r.read(0, 0).await, Err(nbd::errno::EINVAL));
        assert_eq!(
            r.req(cmd::WRITE, 0, (64 << 20) - 1, 2, b"zz").await,
            Err(nbd::errno::ENOSPC)
        );
        assert_eq!(r.req(77, 0, 0, 1, &[]).await, Err(nbd::errno::EINVAL));
        assert_eq!(
            r.req(cmd::BLOCK_STATUS, 0, 0, 4096, &[]).await,
            Err(nbd::errno::EINVAL),
            "block status without the context"
        );
        // Unaligned reads and writes are fine (minimum block size 1).
        assert_eq!(r.read((1 << 20) + 3, 5).await.unwrap(), &data[3..8]);
        r.disconnect().await;

        // A write larger than 32 MiB: error, then closed.
        let mut big = Client::open(None, p, "Bob").await.unwrap();
        assert_eq!(
            big.req(cmd::WRITE, 0, 0, 40 << 20, &[]).await,
            Err(nbd::errno::EOVERFLOW)
        );
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), big.s.read_to_end(&mut rest)).await;

        // A client that vanishes in the middle of a write payload.
        let mut v = Client::open(None, p, "Bob").await.unwrap();
        let req = nbd::Request {
            flags: 0,
            kind: cmd::WRITE,
            handle: 9,
            offset: 1 << 20,
            length: 1 << 20,
        };
        v.s.write_all(&req.encode()).await.unwrap();
        v.s.write_all(&[0u8; 1000]).await.unwrap();
        drop(v);

        // Nothing changed; the node serves everyone as before.
        let mut r = Client::open(None, p, "Bob").await.unwrap();
        assert!(r.read(1 << 20, 2 << 20).await.unwrap() == data);
        w.disconnect().await;
        r.disconnect().await;
    });
}

#[test]
fn fio_random_writes_verify_over_nbd() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "256M"]);
    let out = run(tool("fio").current_dir(c.tmp.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", c.nbd_uri(0, "Bob")),
        "--rw=randwrite",
        "--bs=4k",
        "--size=16m",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
    ]));
    assert!(out.contains("err= 0"), "{out}");
    // The same bytes read back through another node.
    let out = run(tool("fio").current_dir(c.tmp.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", c.nbd_uri(1, "Bob")),
        "--rw=randwrite",
        "--bs=64k",
        "--size=16m",
        "--offset=64m",
        "--iodepth=8",
        "--verify=crc32c",
        "--verify_fatal=1",
    ]));
    assert!(out.contains("err= 0"), "{out}");
}

#[test]
fn open_exports_see_what_other_clients_wrote() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let p = c.nodes[0].nbd_port;
    let data = pattern(1 << 20, 61);
    let input = c.tmp.path().join("dogdata");
    std::fs::write(&input, &data).unwrap();
    rt().block_on(async {
        let mut r = Client::open(None, p, "Bob").await.unwrap();
        assert!(r
            .read(8 << 20, 1 << 20)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        // Written through the Sheepdog protocol while the export is open.
        let o = c.dog_stdin(1, &["vdi", "write", "Bob", "8M", "1M"], Some(&input));
        assert!(o.status.success());
        assert!(
            r.read(8 << 20, 1 << 20).await.unwrap() == data,
            "stale hole"
        );
        // Block status through the same node (the same open volume) sees it too.
        let map = run(tool("qemu-img").args(["map", "--output=json", &c.nbd_uri(0, "Bob")]));
        assert!(
            map.lines()
                .any(|l| l.contains("\"start\": 8388608") && l.contains("\"data\": true")),
            "{map}"
        );
        r.disconnect().await;
    });
}

/// The lock holder (`dog vm list -r`): "client node" of the writer of Bob, if any.
fn bob_writer(c: &Cluster) -> String {
    let vm = c.dog_ok(2, &["vm", "list", "-r"]);
    vm.split_whitespace().skip(5).collect::<Vec<_>>().join(" ")
}

#[test]
fn a_writer_that_flushed_hands_the_vdi_over_to_the_next() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let (p0, p1, p2) = (
        c.nodes[0].nbd_port,
        c.nodes[1].nbd_port,
        c.nodes[2].nbd_port,
    );
    let through = |i: usize| format!("nbd_127.0.0.1 127.0.0.1:{}", c.port(i));
    rt().block_on(async {
        // A writes and has not flushed: B, through another node, may not write.
        let mut a = Client::open(None, p0, "Bob").await.unwrap();
        a.write_cached(0, b"from a").await.unwrap();
        let mut b = Client::open(None, p1, "Bob").await.unwrap();
        assert_eq!(b.write_cached(0, b"from b").await, Err(nbd::errno::EPERM));
        assert_eq!(bob_writer(&c), through(0));
        // A flushes and stays connected (a migration source at switchover): B's write makes
        // A hand the VDI over.
        a.flush().await.unwrap();
        b.write_cached(0, b"from b").await.unwrap();
        assert_eq!(bob_writer(&c), through(1));
        assert_eq!(a.read(0, 6).await.unwrap(), b"from b");
        // A is no longer a writer; B has not flushed, so it keeps the VDI.
        assert_eq!(a.write(0, b"late a").await, Err(nbd::errno::EPERM));
        assert_eq!(a.flush().await, Ok(()), "a flush is no write");
        assert_eq!(a.write(0, b"late a").await, Err(nbd::errno::EPERM));
        // Neither does a third client get it, even with a FUA write of B in between.
        b.write(4096, b"fua").await.unwrap();
        let mut x = Client::open(None, p2, "Bob").await.unwrap();
        assert_eq!(x.write(0, b"x").await, Err(nbd::errno::EPERM));
        assert_eq!(bob_writer(&c), through(1));
        assert_eq!(x.read(0, 6).await.unwrap(), b"from b");
        // B flushes: A takes the VDI back the same way.
        b.flush().await.unwrap();
        a.write_cached(0, b"back a").await.unwrap();
        assert_eq!(bob_writer(&c), through(0));
        assert_eq!(b.write(0, b"b again").await, Err(nbd::errno::EPERM));
        // B, which lost the lock, goes away: A's lock stays.
        b.disconnect().await;
        assert_eq!(x.write(0, b"x").await, Err(nbd::errno::EPERM));
        assert_eq!(bob_writer(&c), through(0));
        a.write_cached(6, b"!").await.unwrap();
        assert_eq!(x.read(0, 7).await.unwrap(), b"back a!");
        a.disconnect().await;
        // Once A's connection closes the lock is free as before.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !bob_writer(&c).is_empty() {
            assert!(std::time::Instant::now() < deadline, "A's lock outlived it");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        x.write(0, b"x").await.unwrap();
        x.disconnect().await;
    });
}

#[test]
fn qemu_live_migration_hands_the_vdi_to_the_destination() {
    use common::qemu::Qemu;
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let dir = c.tmp.path();
    let incoming = common::free_port();
    let mut src = Qemu::start(dir, "src", c.nodes[0].nbd_port, "Bob", None);
    let mut dst = Qemu::start(dir, "dst", c.nodes[1].nbd_port, "Bob", Some(incoming));
    src.ok("cont", serde_json::json!({}));
    src.wait_status("running");
    let out = src.qemu_io("write -P 0x5a 0 64k");
    assert!(out.contains("wrote 65536/65536"), "source write: {out}");
    src.migrate(incoming);
    assert_eq!(src.status(), "postmigrate");
    // The destination runs and writes through another node.
    dst.ok("cont", serde_json::json!({}));
    dst.wait_status("running");
    let out = dst.qemu_io("read -P 0x5a 0 64k");
    assert!(out.contains("read 65536/65536"), "destination read: {out}");
    let out = dst.qemu_io("write -P 0xa5 0 64k");
    assert!(
        out.contains("wrote 65536/65536"),
        "destination write: {out}"
    );
    // The source is started again after the migration: its writes are refused by the sheep.
    src.ok("cont", serde_json::json!({}));
    src.wait_status("running");
    let sheep_log = dir.join("sheep0.err");
    let refusals = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("is already open for writing")
            .count()
    };
    let before = refusals(&sheep_log);
    let out = src.qemu_io("write -P 0x11 0 64k");
    assert!(
        out.contains("write failed: Operation not permitted"),
        "source write after migration: {out}"
    );
    assert!(
        refusals(&sheep_log) > before,
        "the refusal comes from the sheep of the source"
    );
    // The VDI holds the destination's bytes, through any node.
    let got = rt().block_on(async {
        let mut r = Client::open(None, c.nodes[2].nbd_port, "Bob")
            .await
            .unwrap();
        let got = r.read(0, 64 << 10).await.unwrap();
        r.disconnect().await;
        got
    });
    assert!(got.iter().all(|&b| b == 0xa5), "the destination's data");
    assert_eq!(
        bob_writer(&c),
        format!("nbd_127.0.0.1 127.0.0.1:{}", c.port(1))
    );
}

#[test]
fn a_write_of_the_old_holder_while_the_handover_is_decided_is_refused() {
    // Node 0 holds each handover decision open for a while, after it took the lock from
    // its writer and before the cluster hears of it.
    let c = Cluster::with_failpoints(&["nbd::handover=sleep(1500)", "", ""], &[]);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "64M"]);
    let (p0, p1) = (c.nodes[0].nbd_port, c.nodes[1].nbd_port);
    let log = |i: usize| common::stall::log_of(&c, i);
    rt().block_on(async {
        let mut a = Client::open(None, p0, "Bob").await.unwrap();
        a.write_cached(0, b"from a").await.unwrap();
        a.flush().await.unwrap();
        let mut b = Client::open(None, p1, "Bob").await.unwrap();
        let b_writes = tokio::spawn(async move {
            let r = b.write_cached(0, b"from b").await;
            (b, r)
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !log(0).contains("handing the writer lock over") {
            assert!(std::time::Instant::now() < deadline, "no handover began");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The decision is taken and not yet known to the cluster: A is no writer any more.
        assert_eq!(a.write_cached(0, b"late a").await, Err(nbd::errno::EPERM));
        let (b, r) = b_writes.await.unwrap();
        assert_eq!(r, Ok(()), "B got the VDI");
        assert_eq!(a.read(0, 6).await.unwrap(), b"from b");
        a.disconnect().await;
        b.disconnect().await;
    });
}

/// `--object tls-creds-x509` and `--image-opts` of qemu's tools for `export` on `port` with
/// the client credentials in `dir`.
fn qemu_tls(dir: &Path, port: u16, export: &str) -> [String; 4] {
    [
        "--object".into(),
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            dir.display()
        ),
        "--image-opts".into(),
        format!("driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=tls0"),
    ]
}

fn nbds_uri(dir: &Path, port: u16, export: &str) -> String {
    format!(
        "nbds://127.0.0.1:{port}/{export}?tls-certificates={}",
        dir.display()
    )
}

/// Runs `cmd`, which must fail; returns what it printed.
fn refused(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{cmd:?} was served: {text}");
    text
}

#[test]
fn tls_serves_clients_of_the_ca_and_refuses_every_other() {
    let certs = tempfile::tempdir().unwrap();
    let pki = common::tls::Pki::new(certs.path());
    let creds = pki.server.display().to_string();
    let c = Cluster::start_with(3, &["--nbd-tls-creds", &creds]);
    c.dog_ok(0, &["cluster", "format", "--copies=3"]);
    c.dog_ok(0, &["vdi", "create", "Bob", "1G"]);
    let (p0, p1) = (c.nodes[0].nbd_port, c.nodes[1].nbd_port);

    let info = run(tool("qemu-img")
        .args(["info", "--output=json"])
        .args(qemu_tls(&pki.client, p0, "Bob")));
    assert!(info.contains("\"virtual-size\": 1073741824"), "{info}");
    let io = run(tool("qemu-io")
        .args(qemu_tls(&pki.client, p0, "Bob"))
        .args(["-c", "write -P 0xab 0 64k", "-c", "read -P 0xab 0 64k"]));
    assert!(
        io.contains("read 65536/65536") && !io.contains("verification failed"),
        "{io}"
    );
    // Written through one node, read back over TLS through another.
    let io = run(tool("qemu-io")
        .args(qemu_tls(&pki.client, p1, "Bob"))
        .args(["-r", "-c", "read -P 0xab 0 64k"]));
    assert!(
        io.contains("read 65536/65536") && !io.contains("verification failed"),
        "{io}"
    );
    let info = run(tool("nbdinfo").arg(nbds_uri(&pki.client, p0, "Bob")));
    assert!(info.contains("export-size: 1073741824"), "{info}");
    // The unix socket serves TLS clients too.
    let sock = c.nodes[2].dir.join("nbd.sock");
    let info = run(tool("qemu-img").args([
        "info",
        "--object",
        &format!("tls-creds-x509,id=tls0,dir={},endpoint=client", pki.client.display()),
        "--image-opts",
        &format!(
            "driver=nbd,server.type=unix,server.path={},export=Bob,tls-creds=tls0,tls-hostname=localhost",
            sock.display()
        ),
    ]));
    assert!(info.contains("1 GiB"), "{info}");

    // Plain clients, on TCP and on the unix socket: refused before any export.
    let plain = refused(tool("qemu-img").args(["info", &c.nbd_uri(0, "Bob")]));
    assert!(!plain.contains("1073741824"), "{plain}");
    refused(tool("qemu-img").args(["info", &c.nbd_unix_uri(0, "Bob")]));
    refused(tool("nbdinfo").arg(c.nbd_uri(0, "Bob")));
    refused(tool("nbdinfo").args(["--list", &c.nbd_uri(0, "")]));
    rt().block_on(async {
        let mut s = connect_from(None, p0).await;
        greet(&mut s).await;
        for o in [opt::GO, opt::INFO] {
            option(&mut s, o, &common::nbd::go_data("Bob")).await;
            assert_eq!(option_reply(&mut s).await.0, rep::ERR_TLS_REQD);
        }
        option(&mut s, opt::EXPORT_NAME, b"Bob").await;
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await;
        assert!(
            matches!(r, Ok(Ok(0))),
            "closed without data: {r:?} {rest:?}"
        );
    });

    // TLS with a certificate of another CA, or with none: refused at the TLS handshake.
    for dir in [&pki.stranger, &pki.anonymous] {
        let e = refused(tool("qemu-img").arg("info").args(qemu_tls(dir, p0, "Bob")));
        assert!(
            !e.contains("Our own certificate"),
            "refused by the client: {e}"
        );
        refused(tool("nbdinfo").arg(nbds_uri(dir, p0, "Bob")));
    }
    // Nothing the refused clients did harmed the node.
    let info = run(tool("nbdinfo").arg(nbds_uri(&pki.client, p1, "Bob")));
    assert!(info.contains("export-size: 1073741824"), "{info}");
}

#[test]
fn bad_tls_credentials_stop_sheep_at_start_with_one_line() {
    let certs = tempfile::tempdir().unwrap();
    let pki = common::tls::Pki::new(certs.path());
    let store = certs.path().join("store");
    let try_start = |dir: &Path| {
        let o = Command::new(common::bin("sheep"))
            .args(["-f", "-p", &common::free_port().to_string()])
            .args(["--nbd-port", &common::free_port().to_string()])
            .arg("--nbd-tls-creds")
            .arg(dir)
            .arg(&store)
            .output()
            .expect("spawn sheep");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "started with {}: {err}", dir.display());
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        err
    };
    let err = try_start(&certs.path().join("nowhere"));
    assert!(err.contains("server-cert.pem"), "{err}");
    // A key that is not the certificate's.
    std::fs::copy(
        pki.client.join("client-key.pem"),
        pki.server.join("server-key.pem"),
    )
    .unwrap();
    let err = try_start(&pki.server);
    assert!(err.contains("server-key.pem"), "{err}");
    std::fs::write(pki.server.join("server-cert.pem"), "junk").unwrap();
    let err = try_start(&pki.server);
    assert!(err.contains("no certificate"), "{err}");
}
