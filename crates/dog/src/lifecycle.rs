//! `dog vdi snapshot / clone / rollback / resize / tree / setattr / getattr`: the life of a
//! VDI after its creation, with the original's requests, messages and exit codes.
//! Owns: these commands. Never: option parsing, bulk data transfer.

use crate::cluster::confirm;
use crate::error::{Fail, Res, EXIT_EXISTS, EXIT_FAILURE, EXIT_MISSING, EXIT_SYSFAIL, EXIT_USAGE};
use crate::lookup::{self, Inode};
use crate::{fmt, Ctx};
use client::volumes;
use proto::{flags, opcode, Header, Oid, SdResult, Vid};
use std::io::{Read, Write};

use proto::attr::{
    KEY as ATTR_KEY, MAX_VALUE as ATTR_MAX_VALUE, SNAP_ID as ATTR_SNAP_ID, VALUE as ATTR_VALUE,
    VALUE_LEN as ATTR_VALUE_LEN,
};

fn name_arg<'a>(ctx: &'a Ctx<'_>) -> Res<&'a str> {
    ctx.arg(0).ok_or_else(|| Fail::usage(""))
}

fn has_snapshot(ctx: &Ctx<'_>) -> bool {
    ctx.opts.snapshot.id != 0 || !ctx.opts.snapshot.tag.is_empty()
}

/// NEW_VDI: a snapshot of `base` (`snapshot`), or a new working VDI on `base`'s objects.
pub(crate) async fn new_vdi(
    ctx: &Ctx<'_>,
    name: &str,
    ino: &Inode,
    base: u32,
    snapshot: bool,
) -> Res<u32> {
    let mut shape = ino.hdr.clone();
    shape.vdi_id = base;
    let copies = ctx.opts.copies.map(|c| c.0);
    volumes::new_from(ctx.sheep.conn(), name, &shape, snapshot, copies)
        .await
        .map_err(|e| {
            ctx.sheep
                .volume_failure(&format!("Failed to create VDI {name}"), e)
        })
}

pub async fn snapshot(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    if ctx.opts.snapshot.id != 0 {
        return Err(Fail::new(
            EXIT_USAGE,
            "Please specify a non-integer value for a snapshot tag name",
        ));
    }
    let none = crate::cli::Snap::default();
    let ino = lookup::open(&ctx.sheep, name, &none, false).await?;
    let vid = ino.vid();
    let tag = &ctx.opts.snapshot.tag;
    if tag.len() >= proto::SD_MAX_VDI_TAG_LEN {
        return Err(Fail::new(EXIT_USAGE, format!("Tag '{tag}' is too long")));
    }
    volumes::write_tag(ctx.sheep.conn(), &ino.hdr, tag)
        .await
        .map_err(|e| {
            ctx.sheep
                .volume_failure("Failed to write the snapshot tag", e)
        })?;
    let new = new_vdi(ctx, name, &ino, vid, true).await?;
    if ctx.opts.verbose {
        if ctx.opts.raw {
            outln!("{new:x} {vid:x}");
        } else {
            outln!("new VDI ID: {new:x} (old VDI ID: {vid:x})");
        }
    }
    Ok(())
}

pub async fn clone(ctx: &Ctx<'_>) -> Res<()> {
    let src = name_arg(ctx)?;
    let Some(dst) = ctx.arg(1) else {
        return Err(Fail::new(
            EXIT_USAGE,
            "Destination VDI name must be specified",
        ));
    };
    if !has_snapshot(ctx) {
        return Err(Fail::new(
            EXIT_USAGE,
            "Only snapshot VDIs can be cloned\nPlease specify the '-s' option",
        ));
    }
    let copy_all = ctx.opts.no_share || ctx.opts.prealloc;
    let ino = lookup::open(&ctx.sheep, src, &ctx.opts.snapshot, copy_all).await?;
    if !ino.is_snapshot() {
        return Err(Fail::new(EXIT_USAGE, "Only snapshot VDIs can be cloned"));
    }
    // -n: a VDI of its own (no parent), every object copied into it.
    let base = if ctx.opts.no_share { 0 } else { ino.vid() };
    let new = new_vdi(ctx, dst, &ino, base, false).await?;
    if copy_all {
        copy_objects(ctx, &ino, new).await?;
    }
    if ctx.opts.verbose {
        if ctx.opts.raw {
            outln!("{new:x}");
        } else {
            outln!("new VDI ID: {new:x}");
        }
    }
    Ok(())
}

