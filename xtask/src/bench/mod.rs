//! `cargo xtask bench [--quick] [--rounds N]`: what node-tracer costs, measured against a
//! baseline taken in the same run, on a lab node built in namespaces (see `lab`). Prints a table
//! and writes `target/bench/summary.json`. `--quick` is the CI smoke run: same code paths,
//! fewer rounds, shorter runs, 100 veths instead of 1,000; it checks no thresholds.

mod agent;
mod bare_loader;
mod bpf;
mod floor;
mod image;
mod lab;
mod prog;
mod report;
mod scale;
mod scrapes;
mod stream;
mod sys;
mod tc;
mod traffic;

use std::{path::PathBuf, process::Command, time::Duration, time::Instant};

use anyhow::{Context as _, Result};
use report::{Goal, Row, Stat};
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
                // and the median of more rounds moves less (a full run stays under 8 minutes).
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
    Scale,
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
    let mut big = scale::Results::default();
    if wanted(Part::Scale) {
        step(&format!("bench: a node with {} veths", s.veths));
        big = scale::run(&mut lab, &s).context("scale")?;
    }
    drop(lab);

    let mut rows = rows(&s, &progs, &flows, &fl, &big);
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
    meta.insert("test_run_repeat".into(), json!(s.repeat));
    meta.insert(
        "startup_netlink_s".into(),
        json!(big.startup_netlink_s.unwrap_or(f64::NAN)),
    );
    meta.insert("serve_after_s".into(), json!(big.serve_s));
    meta.insert("stop_s".into(), json!(big.stop_s));
    meta.insert("stop_expedited_s".into(), json!(big.stop_expedited_s));
    meta.insert("metrics_cpu_ms".into(), json!(big.metrics_cpu_ms));
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

