//! VDI lifecycle cases beyond the walkthrough of `lifecycle.rs`: objects larger than the
//! inode (copy-on-write and creation through the Sheepdog protocol as QEMU sends them),
//! online snapshots under concurrent writes, snapshot selection by id and tag in every
//! command that takes `-s`, attributes through the protocol, and error cases that must leave
//! everything as it was.

mod common;

use bytes::Bytes;
use common::{pattern, rt, Cluster};
use proto::{flags, opcode, Header, Oid, SdResult, Vid};

/// The VDI id of `name` (its working VDI, or snapshot `snapid`).
async fn vid_of(
    conn: &client::Connection,
    name: &str,
    tag: &str,
    snapid: u32,
) -> Result<u32, SdResult> {
    let mut p = proto::padded(name.as_bytes(), 256).unwrap();
    p.extend(proto::padded(tag.as_bytes(), 256).unwrap());
    let mut h = Header::request(opcode::GET_VDI_INFO);
    h.set_snapid(snapid);
    let r = conn.write(h, p.into()).await.unwrap();
    match r.result() {
        SdResult::SUCCESS => Ok(r.header.rsp_vdi_id()),
        e => Err(e),
    }
}

/// What QEMU's driver does to write a whole object: CREATE_AND_WRITE_OBJ of the VDI's own
/// object (COW from `cow_from`'s when not 0), then WRITE_OBJ of the owner into the inode.
async fn qemu_write_object(
    conn: &client::Connection,
    vid: u32,
    idx: u32,
    offset: u64,
    data: Bytes,
    cow_from: u32,
) -> SdResult {
    let mut h = Header::request(opcode::CREATE_AND_WRITE_OBJ);
    h.set_oid(Oid::data(Vid(vid), idx).0).set_obj_offset(offset);
    if cow_from != 0 {
        h.add_flags(flags::CMD_COW)
            .set_cow_oid(Oid::data(Vid(cow_from), idx).0);
    }
    let r = conn.write(h, data).await.unwrap();
    if r.result() != SdResult::SUCCESS {
        return r.result();
    }
    let mut h = Header::request(opcode::WRITE_OBJ);
    h.set_oid(Oid::inode(Vid(vid)).0)
        .set_obj_offset(proto::inode::data_vdi_id_offset(idx) as u64);
    conn.write(h, Bytes::copy_from_slice(&vid.to_le_bytes()))
        .await
        .unwrap()
        .result()
}

#[test]
fn objects_larger_than_the_inode_are_created_and_copied_on_write() {
    let c = Cluster::start(3);
    // One copy on three nodes: most objects live away from the node a request arrives at.
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    // 64 MiB objects: bigger than the inode (12.5 MiB) and than one read of 32 MiB.
    c.dog_ok(0, &["vdi", "create", "-z", "26", "Big", "1G"]);
    let obj = 64usize << 20;
    let data = pattern(2 * obj, 7);
    rt().block_on(async {
        let conn = c.conn(0).await;
        let vid = vid_of(&conn, "Big", "", 0).await.unwrap();
        for idx in 0..2u32 {
            let piece = &data[idx as usize * obj..(idx as usize + 1) * obj];
            let r = qemu_write_object(&conn, vid, idx, 0, Bytes::copy_from_slice(piece), 0).await;
            assert_eq!(r, SdResult::SUCCESS, "whole-object write of index {idx}");
        }
    });
    assert!(c.dog(1, &["vdi", "read", "Big", "0", "128M"]).stdout == data);
    c.dog_ok(2, &["vdi", "snapshot", "-s", "one", "Big"]);
    let snap = rt().block_on(async { vid_of(&c.conn(0).await, "Big", "one", 0).await.unwrap() });
    // Each copy-on-write goes through a node that does not hold the parent's object, so the
    // whole 64 MiB object crosses the network.
    let away = |idx: u32| {
        let file = Oid::data(Vid(snap), idx).file_name();
        (0..3)
            .find(|&i| !c.nodes[i].dir.join("obj").join(&file).exists())
            .expect("one copy: two nodes lack it")
    };
    rt().block_on(async {
        let conn = c.conn(away(0)).await;
        let vid = vid_of(&conn, "Big", "", 0).await.unwrap();
        assert_ne!(snap, vid);
        // A partial write to object 0 copies the parent's 64 MiB object first.
        let r = qemu_write_object(&conn, vid, 0, 5, Bytes::from_static(b"fresh"), snap).await;
        assert_eq!(r, SdResult::SUCCESS);
    });
    // dog's own write path copies object 1 the same way.
    let input = c.tmp.path().join("x");
    std::fs::write(&input, b"dog").unwrap();
    let o = c.dog_stdin(away(1), &["vdi", "write", "Big", "70M"], Some(&input));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut now = data.clone();
    now[5..10].copy_from_slice(b"fresh");
    now[70 << 20..(70 << 20) + 3].copy_from_slice(b"dog");
    for i in 0..3 {
        assert!(
            c.dog(i, &["vdi", "read", "Big", "0", "128M"]).stdout == now,
            "node {i}"
        );
        assert!(
            c.dog(i, &["vdi", "read", "-s", "one", "Big", "0", "128M"])
                .stdout
                == data,
            "snapshot via node {i}"
        );
    }
    let list = c.dog_ok(0, &["vdi", "list", "-r"]);
    let row = list.lines().find(|l| l.starts_with("= Big 0 ")).unwrap();
    assert!(row.contains(&format!(" {} 0 ", 2 * obj)), "{list}");
}

