//! `dog vdi create / delete / list / object location / object map`.
//! Owns: these commands' requests and output (the listing columns of the original).
//! Never: bulk data transfer (see `vdi_rw`).

use crate::cli::Snap;
use crate::conn::Sheep;
use crate::error::{failed, Fail, Res, EXIT_FAILURE};
use crate::inflight::Window;
use crate::lookup::{self, Inode};
use crate::progress::Progress;
use crate::vdi_rw::{self, IN_FLIGHT};
use crate::{fmt, Ctx};
use proto::inode::{
    InodeHeader, DATA_VDI_ID_OFFSET, GREF_OFFSET, SD_INODE_DATA_INDEX, SD_INODE_SIZE,
};
use proto::ring::Ring;
use proto::{opcode, Header, Oid, SdResult, Vid};
use serde_json::json;

/// SD_MAX_VDI_SIZE: 4 MiB objects x 2^32 indexes (hyper volumes).
const SD_MAX_VDI_SIZE: u64 = (4 << 20) << 32;

fn name_arg<'a>(ctx: &'a Ctx<'_>) -> Res<&'a str> {
    ctx.arg(0).ok_or_else(|| Fail::usage(""))
}

/// The cluster's default object size shift (GET_CLUSTER_DEFAULT), for the size check.
async fn default_shift(s: &Sheep, name: &str) -> Res<u8> {
    let r = s.call(Header::request(opcode::GET_CLUSTER_DEFAULT)).await?;
    match r.result() {
        SdResult::SUCCESS => Ok(match r.header.rsp_default_block_size_shift() {
            b @ proto::SD_MIN_BLOCK_SIZE_SHIFT..=proto::SD_MAX_BLOCK_SIZE_SHIFT => b,
            _ => proto::SD_DEFAULT_BLOCK_SIZE_SHIFT,
        }),
        e @ (SdResult::WAIT_FOR_FORMAT | SdResult::WAIT_FOR_JOIN | SdResult::SHUTDOWN) => Err(
            failed(&format!("Failed to create VDI {name}"), e, EXIT_FAILURE),
        ),
        // A sheep without the request: the protocol default.
        _ => Ok(proto::SD_DEFAULT_BLOCK_SIZE_SHIFT),
    }
}

pub async fn create(ctx: &Ctx<'_>) -> Res<()> {
    let o = ctx.opts;
    let name = name_arg(ctx)?;
    let Some(size_arg) = ctx.arg(1) else {
        return Err(Fail::usage("Please specify the VDI size"));
    };
    let size = fmt::parse_size(size_arg).ok_or_else(|| Fail::usage(fmt::invalid_size(size_arg)))?;
    // A name too long is a usage error before anything is asked.
    lookup::name_payload(name)?;
    let shift = match o.block_size_shift {
        Some(s) => s,
        None => default_shift(&ctx.sheep, name).await?,
    };
    let max = (1u64 << shift) * proto::SD_INODE_DATA_INDEX;
    if size > max {
        return Err(Fail::usage(format!(
            "VDI size is larger than {} bytes, please use '-z' to create larger object size \
             volume",
            fmt::size(max, false)
        )));
    }
    if size > SD_MAX_VDI_SIZE {
        return Err(Fail::usage("VDI size is too large"));
    }
    let (copies, copy_policy) = o.copies.unwrap_or((0, 0));
    let v = client::volumes::NewVdi {
        name: name.to_string(),
        size,
        copies,
        copy_policy,
        block_size_shift: o.block_size_shift.unwrap_or(0),
        ..Default::default()
    };
    let vid = client::volumes::new_vdi(ctx.sheep.conn(), &v)
        .await
        .map_err(|e| {
            ctx.sheep
                .volume_failure(&format!("Failed to create VDI {name}"), e)
        })?;
    if o.prealloc {
        prealloc(ctx, vid).await?;
    }
    if o.verbose {
        if o.raw {
            outln!("{vid:x}");
        } else {
            outln!("VDI ID of newly created VDI: {vid:x}");
        }
    }
    Ok(())
}

