//! Which NBD connections of this node may write, connection by connection: the bookkeeping
//! behind the VDI writer lock and its handover to the next writer (live migration).
//!
//! A client (as `client_name` names it) takes a VDI's writer lock cluster-wide on its first
//! write; its connections to that VDI through this node share it. When a writer through
//! another node, or another client, asks for the lock, this node gives it away only if the
//! holder is quiescent: every connection of that client to that VDI here has no write
//! (WRITE, TRIM, WRITE_ZEROES) in flight, counting a write still waiting for the lock, and
//! every one that holds the lock has completed a FLUSH, begun with none of its writes in
//! flight, since its last write. That is what qemu does at the end of a migration: it drains,
//! flushes and stops writing. Giving the lock away marks those connections as no longer
//! holding it, in the same step as the check, so a write of theirs either began before the
//! decision (and the holder keeps the lock) or finds the connection without the lock after it
//! (and must take the lock back through the cluster, by the same rule, or get EPERM).
//!
//! Owns: that rule, and which connection holds the lock. Pure: no I/O, no awaits, no clocks;
//! `NbdServer` keeps it under a mutex. Never: the cluster-wide lock itself (that is
//! `cluster::state`), sockets, volumes.

use std::collections::HashMap;

/// A connection's id in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

/// An open volume's identity: connections to one VDI through one node share one volume.
pub type VolumeKey = usize;

#[derive(Clone, Debug)]
struct Conn {
    client: String,
    volume: VolumeKey,
    /// The VDI id whose lock this connection holds (as it was when taken).
    holds: Option<u32>,
    /// Writes begun and not ended, including one waiting for the lock.
    in_flight: u32,
    /// Writes begun so far.
    written: u64,
    /// `written` at the start of the last FLUSH that completed having begun with no write of
    /// this connection in flight: every write up to it is durable on every copy.
    flushed: u64,
}

/// Why a holder keeps its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no connection of that client holds the lock of that VDI here")]
    NotHere,
    #[error("a write of that client to that VDI is in flight")]
    Writing,
    #[error("a connection of that client has not flushed since its last write")]
    Unflushed,
}

/// A FLUSH that began with no write of its connection in flight: what it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushMark(u64);

#[derive(Debug, Default)]
pub struct WriterTable {
    conns: HashMap<ConnId, Conn>,
    next: u64,
}

impl WriterTable {
    /// A new connection of `client` to `volume`, holding no lock.
    pub fn open(&mut self, client: &str, volume: VolumeKey) -> ConnId {
        self.next += 1;
        let id = ConnId(self.next);
        self.conns.insert(
            id,
            Conn {
                client: client.to_string(),
                volume,
                holds: None,
                in_flight: 0,
                written: 0,
                flushed: 0,
            },
        );
        id
    }

    /// The connection is gone; returns the VDI whose lock it held, if it did.
    pub fn close(&mut self, id: ConnId) -> Option<u32> {
        self.conns.remove(&id).and_then(|c| c.holds)
    }

    /// A write of `id` begins (counted in flight and as written until `end_write`): true if
    /// the connection holds the lock and may go on, false if it must take the lock first.
    pub fn begin_write(&mut self, id: ConnId) -> bool {
        match self.conns.get_mut(&id) {
            Some(c) => {
                c.in_flight += 1;
                c.written += 1;
                c.holds.is_some()
            }
            None => false,
        }
    }

