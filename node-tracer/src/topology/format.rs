//! Small pure rules: how addresses and routes are written, which routes count, and how a veth's
//! mode is decided. Kept apart so they are tested without root.

use std::net::IpAddr;

use crate::model::Mode;

/// `10.0.0.1/32`, `fd00::1/64`: the CIDR form `ip addr` and `ip route` print.
pub(crate) fn cidr(ip: IpAddr, prefix: u8) -> String {
    format!("{ip}/{prefix}")
}

/// Whether a main-table route destination says something about what sits behind a veth.
///
/// Every IPv6-enabled link gets `fe80::/64` and multicast routes on its own; they would make
/// every veth look routed.
pub(crate) fn is_reported_route(dest: IpAddr, prefix: u8) -> bool {
    match dest {
        IpAddr::V4(ip) => !ip.is_multicast(),
        IpAddr::V6(ip) => {
            let link_local_net = ip.segments()[0] == 0xfe80 && ip.segments()[1..4] == [0, 0, 0];
            !(ip.is_multicast() || (link_local_net && prefix == 64))
        }
    }
}

/// IPv4 first, then global IPv6, then IPv6 link-local, each in kernel order: the address a
/// person looks for comes first.
pub(crate) fn sort_addresses(list: &mut [String]) {
    list.sort_by_key(|cidr| {
        let ip = cidr
            .split('/')
            .next()
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        match ip {
            Some(IpAddr::V4(_)) => 0,
            Some(IpAddr::V6(v6)) if (v6.segments()[0] & 0xffc0) != 0xfe80 => 1,
            _ => 2,
        }
    });
}

/// A bridge port is bridged whatever routes say; without a bridge, a veth the host routes
/// through is routed (GKE, Calico, CNI `ptp`); anything else is unattached.
pub(crate) fn classify(master_is_bridge: bool, has_routes: bool) -> Mode {
    if master_is_bridge {
        Mode::Bridged
    } else if has_routes {
        Mode::Routed
    } else {
        Mode::Unattached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matches_ip_output() {
        assert_eq!(cidr("10.4.0.1".parse().unwrap(), 32), "10.4.0.1/32");
        assert_eq!(cidr("fd00::1".parse().unwrap(), 64), "fd00::1/64");
    }

    #[test]
    fn link_local_and_multicast_routes_are_not_reported() {
        assert!(!is_reported_route("fe80::".parse().unwrap(), 64));
        assert!(!is_reported_route("ff00::".parse().unwrap(), 8));
        assert!(!is_reported_route("224.0.0.0".parse().unwrap(), 4));
        // A host route to a link-local address is deliberate, not automatic.
        assert!(is_reported_route("fe80::1".parse().unwrap(), 128));
        assert!(is_reported_route("10.8.0.5".parse().unwrap(), 32));
        assert!(is_reported_route("0.0.0.0".parse().unwrap(), 0));
        assert!(is_reported_route("fd00::".parse().unwrap(), 64));
    }

    #[test]
    fn addresses_sort_ipv4_then_global_then_link_local() {
        let mut list = vec![
            "fe80::1/64".to_string(),
            "fd00::1/64".to_string(),
            "10.0.0.1/24".to_string(),
            "10.0.0.2/24".to_string(),
        ];
        sort_addresses(&mut list);
        assert_eq!(
            list,
            ["10.0.0.1/24", "10.0.0.2/24", "fd00::1/64", "fe80::1/64"]
        );
    }

    #[test]
    fn mode_prefers_bridge_over_routes() {
        assert_eq!(classify(true, true), Mode::Bridged);
        assert_eq!(classify(true, false), Mode::Bridged);
        assert_eq!(classify(false, true), Mode::Routed);
        assert_eq!(classify(false, false), Mode::Unattached);
    }
}
