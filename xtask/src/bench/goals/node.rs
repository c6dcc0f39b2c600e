//! The figures of the node: attach latency and start-up, /metrics, memory and CPU, `peers`.

use super::{judged, row};
use crate::bench::{
    Settings,
    report::{self, Goal, Row, Stat},
    scale, traffic,
};

#[allow(clippy::many_single_char_names)] // s, t, b: the result sets, used on every line
pub fn scale(s: &Settings, t: &traffic::Results, b: &scale::Results) -> Vec<Row> {
    let g = |goal| judged(s, goal);
    let n = b.veths;
    // A figure of the scale part taken once, none when that part did not run (`--only`).
    let once = |v: f64| if n > 0 { vec![v] } else { vec![] };
    vec![
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
    ]
}