/// `-P`: creates every data object (empty) and records it in the inode.
async fn prealloc(ctx: &Ctx<'_>, vid: u32) -> Res<()> {
    let ino = lookup::read_inode(&ctx.sheep, vid, false)
        .await?
        .map_err(|line| {
            Fail::new(
                EXIT_FAILURE,
                format!("{line}\nFailed to read a newly created VDI object"),
            )
        })?;
    let obj = ino.object_size();
    let total = ino.hdr.vdi_size;
    let mut bar = Progress::new(total, false);
    let mut window = Window::new(IN_FLIGHT);
    let mut done = 0u64;
    let mut finished = |r: Res<()>| -> Res<()> {
        r?;
        done = (done + obj).min(total);
        bar.update(done);
        Ok(())
    };
    for idx in 0..ino.nr_objs() {
        let job = vdi_rw::create_object(ctx.sheep.clone(), ino.hdr.clone(), idx as u32);
        if let Some(r) = window.push(job).await {
            finished(r)?;
        }
    }
    while let Some(r) = window.next().await {
        finished(r)?;
    }
    Ok(())
}

pub async fn delete(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let snap = &ctx.opts.snapshot;
    // As the original: the VDI is looked up first, and a lookup that fails says so.
    if let Err(e) = lookup::find_vid(&ctx.sheep, name, snap).await? {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!(
                "Failed to open VDI {name} (snapshot id: {} snapshot tag: {}): {}",
                snap.id,
                snap.tag,
                e.text()
            ),
        ));
    }
    client::volumes::delete(ctx.sheep.conn(), name, snap.id, &snap.tag)
        .await
        .map_err(|e| {
            ctx.sheep
                .volume_failure(&format!("Failed to delete {name}"), e)
        })
}

/// Escapes blanks and backslashes for raw listings.
fn raw_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_whitespace() || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// One `vdi list` line; `when` is the creation time already formatted.
fn list_row(ino: &Inode, when: &str, raw: bool) -> String {
    let (mine, cow) = ino.stat();
    let obj = ino.object_size();
    let snapid = if ino.is_snapshot() {
        ino.hdr.snap_id
    } else {
        0
    };
    let flag = if ino.is_snapshot() {
        's'
    } else if ino.is_clone() {
        'c'
    } else if raw {
        '='
    } else {
        ' '
    };
    let (size, used, shared) = (
        fmt::size(ino.hdr.vdi_size, raw),
        fmt::size(mine * obj, raw),
        fmt::size(cow * obj, raw),
    );
    let vid = ino.vid();
    let bss = ino.hdr.block_size_shift;
    if raw {
        format!(
            "{flag} {} {snapid} {size} {used} {shared} {when} {vid:x} {} {} {bss}",
            raw_name(&ino.name()),
            ino.redundancy(),
            ino.tag()
        )
    } else {
        format!(
            "{flag} {} {snapid:5} {size:>7} {used:>7} {shared:>7} {when}  {vid:7x} {} {} {bss:3}",
            fmt::left(&ino.name(), 8),
            fmt::right(&ino.redundancy(), 6),
            fmt::right(&ino.tag(), 13)
        )
    }
}

fn list_json(ino: &Inode) -> serde_json::Value {
    let (mine, cow) = ino.stat();
    let obj = ino.object_size();
    let secs = ino.hdr.create_time >> 32;
    json!({
        "name": ino.name(),
        "id": if ino.is_snapshot() { ino.hdr.snap_id } else { 0 },
        "type": if ino.is_snapshot() { "snapshot" } else if ino.is_clone() { "clone" } else { "vdi" },
        "size": ino.hdr.vdi_size,
        "used": mine * obj,
        "shared": cow * obj,
        "creation_time": fmt::local_time(secs, "%Y-%m-%d %H:%M"),
        "ctime": secs,
        "vdi_id": format!("{:x}", ino.vid()),
        "copies": ino.redundancy(),
        "tag": ino.tag(),
        "block_size_shift": ino.hdr.block_size_shift,
    })
}

