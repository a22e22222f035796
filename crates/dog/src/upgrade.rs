//! `dog upgrade ...`: the original's offline converters of store files of the layouts of
//! Sheepdog 0.7 and 0.8 into the current one (`-o v0.7|v0.8` names the old layout), and the
//! location of an object by an epoch file. Each reads one file and writes another; nothing is
//! changed in place.
//!
//! - `config-convert OLD NEW`: a config of version 2 (0.7) or 4 (0.8) becomes version 6 with
//!   the default object size.
//! - `epoch-convert OLD NEW`: the node list of an epoch (56-byte nodes of 0.7, 80-byte of
//!   0.8) in today's 80-byte layout, with its time; prints each node's vnodes for `-V`.
//! - `inode-convert OLD NEW`: a working VDI's inode (0.7 or 0.8) as today's inode.
//! - `object-location EPOCH OID`: the node of the first copy of OID in that epoch.
//!
//! Owns: these conversions. Never: a running cluster.

use crate::cli::Opts;
use crate::error::{Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL, EXIT_USAGE};
use proto::inode::{InodeHeader, SD_INODE_HEADER_SIZE, SD_INODE_SIZE};
use proto::node::{NodeId, SdNode, SD_NODE_SIZE};
use proto::ring::Ring;
use proto::{Oid, SD_INODE_DATA_INDEX};

/// `struct node_id`: address, port, I/O address, I/O port, padding.
const NODE_ID_SIZE: usize = 40;
/// Offset of `child_vdi_id` in the 0.7 and 0.8 inodes, and its size (1024 children).
const OLD_CHILDREN: usize = 568;
const OLD_DATA: usize = OLD_CHILDREN + 4 * 1024;

fn arg(args: &[String], i: usize) -> Option<&str> {
    args.get(i).map(String::as_str)
}

fn args<'a>(a: &'a [String], second: &str) -> Res<(&'a str, &'a str)> {
    let first = arg(a, 0).ok_or_else(|| Fail::usage(""))?;
    match arg(a, 1) {
        Some(b) => Ok((first, b)),
        None => Err(Fail::new(EXIT_USAGE, second.to_string())),
    }
}

fn read(path: &str, what: &str) -> Res<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Fail::new(
            EXIT_SYSFAIL,
            format!("failed to open {what}: {}", crate::conn::os_text(&e)),
        )
    })
}

fn write(path: &str, data: &[u8], what: &str) -> Res<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data).and_then(|_| f.sync_all()))
        .map_err(|e| {
            Fail::new(
                EXIT_SYSFAIL,
                format!("failed to write {what}: {}", crate::conn::os_text(&e)),
            )
        })
}

/// The old layout `-o` names: 7 or 8.
fn orig(o: &Opts, what: &str) -> Res<u8> {
    match o.upgrade_from.as_deref() {
        Some("v0.7") => Ok(7),
        Some("v0.8") => Ok(8),
        Some(other) => Err(Fail::new(
            EXIT_FAILURE,
            format!("unknown original version: {other}\nvalid versions are v0.7 or v0.8"),
        )),
        None => Err(Fail::new(
            EXIT_USAGE,
            format!("please specify original version of {what}"),
        )),
    }
}

pub fn config_convert(a: &[String]) -> Res<()> {
    let (from, to) = args(a, "please specify destination file path")?;
    let mut b = read(from, "config file")?;
    if b.len() != proto::config::SD_CONFIG_SIZE {
        return Err(Fail::new(
            EXIT_USAGE,
            format!("original config file has invalid size: {}", b.len()),
        ));
    }
    let version = u16::from_le_bytes([b[30], b[31]]);
    if version != 2 && version != 4 {
        return Err(Fail::new(
            EXIT_USAGE,
            format!("unknown version config file: {version:x}"),
        ));
    }
    b[29] = proto::SD_DEFAULT_BLOCK_SIZE_SHIFT;
    b[30..32].copy_from_slice(&proto::config::SD_FORMAT_VERSION.to_le_bytes());
    write(to, &b, "a new config file")
}

/// The nodes of an old epoch file (`old_size`-byte nodes, the node id at `nid_at`) and its
/// time (the last 8 bytes).
fn old_nodes(b: &[u8], old_size: usize, nid_at: usize) -> Res<(Vec<SdNode>, u64)> {
    let Some(body) = b.len().checked_sub(8) else {
        return Err(Fail::new(EXIT_SYSFAIL, "invalid epoch log file"));
    };
    if body % old_size != 0 {
        return Err(Fail::new(EXIT_SYSFAIL, "invalid epoch log file size"));
    }
    let u16_at = |r: &[u8], o: usize| u16::from_le_bytes([r[o], r[o + 1]]);
    let u32_at = |r: &[u8], o: usize| u32::from_le_bytes(r[o..o + 4].try_into().expect("4"));
    let u64_at = |r: &[u8], o: usize| u64::from_le_bytes(r[o..o + 8].try_into().expect("8"));
    let nodes = b[..body]
        .chunks_exact(old_size)
        .map(|r| {
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&r[nid_at..nid_at + 16]);
            let at = nid_at + NODE_ID_SIZE;
            SdNode {
                nid: NodeId {
                    addr,
                    port: u16_at(r, nid_at + 16),
                },
                nr_vnodes: u16_at(r, at),
                zone: u32_at(r, at + 4),
                space: u64_at(r, at + 8),
            }
        })
        .collect();
    Ok((nodes, u64_at(b, body)))
}

