//! `dog vdi create / list / delete / read / write / object location`.
//!
//! read and write keep several object requests in flight at once; write creates objects on
//! first touch (copy-on-write from a parent's object where the inode says so) and records each
//! new object in the inode's data_vdi_id table, as the original and QEMU do.

use crate::conn::{fail, Dog, Fail, Res, EXIT_FAILURE, EXIT_USAGE};
use crate::{fmt, Common};
use clap::Subcommand;
use futures::stream::{self, StreamExt, TryStreamExt};
use proto::inode::{self, InodeHeader, SD_INODE_DATA_SIZE};
use proto::{flags, opcode, Header, Oid, SdResult, Vid};
use std::io::{IsTerminal, Read, Write};

const IN_FLIGHT: usize = 8;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a VDI
    Create {
        name: String,
        size: String,
        #[arg(short = 'c', long = "copies")]
        copies: Option<u8>,
        #[arg(short = 'z', long = "block_size_shift")]
        block_size_shift: Option<u8>,
    },
    /// List VDIs
    List { name: Option<String> },
    /// Delete a VDI
    Delete {
        name: String,
        #[arg(short = 's', long = "snapshot")]
        snapshot: Option<String>,
    },
    /// Read a VDI's bytes to stdout
    Read {
        name: String,
        offset: Option<String>,
        len: Option<String>,
        #[arg(short = 's', long = "snapshot")]
        snapshot: Option<String>,
    },
    /// Write stdin into a VDI
    Write {
        name: String,
        offset: Option<String>,
        len: Option<String>,
    },
    /// Object commands
    Object {
        #[command(subcommand)]
        cmd: ObjectCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum ObjectCmd {
    /// Show where an object of the VDI is stored
    Location {
        name: String,
        #[arg(short = 'i', long = "index", default_value_t = 0)]
        index: u32,
        #[arg(short = 's', long = "snapshot")]
        snapshot: Option<String>,
    },
}

fn name_payload(name: &str, tag: &str) -> Res<Vec<u8>> {
    let mut p = proto::padded(name.as_bytes(), proto::SD_MAX_VDI_LEN)
        .ok_or_else(|| Fail(format!("VDI name is too long: {name}"), EXIT_USAGE))?;
    p.extend(
        proto::padded(tag.as_bytes(), proto::SD_MAX_VDI_TAG_LEN)
            .ok_or_else(|| Fail("snapshot tag is too long".into(), EXIT_USAGE))?,
    );
    Ok(p)
}

fn size_arg(s: &str) -> Res<u64> {
    fmt::parse_size(s).ok_or_else(|| Fail(format!("Invalid size '{s}'"), EXIT_USAGE))
}

/// Looks up a VDI (or one of its snapshots by id or tag): its header and data table.
pub async fn open(d: &Dog, name: &str, snap: Option<&str>) -> Res<(InodeHeader, Vec<u8>)> {
    let (snapid, tag) = match snap {
        Some(s) => match s.parse::<u32>() {
            Ok(id) => (id, ""),
            Err(_) => (0, s),
        },
        None => (0, ""),
    };
    let mut h = Header::request(opcode::GET_VDI_INFO);
    h.set_snapid(snapid);
    let r = d.send(h, name_payload(name, tag)?, 0).await?;
    match r.result() {
        SdResult::SUCCESS => {}
        SdResult::NO_VDI => return Err(Fail(format!("Failed to open VDI {name} (snapshot id: {snapid} snapshot tag: {tag}): No VDI found"), 5)),
        e => return Err(fail(&format!("Failed to open VDI {name}"), e)),
    }
    read_inode(d, r.header.rsp_vdi_id()).await
}

async fn read_inode(d: &Dog, vid: u32) -> Res<(InodeHeader, Vec<u8>)> {
    let mut h = Header::request(opcode::READ_OBJ);
    h.set_oid(Oid::inode(Vid(vid)).0);
    let r = d
        .ok(
            "Failed to read inode",
            h,
            Vec::new(),
            SD_INODE_DATA_SIZE as u32,
        )
        .await?;
    let hdr = InodeHeader::decode(&r.data)
        .ok_or_else(|| Fail("Failed to read inode: short answer".into(), EXIT_FAILURE))?;
    Ok((hdr, r.data))
}

pub async fn run(d: &Dog, c: &Common, cmd: Cmd) -> Res<()> {
    match cmd {
        Cmd::Create {
            name,
            size,
            copies,
            block_size_shift,
        } => {
            let size = size_arg(&size)?;
            let bss = block_size_shift.unwrap_or(0);
            let max = (1u64
                << if bss == 0 {
                    proto::SD_DEFAULT_BLOCK_SIZE_SHIFT
                } else {
                    bss
                })
                * proto::SD_INODE_DATA_INDEX;
            if size > max {
                return Err(Fail(
                    format!(
                        "VDI size is too large: {} (max {})",
                        fmt::size(size, false),
                        fmt::size(max, false)
                    ),
                    EXIT_USAGE,
                ));
            }
            let mut h = Header::request(opcode::NEW_VDI);
            h.set_vdi_size(size)
                .set_vdi_copies(copies.unwrap_or(0))
                .set_vdi_block_size_shift(bss);
            let mut p = name_payload(&name, "")?;
            p.truncate(proto::SD_MAX_VDI_LEN);
            d.ok(&format!("Failed to create VDI {name}"), h, p, 0)
                .await?;
            Ok(())
        }
        Cmd::List { name } => list(d, c, name.as_deref()).await,
        Cmd::Delete { name, snapshot } => {
            let (snapid, tag) = match snapshot.as_deref().map(|s| (s.parse::<u32>().ok(), s)) {
                Some((Some(id), _)) => (id, ""),
                Some((None, t)) => (0, t),
                None => (0, ""),
            };
            let mut h = Header::request(opcode::DEL_VDI);
            h.set_snapid(snapid);
            d.ok(
                &format!("Failed to delete {name}"),
                h,
                name_payload(&name, tag)?,
                0,
            )
            .await?;
            Ok(())
        }
        Cmd::Read {
            name,
            offset,
            len,
            snapshot,
        } => read(d, &name, offset, len, snapshot.as_deref()).await,
        Cmd::Write { name, offset, len } => write(d, &name, offset, len).await,
        Cmd::Object {
            cmd:
                ObjectCmd::Location {
                    name,
                    index,
                    snapshot,
                },
        } => location(d, &name, index, snapshot.as_deref()).await,
    }
}

fn range(h: &InodeHeader, offset: Option<String>, len: Option<String>) -> Res<(u64, u64)> {
    let off = offset.as_deref().map(size_arg).transpose()?.unwrap_or(0);
    let len = match len.as_deref() {
        Some(l) => size_arg(l)?,
        None => h.vdi_size.saturating_sub(off),
    };
    if off.checked_add(len).is_none_or(|e| e > h.vdi_size) {
        return Err(Fail(
            format!("Range is out of the VDI (size {})", h.vdi_size),
            EXIT_FAILURE,
        ));
    }
    Ok((off, len))
}

/// The (index, offset in object, length) pieces of a byte range.
fn pieces(off: u64, len: u64, obj: u64) -> Vec<(u32, u64, u64)> {
    let mut v = Vec::new();
    let mut pos = off;
    while pos < off + len {
        let idx = pos / obj;
        let o = pos % obj;
        let n = (obj - o).min(off + len - pos);
        v.push((idx as u32, o, n));
        pos += n;
    }
    v
}

async fn read(
    d: &Dog,
    name: &str,
    offset: Option<String>,
    len: Option<String>,
    snap: Option<&str>,
) -> Res<()> {
    let (h, table) = open(d, name, snap).await?;
    let (off, len) = range(&h, offset, len)?;
    let mut out = std::io::stdout().lock();
    let chunks = stream::iter(pieces(off, len, h.object_size()))
        .map(|(idx, o, n)| {
            let owner = inode::data_vdi_id(&table, idx);
            async move {
                if owner == 0 {
                    return Ok(vec![0u8; n as usize]);
                }
                let mut rq = Header::request(opcode::READ_OBJ);
                rq.set_oid(Oid::data(Vid(owner), idx).0).set_obj_offset(o);
                Ok::<_, Fail>(
                    d.ok("Failed to read VDI", rq, Vec::new(), n as u32)
                        .await?
                        .data,
                )
            }
        })
        .buffered(IN_FLIGHT);
    let mut chunks = Box::pin(chunks);
    while let Some(c) = chunks.try_next().await? {
        out.write_all(&c)
            .map_err(|e| Fail(format!("Failed to write to stdout: {e}"), EXIT_FAILURE))?;
    }
    Ok(())
}

async fn write(d: &Dog, name: &str, offset: Option<String>, len: Option<String>) -> Res<()> {
    let (h, table) = open(d, name, None).await?;
    let off = offset.as_deref().map(size_arg).transpose()?.unwrap_or(0);
    let limit = len.as_deref().map(size_arg).transpose()?;
    let obj = h.object_size();
    let mut input = std::io::stdin().lock();
    let progress = std::io::stderr().is_terminal();
    let vid = h.vdi_id;
    let mut pos = off;
    let mut done = 0u64;
    let mut pending = Vec::new();
    loop {
        if limit.is_some_and(|l| done >= l) {
            break;
        }
        let want = (obj - pos % obj).min(limit.map_or(u64::MAX, |l| l - done)) as usize;
        let mut buf = vec![0u8; want];
        let got = read_full(&mut input, &mut buf)?;
        if got == 0 {
            break;
        }
        buf.truncate(got);
        if pos + got as u64 > h.vdi_size {
            return Err(Fail(
                "Failed to write VDI: the data goes beyond the end of the VDI".into(),
                EXIT_FAILURE,
            ));
        }
        let idx = (pos / obj) as u32;
        pending.push((idx, pos % obj, buf, inode::data_vdi_id(&table, idx)));
        pos += got as u64;
        done += got as u64;
        if pending.len() >= IN_FLIGHT {
            flush(d, vid, &h, std::mem::take(&mut pending)).await?;
            if progress {
                eprint!("\r{} written", fmt::size(done, false));
            }
        }
    }
    flush(d, vid, &h, pending).await?;
    if progress {
        eprintln!("\r{} written", fmt::size(done, false));
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Res<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Fail(format!("Failed to read stdin: {e}"), EXIT_FAILURE)),
        }
    }
    Ok(n)
}

