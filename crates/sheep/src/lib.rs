//! The Sheepdog storage daemon as a library: every part of `sheep` lives here so that tests
//! can reach it; `main.rs` only parses options, daemonizes and starts it.
//!
//! Data path of a write: `server` (framing) -> `ops` (opcode) -> `gateway` (placement, copies
//! in parallel) -> `peers` (network) or `peer::local` -> `store` (disk) -> acknowledgement.

pub mod admin;
pub mod admission;
pub mod api;
pub mod attr;
pub mod budget;
pub mod cluster;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod nbd;
pub mod node;
pub mod ops;
pub mod peer;
pub mod peers;
pub mod recovery;
pub mod ring;
pub mod server;
pub mod store;
pub mod vdi;
pub mod volume;
