//! `dog vdi read / write`: bytes between stdout/stdin and a VDI, object by object, with up to
//! `IN_FLIGHT` object requests outstanding (the original moves one object at a time).
//! Reads: holes (data_vdi_id 0) are zeros without a request; otherwise READ_OBJ of the owning
//! VDI's object. Writes: an object this VDI owns gets WRITE_OBJ; otherwise CREATE_AND_WRITE_OBJ
//! of our own object (COW from the parent's object when the entry names a parent), then
//! WRITE_OBJ of our vid into the inode's data_vdi_id slot, then the object counts as ours.
//! Owns: splitting ranges into pieces and the per-object request sequence. Never: lookups.

use crate::cli::Snap;
use crate::conn::{os_text, Sheep};
use crate::error::{Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL};
use crate::inflight::Window;
use crate::lookup;
use crate::progress::Progress;
use crate::{fmt, Ctx};
use bytes::Bytes;
use proto::inode::{data_vdi_id_offset, InodeHeader};
use proto::{flags, opcode, Header, Oid, SdResult, Vid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Object requests outstanding at once.
pub const IN_FLIGHT: usize = 8;
/// Largest piece moved by one request; objects larger than this move in several pieces.
const PIECE: u64 = 4 << 20;

/// `[pos, end)` split at object boundaries and at every PIECE bytes inside an object:
/// (object index, offset inside the object, length).
struct Pieces {
    pos: u64,
    end: u64,
    obj: u64,
}

impl Pieces {
    fn new(offset: u64, len: u64, obj: u64) -> Pieces {
        Pieces {
            pos: offset,
            end: offset.saturating_add(len),
            obj: obj.max(1),
        }
    }
}

impl Iterator for Pieces {
    type Item = (u64, u64, u64);
    fn next(&mut self) -> Option<(u64, u64, u64)> {
        if self.pos >= self.end {
            return None;
        }
        let (idx, off) = (self.pos / self.obj, self.pos % self.obj);
        let n = (self.obj - off)
            .min(PIECE - off % PIECE)
            .min(self.end - self.pos);
        self.pos += n;
        Some((idx, off, n))
    }
}

/// The optional `<offset> [<len>]` arguments.
fn range_args(ctx: &Ctx<'_>) -> Res<(u64, Option<u64>)> {
    let parse = |s: &str| fmt::parse_size(s).ok_or_else(|| Fail::usage(fmt::invalid_size(s)));
    let offset = match ctx.args.get(1) {
        Some(s) => parse(s)?,
        None => 0,
    };
    let len = match ctx.args.get(2) {
        Some(s) => Some(parse(s)?),
        None => None,
    };
    Ok((offset, len))
}

pub async fn read(ctx: &Ctx<'_>) -> Res<()> {
    let name = ctx.arg(0).ok_or_else(|| Fail::usage(""))?;
    let (offset, len) = range_args(ctx)?;
    let ino = lookup::open(&ctx.sheep, name, &ctx.opts.snapshot, true).await?;
    let size = ino.hdr.vdi_size;
    if offset > size {
        return Err(Fail::new(
            EXIT_FAILURE,
            "Read offset is beyond the end of the VDI",
        ));
    }
    let total = len.unwrap_or(u64::MAX).min(size - offset);
    crate::stdout::flush();
    let mut out = tokio::io::stdout();
    let mut window = Window::new(IN_FLIGHT);
    for (idx, off, n) in Pieces::new(offset, total, ino.object_size()) {
        let job = read_piece(ctx.sheep.clone(), ino.owner(idx), idx, off, n);
        if let Some(r) = window.push(job).await {
            emit(&mut out, &r?).await?;
        }
    }
    while let Some(r) = window.next().await {
        emit(&mut out, &r?).await?;
    }
    out.flush().await.map_err(stdout_failed)?;
    // SAFETY: fsync on our own stdout descriptor; failure (a pipe) is expected and ignored.
    unsafe {
        libc::fsync(libc::STDOUT_FILENO);
    }
    Ok(())
}

fn stdout_failed(e: std::io::Error) -> Fail {
    Fail::new(
        EXIT_SYSFAIL,
        format!("Failed to write to stdout: {}", os_text(&e)),
    )
}

async fn emit(out: &mut tokio::io::Stdout, data: &[u8]) -> Res<()> {
    out.write_all(data).await.map_err(stdout_failed)
}

async fn read_piece(s: Sheep, owner: u32, idx: u64, off: u64, n: u64) -> Res<Vec<u8>> {
    if owner == 0 {
        return Ok(vec![0; n as usize]);
    }
    let oid = Oid::data(Vid(owner), idx as u32).0;
    lookup::read_object(&s, oid, off, n as u32, false)
        .await?
        .map_err(|line| Fail::new(EXIT_FAILURE, format!("{line}\nFailed to read VDI")))
}

/// Fills `buf` from `r` until full or end of input; returns the bytes read.
async fn read_full(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> Res<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Fail::new(
                    EXIT_SYSFAIL,
                    format!("Failed to read from stdin: {}", os_text(&e)),
                ))
            }
        }
    }
    Ok(got)
}

