//! `dog cluster snapshot save|list|load|show`: the original's "farm", a cluster-wide snapshot
//! of every VDI snapshot (or of the named VDIs' snapshots) into a local directory, in the
//! original's layout so that either dog reads the other's:
//!
//! - `objects/XX/YYYY...`: files named by the SHA-1 of their content (first two hex digits a
//!   directory), written once: the same data is stored once (deduplicated).
//! - an object is cut into 128 KiB slices, each a file; the "slice file" lists their SHA-1s.
//! - a trunk lists the objects of one snapshot: 32-byte entries (oid, copies, copy policy,
//!   block size shift, reserved, SHA-1 of the slice file).
//! - `user_snap`: a 32-byte header (magic 0xfee1c001, version 1, the cluster's copies, copy
//!   policy and block size shift) and 296-byte records (index, tag, time, trunk SHA-1).
//!
//! Loading formats the cluster as the header says, writes every object back, tells the
//! cluster of each VDI (NOTIFY_VDI_ADD) and makes a working VDI on the newest snapshot of
//! each name.
//! Owns: the farm layout and these commands. Never: cluster logic beyond these requests.

use crate::error::{Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL};
use crate::lookup::{self, Inode};
use crate::{fmt, Ctx};
use proto::inode::InodeHeader;
use proto::{opcode, Header, Oid, SdResult, Vid};
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FARM_MAGIC: u32 = 0xfee1_c001;
const FARM_VERSION: u32 = 1;
const SLICE_SIZE: usize = 128 * 1024;
const HDR_SIZE: usize = 32;
const LOG_SIZE: usize = 296;
const TAG_LEN: usize = 256;
const ENTRY_SIZE: usize = 32;

type Sha = [u8; 20];

/// The farm directory: `PATH/objects/00..ff` and `PATH/user_snap`.
struct Farm {
    objects: PathBuf,
    log: PathBuf,
}

fn io_fail(what: &str, p: &Path, e: std::io::Error) -> Fail {
    Fail::new(EXIT_SYSFAIL, format!("{what} {}: {e}", p.display()))
}

impl Farm {
    /// Creates the layout where it is missing (as `farm_init`).
    fn init(path: &str) -> Res<Farm> {
        let root = PathBuf::from(path);
        if root.exists() && !root.is_dir() {
            return Err(Fail::new(
                EXIT_SYSFAIL,
                format!("Path is not a directory: {path}\nFail to init farm."),
            ));
        }
        let objects = root.join("objects");
        for i in 0..256 {
            let d = objects.join(format!("{i:02x}"));
            std::fs::create_dir_all(&d).map_err(|e| io_fail("Fail to create directory", &d, e))?;
        }
        let log = root.join("user_snap");
        if !log.exists() {
            std::fs::write(&log, b"").map_err(|e| io_fail("cannot create", &log, e))?;
        }
        Ok(Farm { objects, log })
    }

    fn path_of(&self, sha: &Sha) -> PathBuf {
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        self.objects.join(&hex[..2]).join(&hex[2..])
    }

