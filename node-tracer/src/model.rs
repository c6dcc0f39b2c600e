//! The one model every view reads: ports (host-side veths), their peer, their pod and their
//! counters, joined by ifindex. Views (`/metrics`, `top`, `peers`, `macs`, `trace`) never talk to
//! the kernel themselves; they render a [`Snapshot`].

use serde::{Deserialize, Serialize};

pub use crate::direction::Direction;
use crate::tcp::{Handshakes, TcpFlagCount};

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
    /// Dropped packets by reason and TCP retransmits, per pod (absent from older agents).
    #[serde(default)]
    pub drops: crate::drop_report::DropReport,
    /// The node the agent runs on (`run --node-name`, the DaemonSet's `NODE_NAME`, else the
    /// host name): what a view over several agents shows in its NODE column. Absent in JSON
    /// from agents older than it, and from a standalone view's own snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For a view over several agents: the ones it could not read for this snapshot, one line
    /// each naming the agent. Never in JSON.
    #[serde(skip)]
    pub unreachable: Vec<String>,
    /// For a view over several agents: when each node's agent read its counters (`taken_at_ms`
    /// is the latest of them). Rates divide by each node's own interval: one agent answering
    /// later than the others must not skew the rest. Never in JSON.
    #[serde(skip)]
    pub taken_at_by_node: std::collections::BTreeMap<String, u64>,
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

/// What sort of link a port is. A tap (a VM's NIC: QEMU/libvirt `vnetN`, Firecracker, KubeVirt)
/// is counted and labelled like a veth; an uplink (a bridge port that is neither, such as the
/// physical `eth0` in `br0` or a VXLAN) is listed but attached only on request, since its
/// traffic is the node's own and the pods' already counted on their veths.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    #[default]
    Veth,
    Tap,
    Uplink,
}

impl PortKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Veth => "veth",
            PortKind::Tap => "tap",
            PortKind::Uplink => "uplink",
        }
    }

    /// JSON leaves the field out for veths: rows and snapshots from before taps read the same.
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
    pub fn is_veth(&self) -> bool {
        *self == PortKind::Veth
    }
}

/// A host-side veth (or tap, or uplink: see [`PortKind`]) and everything joined to it.
// Its flags are independent facts the kernel and the configuration report (attached,
// promiscuous, hairpin, hairpin asked for), not states of one machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Port {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mode: Mode,
    /// Absent in JSON for a veth (and from agents older than taps).
    #[serde(default, skip_serializing_if = "PortKind::is_veth")]
    pub kind: PortKind,
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
    /// The bridge's CNI configuration asks for hairpin mode (`"hairpinMode": true`): a hairpin
    /// port here is expected, not an anomaly. Absent in JSON from agents older than it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hairpin_expected: bool,
    pub counters: PortCounters,
    /// Source MACs the programs saw on this port.
    pub macs: Vec<MacSeen>,
    /// The node this veth is on, set only by a view that joins several agents (ifindexes and
    /// names repeat from node to node); never in an agent's own JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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

/// Where a pod's identity was learned, best first: a source ranks above another when what it
/// says about a namespace is more specific and more trustworthy.
///
/// - CRI first: the runtime the kubelet drives knows the Kubernetes pod (name, namespace, uid)
///   for certain, and it is what `kubectl` shows.
/// - Docker next: the Engine knows each container's name, id and image for certain, and the
///   Kubernetes pod too where dockershim / cri-dockerd labelled the sandbox; but it knows
///   Kubernetes only through labels, so a CRI answer about the same namespace wins.
/// - Podman next: its `conmon` processes name each container (id and name) for certain, but
///   never a Kubernetes pod.
/// - The CNI result cache: the pod's name as the runtime passed it to CNI, but a cache (it can
///   outlive the pod until CNI DEL runs).
/// - Named namespaces: only a file name.
/// - Processes: only whatever process holds the namespace (`sleep[24705]`), a last resort.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PodSource {
    #[serde(rename = "cri")]
    Cri,
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "podman")]
    Podman,
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
            PodSource::Docker => "docker",
            PodSource::Podman => "podman",
            PodSource::CniCache => "cni-cache",
            PodSource::Netns => "netns",
            PodSource::Proc => "proc",
        }
    }
}

