//! `dog vdi backup` and `dog vdi restore`: what changed between two snapshots of a VDI as a
//! stream (the original's format: a header {version 1, magic 0x11921192}, then for every
//! changed object a record {idx, offset, length, reserved} (u32 each, little endian) and
//! `length` bytes, the changed range of the object; a record with idx 0xffffffff ends it).
//! Without `-F` the backup holds everything of the snapshot. Restore rolls the VDI back to
//! the snapshot the backup started from and applies the records.
//! Owns: the stream format. Never: the cluster side (plain reads and writes of objects).

use crate::error::{Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL, EXIT_USAGE};
use crate::lookup::{self, Inode};
use crate::Ctx;
use crate::{lifecycle, vdi_rw};
use bytes::Bytes;
use proto::{Oid, Vid};
use std::io::{Read, Write};

const VERSION: u32 = 1;
const MAGIC: u32 = 0x1192_1192;
const END: u32 = u32::MAX;
const RECORD: usize = 16;

fn name_arg<'a>(ctx: &'a Ctx<'_>) -> Res<&'a str> {
    ctx.arg(0).ok_or_else(|| Fail::usage(""))
}

/// The whole object `idx` as `ino` sees it (zeros where it has none).
async fn object(ctx: &Ctx<'_>, ino: &Inode, idx: u64) -> Res<Vec<u8>> {
    let size = ino.object_size() as usize;
    let owner = ino.owner(idx);
    if owner == 0 {
        return Ok(vec![0u8; size]);
    }
    let oid = Oid::data(Vid(owner), idx as u32).0;
    lookup::read_object(&ctx.sheep, oid, 0, size as u32, false)
        .await?
        .map_err(|line| Fail::new(EXIT_FAILURE, line))
}

/// The smallest range where `a` and `b` differ.
fn changed(a: &[u8], b: &[u8]) -> Option<(usize, usize)> {
    let first = a.iter().zip(b).position(|(x, y)| x != y)?;
    let last = a.iter().zip(b).rposition(|(x, y)| x != y)?;
    Some((first, last + 1))
}

fn record(idx: u32, offset: u32, length: u32) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..4].copy_from_slice(&idx.to_le_bytes());
    r[4..8].copy_from_slice(&offset.to_le_bytes());
    r[8..12].copy_from_slice(&length.to_le_bytes());
    r
}

fn out_failed(e: std::io::Error) -> Fail {
    Fail::new(EXIT_SYSFAIL, format!("failed to write the backup: {e}"))
}

pub async fn backup(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let o = ctx.opts;
    if o.snapshot.id == 0 && o.snapshot.tag.is_empty() {
        return Err(Fail::new(
            EXIT_USAGE,
            "Please specify snapshots with '-F' and '-s' options",
        ));
    }
    let to = lookup::open(&ctx.sheep, name, &o.snapshot, true).await?;
    let from = match &o.from {
        Some(f) => Some(lookup::open(&ctx.sheep, name, f, true).await?),
        None => None,
    };
    if !to.is_snapshot() || from.as_ref().is_some_and(|f| !f.is_snapshot()) {
        return Err(Fail::new(EXIT_USAGE, "Only snapshots can be backed up"));
    }
    crate::stdout::flush();
    let mut out = std::io::stdout().lock();
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&VERSION.to_le_bytes());
    head[4..].copy_from_slice(&MAGIC.to_le_bytes());
    out.write_all(&head).map_err(out_failed)?;
    for idx in 0..to.nr_objs() {
        let before = from.as_ref().map(|f| f.owner(idx)).unwrap_or(0);
        if to.owner(idx) == before {
            continue;
        }
        let new = object(ctx, &to, idx).await?;
        let old = match &from {
            Some(f) => object(ctx, f, idx).await?,
            None => vec![0u8; new.len()],
        };
        let Some((a, b)) = changed(&old, &new) else {
            continue;
        };
        out.write_all(&record(idx as u32, a as u32, (b - a) as u32))
            .and_then(|_| out.write_all(&new[a..b]))
            .map_err(out_failed)?;
    }
    out.write_all(&record(END, 0, 0))
        .and_then(|_| out.flush())
        .map_err(out_failed)
}

pub async fn restore(ctx: &Ctx<'_>) -> Res<()> {
    let name = name_arg(ctx)?;
    let o = ctx.opts;
    if o.snapshot.id == 0 && o.snapshot.tag.is_empty() {
        return Err(Fail::new(
            EXIT_USAGE,
            "We can restore a backup file only to snapshots\nPlease specify the '-s' option",
        ));
    }
    let mut input = std::io::stdin().lock();
    let mut head = [0u8; 8];
    input
        .read_exact(&mut head)
        .map_err(|e| Fail::new(EXIT_SYSFAIL, format!("failed to read the backup: {e}")))?;
    let version = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let magic = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if magic != MAGIC || version != VERSION {
        return Err(Fail::new(
            EXIT_FAILURE,
            "The backup file is corrupted or of another version",
        ));
    }
    // Back to the snapshot, as `vdi rollback` does, then the records on top; then, as the
    // original, the restored VDI becomes a snapshot of its own with a working VDI on it.
    let base = lookup::open(&ctx.sheep, name, &o.snapshot, false)
        .await
        .map_err(|_| {
            Fail::new(
                EXIT_FAILURE,
                format!(
                    "Snapshot ID {} or tag {} doesn't exist",
                    o.snapshot.id, o.snapshot.tag
                ),
            )
        })?;
    lifecycle::back_to(ctx, name, &base, true).await?;
    let none = crate::cli::Snap::default();
    let mut ino = lookup::open(&ctx.sheep, name, &none, true).await?;
    let obj = ino.object_size();
    loop {
        let mut rec = [0u8; RECORD];
        input
            .read_exact(&mut rec)
            .map_err(|e| Fail::new(EXIT_FAILURE, format!("the backup ends early: {e}")))?;
        let field = |k: usize| u32::from_le_bytes([rec[k], rec[k + 1], rec[k + 2], rec[k + 3]]);
        let (idx, offset, length) = (field(0), field(4), field(8));
        if idx == END {
            return client::volumes::snapshot(ctx.sheep.conn(), &ino.hdr, "")
                .await
                .map(|_| ())
                .map_err(|e| {
                    ctx.sheep
                        .volume_failure("failed to resume the current vdi", e)
                });
        }
        if u64::from(idx) >= ino.nr_objs() || u64::from(offset) + u64::from(length) > obj {
            return Err(Fail::new(EXIT_FAILURE, "The backup file is corrupted"));
        }
        let mut data = vec![0u8; length as usize];
        input
            .read_exact(&mut data)
            .map_err(|e| Fail::new(EXIT_FAILURE, format!("the backup ends early: {e}")))?;
        let owner = ino.owner(u64::from(idx));
        vdi_rw::write_object_range(
            &ctx.sheep,
            &ino.hdr,
            owner,
            idx,
            u64::from(offset),
            Bytes::from(data),
        )
        .await?;
        if let Some(slot) = ino.table.get_mut(idx as usize) {
            *slot = ino.hdr.vdi_id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_ranges() {
        assert_eq!(changed(b"abcdef", b"abcdef"), None);
        assert_eq!(changed(b"abcdef", b"abXdYf"), Some((2, 5)));
        assert_eq!(changed(b"abc", b"Xbc"), Some((0, 1)));
        assert_eq!(
            &record(7, 1, 2)[..12],
            &[7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]
        );
    }
}
