//! Text the original prints and parses: sizes (`strnumber`, `option_parse_size`), local
//! times (`strftime`, `ctime`), node addresses (`addr_to_str`), C-style column padding.
//! Owns: pure formatting/parsing. Never: I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

/// `strnumber`: raw mode prints bytes; otherwise MB and up, 1024-based, one decimal below 10
/// ("0.0 MB", "4.0 MB", "12 MB", "1020 MB", "2.0 GB").
pub fn size(bytes: u64, raw: bool) -> String {
    if raw {
        return bytes.to_string();
    }
    const UNITS: [&str; 7] = ["MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut s = bytes as f64 / (1024.0 * 1024.0);
    let mut i = 0;
    while i < UNITS.len() - 1 && s >= 1024.0 {
        i += 1;
        s /= 1024.0;
    }
    if s >= 10.0 {
        format!("{s:.0} {}", UNITS[i])
    } else {
        format!("{s:.1} {}", UNITS[i])
    }
}

/// `option_parse_size`: a number (decimals allowed) with an optional one-letter suffix
/// B, K, M, G, T or P (any case, 1024-based). `None` for anything else.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, mult): (&str, u128) = match s.chars().last()? {
        c @ ('b' | 'B' | 'k' | 'K' | 'm' | 'M' | 'g' | 'G' | 't' | 'T' | 'p' | 'P') => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => 50,
            };
            (&s[..s.len() - 1], 1u128 << shift)
        }
        _ => (s, 1),
    };
    if num.is_empty() || num.starts_with(['-', '+']) {
        return None;
    }
    if num.bytes().all(|b| b.is_ascii_digit()) {
        let v = num.parse::<u128>().ok()?.checked_mul(mult)?;
        return u64::try_from(v).ok();
    }
    if !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let v = num.parse::<f64>().ok()? * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return None;
    }
    Some(v as u64)
}

/// The original's two-line complaint about a bad size.
pub fn invalid_size(s: &str) -> String {
    format!(
        "Invalid size '{s}'\nYou may use B, K, M, G, T or P suffixes for bytes, kilobytes, \
         megabytes, gigabytes, terabytes and petabytes."
    )
}

/// `strftime` of `secs` in the local time zone.
pub fn local_time(secs: u64, fmt: &str) -> String {
    let Ok(t) = libc::time_t::try_from(secs) else {
        return secs.to_string();
    };
    let Ok(f) = std::ffi::CString::new(fmt) else {
        return String::new();
    };
    // SAFETY: localtime_r and strftime only write into the zeroed `tm` and `buf` we own; the
    // format is NUL-terminated and `buf.len()` bounds the output.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return secs.to_string();
        }
        let mut buf = [0u8; 128];
        let n = libc::strftime(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            f.as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// `ctime(3)` without its trailing newline: "Sun Nov 22 21:23:11 2026".
pub fn ctime(secs: u64) -> String {
    local_time(secs, "%a %b %e %H:%M:%S %Y")
}

/// `addr_to_str`: IPv4 (12 zero bytes then the address) as a.b.c.d, anything else as IPv6
/// text; ":port" appended when the port is not 0. IPv6 gets no brackets, as the original.
pub fn addr(a: &[u8; 16], port: u16) -> String {
    let v4 = a[12] != 0 && a[..12].iter().all(|&b| b == 0);
    let host = if v4 {
        Ipv4Addr::new(a[12], a[13], a[14], a[15]).to_string()
    } else {
        Ipv6Addr::from(*a).to_string()
    };
    if port != 0 {
        format!("{host}:{port}")
    } else {
        host
    }
}

/// printf's "%-Ns": pads with spaces to `w` bytes (C counts bytes, not characters).
pub fn left(s: &str, w: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', w.saturating_sub(s.len())));
    out
}

/// printf's "%Ns".
pub fn right(s: &str, w: usize) -> String {
    let mut out: String = std::iter::repeat_n(' ', w.saturating_sub(s.len())).collect();
    out.push_str(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strnumber_rules() {
        assert_eq!(size(0, false), "0.0 MB");
        assert_eq!(size(4 << 20, false), "4.0 MB");
        assert_eq!(size(12 << 20, false), "12 MB");
        assert_eq!(size(1020 << 20, false), "1020 MB");
        assert_eq!(size(1023 << 20, false), "1023 MB");
        assert_eq!(size(1 << 30, false), "1.0 GB");
        assert_eq!(size(2 << 30, false), "2.0 GB");
        assert_eq!(size(256 << 30, false), "256 GB");
        assert_eq!(size(75 << 30, false), "75 GB");
        assert_eq!(size(4 << 40, false), "4.0 TB");
        assert_eq!(size(16 << 50, false), "16 PB");
        assert_eq!(size(512 << 10, false), "0.5 MB");
        // printf rounds exact halves to even; so does Rust.
        assert_eq!(size((21 << 20) / 2, false), "10 MB");
        assert_eq!(size(1073741824, true), "1073741824");
        assert_eq!(size(u64::MAX, false), "16 EB");
    }

    #[test]
    fn sizes_parse_like_option_parse_size() {
        assert_eq!(parse_size("256G"), Some(256 << 30));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("2P"), Some(2 << 50));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("100B"), Some(100));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("5000000"), Some(5_000_000));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("1GB"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_size("16383P"), Some(16383 << 50));
        assert_eq!(parse_size("16384P"), None);
    }

    #[test]
    fn addresses_like_addr_to_str() {
        let mut a = [0u8; 16];
        a[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(addr(&a, 7000), "127.0.0.1:7000");
        assert_eq!(addr(&a, 0), "127.0.0.1");
        let v6: [u8; 16] = "::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(addr(&v6, 7000), "::1:7000");
    }

    #[test]
    fn padding_counts_bytes() {
        assert_eq!(left("test", 8), "test    ");
        assert_eq!(right("7c2b25", 7), " 7c2b25");
        assert_eq!(left("a-very-long-name", 8), "a-very-long-name");
    }

    #[test]
    fn ctime_shape() {
        let s = ctime(1_795_382_591);
        // "Www Mmm dd hh:mm:ss yyyy" whatever the local zone is.
        assert_eq!(s.len(), 24, "{s}");
        assert_eq!(&s[19..20], " ");
    }
}
