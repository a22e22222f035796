//! Objects, the epoch log and the config file of a node, laid out as the original's plain
//! store: `epoch/%08u`, `config` and `lock` in the meta directory, objects as
//! `<disk>/<16 hex digits of the oid>` on the node's disks (`disks`: one, `META/obj`, unless
//! several are given), stale copies in each disk's `.stale`.
//!
//! New objects are written to a temporary file, sized (sparse, zero-filled), synced and renamed
//! into place, so a crash never leaves a half-created object under its real name. Writes are
//! synced before they return unless the node runs with -n. Synchronous: callers run these in
//! blocking threads; many may run at once (no lock around I/O but a shared one on the disk
//! set, which a plug, an unplug or a failed disk takes alone for the moment it changes it).
//!
//! With several disks an object found on another disk than the ring's (the disks changed) is
//! moved home before it is used, so a node holds at most one current copy of an object. A
//! disk whose I/O fails (EIO, a vanished directory) is taken out at once: the request gets
//! NETWORK_ERROR (the gateway tries again), `disk_events` is told, and the node recovers
//! what the disk held from the other nodes.
//! Owns: the files. Never: placement among nodes or networking.

mod disks;
mod stale;
mod version;
pub use stale::CURRENT;

use disks::{Disk, Draining, Layout, Record};
use proto::config::Config;
use proto::{Oid, SdNode, SdResult};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

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
    #[error("{0} is meta-store, abort")]
    MetaStore(PathBuf),
    #[error("There isn't any available disk!")]
    NoDisk,
    #[error("disk {0} failed and was unplugged")]
    DiskFailed(PathBuf),
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
            // Recovery reads it again later; a gateway tries again (the disk is out now).
            StoreError::Busy | StoreError::DiskFailed(_) => SdResult::NETWORK_ERROR,
            StoreError::AlreadyRunning(_)
            | StoreError::MetaStore(_)
            | StoreError::NoDisk
            | StoreError::Io { .. } => SdResult::EIO,
        }
    }

    /// The file an I/O error was about.
    fn path(&self) -> Option<&Path> {
        match self {
            StoreError::Io { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Whether the error says the disk is gone or broken rather than something about one
    /// request (a missing object, a full disk, too many open files).
    fn is_disk_fault(&self) -> bool {
        match self {
            StoreError::Io { source, what, .. } => match source.raw_os_error() {
                Some(
                    libc::EIO
                    | libc::EROFS
                    | libc::ENODEV
                    | libc::ENXIO
                    | libc::ESTALE
                    | libc::EUCLEAN
                    | libc::ENOTCONN
                    | libc::ENOTDIR,
                ) => true,
                // A file could not be made in the disk's directory: it is gone.
                Some(libc::ENOENT) => *what == "create",
                _ => false,
            },
            _ => false,
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

/// One disk as `dog node md info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub path: PathBuf,
    pub free: u64,
    /// Bytes its current copies take.
    pub used: u64,
}

/// Serialise the move of one object between disks (oid hash modulo this many).
const HOMING_STRIPES: usize = 64;

pub struct Store {
    dir: PathBuf,
    epoch: PathBuf,
    nosync: bool,
    _lock: File,
    tmp_seq: AtomicU64,
    versions: Vec<Mutex<()>>,
    layout: RwLock<Layout>,
    homing: Vec<Mutex<()>>,
    /// Counts the changes of the disk set (a plug, an unplug, a failed disk).
    disk_events: tokio::sync::watch::Sender<u64>,
}

impl Store {
    /// A store on one disk: `dir/obj`.
    pub fn open(dir: &Path, nosync: bool) -> Result<Store, StoreError> {
        Store::open_disks(dir, &[], nosync)
    }

    /// A store with its meta files in `dir` and its objects on `disks` (none: `dir/obj`).
    /// A disk that cannot be used is left out with a warning; none usable is an error. A disk
    /// that left this store (unplugged, failed) and is given again has its copies set aside.
    pub fn open_disks(dir: &Path, disks: &[PathBuf], nosync: bool) -> Result<Store, StoreError> {
        let epoch = dir.join("epoch");
        for d in [dir, &epoch] {
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
        let paths: Vec<PathBuf> = if disks.is_empty() {
            vec![disks::clean(&dir.join("obj"))]
        } else {
            disks.iter().map(|d| disks::clean(d)).collect()
        };
        for p in &paths {
            if !disks.is_empty() && p.join("config").exists() && p.join("epoch").exists() {
                return Err(StoreError::MetaStore(p.clone()));
            }
        }
        let record = Record::read(dir)?;
        let mut ready = Vec::new();
        for p in paths {
            match disks::prepare(&p, false) {
                Ok(d) => ready.push(Arc::new(d)),
                Err(e) => tracing::error!("disk {} left out: {e}", p.display()),
            }
        }
        if ready.is_empty() {
            return Err(StoreError::NoDisk);
        }
        let store = Store {
            dir: dir.to_path_buf(),
            epoch,
            nosync,
            _lock: lock,
            tmp_seq: AtomicU64::new(0),
            versions: (0..version::STRIPES).map(|_| Default::default()).collect(),
            layout: RwLock::new(Layout::default()),
            homing: (0..HOMING_STRIPES).map(|_| Default::default()).collect(),
            disk_events: tokio::sync::watch::Sender::new(0),
        };
        let mut left = Default::default();
        if let Some(r) = record {
            for d in &ready {
                if !r.plugged.contains(&d.path) {
                    let tag = r.left.get(&d.path).copied().unwrap_or(1).max(1);
                    let n = store.set_aside_disk(&d.path, tag)?;
                    if n > 0 {
                        tracing::warn!(
                            "disk {} is back: its {n} copies are set aside as of epoch {tag}",
                            d.path.display()
                        );
                    }
                }
            }
            left = r.left;
        }
        *store.layout.write().unwrap_or_else(|e| e.into_inner()) = Layout::new(ready, vec![]);
        store.record(left, &[])?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn layout(&self) -> RwLockReadGuard<'_, Layout> {
        self.layout.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes whenever the disk set does.
    pub fn disk_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.disk_events.subscribe()
    }

    /// How many disks are plugged.
    pub fn disk_count(&self) -> usize {
        self.layout().disks.len()
    }

    /// Writes the record of the disks plugged now, with `left` (the epochs departed disks
    /// left in) and `gone` added to it at the newest epoch.
    fn record(
        &self,
        mut left: std::collections::BTreeMap<PathBuf, u32>,
        gone: &[PathBuf],
    ) -> Result<(), StoreError> {
        let epoch = self.latest_epoch()?.max(1);
        for g in gone {
            left.insert(g.clone(), epoch);
        }
        let plugged: Vec<PathBuf> = self.layout().disks.iter().map(|d| d.path.clone()).collect();
        left.retain(|p, _| !plugged.contains(p));
        let r = Record { plugged, left };
        self.write_atomic(&self.dir.join("disks"), &r.encode())
    }

    /// Moves every current copy on the disk at `path` into its stale area, tagged `tag`.
    fn set_aside_disk(&self, path: &Path, tag: u32) -> Result<usize, StoreError> {
        let mut n = 0;
        for oid in list_dir(path)? {
            let from = path.join(oid.file_name());
            let to = stale::path_in(path, oid, tag);
            std::fs::rename(&from, &to).map_err(io("rename", &from))?;
            n += 1;
        }
        Ok(n)
    }

    /// Runs `f` with the layout, the home disk of `oid` and the object's path there. An
    /// error that says a disk broke takes that disk out and becomes `DiskFailed`.
    fn at<T>(
        &self,
        oid: Oid,
        f: impl FnOnce(&Layout, &Path, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let broken = {
            let l = self.layout();
            let home = l.home(oid).ok_or(StoreError::NoDisk)?.clone();
            let path = home.path.join(oid.file_name());
            let r = match injected_fault(&home.path) {
                Some(e) => Err(e),
                None => f(&l, &home.path, &path),
            };
            match r {
                Err(e) => match self.culprit(&l, &home, &e) {
                    Some(d) => d,
                    None => return Err(e),
                },
                r => return r,
            }
        };
        self.fail_disk(&broken);
        Err(StoreError::DiskFailed(broken))
    }

    /// The disk an error shows broken, if any: the one the failing file is on, or the home
    /// disk when an object is missing because its directory is.
    fn culprit(&self, l: &Layout, home: &Disk, e: &StoreError) -> Option<PathBuf> {
        if matches!(e, StoreError::NoObj) {
            return (!home.path.is_dir()).then(|| home.path.clone());
        }
        if !e.is_disk_fault() {
            return None;
        }
        let p = e.path()?;
        l.disks
            .iter()
            .map(|d| &d.path)
            .chain(l.draining.iter().map(|d| &d.disk.path))
            .filter(|d| p.starts_with(d))
            .max_by_key(|d| d.as_os_str().len())
            .cloned()
    }

    /// Takes a broken disk out of the store (its copies are recovered from other nodes).
    fn fail_disk(&self, path: &Path) {
        let changed = {
            let mut l = self.layout.write().unwrap_or_else(|e| e.into_inner());
            let before = (l.disks.len(), l.draining.len());
            let disks: Vec<Arc<Disk>> =
                l.disks.iter().filter(|d| d.path != path).cloned().collect();
            let draining: Vec<Arc<Draining>> = l
                .draining
                .iter()
                .filter(|d| d.disk.path != path)
                .cloned()
                .collect();
            let changed = before != (disks.len(), draining.len());
            if changed {
                *l = Layout::new(disks, draining);
            }
            changed
        };
        if !changed {
            return;
        }
        tracing::error!(
            "disk {} failed: unplugged, {} disks left",
            path.display(),
            self.disk_count()
        );
        let left = Record::read(&self.dir)
            .ok()
            .flatten()
            .map(|r| r.left)
            .unwrap_or_default();
        if let Err(e) = self.record(left, &[path.to_path_buf()]) {
            tracing::error!("recording the disks: {e}");
        }
        self.disk_events.send_modify(|n| *n += 1);
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

    fn tmp_name(&self, dir: &Path, oid: Oid) -> PathBuf {
        dir.join(format!(
            "{}.tmp{}.{}",
            oid.file_name(),
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ))
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

    /// Makes sure the current copy of `oid`, if this node has one on any disk, is at `home`
    /// (the object's home disk): a copy on another plugged disk is moved there (the newest,
    /// should there be several; the others go), one on a disk being emptied is copied. True
    /// when the object is at home now.
    fn bring_home(&self, l: &Layout, oid: Oid, home: &Path) -> Result<bool, StoreError> {
        if !l.several() {
            return Ok(false);
        }
        let name = oid.file_name();
        let stripe = (proto::hash::sd_hash_oid(oid.0) % HOMING_STRIPES as u64) as usize;
        let _g = self.homing[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let to = home.join(&name);
        if to.exists() {
            return Ok(true);
        }
        let mut found = Vec::new();
        for d in l.disks.iter().filter(|d| d.path != home) {
            let p = d.path.join(&name);
            match self.stamp_at(&p) {
                Ok(s) => found.push((s, p)),
                Err(StoreError::NoObj) => {}
                Err(e) => return Err(e),
            }
        }
        found.sort();
        if let Some((_, newest)) = found.pop() {
            self.move_file(oid, &newest, home, true)?;
            for (_, older) in found {
                tracing::warn!("{oid}: an older second copy {} removed", older.display());
                std::fs::remove_file(&older).map_err(io("remove", &older))?;
            }
            return Ok(true);
        }
        for dr in &l.draining {
            let mut done = dr.done.lock().unwrap_or_else(|e| e.into_inner());
            if done.contains(&oid) {
                continue;
            }
            let p = dr.disk.path.join(&name);
            if p.exists() {
                self.move_file(oid, &p, home, false)?;
                done.insert(oid);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Puts the file `from` (a copy of `oid`, current or stale) into the directory `to_dir`
    /// under the same name, with its version: a rename where it can be, else a copy (sparse)
    /// synced before the source goes; the source stays unless `remove`.
    fn move_file(
        &self,
        oid: Oid,
        from: &Path,
        to_dir: &Path,
        remove: bool,
    ) -> Result<(), StoreError> {
        let name = from.file_name().unwrap_or_default();
        let to = to_dir.join(name);
        if remove {
            match rename_noreplace(from, &to) {
                Ok(true) => return self.sync_dir(to_dir),
                Ok(false) => {
                    return Err(StoreError::Io {
                        what: "move",
                        path: to,
                        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
                Err(e) => return Err(io("move", from)(e)),
            }
        }
        let f = File::open(from).map_err(io("open", from))?;
        let data = std::fs::read(from).map_err(io("read", from))?;
        let stamp = version::get_with_id(&f, from)?;
        let tmp = self.tmp_name(to_dir, oid);
        let result = (|| {
            let t = File::create(&tmp).map_err(io("create", &tmp))?;
            t.set_len(data.len() as u64).map_err(io("write", &tmp))?;
            for (i, chunk) in data.chunks(4096).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    t.write_all_at(chunk, i as u64 * 4096)
                        .map_err(io("write", &tmp))?;
                }
            }
            version::set_with_id(&t, &tmp, stamp.0, stamp.1)?;
            t.sync_all().map_err(io("sync", &tmp))?;
            if !rename_noreplace(&tmp, &to).map_err(io("rename", &to))? {
                return Err(StoreError::Io {
                    what: "move",
                    path: to.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                });
            }
            self.sync_dir(to_dir)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        if remove {
            std::fs::remove_file(from).map_err(io("remove", from))?;
        }
        Ok(())
    }

    /// Runs `op` on the object's home path; if it is not there, once more after looking for
    /// it on the other disks.
    fn homed<T>(
        &self,
        oid: Oid,
        op: impl Fn(&Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.at(oid, |l, home, path| match op(path) {
            Err(StoreError::NoObj) if self.bring_home(l, oid, home)? => op(path),
            r => r,
        })
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
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > obj_size)
        {
            return Err(StoreError::OutOfRange);
        }
        self.at(oid, |l, home, path| {
            let existing = || {
                if keep {
                    self.version_at(path)
                } else {
                    self.write_at(oid, path, offset, data, sync, id)
                }
            };
            if path.exists() || self.bring_home(l, oid, home)? {
                return existing();
            }
            fail::fail_point!("store::create_after_check");
            let tmp = self.tmp_name(home, oid);
            let result = (|| {
                let f = File::create(&tmp).map_err(io("create", &tmp))?;
                f.set_len(obj_size).map_err(io("create", &tmp))?;
                f.write_all_at(data, offset).map_err(io("write", &tmp))?;
                version::set_with_id(&f, &tmp, 1, id)?;
                if sync {
                    self.sync(&f, &tmp)?;
                }
                if !rename_noreplace(&tmp, path).map_err(io("rename", path))? {
                    // Another request created it since the check: never replace it, write
                    // into it.
                    let _ = std::fs::remove_file(&tmp);
                    return existing();
                }
                if sync {
                    self.sync_dir(home)?;
                }
                Ok(1)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
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
        self.homed(oid, |path| self.write_at(oid, path, offset, data, sync, id))
    }

    fn write_at(
        &self,
        oid: Oid,
        path: &Path,
        offset: u64,
        data: &[u8],
        sync: bool,
        id: u64,
    ) -> Result<u64, StoreError> {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io("open", path))?;
        let len = f.metadata().map_err(io("stat", path))?.len();
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > len)
        {
            return Err(StoreError::OutOfRange);
        }
        f.write_all_at(data, offset).map_err(io("write", path))?;
        let v = self.bump(oid, &f, path, id)?;
        if sync {
            self.sync(&f, path)?;
        }
        Ok(v)
    }

    /// Makes every earlier write to this store durable (syncfs of each disk's file system).
    pub fn sync_all(&self) -> Result<(), StoreError> {
        if self.nosync {
            return Ok(());
        }
        let dirs: Vec<PathBuf> = self.layout().disks.iter().map(|d| d.path.clone()).collect();
        for dir in dirs {
            let d = File::open(&dir).map_err(io("open", &dir))?;
            // SAFETY: syncfs on a descriptor this function owns for the duration of the call.
            if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
                let e = io("sync", &dir)(std::io::Error::last_os_error());
                if e.is_disk_fault() {
                    self.fail_disk(&dir);
                    return Err(StoreError::DiskFailed(dir));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Exactly `len` bytes at `offset`.
    pub fn read(&self, oid: Oid, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.homed(oid, |path| read_file(path, offset, len))
    }

    /// Removes the object, and any stale copies of it (so recovery cannot bring it back).
    pub fn remove(&self, oid: Oid) -> Result<(), StoreError> {
        let r = self.homed(oid, |path| {
            std::fs::remove_file(path).map_err(io("remove", path))
        });
        self.forget_draining(oid);
        self.remove_stale(oid)?;
        r
    }

    /// A disk being emptied must not give `oid` again (it was removed or replaced whole).
    fn forget_draining(&self, oid: Oid) {
        for dr in &self.layout().draining {
            dr.done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(oid);
        }
    }

    pub fn exists(&self, oid: Oid) -> bool {
        self.at(oid, |l, home, path| {
            Ok(path.exists() || self.bring_home(l, oid, home)?)
        })
        .unwrap_or(false)
    }

    pub fn object_size(&self, oid: Oid) -> Result<u64, StoreError> {
        self.homed(oid, |path| {
            Ok(std::fs::metadata(path).map_err(io("stat", path))?.len())
        })
    }

    /// Every object stored here (on the plugged disks, and those a disk being emptied has
    /// still to give).
    pub fn list(&self) -> Result<Vec<Oid>, StoreError> {
        let l = self.layout();
        let mut out = Vec::new();
        for d in &l.disks {
            out.extend(list_dir(&d.path)?);
        }
        for dr in &l.draining {
            let done = dr.done.lock().unwrap_or_else(|e| e.into_inner());
            // A disk that fails while it is emptied gives nothing more.
            if let Ok(list) = list_dir(&dr.disk.path) {
                out.extend(list.into_iter().filter(|o| !done.contains(o)));
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// What the store holds: current copies, the disk space they take, stale copies.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let mut u = Usage::default();
        let dirs: Vec<PathBuf> = self.layout().disks.iter().map(|d| d.path.clone()).collect();
        for d in &dirs {
            let (n, bytes) = dir_usage(d)?;
            u.objects += n;
            u.bytes += bytes;
        }
        u.stale = self.stale_list()?.len() as u64;
        Ok(u)
    }

    /// Each plugged disk, in order, with its free space and the space its copies take.
    pub fn md_info(&self) -> Result<Vec<DiskInfo>, StoreError> {
        let dirs: Vec<PathBuf> = self.layout().disks.iter().map(|d| d.path.clone()).collect();
        let mut out = Vec::new();
        for path in dirs {
            let (_, free, _) = disks::statvfs(&path).unwrap_or((0, 0, 0));
            let used = dir_usage(&path).map(|u| u.1).unwrap_or(0);
            out.push(DiskInfo { path, free, used });
        }
        Ok(out)
    }

    /// Removes every object and stale copy (cluster format); disks being emptied are let go.
    pub fn purge_objects(&self) -> Result<(), StoreError> {
        let dirs: Vec<PathBuf> = {
            let mut l = self.layout.write().unwrap_or_else(|e| e.into_inner());
            let disks = l.disks.clone();
            *l = Layout::new(disks, vec![]);
            l.disks.iter().map(|d| d.path.clone()).collect()
        };
        for dir in dirs {
            for e in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
                let e = e.map_err(io("list", &dir))?;
                let p = e.path();
                let r = if e.file_name() == ".stale" {
                    std::fs::remove_dir_all(&p).and_then(|_| std::fs::create_dir(&p))
                } else if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(io("remove", &p))?;
            }
            self.sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Adds disks (`dog node md plug`): each is emptied first, as the original. Returns the
    /// paths added; a path already plugged, still being emptied, the meta directory or one
    /// that cannot be readied is left out with the reason logged.
    pub fn plug(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, StoreError> {
        let mut added = Vec::new();
        for p in paths.iter().map(|p| disks::clean(p)) {
            let (plugged, draining) = {
                let l = self.layout();
                (
                    l.find(&p).is_some(),
                    l.draining.iter().any(|d| d.disk.path == p),
                )
            };
            let why = if plugged {
                Some("already plugged")
            } else if draining {
                Some("still being emptied")
            } else if p == self.dir || (p.join("config").exists() && p.join("epoch").exists()) {
                Some("a meta-store")
            } else {
                None
            };
            if let Some(why) = why {
                tracing::error!("plug {}: refused, {why}", p.display());
                continue;
            }
            match disks::prepare(&p, true) {
                Ok(d) => added.push(Arc::new(d)),
                Err(e) => tracing::error!("plug {}: {e}", p.display()),
            }
        }
        if added.is_empty() {
            return Ok(Vec::new());
        }
        {
            let mut l = self.layout.write().unwrap_or_else(|e| e.into_inner());
            let mut disks = l.disks.clone();
            disks.extend(added.iter().cloned());
            let draining = l.draining.clone();
            *l = Layout::new(disks, draining);
        }
        let left = Record::read(&self.dir)?.map(|r| r.left).unwrap_or_default();
        self.record(left, &[])?;
        let names: Vec<PathBuf> = added.iter().map(|d| d.path.clone()).collect();
        tracing::info!("plugged {names:?}: {} disks", self.disk_count());
        self.disk_events.send_modify(|n| *n += 1);
        Ok(names)
    }

    /// Removes healthy disks (`dog node md unplug`): their copies are copied to the disks
    /// that now hold them, on demand and by `rebalance`, and stay on the unplugged disk.
    /// Returns the paths removed.
    pub fn unplug(&self, paths: &[PathBuf]) -> Result<Vec<PathBuf>, StoreError> {
        let wanted: Vec<PathBuf> = paths.iter().map(|p| disks::clean(p)).collect();
        let removed: Vec<PathBuf> = {
            let mut l = self.layout.write().unwrap_or_else(|e| e.into_inner());
            let (out, keep): (Vec<_>, Vec<_>) = l
                .disks
                .iter()
                .cloned()
                .partition(|d| wanted.contains(&d.path));
            let mut draining = l.draining.clone();
            draining.extend(out.iter().map(|d| {
                Arc::new(Draining {
                    disk: d.clone(),
                    done: Default::default(),
                })
            }));
            *l = Layout::new(keep, draining);
            out.iter().map(|d| d.path.clone()).collect()
        };
        for p in wanted.iter().filter(|p| !removed.contains(p)) {
            tracing::error!("unplug {}: not a plugged disk", p.display());
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        let left = Record::read(&self.dir)?.map(|r| r.left).unwrap_or_default();
        self.record(left, &removed)?;
        tracing::info!("unplugged {removed:?}: {} disks", self.disk_count());
        self.disk_events.send_modify(|n| *n += 1);
        Ok(removed)
    }

    /// Puts every copy on its home disk: those misplaced by a change of disks, and all those
    /// of disks being emptied (which are let go once done). Returns how many moved.
    pub fn rebalance(&self) -> Result<usize, StoreError> {
        let (disks, draining) = {
            let l = self.layout();
            if !l.several() {
                return Ok(0);
            }
            (l.disks.clone(), l.draining.clone())
        };
        let mut moved = 0;
        for d in &disks {
            for oid in list_dir(&d.path).unwrap_or_default() {
                let misplaced = self.at(oid, |l, home, _| {
                    Ok(home != d.path && self.bring_home(l, oid, home)?)
                });
                moved += usize::from(misplaced.unwrap_or(false));
            }
        }
        let mut finished = Vec::new();
        for dr in &draining {
            let from = &dr.disk.path;
            let result = (|| -> Result<(), StoreError> {
                for oid in list_dir(from)? {
                    if self.at(oid, |l, home, _| self.bring_home(l, oid, home))? {
                        moved += 1;
                    }
                }
                for (oid, tag) in stale::list_in(from)? {
                    self.at(oid, |_, home, _| {
                        let src = stale::path_in(from, oid, tag);
                        let dst = stale::path_in(home, oid, tag);
                        if dst.exists() {
                            return Ok(());
                        }
                        let dst_dir = dst.parent().unwrap_or(home);
                        std::fs::create_dir_all(dst_dir).map_err(io("create", dst_dir))?;
                        self.move_file(oid, &src, dst_dir, false)
                    })?;
                }
                Ok(())
            })();
            match result {
                Ok(()) => finished.push(dr.clone()),
                Err(e) => {
                    tracing::error!("emptying {}: {e}", from.display());
                    if matches!(e, StoreError::DiskFailed(_)) {
                        return Err(e);
                    }
                }
            }
        }
        if !finished.is_empty() {
            let mut l = self.layout.write().unwrap_or_else(|e| e.into_inner());
            let disks = l.disks.clone();
            let draining = l
                .draining
                .iter()
                .filter(|d| !finished.iter().any(|f| Arc::ptr_eq(f, d)))
                .cloned()
                .collect();
            *l = Layout::new(disks, draining);
            for f in &finished {
                tracing::info!("{} emptied", f.disk.path.display());
            }
        }
        Ok(moved)
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

    /// (total, free) bytes of the file systems of the plugged disks, each counted once.
    pub fn space(&self) -> Result<(u64, u64), StoreError> {
        let dirs: Vec<PathBuf> = self.layout().disks.iter().map(|d| d.path.clone()).collect();
        let mut seen = Vec::new();
        let (mut total, mut free) = (0, 0);
        for d in dirs {
            let (t, f, fsid) = disks::statvfs(&d)?;
            if !seen.contains(&fsid) {
                seen.push(fsid);
                total += t;
                free += f;
            }
        }
        Ok((total, free))
    }

    /// The space the node was measured with: the sum of its disks' (as the original).
    pub fn disk_space(&self) -> u64 {
        self.layout().disks.iter().map(|d| d.space).sum()
    }
}

/// A disk fault made on purpose (tests): `store::disk_eio=return(NAME)` fails object I/O on
/// the disk whose path ends with NAME with EIO; `return` alone, on the disk of the object.
fn injected_fault(disk: &Path) -> Option<StoreError> {
    fail::fail_point!("store::disk_eio", |name: Option<String>| {
        name.is_none_or(|n| disk.ends_with(n))
            .then_some(())
            .map(|_| StoreError::Io {
                what: "write",
                path: disk.join("injected"),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
    });
    None
}

/// The objects in one disk's directory (temporary files, the stale area and anything else
/// that is not named as an object are not).
fn list_dir(dir: &Path) -> Result<Vec<Oid>, StoreError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let e = e.map_err(io("list", dir))?;
        if let Some(oid) = e.file_name().to_str().and_then(Oid::parse_file_name) {
            out.push(oid);
        }
    }
    Ok(out)
}

/// How many objects one disk holds and the bytes they take.
fn dir_usage(dir: &Path) -> Result<(u64, u64), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let (mut n, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let e = e.map_err(io("list", dir))?;
        if e.file_name()
            .to_str()
            .and_then(Oid::parse_file_name)
            .is_none()
        {
            continue;
        }
        // An object removed since the listing is not counted.
        if let Ok(m) = e.metadata() {
            n += 1;
            bytes += m.blocks() * 512;
        }
    }
    Ok((n, bytes))
}

/// Exactly `len` bytes at `offset` of the file at `path`.
fn read_file(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
    let f = File::open(path).map_err(io("open", path))?;
    let size = f.metadata().map_err(io("stat", path))?.len();
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(StoreError::OutOfRange);
    }
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .map_err(io("read", path))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{NodeId, Vid};

    fn oid(i: u32) -> Oid {
        Oid::data(Vid(0x15d167), i)
    }

    /// Entries of a directory but the stale area.
    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != ".stale")
            .count()
    }

    /// A store with its meta files in `root/meta` and `n` disks `root/d0...`.
    fn multi(root: &Path, n: usize) -> (Store, Vec<PathBuf>) {
        let disks: Vec<PathBuf> = (0..n).map(|i| root.join(format!("d{i}"))).collect();
        (
            Store::open_disks(&root.join("meta"), &disks, true).unwrap(),
            disks,
        )
    }

    fn on_disk(disk: &Path, o: Oid) -> bool {
        disk.join(o.file_name()).exists()
    }

    #[test]
    fn objects_spread_over_the_disks_and_follow_a_plug() {
        let d = tempfile::tempdir().unwrap();
        let (s, disks) = multi(d.path(), 2);
        assert!(disks.iter().all(|p| p.join(".stale").is_dir()));
        for i in 0..64 {
            s.create_and_write(oid(i), 4096, 0, &i.to_le_bytes(), true, false, 0)
                .unwrap();
        }
        let per: Vec<usize> = disks.iter().map(|p| files(p)).collect();
        assert_eq!(per.iter().sum::<usize>(), 64);
        assert!(per.iter().all(|&n| n > 8), "{per:?}");
        assert_eq!(s.list().unwrap().len(), 64);
        let info = s.md_info().unwrap();
        assert_eq!(info.len(), 2);
        assert_eq!(info[0].path, disks[0]);
        let d2 = d.path().join("d2");
        std::fs::create_dir_all(&d2).unwrap();
        std::fs::write(d2.join("junk"), b"x").unwrap();
        let events = s.disk_events();
        assert_eq!(s.plug(std::slice::from_ref(&d2)).unwrap(), vec![d2.clone()]);
        assert!(events.has_changed().unwrap());
        assert!(!d2.join("junk").exists(), "a plugged disk is emptied first");
        assert!(s.plug(std::slice::from_ref(&d2)).unwrap().is_empty());
        // Before any pass, every object is still read, wherever it is.
        for i in 0..64 {
            assert_eq!(s.read(oid(i), 0, 4).unwrap(), i.to_le_bytes());
        }
        s.rebalance().unwrap();
        assert!(files(&d2) > 8, "the new disk takes its share");
        assert_eq!(
            disks.iter().chain([&d2]).map(|p| files(p)).sum::<usize>(),
            64,
            "moved, not copied"
        );
        assert_eq!(s.rebalance().unwrap(), 0);
        for i in 0..64 {
            assert_eq!(s.read(oid(i), 0, 4).unwrap(), i.to_le_bytes());
            assert_eq!(
                s.version(oid(i), CURRENT).unwrap(),
                1,
                "the version moves along"
            );
        }
    }

    #[test]
    fn an_unplugged_disk_is_copied_off_and_never_gives_back_what_was_removed() {
        let d = tempfile::tempdir().unwrap();
        let (s, disks) = multi(d.path(), 2);
        for i in 0..32 {
            s.create_and_write(oid(i), 4096, 0, b"old", true, false, 0)
                .unwrap();
        }
        let on0: Vec<u32> = (0..32).filter(|&i| on_disk(&disks[0], oid(i))).collect();
        assert!(on0.len() > 4);
        s.make_stale(oid(on0[0]), 3).unwrap();
        assert_eq!(
            s.unplug(&[disks[0].clone()]).unwrap(),
            vec![disks[0].clone()]
        );
        assert_eq!(s.disk_count(), 1);
        // Written through the copy made on demand; removed while the disk is still emptied.
        s.write(oid(on0[1]), 0, b"new", true).unwrap();
        s.remove(oid(on0[2])).unwrap();
        assert_eq!(
            s.list().unwrap().len(),
            30,
            "the unplugged disk's copies still count"
        );
        s.rebalance().unwrap();
        assert_eq!(s.read(oid(on0[1]), 0, 3).unwrap(), b"new");
        assert!(matches!(s.read(oid(on0[2]), 0, 3), Err(StoreError::NoObj)));
        assert!(
            !s.exists(oid(on0[2])),
            "a removed object does not come back"
        );
        assert_eq!(s.read_tagged(oid(on0[0]), 3, 0, 3).unwrap(), b"old");
        for &i in &on0[3..] {
            assert_eq!(s.read(oid(i), 0, 3).unwrap(), b"old");
            assert!(
                on_disk(&disks[0], oid(i)),
                "the unplugged disk keeps its files"
            );
        }
        assert_eq!(s.list().unwrap().len(), 30);
        // Unplugged disks are let go once emptied: a later write there is never seen.
        std::fs::write(disks[0].join(oid(on0[2]).file_name()), b"zzz").unwrap();
        assert!(!s.exists(oid(on0[2])));
    }

    #[test]
    fn a_vanished_disk_is_taken_out_and_the_others_go_on() {
        let d = tempfile::tempdir().unwrap();
        let (s, disks) = multi(d.path(), 2);
        for i in 0..32 {
            s.create_and_write(oid(i), 4096, 0, b"abc", true, false, 0)
                .unwrap();
        }
        let (gone, kept): (Vec<u32>, Vec<u32>) = (0..32).partition(|&i| on_disk(&disks[0], oid(i)));
        std::fs::rename(&disks[0], d.path().join("away")).unwrap();
        let events = s.disk_events();
        assert!(matches!(
            s.read(oid(gone[0]), 0, 3),
            Err(StoreError::DiskFailed(p)) if p == disks[0]
        ));
        assert!(events.has_changed().unwrap());
        assert_eq!(s.disk_count(), 1);
        // What it held is missing now (recovery fetches it); the rest is served as before.
        assert!(matches!(s.read(oid(gone[1]), 0, 3), Err(StoreError::NoObj)));
        for &i in &kept {
            assert_eq!(s.read(oid(i), 0, 3).unwrap(), b"abc");
        }
        s.create_and_write(oid(gone[1]), 4096, 0, b"new", true, false, 0)
            .unwrap();
        assert!(on_disk(&disks[1], oid(gone[1])));
        assert_eq!(
            StoreError::DiskFailed(disks[0].clone()).result(),
            SdResult::NETWORK_ERROR
        );
        // The last disk going leaves none.
        std::fs::rename(&disks[1], d.path().join("away1")).unwrap();
        assert!(s.read(oid(kept[0]), 0, 3).is_err());
        assert_eq!(s.disk_count(), 0);
        assert!(matches!(
            s.read(oid(kept[0]), 0, 3),
            Err(StoreError::NoDisk)
        ));
    }

    #[test]
    fn a_disk_that_comes_back_has_its_old_copies_set_aside() {
        let d = tempfile::tempdir().unwrap();
        let (s, disks) = multi(d.path(), 2);
        let n = SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), 7000),
            nr_vnodes: 128,
            zone: 0,
            space: 1,
        };
        s.write_epoch(4, &[n], 1).unwrap();
        for i in 0..16 {
            s.create_and_write(oid(i), 4096, 0, b"old", true, false, 0)
                .unwrap();
        }
        let on0: Vec<u32> = (0..16).filter(|&i| on_disk(&disks[0], oid(i))).collect();
        // Unplugged without a pass (the node stopped at once): its copies were not moved.
        s.unplug(&[disks[0].clone()]).unwrap();
        drop(s);
        let (s, _) = multi(d.path(), 2);
        for &i in &on0 {
            assert!(!s.exists(oid(i)), "never served as current");
            assert_eq!(s.best(oid(i)).unwrap(), Some((4, 1)), "kept for recovery");
        }
        drop(s);
        // Given again, it is in use as any other disk.
        let (s, _) = multi(d.path(), 2);
        s.create_and_write(oid(on0[0]), 4096, 0, b"new", true, false, 0)
            .unwrap();
        drop(s);
        let (s, _) = multi(d.path(), 2);
        assert_eq!(s.read(oid(on0[0]), 0, 3).unwrap(), b"new");
        s.write_config(&Config::default()).unwrap();
        assert!(matches!(
            Store::open_disks(&d.path().join("m2"), &[d.path().join("meta")], true),
            Err(StoreError::MetaStore(_))
        ));
    }

    #[test]
    fn of_two_copies_on_two_disks_the_newest_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let (s, disks) = multi(d.path(), 2);
        let o = oid(1);
        s.create_and_write(o, 4096, 0, b"v1", true, false, 0)
            .unwrap();
        s.write(o, 0, b"v2", true).unwrap();
        let (home, other) = if on_disk(&disks[0], o) {
            (&disks[0], &disks[1])
        } else {
            (&disks[1], &disks[0])
        };
        // A newer copy misplaced on the other disk and an older one at home is impossible by
        // the rules; an older one elsewhere with none at home is what a crash between the
        // two steps of a move can leave.
        std::fs::copy(home.join(o.file_name()), other.join(o.file_name())).unwrap();
        std::fs::remove_file(home.join(o.file_name())).unwrap();
        assert_eq!(s.read(o, 0, 2).unwrap(), b"v2");
        assert!(on_disk(home, o) && !on_disk(other, o));
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
        assert_eq!(files(&d.path().join("obj")), 1, "no temporary files left");
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
        assert_eq!(files(&d.path().join("obj")), 1);
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
