//! The Sheepdog storage daemon as a library: every part of `sheep` lives here so that tests
//! can reach it; `main.rs` only parses options and starts it.

pub mod ring;
pub mod store;
pub mod cluster;