/// `vdi clone -n / -P`: every object of the snapshot `snap` written into the new VDI `new`
/// as its own (with -P also the holes, as empty objects), as the original copies them.
async fn copy_objects(ctx: &Ctx<'_>, snap: &Inode, new: u32) -> Res<()> {
    let dst = lookup::read_inode(&ctx.sheep, new, false)
        .await?
        .map_err(|line| Fail::new(EXIT_FAILURE, line))?;
    let size = snap.object_size();
    for idx in 0..snap.nr_objs() {
        let owner = snap.owner(idx);
        let data = if owner != 0 {
            let oid = Oid::data(Vid(owner), idx as u32).0;
            lookup::read_object(&ctx.sheep, oid, 0, size as u32, true)
                .await?
                .map_err(|line| Fail::new(EXIT_FAILURE, line))?
        } else if ctx.opts.prealloc {
            Vec::new()
        } else {
            continue;
        };
        crate::vdi_rw::write_object_range(&ctx.sheep, &dst.hdr, 0, idx as u32, 0, data.into())
            .await?;
    }
    Ok(())
}

pub async fn rollback(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    if !has_snapshot(ctx) {
        return Err(Fail::new(EXIT_USAGE, "Please specify the '-s' option"));
    }
    let ino = lookup::open(&ctx.sheep, name, &ctx.opts.snapshot, false).await?;
    if !ctx.opts.force {
        confirm(
            "This operation dicards any changes made since the previous\n\
             snapshot was taken.  Continue? [yes/no]: ",
        )?;
    }
    let new = back_to(ctx, name, &ino, false).await?;
    if ctx.opts.verbose {
        if ctx.opts.raw {
            outln!("{new:x}");
        } else {
            outln!("New VDI ID of rollback VDI: {new:x}");
        }
    }
    Ok(())
}

/// Replaces the working VDI `name` by a new one on snapshot `snap`'s objects, as `vdi
/// rollback` and `vdi restore` do (`missing_ok`: there may be no working VDI); returns the new
/// VDI id.
pub(crate) async fn back_to(ctx: &Ctx<'_>, name: &str, snap: &Inode, missing_ok: bool) -> Res<u32> {
    match volumes::delete(ctx.sheep.conn(), name, 0, "").await {
        Ok(()) => {}
        Err(e) if missing_ok && e.result() == Some(SdResult::NO_VDI) => {}
        Err(e) => {
            return Err(ctx
                .sheep
                .volume_failure("Failed to delete the current state", e))
        }
    }
    new_vdi(ctx, name, snap, snap.vid(), false).await
}

pub async fn resize(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let Some(arg) = ctx.arg(1) else {
        return Err(Fail::new(
            EXIT_USAGE,
            "Please specify the new size for the VDI",
        ));
    };
    let size = fmt::parse_size(arg).ok_or_else(|| Fail::usage(fmt::invalid_size(arg)))?;
    let none = crate::cli::Snap::default();
    let mut ino = lookup::open(&ctx.sheep, name, &none, false).await?;
    let max = ino.object_size() * proto::SD_INODE_DATA_INDEX;
    if size > max {
        return Err(Fail::new(
            EXIT_USAGE,
            format!("New VDI size is too large. This volume's max bytes is {max}"),
        ));
    }
    if size < ino.hdr.vdi_size {
        return Err(Fail::new(EXIT_USAGE, "Shrinking VDIs is not implemented"));
    }
    ino.hdr.vdi_size = size;
    volumes::write_header(ctx.sheep.conn(), &ino.hdr)
        .await
        .map_err(|e| {
            ctx.sheep
                .volume_failure("Failed to update an inode header", e)
        })
}

/// One node of `vdi tree`.
struct TreeNode {
    label: String,
    children: Vec<usize>,
}

/// Draws the trees as the original's treeview: `name---label-+-child` / `` `-child ``.
struct Drawer<'a> {
    nodes: &'a [TreeNode],
    /// Label width and "a sibling follows" per level, for the lines of later children.
    width: Vec<usize>,
    more: Vec<bool>,
    out: String,
}