    /// Stores `data` under its SHA-1 (once).
    fn put(&self, data: &[u8]) -> Res<Sha> {
        let sha: Sha = Sha1::digest(data).into();
        let p = self.path_of(&sha);
        if !p.exists() {
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, data).map_err(|e| io_fail("cannot write", &tmp, e))?;
            std::fs::rename(&tmp, &p).map_err(|e| io_fail("cannot write", &p, e))?;
        }
        Ok(sha)
    }

    /// The content stored under `sha`, checked against it.
    fn get(&self, sha: &Sha) -> Res<Vec<u8>> {
        let p = self.path_of(sha);
        let data = std::fs::read(&p).map_err(|e| io_fail("cannot read", &p, e))?;
        let got: Sha = Sha1::digest(&data).into();
        if &got != sha {
            return Err(Fail::new(
                EXIT_SYSFAIL,
                format!(
                    "{} does not match its SHA-1: the farm is damaged",
                    p.display()
                ),
            ));
        }
        Ok(data)
    }

    /// An object as slices: the SHA-1 of its slice file.
    fn put_object(&self, data: &[u8]) -> Res<Sha> {
        let mut list = Vec::new();
        for piece in data.chunks(SLICE_SIZE) {
            list.extend_from_slice(&self.put(piece)?);
        }
        self.put(&list)
    }

    fn get_object(&self, sha: &Sha) -> Res<Vec<u8>> {
        let list = self.get(sha)?;
        let mut out = Vec::new();
        for s in list.chunks_exact(20) {
            out.extend(self.get(s.try_into().expect("20 bytes"))?);
        }
        Ok(out)
    }

    /// The header (None for an empty log) and the records.
    fn read_log(&self) -> Res<(Option<LogHeader>, Vec<LogRecord>)> {
        let b = std::fs::read(&self.log).map_err(|e| io_fail("cannot read", &self.log, e))?;
        if b.is_empty() {
            return Ok((None, Vec::new()));
        }
        let hdr = LogHeader::decode(&b).ok_or_else(|| {
            Fail::new(
                EXIT_SYSFAIL,
                format!("{}: magic number mismatch", self.log.display()),
            )
        })?;
        let recs = b[HDR_SIZE..]
            .chunks_exact(LOG_SIZE)
            .map(LogRecord::decode)
            .collect();
        Ok((Some(hdr), recs))
    }

    fn append(&self, bytes: &[u8]) -> Res<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .map_err(|e| io_fail("cannot open", &self.log, e))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| io_fail("cannot write", &self.log, e))
    }

    /// The trunk of the snapshot with index `idx` or tag `tag` (as the original matches).
    fn trunk(&self, idx: u32, tag: &str) -> Res<Option<Vec<Entry>>> {
        let (_, recs) = self.read_log()?;
        let Some(r) = recs.iter().find(|r| r.idx == idx || r.tag == tag) else {
            return Ok(None);
        };
        let b = self.get(&r.trunk)?;
        Ok(Some(
            b.chunks_exact(ENTRY_SIZE).map(Entry::decode).collect(),
        ))
    }
}

/// `struct snap_log_hdr`.
struct LogHeader {
    copies: u8,
    copy_policy: u8,
    block_size_shift: u8,
}

impl LogHeader {
    fn encode(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..4].copy_from_slice(&FARM_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&FARM_VERSION.to_le_bytes());
        b[8] = self.copies;
        b[9] = self.copy_policy;
        b[10] = self.block_size_shift;
        b
    }

    fn decode(b: &[u8]) -> Option<LogHeader> {
        if b.len() < HDR_SIZE || u32::from_le_bytes(b[0..4].try_into().ok()?) != FARM_MAGIC {
            return None;
        }
        Some(LogHeader {
            copies: b[8],
            copy_policy: b[9],
            block_size_shift: b[10],
        })
    }
}

/// `struct snap_log`: idx u32, tag[256], (pad), time u64, trunk SHA-1, (pad to 296).
struct LogRecord {
    idx: u32,
    tag: String,
    time: u64,
    trunk: Sha,
}

impl LogRecord {
    fn encode(&self) -> [u8; LOG_SIZE] {
        let mut b = [0u8; LOG_SIZE];
        b[0..4].copy_from_slice(&self.idx.to_le_bytes());
        let t = self.tag.as_bytes();
        let n = t.len().min(TAG_LEN - 1);
        b[4..4 + n].copy_from_slice(&t[..n]);
        b[264..272].copy_from_slice(&self.time.to_le_bytes());
        b[272..292].copy_from_slice(&self.trunk);
        b
    }

    fn decode(b: &[u8]) -> LogRecord {
        LogRecord {
            idx: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            tag: String::from_utf8_lossy(proto::cstr_bytes(&b[4..4 + TAG_LEN])).into_owned(),
            time: u64::from_le_bytes(b[264..272].try_into().expect("8 bytes")),
            trunk: b[272..292].try_into().expect("20 bytes"),
        }
    }
}

