//! node-tracer: which pod is behind every veth, and what it sends — from one eBPF agent.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use node_tracer::{
    agent::{self, AgentOptions},
    macs,
    node::{self, Node, NodeOptions, lock},
    peers,
    pods::{self, PodConfig},
    probe::{AttachMode, ProbeOptions},
    shutdown, snapshot, top,
    topology::{self, ScanOptions},
    trace,
};
use node_tracer_lab as lab;

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
struct Cli {
    /// Log level: error, warn, info, debug, trace (also for the eBPF programs' own logs).
    #[arg(long, global = true, default_value = "info", env = "NODE_TRACER_LOG")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The agent: attach to every veth, follow veth churn, serve /metrics, /snapshot, /healthz.
    Run(RunArgs),
    /// What is behind every veth: mode, bridge and port, peer, namespace, pod.
    Peers {
        /// The DESIGN.md JSON (an array, one object per host-side veth).
        #[arg(long)]
        json: bool,
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
struct TopArgs {
    /// Read snapshots from a running agent (e.g. http://127.0.0.1:9465) instead of attaching
    /// our own programs, so a node with the agent installed is not attached twice.
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
    #[command(flatten)]
    credentials: ConnectArgs,
    /// Refresh interval in seconds.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Start with this filter (pod, namespace, veth or bridge text).
    #[arg(long)]
    filter: Option<String>,
    /// Sort column: pod veth bridge peer rx-pps tx-pps rx-bps tx-bps icmp tcp udp arp other
    /// macs; a leading - reverses.
    #[arg(long)]
    sort: Option<String>,
    /// Standalone only: on a host with no pods (auto), start a lab node first so there is
    /// something to see; removed on exit.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    lab: TopLab,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    sources: SourceArgs,
}

#[derive(Args, Clone)]
struct MacsArgs {
    /// Only this bridge (and no routed veths).
    #[arg(long)]
    bridge: Option<String>,
    /// One JSON object: bridges, their ports and MACs, routed veths, anomalies.
    #[arg(long)]
    json: bool,
    /// Read a running agent (e.g. http://127.0.0.1:9465) instead of attaching our own programs.
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
    #[command(flatten)]
    credentials: ConnectArgs,
    /// Without --connect: seconds to watch traffic before printing (MACs are seen only while
    /// programs are attached).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    duration: f64,
    /// Without --connect: attach only to this interface (repeatable). Default: every veth.
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    sources: SourceArgs,
}

async fn macs_command(args: &MacsArgs, log_level: log::LevelFilter) -> anyhow::Result<()> {
    let source = if let Some(url) = &args.connect {
        macs::Source::Connect {
            url: url.clone(),
            creds: args.credentials.credentials(),
        }
    } else {
        anyhow::ensure!(
            args.duration.is_finite() && args.duration >= 0.0,
            "--duration must be a number of seconds"
        );
        macs::Source::Attach {
            node: Box::new(node_options(
                &args.interfaces,
                &args.probe,
                &args.sources,
                log_level,
            )),
            duration: Duration::from_secs_f64(args.duration),
        }
    };
    let snap = macs::collect(source).await.context("node-tracer macs")?;
    let report = macs::report(&snap, args.bridge.as_deref())?;
    if args.json {
        println!("{}", macs::to_json(&report)?);
    } else {
        print!("{}", macs::to_table(&report));
    }
    Ok(())
}

#[derive(Subcommand)]
enum TraceWhat {
    /// ICMP and ICMPv6: every echo, unreachable, neighbour solicitation... on every veth.
    Icmp(TraceArgs),
}

#[derive(Args, Clone)]
struct TraceArgs {
    /// Trace through a running agent (e.g. http://127.0.0.1:9465): its programs write the events
    /// and it streams them, so nothing more is attached. Starts at once and costs the node's
    /// other traffic nothing; without it, the trace attaches programs of its own to every veth.
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
    #[command(flatten)]
    credentials: ConnectArgs,
    /// One JSON object per line (and a last one with "summary": true).
    #[arg(long)]
    json: bool,
    /// Stop after this many matching packets.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Only packets of this pod: NAME, NAMESPACE/NAME, with * wildcards (repeatable).
    #[arg(long)]
    pod: Vec<String>,
    /// Only packets on this veth, by name (with * wildcards) or ifindex (repeatable).
    #[arg(long)]
    veth: Vec<String>,
    /// Only packets from or to this IP, CIDR or MAC (repeatable).
    #[arg(long)]
    address: Vec<String>,
    /// Only this ICMP type: a name like echo-request or neighbor-solicitation, or a number.
    #[arg(long = "type")]
    types: Vec<String>,
    /// Also write the packets as pcapng, one interface per veth named after it and its pod.
    #[arg(long, value_name = "FILE.pcapng")]
    write: Option<PathBuf>,
    /// Leave out the per-ping path summary at the end.
    #[arg(long)]
    no_summary: bool,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    sources: SourceArgs,
}

#[derive(Subcommand)]
enum LabAction {
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
struct ConnectArgs {
    /// A file holding the agent's API token (the agent's --api-token-file; on a cluster, the
    /// token of the node-tracer-api Secret).
    #[arg(long, value_name = "FILE", help_heading = CONNECT, env = "NODE_TRACER_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// For an https:// URL: the CA certificate (PEM) that signed the agent's certificate.
    #[arg(long, value_name = "FILE", help_heading = CONNECT, env = "NODE_TRACER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), for an agent started with --tls-client-ca; with --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = CONNECT,
        env = "NODE_TRACER_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        help_heading = CONNECT,
        env = "NODE_TRACER_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

impl ConnectArgs {
    fn credentials(&self) -> node_tracer_client::Credentials {
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
struct ApiArgs {
    /// A file holding the bearer token that /snapshot and /trace/icmp ask for (mount a
    /// Kubernetes Secret there); read again when it changes. Without it or --tls-client-ca,
    /// those two endpoints answer only when --listen is a loopback address.
    #[arg(long, value_name = "FILE", help_heading = API, env = "NODE_TRACER_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Also serve TLS on --listen (plain HTTP stays, for /metrics and /healthz), with this
    /// certificate chain (PEM); read again when renewed.
    #[arg(long, value_name = "FILE", help_heading = API, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", help_heading = API, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve /snapshot and /trace/icmp to TLS clients whose certificate this CA (PEM) signed.
    #[arg(long, value_name = "FILE", help_heading = API, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ApiArgs {
    fn options(&self) -> node_tracer::api::ApiOptions {
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
struct RunArgs {
    /// Address to serve /metrics, /healthz, /snapshot and /trace/icmp on (see "API access").
    #[arg(long, default_value = "0.0.0.0:9465")]
    listen: SocketAddr,
    #[command(flatten)]
    api: ApiArgs,
    /// Attach only to this interface (repeatable). Default: every veth, following churn.
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// When this host has no pods, first start a lab node: real pods through its own containerd
    /// and CNI (bridge cni0 and routed ptp pods, an empty docker0, steady pings), removed on exit.
    /// Falls back to plain namespaces when containerd is missing. `--lab=always` builds it even
    /// when the host has pods.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "auto", value_name = "WHEN")]
    lab: Option<LabWhen>,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    sources: SourceArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TopLab {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LabWhen {
    /// Only when this host has no pods of its own.
    Auto,
    Always,
}

#[derive(Args, Clone)]
struct ProbeArgs {
    /// How to attach (see each value).
    #[arg(long, value_enum, default_value = "auto")]
    attach_mode: AttachMode,
    /// fast-start mode: seconds a veth stays on netlink before moving to tcx, so CNI finishes
    /// setting it up before we take rtnl.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_seconds)]
    tcx_after: Duration,
    /// Most ports attached to; the programs' counters take about 340 bytes of kernel memory per
    /// port and CPU.
    #[arg(long, default_value_t = 1024)]
    max_ports: u32,
    /// Most (port, direction, source MAC) entries kept; beyond it the least recent are evicted
    /// (about 100 bytes of kernel memory each, plus 32 per CPU).
    #[arg(long, default_value_t = 16384)]
    max_macs: u32,
    /// tcx: set /sys/kernel/rcu_expedited to 1 while a tcx attach or detach of ours runs (the
    /// veths present at start, each new veth, all of them at exit), and back to 0 after (also if
    /// the agent is killed: a watchdog process does it). Each waits for an RCU grace period
    /// under rtnl, twice per veth: 1,000 veths take about 25 s to attach, expedited about 1 s; a
    /// new veth about 25 ms, expedited a few. Host-wide while on: every synchronize_rcu() on the
    /// node is expedited (an interrupt to each busy CPU). Does nothing if the knob is already 1.
    #[arg(long)]
    expedite_rcu: bool,
}

#[derive(Args, Clone)]
struct SourceArgs {
    /// CRI runtime socket to ask for pods (repeatable; absent sockets are skipped).
    #[arg(long = "cri-socket", default_values = ["/run/containerd/containerd.sock", "/run/crio/crio.sock"])]
    cri_sockets: Vec<PathBuf>,
    /// CNI result cache.
    #[arg(long, default_value = "/var/lib/cni/results")]
    cni_results_dir: PathBuf,
    /// Named network namespaces.
    #[arg(long, default_value = "/run/netns")]
    netns_dir: PathBuf,
    /// procfs, for namespaces held only by processes.
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
}

impl SourceArgs {
    fn pods(&self) -> PodConfig {
        PodConfig {
            cri_sockets: self.cri_sockets.clone(),
            cni_results_dir: self.cni_results_dir.clone(),
            netns_dir: self.netns_dir.clone(),
            proc_root: self.proc_root.clone(),
            cri_timeout: Duration::from_secs(2),
        }
    }

    fn scan(&self) -> ScanOptions {
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

fn node_options(
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
        },
        pods: sources.pods(),
        scan: sources.scan(),
        attach_filter: None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp_millis()
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole context chain.
            eprintln!("node-tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The lab behind `run --lab`: real pods when containerd is here, plain namespaces otherwise.
enum RunningLab {
    Pods(Box<lab::pods::PodLab>),
    Netns(lab::LabSpec),
}

impl RunningLab {
    async fn stop(self) {
        log::info!("removing the lab");
        match self {
            RunningLab::Pods(l) => {
                if let Err(e) = l.stop().await {
                    log::warn!("lab teardown: {e}");
                }
            }
            RunningLab::Netns(spec) => {
                if let Err(e) = lab::down(&spec) {
                    log::warn!("lab teardown: {e}");
                }
            }
        }
    }
}

async fn start_lab(opts: &mut AgentOptions) -> anyhow::Result<RunningLab> {
    let have_containerd = std::process::Command::new("containerd")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have_containerd {
        log::info!("no pods on this host: starting a lab node with real pods (containerd + CNI)");
        match lab::pods::PodLab::start("lab").await {
            Ok(l) => {
                for p in &l.pods {
                    log::info!(
                        "lab pod {}/{} ({})",
                        p.namespace,
                        p.name,
                        if p.handler == "ptp" {
                            "routed"
                        } else {
                            "bridged"
                        }
                    );
                }
                if let Some(sock) = l.cri_socket() {
                    opts.node.pods.cri_sockets.insert(0, sock);
                }
                return Ok(RunningLab::Pods(Box::new(l)));
            }
            Err(e) => log::warn!("the pod lab did not start ({e}); using plain namespaces"),
        }
    } else {
        log::info!("containerd is not installed: the lab uses plain network namespaces");
    }
    let spec = lab::LabSpec::default();
    lab::up(&spec).context("lab up")?;
    Ok(RunningLab::Netns(spec))
}

async fn trace_icmp(
    node: &NodeOptions,
    opts: &trace::TraceOptions,
) -> anyhow::Result<trace::TraceStats> {
    let node = Node::start(node)
        .await
        .context("attaching to the node's veths")?;
    let result = async {
        let ring = lock(&node.state).probe.take_events()?;
        let state = node.state.clone();
        let lost = Box::new(move || {
            lock(&state)
                .probe
                .program_stats()
                .map_or(0, |s| s[node_tracer_common::STAT_EVENTS_LOST as usize])
        });
        let mut events = trace::RingBufSource::new(ring, lost)?;
        lock(&node.state).probe.set_tracing(true)?;
        log::info!(
            "tracing ICMP on {} veths; Ctrl-C to stop",
            lock(&node.state).probe.attached().count()
        );
        let state = node.state.clone();
        let ports = move |ifindex: u32| lock(&state).port(ifindex);
        let mut stdout = std::io::stdout().lock();
        let mut tracer = trace::Tracer::new(opts, &events)?;
        // Ctrl-C or SIGTERM end the trace the same way: summary written, pcapng complete.
        tokio::select! {
            r = tracer.pump(&mut events, &ports, &mut stdout) => { r?; }
            r = shutdown::wait() => { r.context("waiting for a stop signal")?; }
        }
        // Stop the programs writing, then report what they wrote before the stop and the pump
        // had not read yet (Ctrl-C or --timeout can come while the ring holds events).
        lock(&node.state).probe.set_tracing(false)?;
        tracer.drain(&mut events, &ports, &mut stdout)?;
        let stats = tracer.finish(&events, &mut stdout)?;
        anyhow::Ok(stats)
    }
    .await;
    // Per-packet events exist only while someone traces.
    let _ = lock(&node.state).probe.set_tracing(false);
    node.stop();
    result
}

/// `trace icmp --connect URL`: the events of a running agent's programs, labelled with its
/// snapshot (see [`trace::AgentTrace`]).
async fn trace_icmp_remote(
    url: &str,
    creds: &node_tracer_client::Credentials,
    opts: &trace::TraceOptions,
) -> anyhow::Result<trace::TraceStats> {
    // The client's errors name the agent already.
    let mut events = trace::AgentTrace::connect(url, creds).await?;
    let ports = events.ports();
    log::info!(
        "tracing ICMP on {} veths through the agent at {url}; Ctrl-C to stop",
        events.attached
    );
    let mut stdout = std::io::stdout().lock();
    // The agent sends wall-clock timestamps: its monotonic clock may not be ours.
    let mut tracer = trace::Tracer::new(opts, &events)?
        .with_clock(|ns| std::time::SystemTime::UNIX_EPOCH + Duration::from_nanos(ns));
    let ended = tokio::select! {
        r = tracer.pump(&mut events, &ports, &mut stdout) => r? == trace::Stop::SourceEnded,
        r = shutdown::wait() => { r.context("waiting for a stop signal")?; false }
    };
    tracer.drain(&mut events, &ports, &mut stdout)?;
    let stats = tracer.finish(&events, &mut stdout)?;
    if ended {
        anyhow::bail!(
            "the agent at {url} ended the trace stream{}",
            events.error().map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(stats)
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    // Commands that attach programs or build a lab undo it on a stop signal, whenever it comes.
    // The others keep the default action: reads have nothing to undo, `lab down` undoes a
    // half-built `lab up`, and the `--connect` clients attach nothing.
    let owns_cleanup = match &cli.command {
        Command::Run(_) | Command::Top(_) => true,
        Command::Trace {
            what: TraceWhat::Icmp(args),
        } => args.connect.is_none(),
        Command::Macs(args) => args.connect.is_none(),
        Command::Peers { .. } | Command::Lab { .. } | Command::RestoreRcuExpedited { .. } => false,
    };
    if owns_cleanup {
        shutdown::install().context("installing the stop-signal handlers")?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::RestoreRcuExpedited { value } => {
            node_tracer::probe::rcu::watchdog(&value)?;
            Ok(())
        }
        Command::Lab {
            action,
            name,
            bridge,
            docker_bridge,
        } => {
            anyhow::ensure!(
                !name.is_empty()
                    && name.len() <= 8
                    && name.chars().all(|c| c.is_ascii_alphanumeric()),
                "--name must be 1 to 8 letters or digits (it prefixes interface names)"
            );
            for b in [&bridge, &docker_bridge] {
                anyhow::ensure!(
                    !b.is_empty() && b.len() <= 15 && !b.contains(['/', ' ']),
                    "bridge name {b:?}: 1 to 15 characters, no '/' or spaces"
                );
            }
            let mut spec = lab::LabSpec {
                name,
                bridge,
                docker_bridge,
                ..lab::LabSpec::default()
            };
            match action {
                LabAction::Up { no_traffic } => {
                    spec.traffic = !no_traffic;
                    let state = lab::up(&spec).context("lab up")?;
                    for p in &state.pods {
                        println!(
                            "pod {:<12} veth {:<14} {:<12} {}",
                            p.netns,
                            p.veth,
                            p.ip,
                            if p.routed { "routed" } else { "bridged" }
                        );
                    }
                }
                LabAction::Down => lab::down(&spec).context("lab down")?,
            }
            Ok(())
        }
        Command::Run(args) => {
            let mut opts = AgentOptions {
                listen: args.listen,
                node: node_options(&args.interfaces, &args.probe, &args.sources, cli.log_level),
                api: args.api.options(),
            };
            // Two workers: following veth churn (an attach is two RCU grace periods) must not
            // queue behind a relabel rescan or a /metrics read running on the other one. A small
            // blocking pool: scrapes and attaches queue rather than spawning a thread (and a
            // malloc arena) each when hundreds arrive at once.
            drop(rt);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(8)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async {
                let lab = if args.lab == Some(LabWhen::Always)
                    || (args.lab == Some(LabWhen::Auto) && !lab::host_has_pods())
                {
                    Some(start_lab(&mut opts).await?)
                } else {
                    if args.lab.is_some() {
                        log::info!("this host has pods of its own: no lab needed");
                    }
                    None
                };
                let result = agent::run(opts).await.context("node-tracer run");
                if let Some(lab) = lab {
                    lab.stop().await;
                }
                result
            })
        }
        Command::Top(args) => {
            anyhow::ensure!(
                args.interval.is_finite() && args.interval > 0.0,
                "--interval must be a positive number of seconds"
            );
            let opts = top::TopOptions {
                interval: Duration::from_secs_f64(args.interval),
                filter: args.filter.clone(),
                sort: args.sort.clone(),
            };
            drop(rt);
            // Before any work: a standalone top would otherwise load and attach programs on
            // every veth of the node only to say it has nowhere to draw.
            if !std::io::stdout().is_terminal() {
                return Err(top::TopError::NotATerminal.into());
            }
            if let Some(url) = &args.connect {
                let source = top::HttpSource::new(url, &args.credentials.credentials())?;
                return Ok(top::run(opts, source)?);
            }
            // The view owns this thread; the node's tasks (churn, relabel) need workers of
            // their own.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            // Say so before attaching anything or starting a lab.
            top::require_terminal()?;
            let mut agent = AgentOptions {
                listen: ([127, 0, 0, 1], 0).into(),
                node: node_options(&[], &args.probe, &args.sources, cli.log_level),
                api: node_tracer::api::ApiOptions::default(),
            };
            let lab = match args.lab {
                TopLab::Always => true,
                TopLab::Auto => !lab::host_has_pods(),
                TopLab::Never => false,
            };
            let (node, lab) = rt.block_on(async {
                let lab = if lab {
                    eprintln!("node-tracer: no pods on this host: starting a lab node (--lab never: without one)");
                    Some(start_lab(&mut agent).await?)
                } else {
                    None
                };
                match Node::start(&agent.node).await {
                    Ok(n) => anyhow::Ok((n, lab)),
                    Err(e) => {
                        if let Some(l) = lab {
                            l.stop().await;
                        }
                        Err(anyhow::Error::new(e).context("attaching to the node's veths"))
                    }
                }
            })?;
            let source = node::LocalSource {
                state: node.state.clone(),
            };
            let result = top::run(opts, source);
            rt.block_on(async {
                node.stop();
                if let Some(l) = lab {
                    l.stop().await;
                }
            });
            Ok(result?)
        }
        Command::Trace {
            what: TraceWhat::Icmp(args),
        } => {
            let filter = trace::Filter {
                pods: args.pod.clone(),
                veths: args.veth.clone(),
                addresses: args
                    .address
                    .iter()
                    .map(|a| a.parse())
                    .collect::<Result<_, _>>()?,
                types: args
                    .types
                    .iter()
                    .map(|t| t.parse())
                    .collect::<Result<_, _>>()?,
            };
            let timeout = args
                .timeout
                .map(|t| {
                    anyhow::ensure!(
                        t.is_finite() && t > 0.0,
                        "--timeout must be a positive number of seconds"
                    );
                    Ok(Duration::from_secs_f64(t))
                })
                .transpose()?;
            let opts = trace::TraceOptions {
                json: args.json,
                count: args.count,
                timeout,
                filter,
                write: args.write.clone(),
                summary: !args.no_summary,
            };
            if let Some(url) = &args.connect {
                let stats = rt.block_on(trace_icmp_remote(
                    url,
                    &args.credentials.credentials(),
                    &opts,
                ))?;
                if stats.lost > 0 {
                    log::warn!("{} events were lost", stats.lost);
                }
                return Ok(());
            }
            // Attach only where the filter could match anything, when it names veths exactly.
            let exact: Vec<String> = args
                .veth
                .iter()
                .filter(|v| !v.contains('*') && v.parse::<u32>().is_err())
                .cloned()
                .collect();
            let only = if exact.len() == args.veth.len() {
                exact
            } else {
                Vec::new()
            };
            let mut node = node_options(&only, &args.probe, &args.sources, cli.log_level);
            if only.is_empty() && !(args.pod.is_empty() && args.veth.is_empty()) {
                let f = opts.filter.clone();
                node.attach_filter = Some(node::PortFilter(std::sync::Arc::new(move |p| {
                    f.could_match_port(p)
                })));
            }
            let stats = rt.block_on(trace_icmp(&node, &opts))?;
            if stats.lost > 0 {
                log::warn!("{} events were lost (ring buffer full)", stats.lost);
            }
            Ok(())
        }
        Command::Macs(args) => rt.block_on(macs_command(&args, cli.log_level)),
        Command::Peers { json, sources } => rt.block_on(async {
            let pods = pods::discover(&sources.pods()).await;
            let mut scan = sources.scan();
            scan.extra_netns_paths.extend(pods.netns_paths());
            let topo = topology::scan(&scan)
                .await
                .context("reading the host's links")?;
            let snap = snapshot::build(&topo, &pods, &std::collections::HashMap::new(), |_| false);
            if json {
                println!("{}", peers::to_json(&snap)?);
            } else {
                print!("{}", peers::to_table(&snap));
            }
            Ok(())
        }),
    }
}