impl Drawer<'_> {
    fn walk(&mut self, i: usize, level: usize, first: bool, last: bool) {
        if first {
            self.out.push_str(if last { "---" } else { "-+-" });
        } else {
            for lvl in 0..level - 1 {
                self.out.push_str(&" ".repeat(self.width[lvl] + 1));
                self.out
                    .push_str(if self.more[lvl + 1] { "| " } else { "  " });
            }
            self.out.push_str(&" ".repeat(self.width[level - 1] + 1));
            self.out.push_str(if last { "`-" } else { "|-" });
        }
        let n = &self.nodes[i];
        self.out.push_str(&n.label);
        if n.children.is_empty() {
            self.out.push('\n');
            return;
        }
        if self.more.len() <= level {
            self.more.resize(level + 1, false);
            self.width.resize(level + 1, 0);
        }
        self.more[level] = !last;
        self.width[level] = n.label.len();
        let k = n.children.len();
        for (j, &c) in n.children.iter().enumerate() {
            self.walk(c, level + 1, j == 0, j + 1 == k);
        }
    }
}

fn render(nodes: &[TreeNode], roots: &[(String, usize)]) -> String {
    let mut d = Drawer {
        nodes,
        width: Vec::new(),
        more: Vec::new(),
        out: String::new(),
    };
    for (name, i) in roots {
        d.out.push_str(name);
        d.width = vec![name.len()];
        d.more = vec![false];
        d.walk(*i, 1, true, true);
    }
    d.out
}

/// One VDI of `vdi graph`: its edge from its parent and its box, as the original prints them.
fn graph_node(ino: &Inode) -> String {
    let vid = ino.vid();
    let when = ino.hdr.create_time >> 32;
    let name = ino.name();
    let mut s = format!("  \"{:x}\" -> \"{vid:x}\";\n", ino.hdr.parent_vdi_id);
    s.push_str(&format!(
        "  \"{vid:x}\" [\n    group = \"{name}\",\n    label = \"\
         Name: {name:>10}\\nTag:  {:>10x}\\nSize: {:>10}\\nDate: {:>10}\\nTime: {:>10}",
        ino.hdr.snap_id,
        fmt::size(ino.hdr.vdi_size, false),
        fmt::local_time(when, "%Y-%m-%d"),
        fmt::local_time(when, "%H:%M:%S"),
    ));
    if ino.is_snapshot() {
        s.push_str("\"\n  ];\n");
    } else {
        s.push_str("\",\n    color=\"red\"\n  ];\n");
    }
    s
}

/// Every VDI and snapshot in use (not deleted), by id.
async fn named_inodes(ctx: &Ctx<'_>) -> Res<Vec<Inode>> {
    let mut inodes = Vec::new();
    lookup::walk(&ctx.sheep, false, |ino| {
        if !ino.hdr.name.is_empty() {
            inodes.push(ino);
        }
    })
    .await?;
    inodes.sort_by_key(|i| i.vid());
    Ok(inodes)
}

/// `dog vdi graph`: every VDI and snapshot as a Graphviz digraph, children under parents.
pub async fn graph(ctx: &Ctx<'_>) -> Res<()> {
    let inodes = named_inodes(ctx).await?;
    let mut out = String::from(
        "digraph G {\n  node [shape = \"box\", fontname = \"Courier\"];\n\n  \
         \"0\" [shape = \"ellipse\", label = \"root\"];\n",
    );
    for ino in &inodes {
        out.push('\n');
        out.push_str(&graph_node(ino));
    }
    out.push_str("\n}");
    outln!("{out}");
    Ok(())
}

