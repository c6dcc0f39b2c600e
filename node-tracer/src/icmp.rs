//! Names of ICMP and `ICMPv6` message types and codes, as people say them (IANA registries, lower
//! case, British "neighbour" as in the kernel's own docs). One table for the whole crate, so the
//! trace line, its JSON, the `--type` filter, `top` and the metric label values all agree.

/// The name of an ICMP (`family` 4) or `ICMPv6` (`family` 6) message type, or `"unknown"`.
///
/// `code` is taken so a caller never needs to know which types are refined by their code: the
/// type name stays stable across codes (what `--type` filters on); the code's own name is
/// [`icmp_code_name`].
pub fn icmp_type_name(family: u8, ty: u8, code: u8) -> &'static str {
    let _ = code;
    match family {
        4 => icmpv4_type_name(ty),
        6 => icmpv6_type_name(ty),
        _ => "unknown",
    }
}

fn icmpv4_type_name(ty: u8) -> &'static str {
    match ty {
        0 => "echo reply",
        3 => "destination unreachable",
        4 => "source quench",
        5 => "redirect",
        8 => "echo request",
        9 => "router advertisement",
        10 => "router solicitation",
        11 => "time exceeded",
        12 => "parameter problem",
        13 => "timestamp request",
        14 => "timestamp reply",
        15 => "information request",
        16 => "information reply",
        17 => "address mask request",
        18 => "address mask reply",
        42 => "extended echo request",
        43 => "extended echo reply",
        _ => "unknown",
    }
}

fn icmpv6_type_name(ty: u8) -> &'static str {
    match ty {
        1 => "destination unreachable",
        2 => "packet too big",
        3 => "time exceeded",
        4 => "parameter problem",
        128 => "echo request",
        129 => "echo reply",
        130 => "multicast listener query",
        131 => "multicast listener report",
        132 => "multicast listener done",
        133 => "router solicitation",
        134 => "router advertisement",
        135 => "neighbour solicitation",
        136 => "neighbour advertisement",
        137 => "redirect",
        138 => "router renumbering",
        143 => "mldv2 report",
        160 => "extended echo request",
        161 => "extended echo reply",
        _ => "unknown",
    }
}

/// The name of `code` for the types whose codes carry meaning (unreachable, redirect, time
/// exceeded, parameter problem); `None` for the others, where the code is always 0.
pub fn icmp_code_name(family: u8, ty: u8, code: u8) -> Option<&'static str> {
    let name = match (family, ty, code) {
        (4, 3, 0) => "net unreachable",
        (4, 3, 1) => "host unreachable",
        (4, 3, 2) => "protocol unreachable",
        (4, 3, 3) | (6, 1, 4) => "port unreachable",
        (4, 3, 4) => "fragmentation needed",
        (4, 3, 5) => "source route failed",
        (4, 3, 6) => "destination network unknown",
        (4, 3, 7) => "destination host unknown",
        (4, 3, 9) => "network administratively prohibited",
        (4, 3, 10) => "host administratively prohibited",
        (4, 3, 11) => "network unreachable for tos",
        (4, 3, 12) => "host unreachable for tos",
        (4, 3, 13) => "communication administratively prohibited",
        (4, 5, 0) => "redirect for network",
        (4, 5, 1) => "redirect for host",
        (4, 5, 2) => "redirect for tos and network",
        (4, 5, 3) => "redirect for tos and host",
        (4, 11, 0) | (6, 3, 0) => "hop limit exceeded in transit",
        (4, 11, 1) | (6, 3, 1) => "fragment reassembly time exceeded",
        (4, 12, 0) | (6, 4, 0) => "erroneous header field",
        (4, 12, 1) => "missing a required option",
        (4, 12, 2) => "bad length",
        (6, 1, 0) => "no route to destination",
        (6, 1, 1) => "administratively prohibited",
        (6, 1, 2) => "beyond scope of source address",
        (6, 1, 3) => "address unreachable",
        (6, 1, 5) => "source address failed ingress/egress policy",
        (6, 1, 6) => "reject route to destination",
        (6, 4, 1) => "unrecognized next header",
        (6, 4, 2) => "unrecognized ipv6 option",
        _ => return None,
    };
    Some(name)
}

