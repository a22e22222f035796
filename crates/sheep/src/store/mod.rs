//! Objects, the epoch log and the config file in STORE_DIR, laid out as the original's plain
//! store: `obj/<16 hex digits of the oid>`, `epoch/%08u`, `config`, `lock`.
//!
//! New objects are written to a temporary file, sized (sparse, zero-filled), synced and renamed
//! into place, so a crash never leaves a half-created object under its real name. Writes are
//! synced before they return unless the node runs with -n. Synchronous: callers run these in
//! blocking threads; many may run at once (no lock around I/O).
//! Owns: the files. Never: placement or networking.

mod stale;
mod version;
pub use stale::CURRENT;

use proto::config::Config;
use proto::{Oid, SdNode, SdResult};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such object")]
    NoObj,
    #[error("another sheep is already running on {0}")]
    AlreadyRunning(PathBuf),
    #[error("range beyond the end of the object")]
    OutOfRange,
    #[error("no space left on the store's disk")]
    NoSpace,
    #[error("the object kept changing while it was read whole")]
    Busy,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    pub fn result(&self) -> SdResult {
        match self {
            StoreError::NoObj => SdResult::NO_OBJ,
            StoreError::OutOfRange => SdResult::INVALID_PARMS,
            StoreError::NoSpace => SdResult::NO_SPACE,
            // Recovery reads it again later.
            StoreError::Busy => SdResult::NETWORK_ERROR,
            StoreError::AlreadyRunning(_) | StoreError::Io { .. } => SdResult::EIO,
        }
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            StoreError::NoSpace
        } else if source.kind() == std::io::ErrorKind::NotFound && what != "create" {
            StoreError::NoObj
        } else {
            StoreError::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Renames `from` to `to` unless `to` exists: false (and `from` left in place) if it does.
/// `renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` where the file system lacks it.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => match std::fs::hard_link(from, to) {
            Ok(()) => std::fs::remove_file(from).map(|_| true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        _ => Err(e),
    }
}

/// What a store holds (`Store::usage`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Current object copies.
    pub objects: u64,
    /// Disk space they take (allocated blocks: unwritten ranges take none).
    pub bytes: u64,
    /// Copies set aside as stale.
    pub stale: u64,
}

pub struct Store {
    dir: PathBuf,
    obj: PathBuf,
    epoch: PathBuf,
    nosync: bool,
    _lock: File,
    tmp_seq: AtomicU64,
    versions: Vec<std::sync::Mutex<()>>,
}

