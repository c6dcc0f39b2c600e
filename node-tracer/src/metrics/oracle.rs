//! The exposition as the `prometheus` crate builds it: the builder `/metrics` used before it
//! wrote the text format itself, kept verbatim as the oracle the hand-written encoder is
//! compared with, byte for byte.

use prometheus::{
    Encoder as _, TextEncoder,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

use super::icmp_type_label;
use crate::model::{Direction, Health, PROTOCOLS, Snapshot};

/// The text exposition of `snap` and `health` through `prometheus::TextEncoder`.
pub fn encode(snap: &Snapshot, health: &Health) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families(snap, health), &mut buf)
        .expect("the oracle encodes");
    String::from_utf8(buf).expect("the exposition is UTF-8")
}

struct Family {
    inner: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, ty: MetricType) -> Self {
        let mut inner = MetricFamily::default();
        inner.set_name(name.to_string());
        inner.set_help(help.to_string());
        inner.set_field_type(ty);
        Self { inner }
    }

    fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut m = Metric::from_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_string());
                    l.set_value((*v).to_string());
                    l
                })
                .collect(),
        );
        if self.inner.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.inner.mut_metric().push(m);
    }
}

/// Every metric family of the contract, from one snapshot.
fn families(snap: &Snapshot, health: &Health) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE};
    let mut rx_p = Family::new(
        "node_tracer_receive_packets_total",
        "Packets the pod received through its veth (host veth egress), by protocol.",
        COUNTER,
    );
    let mut tx_p = Family::new(
        "node_tracer_transmit_packets_total",
        "Packets the pod sent through its veth (host veth ingress), by protocol.",
        COUNTER,
    );
    let mut rx_b = Family::new(
        "node_tracer_receive_bytes_total",
        "Bytes (whole frames) the pod received through its veth.",
        COUNTER,
    );
    let mut tx_b = Family::new(
        "node_tracer_transmit_bytes_total",
        "Bytes (whole frames) the pod sent through its veth.",
        COUNTER,
    );
    let mut icmp = Family::new(
        "node_tracer_icmp_messages_total",
        "ICMP and ICMPv6 messages by direction (pod's point of view) and type.",
        COUNTER,
    );
    let mut macs = Family::new(
        "node_tracer_port_macs",
        "Distinct source MACs seen from the pod side of the veth.",
        GAUGE,
    );
    let mut info = Family::new(
        "node_tracer_port_info",
        "One series per host-side veth: its peer, namespace, bridge, port number and pod.",
        GAUGE,
    );
    for p in &snap.ports {
        let (ns, pod) = super::pod_labels(p);
        let name = p
            .pod
            .as_ref()
            .and_then(|x| x.container.as_ref())
            .map_or("", |c| c.name.as_str());
        let iface = p.name.as_str();
        let c = &p.counters;
        for (i, proto) in PROTOCOLS.iter().enumerate() {
            let l = [
                ("namespace", ns),
                ("pod", pod),
                ("name", name),
                ("interface", iface),
                ("protocol", *proto),
            ];
            rx_p.push(&l, c.rx_packets[i] as f64);
            tx_p.push(&l, c.tx_packets[i] as f64);
        }
        let l = [
            ("namespace", ns),
            ("pod", pod),
            ("name", name),
            ("interface", iface),
        ];
        rx_b.push(&l, c.rx_bytes_total() as f64);
        tx_b.push(&l, c.tx_bytes_total() as f64);
        for m in &c.icmp {
            let ty = icmp_type_label(m.family, m.icmp_type);
            icmp.push(
                &[
                    ("namespace", ns),
                    ("pod", pod),
                    ("name", name),
                    ("interface", iface),
                    ("direction", m.direction.as_str()),
                    ("type", &ty),
                ],
                m.count as f64,
            );
        }
        let distinct = p
            .macs
            .iter()
            .filter(|m| m.direction == Direction::Transmit)
            .count();
        macs.push(&l, distinct as f64);
        let ifindex = p.ifindex.to_string();
        let peer_ifindex = p
            .peer
            .as_ref()
            .map(|x| x.ifindex.to_string())
            .unwrap_or_default();
        let peer_name = p
            .peer
            .as_ref()
            .and_then(|x| x.name.clone())
            .unwrap_or_default();
        let netns = p
            .peer
            .as_ref()
            .and_then(|x| x.netns.clone())
            .unwrap_or_default();
        let port_no = p.port_no.map(|n| n.to_string()).unwrap_or_default();
        info.push(
            &[
                ("interface", iface),
                ("ifindex", &ifindex),
                ("peer_ifindex", &peer_ifindex),
                ("peer_interface", &peer_name),
                ("netns", &netns),
                ("bridge", p.master.as_deref().unwrap_or("")),
                ("port_no", &port_no),
                ("mode", p.mode.as_str()),
                ("namespace", ns),
                ("pod", pod),
                ("name", name),
            ],
            1.0,
        );
    }
    let mut out = vec![
        rx_p,
        tx_p,
        rx_b,
        tx_b,
        icmp,
        macs,
        info,
        mac_anomalies(snap),
    ];
    out.extend(drop_families(&snap.drops));
    out.extend(tcp_families(snap));
    out.extend(health_families(health));
    out.into_iter()
        .map(|f| f.inner)
        .filter(|f| !f.get_metric().is_empty())
        .collect()
}

