//! The version of each object copy: how many writes it has taken since it was created (a
//! create is the first), kept with the copy in the extended attribute `user.sheepdog.version`:
//! the version (u64) and the id of the last write counted (u64), little endian; a write sent
//! again with the same id (a gateway's retry) is applied but not counted twice. A copy
//! without it (one from the original's store) is version 0; 8 bytes is a version alone.
//! Copies of an object that took the same writes have the same version; one that missed a
//! write, or took one the others did not, stands out, and the newest copy is the one with the
//! highest version. A whole copy installed by recovery or repair carries its source's version.
//! Owns: the attribute and its atomic increment. Never: deciding which copy wins.

use super::{io, Store, StoreError};
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

const NAME: &[u8] = b"user.sheepdog.version\0";

/// Locks (by oid hash) that make an increment atomic against concurrent writes of one object.
pub(super) const STRIPES: usize = 64;

/// The version and the id of the last write counted.
pub(super) fn get_with_id(f: &File, path: &Path) -> Result<(u64, u64), StoreError> {
    let mut b = [0u8; 16];
    // SAFETY: a valid fd, a NUL-terminated name and a buffer of the length given.
    let n = unsafe {
        libc::fgetxattr(
            f.as_raw_fd(),
            NAME.as_ptr().cast(),
            b.as_mut_ptr().cast(),
            b.len(),
        )
    };
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if n == 16 {
        return Ok((word(0), word(8)));
    }
    if n == 8 {
        return Ok((word(0), 0));
    }
    let e = std::io::Error::last_os_error();
    match (n, e.raw_os_error()) {
        (-1, Some(libc::ENODATA)) => Ok((0, 0)),
        (-1, _) => Err(io("read the version of", path)(e)),
        // A damaged attribute: the copy counts as the oldest.
        _ => Ok((0, 0)),
    }
}

pub(super) fn set_with_id(f: &File, path: &Path, v: u64, id: u64) -> Result<(), StoreError> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&v.to_le_bytes());
    b[8..].copy_from_slice(&id.to_le_bytes());
    // SAFETY: a valid fd, a NUL-terminated name and a buffer of the length given.
    let r = unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            NAME.as_ptr().cast(),
            b.as_ptr().cast(),
            b.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io("write the version of", path)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Store {
    /// One more write, `id` (0: none), taken by the copy open as `f`: its new version. The
    /// same id as the last write counted is that write again, and is not counted.
    pub(super) fn bump(
        &self,
        oid: proto::Oid,
        f: &File,
        path: &Path,
        id: u64,
    ) -> Result<u64, StoreError> {
        let stripe = (proto::hash::sd_hash_oid(oid.0) % STRIPES as u64) as usize;
        let _g = self.versions[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (v, last) = get_with_id(f, path)?;
        if id != 0 && id == last {
            return Ok(v);
        }
        set_with_id(f, path, v + 1, id)?;
        Ok(v + 1)
    }

    /// The version of the current copy of `oid`, or of its stale copy tagged `tag`.
    pub fn version(&self, oid: proto::Oid, tag: u32) -> Result<u64, StoreError> {
        self.stamp(oid, tag).map(|(v, _)| v)
    }

    /// The version of that copy and the id of the last write it counted.
    pub fn stamp(&self, oid: proto::Oid, tag: u32) -> Result<(u64, u64), StoreError> {
        self.stamp_at(&self.tagged_file(oid, tag)?)
    }

    /// The version and last write id of the copy in the file at `path`.
    pub(super) fn stamp_at(&self, path: &Path) -> Result<(u64, u64), StoreError> {
        let f = File::open(path).map_err(io("open", path))?;
        get_with_id(&f, path)
    }

    pub(super) fn version_at(&self, path: &Path) -> Result<u64, StoreError> {
        self.stamp_at(path).map(|(v, _)| v)
    }
}
