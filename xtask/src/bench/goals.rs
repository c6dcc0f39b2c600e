//! The figures of the table and of `summary.json`: which samples of which part each one takes,
//! and the goal it is judged against (goals only on a full run; a part that did not run leaves
//! its figures without samples, which the table shows as "not measured").

use super::{
    Settings, floor, prog,
    report::{self, Goal, Row, Stat},
    scale, traffic,
};

#[allow(clippy::many_single_char_names)] // s, p, t, f, b: the result sets, used on every line
pub fn rows(
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
