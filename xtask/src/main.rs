//! `cargo xtask`: the project's own commands. The README's two commands are `cargo xtask run`
//! (the agent, on a lab node when the host has no pods) and `cargo xtask test` (everything CI
//! runs). Both install what is missing first (`setup`), and both are idempotent.

mod bench;
mod image;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "node-tracer's build, run and test commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, rust-src for nightly, bpf-linker (idempotent).
    Setup,
    /// Build everything (the eBPF programs are built by node-tracer's build.rs).
    Build,
    /// Set up, build, start a lab node if this host has no pods, and run the agent on it.
    Run {
        /// Address for /metrics, /snapshot and /healthz.
        #[arg(long, default_value = "127.0.0.1:9465")]
        listen: String,
        /// Extra arguments for `node-tracer run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole test suite as CI runs it: format, lints, unit and integration tests (as root),
    /// then a check that nothing was left behind.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure what node-tracer costs (throughput, per-packet ns, attach latency, start-up,
    /// /metrics, memory, CPU) on a lab built in namespaces; writes target/bench/summary.json.
    Bench {
        /// Smoke run (about 1-2 minutes): fewer rounds, shorter runs, 100 veths, no goals.
        #[arg(long)]
        quick: bool,
        /// Rounds of alternated configurations (default 9, quick 2).
        #[arg(long)]
        rounds: Option<usize>,
        /// Measure one part only (the others' rows stay empty): `prog` (per-packet cost),
        /// `traffic` (throughput ratios, agent CPU under load), `floor` (the agent's programs
        /// against the empty program, interleaved; live run time) or `scale` (1,000 veths: start-up,
        /// attach latency, /metrics, memory, peers).
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
    },
    /// The agent's OCI image (release binary, its shared libraries and loader) as
    /// target/image/node-tracer.tar, tagged node-tracer:<version> and node-tracer:latest; for
    /// `docker load` and `ctr images import`.
    Image {
        /// Pack this binary instead of building the release one.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Build or remove the lab node (`node-tracer lab up|down`).
    Lab {
        #[arg(value_parser = ["up", "down"])]
        action: String,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root).context("cd to the workspace root")?;
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run()?;
            build()
        }
        Cmd::Run { listen, args } => {
            setup::run()?;
            build()?;
            run_agent(&listen, &args)
        }
        Cmd::Test { args } => {
            setup::run()?;
            test(&args)
        }
        Cmd::Bench {
            quick,
            rounds,
            only,
        } => {
            setup::run()?;
            bench::run(quick, rounds, only)
        }
        Cmd::Image { binary } => image::run(binary.as_deref()),
        Cmd::Lab { action } => {
            setup::run()?;
            build()?;
            status(
                Command::new(binary()).args(["lab", &action]),
                "node-tracer lab",
            )
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn binary() -> PathBuf {
    workspace_root().join("target/debug/node-tracer")
}

/// Runs a command, failing with its name when it fails.
pub fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

pub fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

fn build() -> Result<()> {
    step("build (userspace on stable; eBPF programs on nightly via build.rs)");
    status(
        Command::new("cargo").args(["build", "--all-targets"]),
        "cargo build",
    )
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{what} needs root (BPF, namespaces, veths); run it as root");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run_agent(listen: &str, extra: &[String]) -> Result<()> {
    require_root("cargo xtask run")?;
    step(&format!(
        "node-tracer run --lab on {listen}: on a host with pods or running Docker containers it \
         shows those (containers by their Docker names); on one without, it first starts a lab \
         node (real pods via containerd + CNI: cni0 with two pods, two routed pods, an empty \
         docker0, pings). In another terminal:\n    \
         curl -s http://{listen}/metrics | grep node_tracer_transmit_packets_total\n    \
         ./target/debug/node-tracer peers --cri-socket /run/node-tracer-lab/lab/containerd.sock\n    \
         ./target/debug/node-tracer top --connect http://{listen}\n    \
         ./target/debug/node-tracer trace icmp --count 10\n\
         Ctrl-C stops the agent and removes the lab."
    ));
    let mut child = Command::new(binary())
        .args(["run", "--lab", "--listen", listen])
        .args(extra)
        .spawn()
        .context("starting node-tracer run")?;
    // Ctrl-C reaches the agent too (same process group); it detaches, removes the lab, exits.
    let st = child.wait().context("waiting for node-tracer run")?;
    if !st.success() && st.code().is_some() {
        bail!("node-tracer run failed ({st})");
    }
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    require_root("cargo xtask test")?;
    sweep_test_leftovers();
    step("cargo fmt --check");
    status(
        Command::new("cargo").args(["fmt", "--all", "--", "--check"]),
        "cargo fmt --check (run `cargo fmt --all`)",
    )?;
    step("cargo clippy (pedantic, warnings are errors)");
    status(
        Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]),
        "cargo clippy",
    )?;
    build()?;
    let programs_before = our_programs();
    let rcu_before = rcu_expedited();
    step("tests: unit and integration (real kernel, namespaces, tools)");
    let result = status(
        Command::new("cargo")
            .args(["test"])
            .args(args)
            .env("INSTA_UPDATE", "no")
            .env("NODE_TRACER_BIN", binary()),
        "cargo test",
    );
    step("checking that the tests left nothing behind");
    let mut left = leftovers();
    // Only reported: a process or program is never ended here unless it is certainly ours,
    // and "certainly" is more than a name can tell.
    left.extend(leftover_programs(&programs_before));
    left.extend(leftover_processes());
    let rcu_after = rcu_expedited();
    if rcu_after != rcu_before {
        // --expedite-rcu must always put the host-wide knob back.
        left.push(format!(
            "/sys/kernel/rcu_expedited {rcu_before} -> {rcu_after} (put back)"
        ));
        let _ = std::fs::write("/sys/kernel/rcu_expedited", &rcu_before);
    }
    sweep_test_leftovers();
    result?;
    if !left.is_empty() {
        bail!("tests left these behind (now removed): {}", left.join(", "));
    }
    eprintln!("nothing left behind");
    bench_smoke()
}