/// (kind, namespace, pod, name, interface): one `node_tracer_mac_anomalies` series.
type AnomalyKey = (&'static str, String, String, String, String);

/// `node_tracer_mac_anomalies`: how many anomalies of each kind `macs` flags on each port now.
///
/// A gauge, not a counter: a flag is a state that clears by itself (a learned entry ages out,
/// hairpin is turned off, a forged MAC is evicted), and a counter could only ever go up. Only
/// ports with a flag get a series, so a clean node exports none.
fn mac_anomalies(snap: &Snapshot) -> Family {
    let mut f = Family::new(
        "node_tracer_mac_anomalies",
        "MAC anomalies flagged now per port, by kind: duplicate_mac, spoofed_source, \
         mac_changed, learned_without_traffic, promiscuous, hairpin (see `node-tracer macs`).",
        MetricType::GAUGE,
    );
    let mut counts: std::collections::BTreeMap<AnomalyKey, u32> = std::collections::BTreeMap::new();
    for a in crate::macs::anomalies(snap) {
        let (ns, pod, name) = a.pod.map_or_else(Default::default, |p| {
            let name = p.container.map(|c| c.name).unwrap_or_default();
            (p.namespace, p.name, name)
        });
        *counts
            .entry((a.kind.as_str(), ns, pod, name, a.interface))
            .or_default() += 1;
    }
    for ((kind, ns, pod, name, iface), n) in &counts {
        f.push(
            &[
                ("kind", kind),
                ("namespace", ns),
                ("pod", pod),
                ("name", name),
                ("interface", iface),
            ],
            f64::from(*n),
        );
    }
    f
}

fn drop_families(r: &crate::drop_report::DropReport) -> Vec<Family> {
    use MetricType::{COUNTER, GAUGE};
    let mut drops = Family::new(
        "node_tracer_drops_total",
        "Packets the kernel dropped, by pod (its host veth as interface; all empty for the host) \
         and reason (enum skb_drop_reason, from the kernel's BTF).",
        COUNTER,
    );
    for d in &r.drops {
        let l = [
            ("namespace", d.namespace.as_str()),
            ("pod", d.pod.as_str()),
            ("name", d.name.as_str()),
            ("interface", d.interface.as_str()),
            ("reason", d.reason.as_str()),
        ];
        drops.push(&l, d.count as f64);
    }
    let mut retx = Family::new(
        "node_tracer_tcp_retransmits_total",
        "TCP segments retransmitted by sockets of the pod's network namespace (empty labels: \
         the host and namespaces of no pod), as the namespace's TcpRetransSegs counts them.",
        COUNTER,
    );
    for x in &r.retransmits {
        let l = [
            ("namespace", x.namespace.as_str()),
            ("pod", x.pod.as_str()),
            ("name", x.name.as_str()),
        ];
        retx.push(&l, x.count as f64);
    }
    let mut on = Family::new(
        "node_tracer_tracking_enabled",
        "1 when the part runs: drops (tracepoint kfree_skb) and retransmits \
         (tcp_retransmit_skb); 0 when turned off or the kernel lacks what it needs (see the log).",
        GAUGE,
    );
    on.push(&[("part", "drops")], f64::from(u8::from(r.drops_on)));
    on.push(
        &[("part", "retransmits")],
        f64::from(u8::from(r.retransmits_on)),
    );
    vec![drops, retx, on]
}

fn health_families(h: &Health) -> Vec<Family> {
    use MetricType::{COUNTER, GAUGE};
    use node_tracer_common as c;
    let mut attached = Family::new(
        "node_tracer_attached_interfaces",
        "Interfaces our programs are attached to (both directions).",
        GAUGE,
    );
    attached.push(&[("mode", "tcx")], h.attached.0 as f64);
    attached.push(&[("mode", "netlink")], h.attached.1 as f64);
    let mut errors = Family::new(
        "node_tracer_attach_errors_total",
        "Attach attempts that failed.",
        COUNTER,
    );
    errors.push(&[], h.attach_errors as f64);
    let mut map_errors = Family::new(
        "node_tracer_map_update_errors_total",
        "Map updates the programs could not make (a full map), by map.",
        COUNTER,
    );
    let s = |i: u32| h.program_stats[i as usize] as f64;
    map_errors.push(&[("map", "PORT_STATS")], s(c::STAT_PORT_INSERT_FAILED));
    map_errors.push(&[("map", "ICMP_STATS")], s(c::STAT_ICMP_INSERT_FAILED));
    map_errors.push(&[("map", "MAC_SEEN")], s(c::STAT_MAC_INSERT_FAILED));
    map_errors.push(&[("map", "DROP_STATS")], s(c::STAT_DROP_INSERT_FAILED));
    map_errors.push(&[("map", "RETX_STATS")], s(c::STAT_RETX_INSERT_FAILED));
    map_errors.push(&[("map", "TCP_FLAGS")], s(c::STAT_TCP_INSERT_FAILED));
    let mut mac_new = Family::new(
        "node_tracer_mac_entries_created_total",
        "Source-MAC entries the programs created; beyond the map size the oldest are evicted.",
        COUNTER,
    );
    mac_new.push(&[], s(c::STAT_MAC_NEW));
    let mut lost = Family::new(
        "node_tracer_events_lost_total",
        "Trace events dropped because the ring buffer was full.",
        COUNTER,
    );
    lost.push(&[], s(c::STAT_EVENTS_LOST));
    let mut sent = Family::new(
        "node_tracer_events_sent_total",
        "Trace events the programs wrote to the ring buffer; stays 0 while nobody traces.",
        COUNTER,
    );
    sent.push(&[], s(c::STAT_EVENTS_SENT));
    let mut resyncs = Family::new(
        "node_tracer_netlink_resyncs_total",
        "Full rescans after the netlink socket overran (ENOBUFS).",
        COUNTER,
    );
    resyncs.push(&[], h.netlink_resyncs as f64);
    let mut events = Family::new(
        "node_tracer_link_events_total",
        "veth add/remove events handled.",
        COUNTER,
    );
    events.push(&[], h.link_events as f64);
    let mut visits = Family::new(
        "node_tracer_netns_visits_total",
        "Peer network namespaces entered to read veth peers; a rescan enters only new or changed ones.",
        COUNTER,
    );
    visits.push(&[], h.netns_visits as f64);
    let mut streams = Family::new(
        "node_tracer_trace_streams",
        "trace icmp --connect clients streaming from this agent; the programs write events only while there is one.",
        GAUGE,
    );
    streams.push(&[], h.trace_streams as f64);
    let mut denied = Family::new(
        "node_tracer_api_denied_total",
        "Requests for /snapshot or /trace/icmp refused, and failed TLS handshakes, by reason.",
        COUNTER,
    );
    for (reason, n) in &h.api_denied {
        denied.push(&[("reason", reason)], *n as f64);
    }
    let mut run_s = Family::new(
        "node_tracer_program_run_seconds_total",
        "Time spent in each program (needs sysctl kernel.bpf_stats_enabled=1).",
        COUNTER,
    );
    let mut runs = Family::new(
        "node_tracer_program_runs_total",
        "Runs of each program (needs sysctl kernel.bpf_stats_enabled=1).",
        COUNTER,
    );
    // The id label matches `bpftool prog show`, so an operator can find our programs there.
    for (name, id, t, n) in &h.program_runs {
        let id = id.to_string();
        run_s.push(&[("program", name), ("id", &id)], t.as_secs_f64());
        runs.push(&[("program", name), ("id", &id)], *n as f64);
    }
    let mut entries = Family::new(
        "node_tracer_map_entries",
        "Entries in each map: one per attached port in PORT_COUNTERS, or in PORT_STATS when its \
         slot index is taken; MAC_SEEN and ICMP_STATS hold those of attached ports.",
        GAUGE,
    );
    for (name, n) in &h.map_entries {
        entries.push(&[("map", name)], *n as f64);
    }
    let mut agent_map_errors = Family::new(
        "node_tracer_map_errors_total",
        "Map operations of the agent itself that failed (none fatal: an entry of a detached \
         port left behind, a batch read done one entry at a time), by map and operation.",
        COUNTER,
    );
    for (map, op, n) in &h.map_errors {
        agent_map_errors.push(&[("map", map), ("operation", op)], *n as f64);
    }
    let mut survived = Family::new(
        "node_tracer_errors_total",
        "Failures the agent logged and survived (a rescan, a pod source, a counter read), by operation.",
        COUNTER,
    );
    for (op, n) in &h.errors {
        survived.push(&[("operation", op)], *n as f64);
    }
    vec![
        attached,
        errors,
        map_errors,
        mac_new,
        lost,
        sent,
        resyncs,
        events,
        visits,
        streams,
        denied,
        run_s,
        runs,
        entries,
        agent_map_errors,
        survived,
    ]
}

/// The TCP and coverage families (see `super::tcp`).
fn tcp_families(snap: &Snapshot) -> Vec<Family> {
    use prometheus::proto::{Bucket, Histogram};
    let mut flags = Family::new(
        super::tcp::FLAGS.0,
        super::tcp::FLAGS.1,
        MetricType::COUNTER,
    );
    let mut hs = Family::new(
        super::tcp::HANDSHAKE.0,
        super::tcp::HANDSHAKE.1,
        MetricType::HISTOGRAM,
    );
    let mut unseen = Family::new(
        super::tcp::UNSEEN.0,
        super::tcp::UNSEEN.1,
        MetricType::COUNTER,
    );
    for p in &snap.ports {
        let (ns, pod) = super::pod_labels(p);
        let name = p
            .pod
            .as_ref()
            .and_then(|x| x.container.as_ref())
            .map_or("", |c| c.name.as_str());
        let iface = p.name.as_str();
        for f in &p.counters.tcp_flags {
            flags.push(
                &[
                    ("namespace", ns),
                    ("pod", pod),
                    ("name", name),
                    ("interface", iface),
                    ("direction", f.direction.as_str()),
                    ("flag", f.flag.as_str()),
                ],
                f.count as f64,
            );
        }
        for h in &p.counters.handshakes {
            let mut m = Metric::from_label(
                [
                    ("namespace", ns),
                    ("pod", pod),
                    ("name", name),
                    ("interface", iface),
                    ("direction", h.direction.as_str()),
                ]
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_string());
                    l.set_value((*v).to_string());
                    l
                })
                .collect(),
            );
            let mut hist = Histogram::default();
            hist.set_sample_count(h.count);
            hist.set_sample_sum(h.sum_ns as f64 / 1e9);
            hist.set_bucket(
                h.cumulative()
                    .into_iter()
                    .filter(|(le, _)| le.is_finite())
                    .map(|(le, n)| {
                        let mut b = Bucket::default();
                        b.set_upper_bound(le);
                        b.set_cumulative_count(n);
                        b
                    })
                    .collect(),
            );
            m.set_histogram(hist);
            hs.inner.mut_metric().push(m);
        }
        if p.attached {
            for (d, n) in [
                (Direction::Receive, p.counters.unseen_rx),
                (Direction::Transmit, p.counters.unseen_tx),
            ] {
                unseen.push(
                    &[
                        ("namespace", ns),
                        ("pod", pod),
                        ("name", name),
                        ("interface", iface),
                        ("direction", d.as_str()),
                    ],
                    n as f64,
                );
            }
        }
    }
    vec![flags, hs, unseen]
}
