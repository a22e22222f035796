//! The disks of a node, as the original's multi-disk ("md") store: `sheep META,DISK1,DISK2...`
//! keeps its objects on the disks, each object on the disk a ring of "vdisks" gives it (one
//! vdisk per 16 MiB of a disk's space, hashed from the disk's path as the original, an object
//! on the first vdisk at or after `sd_hash_oid`); with one path, the one disk is `META/obj`.
//! A disk's space is measured once, when it is first used, and kept in the extended attribute
//! `user.md.size` of its directory, so the ring does not move as the disk fills.
//!
//! The disks in use are recorded in `META/disks` (with the epoch each departed one left in),
//! so that a disk that comes back after it was unplugged or failed never serves the copies it
//! held when it left: they are set aside as stale copies of that epoch, which recovery reads
//! only when no current copy exists anywhere.
//! Owns: the disk set, the ring, a disk's space and preparation, the record. Never: object
//! I/O (the store's other modules) or deciding that a disk failed.

use super::{io, StoreError};
use proto::hash::{sd_hash, sd_hash_next, sd_hash_oid};
use proto::Oid;
use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Disk space per vdisk (the original's MD_VDISK_SIZE).
const VDISK_SIZE: u64 = 16 << 20;
const SIZE_XATTR: &[u8] = b"user.md.size\0";
/// The name of the record in the meta directory.
const RECORD: &str = "disks";

/// One disk: the directory its objects are in and the space it was measured with.
#[derive(Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub space: u64,
}

/// A disk unplugged while healthy: its copies are still read (and copied to their new disks)
/// until a pass has copied them all; `done` are the objects already copied or removed since,
/// which it must never give again.
#[derive(Debug)]
pub struct Draining {
    pub disk: Arc<Disk>,
    pub done: Mutex<HashSet<Oid>>,
}

/// The disks in use and the ring over them.
#[derive(Debug, Default)]
pub struct Layout {
    /// Plugged disks, in the byte order of their paths (the original's order of `md info`).
    pub disks: Vec<Arc<Disk>>,
    ring: Vec<(u64, usize)>,
    pub draining: Vec<Arc<Draining>>,
}

impl Layout {
    pub fn new(mut disks: Vec<Arc<Disk>>, draining: Vec<Arc<Draining>>) -> Layout {
        disks.sort_by(|a, b| a.path.as_os_str().cmp(b.path.as_os_str()));
        disks.dedup_by(|a, b| a.path == b.path);
        let mut ring = Vec::new();
        for (i, d) in disks.iter().enumerate() {
            let mut h = sd_hash(d.path.as_os_str().as_bytes());
            for _ in 0..d.space.div_ceil(VDISK_SIZE).max(1) {
                h = sd_hash_next(h);
                ring.push((h, i));
            }
        }
        ring.sort_unstable();
        // Two vdisks on one point (the original refuses to start): the first keeps it.
        ring.dedup_by_key(|v| v.0);
        Layout {
            disks,
            ring,
            draining,
        }
    }

    /// The disk the ring gives `oid`; none when no disk is left.
    pub fn home(&self, oid: Oid) -> Option<&Arc<Disk>> {
        let h = sd_hash_oid(oid.0);
        let i = self.ring.partition_point(|v| v.0 < h);
        let (_, d) = self.ring.get(i).or_else(|| self.ring.first())?;
        self.disks.get(*d)
    }

    /// Whether an object can be anywhere but its home disk.
    pub fn several(&self) -> bool {
        self.disks.len() > 1 || !self.draining.is_empty()
    }

    pub fn find(&self, path: &Path) -> Option<&Arc<Disk>> {
        self.disks.iter().find(|d| d.path == path)
    }
}

/// A path as the original names disks: absolute, without trailing slashes.
pub fn clean(path: &Path) -> PathBuf {
    let p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let s = p.as_os_str().as_bytes();
    let end = s.iter().rposition(|&b| b != b'/').map_or(1, |i| i + 1);
    PathBuf::from(std::ffi::OsStr::from_bytes(&s[..end]))
}

fn cpath(p: &Path) -> Result<CString, StoreError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| StoreError::Io {
        what: "name",
        path: p.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// Free bytes of the file system `path` is on, and its size.
pub fn statvfs(path: &Path) -> Result<(u64, u64, u64), StoreError> {
    let c = cpath(path)?;
    // SAFETY: statvfs writes into a zeroed struct of the right type for a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io("statvfs", path)(std::io::Error::last_os_error()));
    }
    let bs = s.f_frsize as u64;
    Ok((
        s.f_blocks as u64 * bs,
        s.f_bavail as u64 * bs,
        s.f_fsid as u64,
    ))
}

/// The space recorded on the disk, or what it has free now, recorded.
fn space(path: &Path) -> Result<u64, StoreError> {
    let c = cpath(path)?;
    let mut b = [0u8; 8];
    // SAFETY: a valid path, a NUL-terminated name and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            SIZE_XATTR.as_ptr().cast(),
            b.as_mut_ptr().cast(),
            b.len(),
        )
    };
    if n == 8 {
        let s = u64::from_ne_bytes(b);
        if s > 0 {
            return Ok(s);
        }
    } else if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENODATA) {
            return Err(io("read the size of", path)(e));
        }
    }
    let (_, free, _) = statvfs(path)?;
    if free == 0 {
        return Err(StoreError::NoSpace);
    }
    let b = free.to_ne_bytes();
    // SAFETY: as above.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            SIZE_XATTR.as_ptr().cast(),
            b.as_ptr().cast(),
            b.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io("record the size of", path)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(free)
}