impl Store {
    pub fn open(dir: &Path, nosync: bool) -> Result<Store, StoreError> {
        let obj = dir.join("obj");
        let epoch = dir.join("epoch");
        for d in [dir, &obj, &epoch] {
            std::fs::create_dir_all(d).map_err(io("create", d))?;
        }
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("create", &lock_path))?;
        // SAFETY: flock on a valid fd owned by `lock`, held for the Store's lifetime.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::AlreadyRunning(dir.to_path_buf()));
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            obj,
            epoch,
            nosync,
            _lock: lock,
            tmp_seq: AtomicU64::new(0),
            versions: (0..version::STRIPES).map(|_| Default::default()).collect(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory the objects are in (the node's one disk).
    pub fn obj_dir(&self) -> &Path {
        &self.obj
    }

    fn path(&self, oid: Oid) -> PathBuf {
        self.obj.join(oid.file_name())
    }

    fn sync(&self, f: &File, path: &Path) -> Result<(), StoreError> {
        if self.nosync {
            return Ok(());
        }
        f.sync_data().map_err(io("sync", path))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        if self.nosync {
            return Ok(());
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))
    }

    /// Writes `data` to a new file and renames it to `path` (atomic replace).
    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let tmp = path.with_extension(format!(
            "tmp{}",
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all_at(data, 0).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename", path))?;
        self.sync_dir(path.parent().unwrap_or(&self.dir))
    }

    /// Creates the object (`obj_size` bytes, zero-filled) with `data` at `offset`; if it
    /// exists already, this is a plain write, or nothing with `keep`. With `sync` it is
    /// durable when this returns, else once `sync_all` has run. Returns the copy's version.
    #[allow(clippy::too_many_arguments)]
    pub fn create_and_write(
        &self,
        oid: Oid,
        obj_size: u64,
        offset: u64,
        data: &[u8],
        sync: bool,
        keep: bool,
        id: u64,
    ) -> Result<u64, StoreError> {
        let existing = |s: &Store| {
            if keep {
                s.version(oid, CURRENT)
            } else {
                s.write_as(oid, offset, data, sync, id)
            }
        };
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > obj_size)
        {
            return Err(StoreError::OutOfRange);
        }
        let path = self.path(oid);
        if path.exists() {
            return existing(self);
        }
        fail::fail_point!("store::create_after_check");
        let tmp = self.obj.join(format!(
            "{}.tmp{}.{}",
            oid.file_name(),
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.set_len(obj_size).map_err(io("create", &tmp))?;
            f.write_all_at(data, offset).map_err(io("write", &tmp))?;
            version::set_with_id(&f, &tmp, 1, id)?;
            if sync {
                self.sync(&f, &tmp)?;
            }
            if !rename_noreplace(&tmp, &path).map_err(io("rename", &path))? {
                // Another request created it since the check: never replace it, write into it.
                let _ = std::fs::remove_file(&tmp);
                return existing(self);
            }
            if sync {
                self.sync_dir(&self.obj)?;
            }
            Ok(1)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Overwrites part of an object; durable on return with `sync`, else after `sync_all`.
    /// Returns the copy's version after the write.
    pub fn write(&self, oid: Oid, offset: u64, data: &[u8], sync: bool) -> Result<u64, StoreError> {
        self.write_as(oid, offset, data, sync, 0)
    }

    /// `write` of the write `id` (see `version`): sent again, it is not counted again.
    pub fn write_as(
        &self,
        oid: Oid,
        offset: u64,
        data: &[u8],
        sync: bool,
        id: u64,
    ) -> Result<u64, StoreError> {
        let path = self.path(oid);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let len = f.metadata().map_err(io("stat", &path))?.len();
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > len)
        {
            return Err(StoreError::OutOfRange);
        }
        f.write_all_at(data, offset).map_err(io("write", &path))?;
        let v = self.bump(oid, &f, &path, id)?;
        if sync {
            self.sync(&f, &path)?;
        }
        Ok(v)
    }

    /// Makes every earlier write to this store durable (syncfs of its file system).
    pub fn sync_all(&self) -> Result<(), StoreError> {
        if self.nosync {
            return Ok(());
        }
        let d = File::open(&self.obj).map_err(io("open", &self.obj))?;
        // SAFETY: syncfs on a descriptor this function owns for the duration of the call.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
            return Err(io("sync", &self.obj)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Exactly `len` bytes at `offset`.
    pub fn read(&self, oid: Oid, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let path = self.path(oid);
        let f = File::open(&path).map_err(io("open", &path))?;
        let size = f.metadata().map_err(io("stat", &path))?.len();
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(StoreError::OutOfRange);
        }
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(io("read", &path))?;
        Ok(buf)
    }

    /// Removes the object, and any stale copies of it (so recovery cannot bring it back).
    pub fn remove(&self, oid: Oid) -> Result<(), StoreError> {
        let path = self.path(oid);
        let r = std::fs::remove_file(&path).map_err(io("remove", &path));
        self.remove_stale(oid)?;
        r
    }

    pub fn exists(&self, oid: Oid) -> bool {
        self.path(oid).exists()
    }

    pub fn object_size(&self, oid: Oid) -> Result<u64, StoreError> {
        let path = self.path(oid);
        Ok(std::fs::metadata(&path).map_err(io("stat", &path))?.len())
    }

    /// Every object stored here.
    pub fn list(&self) -> Result<Vec<Oid>, StoreError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.obj).map_err(io("list", &self.obj))? {
            let e = e.map_err(io("list", &self.obj))?;
            if let Some(oid) = e.file_name().to_str().and_then(Oid::parse_file_name) {
                out.push(oid);
            }
        }
        out.sort();
        Ok(out)
    }

    /// What the store holds: current copies, the disk space they take, stale copies.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut u = Usage::default();
        for e in std::fs::read_dir(&self.obj).map_err(io("list", &self.obj))? {
            let e = e.map_err(io("list", &self.obj))?;
            if e.file_name()
                .to_str()
                .and_then(Oid::parse_file_name)
                .is_none()
            {
                continue;
            }
            // An object removed since the listing is not counted.
            if let Ok(m) = e.metadata() {
                u.objects += 1;
                u.bytes += m.blocks() * 512;
            }
        }
        u.stale = self.stale_list()?.len() as u64;
        Ok(u)
    }

    /// Removes every object (cluster format).
    pub fn purge_objects(&self) -> Result<(), StoreError> {
        for e in std::fs::read_dir(&self.obj).map_err(io("list", &self.obj))? {
            let e = e.map_err(io("list", &self.obj))?;
            let p = e.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(io("remove", &p))?;
        }
        self.sync_dir(&self.obj)
    }

    fn epoch_path(&self, epoch: u32) -> PathBuf {
        self.epoch.join(format!("{epoch:08}"))
    }

    pub fn write_epoch(&self, epoch: u32, nodes: &[SdNode], time: u64) -> Result<(), StoreError> {
        self.write_atomic(
            &self.epoch_path(epoch),
            &proto::node::encode_epoch_file(nodes, time),
        )
    }

    pub fn read_epoch(&self, epoch: u32) -> Result<Option<(Vec<SdNode>, u64)>, StoreError> {
        let path = self.epoch_path(epoch);
        match std::fs::read(&path) {
            Ok(b) => Ok(proto::node::decode_epoch_file(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// The newest epoch in the log, 0 if none.
    pub fn latest_epoch(&self) -> Result<u32, StoreError> {
        let mut max = 0;
        for e in std::fs::read_dir(&self.epoch).map_err(io("list", &self.epoch))? {
            let e = e.map_err(io("list", &self.epoch))?;
            if let Some(n) = e
                .file_name()
                .to_str()
                .filter(|s| s.len() == 8)
                .and_then(|s| s.parse::<u32>().ok())
            {
                max = max.max(n);
            }
        }
        Ok(max)
    }

    pub fn remove_epochs(&self) -> Result<(), StoreError> {
        for e in std::fs::read_dir(&self.epoch).map_err(io("list", &self.epoch))? {
            let p = e.map_err(io("list", &self.epoch))?.path();
            std::fs::remove_file(&p).map_err(io("remove", &p))?;
        }
        Ok(())
    }

    pub fn read_config(&self) -> Result<Option<Config>, StoreError> {
        let path = self.dir.join("config");
        match std::fs::read(&path) {
            Ok(b) => Ok(Config::decode(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    pub fn write_config(&self, c: &Config) -> Result<(), StoreError> {
        self.write_atomic(&self.dir.join("config"), &c.encode())
    }

    /// (total, free) bytes of the store's file system.
    pub fn space(&self) -> Result<(u64, u64), StoreError> {
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .map_err(|_| StoreError::NoObj)?;
        // SAFETY: statvfs writes into a zeroed struct of the right type for a valid C string.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(io("statvfs", &self.dir)(std::io::Error::last_os_error()));
        }
        let bs = s.f_frsize as u64;
        Ok((s.f_blocks as u64 * bs, s.f_bavail as u64 * bs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{NodeId, Vid};

    fn oid(i: u32) -> Oid {
        Oid::data(Vid(0x15d167), i)
    }

    #[test]
    fn objects_round_trip_and_refuse_bad_ranges() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), false).unwrap();
        assert!(matches!(s.read(oid(0), 0, 1), Err(StoreError::NoObj)));
        assert!(matches!(
            s.write(oid(0), 0, b"x", true),
            Err(StoreError::NoObj)
        ));
        s.create_and_write(oid(0), 4096, 100, b"hello", true, false, 0)
            .unwrap();
        assert_eq!(s.read(oid(0), 98, 9).unwrap(), b"\0\0hello\0\0");
        s.write(oid(0), 0, b"ab", false).unwrap();
        assert!(matches!(
            s.write(oid(0), 4095, b"ab", true),
            Err(StoreError::OutOfRange)
        ));
        assert!(matches!(
            s.read(oid(0), 4000, 100),
            Err(StoreError::OutOfRange)
        ));
        assert!(matches!(
            s.create_and_write(oid(1), 10, 5, b"toolong", true, false, 0),
            Err(StoreError::OutOfRange)
        ));
        assert!(!s.exists(oid(1)));
        assert_eq!(s.read(oid(0), 0, 2).unwrap(), b"ab");
        s.create_and_write(oid(0), 4096, 0, b"c", true, false, 0)
            .unwrap();
        assert_eq!(s.read(oid(0), 0, 2).unwrap(), b"cb");
        assert_eq!(s.list().unwrap(), vec![oid(0)]);
        assert_eq!(
            std::fs::read_dir(d.path().join("obj")).unwrap().count(),
            1,
            "no temporary files left"
        );
        assert!(d.path().join("obj/0015d16700000000").exists());
        s.remove(oid(0)).unwrap();
        assert!(matches!(s.remove(oid(0)), Err(StoreError::NoObj)));
        s.create_and_write(oid(2), 8, 0, b"z", false, false, 0)
            .unwrap();
        s.purge_objects().unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn usage_counts_current_and_stale_copies() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        assert_eq!(s.usage().unwrap(), Usage::default());
        s.create_and_write(oid(0), 1 << 20, 0, &[7u8; 8192], true, false, 0)
            .unwrap();
        s.create_and_write(oid(1), 1 << 20, 0, b"x", true, false, 0)
            .unwrap();
        let u = s.usage().unwrap();
        assert_eq!((u.objects, u.stale), (2, 0));
        // At least what was written, less than the objects' sizes (thin).
        assert!(u.bytes > 8192 && u.bytes < 2 << 20, "{u:?}");
        s.make_stale(oid(1), 3).unwrap();
        let u = s.usage().unwrap();
        assert_eq!((u.objects, u.stale), (1, 1));
    }

    #[test]
    fn a_create_racing_another_never_replaces_it() {
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(d.path(), true).unwrap());
        let scenario = fail::FailScenario::setup();
        // The first create stops between its existence check and its rename.
        fail::cfg("store::create_after_check", "1*pause").unwrap();
        let s2 = s.clone();
        let first = std::thread::spawn(move || {
            s2.create_and_write(oid(5), 4096, 0, b"AAAA", true, false, 0)
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Meanwhile a second one (the failpoint's one pause is used up) creates the object.
        s.create_and_write(oid(5), 4096, 100, b"BBBB", true, false, 0)
            .unwrap();
        fail::remove("store::create_after_check");
        first.join().unwrap().unwrap();
        assert_eq!(s.read(oid(5), 0, 4).unwrap(), b"AAAA");
        assert_eq!(
            s.read(oid(5), 100, 4).unwrap(),
            b"BBBB",
            "the second write survives"
        );
        assert_eq!(s.list().unwrap(), vec![oid(5)]);
        assert_eq!(std::fs::read_dir(d.path().join("obj")).unwrap().count(), 1);
        scenario.teardown();
    }

    #[test]
    fn every_write_counts_in_the_version_and_an_install_carries_its_source() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        assert_eq!(
            s.create_and_write(oid(1), 4096, 0, b"a", true, false, 0)
                .unwrap(),
            1
        );
        assert_eq!(s.write(oid(1), 1, b"b", true).unwrap(), 2);
        assert_eq!(
            s.create_and_write(oid(1), 4096, 2, b"c", true, false, 0)
                .unwrap(),
            3
        );
        // A write sent again (a gateway's retry, same id) is not counted again.
        assert_eq!(s.write_as(oid(1), 0, b"a", true, 77).unwrap(), 4);
        assert_eq!(s.write_as(oid(1), 0, b"a", true, 77).unwrap(), 4);
        assert_eq!(s.write_as(oid(1), 0, b"a", true, 78).unwrap(), 5);
        assert_eq!(s.write(oid(1), 1, b"b", true).unwrap(), 6);
        assert_eq!(s.write(oid(1), 1, b"b", true).unwrap(), 7);
        // Kept as it is: a copy-on-write that came second.
        assert_eq!(
            s.create_and_write(oid(1), 4096, 0, b"zzz", true, true, 0)
                .unwrap(),
            7
        );
        assert_eq!(s.read(oid(1), 0, 3).unwrap(), b"abc");
        assert_eq!(s.version(oid(1), CURRENT).unwrap(), 7);
        s.install(oid(2), &[0u8; 4096], (41, 0)).unwrap();
        assert_eq!(s.write(oid(2), 0, b"x", false).unwrap(), 42);
        assert_eq!(
            s.tagged_list().unwrap(),
            vec![(oid(1), CURRENT, 7), (oid(2), CURRENT, 42)]
        );
        s.make_stale(oid(2), 7).unwrap();
        assert_eq!(s.best(oid(2)).unwrap(), Some((7, 42)));
        // A copy from a store without versions (the original's) is version 0.
        std::fs::write(d.path().join("obj").join(oid(3).file_name()), [0u8; 16]).unwrap();
        assert_eq!(s.version(oid(3), CURRENT).unwrap(), 0);
        assert_eq!(s.write(oid(3), 0, b"y", true).unwrap(), 1);
        assert!(matches!(s.version(oid(4), CURRENT), Err(StoreError::NoObj)));
    }

    #[test]
    fn epochs_config_and_single_instance() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        assert!(matches!(
            Store::open(d.path(), true),
            Err(StoreError::AlreadyRunning(_))
        ));
        assert_eq!(s.latest_epoch().unwrap(), 0);
        let n = SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), 7000),
            nr_vnodes: 128,
            zone: 0,
            space: 1,
        };
        s.write_epoch(1, &[n], 5).unwrap();
        s.write_epoch(2, &[n, n], 6).unwrap();
        assert_eq!(s.latest_epoch().unwrap(), 2);
        assert_eq!(s.read_epoch(1).unwrap(), Some((vec![n], 5)));
        assert_eq!(s.read_epoch(3).unwrap(), None);
        assert!(d.path().join("epoch/00000002").exists());
        s.remove_epochs().unwrap();
        assert_eq!(s.latest_epoch().unwrap(), 0);
        assert_eq!(s.read_config().unwrap(), None);
        let c = Config {
            ctime: 1,
            copies: 3,
            store: "plain".into(),
            version: 6,
            ..Default::default()
        };
        s.write_config(&c).unwrap();
        assert_eq!(s.read_config().unwrap(), Some(c));
        assert!(s.space().unwrap().0 > 0);
    }
}
