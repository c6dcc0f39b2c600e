//! node-tracer: which pod is behind every veth, and what it sends — from one eBPF agent.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use node_tracer::{
    agent::{self, AgentOptions},
    lab, peers,
    pods::{self, PodConfig},
    probe::{AttachMode, ProbeOptions},
    snapshot,
    topology::{self, ScanOptions},
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
    /// A lab node in network namespaces: cni0 with two pods, an empty docker0, two routed
    /// GKE-style pods sharing one /32, and steady pings. For trying node-tracer anywhere.
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// Lab name (keys its state file; prefixes its namespaces and veths).
        #[arg(long, default_value = "lab", global = true)]
        name: String,
    },
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

#[derive(Args, Clone)]
struct RunArgs {
    /// Address to serve /metrics, /snapshot and /healthz on.
    #[arg(long, default_value = "0.0.0.0:9465")]
    listen: SocketAddr,
    /// Attach only to this interface (repeatable). Default: every veth, following churn.
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    sources: SourceArgs,
}

#[derive(Args, Clone)]
struct ProbeArgs {
    /// How to attach: tcx (kernel >= 6.6, first in the chain), netlink (clsact + filters), or
    /// auto (tcx where available).
    #[arg(long, value_enum, default_value = "auto")]
    attach_mode: AttachMode,
    /// Most ports the counter map holds.
    #[arg(long, default_value_t = 8192)]
    max_ports: u32,
    /// Most (port, direction, source MAC) entries kept; beyond it the least recent are evicted.
    #[arg(long, default_value_t = 65536)]
    max_macs: u32,
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

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Lab { action, name } => {
            anyhow::ensure!(
                !name.is_empty()
                    && name.len() <= 8
                    && name.chars().all(|c| c.is_ascii_alphanumeric()),
                "--name must be 1 to 8 letters or digits (it prefixes interface names)"
            );
            let mut spec = lab::LabSpec {
                name,
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
            let opts = AgentOptions {
                listen: args.listen,
                interfaces: args.interfaces.clone(),
                probe: ProbeOptions {
                    mode: args.probe.attach_mode,
                    max_ports: args.probe.max_ports,
                    max_macs: args.probe.max_macs,
                    log_level: cli.log_level,
                },
                pods: args.sources.pods(),
                scan: args.sources.scan(),
            };
            rt.block_on(agent::run(opts)).context("node-tracer run")
        }
        Command::Peers { json, sources } => rt.block_on(async {
            let pods = pods::discover(&sources.pods()).await;
            let mut scan = sources.scan();
            scan.extra_netns_paths.extend(pods.netns_paths());
            let topo = topology::scan(&scan)
                .await
                .context("reading the host's links")?;
            let snap = snapshot::build(&topo, &pods, &Default::default(), |_| false);
            if json {
                println!("{}", peers::to_json(&snap)?);
            } else {
                print!("{}", peers::to_table(&snap));
            }
            Ok(())
        }),
    }
}
