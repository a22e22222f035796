//! Copies this node no longer serves, kept until every node has recovered the epoch:
//! `<disk>/.stale/<oid>.<epoch>` as the original's plain store, where the epoch is the last one
//! in which the copy was current; a copy is set aside on the disk it is on. Recovery reads them
//! when no current copy exists anywhere.
//! Owns: the stale area. Never: deciding what is stale (that is `recovery`).

use super::{io, read_file, Layout, Store, StoreError};
use proto::Oid;
use std::path::{Path, PathBuf};

/// Tag of a copy in `obj/` (current), next to the epochs of stale copies.
pub const CURRENT: u32 = proto::objlist::TAG_CURRENT;

/// Where the stale copy of `oid` tagged `tag` is on the disk `disk`.
pub(super) fn path_in(disk: &Path, oid: Oid, tag: u32) -> PathBuf {
    disk.join(".stale")
        .join(format!("{}.{tag}", oid.file_name()))
}

/// The stale copies on one disk: (oid, epoch in which the copy was last current).
pub(super) fn list_in(disk: &Path) -> Result<Vec<(Oid, u32)>, StoreError> {
    let dir = disk.join(".stale");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io("list", &dir))?;
        let name = e.file_name();
        let Some((o, t)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        if let (Some(oid), Ok(tag)) = (Oid::parse_file_name(o), t.parse::<u32>()) {
            out.push((oid, tag));
        }
    }
    Ok(out)
}

impl Store {
    fn disk_dirs(&self) -> Vec<PathBuf> {
        self.layout().disks.iter().map(|d| d.path.clone()).collect()
    }

    /// The file of the stale copy of `oid` tagged `tag`, on whichever plugged disk has it
    /// (its home disk first).
    fn stale_file(l: &Layout, home: &Path, oid: Oid, tag: u32) -> Option<PathBuf> {
        std::iter::once(home)
            .chain(l.disks.iter().map(|d| d.path.as_path()))
            .map(|d| path_in(d, oid, tag))
            .find(|p| p.exists())
    }

    /// The file of the copy of `oid` tagged `tag` (`CURRENT` or stale) and its home path.
    pub(super) fn tagged_file(&self, oid: Oid, tag: u32) -> Result<PathBuf, StoreError> {
        self.at(oid, |l, home, path| {
            if tag == CURRENT {
                if path.exists() || self.bring_home(l, oid, home)? {
                    return Ok(path.to_path_buf());
                }
                return Err(StoreError::NoObj);
            }
            Self::stale_file(l, home, oid, tag).ok_or(StoreError::NoObj)
        })
    }

