//! `dog upgrade`: files of Sheepdog 0.7 and 0.8 stores converted offline (no sheep needed)
//! into today's layouts, which a sheep then reads; and `object-location` from a real store's
//! epoch file agrees with where the cluster puts the object.

mod common;

use common::{bin, Cluster};
use proto::inode::{InodeHeader, SD_INODE_HEADER_SIZE, SD_INODE_SIZE};
use std::process::Command;

fn dog(args: &[&str]) -> std::process::Output {
    Command::new(bin("dog"))
        .args(args)
        .output()
        .expect("run dog")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn old_config_epoch_and_inode_files_are_converted() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).display().to_string();
    // A 0.8 config (version 4): the new one is version 6 with 4 MiB objects.
    let mut cfg = vec![0u8; 40];
    cfg[0..8].copy_from_slice(&(77u64 << 32).to_le_bytes());
    cfg[10] = 3;
    cfg[11..16].copy_from_slice(b"plain");
    cfg[30..32].copy_from_slice(&4u16.to_le_bytes());
    std::fs::write(p("config.old"), &cfg).unwrap();
    let o = dog(&["upgrade", "config-convert", &p("config.old"), &p("config")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let new = proto::config::Config::decode(&std::fs::read(p("config")).unwrap()).unwrap();
    assert_eq!((new.version, new.block_size_shift, new.copies), (6, 22, 3));
    assert_eq!(new.ctime, 77 << 32);
    let o = dog(&["upgrade", "config-convert", &p("config"), &p("again")]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).starts_with("unknown version config file: 6\n"));

    // A 0.8 epoch: 80-byte nodes as today's, the vnodes told for -V.
    let mut ep = Vec::new();
    for (port, vnodes) in [(7000u16, 64u16), (7001, 128)] {
        let mut r = vec![0u8; 80];
        r[24 + 12..24 + 16].copy_from_slice(&[127, 0, 0, 1]);
        r[24 + 16..24 + 18].copy_from_slice(&port.to_le_bytes());
        r[64..66].copy_from_slice(&vnodes.to_le_bytes());
        r[68..72].copy_from_slice(&u32::from(port).to_le_bytes());
        ep.extend(r);
    }
    ep.extend(99u64.to_le_bytes());
    std::fs::write(p("epoch.old"), &ep).unwrap();
    let o = dog(&["upgrade", "epoch-convert", &p("epoch.old"), &p("epoch")]);
    assert_eq!(o.status.code(), Some(64), "no -o");
    let o = dog(&[
        "upgrade",
        "epoch-convert",
        "-o",
        "v0.8",
        &p("epoch.old"),
        &p("epoch"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("\tIPv4 ip:127.0.0.1 port:7001 == 128\n"),
        "{}",
        stderr(&o)
    );
    let (nodes, time) =
        proto::node::decode_epoch_file(&std::fs::read(p("epoch")).unwrap()).unwrap();
    assert_eq!(time, 99);
    assert_eq!(
        nodes
            .iter()
            .map(|n| (n.nid.port, n.nr_vnodes))
            .collect::<Vec<_>>(),
        [(7000, 64), (7001, 128)]
    );

    // A 0.7 working VDI's inode: header fields and table carried over.
    let mut ino = vec![0u8; 4664 + 4 * (1 << 20)];
    ino[..5].copy_from_slice(b"Alice");
    ino[536..544].copy_from_slice(&(8u64 << 20).to_le_bytes());
    ino[554] = 2;
    ino[555] = 22;
    ino[560..564].copy_from_slice(&0x7c2b25u32.to_le_bytes());
    ino[4664..4668].copy_from_slice(&0x7c2b25u32.to_le_bytes());
    std::fs::write(p("inode.old"), &ino).unwrap();
    let o = dog(&[
        "upgrade",
        "inode-convert",
        "-o",
        "v0.7",
        &p("inode.old"),
        &p("inode"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let new = std::fs::read(p("inode")).unwrap();
    assert_eq!(new.len(), SD_INODE_SIZE);
    let h = InodeHeader::decode(&new).unwrap();
    assert_eq!(
        (h.name.as_slice(), h.vdi_size, h.nr_copies),
        (&b"Alice"[..], 8 << 20, 2)
    );
    assert_eq!(h.vdi_id, 0x7c2b25);
    assert_eq!(
        &new[SD_INODE_HEADER_SIZE..SD_INODE_HEADER_SIZE + 4],
        &0x7c2b25u32.to_le_bytes()
    );
    // A snapshot is not converted.
    ino[520] = 1;
    std::fs::write(p("snap.old"), &ino).unwrap();
    let o = dog(&[
        "upgrade",
        "inode-convert",
        "-o",
        "v0.7",
        &p("snap.old"),
        &p("snap"),
    ]);
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(stderr(&o), "snapshot cannot be converted\n");
}

#[test]
fn object_location_from_an_epoch_file_is_where_the_cluster_puts_it() {
    let c = Cluster::start(3);
    c.dog_ok(0, &["cluster", "format", "-c", "1"]);
    c.dog_ok(0, &["vdi", "create", "-P", "Alice", "16M"]);
    let epoch = c.nodes[0].dir.join("epoch").join("00000001");
    let shown = c.dog_ok(0, &["vdi", "object", "location", "-i", "3", "Alice"]);
    let want = shown
        .lines()
        .skip_while(|l| !l.starts_with("According to sheepdog algorithm"))
        .nth(1)
        .unwrap_or_else(|| panic!("{shown}"))
        .to_string();
    let list = c.dog_ok(0, &["vdi", "list", "-r", "Alice"]);
    let vid = list.split(' ').nth(7).unwrap();
    let oid = format!("00{vid}00000003");
    let o = dog(&["upgrade", "object-location", epoch.to_str().unwrap(), &oid]);
    assert!(o.status.success(), "{}", stderr(&o));
    let port = want.split(' ').next().unwrap().rsplit_once(':').unwrap().1;
    assert_eq!(
        stderr(&o),
        format!("IPv4 ip:127.0.0.1 port:{port}\n"),
        "{shown}"
    );
}