/// The host-wide `/sys/kernel/rcu_expedited`, which `node-tracer --expedite-rcu` sets for a
/// moment and must put back.
pub fn rcu_expedited() -> String {
    std::fs::read_to_string("/sys/kernel/rcu_expedited")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// CI runs the bench in quick mode after the tests: it proves the harness still works end to end
/// (numbers on shared CI machines are not judged), and that it too leaves nothing behind.
fn bench_smoke() -> Result<()> {
    bench::smoke()?;
    let left = leftovers();
    sweep_test_leftovers();
    if !left.is_empty() {
        bail!("bench left these behind (now removed): {}", left.join(", "));
    }
    Ok(())
}

/// Test objects all start with `ntt` (see tests/src/lib.rs); lab state files live in
/// /run/node-tracer. Bench namespaces start with `ntb<pid>` and hold all of the bench's links.
fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("ntt") || bench_leftover(&n) {
                out.push(format!("netns {n}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            // The bench keeps its links inside its namespaces; one here is a bench bug's leftover.
            if n.starts_with("ntt") || n.starts_with("ntb") {
                out.push(format!("link {n}"));
            }
        }
    }
    // Lab runtimes (containerd state dirs) live here; only the image cache may stay.
    if let Ok(rd) = std::fs::read_dir("/run/node-tracer-lab") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n != "cache" {
                out.push(format!("lab runtime dir /run/node-tracer-lab/{n}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/run/node-tracer") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("lab-ntt") {
                out.push(format!("lab state {n}"));
            }
        }
    }
    out
}

/// A bench namespace (`ntb<pid><tag>`) whose bench is no longer running. A running bench (of
/// another user of this machine, say) keeps its namespaces.
fn bench_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("ntb") else {
        return false;
    };
    let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
    match pid.parse::<u32>() {
        Ok(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        // Not one of the bench's names: only `ntb` + digits are ours.
        Err(_) => false,
    }
}

/// Removes test objects an interrupted earlier run may have left (only `ntt*` names, and
/// `ntb*` ones of a bench that is no longer running).
fn sweep_test_leftovers() {
    for item in leftovers() {
        if let Some(n) = item.strip_prefix("link ") {
            let _ = Command::new("ip")
                .args(["link", "del", n])
                .stderr(Stdio::null())
                .status();
        } else if let Some(n) = item.strip_prefix("netns ") {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        } else if let Some(n) = item.strip_prefix("lab state ") {
            let name = n.trim_start_matches("lab-").trim_end_matches(".json");
            let _ = Command::new(binary())
                .args(["lab", "down", "--name", name])
                .status();
        }
    }
}

/// IDs of loaded programs named like ours (`bpftool prog show`: "ID: TYPE  name NAME  ...").
fn our_programs() -> Vec<u32> {
    let Ok(out) = Command::new("bpftool").args(["prog", "show"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            ["nt_ingress", "nt_egress", "nt_ingress_nl", "nt_egress_nl"]
                .iter()
                .any(|n| l.contains(&format!(" name {n} ")))
        })
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

/// Programs of ours loaded during the run and still loaded: held by nothing (a pin or a filter
/// on a surviving interface) or by a process running this workspace's binaries. Programs held
/// by other processes (an agent from another checkout on a shared machine) are not ours.
fn leftover_programs(before: &[u32]) -> Vec<String> {
    let holders = program_holders();
    let target = workspace_root().join("target");
    our_programs()
        .into_iter()
        .filter(|id| !before.contains(id))
        .filter_map(|id| match holders.iter().find(|(p, _)| *p == id) {
            None => Some(format!("BPF program {id} (nt_*) held by no process")),
            Some((_, exe)) if exe.starts_with(&target) => {
                Some(format!("BPF program {id} (nt_*) held by {}", exe.display()))
            }
            Some(_) => None,
        })
        .collect()
}

/// (program id, executable of a process holding it through a program or link fd).
fn program_holders() -> Vec<(u32, PathBuf)> {
    node_tracer_sys::held::held_bpf_objects(None)
        .into_iter()
        .filter_map(|h| {
            let exe = std::fs::read_link(format!("/proc/{}/exe", h.pid)).ok()?;
            Some((h.prog_id?, exe))
        })
        .collect()
}

/// Processes the tests started and did not end: this workspace's binaries, and tools
/// (tcpdump, ping, iperf3, containerd, python3) whose command line names a test object (`ntt`
/// namespaces, links, temp dirs).
fn leftover_processes() -> Vec<String> {
    const TOOLS: [&str; 7] = [
        "tcpdump",
        "ping",
        "iperf3",
        "containerd",
        "containerd-shim",
        "python3",
        "node-tracer",
    ];
    let me = std::process::id();
    let target = workspace_root().join("target");
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = p.path();
        let exe = std::fs::read_link(dir.join("exe")).unwrap_or_default();
        let cmdline = std::fs::read(dir.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let ours_binary = exe.starts_with(&target) && !cmdline.contains("xtask");
        let names_test_object = cmdline
            .split([' ', '/', '='])
            .any(|w| w.starts_with("ntt") && w.len() >= 11);
        if ours_binary || (TOOLS.contains(&comm.trim()) && names_test_object) {
            out.push(format!("process {pid} ({}): {cmdline}", comm.trim()));
        }
    }
    out
}