/// A writer that behaves as QEMU's driver: it caches the inode's table, writes objects it owns
/// with WRITE_OBJ, creates (copy-on-write from the owner) the others and records them in the
/// inode, and on READONLY (its VDI became a snapshot) reloads the working VDI and writes again.
struct QemuWriter {
    conn: client::Connection,
    name: String,
    vid: u32,
    table: Vec<u32>,
}

impl QemuWriter {
    async fn open(conn: client::Connection, name: &str, objects: usize) -> QemuWriter {
        let mut w = QemuWriter {
            conn,
            name: name.to_string(),
            vid: 0,
            table: Vec::new(),
        };
        w.reload(objects).await;
        w
    }

    async fn reload(&mut self, objects: usize) {
        self.vid = vid_of(&self.conn, &self.name, "", 0).await.unwrap();
        let mut h = Header::request(opcode::READ_OBJ);
        h.set_oid(Oid::inode(Vid(self.vid)).0)
            .set_obj_offset(proto::inode::data_vdi_id_offset(0) as u64);
        let r = self.conn.read(h, objects as u32 * 4).await.unwrap();
        assert_eq!(r.result(), SdResult::SUCCESS);
        self.table = r
            .data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
    }

    async fn write(&mut self, idx: u32, offset: u64, data: &[u8]) {
        for _ in 0..10 {
            let owner = self.table[idx as usize];
            let r = if owner == self.vid {
                let mut h = Header::request(opcode::WRITE_OBJ);
                h.set_oid(Oid::data(Vid(self.vid), idx).0)
                    .set_obj_offset(offset);
                self.conn
                    .write(h, Bytes::copy_from_slice(data))
                    .await
                    .unwrap()
                    .result()
            } else {
                let data = Bytes::copy_from_slice(data);
                let r = qemu_write_object(&self.conn, self.vid, idx, offset, data, owner).await;
                if r == SdResult::SUCCESS {
                    self.table[idx as usize] = self.vid;
                }
                r
            };
            match r {
                SdResult::SUCCESS => return,
                SdResult::READONLY => self.reload(self.table.len()).await,
                e => panic!("write to object {idx}: {e:?}"),
            }
        }
        panic!("object {idx} stayed read-only");
    }
}