/// The pod (or container, or named namespace) behind a veth.
///
/// A container engine's container without a Kubernetes pod is a pod here too, named after the
/// container with an empty namespace: every view (and the `pod` label of /metrics, which a
/// Docker host's dashboards then read as the container's name) shows `shop-web`, not the
/// process that happens to hold its namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub source: PodSource,
    /// The engine's record of the container that owns the namespace (for a Kubernetes pod on
    /// Docker: its `k8s_POD_…` sandbox), when a container engine named it. Absent in JSON from
    /// agents older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
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

    /// The container's name as Docker or Podman gives it (`docker ps`'s NAMES): the `name`
    /// label cAdvisor's `container_network_*` series carry. Empty without a container engine's
    /// record (a pod the CRI named), which Prometheus reads as no label.
    pub fn container_name(&self) -> &str {
        self.container.as_ref().map_or("", |c| c.name.as_str())
    }
}

/// A container as its engine names it (`docker ps`, `docker inspect`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// The engine: `docker` or `podman`.
    pub runtime: String,
    /// The full id (`docker ps` shows its first 12 characters).
    pub id: String,
    /// The name without Docker's leading `/`.
    pub name: String,
    /// The image as the container was created from it (`docker ps`'s IMAGE).
    pub image: String,
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
    /// TCP SYN, SYN-ACK, RST and FIN packets by direction (only flags seen).
    #[serde(default)]
    pub tcp_flags: Vec<TcpFlagCount>,
    /// TCP handshake times by direction of the SYN (only directions with a handshake).
    #[serde(default)]
    pub handshakes: Vec<Handshakes>,
    /// Packets the kernel counted on the veth that our programs never saw (see `coverage`),
    /// received and transmitted from the pod's point of view.
    #[serde(default)]
    pub unseen_rx: u64,
    #[serde(default)]
    pub unseen_tx: u64,
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

/// The agent's view of itself: what `/metrics` reports besides the ports, kept by the node.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Attached interfaces: (tcx, netlink).
    pub attached: (usize, usize),
    pub attach_errors: u64,
    /// Summed `AGENT_STATS` of the programs (index `STAT_*`).
    pub program_stats: [u64; node_tracer_common::STAT_COUNT as usize],
    pub netlink_resyncs: u64,
    pub link_events: u64,
    /// Peer namespaces entered to read veth peers (see `topology::Scanner`).
    pub netns_visits: u64,
    /// `trace icmp --connect` clients streaming from this agent now.
    pub trace_streams: u64,
    /// Per program: (name, kernel program id, total run time, run count); times and counts are
    /// zero unless `kernel.bpf_stats_enabled`.
    pub program_runs: Vec<(&'static str, u32, std::time::Duration, u64)>,
    /// Entries per map: (name, count).
    pub map_entries: Vec<(&'static str, usize)>,
    /// Refused API requests by reason (see `api::Denial`).
    pub api_denied: Vec<(&'static str, u64)>,
    /// Map operations of the agent itself that failed: (map, operation, count).
    pub map_errors: Vec<(&'static str, &'static str, u64)>,
    /// Failures the agent survived, by operation (see `failures`).
    pub errors: Vec<(&'static str, u64)>,
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
        assert_eq!(
            serde_json::to_string(&PodSource::Docker).unwrap(),
            "\"docker\""
        );
    }

    #[test]
    fn the_runtime_that_knows_kubernetes_outranks_docker_which_outranks_the_files() {
        assert!(PodSource::Cri < PodSource::Docker);
        assert!(PodSource::Docker < PodSource::Podman && PodSource::Podman < PodSource::CniCache);
        assert!(PodSource::CniCache < PodSource::Netns && PodSource::Netns < PodSource::Proc);
    }

    #[test]
    fn pods_from_agents_without_containers_still_parse() {
        let old = r#"{"namespace":"default","name":"web","uid":"u","source":"cri"}"#;
        let p: Pod = serde_json::from_str(old).unwrap();
        assert_eq!(p.container, None);
    }
}
