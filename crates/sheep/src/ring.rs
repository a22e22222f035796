//! Placement, as sheep uses it: the ring lives in `proto::ring` (pure computation, shared with
//! dog's `vdi object location` and `vdi check`). Owns: nothing of its own. Never: I/O.

pub use proto::ring::Ring;