#[test]
fn online_snapshot_holds_the_writes_acknowledged_before_it_and_none_after() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Live", "64M"]);
    const OBJECTS: usize = 4;
    const BLOCK: usize = 4096;
    const WRITES: usize = 600;
    let obj = 4usize << 20;
    let base = pattern(OBJECTS * obj, 11);
    let input = c.tmp.path().join("base");
    std::fs::write(&input, &base).unwrap();
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Live"], Some(&input))
        .status
        .success());
    // Write k goes to its own block: object k % 4, block k / 4 inside it.
    let place = |k: usize| ((k % OBJECTS) as u32, ((k / OBJECTS) * BLOCK) as u64);
    let block = |k: usize| vec![(k % 251) as u8 + 1; BLOCK];
    let done = Arc::new(AtomicUsize::new(0));
    let port = c.port(1);
    let counter = done.clone();
    // Writes go through node 1, the snapshot through node 0.
    let writer = std::thread::spawn(move || {
        rt().block_on(async {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let conn = client::Connection::connect(addr).await.unwrap();
            let mut w = QemuWriter::open(conn, "Live", OBJECTS).await;
            let mut times = Vec::with_capacity(WRITES);
            for k in 0..WRITES {
                let (idx, off) = place(k);
                let sent = Instant::now();
                w.write(idx, off, &block(k)).await;
                times.push((sent, Instant::now()));
                counter.store(k + 1, Ordering::Release);
            }
            times
        })
    });
    while done.load(Ordering::Acquire) < WRITES / 4 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let start = Instant::now();
    c.dog_ok(0, &["vdi", "snapshot", "-s", "online", "Live"]);
    let end = Instant::now();
    let times = writer.join().unwrap();
    let snap = c
        .dog(2, &["vdi", "read", "-s", "online", "Live", "0", "16M"])
        .stdout;
    let live = c.dog(2, &["vdi", "read", "Live", "0", "16M"]).stdout;
    assert_eq!(snap.len(), OBJECTS * obj);
    let (mut before, mut after) = (0, 0);
    for (k, &(sent, acked)) in times.iter().enumerate() {
        let (idx, off) = place(k);
        let at = idx as usize * obj + off as usize;
        let range = at..at + BLOCK;
        if acked < start {
            before += 1;
            assert!(
                snap[range.clone()] == block(k)[..],
                "write {k} acknowledged before the snapshot is not in it"
            );
            assert!(live[range] == block(k)[..], "write {k} lost");
        } else if sent > end {
            after += 1;
            assert!(
                snap[range.clone()] == base[range.clone()],
                "write {k} sent after the snapshot is in it"
            );
            assert!(live[range] == block(k)[..], "write {k} lost");
        }
    }
    assert!(
        before >= WRITES / 4 && after > 0,
        "before {before}, after {after}"
    );
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `dog` that must fail with `code` and say `text`.
fn refused(c: &Cluster, args: &[&str], code: i32, text: &str) {
    let o = c.dog(0, args);
    assert_eq!(o.status.code(), Some(code), "dog {args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(text), "dog {args:?}: {}", stderr(&o));
}

#[test]
fn snapshots_chosen_by_id_or_tag_and_refusals_that_change_nothing() {
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "64M"]);
    let v1 = pattern(8 << 20, 21);
    let input = c.tmp.path().join("v1");
    std::fs::write(&input, &v1).unwrap();
    assert!(c
        .dog_stdin(0, &["vdi", "write", "Alice"], Some(&input))
        .status
        .success());
    c.dog_ok(0, &["vdi", "snapshot", "-s", "first", "Alice"]);
    let small = c.tmp.path().join("new");
    std::fs::write(&small, b"new").unwrap();
    assert!(c
        .dog_stdin(1, &["vdi", "write", "Alice", "0"], Some(&small))
        .status
        .success());
    c.dog_ok(1, &["vdi", "snapshot", "Alice"]);
    let mut v2 = v1.clone();
    v2[..3].copy_from_slice(b"new");

    // Every command with -s takes the id or the tag.
    let read = |args: &[&str]| {
        let mut a = vec!["vdi", "read"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["Alice", "0", "8M"]);
        c.dog(1, &a).stdout
    };
    assert!(read(&["-s", "first"]) == v1);
    assert!(read(&["-s", "1"]) == v1);
    assert!(read(&["-s", "2"]) == v2);
    assert!(read(&[]) == v2);
    let (s1, s2, cur) = rt().block_on(async {
        let conn = c.conn(0).await;
        (
            vid_of(&conn, "Alice", "first", 0).await.unwrap(),
            vid_of(&conn, "Alice", "", 2).await.unwrap(),
            vid_of(&conn, "Alice", "", 0).await.unwrap(),
        )
    });
    assert_eq!(
        c.dog_ok(0, &["vdi", "object", "map", "-s", "first", "Alice"]),
        format!("Index       VID\n00000000 {s1:8x}\n00000001 {s1:8x}\n")
    );
    assert_eq!(
        c.dog_ok(0, &["vdi", "object", "map", "-s", "2", "Alice"]),
        format!("Index       VID\n00000000 {s2:8x}\n00000001 {s1:8x}\n")
    );
    let dump = c.dog_ok(1, &["vdi", "object", "dump-inode", "-s", "2", "Alice"]);
    assert!(dump.starts_with("name: Alice\ntag: \n"), "{dump}");
    for line in [
        "snap_id: 2\n".to_string(),
        format!("vdi_id: {s2:x}\n"),
        format!("parent_vdi_id: {s1:x}\n"),
        format!("data_vdi_id:\n0: {s2:x}\n1: {s1:x}\ngref:\n"),
    ] {
        assert!(dump.contains(&line), "{line:?} in\n{dump}");
    }
    let dump = c.dog_ok(1, &["vdi", "object", "dump-inode", "Alice"]);
    assert!(
        dump.contains(&format!("vdi_id: {cur:x}\nparent_vdi_id: {s2:x}\n")),
        "{dump}"
    );
    let loc = c.dog_ok(
        0,
        &["vdi", "object", "location", "-i", "1", "-s", "1", "Alice"],
    );
    assert!(
        loc.starts_with(&format!(
            "Looking for the object {:016x} (vid {s1:#x} idx 1, 2 copies) with 2 nodes\n",
            Oid::data(Vid(s1), 1).0
        )),
        "{loc}"
    );

    // The listing as the original prints it: header, one row per snapshot and the VDI.
    let list = c.dog_ok(0, &["vdi", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        lines[0],
        "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift"
    );
    assert_eq!(lines.len(), 4, "{list}");
    assert!(
        lines[1].starts_with("s Alice        1   64 MB  8.0 MB  0.0 MB "),
        "{list}"
    );
    assert!(
        lines[1].ends_with(&format!("   {s1:x}      2         first  22")),
        "{list}"
    );
    assert!(
        lines[2].starts_with("s Alice        2   64 MB  4.0 MB  4.0 MB "),
        "{list}"
    );
    assert!(
        lines[3].starts_with("  Alice        0   64 MB  0.0 MB  8.0 MB "),
        "{list}"
    );
    assert!(
        lines[3].ends_with(&format!("   {cur:x}      2                22")),
        "{list}"
    );

    // Refusals: each says why and leaves every VDI as it was.
    let before = c.dog_ok(0, &["vdi", "list", "-r"]);
    refused(
        &c,
        &["vdi", "clone", "Alice", "Bob"],
        64,
        "Only snapshot VDIs can be cloned",
    );
    refused(
        &c,
        &["vdi", "clone", "-s", "9", "Alice", "Bob"],
        5,
        "Failed to open VDI Alice",
    );
    refused(
        &c,
        &["vdi", "clone", "-s", "first", "Alice", "Alice"],
        3,
        "Failed to create VDI Alice",
    );
    refused(
        &c,
        &["vdi", "resize", "Alice", "32M"],
        64,
        "Shrinking VDIs is not implemented",
    );
    refused(
        &c,
        &["vdi", "resize", "Alice", "5T"],
        64,
        "New VDI size is too large",
    );
    refused(
        &c,
        &["vdi", "snapshot", "-s", "5", "Alice"],
        64,
        "non-integer value",
    );
    refused(
        &c,
        &["vdi", "rollback", "-f", "Alice"],
        64,
        "Please specify the '-s' option",
    );
    refused(
        &c,
        &["vdi", "rollback", "-f", "-s", "nope", "Alice"],
        5,
        "Failed to open VDI Alice",
    );
    // As the original's do_vdi_delete: looked up first, exit 1 when not found.
    refused(
        &c,
        &["vdi", "delete", "-s", "7", "Alice"],
        1,
        "Failed to open VDI Alice (snapshot id: 7 snapshot tag: ): ",
    );
    refused(
        &c,
        &["vdi", "delete", "Nobody"],
        1,
        "Failed to open VDI Nobody (snapshot id: 0 snapshot tag: ): No VDI found",
    );
    refused(
        &c,
        &["vdi", "write", "-s", "1", "Alice"],
        64,
        "invalid option",
    );
    // Snapshot objects are read-only through the protocol as well.
    rt().block_on(async {
        let conn = c.conn(1).await;
        let mut h = Header::request(opcode::WRITE_OBJ);
        h.set_oid(Oid::data(Vid(s1), 0).0);
        let r = conn.write(h, Bytes::from_static(b"zzz")).await.unwrap();
        assert_eq!(r.result(), SdResult::READONLY);
        let r = qemu_write_object(&conn, s1, 5, 0, Bytes::from_static(b"zzz"), 0).await;
        assert_eq!(r, SdResult::READONLY);
    });
    assert_eq!(c.dog_ok(1, &["vdi", "list", "-r"]), before);
    assert!(read(&["-s", "1"]) == v1);
    assert!(read(&[]) == v2);

    // Deleting the first snapshot by id keeps what the others still use.
    c.dog_ok(0, &["vdi", "delete", "-s", "1", "Alice"]);
    let list = c.dog_ok(0, &["vdi", "list", "-r"]);
    assert!(!list.contains("s Alice 1 "), "{list}");
    assert!(read(&["-s", "2"]) == v2);
    assert!(read(&[]) == v2);
    refused(
        &c,
        &["vdi", "read", "-s", "first", "Alice"],
        5,
        "Failed to open VDI Alice",
    );
}