    /// Stale copies: (oid, epoch in which the copy was last current).
    pub fn stale_list(&self) -> Result<Vec<(Oid, u32)>, StoreError> {
        let mut out = Vec::new();
        for d in self.disk_dirs() {
            out.extend(list_in(&d)?);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The best copy of every object here: (oid, tag, version), the tag `CURRENT` for
    /// `obj/`, else the epoch of the newest stale one.
    pub fn tagged_list(&self) -> Result<Vec<(Oid, u32, u64)>, StoreError> {
        let mut best = std::collections::BTreeMap::new();
        for (oid, tag) in self.stale_list()? {
            let t = best.entry(oid).or_insert(tag);
            *t = (*t).max(tag);
        }
        for oid in self.list()? {
            best.insert(oid, CURRENT);
        }
        let mut out = Vec::with_capacity(best.len());
        for (oid, tag) in best {
            match self.version(oid, tag) {
                Ok(v) => out.push((oid, tag, v)),
                // Gone since the listing (removed, set aside): not here any more.
                Err(StoreError::NoObj) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The tag and version of the best copy of `oid` here, if any.
    pub fn best(&self, oid: Oid) -> Result<Option<(u32, u64)>, StoreError> {
        let tag = if self.exists(oid) {
            Some(CURRENT)
        } else {
            self.stale_list()?
                .into_iter()
                .filter(|(o, _)| *o == oid)
                .map(|(_, t)| t)
                .max()
        };
        match tag {
            None => Ok(None),
            Some(t) => match self.version(oid, t) {
                Ok(v) => Ok(Some((t, v))),
                Err(StoreError::NoObj) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// `len` bytes at `offset` of the copy of `oid` tagged `tag` (`CURRENT` or a stale epoch).
    pub fn read_tagged(
        &self,
        oid: Oid,
        tag: u32,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        if tag == CURRENT {
            return self.read(oid, offset, len);
        }
        self.at(oid, |l, home, _| {
            let p = Self::stale_file(l, home, oid, tag).ok_or(StoreError::NoObj)?;
            read_file(&p, offset, len)
        })
    }

    /// Moves the current copy of `oid` to the stale area of its disk, last current in epoch
    /// `tag`.
    pub fn make_stale(&self, oid: Oid, tag: u32) -> Result<(), StoreError> {
        self.at(oid, |l, home, path| {
            if !path.exists() && !self.bring_home(l, oid, home)? {
                return Err(StoreError::NoObj);
            }
            let to = path_in(home, oid, tag);
            let dir = to.parent().unwrap_or(home);
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            std::fs::rename(path, &to).map_err(io("rename", path))
        })
    }

    /// Installs a whole recovered object as the current copy, durably, with the version (and
    /// the last write id) of the copy it came from.
    pub fn install(&self, oid: Oid, data: &[u8], stamp: (u64, u64)) -> Result<(), StoreError> {
        self.at(oid, |l, home, path| {
            // A copy on another disk goes first: one current copy per node.
            self.bring_home(l, oid, home)?;
            let tmp = self.tmp_name(home, oid);
            let result = (|| {
                let f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
                std::os::unix::fs::FileExt::write_all_at(&f, data, 0).map_err(io("write", &tmp))?;
                super::version::set_with_id(&f, &tmp, stamp.0, stamp.1)?;
                f.sync_all().map_err(io("sync", &tmp))?;
                std::fs::rename(&tmp, path).map_err(io("rename", path))?;
                self.sync_dir(home)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
    }

    /// Removes the stale copies of `oid`.
    pub fn remove_stale(&self, oid: Oid) -> Result<(), StoreError> {
        for d in self.disk_dirs() {
            for (o, tag) in list_in(&d)? {
                if o == oid {
                    let p = path_in(&d, o, tag);
                    std::fs::remove_file(&p).map_err(io("remove", &p))?;
                }
            }
        }
        Ok(())
    }

    /// Removes every stale copy (every node has recovered the current epoch).
    pub fn purge_stale(&self) -> Result<usize, StoreError> {
        self.purge_stale_except(|_| false)
    }

    /// Removes every stale copy but those of the objects `keep` names; returns how many went.
    pub fn purge_stale_except(&self, keep: impl Fn(Oid) -> bool) -> Result<usize, StoreError> {
        let mut n = 0;
        for d in self.disk_dirs() {
            let mut list = list_in(&d)?;
            list.retain(|(oid, _)| !keep(*oid));
            for (oid, tag) in &list {
                let p = path_in(&d, *oid, *tag);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("remove", &p)(e)),
                }
            }
            n += list.len();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Vid;

    #[test]
    fn stale_copies_tagged_and_preferred_by_age() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), true).unwrap();
        let a = Oid::data(Vid(7), 1);
        s.create_and_write(a, 8, 0, b"old", true, false, 0).unwrap();
        s.make_stale(a, 3).unwrap();
        assert!(!s.exists(a));
        s.create_and_write(a, 8, 0, b"newer", true, false, 0)
            .unwrap();
        s.make_stale(a, 5).unwrap();
        assert_eq!(s.stale_list().unwrap(), vec![(a, 3), (a, 5)]);
        assert_eq!(s.tagged_list().unwrap(), vec![(a, 5, 1)]);
        assert_eq!(s.best(a).unwrap(), Some((5, 1)));
        assert_eq!(s.read_tagged(a, 5, 0, 5).unwrap(), b"newer");
        assert_eq!(s.read_tagged(a, 3, 0, 3).unwrap(), b"old");
        s.install(a, b"current!", (9, 0)).unwrap();
        assert_eq!(s.best(a).unwrap(), Some((CURRENT, 9)));
        assert_eq!(
            s.list().unwrap(),
            vec![a],
            "the stale area is not listed as objects"
        );
        assert_eq!(s.purge_stale().unwrap(), 2);
        s.remove_stale(a).unwrap();
        assert!(s.stale_list().unwrap().is_empty());
    }
}