/// Readies a disk for use: its directory and stale area made, emptied first with `purge`
/// (a plugged disk starts empty, as the original), its space measured or read back.
pub fn prepare(path: &Path, purge: bool) -> Result<Disk, StoreError> {
    std::fs::create_dir_all(path).map_err(io("create", path))?;
    if purge {
        for e in std::fs::read_dir(path).map_err(io("list", path))? {
            let p = e.map_err(io("list", path))?.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(io("remove", &p))?;
        }
    }
    let stale = path.join(".stale");
    std::fs::create_dir_all(&stale).map_err(io("create", &stale))?;
    Ok(Disk {
        path: path.to_path_buf(),
        space: space(path)?,
    })
}

/// The record: the disks in use, and the epoch each departed disk left in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub plugged: Vec<PathBuf>,
    pub left: BTreeMap<PathBuf, u32>,
}

impl Record {
    /// `None` when there is none (a store of the original, or of before the record).
    pub fn read(meta: &Path) -> Result<Option<Record>, StoreError> {
        let p = meta.join(RECORD);
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &p)(e)),
        };
        let mut r = Record::default();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let path = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
            match line.strip_prefix(b"left ") {
                Some(rest) => {
                    let Some(sp) = rest.iter().position(|&b| b == b' ') else {
                        continue;
                    };
                    let epoch = std::str::from_utf8(&rest[..sp])
                        .ok()
                        .and_then(|s| s.parse().ok());
                    if let Some(e) = epoch {
                        r.left.insert(path(&rest[sp + 1..]), e);
                    }
                }
                None => r
                    .plugged
                    .push(path(line.strip_prefix(b"disk ").unwrap_or(line))),
            }
        }
        Ok(Some(r))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.plugged {
            out.extend_from_slice(b"disk ");
            out.extend_from_slice(p.as_os_str().as_bytes());
            out.push(b'\n');
        }
        for (p, e) in &self.left {
            out.extend_from_slice(format!("left {e} ").as_bytes());
            out.extend_from_slice(p.as_os_str().as_bytes());
            out.push(b'\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(p: &str, space: u64) -> Arc<Disk> {
        Arc::new(Disk {
            path: p.into(),
            space,
        })
    }

    #[test]
    fn the_ring_spreads_objects_by_space_and_moves_few_when_a_disk_comes() {
        let two = Layout::new(vec![disk("/d/b", 4 << 30), disk("/d/a", 4 << 30)], vec![]);
        assert_eq!(two.disks[0].path, Path::new("/d/a"), "in path order");
        assert_eq!(two.ring.len(), 2 * 256);
        let three = Layout::new(
            vec![
                disk("/d/a", 4 << 30),
                disk("/d/b", 4 << 30),
                disk("/d/c", 8 << 30),
            ],
            vec![],
        );
        let oids: Vec<Oid> = (0..4000)
            .map(|i| Oid::data(proto::Vid(0x7c2b25), i))
            .collect();
        let mut on_c = 0;
        for &o in &oids {
            let h3 = &three.home(o).unwrap().path;
            if h3 == Path::new("/d/c") {
                on_c += 1;
            } else {
                assert_eq!(h3, &two.home(o).unwrap().path, "only moves to the new disk");
            }
        }
        // Half the space is on c: about half the objects.
        assert!((1600..2400).contains(&on_c), "{on_c}");
        assert!(Layout::default().home(oids[0]).is_none());
    }

    #[test]
    fn vdisks_are_hashed_from_the_path_as_the_original() {
        let l = Layout::new(vec![disk("/x", 1)], vec![]);
        let first = sd_hash_next(sd_hash(b"/x"));
        assert_eq!(l.ring, vec![(first, 0)]);
        let oid = Oid(0x007c_2b25_0000_0001);
        assert_eq!(l.home(oid).unwrap().path, Path::new("/x"));
    }

    #[test]
    fn paths_are_cleaned_and_the_record_round_trips() {
        assert_eq!(clean(Path::new("/a/b//")), Path::new("/a/b"));
        assert_eq!(clean(Path::new("/")), Path::new("/"));
        assert!(clean(Path::new("rel")).is_absolute());
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Record::read(d.path()).unwrap(), None);
        let r = Record {
            plugged: vec!["/a b".into(), "/c".into()],
            left: [(PathBuf::from("/old"), 7)].into(),
        };
        std::fs::write(d.path().join(RECORD), r.encode()).unwrap();
        assert_eq!(Record::read(d.path()).unwrap(), Some(r));
    }

    #[test]
    fn a_disk_keeps_the_space_it_was_first_measured_with() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d0");
        let a = prepare(&p, false).unwrap();
        assert!(a.space > 0);
        assert!(p.join(".stale").is_dir());
        std::fs::write(p.join("0000000000000001"), b"x").unwrap();
        let b = prepare(&p, false).unwrap();
        assert_eq!(a.space, b.space);
        assert!(p.join("0000000000000001").exists());
        prepare(&p, true).unwrap();
        assert!(!p.join("0000000000000001").exists(), "a plug starts empty");
        assert!(p.join(".stale").is_dir());
    }
}
