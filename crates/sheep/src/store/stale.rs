//! Copies this node no longer serves, kept until every node has recovered the epoch:
//! `obj/.stale/<oid>.<epoch>` as the original's plain store, where the epoch is the last one in
//! which the copy was current. Recovery reads them when no current copy exists anywhere.
//! Owns: the stale area. Never: deciding what is stale (that is `recovery`).

use super::{io, Store, StoreError};
use proto::Oid;
use std::path::PathBuf;

/// Tag of a copy in `obj/` (current), next to the epochs of stale copies.
pub const CURRENT: u32 = proto::objlist::TAG_CURRENT;

impl Store {
    fn stale_dir(&self) -> PathBuf {
        self.obj.join(".stale")
    }

    fn stale_path(&self, oid: Oid, tag: u32) -> PathBuf {
        self.stale_dir().join(format!("{}.{tag}", oid.file_name()))
    }

    /// The file of the copy of `oid` tagged `tag`: current (`CURRENT`) or stale.
    pub(super) fn tagged_path(&self, oid: Oid, tag: u32) -> PathBuf {
        if tag == CURRENT {
            self.path(oid)
        } else {
            self.stale_path(oid, tag)
        }
    }

    /// Stale copies: (oid, epoch in which the copy was last current).
    pub fn stale_list(&self) -> Result<Vec<(Oid, u32)>, StoreError> {
        let dir = self.stale_dir();
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
        out.sort();
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
        let p = self.stale_path(oid, tag);
        let f = std::fs::File::open(&p).map_err(io("open", &p))?;
        let size = f.metadata().map_err(io("stat", &p))?.len();
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(StoreError::OutOfRange);
        }
        let mut buf = vec![0u8; len];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, offset).map_err(io("read", &p))?;
        Ok(buf)
    }

    /// Moves the current copy of `oid` to the stale area, last current in epoch `tag`.
    pub fn make_stale(&self, oid: Oid, tag: u32) -> Result<(), StoreError> {
        let dir = self.stale_dir();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let from = self.path(oid);
        let to = self.stale_path(oid, tag);
        std::fs::rename(&from, &to).map_err(io("rename", &from))
    }

    /// Installs a whole recovered object as the current copy, durably, with the version (and
    /// the last write id) of the copy it came from.
    pub fn install(&self, oid: Oid, data: &[u8], stamp: (u64, u64)) -> Result<(), StoreError> {
        let path = self.path(oid);
        let tmp = path.with_extension(format!(
            "tmp{}",
            self.tmp_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = (|| {
            let f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
            std::os::unix::fs::FileExt::write_all_at(&f, data, 0).map_err(io("write", &tmp))?;
            super::version::set_with_id(&f, &tmp, stamp.0, stamp.1)?;
            f.sync_all().map_err(io("sync", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
            self.sync_dir(&self.obj)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes the stale copies of `oid`.
    pub fn remove_stale(&self, oid: Oid) -> Result<(), StoreError> {
        for (o, tag) in self.stale_list()? {
            if o == oid {
                let p = self.stale_path(o, tag);
                std::fs::remove_file(&p).map_err(io("remove", &p))?;
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
        let mut list = self.stale_list()?;
        list.retain(|(oid, _)| !keep(*oid));
        for (oid, tag) in &list {
            let p = self.stale_path(*oid, *tag);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &p)(e)),
            }
        }
        Ok(list.len())
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
