//! The one model every view reads: ports (host-side veths), their peer, their pod and their
//! counters, joined by ifindex. Views (`/metrics`, `top`, `peers`, `macs`, `trace`) never talk to
//! the kernel themselves; they render a [`Snapshot`].

use serde::{Deserialize, Serialize};

/// Protocol buckets counted by the programs, in the order of `node_tracer_common::Proto`.
pub const PROTOCOLS: [&str; 8] = [
    "arp",
    "icmp",
    "icmpv6",
    "tcp",
    "udp",
    "ipv4_other",
    "ipv6_other",
    "other",
];

/// Everything known about the node at one instant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch when the counters were read.
    pub taken_at_ms: u64,
    /// One entry per host-side veth, sorted by ifindex.
    pub ports: Vec<Port>,
    /// Every bridge of the host namespace, with or without ports (`docker0` often has none).
    pub bridges: Vec<Bridge>,
    /// The bridges' forwarding databases, read when the snapshot was taken (learning changes
    /// them every second, so they are not part of the slower-moving topology). Absent in JSON
    /// from agents older than `macs`.
    #[serde(default)]
    pub fdb: Vec<FdbEntry>,
}

/// How a veth is wired on the host side.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A port of a Linux bridge (`cni0`, `docker0`): flannel, docker, CNI `bridge`.
    Bridged,
    /// No bridge: the host routes to the pod through this veth (GKE, Calico, CNI `ptp`).
    Routed,
    /// Neither a bridge port nor the target of a route.
    #[default]
    Unattached,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bridged => "bridged",
            Mode::Routed => "routed",
            Mode::Unattached => "unattached",
        }
    }
}

/// A host-side veth and everything joined to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Port {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mode: Mode,
    /// The bridge this veth is a port of.
    pub master: Option<String>,
    /// The bridge port number (`brctl showmacs` "port no").
    pub port_no: Option<u16>,
    /// CIDR strings configured on the host side (routed mode: often the same /32 on every veth).
    pub addresses: Vec<String>,
    /// Destinations the host routes via this veth (CIDR strings).
    pub routes: Vec<String>,
    pub peer: Option<Peer>,
    pub pod: Option<Pod>,
    /// Whether our programs are attached on this veth (ingress and egress).
    pub attached: bool,
    pub promiscuous: bool,
    pub hairpin: bool,
    pub counters: PortCounters,
    /// Source MACs the programs saw on this port.
    pub macs: Vec<MacSeen>,
}

/// The other end of a veth, usually `eth0` in a pod's namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Peer {
    /// ifindex inside the peer's own namespace (every pod's eth0 is 2: never a key on its own).
    pub ifindex: u32,
    pub name: Option<String>,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
    /// The host's id for the peer's namespace (`link-netnsid`); `None` when the peer is in the host
    /// namespace itself.
    pub netnsid: Option<i32>,
    /// A path that opens the peer's namespace, when one was found.
    pub netns: Option<String>,
    /// Inode of the peer's namespace (as in `/proc/PID/ns/net -> net:[INODE]`): the key that
    /// joins a peer to its pod.
    pub netns_inode: Option<u64>,
}

/// Where a pod's identity was learned, best first.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PodSource {
    #[serde(rename = "cri")]
    Cri,
    #[serde(rename = "cni-cache")]
    CniCache,
    #[serde(rename = "netns")]
    Netns,
    #[serde(rename = "proc")]
    Proc,
}

impl PodSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSource::Cri => "cri",
            PodSource::CniCache => "cni-cache",
            PodSource::Netns => "netns",
            PodSource::Proc => "proc",
        }
    }
}

/// The pod (or container, or named namespace) behind a veth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub source: PodSource,
}

