//! The original's progress bar (`show_progress`: " 45.0 % [======>      ] 180 MB / 400 MB"),
//! drawn on stderr and only when stderr is a terminal, so pipes and logs stay clean.
//! Owns: drawing and throttling the bar. Never: deciding what progress is.

use crate::fmt;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const DEFAULT_WIDTH: usize = 80;
const REDRAW_EVERY: Duration = Duration::from_millis(100);

pub struct Progress {
    total: u64,
    raw: bool,
    enabled: bool,
    last: Option<(u64, Instant)>,
}

impl Progress {
    pub fn new(total: u64, raw: bool) -> Progress {
        Progress {
            total,
            raw,
            enabled: total > 0 && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Redraws with `done` bytes finished (at most ten times a second).
    pub fn update(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if let Some((d, t)) = self.last {
            if d == done || (done < self.total && now.duration_since(t) < REDRAW_EVERY) {
                return;
            }
        }
        self.last = Some((done, now));
        let mut line = format!("\r{}", render(done, self.total, width(), self.raw));
        if done >= self.total {
            line.push('\n');
        }
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(line.as_bytes());
        let _ = e.flush();
    }

    /// Leaves the cursor on a fresh line if the bar stopped short of the total.
    pub fn finish(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        if done < self.total {
            self.last = None;
            self.update(done);
            let _ = std::io::stderr().write_all(b"\n");
        } else {
            self.update(done);
        }
    }
}

fn width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize we own; a failure leaves it zeroed.
    let ws = unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) != 0 {
            return DEFAULT_WIDTH;
        }
        ws
    };
    match ws.ws_col as usize {
        0 => DEFAULT_WIDTH,
        w => w,
    }
}

/// One frame of the bar, exactly `width` characters wide.
pub fn render(done: u64, total: u64, width: usize, raw: bool) -> String {
    let total = total.max(1);
    let bar = width.saturating_sub(30);
    let mut s = format!("{:5.1} % [", done as f64 / total as f64 * 100.0);
    let (d, t, b) = (done as u128, total as u128, bar as u128);
    for i in 0..b {
        let c = if t * (i + 1) / b <= d {
            '='
        } else if t * i / b <= d && d < t * (i + 1) / b {
            '>'
        } else {
            ' '
        };
        s.push(c);
    }
    s.push_str(&format!(
        "] {} / {}",
        fmt::size(done, raw),
        fmt::size(total, raw)
    ));
    let mut s: String = s.chars().take(width).collect();
    while s.chars().count() < width {
        s.push(' ');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let f = render(180 << 20, 400 << 20, 80, false);
        assert_eq!(f.len(), 80);
        assert!(f.starts_with(" 45.0 % [======================>"), "{f}");
        assert!(f.contains("] 180 MB / 400 MB"), "{f}");
        let f = render(400 << 20, 400 << 20, 60, false);
        assert!(
            f.starts_with("100.0 % [==============================]"),
            "{f}"
        );
        let f = render(0, 10, 20, true);
        assert_eq!(f.len(), 20);
        assert!(f.starts_with("  0.0 % []"), "{f}");
    }
}