/// A `sheepdog_vdi_attr` request payload: header (name, tag, snap_id, value_len, key), value.
fn attr_payload(name: &str, tag: &str, snapid: u32, key: &str, value: &[u8]) -> Vec<u8> {
    use proto::attr;
    let mut a = vec![0u8; attr::VALUE + value.len()];
    a[attr::NAME..attr::NAME + name.len()].copy_from_slice(name.as_bytes());
    a[attr::TAG..attr::TAG + tag.len()].copy_from_slice(tag.as_bytes());
    a[attr::SNAP_ID..attr::SNAP_ID + 4].copy_from_slice(&snapid.to_le_bytes());
    a[attr::VALUE_LEN..attr::VALUE_LEN + 4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    a[attr::KEY..attr::KEY + key.len()].copy_from_slice(key.as_bytes());
    a[attr::VALUE..].copy_from_slice(value);
    a
}

/// The original's first probe for an attribute: FNV-1a over name[256], tag[256], snap_id and
/// key[256] of the request, low 32 bits.
fn first_attr_id(a: &[u8]) -> u32 {
    use proto::attr;
    use proto::hash::{fnv64a, FNV1A_64_INIT};
    let mut h = fnv64a(&a[attr::NAME..attr::NAME + 256], FNV1A_64_INIT);
    h = fnv64a(&a[attr::TAG..attr::TAG + 256], h);
    h = fnv64a(&a[attr::SNAP_ID..attr::SNAP_ID + 4], h);
    h = fnv64a(&a[attr::KEY..attr::KEY + 256], h);
    h as u32
}

/// GET_VDI_ATTR with `fl` (CREAT / EXCL / DEL): (result, vdi id, attribute id).
async fn get_attr(
    conn: &client::Connection,
    snapid: u32,
    payload: Vec<u8>,
    fl: u16,
) -> (SdResult, u32, u32) {
    let mut h = Header::request(opcode::GET_VDI_ATTR);
    h.set_snapid(snapid).add_flags(fl);
    let r = conn.write(h, payload.into()).await.unwrap();
    (r.result(), r.header.rsp_vdi_id(), r.header.rsp_attr_id())
}

#[test]
fn attributes_through_the_protocol_and_dog() {
    use proto::flags::{CMD_CREAT, CMD_DEL, CMD_EXCL};
    let c = Cluster::start(2);
    c.dog_ok(0, &["cluster", "format", "--copies=2"]);
    c.dog_ok(0, &["vdi", "create", "Alice", "64M"]);
    let name_vid = proto::hash::sd_hash_vdi(b"Alice");
    let owner = attr_payload("Alice", "", 0, "owner", b"bob");
    let id = first_attr_id(&owner);
    let file = Oid::attr(Vid(name_vid), id).file_name();
    rt().block_on(async {
        let conn = c.conn(0).await;
        // Not there yet: a plain lookup finds nothing.
        let r = get_attr(&conn, 0, owner.clone(), 0).await;
        assert_eq!(r.0, SdResult::NO_OBJ);
        // Created where the original puts it: under the name's hash, at the first probe.
        assert_eq!(
            get_attr(&conn, 0, owner.clone(), CMD_CREAT).await,
            (SdResult::SUCCESS, name_vid, id)
        );
        for n in &c.nodes {
            let meta = std::fs::metadata(n.dir.join("obj").join(&file)).expect("on both nodes");
            assert!(meta.len() >= proto::attr::VALUE as u64 + 3);
        }
        // Exclusive creation of an existing attribute is refused and changes nothing.
        let eve = attr_payload("Alice", "", 0, "owner", b"eve");
        let r = get_attr(&conn, 0, eve.clone(), CMD_CREAT | CMD_EXCL).await;
        assert_eq!(r.0, SdResult::VDI_EXIST);
    });
    assert_eq!(c.dog_ok(1, &["vdi", "getattr", "Alice", "owner"]), "bob");
    // A snapshot keeps the name, so the attribute stays reachable by the working VDI.
    c.dog_ok(0, &["vdi", "snapshot", "-s", "snap", "Alice"]);
    assert_eq!(c.dog_ok(0, &["vdi", "getattr", "Alice", "owner"]), "bob");
    rt().block_on(async {
        let conn = c.conn(1).await;
        // The snapshot's own attributes are apart from the working VDI's.
        let snap_attr = attr_payload("Alice", "snap", 0, "owner", b"carol");
        let sid = first_attr_id(&snap_attr);
        assert_ne!(sid, id);
        assert_eq!(
            get_attr(&conn, 0, snap_attr, CMD_CREAT).await,
            (SdResult::SUCCESS, name_vid, sid)
        );
        // Deleted, then created again: the old slot stays taken, the next one is used.
        let del = attr_payload("Alice", "", 0, "owner", b"");
        assert_eq!(
            get_attr(&conn, 0, del.clone(), CMD_DEL).await.0,
            SdResult::SUCCESS
        );
        assert_eq!(get_attr(&conn, 0, del.clone(), 0).await.0, SdResult::NO_OBJ);
        assert_eq!(get_attr(&conn, 0, del, CMD_DEL).await.0, SdResult::NO_OBJ);
        let again = attr_payload("Alice", "", 0, "owner", b"dave");
        assert_eq!(
            get_attr(&conn, 0, again, CMD_CREAT | CMD_EXCL).await,
            (SdResult::SUCCESS, name_vid, id.wrapping_add(1))
        );
        // Malformed requests: short payload, no name, no key, unknown VDI.
        let r = get_attr(&conn, 0, vec![0u8; 100], CMD_CREAT).await;
        assert_eq!(r.0, SdResult::INVALID_PARMS);
        let r = get_attr(&conn, 0, attr_payload("", "", 0, "k", b"v"), CMD_CREAT).await;
        assert_eq!(r.0, SdResult::INVALID_PARMS);
        let r = get_attr(&conn, 0, attr_payload("Alice", "", 0, "", b"v"), CMD_CREAT).await;
        assert_eq!(r.0, SdResult::INVALID_PARMS);
        let r = get_attr(
            &conn,
            0,
            attr_payload("Nobody", "", 0, "k", b"v"),
            CMD_CREAT,
        )
        .await;
        assert_eq!(r.0, SdResult::NO_VDI);
    });
    assert_eq!(c.dog_ok(0, &["vdi", "getattr", "Alice", "owner"]), "dave");

    // dog: value from stdin, overwrite, exclusive refusal, delete, missing VDI, too large.
    let value = c.tmp.path().join("value");
    std::fs::write(&value, b"line one\nline two\n").unwrap();
    let o = c.dog_stdin(0, &["vdi", "setattr", "Alice", "notes"], Some(&value));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        c.dog_ok(1, &["vdi", "getattr", "Alice", "notes"]),
        "line one\nline two\n"
    );
    refused(
        &c,
        &["vdi", "setattr", "-x", "Alice", "notes", "x"],
        3,
        "already exists",
    );
    assert_eq!(
        c.dog_ok(1, &["vdi", "getattr", "Alice", "notes"]),
        "line one\nline two\n"
    );
    c.dog_ok(0, &["vdi", "setattr", "Alice", "notes", "short"]);
    assert_eq!(c.dog_ok(1, &["vdi", "getattr", "Alice", "notes"]), "short");
    c.dog_ok(0, &["vdi", "setattr", "-d", "Alice", "notes"]);
    refused(&c, &["vdi", "getattr", "Alice", "notes"], 5, "not found");
    refused(
        &c,
        &["vdi", "setattr", "-d", "Alice", "notes"],
        5,
        "not found",
    );
    refused(
        &c,
        &["vdi", "setattr", "Nobody", "k", "v"],
        5,
        "VDI not found",
    );
    let big = c.tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; proto::attr::MAX_VALUE + 1]).unwrap();
    let o = c.dog_stdin(0, &["vdi", "setattr", "Alice", "big"], Some(&big));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    refused(&c, &["vdi", "getattr", "Alice", "big"], 5, "not found");
    // The largest value there is fits.
    std::fs::write(&big, vec![b'y'; proto::attr::MAX_VALUE]).unwrap();
    let o = c.dog_stdin(0, &["vdi", "setattr", "Alice", "big"], Some(&big));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        c.dog_ok(1, &["vdi", "getattr", "Alice", "big"]).len(),
        proto::attr::MAX_VALUE
    );
}

