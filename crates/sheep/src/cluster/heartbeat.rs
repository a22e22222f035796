//! Heartbeat timing of the drivers that watch their members themselves (local, corosync): how
//! often a sheep says it is alive, how often it looks at the others, and after how long
//! without its own beat coming back it must serve nothing (it may have been declared gone).
//! Owns: those durations, derived from the driver's timeout. Never: I/O.

use std::time::Duration;

/// How often a member beats (less with timeouts under 2 s).
const BEAT_EVERY: Duration = Duration::from_millis(500);
/// How often the members' heartbeats are looked at (less with timeouts under 1 s).
const WATCH_EVERY: Duration = Duration::from_millis(100);

pub trait Heartbeat {
    /// A member not heard from for this long is gone.
    fn timeout(&self) -> Duration;

    fn beat_every(&self) -> Duration {
        BEAT_EVERY.min(self.timeout() / 4)
    }

    fn watch_every(&self) -> Duration {
        WATCH_EVERY.min(self.timeout() / 10)
    }

    /// A node whose own heartbeat is older than this may have been declared gone: it serves
    /// nothing until it knows it was not.
    fn fence(&self) -> Duration {
        self.timeout() * 3 / 4
    }
}
