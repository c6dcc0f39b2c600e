//! The files a lab runtime is started from: containerd's config and two CNI conflists.

use std::{fmt, net::Ipv4Addr, path::Path, str::FromStr};

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

fn q(p: &Path) -> String {
    // TOML basic strings: our paths never hold quotes or backslashes (checked by the caller),
    // but escape anyway rather than write a broken config.
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

pub struct ContainerdPaths<'a> {
    pub root: &'a Path,
    pub state: &'a Path,
    pub socket: &'a Path,
    pub opt: &'a Path,
    pub runc_root: &'a Path,
    pub cni_bin_dir: &'a Path,
    pub bridge_conf_dir: &'a Path,
    pub ptp_conf_dir: &'a Path,
}

/// containerd 1.6 config (version 2): own root, state and socket so several daemons coexist;
/// the CRI plugin with two runtime handlers, `runc` (bridge) and `ptp` (routed), each with its
/// own `cni_conf_dir`.
pub fn containerd_toml(p: &ContainerdPaths<'_>, sandbox_image: &str) -> String {
    const CRI: &str = "plugins.\"io.containerd.grpc.v1.cri\"";
    let runtime = |name: &str, conf_dir: &Path| {
        format!(
            "[{CRI}.containerd.runtimes.{name}]\n\
             runtime_type = \"io.containerd.runc.v2\"\n\
             cni_conf_dir = {conf}\n\
             cni_max_conf_num = 1\n\
             [{CRI}.containerd.runtimes.{name}.options]\n\
             SystemdCgroup = false\n\
             Root = {runc_root}\n",
            conf = q(conf_dir),
            runc_root = q(p.runc_root),
        )
    };
    format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         [grpc]\n\
         address = {socket}\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n\
         path = {opt}\n\
         [{CRI}]\n\
         sandbox_image = \"{sandbox_image}\"\n\
         # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj: \"can't get final child's PID from pipe\".\n\
         restrict_oom_score_adj = true\n\
         disable_apparmor = true\n\
         stream_server_address = \"127.0.0.1\"\n\
         stream_server_port = \"0\"\n\
         [{CRI}.cni]\n\
         bin_dir = {bin}\n\
         conf_dir = {bridge}\n\
         max_conf_num = 1\n\
         [{CRI}.containerd]\n\
         default_runtime_name = \"runc\"\n\
         snapshotter = \"overlayfs\"\n\
         {runc}{ptp}",
        root = q(p.root),
        state = q(p.state),
        socket = q(p.socket),
        opt = q(p.opt),
        bin = q(p.cni_bin_dir),
        bridge = q(p.bridge_conf_dir),
        runc = runtime("runc", p.bridge_conf_dir),
        ptp = runtime("ptp", p.ptp_conf_dir),
    )
}

/// CNI `bridge` like flannel's `cni0`: the bridge holds the gateway address, no masquerade and
/// no default route in the pod (host-local gets no `routes`), so pod traffic cannot leave.
pub fn bridge_conflist(network: &str, bridge: &str, subnet: Subnet) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "isDefaultGateway": false,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": subnet.to_string() }]] }
        }]
    })
    .to_string()
}

/// CNI `ptp` routed like GKE: no bridge, every host veth carries the same gateway /32 and a
/// host route to its pod. No default route in the pod, no masquerade.
pub fn ptp_conflist(network: &str, subnet: Subnet) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "ptp",
            "ipMasq": false,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": subnet.to_string() }]] }
        }]
    })
    .to_string()
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

    #[test]
    fn config_names_both_runtimes_with_their_cni_dirs() {
        let p = |s: &'static str| Path::new(s);
        let toml = containerd_toml(
            &ContainerdPaths {
                root: p("/s/root"),
                state: p("/s/state"),
                socket: p("/s/c.sock"),
                opt: p("/s/opt"),
                runc_root: p("/s/runc"),
                cni_bin_dir: p("/usr/lib/cni"),
                bridge_conf_dir: p("/s/cni/bridge"),
                ptp_conf_dir: p("/s/cni/ptp"),
            },
            "x/pause:1",
        );
        assert!(toml.contains("containerd.runtimes.ptp]\nruntime_type = \"io.containerd.runc.v2\"\ncni_conf_dir = \"/s/cni/ptp\""));
        assert!(toml.contains("containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\ncni_conf_dir = \"/s/cni/bridge\""));
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains("SystemdCgroup = false"));
        let bridge: serde_json::Value =
            serde_json::from_str(&bridge_conflist("n", "br", "10.1.0.0/24".parse().unwrap()))
                .unwrap();
        assert_eq!(bridge["plugins"][0]["ipMasq"], false);
        assert!(bridge["plugins"][0]["ipam"].get("routes").is_none());
    }
}
