//! `cargo xtask bench [--quick] [--rounds N]`: what node-tracer costs, measured against a
//! baseline taken in the same run, on a lab node built in namespaces (see `lab`). Prints a table
//! and writes `target/bench/summary.json`. `--quick` is the CI smoke run: same code paths,
//! fewer rounds, shorter runs, 100 veths instead of 1,000; it checks no thresholds.

mod agent;
mod bare_loader;
mod bpf;
mod docker;
mod events;
mod floor;
mod goals;
mod image;
mod lab;
mod prog;
mod report;
mod scale;
mod scrapes;
mod stream;
mod sys;
mod tc;
mod tracepoints;
mod traffic;

use std::{path::PathBuf, process::Command, time::Duration, time::Instant};

use anyhow::{Context as _, Result};

use serde_json::{Map, json};

use crate::{require_root, status, step};

/// Everything a run's size depends on.
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    /// Length of each iperf3 run.
    pub seconds: u32,
    /// BPF_PROG_TEST_RUN repetitions per sample.
    pub repeat: u32,
    pub veths: usize,
    /// Veths created while the agent runs (attach latency).
    pub new_veths: usize,
    pub idle: Duration,
    pub out_dir: PathBuf,
}

impl Settings {
    fn new(quick: bool, rounds: Option<usize>) -> Self {
        let out_dir = crate::workspace_root().join("target/bench");
        if quick {
            Self {
                quick,
                rounds: rounds.unwrap_or(2).max(1),
                seconds: 2,
                repeat: 1_000_000,
                veths: 100,
                new_veths: 20,
                idle: Duration::from_secs(3),
                out_dir,
            }
        } else {
            Self {
                quick,
                // Nine, not the minimum five: one round's baseline moves by ±10 % on a small VM,
                // and the median of more rounds moves less.
                rounds: rounds.unwrap_or(9).max(1),
                seconds: 5,
                repeat: 1_000_000,
                veths: 1000,
                new_veths: 100,
                idle: Duration::from_secs(10),
                out_dir,
            }
        }
    }
}

/// A part of the bench, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Prog,
    Traffic,
    Floor,
    Events,
    Scale,
    Docker,
}