/// "IPv4 ip:ADDR port:PORT", as the original names a node.
fn node_str(n: &SdNode) -> String {
    let family = if n.nid.ip().is_ipv4() { "IPv4" } else { "IPv6" };
    format!("{family} ip:{} port:{}", n.nid.ip(), n.nid.port)
}

pub fn epoch_convert(o: &Opts, a: &[String]) -> Res<()> {
    let (from, to) = args(a, "please specify destination file path")?;
    let (size, nid_at) = match orig(o, "epoch file")? {
        7 => (56, 0),
        _ => (80, 24),
    };
    let b = read(from, "epoch log file")?;
    let (nodes, time) = old_nodes(&b, size, nid_at)?;
    let mut out = vec![0u8; nodes.len() * SD_NODE_SIZE + 8];
    for (i, n) in nodes.iter().enumerate() {
        n.encode(&mut out[i * SD_NODE_SIZE..]);
    }
    let t = out.len() - 8;
    out[t..].copy_from_slice(&time.to_le_bytes());
    write(to, &out, "a new epoch log file")?;
    let mut msg = String::from("number of vnodes of each nodes:");
    for n in &nodes {
        msg.push_str(&format!("\n\t{} == {}", node_str(n), n.nr_vnodes));
    }
    msg.push_str("\nplease supply the above numbers to sheeps with -V option");
    errln!("{msg}");
    Ok(())
}

pub fn inode_convert(o: &Opts, a: &[String]) -> Res<()> {
    let (from, to) = args(a, "please specify destination file path")?;
    if o.upgrade_from.is_none() {
        return Err(Fail::new(
            EXIT_FAILURE,
            "please specify original version of inode file",
        ));
    }
    // Both old layouts put what is carried over at the same offsets.
    orig(o, "inode file")?;
    let b = read(from, "original inode file")?;
    let table = OLD_DATA + 4 * SD_INODE_DATA_INDEX as usize;
    let Some(old) = InodeHeader::decode(&b).filter(|_| b.len() >= table) else {
        return Err(Fail::new(
            EXIT_SYSFAIL,
            "failed to read original inode file: too short",
        ));
    };
    if old.snap_ctime != 0 {
        return Err(Fail::new(EXIT_USAGE, "snapshot cannot be converted"));
    }
    // What the original carries over: no snapshot id, parent, store policy or children.
    let new = InodeHeader {
        name: old.name,
        tag: old.tag,
        create_time: old.create_time,
        snap_ctime: 0,
        vm_clock_nsec: old.vm_clock_nsec,
        vdi_size: old.vdi_size,
        vm_state_size: old.vm_state_size,
        // 0.7 kept the copy policy in 16 bits: its low byte.
        copy_policy: b[552],
        store_policy: 0,
        nr_copies: b[554],
        block_size_shift: b[555],
        snap_id: 0,
        vdi_id: old.vdi_id,
        parent_vdi_id: 0,
        btree_counter: 0,
    };
    let mut out = vec![0u8; SD_INODE_SIZE];
    new.encode_into(&mut out);
    out[SD_INODE_HEADER_SIZE..SD_INODE_HEADER_SIZE + 4 * SD_INODE_DATA_INDEX as usize]
        .copy_from_slice(&b[OLD_DATA..table]);
    write(to, &out, "converted inode file")
}

pub fn object_location(a: &[String]) -> Res<()> {
    let epoch = arg(a, 0).ok_or_else(|| Fail::usage(""))?;
    let Some(oid) = arg(a, 1) else {
        return Err(Fail::new(
            EXIT_USAGE,
            "please specify object id in hex format",
        ));
    };
    let oid = u64::from_str_radix(oid.trim_start_matches("0x"), 16).unwrap_or(0);
    let b = read(epoch, "epoch file")?;
    let Some((nodes, _)) = proto::node::decode_epoch_file(&b) else {
        return Err(Fail::new(
            EXIT_SYSFAIL,
            format!("failed to construct vnode info from epoch file {epoch}"),
        ));
    };
    match Ring::new(&nodes).placement(Oid(oid), 1).first() {
        Some(n) => {
            errln!("{}", node_str(n));
            Ok(())
        }
        None => Err(Fail::new(
            EXIT_SYSFAIL,
            format!("failed to construct vnode info from epoch file {epoch}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 64,
            zone: u32::from(port),
            space: 1 << 30,
        }
    }

    #[test]
    fn old_epoch_layouts_read_as_the_original_lays_them_out() {
        // 0.7: node_id (40), vnodes u16, pad, zone u32, space u64; then the time.
        let mut b = Vec::new();
        for port in [7000u16, 7001] {
            let mut r = vec![0u8; 56];
            r[..16].copy_from_slice(&node(port).nid.addr);
            r[16..18].copy_from_slice(&port.to_le_bytes());
            r[40..42].copy_from_slice(&64u16.to_le_bytes());
            r[44..48].copy_from_slice(&u32::from(port).to_le_bytes());
            r[48..56].copy_from_slice(&(1u64 << 30).to_le_bytes());
            b.extend(r);
        }
        b.extend(1234u64.to_le_bytes());
        let (nodes, t) = old_nodes(&b, 56, 0).unwrap();
        assert_eq!(nodes, vec![node(7000), node(7001)]);
        assert_eq!(t, 1234);
        assert!(old_nodes(&b[1..], 56, 0).is_err());
        assert_eq!(node_str(&node(7000)), "IPv4 ip:127.0.0.1 port:7000");
    }
}
