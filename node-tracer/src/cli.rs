//! The command line's definition: every subcommand and flag, with its help. What each command
//! does with them is in `cmd/`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use node_tracer::{
    node::NodeOptions,
    pods::PodConfig,
    probe::{AttachMode, ProbeOptions},
    topology::ScanOptions,
};

#[derive(Parser)]
#[command(
    name = "node-tracer",
    version,
    about = "eBPF traffic observer for container nodes: every veth, its pod, its traffic",
    long_about = "node-tracer attaches tc eBPF programs to every veth of this node (bridge ports \
                  and routed veths alike), counts packets, bytes, protocols and source MACs per \
                  port, and labels every port with the pod behind it by resolving the veth's peer \
                  (peer ifindex + link-netnsid -> network namespace -> pod)."
)]
pub struct Cli {
    /// Log level: error, warn, info, debug, trace (also for the eBPF programs' own logs).
    #[arg(long, global = true, default_value = "info", env = "NODE_TRACER_LOG")]
    pub log_level: log::LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The agent: attach to every veth, follow veth churn, serve /metrics, /snapshot, /healthz.
    Run(RunArgs),
    /// What is behind every veth: mode, bridge and port, peer, namespace, pod; with --connect,
    /// also which veths passed packets past the agent's hooks (UNSEEN).
    Peers {
        /// The DESIGN.md JSON (an array, one object per host-side veth).
        #[arg(long)]
        json: bool,
        /// Read a running agent (e.g. http://127.0.0.1:9465) instead of scanning the node. Its
        /// ports carry its counters, so a veth whose kernel counters exceed what the agent's
        /// hooks saw is flagged: an UNSEEN column, `unseen` in JSON. `peers` alone attaches no
        /// programs and has no counters to compare: no UNSEEN column, `unseen` is null.
        #[arg(long, value_name = "URL")]
        connect: Option<String>,
        #[command(flatten)]
        credentials: ConnectArgs,
        #[command(flatten)]
        sources: SourceArgs,
    },
    /// Live view: rates per veth and pod, protocol mix, MACs; sortable, filterable.
    Top(TopArgs),
    /// Which veth sees each packet: one line per packet per veth and direction.
    Trace {
        #[command(subcommand)]
        what: TraceWhat,
    },
    /// MACs per bridge port (`brctl showmacs` that knows the pods): FDB entries joined with the
    /// pod behind each port and the source MACs it sent; flags duplicates, spoofing, stale
    /// entries, promiscuous and hairpin ports.
    Macs(MacsArgs),
    /// A lab node in network namespaces: cni0 with two pods, an empty docker0, two routed
    /// GKE-style pods sharing one /32, and steady pings. For trying node-tracer anywhere.
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// Lab name (keys its state file; prefixes its namespaces and veths).
        #[arg(long, default_value = "lab", global = true)]
        name: String,
        /// The flannel-style bridge of the lab.
        #[arg(long, default_value = "cni0", global = true)]
        bridge: String,
        /// The empty, docker0-like bridge of the lab.
        #[arg(long, default_value = "docker0", global = true)]
        docker_bridge: String,
    },
    /// Internal: the `--expedite-rcu` watchdog. Waits for EOF on stdin, then writes VALUE back
    /// to /sys/kernel/rcu_expedited.
    #[command(name = "restore-rcu-expedited", hide = true)]
    RestoreRcuExpedited {
        #[arg(value_parser = ["0", "1"])]
        value: String,
    },
}