pub fn run(quick: bool, rounds: Option<usize>, only: Option<Part>) -> Result<()> {
    let wanted = |p| only.is_none_or(|o| o == p);
    require_root("cargo xtask bench")?;
    let s = Settings::new(quick, rounds);
    std::fs::create_dir_all(&s.out_dir)
        .with_context(|| format!("create {}", s.out_dir.display()))?;
    step("bench: release build of node-tracer");
    status(
        Command::new("cargo").args(["build", "--release", "-p", "node-tracer"]),
        "cargo build --release -p node-tracer",
    )?;
    sys::catch_signals();
    let started = Instant::now();
    // Declared first so it is dropped last: every agent, tcpdump and iperf3 is stopped before
    // the namespaces go.
    let mut lab = lab::Lab::new().context("building the bench lab")?;
    lab.start_iperf_server()?;

    let mut progs = prog::Results::default();
    if wanted(Part::Prog) {
        step("bench: per-packet cost (BPF_PROG_TEST_RUN)");
        progs = prog::run(&lab, &s).context("program cost")?;
    }
    let mut flows = traffic::Results::default();
    if wanted(Part::Traffic) {
        step(&format!(
            "bench: throughput, {} rounds x {} configurations, {} s per run",
            s.rounds,
            traffic::CONFIGS.len(),
            s.seconds
        ));
        traffic::warm_up(&lab)?;
        flows = traffic::run(&lab, &s).context("throughput")?;
    }
    let mut fl = floor::Results::default();
    if wanted(Part::Floor) {
        step("bench: node-tracer's programs against the empty program, interleaved slices");
        fl = floor::run(&lab, &s).context("the floor comparison")?;
    }
    let mut ev = events::Results::default();
    if wanted(Part::Events) {
        step("bench: the drop and retransmit programs' cost per event (BPF_ENABLE_STATS)");
        ev = events::run(&lab, &s).context("cost per event")?;
    }
    let mut big = scale::Results::default();
    if wanted(Part::Scale) {
        step(&format!("bench: a node with {} veths", s.veths));
        big = scale::run(&mut lab, &s).context("scale")?;
    }
    drop(lab);
    let mut dk = docker::Results::default();
    if wanted(Part::Docker) {
        step("bench: a Docker host (its own dockerd and containers)");
        dk = docker::run(&s).context("the Docker host")?;
    }

    let mut rows = goals::rows(&s, &progs, &flows, &fl, &ev, &big);
    rows.extend(docker::rows(&s, &dk));
    rows.push(image::row(s.quick).context("image size")?);
    let table = report::table(&rows);
    let mut meta = Map::new();
    meta.insert("quick".into(), json!(s.quick));
    meta.insert("rounds".into(), json!(s.rounds));
    meta.insert(
        "only".into(),
        json!(only.map(|p| format!("{p:?}").to_lowercase())),
    );
    meta.insert("seconds_per_run".into(), json!(s.seconds));
    meta.insert("veths".into(), json!(big.veths));
    meta.insert("docker_containers".into(), json!(dk.containers));
    meta.insert("test_run_repeat".into(), json!(s.repeat));
    meta.insert(
        "startup_netlink_s".into(),
        json!(big.startup_netlink_s.unwrap_or(f64::NAN)),
    );
    meta.insert("serve_after_s".into(), json!(big.serve_s));
    meta.insert("stop_s".into(), json!(big.stop_s));
    meta.insert("stop_expedited_s".into(), json!(big.stop_expedited_s));
    meta.insert("metrics_cpu_ms".into(), json!(big.metrics_cpu_ms));
    meta.insert(
        "floor_everything_on".into(),
        json!(wanted(Part::Floor).then_some(fl.everything_on)),
    );
    meta.insert("kernel".into(), json!(sys::sh("uname -r")?.trim()));
    meta.insert(
        "cpus".into(),
        json!(std::thread::available_parallelism()?.get()),
    );
    meta.insert(
        "wall_s".into(),
        json!(started.elapsed().as_secs_f64().round()),
    );
    for (key, v) in [
        ("udp", &fl.udp_ratios),
        ("tcp", &fl.tcp_ratios),
        ("udp_cpu", &fl.udp_cpu_ratios),
        ("tcp_cpu", &fl.tcp_cpu_ratios),
    ] {
        meta.insert(
            format!("{key}_floor_pairs_for_1pct"),
            json!(floor::pairs_for_one_percent(v)),
        );
    }
    let mut summary = report::summary(&rows, meta);
    for (key, v) in [
        ("udp_floor_ratio_ci", &fl.udp_ratios),
        ("tcp_floor_ratio_ci", &fl.tcp_ratios),
        ("udp_floor_cpu_ratio_ci", &fl.udp_cpu_ratios),
        ("tcp_floor_cpu_ratio_ci", &fl.tcp_cpu_ratios),
    ] {
        summary[key] = json!(floor::ratio_ci(v).map(|(_, lo, hi)| [lo, hi]));
    }
    let path = s.out_dir.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("write {}", path.display()))?;
    step(&format!(
        "bench results ({}; {} veths; {} rounds; wall {:.0} s)",
        if s.quick {
            "quick: smoke run, goals not checked"
        } else {
            "full"
        },
        big.veths,
        s.rounds,
        started.elapsed().as_secs_f64()
    ));
    print!("{table}");
    eprintln!("written: {}", path.display());
    Ok(())
}

/// The CI smoke run: `bench --quick`, after the tests.
pub fn smoke() -> Result<()> {
    step("bench --quick (smoke: the harness runs end to end; no thresholds)");
    run(true, None, None)
}