/// The object header fields a write needs (copies and policy come from the inode).
fn object_header(op: u8, ino: &InodeHeader, oid: u64, offset: u64, extra: u16) -> Header {
    let mut h = Header::request(op);
    h.set_oid(oid)
        .set_obj_offset(offset)
        .set_obj_copies(ino.nr_copies)
        .set_obj_copy_policy(ino.copy_policy)
        .add_flags(extra);
    h
}

/// `sd_inode_write_vid`: data_vdi_id[idx] := our vid, on the inode object.
async fn set_owner(s: &Sheep, ino: &InodeHeader, idx: u32, extra: u16) -> Res<()> {
    let oid = Oid::inode(Vid(ino.vdi_id)).0;
    let h = object_header(
        opcode::WRITE_OBJ,
        ino,
        oid,
        data_vdi_id_offset(idx) as u64,
        extra,
    );
    let r = s
        .write(h, Bytes::copy_from_slice(&ino.vdi_id.to_le_bytes()))
        .await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!("Failed to write object {oid:016x}: {}", r.result().text()),
        ));
    }
    Ok(())
}

/// CREATE_AND_WRITE_OBJ of our object `idx` with `data` at `offset`, copy-on-write from
/// `cow_from`'s object when that is not 0.
async fn create_data(
    s: &Sheep,
    ino: &InodeHeader,
    idx: u32,
    data: Bytes,
    offset: u64,
    cow_from: u32,
    extra: u16,
) -> Res<()> {
    let oid = Oid::data(Vid(ino.vdi_id), idx).0;
    let mut h = object_header(opcode::CREATE_AND_WRITE_OBJ, ino, oid, offset, extra);
    if cow_from != 0 {
        h.add_flags(flags::CMD_COW)
            .set_cow_oid(Oid::data(Vid(cow_from), idx).0);
    }
    let r = s.write(h, data).await?;
    if r.result() != SdResult::SUCCESS {
        return Err(Fail::new(
            EXIT_FAILURE,
            format!("Failed to write object {oid:016x}: {}", r.result().text()),
        ));
    }
    Ok(())
}

/// Writes `data` at `offset` of object `idx` of the VDI whose table names `owner` there:
/// in place when the VDI owns it, else by creating its own object (copy-on-write from the
/// owner's) and recording it in the inode.
pub async fn write_object_range(
    s: &Sheep,
    ino: &InodeHeader,
    owner: u32,
    idx: u32,
    offset: u64,
    data: Bytes,
) -> Res<()> {
    if owner == ino.vdi_id {
        let oid = Oid::data(Vid(ino.vdi_id), idx).0;
        let h = object_header(opcode::WRITE_OBJ, ino, oid, offset, 0);
        let r = s.write(h, data).await?;
        if r.result() != SdResult::SUCCESS {
            return Err(Fail::new(
                EXIT_FAILURE,
                format!("Failed to write object {oid:016x}: {}", r.result().text()),
            ));
        }
        return Ok(());
    }
    create_data(s, ino, idx, data, offset, owner, 0).await?;
    set_owner(s, ino, idx, 0).await
}

/// Creates our (empty) object `idx` and records it in the inode (`vdi create -P`).
pub async fn create_object(s: Sheep, ino: InodeHeader, idx: u32) -> Res<()> {
    create_data(&s, &ino, idx, Bytes::new(), 0, 0, 0).await?;
    set_owner(&s, &ino, idx, 0).await
}

/// What one piece of a write does.
enum Step {
    /// Overwrite part of our object; first wait for its creation when it is being created
    /// by an earlier piece of this run.
    Write(Option<watch::Receiver<Option<bool>>>),
    /// Create our object (COW from this vid when not 0) and announce the outcome.
    Create(u32, watch::Sender<Option<bool>>),
}

async fn write_piece(
    s: Sheep,
    ino: InodeHeader,
    idx: u32,
    offset: u64,
    data: Bytes,
    extra: u16,
    step: Step,
) -> Res<u64> {
    let n = data.len() as u64;
    match step {
        Step::Create(cow_from, created) => {
            let r = match create_data(&s, &ino, idx, data, offset, cow_from, extra).await {
                Ok(()) => set_owner(&s, &ino, idx, extra).await,
                Err(f) => Err(f.then("Failed to write VDI")),
            };
            let _ = created.send(Some(r.is_ok()));
            r.map(|()| n)
        }
        Step::Write(wait) => {
            if let Some(mut rx) = wait {
                let created = rx.wait_for(|v| v.is_some()).await.map(|v| *v);
                if !matches!(created, Ok(Some(true))) {
                    return Err(Fail::new(EXIT_FAILURE, "Failed to write VDI"));
                }
            }
            let oid = Oid::data(Vid(ino.vdi_id), idx).0;
            let h = object_header(opcode::WRITE_OBJ, &ino, oid, offset, extra);
            let r = s.write(h, data).await?;
            if r.result() != SdResult::SUCCESS {
                return Err(Fail::new(
                    EXIT_FAILURE,
                    format!(
                        "Failed to write object {oid:016x}: {}\nFailed to write VDI",
                        r.result().text()
                    ),
                ));
            }
            Ok(n)
        }
    }
}

