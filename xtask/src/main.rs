//! `cargo xtask`: the project's own commands. The README's two commands are `cargo xtask run`
//! (the agent, on a lab node when the host has no pods) and `cargo xtask test` (everything CI
//! runs). Both install what is missing first (`setup`), and both are idempotent.

mod bench;
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
        /// Rounds of alternated configurations (default 5, quick 2).
        #[arg(long)]
        rounds: Option<usize>,
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
        Cmd::Bench { quick, rounds } => {
            setup::run()?;
            bench::run(quick, rounds)
        }
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
    let has_pods = host_has_pods();
    if !has_pods {
        step("no pods on this host: building the lab node (cni0 + docker0 + routed pods, pings)");
        status(
            Command::new(binary()).args(["lab", "up"]),
            "node-tracer lab up",
        )?;
    }
    step(&format!(
        "node-tracer run on {listen} — try, in another terminal:\n    \
         curl -s http://{listen}/metrics | grep node_tracer_transmit_packets_total\n    \
         ./target/debug/node-tracer peers\n    \
         Ctrl-C stops the agent{}",
        if has_pods { "" } else { " and removes the lab" }
    ));
    let mut child = Command::new(binary())
        .args(["run", "--listen", listen])
        .args(extra)
        .spawn()
        .context("starting node-tracer run")?;
    // Ctrl-C reaches the agent too (same process group); wait for it to detach and exit.
    let st = child.wait().context("waiting for node-tracer run")?;
    if !has_pods {
        step("removing the lab node");
        status(
            Command::new(binary()).args(["lab", "down"]),
            "node-tracer lab down",
        )?;
    }
    // 130: interrupted by Ctrl-C, which is how a user ends it.
    if !st.success() && st.code() != Some(130) && st.code().is_some() {
        bail!("node-tracer run failed ({st})");
    }
    Ok(())
}

/// Same rule as the agent's lab default: a veth whose peer lives elsewhere means pods.
fn host_has_pods() -> bool {
    std::fs::read_dir("/sys/class/net").is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let p = e.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            let (i, l) = (read("ifindex"), read("iflink"));
            !i.is_empty() && i != l && !p.join("device").exists() && !p.join("bridge").exists()
        })
    })
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
    let left = leftovers();
    sweep_test_leftovers();
    result?;
    if !left.is_empty() {
        bail!("tests left these behind (now removed): {}", left.join(", "));
    }
    eprintln!("nothing left behind");
    bench_smoke()
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
