//! Throughput with and without observers: iperf3 between two pods on one bridge, client pinned to
//! CPU 0 and server to CPU 1, configurations alternated within every round (and their order
//! rotated round by round) so that slow drifts of a shared machine hit all of them alike.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Settings,
    agent::{self, Agent},
    bpf,
    lab::{self, Lab},
    sys::{self, Proc},
};

/// Small-packet UDP payload (the smallest iperf3 accepts with its sequence header is 16).
const UDP_LEN: u32 = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// Nothing attached.
    Baseline,
    /// `node-tracer run`.
    Agent,
    /// tcpdump on both veths (what people do today).
    Tcpdump,
    /// `node-tracer run` plus `node-tracer trace icmp --connect` to it.
    Trace,
    /// An empty tcx program (`return TCX_NEXT`) on both hooks of both veths: what any tc
    /// observer pays before doing anything.
    EmptyTcx,
}

pub const CONFIGS: [Config; 5] = [
    Config::Baseline,
    Config::Agent,
    Config::Tcpdump,
    Config::Trace,
    Config::EmptyTcx,
];

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Agent => "node-tracer",
            Config::Tcpdump => "tcpdump",
            Config::Trace => "node-tracer + trace",
            Config::EmptyTcx => "empty tcx program",
        }
    }

    /// TCP only where the goal asks for it, and for the empty program, which shows how far
    /// one round's TCP figure moves by itself; the others are left out to keep the run short.
    fn runs_tcp(self) -> bool {
        matches!(self, Config::Baseline | Config::Agent | Config::EmptyTcx)
    }
}

/// Per configuration, one sample per round.
#[derive(Debug, Default)]
pub struct Results {
    /// (config, round, received UDP packets per second)
    pub udp_pps: Vec<(Config, usize, f64)>,
    /// (config, round, received TCP bits per second)
    pub tcp_bps: Vec<(Config, usize, f64)>,
    /// Agent CPU (% of one core) while it observed the UDP load.
    pub load_cpu_pct: Vec<f64>,
}

impl Results {
    /// Per-round ratios of `config` over the baseline of the same round.
    pub fn ratios(samples: &[(Config, usize, f64)], config: Config) -> Vec<f64> {
        samples
            .iter()
            .filter(|(c, _, _)| *c == config)
            .filter_map(|(_, round, v)| {
                samples
                    .iter()
                    .find(|(c, r, _)| *c == Config::Baseline && r == round)
                    .filter(|(_, _, b)| *b > 0.0)
                    .map(|(_, _, b)| v / b)
            })
            .collect()
    }
}

pub fn run(lab: &Lab, s: &Settings) -> Result<Results> {
    let mut out = Results::default();
    for round in 0..s.rounds {
        let mut order = CONFIGS.to_vec();
        order.rotate_left(round % CONFIGS.len());
        for config in order {
            sys::check_interrupted()?;
            let observers = Observers::start(lab, config, s, round)?;
            let (pps, cpu) = observe(&observers, || udp(lab, s.seconds))?;
            eprintln!(
                "    round {}/{} {:<20} udp {:>9.0} pps{}",
                round + 1,
                s.rounds,
                config.name(),
                pps,
                cpu.map(|c| format!("  (agent cpu {c:.1}%)"))
                    .unwrap_or_default()
            );
            out.udp_pps.push((config, round, pps));
            if config == Config::Agent
                && let Some(c) = cpu
            {
                out.load_cpu_pct.push(c);
            }
            if config.runs_tcp() {
                let bps = tcp(lab, s.seconds)?;
                eprintln!(
                    "    round {}/{} {:<20} tcp {:>9.2} Gbit/s",
                    round + 1,
                    s.rounds,
                    config.name(),
                    bps / 1e9
                );
                out.tcp_bps.push((config, round, bps));
            }
            drop(observers);
        }
    }
    Ok(out)
}

/// Runs `f`, returning its result and the agent's CPU use meanwhile (when an agent runs).
fn observe(obs: &Observers, work: impl FnOnce() -> Result<f64>) -> Result<(f64, Option<f64>)> {
    let pid = obs.agent.as_ref().map(Agent::pid);
    let before = pid.map(sys::cpu_seconds).transpose()?;
    let start = Instant::now();
    let value = work()?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (pid, before) {
        (Some(pid), Some(before)) => Some((sys::cpu_seconds(pid)? - before) / wall * 100.0),
        _ => None,
    };
    Ok((value, cpu))
}