#[derive(Args, Clone)]
pub struct TopArgs {
    /// Read snapshots from a running agent (e.g. http://127.0.0.1:9465) instead of attaching
    /// our own programs, so a node with the agent installed is not attached twice. Repeat it,
    /// or give a DNS name with several addresses (a headless Service), for one view over
    /// several nodes with a NODE column.
    #[arg(long, value_name = "URL")]
    pub connect: Vec<String>,
    #[command(flatten)]
    pub credentials: ConnectArgs,
    /// Refresh interval in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Start with this filter (pod, namespace, veth or bridge text).
    #[arg(long)]
    pub filter: Option<String>,
    /// Sort column: pod veth bridge peer rx-pps tx-pps rx-bps tx-bps icmp tcp udp arp other
    /// macs drops retx unseen; a leading - reverses.
    #[arg(long)]
    pub sort: Option<String>,
    /// Standalone only: on a host with no pods (auto), start a lab node first so there is
    /// something to see; removed on exit.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub lab: TopLab,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Args, Clone)]
pub struct MacsArgs {
    /// Only this bridge (and no routed veths).
    #[arg(long)]
    pub bridge: Option<String>,
    /// One JSON object: bridges, their ports and MACs, routed veths, anomalies.
    #[arg(long)]
    pub json: bool,
    /// Read a running agent (e.g. http://127.0.0.1:9465) instead of attaching our own programs.
    /// Repeat it, or give a DNS name with several addresses, for every node at once (a NODE
    /// column; anomalies are per node).
    #[arg(long, value_name = "URL")]
    pub connect: Vec<String>,
    #[command(flatten)]
    pub credentials: ConnectArgs,
    /// Without --connect: seconds to watch traffic before printing (MACs are seen only while
    /// programs are attached).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub duration: f64,
    /// Without --connect: attach only to this interface (repeatable). Default: every veth.
    #[arg(long = "interface", short = 'i')]
    pub interfaces: Vec<String>,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Subcommand)]
pub enum TraceWhat {
    /// ICMP and ICMPv6: every echo, unreachable, neighbour solicitation... on every veth.
    Icmp(TraceArgs),
}

#[derive(Args, Clone)]
pub struct TraceArgs {
    /// Trace through a running agent (e.g. http://127.0.0.1:9465): its programs write the events
    /// and it streams them, so nothing more is attached. Starts at once and costs the node's
    /// other traffic nothing; without it, the trace attaches programs of its own to every veth.
    /// Repeat it, or give a DNS name with several addresses, to trace on several nodes at once:
    /// lines carry the node, and a ping's path runs across them. An agent that does not answer
    /// or goes away is named in a warning; the others trace on.
    #[arg(long, value_name = "URL")]
    pub connect: Vec<String>,
    #[command(flatten)]
    pub credentials: ConnectArgs,
    /// One JSON object per line (and a last one with "summary": true).
    #[arg(long)]
    pub json: bool,
    /// Stop after this many matching packets.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Only packets of this pod: NAME, NAMESPACE/NAME, with * wildcards (repeatable). A pod that
    /// starts while the trace runs is traced too; but when --pod and --veth match no veth of the
    /// node as the trace starts, it is refused at once (start it once the pod runs).
    #[arg(long)]
    pub pod: Vec<String>,
    /// Only packets on this veth, by name (with * wildcards) or ifindex (repeatable). Refused at
    /// once when no veth matches (see --pod).
    #[arg(long)]
    pub veth: Vec<String>,
    /// Only packets from or to this IP, CIDR or MAC (repeatable).
    #[arg(long)]
    pub address: Vec<String>,
    /// Only this ICMP type: a name like echo-request or neighbor-solicitation, or a number.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Also write the packets as pcapng, one interface per veth named after it and its pod.
    #[arg(long, value_name = "FILE.pcapng")]
    pub write: Option<PathBuf>,
    /// Leave out the per-ping path summary at the end.
    #[arg(long)]
    pub no_summary: bool,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Subcommand, Clone, Copy)]
pub enum LabAction {
    /// Build the lab (does nothing if it is already up).
    Up {
        /// Do not start the pings.
        #[arg(long)]
        no_traffic: bool,
    },
    /// Remove everything the lab made.
    Down,
}

const CONNECT: &str =
    "Credentials for --connect (from files or the environment, never the command line)";
const API: &str = "API access (/snapshot and /trace/icmp; /metrics and /healthz are always open)";

