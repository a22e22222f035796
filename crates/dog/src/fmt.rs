//! Number, size and time formatting exactly as the original `dog` prints them.

/// `strnumber`: 1024-based units from MB up, one decimal below 10.
pub fn size(bytes: u64, raw: bool) -> String {
    if raw {
        return bytes.to_string();
    }
    let units = ["MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut s = bytes as f64 / (1024.0 * 1024.0);
    let mut i = 0;
    while i < units.len() - 1 && s >= 1024.0 {
        i += 1;
        s /= 1024.0;
    }
    if s >= 10.0 {
        format!("{:.0} {}", s, units[i])
    } else {
        format!("{:.1} {}", s, units[i])
    }
}

/// Parses sizes with an optional K/M/G/T/P suffix (1024-based), as the original.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        't' | 'T' => (&s[..s.len() - 1], 1 << 40),
        'p' | 'P' => (&s[..s.len() - 1], 1 << 50),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Local time of `secs` with a strftime format.
pub fn local_time(secs: u64, fmt: &str) -> String {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r/strftime write into buffers we own; the format is NUL-terminated.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        let mut buf = [0u8; 64];
        let f = std::ffi::CString::new(fmt).unwrap_or_default();
        let n = libc::strftime(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            f.as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes_as_the_original() {
        assert_eq!(size(2 << 30, false), "2.0 GB");
        assert_eq!(size(1020 << 20, false), "1020 MB");
        assert_eq!(size(0, false), "0.0 MB");
        assert_eq!(size(12 << 20, false), "12 MB");
        assert_eq!(size(256 << 30, false), "256 GB");
        assert_eq!(size(5, true), "5");
        assert_eq!(parse_size("256G"), Some(256 << 30));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