/// Whatever watches the veths in one configuration; stopped on drop.
struct Observers {
    agent: Option<Agent>,
    others: Vec<Proc>,
    /// tcx links of the empty program; closed (detached) on drop.
    links: Vec<std::os::fd::OwnedFd>,
}

impl Observers {
    fn start(lab: &Lab, config: Config, s: &Settings, round: usize) -> Result<Self> {
        let node = lab.node();
        let veths = [lab::CLIENT_VETH.to_string(), lab::SERVER_VETH.to_string()];
        let mut o = Self {
            agent: None,
            others: Vec::new(),
            links: Vec::new(),
        };
        match config {
            Config::Baseline => {}
            Config::Agent | Config::Trace => {
                let log = s.out_dir.join(format!("agent-traffic-{round}.log"));
                o.agent = Some(Agent::start(&node, &[], &log)?);
                agent::wait_attached(&node, &veths, 1)?;
                if config == Config::Trace {
                    // Through the agent, as on a node with the DaemonSet: the agent's programs
                    // write the events, nothing more is attached.
                    let log = s.out_dir.join(format!("trace-{round}.log"));
                    let url = format!("http://{}", agent::LISTEN);
                    let mut trace = agent::spawn(
                        &node,
                        &[
                            "trace",
                            "icmp",
                            "--connect",
                            &url,
                            "--json",
                            "--timeout",
                            "3600",
                        ],
                        &log,
                        "node-tracer trace icmp --connect",
                    )?;
                    sys::wait_for(
                        "trace icmp to connect to the agent",
                        Duration::from_secs(30),
                        Duration::from_millis(20),
                        || {
                            trace.check_running()?;
                            agent::trace_streams(&node).map(|n| n >= 1)
                        },
                    )?;
                    o.others.push(trace);
                    // Still only the agent's programs.
                    agent::wait_attached(&node, &veths, 1)?;
                }
            }
            Config::EmptyTcx => {
                o.links = sys::in_netns(&node, || {
                    let prog = bpf::load_empty()?;
                    let mut links = Vec::new();
                    for v in &veths {
                        let i = sys::ifindex(v).with_context(|| format!("{v} missing"))?;
                        for t in [bpf::BPF_TCX_INGRESS, bpf::BPF_TCX_EGRESS] {
                            links.push(bpf::tcx_link(&prog, i, t)?);
                        }
                    }
                    Ok(links)
                })?;
            }
            Config::Tcpdump => {
                for v in &veths {
                    o.others.push(tcpdump(&node, v)?);
                }
            }
        }
        Ok(o)
    }
}

/// `tcpdump -w /dev/null` on one veth: the capture cost without the cost of printing.
fn tcpdump(netns: &str, iface: &str) -> Result<Proc> {
    let mut p = Proc::spawn(
        "tcpdump",
        Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", iface])
            .args(["-n", "-s", "0", "-w", "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let mut err = p.child.stderr.take().context("tcpdump stderr")?;
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    // tcpdump says "listening on ..." once its socket is bound; EOF means it died.
    while !String::from_utf8_lossy(&seen).contains("listening on") {
        match err.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => bail!(
                "tcpdump on {iface} did not start: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    // Keep draining its stderr so tcpdump never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = err.read_to_end(&mut sink);
    });
    Ok(p)
}

fn iperf(lab: &Lab, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client(),
            "taskset",
            "-c",
            "0",
            "iperf3",
        ])
        .args(["-c", lab::SERVER_IP, "-J"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run iperf3")?;
    sys::check_interrupted()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = json.get("error") {
        bail!("iperf3: {e}");
    }
    Ok(json)
}

/// Received UDP packets per second (what reached the server's socket).
fn udp(lab: &Lab, seconds: u32) -> Result<f64> {
    let len = UDP_LEN.to_string();
    let t = seconds.to_string();
    let j = iperf(lab, &["-u", "-l", &len, "-b", "0", "-t", &t])?;
    let r = &j["end"]["sum_received"];
    let bytes = r["bytes"]
        .as_f64()
        .context("iperf3: end.sum_received.bytes")?;
    let secs = r["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .context("iperf3: end.sum_received.seconds")?;
    Ok(bytes / f64::from(UDP_LEN) / secs)
}

/// Received TCP bits per second (bulk, default 128 KiB writes).
fn tcp(lab: &Lab, seconds: u32) -> Result<f64> {
    let t = seconds.to_string();
    let j = iperf(lab, &["-t", &t])?;
    j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: end.sum_received.bits_per_second")
}

/// Lets the link settle after observers come and go (ARP entries, first connection).
pub fn warm_up(lab: &Lab) -> Result<()> {
    udp(lab, 1).map(|_| ())
}