#[allow(clippy::many_single_char_names)] // s, p, t, f, b: the result sets, used on every line
fn rows(
    s: &Settings,
    p: &prog::Results,
    t: &traffic::Results,
    f: &floor::Results,
    b: &scale::Results,
) -> Vec<Row> {
    use traffic::Config;
    // Goals are only judged on a full run.
    let g = |goal| if s.quick { None } else { Some(goal) };
    let n = b.veths;
    // A figure of the scale part taken once, none when that part did not run (`--only`).
    let once = |v: f64| if n > 0 { vec![v] } else { vec![] };
    let row = |key, label: String, samples: Vec<f64>, stat, goal, unit| Row {
        key,
        label,
        samples,
        stat,
        goal,
        unit,
    };
    let ratio = |samples: &[(Config, usize, f64)], c| traffic::Results::ratios(samples, c);
    let mut rows = vec![
        row(
            "udp_pps_ratio",
            "UDP 18 B pps, node-tracer / nothing".into(),
            ratio(&t.udp_pps, Config::Agent),
            Stat::Median,
            g(Goal::AtLeast(0.95)),
            "",
        ),
        row(
            "tcp_ratio",
            "TCP bulk throughput, node-tracer / nothing".into(),
            ratio(&t.tcp_bps, Config::Agent),
            Stat::Median,
            g(Goal::AtLeast(0.99)),
            "",
        ),
        row(
            "tcpdump_udp_pps_ratio",
            "UDP pps, tcpdump on both veths / nothing".into(),
            ratio(&t.udp_pps, Config::Tcpdump),
            Stat::Median,
            None,
            "",
        ),
        row(
            "empty_tcx_udp_pps_ratio",
            "UDP pps, an empty tcx program on both veths / nothing".into(),
            ratio(&t.udp_pps, Config::EmptyTcx),
            Stat::Median,
            None,
            "",
        ),
        row(
            "empty_tcx_tcp_ratio",
            "TCP bulk, an empty tcx program on both veths / nothing".into(),
            ratio(&t.tcp_bps, Config::EmptyTcx),
            Stat::Median,
            None,
            "",
        ),
        row(
            "trace_udp_pps_ratio",
            "UDP pps, node-tracer + trace icmp --connect / nothing".into(),
            ratio(&t.udp_pps, Config::Trace),
            Stat::Median,
            g(Goal::AtLeast(0.95)),
            "",
        ),
        row(
            "baseline_udp_pps",
            "UDP pps received, nothing attached".into(),
            t.udp_pps
                .iter()
                .filter(|x| x.0 == Config::Baseline)
                .map(|x| x.2)
                .collect(),
            Stat::Median,
            None,
            "pps",
        ),
        row(
            "baseline_tcp_gbps",
            "TCP received, nothing attached".into(),
            t.tcp_bps
                .iter()
                .filter(|x| x.0 == Config::Baseline)
                .map(|x| x.2 / 1e9)
                .collect(),
            Stat::Median,
            None,
            "Gbit/s",
        ),
    ];
    let ci = |v: &[f64]| {
        floor::ratio_ci(v).map_or(String::new(), |(_, lo, hi)| {
            format!(", 95 % CI {lo:.3}–{hi:.3}")
        })
    };
    rows.extend([
        row(
            "udp_floor_ratio",
            format!(
                "UDP 18 B pps, node-tracer's programs / empty program, interleaved{}",
                ci(&f.udp_ratios)
            ),
            f.udp_ratios.clone(),
            Stat::GeoMean,
            g(Goal::AtLeast(0.99)),
            "",
        ),
        row(
            "tcp_floor_ratio",
            format!(
                "TCP bulk, node-tracer's programs / empty program, interleaved{}",
                ci(&f.tcp_ratios)
            ),
            f.tcp_ratios.clone(),
            Stat::GeoMean,
            g(Goal::AtLeast(0.99)),
            "",
        ),
        row(
            "udp_floor_cpu_ratio",
            format!(
                "UDP 18 B datagrams per CPU-second of the load, programs / empty{}",
                ci(&f.udp_cpu_ratios)
            ),
            f.udp_cpu_ratios.clone(),
            Stat::GeoMean,
            None,
            "",
        ),
        row(
            "tcp_floor_cpu_ratio",
            format!(
                "TCP bytes per CPU-second of the load, programs / empty{}",
                ci(&f.tcp_cpu_ratios)
            ),
            f.tcp_cpu_ratios.clone(),
            Stat::GeoMean,
            None,
            "",
        ),
        row(
            "live_prog_ns",
            "live run time per program run, UDP load (BPF_ENABLE_STATS)".into(),
            f.live_ns.clone(),
            Stat::Median,
            g(Goal::AtMost(1.5 * report::median(&f.live_empty_ns))),
            "ns",
        ),
        row(
            "live_empty_prog_ns",
            "the same, empty program".into(),
            f.live_empty_ns.clone(),
            Stat::Median,
            None,
            "ns",
        ),
        row(
            "live_prog_tcp_ns",
            "live run time per program run, TCP load".into(),
            f.live_tcp_ns.clone(),
            Stat::Median,
            g(Goal::AtMost(1.5 * report::median(&f.live_empty_tcp_ns))),
            "ns",
        ),
        row(
            "live_empty_prog_tcp_ns",
            "the same, empty program".into(),
            f.live_empty_tcp_ns.clone(),
            Stat::Median,
            None,
            "ns",
        ),
        row(
            "live_runs_per_packet",
            "program runs per UDP datagram received (4 hooks)".into(),
            f.runs_per_packet.clone(),
            Stat::Median,
            None,
            "",
        ),
    ]);
    let empty_udp = p.empty.get("udp").cloned().unwrap_or_default();
    let limit = 1.5 * report::median(&empty_udp);
    rows.push(row(
        "prog_ns",
        "ingress program, 64 B UDP frame".into(),
        p.ours.get("udp").cloned().unwrap_or_default(),
        Stat::Median,
        g(Goal::AtMost(limit)),
        "ns",
    ));
    rows.push(row(
        "empty_prog_ns",
        "empty program (TCX_NEXT), 64 B UDP frame".into(),
        empty_udp,
        Stat::Median,
        None,
        "ns",
    ));
    for (name, v) in &p.ours {
        if *name != "udp" {
            rows.push(row(
                match *name {
                    "icmp" => "prog_icmp_ns",
                    "tcp" => "prog_tcp_ns",
                    "arp" => "prog_arp_ns",
                    _ => "prog_ipv6_ns",
                },
                format!("ingress program, 64 B {name} frame"),
                v.clone(),
                Stat::Median,
                None,
                "ns",
            ));
        }
    }
    rows.extend([
        row(
            "attach_new_veth_p99_ms",
            format!(
                "new veth -> attached ({} veths); goal 1.2 x the bare loader's p99",
                b.attach_ms.len()
            ),
            b.attach_ms.clone(),
            Stat::P99,
            g(Goal::AtMost(
                1.2 * report::percentile(&b.attach_floor_ms, 99.0),
            )),
            "ms",
        ),
        row(
            "attach_floor_p99_ms",
            format!(
                "same, a bare loader attaching the empty program ({} veths)",
                b.attach_floor_ms.len()
            ),
            b.attach_floor_ms.clone(),
            Stat::P99,
            None,
            "ms",
        ),
        row(
            "attach_new_veth_expedited_p99_ms",
            format!(
                "same, with --expedite-rcu ({} veths)",
                b.attach_expedited_ms.len()
            ),
            b.attach_expedited_ms.clone(),
            Stat::P99,
            None,
            "ms",
        ),
        row(
            "startup_1000_s",
            format!("agent start -> all hooks attached, {n} veths (default: tcx)"),
            once(b.startup_s),
            Stat::Median,
            g(Goal::AtMost(5.0)),
            "s",
        ),
        row(
            "startup_busy_1000_s",
            format!(
                "same, until the {} veths carrying traffic are attached (they go first)",
                b.busy
            ),
            b.startup_busy_s.into_iter().collect(),
            Stat::Median,
            None,
            "s",
        ),
        row(
            "startup_fast_start_1000_s",
            format!("same, --attach-mode fast-start (netlink, then tcx), {n} veths"),
            b.startup_fast_s.into_iter().collect(),
            Stat::Median,
            None,
            "s",
        ),
        row(
            "startup_expedited_1000_s",
            format!("same, default mode with --expedite-rcu, {n} veths"),
            b.startup_expedited_s.into_iter().collect(),
            Stat::Median,
            None,
            "s",
        ),
        row(
            "startup_netlink_1000_s",
            format!("same, --attach-mode netlink, {n} veths"),
            b.startup_netlink_s.into_iter().collect(),
            Stat::Median,
            None,
            "s",
        ),
        row(
            "metrics_1000_ms",
            format!("one /metrics, {n} labelled veths"),
            b.metrics_ms.clone(),
            Stat::Median,
            g(Goal::AtMost(20.0)),
            "ms",
        ),
        row(
            "metrics_p99_quiet_ms",
            format!(
                "/metrics, quiet, {n} veths ({} scrapes)",
                b.scrapes.quiet_ms.len()
            ),
            b.scrapes.quiet_ms.clone(),
            Stat::P99,
            None,
            "ms",
        ),
        row(
            "metrics_p99_churn_ms",
            format!(
                "/metrics while {} new veths attach ({} scrapes); goal 2 x quiet p99",
                b.scrapes.burst,
                b.scrapes.churn_ms.len()
            ),
            b.scrapes.churn_ms.clone(),
            Stat::P99,
            g(Goal::AtMost(
                2.0 * report::percentile(&b.scrapes.quiet_ms, 99.0),
            )),
            "ms",
        ),
        row(
            "metrics_1000_bytes",
            format!("/metrics size, {n} veths"),
            once(b.metrics_bytes as f64),
            Stat::Median,
            None,
            "B",
        ),
        row(
            "rss_1000_mib",
            format!("agent RSS, {n} veths"),
            once(b.rss_mib),
            Stat::Median,
            g(Goal::AtMost(64.0)),
            "MiB",
        ),
        row(
            "idle_cpu_pct",
            format!("agent CPU idle, {n} veths"),
            once(b.idle_cpu_pct),
            Stat::Median,
            g(Goal::AtMost(1.0)),
            "% core",
        ),
        row(
            "load_cpu_pct",
            "agent CPU under the UDP load".into(),
            t.load_cpu_pct.clone(),
            Stat::Median,
            g(Goal::AtMost(2.0)),
            "% core",
        ),
        row(
            "peers_1000_s",
            format!("peers --json, {n} veths"),
            b.peers_s.clone(),
            Stat::Median,
            g(Goal::AtMost(1.0)),
            "s",
        ),
    ]);
    rows
}

/// The CI smoke run: `bench --quick`, after the tests.
pub fn smoke() -> Result<()> {
    step("bench --quick (smoke: the harness runs end to end; no thresholds)");
    run(true, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_not_run_are_not_measured_rather_than_zero() {
        let s = Settings::new(false, None);
        let rows = rows(
            &s,
            &prog::Results::default(),
            &traffic::Results::default(),
            &floor::Results::default(),
            &scale::Results::default(),
        );
        for r in &rows {
            assert!(r.samples.is_empty(), "{}: {:?}", r.key, r.samples);
        }
        let t = report::table(&rows);
        assert!(
            !t.contains("| ok |") && !t.contains("MISSED") && !t.contains("NaN"),
            "{t}"
        );
        assert!(t.contains("not measured"), "{t}");
    }
}
