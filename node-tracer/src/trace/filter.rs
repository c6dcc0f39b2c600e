//! Which packets `trace icmp` shows. Within one kind of filter any value may match; across kinds
//! all must (`--pod web-1 --type echo-request`: web-1's echo requests). An empty kind matches all.

use std::net::IpAddr;
use std::str::FromStr;

use super::decode::Packet;
use crate::error::Error;
use crate::icmp::normalize_type_name;
use crate::model::{Port, format_mac};

/// A packet filter. Pods and veths are matched by name, with `*` as a wildcard so a
/// deployment's pods (`web-*`) need no exact names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `namespace/name` or `name`.
    pub pods: Vec<String>,
    /// Host-side veth names, or ifindex numbers for a veth the model does not know (yet).
    pub veths: Vec<String>,
    /// Source or destination: IP, CIDR or MAC.
    pub addresses: Vec<AddressMatch>,
    pub types: Vec<TypeMatch>,
}

/// One `--address` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMatch {
    Ip(IpAddr),
    /// Network address and prefix length.
    Net(IpAddr, u8),
    /// Lower-case `ip link` form, compared as text with the packet's.
    Mac([u8; 6]),
}

/// One `--type` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeMatch {
    /// A type number, in either family (8 is echo request in ICMP only; 128 in `ICMPv6` only).
    Number(u8),
    /// A normalised type name ("echo request"), matched in both families.
    Name(String),
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
            && self.veths.is_empty()
            && self.addresses.is_empty()
            && self.types.is_empty()
    }

    /// Whether `p` passes, given the port it crossed (`None` when the model does not know the
    /// ifindex; then a pod filter never matches and a veth filter only by ifindex).
    pub fn matches(&self, p: &Packet, port: Option<&Port>) -> bool {
        self.matches_pod(port)
            && self.matches_veth(p, port)
            && self.matches_address(p)
            && self.matches_type(p)
    }

    /// Whether packets on `port` could pass the pod and veth filters: a tracer attaches only
    /// where they could.
    pub fn could_match_port(&self, port: &Port) -> bool {
        self.matches_pod(Some(port))
            && (self.veths.is_empty()
                || self
                    .veths
                    .iter()
                    .any(|want| *want == port.ifindex.to_string() || glob(want, &port.name)))
    }

    fn matches_pod(&self, port: Option<&Port>) -> bool {
        if self.pods.is_empty() {
            return true;
        }
        let Some(pod) = port.and_then(|p| p.pod.as_ref()) else {
            return false;
        };
        let full = format!("{}/{}", pod.namespace, pod.name);
        self.pods.iter().any(|want| {
            if want.contains('/') {
                glob(want, &full)
            } else {
                glob(want, &pod.name)
            }
        })
    }

    fn matches_veth(&self, p: &Packet, port: Option<&Port>) -> bool {
        if self.veths.is_empty() {
            return true;
        }
        let index = p.ifindex.to_string();
        self.veths
            .iter()
            .any(|want| *want == index || port.is_some_and(|port| glob(want, &port.name)))
    }

    fn matches_address(&self, p: &Packet) -> bool {
        if self.addresses.is_empty() {
            return true;
        }
        self.addresses.iter().any(|a| match a {
            AddressMatch::Ip(ip) => p.src_ip == *ip || p.dst_ip == *ip,
            AddressMatch::Net(net, len) => {
                in_net(p.src_ip, *net, *len) || in_net(p.dst_ip, *net, *len)
            }
            AddressMatch::Mac(mac) => {
                let mac = format_mac(mac);
                p.src_mac == mac || p.dst_mac == mac
            }
        })
    }

    fn matches_type(&self, p: &Packet) -> bool {
        if self.types.is_empty() {
            return true;
        }
        self.types.iter().any(|t| match t {
            TypeMatch::Number(n) => p.icmp_type == *n,
            TypeMatch::Name(name) => *name == p.type_name,
        })
    }
}

impl FromStr for AddressMatch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Error::BadAddressFilter(s.to_owned());
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(AddressMatch::Ip(ip));
        }
        if let Some((net, len)) = s.split_once('/') {
            let net: IpAddr = net.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(bad());
            }
            return Ok(AddressMatch::Net(net, len));
        }
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() == 6 {
            let mut mac = [0u8; 6];
            for (b, part) in mac.iter_mut().zip(&parts) {
                if part.is_empty() || part.len() > 2 {
                    return Err(bad());
                }
                *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
            }
            return Ok(AddressMatch::Mac(mac));
        }
        Err(bad())
    }
}

