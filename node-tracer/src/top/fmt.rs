//! Small pure formatting helpers shared by the table and the detail pane.

/// Formats a rate (or a count) in at most five characters so columns stay aligned at any
/// magnitude: `0`, `0.5`, `12`, `999`, `1.23k`, `12.3k`, `123k`, `4.56M`.
pub fn si(v: f64) -> String {
    if !v.is_finite() || v <= 0.0 {
        return "0".to_owned();
    }
    if v < 9.95 {
        // Below 10 a decimal tells a trickle (0.2/s of ARP) from silence.
        return format!("{v:.1}");
    }
    if v < 999.5 {
        return format!("{v:.0}");
    }
    let mut scaled = v;
    for unit in ["k", "M", "G", "T", "P"] {
        scaled /= 1000.0;
        if scaled < 9.995 {
            return format!("{scaled:.2}{unit}");
        }
        if scaled < 99.95 {
            return format!("{scaled:.1}{unit}");
        }
        if scaled < 999.5 {
            return format!("{scaled:.0}{unit}");
        }
    }
    format!("{:.0}P", scaled * 1000.0)
}

/// Formats a counter exactly when it is short and with [`si`] when it is not, so totals in the
/// detail pane stay readable but precise for small numbers.
pub fn count(v: u64) -> String {
    if v < 100_000 {
        v.to_string()
    } else {
        si(v as f64)
    }
}

/// How long ago `then_ms` was, relative to the snapshot time `now_ms` (not the wall clock, so a
/// paused or replayed snapshot reads consistently).
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Cuts `s` to `width` display cells, marking the cut with `…`. Interface and pod names are
/// ASCII in practice; anything else is cut by `char`, which is close enough for a label.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// The crate's one name table; `top` shows "other" for types it has no name for.
pub fn icmp_type_name(family: u8, ty: u8) -> &'static str {
    match crate::icmp::icmp_type_name(family, ty, 0) {
        "unknown" => "other",
        name => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_keeps_five_cells() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(-3.0), "0");
        assert_eq!(si(f64::NAN), "0");
        assert_eq!(si(0.5), "0.5");
        assert_eq!(si(9.94), "9.9");
        assert_eq!(si(12.4), "12");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(999.6), "1.00k");
        assert_eq!(si(1234.0), "1.23k");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(123_456.0), "123k");
        assert_eq!(si(999_999.0), "1.00M");
        assert_eq!(si(9_400_000_000.0), "9.40G");
        for v in [0.3, 7.0, 99.0, 5e3, 5e4, 5e5, 5e6, 5e9, 5e12, 5e15] {
            assert!(si(v).chars().count() <= 5, "{v} -> {}", si(v));
        }
    }

    #[test]
    fn count_is_exact_when_short() {
        assert_eq!(count(99_999), "99999");
        assert_eq!(count(123_456), "123k");
    }

    #[test]
    fn ago_uses_the_snapshot_clock() {
        assert_eq!(ago(10_000, 7_000), "3s ago");
        assert_eq!(ago(10_000, 20_000), "0s ago");
        assert_eq!(ago(200_000, 20_000), "3m ago");
        assert_eq!(ago(8_000_000, 0), "2h ago");
        assert_eq!(ago(200_000_000, 0), "2d ago");
    }

    #[test]
    fn fit_marks_the_cut() {
        assert_eq!(fit("cni0", 8), "cni0");
        assert_eq!(fit("default/nginx-abc", 8), "default…");
        assert_eq!(fit("abc", 0), "");
    }

    #[test]
    fn icmp_names() {
        assert_eq!(icmp_type_name(4, 8), "echo request");
        assert_eq!(icmp_type_name(4, 0), "echo reply");
        assert_eq!(icmp_type_name(6, 128), "echo request");
        assert_eq!(icmp_type_name(6, 135), "neighbour solicitation");
        assert_eq!(icmp_type_name(6, 136), "neighbour advertisement");
        assert_eq!(icmp_type_name(6, 133), "router solicitation");
        assert_eq!(icmp_type_name(4, 11), "time exceeded");
        assert_eq!(icmp_type_name(4, 3), "destination unreachable");
        // ICMPv6 128 is not ICMPv4 128: the family decides.
        assert_eq!(icmp_type_name(4, 128), "other");
    }
}