    /// A write of `id` ended (done, failed or refused).
    pub fn end_write(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    /// A FLUSH of `id` begins: what it will cover once done, if no write of the connection
    /// is in flight (a write racing with a flush may or may not be covered by it).
    pub fn flush_begins(&self, id: ConnId) -> Option<FlushMark> {
        self.conns
            .get(&id)
            .filter(|c| c.in_flight == 0)
            .map(|c| FlushMark(c.written))
    }

    /// The FLUSH that began with `mark` completed.
    pub fn flushed(&mut self, id: ConnId, mark: FlushMark) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.flushed = c.flushed.max(mark.0);
        }
    }

    pub fn holds(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.holds.is_some())
    }

    /// The lock of `vid` was granted to `id`'s client: `id` holds it.
    pub fn grant(&mut self, id: ConnId, vid: u32) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.holds = Some(vid);
        }
    }

    /// If another connection of `id`'s client to the same volume holds the lock, `id` shares
    /// it (multi-conn): true then.
    pub fn join_sibling(&mut self, id: ConnId) -> bool {
        let Some(me) = self.conns.get(&id) else {
            return false;
        };
        let held = self
            .conns
            .iter()
            .filter(|(other, c)| **other != id && c.client == me.client && c.volume == me.volume)
            .find_map(|(_, c)| c.holds);
        match held {
            Some(vid) => {
                self.grant(id, vid);
                true
            }
            None => false,
        }
    }

    /// Whether a connection of `client` to `volume` holds the lock.
    pub fn client_holds(&self, client: &str, volume: VolumeKey) -> bool {
        self.conns
            .values()
            .any(|c| c.client == client && c.volume == volume && c.holds.is_some())
    }

    /// The handover rule (see the module comment): if `client` may give away its lock of
    /// `volume`, its connections stop holding it and the count of them is returned.
    pub fn hand_over(&mut self, client: &str, volume: VolumeKey) -> Result<usize, Refusal> {
        let mine = || {
            self.conns
                .values()
                .filter(|c| c.client == client && c.volume == volume)
        };
        if !mine().any(|c| c.holds.is_some()) {
            return Err(Refusal::NotHere);
        }
        if mine().any(|c| c.in_flight > 0) {
            return Err(Refusal::Writing);
        }
        if mine().any(|c| c.holds.is_some() && c.flushed < c.written) {
            return Err(Refusal::Unflushed);
        }
        let mut n = 0;
        for c in self.conns.values_mut() {
            if c.client == client && c.volume == volume && c.holds.take().is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection of `client` to volume 1 that took the lock of VDI 7 with one write.
    fn writer(t: &mut WriterTable, client: &str) -> ConnId {
        let id = t.open(client, 1);
        assert!(!t.begin_write(id), "no lock before the first write");
        t.grant(id, 7);
        t.end_write(id);
        id
    }

    fn flush(t: &mut WriterTable, id: ConnId) {
        let mark = t.flush_begins(id).expect("nothing in flight");
        t.flushed(id, mark);
    }

    #[test]
    fn a_holder_that_flushed_and_stopped_writing_hands_over_and_must_take_the_lock_back() {
        let mut t = WriterTable::default();
        let a = writer(&mut t, "a");
        assert_eq!(t.hand_over("a", 1), Err(Refusal::Unflushed));
        assert!(t.holds(a), "a refusal changes nothing");
        flush(&mut t, a);
        assert_eq!(t.hand_over("a", 1), Ok(1));
        assert!(!t.holds(a));
        // Its next write has to take the lock again; closing it releases nothing.
        assert!(!t.begin_write(a));
        t.end_write(a);
        assert_eq!(t.close(a), None, "a connection that lost the lock");
    }

    #[test]
    fn a_write_in_flight_or_racing_with_the_flush_keeps_the_lock() {
        let mut t = WriterTable::default();
        let a = writer(&mut t, "a");
        flush(&mut t, a);
        assert!(t.begin_write(a));
        assert_eq!(
            t.hand_over("a", 1),
            Err(Refusal::Writing),
            "write in flight"
        );
        // A flush that began while the write was in flight does not cover it.
        assert_eq!(t.flush_begins(a), None);
        t.end_write(a);
        assert_eq!(t.hand_over("a", 1), Err(Refusal::Unflushed));
        flush(&mut t, a);
        // A write begun after the flush began is not covered either.
        let mark = t.flush_begins(a).unwrap();
        assert!(t.begin_write(a));
        t.end_write(a);
        t.flushed(a, mark);
        assert_eq!(t.hand_over("a", 1), Err(Refusal::Unflushed));
        flush(&mut t, a);
        assert_eq!(t.hand_over("a", 1), Ok(1));
    }

    #[test]
    fn every_connection_of_the_holder_counts_and_others_do_not() {
        let mut t = WriterTable::default();
        let a1 = writer(&mut t, "a");
        // A second connection of the same client shares the lock (multi-conn).
        let a2 = t.open("a", 1);
        assert!(!t.begin_write(a2));
        assert!(t.join_sibling(a2));
        t.end_write(a2);
        // A reader of the same client, and connections of other clients or volumes.
        let reader = t.open("a", 1);
        let b = t.open("b", 1);
        assert!(!t.begin_write(b), "another client needs the lock");
        assert!(!t.join_sibling(b), "and cannot share it");
        let other_vdi = t.open("a", 2);
        assert!(!t.begin_write(other_vdi));
        flush(&mut t, a1);
        assert_eq!(t.hand_over("a", 1), Err(Refusal::Unflushed), "a2 wrote");
        flush(&mut t, a2);
        assert_eq!(
            t.hand_over("a", 1),
            Ok(2),
            "b's and the other VDI's writes aside"
        );
        assert!(!t.holds(a1) && !t.holds(a2) && !t.holds(reader));
        assert!(!t.client_holds("a", 1));
        assert_eq!(
            t.hand_over("a", 1),
            Err(Refusal::NotHere),
            "a second newcomer"
        );
        assert_eq!(t.hand_over("b", 1), Err(Refusal::NotHere));
    }

    #[test]
    fn a_write_waiting_for_the_lock_counts_as_in_flight() {
        let mut t = WriterTable::default();
        let a1 = writer(&mut t, "a");
        flush(&mut t, a1);
        // a2's first write is waiting to share a1's lock.
        let a2 = t.open("a", 1);
        assert!(!t.begin_write(a2));
        assert_eq!(t.hand_over("a", 1), Err(Refusal::Writing));
        assert!(t.join_sibling(a2));
        t.end_write(a2);
        assert_eq!(t.close(a2), Some(7));
        assert!(t.client_holds("a", 1), "a1 still holds it");
        assert_eq!(t.close(a1), Some(7));
        assert!(!t.client_holds("a", 1));
    }
}
