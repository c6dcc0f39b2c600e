//! The figures of the packet path: throughput against nothing attached, the agent's programs
//! against the empty program (interleaved, live run time), the tracepoint programs' cost per
//! event, and the test-run cost per packet.

use super::{judged, row};
use crate::bench::{
    Settings, events, floor, prog,
    report::{self, Goal, Row, Stat},
    traffic::{self, Config},
};

pub fn traffic(s: &Settings, t: &traffic::Results) -> Vec<Row> {
    let g = |goal| judged(s, goal);
    let ratio = |samples: &[(Config, usize, f64)], c| traffic::Results::ratios(samples, c);
    vec![
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
    ]
}

pub fn floor(s: &Settings, f: &floor::Results) -> Vec<Row> {
    let g = |goal| judged(s, goal);
    let ci = |v: &[f64]| {
        floor::ratio_ci(v).map_or(String::new(), |(_, lo, hi)| {
            format!(", 95 % CI {lo:.3}–{hi:.3}")
        })
    };
    vec![
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
        row(
            "live_drop_prog_ns",
            "live run time of the drop program (kfree_skb) per run, UDP load".into(),
            f.live_drop_ns.clone(),
            Stat::Median,
            None,
            "ns",
        ),
        row(
            "live_drop_runs_per_packet",
            "drop program runs per UDP datagram received (the receiver's socket drops)".into(),
            f.live_drop_runs_per_packet.clone(),
            Stat::Median,
            None,
            "",
        ),
        row(
            "live_drop_prog_ns_per_packet",
            "the drop program's run time per UDP datagram received".into(),
            f.live_drop_ns_per_packet.clone(),
            Stat::Median,
            None,
            "ns",
        ),
    ]
}

pub fn events(e: &events::Results) -> Vec<Row> {
    vec![
        row(
            "drop_event_ns",
            "drop program (kfree_skb), run time per run, UDP to a closed port".into(),
            e.drop_ns.clone(),
            Stat::Median,
            None,
            "ns",
        ),
        row(
            "drop_runs_per_event",
            "drop program runs per drop made (UdpNoPorts; host-wide tracepoint)".into(),
            e.drop_runs_per_event.clone(),
            Stat::Median,
            None,
            "",
        ),
        row(
            "drop_counted_per_event",
            "drops counted in the pod per drop made".into(),
            e.drop_counted_per_event.clone(),
            Stat::Median,
            None,
            "",
        ),
        row(
            "drop_counted_per_run",
            "drop program runs that counted a drop (the rest: filtered out)".into(),
            e.drop_counted_per_run.clone(),
            Stat::Median,
            None,
            "",
        ),
        row(
            "retransmit_event_ns",
            "retransmit program (tcp_retransmit_skb), run time per run, 1 % loss".into(),
            e.retx_ns.clone(),
            Stat::Median,
            None,
            "ns",
        ),
        row(
            "retransmit_runs_per_segment",
            "retransmit program runs per segment retransmitted (TcpRetransSegs)".into(),
            e.retx_runs_per_segment.clone(),
            Stat::Median,
            None,
            "",
        ),
        row(
            "retransmit_counted_per_segment",
            "segments counted in the pod per segment retransmitted".into(),
            e.retx_counted_per_segment.clone(),
            Stat::Median,
            None,
            "",
        ),
    ]
}

pub fn prog(s: &Settings, p: &prog::Results) -> Vec<Row> {
    let g = |goal| judged(s, goal);
    let mut rows = Vec::new();
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
    rows.push(row(
        "cold_prog_ns",
        "ingress program, 64 B UDP frame, one run after a cache flush".into(),
        p.cold_ours.clone(),
        Stat::Median,
        None,
        "ns",
    ));
    rows.push(row(
        "cold_empty_prog_ns",
        "empty program, the same cold".into(),
        p.cold_empty.clone(),
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
    rows
}