/// Whether messages of this type carry an identifier and a sequence number in bytes 4..8 of
/// the ICMP header (echo, and `ICMPv4`'s timestamp, information and address-mask pairs).
pub fn has_id_seq(family: u8, ty: u8) -> bool {
    match family {
        4 => matches!(ty, 0 | 8 | 13..=18),
        6 => matches!(ty, 128 | 129),
        _ => false,
    }
}

/// Whether this is an echo request (`Some(true)`), an echo reply (`Some(false)`) or neither.
pub fn echo_kind(family: u8, ty: u8) -> Option<bool> {
    match (family, ty) {
        (4, 8) | (6, 128) => Some(true),
        (4, 0) | (6, 129) => Some(false),
        _ => None,
    }
}

/// Normalises a type name the way users type it: case, `-`/`_` for spaces, and the American
/// "neighbor", so `--type Neighbor-Solicitation` finds "neighbour solicitation".
pub fn normalize_type_name(s: &str) -> String {
    let s: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '-' | '_' => ' ',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    s.replace("neighbor", "neighbour")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_both_families() {
        assert_eq!(icmp_type_name(4, 8, 0), "echo request");
        assert_eq!(icmp_type_name(4, 0, 0), "echo reply");
        assert_eq!(icmp_type_name(4, 3, 3), "destination unreachable");
        assert_eq!(icmp_type_name(4, 5, 1), "redirect");
        assert_eq!(icmp_type_name(4, 11, 0), "time exceeded");
        assert_eq!(icmp_type_name(4, 12, 0), "parameter problem");
        assert_eq!(icmp_type_name(4, 13, 0), "timestamp request");
        assert_eq!(icmp_type_name(6, 1, 4), "destination unreachable");
        assert_eq!(icmp_type_name(6, 2, 0), "packet too big");
        assert_eq!(icmp_type_name(6, 3, 0), "time exceeded");
        assert_eq!(icmp_type_name(6, 4, 0), "parameter problem");
        assert_eq!(icmp_type_name(6, 128, 0), "echo request");
        assert_eq!(icmp_type_name(6, 129, 0), "echo reply");
        assert_eq!(icmp_type_name(6, 130, 0), "multicast listener query");
        assert_eq!(icmp_type_name(6, 131, 0), "multicast listener report");
        assert_eq!(icmp_type_name(6, 132, 0), "multicast listener done");
        assert_eq!(icmp_type_name(6, 133, 0), "router solicitation");
        assert_eq!(icmp_type_name(6, 134, 0), "router advertisement");
        assert_eq!(icmp_type_name(6, 135, 0), "neighbour solicitation");
        assert_eq!(icmp_type_name(6, 136, 0), "neighbour advertisement");
        assert_eq!(icmp_type_name(6, 137, 0), "redirect");
        assert_eq!(icmp_type_name(6, 143, 0), "mldv2 report");
        assert_eq!(icmp_type_name(6, 8, 0), "unknown");
        assert_eq!(icmp_type_name(5, 8, 0), "unknown");
    }

    #[test]
    fn code_names() {
        assert_eq!(icmp_code_name(4, 3, 3), Some("port unreachable"));
        assert_eq!(icmp_code_name(4, 3, 4), Some("fragmentation needed"));
        assert_eq!(icmp_code_name(6, 1, 3), Some("address unreachable"));
        assert_eq!(icmp_code_name(4, 8, 0), None);
    }

    #[test]
    fn id_seq_and_echo() {
        assert!(has_id_seq(4, 8) && has_id_seq(4, 14) && has_id_seq(6, 129));
        assert!(!has_id_seq(4, 3) && !has_id_seq(6, 135));
        assert_eq!(echo_kind(6, 128), Some(true));
        assert_eq!(echo_kind(4, 0), Some(false));
        assert_eq!(echo_kind(6, 0), None);
    }

    #[test]
    fn normalizes_user_spelling() {
        assert_eq!(normalize_type_name(" Echo-Request"), "echo request");
        assert_eq!(
            normalize_type_name("neighbor_solicitation"),
            "neighbour solicitation"
        );
    }
}