/// `struct trunk_entry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    oid: u64,
    copies: u8,
    copy_policy: u8,
    block_size_shift: u8,
    sha: Sha,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.oid.to_le_bytes());
        b[8] = self.copies;
        b[9] = self.copy_policy;
        b[10] = self.block_size_shift;
        b[12..32].copy_from_slice(&self.sha);
        b
    }

    fn decode(b: &[u8]) -> Entry {
        Entry {
            oid: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            copies: b[8],
            copy_policy: b[9],
            block_size_shift: b[10],
            sha: b[12..32].try_into().expect("20 bytes"),
        }
    }

    fn is_inode(&self) -> bool {
        Oid(self.oid).kind() == proto::oid::OidKind::Inode
    }
}

fn arg<'a>(ctx: &'a Ctx<'_>, i: usize, missing: &str) -> Res<&'a str> {
    ctx.arg(i).ok_or_else(|| Fail::usage(missing))
}

/// `<tag|idx>`: a number is an index, anything else a tag.
fn idx_or_tag(s: &str) -> (u32, &str) {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    match digits.parse() {
        Ok(n) if !digits.is_empty() => (n, s),
        _ => (0, s),
    }
}

/// The objects of the snapshots of the VDIs named in `names` (all when empty): the inode,
/// its data objects and its vm state; and how many named snapshots there are.
fn objects_of(inodes: &[Inode], names: &[String]) -> (BTreeMap<u64, (u8, u8, u8)>, usize) {
    let mut tree = BTreeMap::new();
    let mut snapshots = 0;
    for ino in inodes {
        let h = &ino.hdr;
        if !h.is_snapshot() || (!names.is_empty() && !names.iter().any(|n| *n == ino.name())) {
            continue;
        }
        if !h.name.is_empty() {
            snapshots += 1;
        }
        let how = (h.nr_copies, h.copy_policy, h.block_size_shift);
        tree.insert(Oid::inode(Vid(h.vdi_id)).0, how);
        for idx in 0..ino.nr_objs() {
            let owner = ino.owner(idx);
            if owner != 0 {
                tree.insert(Oid::data(Vid(owner), idx as u32).0, how);
            }
        }
        for idx in 0..h.vm_state_size.div_ceil(ino.object_size()) {
            tree.insert(Oid::vmstate(Vid(h.vdi_id), idx as u32).0, how);
        }
    }
    (tree, snapshots)
}