impl Pod {
    /// `namespace/name` as kubectl writes it, or the name alone for a named network namespace or
    /// a process, which have no Kubernetes namespace.
    pub fn qualified_name(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

/// Packet and byte counters of one port, from the pod's point of view: the host veth's ingress is
/// the pod's transmit, its egress the pod's receive.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortCounters {
    /// Per protocol (index as in [`PROTOCOLS`]).
    pub rx_packets: [u64; 8],
    pub rx_bytes: [u64; 8],
    pub tx_packets: [u64; 8],
    pub tx_bytes: [u64; 8],
    /// ICMP / ICMPv6 messages by direction and type.
    pub icmp: Vec<IcmpCount>,
}

impl PortCounters {
    pub fn rx_packets_total(&self) -> u64 {
        self.rx_packets.iter().sum()
    }
    pub fn tx_packets_total(&self) -> u64 {
        self.tx_packets.iter().sum()
    }
    pub fn rx_bytes_total(&self) -> u64 {
        self.rx_bytes.iter().sum()
    }
    pub fn tx_bytes_total(&self) -> u64 {
        self.tx_bytes.iter().sum()
    }
}

/// Direction from the pod's point of view.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The pod received it (host veth egress).
    Receive,
    /// The pod sent it (host veth ingress).
    Transmit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Receive => "receive",
            Direction::Transmit => "transmit",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IcmpCount {
    pub direction: Direction,
    /// 4 for ICMP, 6 for ICMPv6.
    pub family: u8,
    pub icmp_type: u8,
    pub count: u64,
}

/// A source MAC seen on a port in one direction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MacSeen {
    pub mac: String,
    pub direction: Direction,
    pub packets: u64,
    pub bytes: u64,
    /// Milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

/// A bridge of the host namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Bridge {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
    /// Names of all its ports (veths and anything else).
    pub ports: Vec<String>,
}

/// One entry of a bridge's forwarding database (`bridge fdb show br BRIDGE`, master entries).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdbEntry {
    /// The bridge whose database holds the entry.
    pub bridge: String,
    pub bridge_ifindex: u32,
    /// The device frames to `mac` leave through: a port, or the bridge itself for its own MACs.
    pub ifindex: u32,
    pub interface: String,
    /// Port number of `interface` (`None` when the entry points at the bridge itself).
    pub port_no: Option<u16>,
    pub mac: String,
    pub vlan: Option<u16>,
    pub state: FdbState,
    /// Put there by software (a VXLAN controller, switchdev), not learned from frames.
    pub extern_learn: bool,
    /// Pinned to its port: a frame from another port cannot move it.
    pub sticky: bool,
    /// Milliseconds since the entry was last refreshed (`brctl showmacs`' ageing timer).
    pub updated_ms: u64,
    /// Milliseconds since the entry last forwarded a frame.
    pub used_ms: u64,
}

/// How an FDB entry got there.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FdbState {
    /// A MAC of the port or bridge itself (`permanent`, brctl's "is local? yes"): never ages.
    Local,
    /// Added by hand (`bridge fdb add ... static`): never ages, never learned.
    Static,
    /// Learned from a frame's source MAC on that port (or added as `dynamic`); ages out.
    #[default]
    Learned,
}

impl FdbState {
    pub fn as_str(self) -> &'static str {
        match self {
            FdbState::Local => "local",
            FdbState::Static => "static",
            FdbState::Learned => "learned",
        }
    }
}

/// Formats a MAC the way `ip link` does.
pub fn format_mac(mac: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_formats_like_ip_link() {
        assert_eq!(
            format_mac(&[0x02, 0x42, 0xfd, 0x0b, 0x0c, 0xf4]),
            "02:42:fd:0b:0c:f4"
        );
    }

    #[test]
    fn snapshots_without_fdb_still_parse() {
        let old = r#"{"taken_at_ms":1,"ports":[],"bridges":[]}"#;
        let s: Snapshot = serde_json::from_str(old).unwrap();
        assert!(s.fdb.is_empty());
    }

    #[test]
    fn pod_source_serializes_as_design_says() {
        let s = serde_json::to_string(&PodSource::CniCache).unwrap();
        assert_eq!(s, "\"cni-cache\"");
    }
}
