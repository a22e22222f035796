//! Write admission per VDI on this node: every write to a VDI's objects (data objects, its
//! inode's table) holds a ticket while it runs, from its first look at the table to its last
//! copy. A VDI that is being snapshotted is frozen: it admits no new writer, and the snapshot
//! waits until the tickets in flight are returned (drained) before it copies the table, so no
//! write can land in the frozen inode after the copy. Writers that found the VDI frozen wait
//! for the snapshot to commit or abort, then look again (and follow the name to the new VDI).
//!
//! The frozen set follows the cluster state (`ClusterState::freezing`); the core loop sets it
//! before it confirms the freeze to the snapshotting node.
//! Owns: the tickets and the frozen set. Never: I/O, cluster messages.

use proto::SdResult;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A drain that waits longer than this says what it waits for.
const SLOW_DRAIN: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Inner {
    frozen: BTreeSet<u32>,
    /// Per VDI, the tickets out: their number and when each was taken.
    active: HashMap<u32, HashMap<u64, Instant>>,
    next: u64,
}

impl Inner {
    /// How many writes to `vid` are in flight and how long the oldest has run.
    fn in_flight(&self, vid: u32) -> (usize, Duration) {
        self.active.get(&vid).map_or((0, Duration::ZERO), |t| {
            let oldest = t.values().min().map_or(Duration::ZERO, |s| s.elapsed());
            (t.len(), oldest)
        })
    }
}

pub struct Admission {
    inner: Mutex<Inner>,
    /// Bumped whenever a VDI is frozen or thawed, or its last ticket comes back.
    changed: watch::Sender<u64>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            inner: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// Held while a write to `vid` runs.
pub struct Ticket<'a> {
    adm: &'a Admission,
    vid: u32,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let last = {
            let mut g = self.adm.lock();
            let last = match g.active.get_mut(&self.vid) {
                Some(t) => {
                    t.remove(&self.id);
                    t.is_empty()
                }
                None => false,
            };
            if last {
                g.active.remove(&self.vid);
            }
            last
        };
        if last {
            self.adm.bump();
        }
    }
}

/// A wait for the next change, taken before the condition is checked so none is missed.
pub struct Waiter(watch::Receiver<u64>);

impl Waiter {
    /// Waits for the next change, at most `max`; false on timeout.
    pub async fn wait(mut self, max: Duration) -> bool {
        matches!(
            tokio::time::timeout(max, self.0.changed()).await,
            Ok(Ok(()))
        )
    }
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn waiter(&self) -> Waiter {
        Waiter(self.changed.subscribe())
    }

    /// A ticket for a write to `vid`, unless it is frozen.
    pub fn try_enter(&self, vid: u32) -> Option<Ticket<'_>> {
        let mut g = self.lock();
        if g.frozen.contains(&vid) {
            return None;
        }
        g.next += 1;
        let id = g.next;
        g.active.entry(vid).or_default().insert(id, Instant::now());
        Some(Ticket { adm: self, vid, id })
    }

    /// A ticket for `vid`, waiting (at most `max`) while it is frozen.
    pub async fn enter(&self, vid: u32, max: Duration) -> Result<Ticket<'_>, SdResult> {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let w = self.waiter();
            if let Some(t) = self.try_enter(vid) {
                return Ok(t);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                tracing::warn!("writes to {vid:x} stayed frozen for {max:?}");
                return Err(SdResult::EIO);
            }
            w.wait(left).await;
        }
    }

    pub fn is_frozen(&self, vid: u32) -> bool {
        self.lock().frozen.contains(&vid)
    }

    /// Makes the frozen set `frozen` (from the cluster state).
    pub fn set_frozen(&self, frozen: impl IntoIterator<Item = u32>) {
        let new: BTreeSet<u32> = frozen.into_iter().collect();
        let changed = {
            let mut g = self.lock();
            let changed = g.frozen != new;
            g.frozen = new;
            changed
        };
        if changed {
            self.bump();
        }
    }

    /// Waits (at most `max`) until no write to `vid` is in flight here; false on timeout.
    pub async fn drain(&self, vid: u32, max: Duration) -> bool {
        let start = tokio::time::Instant::now();
        let deadline = start + max;
        let mut said = false;
        loop {
            let w = self.waiter();
            if !self.lock().active.contains_key(&vid) {
                if said {
                    tracing::info!("writes to {vid:x} drained in {:?}", start.elapsed());
                }
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let (n, oldest) = self.lock().in_flight(vid);
                tracing::warn!(
                    "{n} writes to {vid:x} still in flight after {max:?} (the oldest for {oldest:?})"
                );
                return false;
            }
            let slow = start + SLOW_DRAIN;
            if !said && now >= slow {
                said = true;
                let (n, oldest) = self.lock().in_flight(vid);
                tracing::info!(
                    "draining writes to {vid:x}: {n} in flight after {SLOW_DRAIN:?} (the oldest \
                     for {oldest:?})"
                );
            }
            let until = if said { deadline } else { deadline.min(slow) };
            w.wait(until - now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frozen_vdis_admit_no_writer_and_drain_waits_for_those_in_flight() {
        let a = std::sync::Arc::new(Admission::default());
        let t = a.try_enter(7).unwrap();
        a.set_frozen([7]);
        assert!(a.try_enter(7).is_none(), "no new writer once frozen");
        assert!(a.try_enter(8).is_some(), "other VDIs go on");
        assert!(!a.drain(7, Duration::from_millis(50)).await);
        let a2 = a.clone();
        let drained = tokio::spawn(async move { a2.drain(7, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(t);
        assert!(
            drained.await.unwrap(),
            "drained once the last ticket is back"
        );
        let a3 = a.clone();
        let waiting =
            tokio::spawn(async move { a3.enter(7, Duration::from_secs(5)).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a writer waits while frozen");
        a.set_frozen([]);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        a.set_frozen([7]);
        assert_eq!(
            a.enter(7, Duration::from_millis(30)).await.map(|_| ()),
            Err(SdResult::EIO)
        );
    }
}