pub async fn save(ctx: &Ctx<'_>) -> Res<()> {
    let tag = arg(ctx, 0, "")?;
    if tag.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
        return Err(Fail::usage("Tag should not start with number."));
    }
    let path = arg(ctx, 1, "Please specify the path to save snapshot.")?;
    let failed = |f: Fail| f.then(&format!("Fail to save snapshot to path: {path}."));
    let farm = Farm::init(path).map_err(failed)?;
    let names: Vec<String> = ctx.args.iter().skip(2).cloned().collect();
    if farm.trunk(0, tag).map_err(failed)?.is_some() {
        return Err(failed(Fail::new(
            EXIT_SYSFAIL,
            "Snapshot tag has already been used for another snapshot, please, use another one.",
        )));
    }
    let mut inodes = Vec::new();
    lookup::walk(&ctx.sheep, true, |ino| inodes.push(ino)).await?;
    inodes.sort_by_key(|i| i.vid());
    let (tree, snapshots) = objects_of(&inodes, &names);
    if snapshots == 0 {
        let why = if names.is_empty() {
            "1. The cluster is empty.\n2. All VDIs of the cluster don't have snapshots."
        } else {
            "1. The specified VDIs are not found.\n2. The specified VDIs don't have snapshots."
        };
        return Err(failed(Fail::new(
            EXIT_SYSFAIL,
            format!("Cannot execute. It may be caused by:\n{why}"),
        )));
    }
    let (hdr, recs) = farm.read_log().map_err(failed)?;
    if hdr.is_none() {
        let r = ctx
            .sheep
            .call(Header::request(opcode::GET_CLUSTER_DEFAULT))
            .await?;
        if r.result() != SdResult::SUCCESS {
            return Err(failed(Fail::new(EXIT_SYSFAIL, r.result().text())));
        }
        let h = LogHeader {
            copies: r.header.rsp_default_copies(),
            copy_policy: r.header.rsp_default_copy_policy(),
            block_size_shift: r.header.rsp_default_block_size_shift(),
        };
        farm.append(&h.encode()).map_err(failed)?;
    }
    let mut trunk = Vec::with_capacity(tree.len() * ENTRY_SIZE);
    for (&oid, &(copies, copy_policy, block_size_shift)) in &tree {
        let len = if Oid(oid).kind() == proto::oid::OidKind::Inode {
            proto::inode::SD_INODE_SIZE
        } else {
            1usize << block_size_shift.clamp(proto::SD_MIN_BLOCK_SIZE_SHIFT, 31)
        };
        let data = lookup::read_object(&ctx.sheep, oid, 0, len as u32, true)
            .await?
            .map_err(|line| failed(Fail::new(EXIT_SYSFAIL, line)))?;
        let e = Entry {
            oid,
            copies,
            copy_policy,
            block_size_shift,
            sha: farm.put_object(&data).map_err(failed)?,
        };
        trunk.extend_from_slice(&e.encode());
    }
    let rec = LogRecord {
        idx: recs.len() as u32 + 1,
        tag: tag.to_string(),
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        trunk: farm.put(&trunk).map_err(failed)?,
    };
    farm.append(&rec.encode()).map_err(failed)
}