pub async fn tree(ctx: &Ctx<'_>) -> Res<()> {
    let inodes = named_inodes(ctx).await?;
    if ctx.opts.json {
        // Each VDI with its parent: the same tree, for programs.
        let v: Vec<serde_json::Value> = inodes
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name(),
                    "vdi_id": format!("{:x}", i.vid()),
                    "parent": (i.hdr.parent_vdi_id != 0)
                        .then(|| format!("{:x}", i.hdr.parent_vdi_id)),
                    "snapshot": i.is_snapshot(),
                    "snap_id": i.hdr.snap_id,
                    "tag": i.tag(),
                    "created": i.hdr.create_time >> 32,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let index: std::collections::HashMap<u32, usize> = inodes
        .iter()
        .enumerate()
        .map(|(k, i)| (i.vid(), k))
        .collect();
    let mut nodes: Vec<TreeNode> = inodes
        .iter()
        .map(|i| TreeNode {
            label: if i.is_snapshot() {
                fmt::local_time(i.hdr.create_time >> 32, "[%Y-%m-%d %H:%M]")
            } else {
                "(you are here)".to_string()
            },
            children: Vec::new(),
        })
        .collect();
    let mut roots = Vec::new();
    for (k, ino) in inodes.iter().enumerate() {
        match index.get(&ino.hdr.parent_vdi_id) {
            Some(&p) if p != k => {
                // A clone hangs under its snapshot with its own name in front.
                if inodes[p].hdr.name != ino.hdr.name {
                    nodes[k].label = format!("{}---{}", ino.name(), nodes[k].label);
                }
                nodes[p].children.push(k);
            }
            _ => roots.push((ino.name(), k)),
        }
    }
    out!("{}", render(&nodes, &roots));
    Ok(())
}

/// GET_VDI_ATTR for `key` of the VDI (and `-s` snapshot); Ok((result, oid of the attribute)).
async fn find_attr(
    ctx: &Ctx<'_>,
    name: &str,
    key: &str,
    value: &[u8],
    flags_: u16,
) -> Res<(SdResult, u64, u8)> {
    let snap = &ctx.opts.snapshot;
    let mut a = vec![0u8; ATTR_VALUE + value.len()];
    let n = proto::padded(name.as_bytes(), proto::SD_MAX_VDI_LEN)
        .ok_or_else(|| Fail::new(EXIT_USAGE, "VDI name is too long"))?;
    a[..256].copy_from_slice(&n);
    let t = proto::padded(snap.tag.as_bytes(), proto::SD_MAX_VDI_TAG_LEN)
        .ok_or_else(|| Fail::new(EXIT_USAGE, "Tag is too long"))?;
    a[256..512].copy_from_slice(&t);
    a[ATTR_SNAP_ID..ATTR_SNAP_ID + 4].copy_from_slice(&snap.id.to_le_bytes());
    a[ATTR_VALUE_LEN..ATTR_VALUE_LEN + 4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    let k = proto::padded(key.as_bytes(), 256)
        .ok_or_else(|| Fail::new(EXIT_USAGE, "Key is too long"))?;
    a[ATTR_KEY..ATTR_KEY + 256].copy_from_slice(&k);
    a[ATTR_VALUE..].copy_from_slice(value);
    let mut h = Header::request(opcode::GET_VDI_ATTR);
    h.set_snapid(snap.id).add_flags(flags::CMD_WRITE | flags_);
    let r = ctx.sheep.write(h, a.into()).await?;
    let oid = Oid::attr(Vid(r.header.rsp_vdi_id()), r.header.rsp_attr_id()).0;
    Ok((r.result(), oid, r.header.rsp_vdi_copies()))
}

pub async fn setattr(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let Some(key) = ctx.arg(1) else {
        return Err(Fail::new(EXIT_USAGE, "Please specify the attribute key"));
    };
    let o = ctx.opts;
    let value: Vec<u8> = match ctx.args.get(2) {
        Some(v) => v.as_bytes().to_vec(),
        None if o.delete => Vec::new(),
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .take(ATTR_MAX_VALUE as u64 + 1)
                .read_to_end(&mut v)
                .map_err(|e| Fail::new(EXIT_SYSFAIL, format!("Failed to read the value: {e}")))?;
            v
        }
    };
    if value.len() > ATTR_MAX_VALUE {
        return Err(Fail::new(EXIT_USAGE, "Too large attribute value"));
    }
    let mut fl = 0;
    if o.delete {
        fl |= flags::CMD_DEL;
    } else {
        fl |= flags::CMD_CREAT;
    }
    if o.exclusive {
        fl |= flags::CMD_EXCL;
    }
    let (r, _, _) = find_attr(ctx, name, key, &value, fl).await?;
    match r {
        SdResult::SUCCESS => Ok(()),
        SdResult::VDI_EXIST => Err(Fail::new(
            EXIT_EXISTS,
            format!("The attribute '{key}' already exists"),
        )),
        SdResult::NO_OBJ => Err(Fail::new(
            EXIT_MISSING,
            format!("Attribute '{key}' not found"),
        )),
        SdResult::NO_VDI => Err(Fail::new(EXIT_MISSING, "VDI not found")),
        e => Err(Fail::new(
            EXIT_FAILURE,
            format!("Failed to set attribute: {}", e.text()),
        )),
    }
}

pub async fn getattr(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let Some(key) = ctx.arg(1) else {
        return Err(Fail::new(EXIT_USAGE, "Please specify the attribute key"));
    };
    let (r, oid, _) = find_attr(ctx, name, key, &[], 0).await?;
    match r {
        SdResult::SUCCESS => {}
        SdResult::NO_OBJ => {
            return Err(Fail::new(
                EXIT_MISSING,
                format!("Attribute '{key}' not found"),
            ))
        }
        SdResult::NO_VDI => return Err(Fail::new(EXIT_MISSING, "VDI not found")),
        e => {
            return Err(Fail::new(
                EXIT_MISSING,
                format!("Failed to find attribute oid: {}", e.text()),
            ))
        }
    }
    let head = lookup::read_object(&ctx.sheep, oid, 0, ATTR_VALUE as u32, true)
        .await?
        .map_err(|line| {
            Fail::new(
                EXIT_SYSFAIL,
                format!("{line}\nFailed to read attribute oid"),
            )
        })?;
    let len = u32::from_le_bytes([
        head[ATTR_VALUE_LEN],
        head[ATTR_VALUE_LEN + 1],
        head[ATTR_VALUE_LEN + 2],
        head[ATTR_VALUE_LEN + 3],
    ]) as usize;
    let len = len.min(ATTR_MAX_VALUE);
    let value = if len == 0 {
        Vec::new()
    } else {
        lookup::read_object(&ctx.sheep, oid, ATTR_VALUE as u64, len as u32, true)
            .await?
            .map_err(|line| {
                Fail::new(
                    EXIT_SYSFAIL,
                    format!("{line}\nFailed to read attribute oid"),
                )
            })?
    };
    crate::stdout::flush();
    let mut out = std::io::stdout().lock();
    out.write_all(&value)
        .and_then(|_| out.flush())
        .map_err(|e| Fail::new(EXIT_SYSFAIL, format!("Failed to write the value: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(label: &str, children: Vec<usize>) -> TreeNode {
        TreeNode {
            label: label.to_string(),
            children,
        }
    }

    #[test]
    fn graph_nodes_as_the_original_prints_them() {
        let mut ino = Inode::default();
        ino.hdr.name = b"Alice".to_vec();
        ino.hdr.vdi_id = 0x7c2b25;
        ino.hdr.parent_vdi_id = 0x7c2b24;
        ino.hdr.snap_id = 2;
        ino.hdr.vdi_size = 4 << 30;
        let g = graph_node(&ino);
        let lines: Vec<&str> = g.lines().collect();
        assert_eq!(lines[0], "  \"7c2b24\" -> \"7c2b25\";");
        assert_eq!(lines[1], "  \"7c2b25\" [");
        assert_eq!(lines[2], "    group = \"Alice\",");
        assert!(
            lines[3].starts_with(
                "    label = \"Name:      Alice\\nTag:           2\\nSize:     4.0 GB\\nDate: "
            ),
            "{g}"
        );
        assert_eq!(lines[4], "    color=\"red\"");
        assert_eq!(lines[5], "  ];");
        ino.hdr.snap_ctime = 1;
        assert!(graph_node(&ino).ends_with("\"\n  ];\n"));
    }

    #[test]
    fn trees_as_the_original_draws_them() {
        let nodes = vec![
            node("[2026-11-22 21:23]", vec![1]),
            node("(you are here)", vec![]),
        ];
        assert_eq!(
            render(&nodes, &[("test".into(), 0)]),
            "test---[2026-11-22 21:23]---(you are here)\n"
        );
        let nodes = vec![
            node("[2026-11-23 01:50]", vec![1, 2]),
            node("(you are here)", vec![]),
            node("Charlie---(you are here)", vec![]),
        ];
        assert_eq!(
            render(&nodes, &[("Alice".into(), 0)]),
            "Alice---[2026-11-23 01:50]-+-(you are here)\n                           `-Charlie---(you are here)\n"
        );
    }
}