#[test]
fn payload_claims_up_to_the_largest_object_and_no_further() {
    use std::io::{Read, Write};
    let c = Cluster::start(1);
    c.dog_ok(0, &["cluster", "format", "--copies=1"]);
    let send = |len: u32, body: &[u8]| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port(0))).unwrap();
        let mut h = Header::request(opcode::WRITE_OBJ);
        h.add_flags(flags::CMD_WRITE)
            .set_oid(Oid::data(Vid(1), 0).0)
            .set_data_length(len);
        s.write_all(h.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        s
    };
    // Past the largest object: refused at once and the connection closed.
    let mut s = send((1u32 << proto::SD_MAX_BLOCK_SIZE_SHIFT) + 1, &[]);
    let mut rsp = [0u8; proto::HEADER_SIZE];
    s.read_exact(&mut rsp).unwrap();
    assert_eq!(
        Header::from_bytes(&rsp).sd_result(),
        SdResult::INVALID_PARMS
    );
    assert_eq!(s.read(&mut rsp).unwrap_or(0), 0, "closed after the refusal");
    // A whole largest object announced, a little sent, then the client goes away: the node
    // carries on serving.
    drop(send(1u32 << proto::SD_MAX_BLOCK_SIZE_SHIFT, &[7u8; 4096]));
    c.dog_ok(0, &["vdi", "create", "After", "4M"]);
    assert!(c.dog_ok(0, &["vdi", "list", "-r"]).contains(" After 0 "));
}