pub fn list(args: &[String], json: bool) -> Res<()> {
    let path = args
        .first()
        .ok_or_else(|| Fail::usage("Please specify the path to list snapshot."))?;
    let failed = |f: Fail| f.then("Fail to list snapshot.");
    let farm = Farm::init(path).map_err(failed)?;
    let (_, recs) = farm.read_log().map_err(failed)?;
    if json {
        let v: Vec<serde_json::Value> = recs
            .iter()
            .map(|r| serde_json::json!({ "index": r.idx, "tag": r.tag, "time": r.time }))
            .collect();
        outln!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let mut out = String::from("Index\t\tTag\t\tSnapshot Time\n");
    for r in recs {
        out.push_str(&format!(
            "{}\t\t{}\t\t{}\n",
            r.idx,
            r.tag,
            fmt::local_time(r.time, "%a %b %e %H:%M:%S %Y")
        ));
    }
    out!("{out}");
    Ok(())
}

/// The entries of the trunk to load: all, or the inodes named in `names` and the objects
/// their tables point at (as the original registers them), with deleted VDIs kept.
fn wanted(farm: &Farm, trunk: &[Entry], names: &[String]) -> Res<BTreeSet<u64>> {
    let mut keep = BTreeSet::new();
    for e in trunk.iter().filter(|e| e.is_inode()) {
        let data = farm.get_object(&e.sha)?;
        let Some(h) = InodeHeader::decode(&data) else {
            continue;
        };
        let name = String::from_utf8_lossy(&h.name).into_owned();
        if !names.is_empty() && !h.name.is_empty() && !names.contains(&name) {
            continue;
        }
        keep.insert(e.oid);
        // A short (damaged) inode has no table to follow.
        let table = data
            .get(proto::inode::SD_INODE_HEADER_SIZE..)
            .unwrap_or_default();
        for (idx, v) in table
            .chunks_exact(4)
            .take(proto::SD_INODE_DATA_INDEX as usize)
            .enumerate()
        {
            let owner = u32::from_le_bytes(v.try_into().expect("4 bytes"));
            if owner != 0 {
                keep.insert(Oid::data(Vid(owner), idx as u32).0);
            }
        }
    }
    Ok(keep)
}

/// The farm at the second argument and the trunk of the snapshot the first names (index or
/// tag); `no_path` is the original's words for a missing path, `failed` adds its last line.
fn snapshot_of(
    ctx: &Ctx<'_>,
    no_path: &str,
    failed: impl Fn(Fail) -> Fail,
) -> Res<(Farm, Vec<Entry>)> {
    let (idx, tag) = idx_or_tag(arg(ctx, 0, "")?);
    let path = arg(ctx, 1, no_path)?;
    let farm = Farm::init(path).map_err(&failed)?;
    match farm.trunk(idx, tag).map_err(&failed)? {
        Some(trunk) => Ok((farm, trunk)),
        None => Err(failed(Fail::new(
            EXIT_SYSFAIL,
            "Snapshot index or tag does not exist.",
        ))),
    }
}

pub async fn load(ctx: &Ctx<'_>) -> Res<()> {
    let failed = |f: Fail| f.then("Fail to load snapshot");
    let (farm, trunk) = snapshot_of(ctx, "Please specify the path to save snapshot.", failed)?;
    let Some(hdr) = farm.read_log().map_err(failed)?.0 else {
        return Err(failed(Fail::quiet(EXIT_SYSFAIL)));
    };
    let names: Vec<String> = ctx.args.iter().skip(2).cloned().collect();
    let keep = wanted(&farm, &trunk, &names).map_err(failed)?;
    if !names.is_empty() && keep.is_empty() {
        return Err(failed(Fail::new(
            EXIT_SYSFAIL,
            "Objects of specified VDIs are not found in local cluster snapshot storage.",
        )));
    }
    let mut o = ctx.opts.clone();
    o.copies = Some((hdr.copies, hdr.copy_policy));
    o.block_size_shift = Some(hdr.block_size_shift);
    crate::cluster::format_as(ctx, &o).await?;
    // The cluster learns of each VDI (its objects may be written then), the objects are
    // written, and the cluster learns of each VDI again, now from its inode (a snapshot).
    let inodes: Vec<Entry> = trunk
        .iter()
        .filter(|e| e.is_inode() && (names.is_empty() || keep.contains(&e.oid)))
        .copied()
        .collect();
    notify_vdis(ctx, &inodes).await.map_err(failed)?;
    let mut newest: BTreeMap<Vec<u8>, InodeHeader> = BTreeMap::new();
    for e in trunk
        .iter()
        .filter(|e| names.is_empty() || keep.contains(&e.oid))
    {
        let data = farm.get_object(&e.sha).map_err(failed)?;
        if e.is_inode() {
            if let Some(ih) = InodeHeader::decode(&data).filter(|h| !h.name.is_empty()) {
                let newer = newest.get(&ih.name).is_none_or(|o| o.snap_id < ih.snap_id);
                if newer {
                    newest.insert(ih.name.clone(), ih);
                }
            }
        }
        let mut h = Header::request(opcode::CREATE_AND_WRITE_OBJ);
        h.set_oid(e.oid)
            .set_obj_copies(e.copies)
            .set_obj_copy_policy(e.copy_policy);
        let r = ctx.sheep.write(h, data.into()).await?;
        if r.result() != SdResult::SUCCESS {
            return Err(failed(Fail::new(
                EXIT_FAILURE,
                format!(
                    "Fail to load object, oid {:016x}: {}",
                    e.oid,
                    r.result().text()
                ),
            )));
        }
    }
    notify_vdis(ctx, &inodes).await.map_err(failed)?;
    // A working VDI on the newest snapshot of each name.
    for h in newest.values() {
        let name = String::from_utf8_lossy(&h.name).into_owned();
        client::volumes::new_from(ctx.sheep.conn(), &name, h, false, None)
            .await
            .map_err(|e| {
                failed(
                    ctx.sheep
                        .volume_failure(&format!("Failed to create VDI {name}"), e),
                )
            })?;
    }
    Ok(())
}

/// NOTIFY_VDI_ADD of the VDI of each inode entry.
async fn notify_vdis(ctx: &Ctx<'_>, inodes: &[Entry]) -> Res<()> {
    for e in inodes {
        let mut h = Header::request(opcode::NOTIFY_VDI_ADD);
        h.set_new_vid(Oid(e.oid).vid().0)
            .set_vs_copies(e.copies)
            .set_vs_copy_policy(e.copy_policy)
            .set_vs_block_size_shift(e.block_size_shift)
            .set_vs_set_bitmap(1);
        let r = ctx.sheep.call(h).await?;
        if r.result() != SdResult::SUCCESS {
            return Err(Fail::new(
                EXIT_FAILURE,
                format!("Fail to notify vdi add event: {}", r.result().text()),
            ));
        }
    }
    Ok(())
}

pub async fn show(ctx: &Ctx<'_>) -> Res<()> {
    let failed = |f: Fail| f.then("Fail to show snapshot");
    let (farm, trunk) = snapshot_of(ctx, "Please specify the path to show snapshot.", failed)?;
    let names: Vec<String> = ctx.args.iter().skip(2).cloned().collect();
    let mut seq = 0;
    for e in trunk.iter().filter(|e| e.is_inode()) {
        let data = farm.get_object(&e.sha).map_err(failed)?;
        let Some(h) = InodeHeader::decode(&data) else {
            continue;
        };
        let name = String::from_utf8_lossy(&h.name).into_owned();
        if h.name.is_empty() || (!names.is_empty() && !names.contains(&name)) {
            continue;
        }
        seq += 1;
        outln!(
            "{seq}. VDI id: {:x}, name: {name}, tag: {}",
            h.vdi_id,
            String::from_utf8_lossy(&h.tag)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_the_original_layout() {
        let e = Entry {
            oid: 0x807c2b2500000000,
            copies: 3,
            copy_policy: 0,
            block_size_shift: 22,
            sha: [7; 20],
        };
        let b = e.encode();
        assert_eq!(&b[..8], &0x807c2b2500000000u64.to_le_bytes());
        assert_eq!((b[8], b[10], b[11]), (3, 22, 0));
        assert_eq!(Entry::decode(&b), e);
        assert!(e.is_inode());
        let r = LogRecord {
            idx: 2,
            tag: "s2".into(),
            time: 1_700_000_000,
            trunk: [9; 20],
        };
        let b = r.encode();
        assert_eq!(&b[..6], &[2, 0, 0, 0, b's', b'2']);
        assert_eq!(&b[264..272], &1_700_000_000u64.to_le_bytes());
        let back = LogRecord::decode(&b);
        assert_eq!(
            (back.idx, back.tag.as_str(), back.time),
            (2, "s2", 1_700_000_000)
        );
        let h = LogHeader {
            copies: 6,
            copy_policy: 0,
            block_size_shift: 22,
        }
        .encode();
        assert_eq!(&h[..4], &[0x01, 0xc0, 0xe1, 0xfe]);
        assert_eq!(LogHeader::decode(&h).map(|h| h.copies), Some(6));
        assert_eq!(idx_or_tag("2"), (2, "2"));
        assert_eq!(idx_or_tag("s1"), (0, "s1"));
    }

    #[test]
    fn objects_are_stored_once_by_content_in_slices() {
        let d = tempfile::tempdir().unwrap();
        let farm = Farm::init(d.path().to_str().unwrap()).unwrap();
        let data: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        let a = farm.put_object(&data).unwrap();
        let b = farm.put_object(&data).unwrap();
        assert_eq!(a, b);
        assert_eq!(farm.get_object(&a).unwrap(), data);
        // Three slices and the slice file.
        let files: usize = std::fs::read_dir(&farm.objects)
            .unwrap()
            .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(files, 4);
        // A damaged file is found out.
        std::fs::write(farm.path_of(&a), b"junk").unwrap();
        assert!(farm.get_object(&a).is_err());
    }
}
