//! `cargo xtask`: the project's own commands. The README's two commands are `cargo xtask run`
//! (the agent, on a lab node when the host has no pods) and `cargo xtask test` (everything CI
//! runs). Both install what is missing first (`setup`), and both are idempotent.

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

fn workspace_root() -> PathBuf {
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

fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

fn build() -> Result<()> {
    step("build (userspace on stable; eBPF programs on nightly via build.rs)");
    status(
        Command::new("cargo").args(["build", "--all-targets"]),
        "cargo build",
    )
}

fn require_root(what: &str) -> Result<()> {
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
        "node-tracer run --lab on {listen}: on a host without pods it first starts a lab node \
         (real pods via containerd + CNI: cni0 with two pods, two routed pods, an empty docker0, \
         pings). In another terminal:\n    \
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
    Ok(())
}

/// Test objects all start with `ntt` (see tests/src/lib.rs); lab state files live in
/// /run/node-tracer.
fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("ntt") {
                out.push(format!("netns {n}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("ntt") {
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

/// Removes test objects an interrupted earlier run may have left (only `ntt*` names).
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
