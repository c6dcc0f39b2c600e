//! IPv4 subnets of the lab's pods, and the host's routes they must stay clear of.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 subnet such as `10.199.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = Self::mask(self.prefix.min(other.prefix));
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s}: no /prefix"))?;
        let addr: Ipv4Addr = a.parse().map_err(|e| format!("{s}: {e}"))?;
        let prefix: u8 = p.parse().map_err(|e| format!("{s}: {e}"))?;
        // host-local needs room for a gateway and a few pods.
        if !(8..=29).contains(&prefix) {
            return Err(format!("{s}: prefix must be 8..=29"));
        }
        if u32::from(addr) & !Self::mask(prefix) != 0 {
            return Err(format!("{s}: host bits set"));
        }
        Ok(Self { addr, prefix })
    }
}

/// Subnets of the host's IPv4 routes (`/proc/net/route`), default routes left out: a lab
/// subnet that overlaps one would capture or shadow real traffic.
pub fn host_route_subnets(route_table: &str) -> Vec<Subnet> {
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Destination and Mask are hex in host (little-endian) byte order.
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            let prefix = mask.count_ones() as u8;
            (prefix > 0).then(|| Subnet::new(Ipv4Addr::from(u32::from_be(dst)), prefix))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_overlap() {
        let a: Subnet = "10.199.0.0/24".parse().unwrap();
        let b: Subnet = "10.199.0.128/25".parse().unwrap();
        let c: Subnet = "10.198.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!("10.199.0.1/24".parse::<Subnet>().is_err());
        assert!("10.199.0.0/31".parse::<Subnet>().is_err());
        assert!("10.199.0.0".parse::<Subnet>().is_err());
    }

    #[test]
    fn reads_proc_net_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            host_route_subnets(table),
            vec!["192.0.2.0/24".parse().unwrap()]
        );
    }
}