pub async fn write(ctx: &Ctx<'_>) -> Res<()> {
    let name = ctx.arg(0).ok_or_else(|| Fail::usage(""))?;
    let (offset, len) = range_args(ctx)?;
    let ino = lookup::open(&ctx.sheep, name, &Snap::default(), true).await?;
    let size = ino.hdr.vdi_size;
    if offset > size {
        return Err(Fail::new(
            EXIT_FAILURE,
            "Write offset is beyond the end of the VDI",
        ));
    }
    // As the original: a write stops at the end of the VDI (a longer length, or more
    // input, is cut off there).
    let total = len.unwrap_or(u64::MAX).min(size - offset);
    let vid = ino.vid();
    let extra = if ctx.opts.writeback {
        flags::CMD_CACHE
    } else {
        0
    };
    let mut table = ino.table.clone();
    let mut stdin = tokio::io::stdin();
    let mut bar = Progress::new(total, false);
    let mut window = Window::new(IN_FLIGHT);
    // The object being created by this run and the signal its creation sends.
    let mut creating: Option<(u64, watch::Receiver<Option<bool>>)> = None;
    let mut done = 0u64;
    for (idx, off, n) in Pieces::new(offset, total, ino.object_size()) {
        let mut buf = vec![0u8; n as usize];
        let got = read_full(&mut stdin, &mut buf).await?;
        if got == 0 {
            break;
        }
        buf.truncate(got);
        let slot = usize::try_from(idx).ok().and_then(|i| table.get_mut(i));
        let owner = slot.as_deref().copied().unwrap_or(0);
        let step = if owner == vid {
            Step::Write(
                creating
                    .as_ref()
                    .filter(|(i, _)| *i == idx)
                    .map(|(_, rx)| rx.clone()),
            )
        } else {
            if let Some(s) = slot {
                *s = vid;
            }
            let (tx, rx) = watch::channel(None);
            creating = Some((idx, rx));
            Step::Create(owner, tx)
        };
        let job = write_piece(
            ctx.sheep.clone(),
            ino.hdr.clone(),
            idx as u32,
            off,
            Bytes::from(buf),
            extra,
            step,
        );
        if let Some(r) = window.push(job).await {
            done += r?;
            bar.update(done);
        }
        if (got as u64) < n {
            break;
        }
    }
    while let Some(r) = window.next().await {
        done += r?;
        bar.update(done);
    }
    bar.finish(done);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_objects_and_piece_size() {
        let mb = 1u64 << 20;
        let p: Vec<_> = Pieces::new(5_000_000, 100, 4 * mb).collect();
        assert_eq!(p, vec![(1, 5_000_000 - 4 * mb, 100)]);
        let p: Vec<_> = Pieces::new(3 * mb, 6 * mb, 4 * mb).collect();
        assert_eq!(p, vec![(0, 3 * mb, mb), (1, 0, 4 * mb), (2, 0, mb)]);
        // 16 MiB objects move in 4 MiB pieces.
        let p: Vec<_> = Pieces::new(2 * mb, 16 * mb, 16 * mb).collect();
        assert_eq!(
            p,
            vec![
                (0, 2 * mb, 2 * mb),
                (0, 4 * mb, 4 * mb),
                (0, 8 * mb, 4 * mb),
                (0, 12 * mb, 4 * mb),
                (1, 0, 2 * mb)
            ]
        );
        assert_eq!(Pieces::new(7, 0, 4 * mb).count(), 0);
        assert_eq!(
            Pieces::new(0, u64::MAX, 4 * mb).next(),
            Some((0, 0, 4 * mb))
        );
    }

    #[tokio::test]
    async fn read_full_until_eof() {
        let mut r: &[u8] = b"abcdef";
        let mut buf = [0u8; 4];
        assert_eq!(read_full(&mut r, &mut buf).await.unwrap(), 4);
        assert_eq!(read_full(&mut r, &mut buf).await.unwrap(), 2);
        assert_eq!(read_full(&mut r, &mut buf).await.unwrap(), 0);
    }

    #[test]
    fn write_headers() {
        let ino = InodeHeader {
            vdi_id: 0x15d168,
            nr_copies: 3,
            copy_policy: 0,
            ..Default::default()
        };
        let h = object_header(
            opcode::WRITE_OBJ,
            &ino,
            0x15d16800000002,
            512,
            flags::CMD_CACHE,
        );
        assert_eq!(h.proto_ver(), proto::SD_PROTO_VER);
        assert_eq!(h.oid(), 0x15d16800000002);
        assert_eq!(h.obj_offset(), 512);
        assert_eq!(h.obj_copies(), 3);
        assert!(h.has_flag(flags::CMD_CACHE));
        assert_eq!(data_vdi_id_offset(2), 4664 + 8);
    }
}