impl FromStr for TypeMatch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.trim().parse::<u8>() {
            return Ok(TypeMatch::Number(n));
        }
        let name = normalize_type_name(s);
        // Only names some type really has, so a typo fails loudly instead of matching nothing.
        let known = (0..=u8::MAX).any(|t| {
            crate::icmp::icmp_type_name(4, t, 0) == name
                || crate::icmp::icmp_type_name(6, t, 0) == name
        });
        if known && name != "unknown" {
            Ok(TypeMatch::Name(name))
        } else {
            Err(Error::BadIcmpType(s.to_owned()))
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut text) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match text.find(part) {
            Some(i) => text = &text[i + part.len()..],
            None => return false,
        }
    }
    text.len() >= last.len() && text.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::super::decode::{decode, testframes::*};
    use super::*;
    use crate::model::{Pod, PodSource};

    fn port(name: &str, ns: &str, pod: &str) -> Port {
        Port {
            ifindex: 5,
            name: name.into(),
            pod: Some(Pod {
                namespace: ns.into(),
                name: pod.into(),
                uid: "u".into(),
                source: PodSource::Cri,
                container: None,
            }),
            ..Port::default()
        }
    }

    fn ping() -> Packet {
        let (f, l4) = icmp4([10, 0, 0, 2], [10, 0, 1, 3], 8, 0, 1, 1, &[]);
        decode(&event(5, 0, 0, &f, 4, l4), at_epoch).unwrap()
    }

    fn filter(pods: &[&str], veths: &[&str], addrs: &[&str], types: &[&str]) -> Filter {
        Filter {
            pods: pods.iter().map(|s| (*s).to_owned()).collect(),
            veths: veths.iter().map(|s| (*s).to_owned()).collect(),
            addresses: addrs.iter().map(|s| s.parse().unwrap()).collect(),
            types: types.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn empty_matches_everything() {
        assert!(Filter::default().is_empty());
        assert!(Filter::default().matches(&ping(), None));
    }

    #[test]
    fn pod_by_name_namespaced_or_glob() {
        let p = ping();
        let port = port("veth1234", "default", "web-1");
        for yes in ["web-1", "default/web-1", "web-*", "default/*", "*/web-1"] {
            assert!(
                filter(&[yes], &[], &[], &[]).matches(&p, Some(&port)),
                "{yes}"
            );
        }
        for no in ["web-2", "kube-system/web-1", "web", "db-*"] {
            assert!(
                !filter(&[no], &[], &[], &[]).matches(&p, Some(&port)),
                "{no}"
            );
        }
        // A veth without a known pod never passes a pod filter.
        assert!(!filter(&["web-1"], &[], &[], &[]).matches(&p, None));
        // Any of several values.
        assert!(filter(&["db", "web-1"], &[], &[], &[]).matches(&p, Some(&port)));
    }

    #[test]
    fn veth_by_name_or_ifindex() {
        let p = ping();
        let port = port("veth1234", "default", "web-1");
        assert!(filter(&[], &["veth1234"], &[], &[]).matches(&p, Some(&port)));
        assert!(filter(&[], &["veth12*"], &[], &[]).matches(&p, Some(&port)));
        assert!(filter(&[], &["5"], &[], &[]).matches(&p, None));
        assert!(!filter(&[], &["veth9"], &[], &[]).matches(&p, Some(&port)));
    }

    #[test]
    fn address_ip_cidr_mac() {
        let p = ping();
        for yes in [
            "10.0.0.2",
            "10.0.1.3",
            "10.0.1.0/24",
            "0.0.0.0/0",
            "02:42:0a:00:00:03",
            "02-42-0A-00-00-02",
        ] {
            assert!(filter(&[], &[], &[yes], &[]).matches(&p, None), "{yes}");
        }
        for no in ["10.0.0.9", "10.0.2.0/24", "fd00::/8", "02:42:0a:00:00:09"] {
            assert!(!filter(&[], &[], &[no], &[]).matches(&p, None), "{no}");
        }
        for bad in ["10.0.0.0/33", "web", "02:42:0a:00:00", "1:2:3:4:5:zz"] {
            assert!(bad.parse::<AddressMatch>().is_err(), "{bad}");
        }
    }

    #[test]
    fn type_by_name_or_number() {
        let p = ping();
        for yes in ["echo-request", "Echo Request", "8"] {
            assert!(filter(&[], &[], &[], &[yes]).matches(&p, None), "{yes}");
        }
        for no in ["echo-reply", "0", "128"] {
            assert!(!filter(&[], &[], &[], &[no]).matches(&p, None), "{no}");
        }
        assert!("neighbor-solicitation".parse::<TypeMatch>().is_ok());
        assert!(matches!(
            "echo-requets".parse::<TypeMatch>(),
            Err(Error::BadIcmpType(t)) if t == "echo-requets"
        ));
    }

    #[test]
    fn kinds_combine_with_and() {
        let p = ping();
        let port = port("veth1234", "default", "web-1");
        assert!(
            filter(&["web-1"], &["veth1234"], &["10.0.0.2"], &["echo-request"])
                .matches(&p, Some(&port))
        );
        assert!(!filter(&["web-1"], &[], &[], &["echo-reply"]).matches(&p, Some(&port)));
    }

    #[test]
    fn glob_edges() {
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXc"));
        assert!(glob("ab*b", "ab-b"));
        assert!(!glob("ab*b", "ab"));
    }
}