/// How `--connect` proves who it is to an agent that asks. Secrets only from files: a token on
/// a command line is in `ps` for every user of the node.
#[derive(Args, Clone, Default)]
pub struct ConnectArgs {
    /// A file holding the agent's API token (the agent's --api-token-file; on a cluster, the
    /// token of the node-tracer-api Secret).
    #[arg(long, value_name = "FILE", help_heading = CONNECT, env = "NODE_TRACER_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// For an https:// URL: the CA certificate (PEM) that signed the agent's certificate.
    #[arg(long, value_name = "FILE", help_heading = CONNECT, env = "NODE_TRACER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), for an agent started with --tls-client-ca; with --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = CONNECT,
        env = "NODE_TRACER_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        help_heading = CONNECT,
        env = "NODE_TRACER_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl ConnectArgs {
    pub fn credentials(&self) -> node_tracer_client::Credentials {
        node_tracer_client::Credentials {
            token_file: self.api_token_file.clone(),
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }
}

/// Who may read `/snapshot` and `/trace/icmp` (see node_tracer::api).
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// A file holding the bearer token that /snapshot and /trace/icmp ask for (mount a
    /// Kubernetes Secret there); read again when it changes. Without it or --tls-client-ca,
    /// those two endpoints answer only when --listen is a loopback address.
    #[arg(long, value_name = "FILE", help_heading = API, env = "NODE_TRACER_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Also serve TLS on --listen (plain HTTP stays, for /metrics and /healthz), with this
    /// certificate chain (PEM); read again when renewed.
    #[arg(long, value_name = "FILE", help_heading = API, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", help_heading = API, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve /snapshot and /trace/icmp to TLS clients whose certificate this CA (PEM) signed.
    #[arg(long, value_name = "FILE", help_heading = API, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ApiArgs {
    pub fn options(&self) -> node_tracer::api::ApiOptions {
        node_tracer::api::ApiOptions {
            token_file: self.api_token_file.clone(),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(node_tracer::api::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
        }
    }
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Address to serve /metrics, /healthz, /snapshot and /trace/icmp on (see "API access").
    #[arg(long, default_value = "0.0.0.0:9465")]
    pub listen: SocketAddr,
    /// This node's name in /snapshot, which views over several agents show in their NODE
    /// column (the DaemonSet sets NODE_NAME from the pod's spec.nodeName). Default: the host
    /// name.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Attach only to this interface (repeatable). Default: every veth, following churn.
    #[arg(long = "interface", short = 'i')]
    pub interfaces: Vec<String>,
    /// When this host has no pods, first start a lab node: real pods through its own containerd
    /// and CNI (bridge cni0 and routed ptp pods, an empty docker0, steady pings), removed on exit.
    /// Falls back to plain namespaces when containerd is missing. `--lab=always` builds it even
    /// when the host has pods.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "auto", value_name = "WHEN")]
    pub lab: Option<LabWhen>,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopLab {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabWhen {
    /// Only when this host has no pods of its own.
    Auto,
    Always,
}

#[derive(Args, Clone)]
pub struct ProbeArgs {
    /// How to attach (see each value).
    #[arg(long, value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,
    /// fast-start mode: seconds a veth stays on netlink before moving to tcx, so CNI finishes
    /// setting it up before we take rtnl.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_seconds)]
    pub tcx_after: Duration,
    /// Most ports attached to; the programs' counters take about 340 bytes of kernel memory per
    /// port and CPU.
    #[arg(long, default_value_t = 1024)]
    pub max_ports: u32,
    /// Most (port, direction, source MAC) entries kept; beyond it the least recent are evicted
    /// (about 100 bytes of kernel memory each, plus 32 per CPU).
    #[arg(long, default_value_t = 16384)]
    pub max_macs: u32,
    /// tcx: set /sys/kernel/rcu_expedited to 1 while a tcx attach or detach of ours runs (the
    /// veths present at start, each new veth, all of them at exit), and back to 0 after (also if
    /// the agent is killed: a watchdog process does it). Each waits for an RCU grace period
    /// under rtnl, twice per veth: 1,000 veths take about 25 s to attach, expedited about 1 s; a
    /// new veth about 25 ms, expedited a few. Host-wide while on: every synchronize_rcu() on the
    /// node is expedited (an interrupt to each busy CPU). Does nothing if the knob is already 1.
    #[arg(long)]
    pub expedite_rcu: bool,
    /// Do not count dropped packets by reason (tracepoint `kfree_skb`) nor TCP retransmits
    /// (tracepoint `tcp_retransmit_skb`) per pod. They cost nothing per delivered packet, only
    /// per drop and per retransmit.
    #[arg(long)]
    pub no_drop_tracking: bool,
    /// Also attach to uplinks: bridge ports that are neither veths nor taps (the node's NIC in a
    /// bridge, a VXLAN). They are listed by `peers` and `macs` either way; unattached by default
    /// because their traffic is the node's own plus what the pods' veths already count.
    #[arg(long)]
    pub attach_uplinks: bool,
}

#[derive(Args, Clone)]
pub struct SourceArgs {
    /// CRI runtime socket to ask for pods (repeatable; absent sockets are skipped). The defaults
    /// are containerd, CRI-O, k3s and RKE2, MicroK8s and cri-dockerd.
    #[arg(long = "cri-socket", default_values = node_tracer::pods::DEFAULT_CRI_SOCKETS)]
    pub cri_sockets: Vec<PathBuf>,
    /// Docker Engine API socket to ask for containers (repeatable; absent sockets are skipped).
    #[arg(long = "docker-socket", default_value = node_tracer::pods::docker::DEFAULT_SOCKET)]
    pub docker_sockets: Vec<PathBuf>,
    /// CNI result cache.
    #[arg(long, default_value = "/var/lib/cni/results")]
    pub cni_results_dir: PathBuf,
    /// CNI network configuration: a bridge whose network asks for `"hairpinMode": true` has
    /// hairpin ports by design (`macs` notes them instead of warning).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Named network namespaces.
    #[arg(long, default_value = "/run/netns")]
    pub netns_dir: PathBuf,
    /// procfs, for namespaces held only by processes.
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
}

impl SourceArgs {
    pub fn pods(&self) -> PodConfig {
        PodConfig {
            cri_sockets: self.cri_sockets.clone(),
            cni_results_dir: self.cni_results_dir.clone(),
            cni_conf_dir: self.cni_conf_dir.clone(),
            netns_dir: self.netns_dir.clone(),
            proc_root: self.proc_root.clone(),
            cri_timeout: Duration::from_secs(2),
            docker_sockets: self.docker_sockets.clone(),
            docker_timeout: Duration::from_secs(2),
        }
    }

    pub fn scan(&self) -> ScanOptions {
        ScanOptions {
            extra_netns_paths: Vec::new(),
            proc_root: self.proc_root.clone(),
            netns_dir: self.netns_dir.clone(),
        }
    }
}

/// A duration in seconds: a non-negative number, fractions allowed.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds (>= 0)"))
}

pub fn node_options(
    interfaces: &[String],
    probe: &ProbeArgs,
    sources: &SourceArgs,
    log_level: log::LevelFilter,
) -> NodeOptions {
    NodeOptions {
        interfaces: interfaces.to_vec(),
        probe: ProbeOptions {
            mode: probe.attach_mode,
            max_ports: probe.max_ports,
            max_macs: probe.max_macs,
            tcx_after: probe.tcx_after,
            log_level,
            expedite_rcu: probe.expedite_rcu,
            track_drops: !probe.no_drop_tracking,
            attach_uplinks: probe.attach_uplinks,
        },
        pods: sources.pods(),
        scan: sources.scan(),
        attach_filter: None,
        node_name: None,
    }
}