async fn flush(
    d: &Dog,
    vid: u32,
    h: &InodeHeader,
    pieces: Vec<(u32, u64, Vec<u8>, u32)>,
) -> Res<()> {
    let copies = h.nr_copies;
    stream::iter(pieces)
        .map(|(idx, o, data, owner)| async move {
            let oid = Oid::data(Vid(vid), idx);
            let mut rq;
            if owner == vid {
                rq = Header::request(opcode::WRITE_OBJ);
            } else {
                rq = Header::request(opcode::CREATE_AND_WRITE_OBJ);
                if owner != 0 {
                    rq.add_flags(flags::CMD_COW)
                        .set_cow_oid(Oid::data(Vid(owner), idx).0);
                }
            }
            rq.set_oid(oid.0).set_obj_offset(o).set_obj_copies(copies);
            d.ok("Failed to write VDI", rq, data, 0).await?;
            if owner != vid {
                let mut up = Header::request(opcode::WRITE_OBJ);
                up.set_oid(Oid::inode(Vid(vid)).0)
                    .set_obj_offset(inode::data_vdi_id_offset(idx) as u64)
                    .set_obj_copies(copies);
                d.ok("Failed to update inode", up, vid.to_le_bytes().to_vec(), 0)
                    .await?;
            }
            Ok::<_, Fail>(())
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

async fn list(d: &Dog, c: &Common, only: Option<&str>) -> Res<()> {
    let r = d
        .ok(
            "Failed to read VDIs",
            Header::request(opcode::READ_VDIS),
            Vec::new(),
            proto::SD_VDI_BITMAP_SIZE as u32,
        )
        .await?;
    let vids: Vec<u32> = (0..(r.data.len() * 8) as u32)
        .filter(|v| r.data[(v / 8) as usize] & (1 << (v % 8)) != 0)
        .collect();
    if !c.raw && !c.json {
        println!("  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift");
    }
    let mut json = Vec::new();
    for vid in vids {
        let Ok((h, table)) = read_inode(d, vid).await else {
            continue;
        };
        if h.name.is_empty() || only.is_some_and(|n| n.as_bytes() != h.name.as_slice()) {
            continue;
        }
        let (mut used, mut shared) = (0u64, 0u64);
        for i in 0..h.count_data_objs().min(proto::SD_INODE_DATA_INDEX) as u32 {
            match inode::data_vdi_id(&table, i) {
                0 => {}
                v if v == vid => used += h.object_size(),
                _ => shared += h.object_size(),
            }
        }
        let name = String::from_utf8_lossy(&h.name).into_owned();
        let tag = String::from_utf8_lossy(&h.tag).into_owned();
        let snapshot = h.is_snapshot();
        let flag = if snapshot {
            's'
        } else if h.snap_id == 1 && h.parent_vdi_id != 0 {
            'c'
        } else if c.raw {
            '='
        } else {
            ' '
        };
        let id = if snapshot { h.snap_id } else { 0 };
        let secs = h.create_time >> 32;
        if c.json {
            json.push(serde_json::json!({"name": name, "id": id, "size": h.vdi_size, "used": used, "shared": shared, "ctime": secs, "vid": format!("{vid:x}"), "copies": h.nr_copies, "tag": tag, "snapshot": snapshot, "clone": flag == 'c', "block_size_shift": h.block_size_shift}));
        } else if c.raw {
            println!(
                "{} {} {} {} {} {} {} {:x} {} {} {}",
                flag,
                name,
                id,
                h.vdi_size,
                used,
                shared,
                secs,
                vid,
                h.nr_copies,
                tag,
                h.block_size_shift
            );
        } else {
            println!(
                "{} {:<8} {:5} {:>7} {:>7} {:>7} {}  {:7x} {:6} {:>13} {:3}",
                flag,
                name,
                id,
                fmt::size(h.vdi_size, false),
                fmt::size(used, false),
                fmt::size(shared, false),
                fmt::local_time(secs, "%Y-%m-%d %H:%M"),
                vid,
                h.nr_copies,
                tag,
                h.block_size_shift
            );
        }
    }
    if c.json {
        println!("{}", serde_json::Value::Array(json));
    }
    Ok(())
}

async fn location(d: &Dog, name: &str, idx: u32, snap: Option<&str>) -> Res<()> {
    let (h, table) = open(d, name, snap).await?;
    let owner = inode::data_vdi_id(&table, idx);
    if owner == 0 {
        println!(
            "The inode object 0x{:x} idx {} is not allocated",
            h.vdi_id, idx
        );
        return Ok(());
    }
    let oid = Oid::data(Vid(owner), idx);
    let nodes = crate::node::nodes(d).await?;
    println!(
        "Looking for the object {} (vid 0x{:x} idx {}, {} copies) with {} nodes\n",
        oid,
        h.vdi_id,
        idx,
        h.nr_copies,
        nodes.len()
    );
    for n in &nodes {
        let peer = Dog::connect(&n.nid.ip().to_string(), n.nid.port).await?;
        let mut rq = Header::request(opcode::EXIST);
        rq.set_oid(oid.0);
        let r = peer.send(rq, Vec::new(), 0).await?;
        if r.result().is_ok() {
            println!("{} has the object", n.nid);
        } else {
            println!("{} doesn't have the object", n.nid);
        }
    }
    let ring = sheep::ring::Ring::new(&nodes);
    let at: Vec<String> = ring
        .placement(oid, h.nr_copies as usize)
        .iter()
        .map(|n| n.nid.to_string())
        .collect();
    println!("---------------------------------");
    println!("According to sheepdog algorithm, the object should be located at:");
    println!("{}", at.join(" "));
    Ok(())
}