pub async fn list(ctx: &Ctx<'_>) -> Res<()> {
    let o = ctx.opts;
    let only = ctx.arg(0);
    let oid = if only.is_none() { o.oid } else { None };
    if oid.is_some_and(|x| !Oid(x).is_data()) {
        return Err(Fail::quiet(EXIT_FAILURE));
    }
    if !o.raw && !o.json {
        outln!(
            "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   \
             Block Size Shift"
        );
    }
    let mut rows = Vec::new();
    lookup::walk(&ctx.sheep, true, |ino| {
        if only.is_some_and(|n| n.as_bytes() != ino.hdr.name.as_slice()) {
            return;
        }
        if let Some(x) = oid {
            let owner = ino.owner(u64::from(Oid(x).index()));
            if owner == 0 || owner != Oid(x).vid().0 {
                return;
            }
        }
        if o.json {
            rows.push(list_json(&ino));
            return;
        }
        let secs = ino.hdr.create_time >> 32;
        let when = if o.raw {
            secs.to_string()
        } else {
            fmt::local_time(secs, "%Y-%m-%d %H:%M")
        };
        outln!("{}", list_row(&ino, &when, o.raw));
    })
    .await?;
    if o.json {
        outln!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}

/// `open` with the message the object commands add when the VDI cannot be read.
async fn open_for_object(ctx: &Ctx<'_>, name: &str, snap: &Snap, fatal: &str) -> Res<Inode> {
    lookup::open(&ctx.sheep, name, snap, true)
        .await
        .map_err(|f| f.then(fatal))
}

/// Asks every member whether it holds `oid` (EXIST), as `for_each_node_print` does.
async fn print_holders(ctx: &Ctx<'_>, oid: u64) -> Res<()> {
    let nl = ctx.nodes()?;
    for n in &nl.nodes {
        let who = fmt::addr(&n.nid.addr, n.nid.port);
        let s = match Sheep::connect_node(&n.nid).await {
            Ok(s) => s,
            Err(f) => {
                errln!("{}", f.msg);
                continue;
            }
        };
        let mut h = Header::request(opcode::EXIST);
        h.set_epoch(nl.epoch).set_oid(oid);
        let r = match s.call(h).await {
            Ok(r) => r,
            Err(f) => {
                errln!("{}", f.msg);
                continue;
            }
        };
        match r.result() {
            SdResult::SUCCESS => outln!("{who} has the object"),
            SdResult::NO_OBJ => outln!("{who} doesn't have the object"),
            SdResult::OLD_NODE_VER | SdResult::NEW_NODE_VER => {
                errln!("The node list has changed: please try again")
            }
            e => errln!("{who}: hit an unexpected error ({})", e.text()),
        }
    }
    Ok(())
}

/// "According to sheepdog algorithm ...": the nodes placement picks for `oid`.
fn print_expected(ctx: &Ctx<'_>, oid: u64, copies: u8) -> Res<()> {
    let ring = Ring::new(&ctx.nodes()?.nodes);
    let at: Vec<String> = ring
        .placement(Oid(oid), usize::from(copies))
        .iter()
        .map(|n| fmt::addr(&n.nid.addr, n.nid.port))
        .collect();
    outln!("\nAccording to sheepdog algorithm, the object should be located at:");
    outln!("{}", at.join(" "));
    Ok(())
}

/// `dog vdi track`: where an object's copies were at every epoch, newest first (the
/// inode with no `-i`/`-o`, data object `-i N`, or any object `-o OID`).
pub async fn track(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let ino = open_for_object(ctx, name, &ctx.opts.snapshot, "FATAL: no inode objects").await?;
    let nodes = ctx.nodes()?.nodes.len();
    let (vid, copies) = (ino.vid(), ino.hdr.nr_copies);
    let oid = match (ctx.opts.oid, ctx.opts.index) {
        (Some(oid), _) => {
            outln!("Tracking the object {oid:016x} (the inode vid 0x{vid:x}) with {nodes} nodes");
            oid
        }
        (None, None) => {
            outln!("Tracking the inode object 0x{vid:x} with {nodes} nodes");
            Oid::inode(Vid(vid)).0
        }
        (None, Some(idx)) if idx >= proto::SD_INODE_DATA_INDEX => {
            outln!("The offset is too large!");
            return Err(Fail::quiet(EXIT_FAILURE));
        }
        (None, Some(idx)) => {
            let oid = Oid::data(Vid(ino.owner(idx)), idx as u32).0;
            outln!(
                "Tracking the object {oid:016x} (the inode vid 0x{vid:x} idx {idx}) with \
                 {nodes} nodes"
            );
            oid
        }
    };
    let (result, logs) = crate::cluster::epoch_logs(ctx).await?;
    if result != SdResult::SUCCESS {
        outln!("{}", result.text());
        return Err(Fail::quiet(crate::error::EXIT_SYSFAIL));
    }
    outln!("{}", track_text(oid, copies, &logs));
    Ok(())
}

/// The locations of `oid` with `copies` copies at each epoch of `logs`, as the original
/// prints them.
fn track_text(oid: u64, copies: u8, logs: &[proto::node::EpochLog]) -> String {
    let mut out = String::new();
    for log in logs {
        out.push_str(&format!(
            "\nobj {oid:016x} locations at epoch {}, copies = {copies}\n\
             ---------------------------------------------------\n",
            log.epoch
        ));
        let at: Vec<proto::SdNode> = if log.nodes.len() < usize::from(copies) {
            log.nodes.clone()
        } else {
            Ring::new(&log.nodes).placement(Oid(oid), usize::from(copies))
        };
        for n in at {
            out.push_str(&fmt::addr(&n.nid.addr, n.nid.port));
            out.push('\n');
        }
    }
    out.pop();
    out
}

pub async fn object_location(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let ino = open_for_object(ctx, name, &ctx.opts.snapshot, "FATAL: no inode objects").await?;
    let vid = ino.vid();
    let nr = ctx.nodes()?.nodes.len();
    let copies = ino.hdr.nr_copies;
    let Some(idx) = ctx.opts.index else {
        let oid = Oid::inode(Vid(vid)).0;
        outln!("Looking for the inode object 0x{vid:x} with {nr} nodes\n");
        print_holders(ctx, oid).await?;
        return print_expected(ctx, oid, copies);
    };
    if idx >= proto::SD_INODE_DATA_INDEX {
        outln!("The offset is too large!");
        return Err(Fail::quiet(EXIT_FAILURE));
    }
    let owner = ino.owner(idx);
    if owner == 0 {
        outln!("The inode object 0x{vid:x} idx {idx} is not allocated");
        return Ok(());
    }
    let oid = Oid::data(Vid(owner), idx as u32).0;
    outln!(
        "Looking for the object {oid:016x} (vid 0x{vid:x} idx {idx}, {copies} copies) with {nr} \
         nodes\n"
    );
    print_holders(ctx, oid).await?;
    print_expected(ctx, oid, copies)
}

pub async fn object_map(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let fatal = format!("FATAL: {name} not found");
    let ino = open_for_object(ctx, name, &ctx.opts.snapshot, &fatal).await?;
    outln!("Index       VID");
    match ctx.opts.index {
        Some(idx) => outln!("{idx:08} {:8x}", ino.owner(idx)),
        None => {
            for (idx, &v) in ino.table.iter().enumerate() {
                if v != 0 {
                    outln!("{idx:08} {v:8x}");
                }
            }
        }
    }
    Ok(())
}

/// `vdi object dump-inode`: every field of the inode, then the used data_vdi_id entries and
/// their generation references, as the original prints them.
pub async fn object_dump_inode(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let ino = lookup::open(&ctx.sheep, name, &ctx.opts.snapshot, false)
        .await
        .map_err(|f| f.then("no inode object"))?;
    let oid = Oid::inode(Vid(ino.vid())).0;
    let mut whole = Vec::with_capacity(SD_INODE_SIZE);
    while whole.len() < SD_INODE_SIZE {
        let n = (SD_INODE_SIZE - whole.len()).min(DUMP_PIECE);
        let piece = lookup::read_object(&ctx.sheep, oid, whole.len() as u64, n as u32, true)
            .await?
            .map_err(|line| Fail::new(EXIT_FAILURE, format!("{line}\nno inode object")))?;
        whole.extend_from_slice(&piece);
    }
    out!("{}", dump_inode(&whole));
    Ok(())
}

/// Bytes of the inode read by one request of `dump-inode`.
const DUMP_PIECE: usize = 4 << 20;

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The text of `dump-inode` for a whole inode object (shorter input reads as zeros).
fn dump_inode(raw: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut b = raw.to_vec();
    b.resize(SD_INODE_SIZE, 0);
    let h = InodeHeader::decode(&b).unwrap_or_default();
    let text = |v: &[u8]| String::from_utf8_lossy(proto::cstr_bytes(v)).into_owned();
    let mut o = String::new();
    let _ = writeln!(o, "name: {}", text(&h.name));
    let _ = writeln!(o, "tag: {}", text(&h.tag));
    let _ = writeln!(o, "create_time: {:x}", h.create_time);
    let _ = writeln!(o, "snap_ctime: {:x}", h.snap_ctime);
    let _ = writeln!(o, "vm_clock_nsec: {:x}", h.vm_clock_nsec);
    let _ = writeln!(o, "vdi_size: {}", h.vdi_size);
    let _ = writeln!(o, "vm_state_size: {}", h.vm_state_size);
    let _ = writeln!(o, "copy_policy: {}", h.copy_policy);
    let _ = writeln!(o, "store_policy: {}", h.store_policy);
    let _ = writeln!(o, "nr_copies: {}", h.nr_copies);
    let _ = writeln!(o, "block_size_shift: {}", h.block_size_shift);
    let _ = writeln!(o, "snap_id: {}", h.snap_id);
    let _ = writeln!(o, "vdi_id: {:x}", h.vdi_id);
    let _ = writeln!(o, "parent_vdi_id: {:x}", h.parent_vdi_id);
    let _ = writeln!(o, "btree_counter: {}", h.btree_counter);
    let owner = |i: usize| le32(&b, DATA_VDI_ID_OFFSET + 4 * i);
    let gref = |i: usize| {
        let at = GREF_OFFSET + 8 * i;
        (le32(&b, at) as i32, le32(&b, at + 4) as i32)
    };
    o.push_str("data_vdi_id:\n");
    for i in 0..SD_INODE_DATA_INDEX {
        if owner(i) != 0 {
            let _ = writeln!(o, "{i}: {:x}", owner(i));
        }
    }
    o.push_str("gref:\n");
    for i in 0..SD_INODE_DATA_INDEX {
        let (generation, count) = gref(i);
        if owner(i) == 0 {
            if generation != 0 || count != 0 {
                let _ = writeln!(
                    o,
                    "WARNING: index {i} doesn't have data vdi ID but its generation and \
                     count is not zero({generation}, {count})"
                );
            }
            continue;
        }
        let _ = writeln!(o, "{i}: {:x}, {generation}, {count}", owner(i));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(name: &str, vid: u32, snap_id: u32, snapshot: bool, parent: u32, tag: &str) -> Inode {
        Inode {
            hdr: InodeHeader {
                name: name.as_bytes().to_vec(),
                tag: tag.as_bytes().to_vec(),
                create_time: 1_795_383_418 << 32,
                snap_ctime: if snapshot { 1 } else { 0 },
                vdi_size: 1 << 30,
                nr_copies: 3,
                block_size_shift: 22,
                snap_id,
                vdi_id: vid,
                parent_vdi_id: parent,
                ..Default::default()
            },
            table: Vec::new(),
        }
    }

    #[test]
    fn dump_inode_prints_fields_and_used_entries() {
        let hdr = InodeHeader {
            name: b"Alice".to_vec(),
            tag: b"first".to_vec(),
            create_time: 0x6afe_0000_0001,
            snap_ctime: 0x10,
            vdi_size: 1 << 30,
            nr_copies: 3,
            block_size_shift: 22,
            snap_id: 1,
            vdi_id: 0x15d167,
            ..Default::default()
        };
        let mut b = hdr.to_bytes();
        b.resize(SD_INODE_SIZE, 0);
        b[DATA_VDI_ID_OFFSET + 8..DATA_VDI_ID_OFFSET + 12]
            .copy_from_slice(&0x15d167u32.to_le_bytes());
        b[GREF_OFFSET + 16..GREF_OFFSET + 20].copy_from_slice(&2u32.to_le_bytes());
        b[GREF_OFFSET + 20..GREF_OFFSET + 24].copy_from_slice(&1u32.to_le_bytes());
        b[GREF_OFFSET + 28..GREF_OFFSET + 32].copy_from_slice(&5u32.to_le_bytes());
        let text = dump_inode(&b);
        assert!(
            text.starts_with(
                "name: Alice\ntag: first\ncreate_time: 6afe00000001\nsnap_ctime: 10\n\
                 vm_clock_nsec: 0\nvdi_size: 1073741824\nvm_state_size: 0\ncopy_policy: 0\n\
                 store_policy: 0\nnr_copies: 3\nblock_size_shift: 22\nsnap_id: 1\n\
                 vdi_id: 15d167\nparent_vdi_id: 0\nbtree_counter: 0\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "data_vdi_id:\n2: 15d167\ngref:\n2: 15d167, 2, 1\nWARNING: index 3 doesn't \
                 have data vdi ID but its generation and count is not zero(0, 5)\n"
            ),
            "{text}"
        );
        // A short read is padded, never a panic.
        assert!(dump_inode(&[1, 2, 3]).ends_with("data_vdi_id:\ngref:\n"));
    }

    /// Spec section 9: Alice written (3 objects, as the original's write made), snapshot
    /// "first", a write to object 0, clone Charlie.
    #[test]
    fn rows_as_the_spec_sample() {
        let (s, w, c) = (0x15d167, 0x15d168, 0x3ca881);
        let mut snap = inode("Alice", s, 1, true, 0, "first");
        snap.table = vec![s, s, s];
        let mut work = inode("Alice", w, 2, false, s, "");
        work.table = vec![w, s, s];
        let mut clone = inode("Charlie", c, 1, false, s, "");
        clone.table = vec![s, s, s];
        let when = "2026-11-22 21:36";
        let rows = [
            list_row(&snap, when, false),
            list_row(&work, when, false),
            list_row(&clone, when, false),
        ];
        let want = [
            "s Alice        1  1.0 GB   12 MB  0.0 MB 2026-11-22 21:36   15d167      3         first  22",
            "  Alice        0  1.0 GB  4.0 MB  8.0 MB 2026-11-22 21:36   15d168      3                22",
            "c Charlie      0  1.0 GB  0.0 MB   12 MB 2026-11-22 21:36   3ca881      3                22",
        ];
        assert_eq!(rows, want);
        assert_eq!(
            list_row(&snap, "1795383418", true),
            "s Alice 1 1073741824 12582912 0 1795383418 15d167 3 first 22"
        );
        assert_eq!(
            list_row(&work, "1795383418", true),
            "= Alice 0 1073741824 4194304 8388608 1795383418 15d168 3  22"
        );
        assert_eq!(
            list_row(&clone, "1795383418", true),
            "c Charlie 0 1073741824 0 12582912 1795383418 3ca881 3  22"
        );
        let j = list_json(&clone);
        assert_eq!(j["shared"], 12_582_912u64);
        assert_eq!(j["type"], "clone");
    }

    #[test]
    fn raw_names_escaped() {
        assert_eq!(raw_name("a b\\c"), "a\\ b\\\\c");
    }
}
