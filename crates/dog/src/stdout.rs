//! dog's standard output: straight through on a terminal; into a file or pipe held back and
//! written in 4 KiB blocks and at the end, as the original's C standard output is, so that
//! what a script captures interleaves with standard error as the original's does (its
//! "set to" messages on stderr come before a prompt it answered, for one).
//! Owns: that buffer. Never: what is printed.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};

/// Bytes held before they are written (C's BUFSIZ on these machines).
const BLOCK: usize = 4096;

static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn terminal() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::io::stdout().is_terminal())
}

/// Prints `args`; never panics (a closed stdout, `dog vdi list | head -1`, is fine).
pub fn print(args: std::fmt::Arguments<'_>) {
    if terminal() {
        let mut o = std::io::stdout().lock();
        let _ = o.write_fmt(args);
        let _ = o.flush();
        return;
    }
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let _ = held.write_fmt(args);
    if held.len() >= BLOCK {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&held);
        let _ = o.flush();
        held.clear();
    }
}

/// Writes what is held (at the end of a run, and before output that bypasses the buffer).
pub fn flush() {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(&held);
    let _ = o.flush();
    held.clear();
}
