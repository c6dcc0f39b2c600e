//! `/metrics`: the Prometheus exposition of a [`Snapshot`] and of the agent's own health.
//!
//! Series are built from the snapshot at scrape time rather than kept in registered vectors, so
//! a veth that disappears takes its series with it at the next scrape, and the number of series
//! is exactly what the node has: per veth 8 protocols x 2 directions of packets, 2 byte series,
//! one `port_info`, one `port_macs`, and one ICMP series per (direction, type) seen; two
//! `unseen_packets` series per attached veth, and TCP series only for flags and handshakes seen.

mod drops;
#[cfg(test)]
mod oracle;
mod tcp;
mod text;

use text::{Exposition, Type};

use crate::model::{Direction, Health, PROTOCOLS, Pod, Port, Snapshot};

/// The labels every per-port series starts with: (namespace, pod) empty for a port whose pod is
/// unknown, and `name`, the container's name as Docker or Podman gives it (see
/// [`Pod::container_name`]), so a Docker user's cAdvisor queries (`{name="shop-web"}`) work here
/// too. Computed once per port and scrape, shared by every family.
#[derive(Debug, Clone, Copy)]
struct PortLabels<'a> {
    namespace: &'a str,
    pod: &'a str,
    name: &'a str,
    interface: &'a str,
}

impl<'a> PortLabels<'a> {
    fn of(p: &'a Port) -> Self {
        let (namespace, pod, name) = p.pod.as_ref().map_or(("", "", ""), |pod| {
            (
                pod.namespace.as_str(),
                pod.name.as_str(),
                pod.container_name(),
            )
        });
        Self {
            namespace,
            pod,
            name,
            interface: p.name.as_str(),
        }
    }
}

/// (namespace, pod) label values; empty for a port whose pod is unknown.
#[cfg(test)]
fn pod_labels(p: &Port) -> (&str, &str) {
    p.pod
        .as_ref()
        .map_or(("", ""), |pod| (pod.namespace.as_str(), pod.name.as_str()))
}

/// The text exposition format.
pub fn encode(snap: &Snapshot, health: &Health) -> Vec<u8> {
    // About 2 KiB per port; growing the buffer is cheap next to writing it.
    let mut out = Exposition::with_capacity(2048 * snap.ports.len() + 4096);
    let labels: Vec<PortLabels> = snap.ports.iter().map(PortLabels::of).collect();
    let ports = || snap.ports.iter().zip(&labels);
    port_families(&mut out, ports);
    mac_anomalies(&mut out, snap);
    drops::families(&mut out, &snap.drops);
    tcp::families(&mut out, ports);
    health_families(&mut out, health);
    out.into_bytes()
}

/// The families with one or more series per port, each written whole before the next.
fn port_families<'a, I>(out: &mut Exposition, ports: impl Fn() -> I)
where
    I: Iterator<Item = (&'a Port, &'a PortLabels<'a>)>,
{
    use Type::{Counter, Gauge};
    for (name, help, rx) in [
        (
            "node_tracer_receive_packets_total",
            "Packets the pod received through its veth (host veth egress), by protocol.",
            true,
        ),
        (
            "node_tracer_transmit_packets_total",
            "Packets the pod sent through its veth (host veth ingress), by protocol.",
            false,
        ),
    ] {
        let mut f = out.family(name, help, Counter);
        for (p, pl) in ports() {
            let c = &p.counters;
            let packets = if rx { &c.rx_packets } else { &c.tx_packets };
            for (proto, n) in PROTOCOLS.iter().zip(packets) {
                let l = [
                    ("namespace", pl.namespace),
                    ("pod", pl.pod),
                    ("name", pl.name),
                    ("interface", pl.interface),
                    ("protocol", *proto),
                ];
                f.sample(&l, *n);
            }
        }
    }
    for (name, help, rx) in [
        (
            "node_tracer_receive_bytes_total",
            "Bytes (whole frames) the pod received through its veth.",
            true,
        ),
        (
            "node_tracer_transmit_bytes_total",
            "Bytes (whole frames) the pod sent through its veth.",
            false,
        ),
    ] {
        let mut f = out.family(name, help, Counter);
        for (p, pl) in ports() {
            let c = &p.counters;
            let n = if rx {
                c.rx_bytes_total()
            } else {
                c.tx_bytes_total()
            };
            let l = [
                ("namespace", pl.namespace),
                ("pod", pl.pod),
                ("name", pl.name),
                ("interface", pl.interface),
            ];
            f.sample(&l, n);
        }
    }
    let mut f = out.family(
        "node_tracer_icmp_messages_total",
        "ICMP and ICMPv6 messages by direction (pod's point of view) and type.",
        Counter,
    );
    for (p, pl) in ports() {
        for m in &p.counters.icmp {
            let ty = icmp_type_label(m.family, m.icmp_type);
            let l = [
                ("namespace", pl.namespace),
                ("pod", pl.pod),
                ("name", pl.name),
                ("interface", pl.interface),
                ("direction", m.direction.as_str()),
                ("type", &ty),
            ];
            f.sample(&l, m.count);
        }
    }
    let mut f = out.family(
        "node_tracer_port_macs",
        "Distinct source MACs seen from the pod side of the veth.",
        Gauge,
    );
    for (p, pl) in ports() {
        let distinct = p
            .macs
            .iter()
            .filter(|m| m.direction == Direction::Transmit)
            .count();
        let l = [
            ("namespace", pl.namespace),
            ("pod", pl.pod),
            ("name", pl.name),
            ("interface", pl.interface),
        ];
        f.sample(&l, distinct);
    }
    let mut f = out.family(
        "node_tracer_port_info",
        "One series per host-side veth: its peer, namespace, bridge, port number and pod.",
        Gauge,
    );
    for (p, pl) in ports() {
        let peer = p.peer.as_ref();
        let ifindex = p.ifindex.to_string();
        let peer_ifindex = peer.map(|x| x.ifindex.to_string()).unwrap_or_default();
        let port_no = p.port_no.map(|n| n.to_string()).unwrap_or_default();
        let l = [
            ("interface", pl.interface),
            ("ifindex", &ifindex),
            ("peer_ifindex", &peer_ifindex),
            (
                "peer_interface",
                peer.and_then(|x| x.name.as_deref()).unwrap_or(""),
            ),
            ("netns", peer.and_then(|x| x.netns.as_deref()).unwrap_or("")),
            ("bridge", p.master.as_deref().unwrap_or("")),
            ("port_no", &port_no),
            ("mode", p.mode.as_str()),
            ("namespace", pl.namespace),
            ("pod", pl.pod),
            ("name", pl.name),
        ];
        f.sample(&l, 1u64);
    }
}

/// (kind, namespace, pod, name, interface): one `node_tracer_mac_anomalies` series.
type AnomalyKey = (&'static str, String, String, String, String);

/// `node_tracer_mac_anomalies`: how many anomalies of each kind `macs` flags on each port now.
///
/// A gauge, not a counter: a flag is a state that clears by itself (a learned entry ages out,
/// hairpin is turned off, a forged MAC is evicted), and a counter could only ever go up. Only
/// ports with a flag get a series, so a clean node exports none.
fn mac_anomalies(out: &mut Exposition, snap: &Snapshot) {
    let mut f = out.family(
        "node_tracer_mac_anomalies",
        "MAC anomalies flagged now per port, by kind: duplicate_mac, spoofed_source, \
         mac_changed, learned_without_traffic, promiscuous, hairpin (see `node-tracer macs`).",
        Type::Gauge,
    );
    let mut counts: std::collections::BTreeMap<AnomalyKey, u32> = std::collections::BTreeMap::new();
    for a in crate::macs::anomalies(snap) {
        let name = a.pod.as_ref().map_or("", Pod::container_name).to_owned();
        let (ns, pod) = a
            .pod
            .map_or((String::new(), String::new()), |p| (p.namespace, p.name));
        *counts
            .entry((a.kind.as_str(), ns, pod, name, a.interface))
            .or_default() += 1;
    }
    for ((kind, ns, pod, name, iface), n) in &counts {
        let l = [
            ("kind", *kind),
            ("namespace", ns),
            ("pod", pod),
            ("name", name),
            ("interface", iface),
        ];
        f.sample(&l, *n);
    }
}

fn health_families(out: &mut Exposition, h: &Health) {
    use Type::{Counter, Gauge};
    use node_tracer_common as c;
    let mut attached = out.family(
        "node_tracer_attached_interfaces",
        "Interfaces our programs are attached to (both directions).",
        Gauge,
    );
    attached.sample(&[("mode", "tcx")], h.attached.0);
    attached.sample(&[("mode", "netlink")], h.attached.1);
    out.family(
        "node_tracer_attach_errors_total",
        "Attach attempts that failed.",
        Counter,
    )
    .sample(&[], h.attach_errors);
    let s = |i: u32| h.program_stats[i as usize];
    let mut f = out.family(
        "node_tracer_map_update_errors_total",
        "Map updates the programs could not make (a full map), by map.",
        Counter,
    );
    f.sample(&[("map", "PORT_STATS")], s(c::STAT_PORT_INSERT_FAILED));
    f.sample(&[("map", "ICMP_STATS")], s(c::STAT_ICMP_INSERT_FAILED));
    f.sample(&[("map", "MAC_SEEN")], s(c::STAT_MAC_INSERT_FAILED));
    f.sample(&[("map", "DROP_STATS")], s(c::STAT_DROP_INSERT_FAILED));
    f.sample(&[("map", "RETX_STATS")], s(c::STAT_RETX_INSERT_FAILED));
    f.sample(&[("map", "TCP_FLAGS")], s(c::STAT_TCP_INSERT_FAILED));
    out.family(
        "node_tracer_mac_entries_created_total",
        "Source-MAC entries the programs created; beyond the map size the oldest are evicted.",
        Counter,
    )
    .sample(&[], s(c::STAT_MAC_NEW));
    out.family(
        "node_tracer_events_lost_total",
        "Trace events dropped because the ring buffer was full.",
        Counter,
    )
    .sample(&[], s(c::STAT_EVENTS_LOST));
    out.family(
        "node_tracer_events_sent_total",
        "Trace events the programs wrote to the ring buffer; stays 0 while nobody traces.",
        Counter,
    )
    .sample(&[], s(c::STAT_EVENTS_SENT));
    out.family(
        "node_tracer_netlink_resyncs_total",
        "Full rescans after the netlink socket overran (ENOBUFS).",
        Counter,
    )
    .sample(&[], h.netlink_resyncs);
    out.family(
        "node_tracer_link_events_total",
        "veth add/remove events handled.",
        Counter,
    )
    .sample(&[], h.link_events);
    out.family(
        "node_tracer_netns_visits_total",
        "Peer network namespaces entered to read veth peers; a rescan enters only new or changed ones.",
        Counter,
    )
    .sample(&[], h.netns_visits);
    out.family(
        "node_tracer_trace_streams",
        "trace icmp --connect clients streaming from this agent; the programs write events only while there is one.",
        Gauge,
    )
    .sample(&[], h.trace_streams);
    let mut f = out.family(
        "node_tracer_api_denied_total",
        "Requests for /snapshot or /trace/icmp refused, and failed TLS handshakes, by reason.",
        Counter,
    );
    for (reason, n) in &h.api_denied {
        f.sample(&[("reason", reason)], *n);
    }
    // The id label matches `bpftool prog show`, so an operator can find our programs there.
    let ids: Vec<String> = h.program_runs.iter().map(|r| r.1.to_string()).collect();
    let mut f = out.family(
        "node_tracer_program_run_seconds_total",
        "Time spent in each program (needs sysctl kernel.bpf_stats_enabled=1).",
        Counter,
    );
    for ((name, _, t, _), id) in h.program_runs.iter().zip(&ids) {
        f.sample(&[("program", name), ("id", id)], t.as_secs_f64());
    }
    let mut f = out.family(
        "node_tracer_program_runs_total",
        "Runs of each program (needs sysctl kernel.bpf_stats_enabled=1).",
        Counter,
    );
    for ((name, _, _, n), id) in h.program_runs.iter().zip(&ids) {
        f.sample(&[("program", name), ("id", id)], *n);
    }
    let mut f = out.family(
        "node_tracer_map_entries",
        "Entries in each map: one per attached port in PORT_COUNTERS, or in PORT_STATS when its \
         slot index is taken; MAC_SEEN and ICMP_STATS hold those of attached ports.",
        Gauge,
    );
    for (name, n) in &h.map_entries {
        f.sample(&[("map", name)], *n);
    }
    let mut f = out.family(
        "node_tracer_map_errors_total",
        "Map operations of the agent itself that failed (none fatal: an entry of a detached \
         port left behind, a batch read done one entry at a time), by map and operation.",
        Counter,
    );
    for (map, op, n) in &h.map_errors {
        f.sample(&[("map", map), ("operation", op)], *n);
    }
    let mut f = out.family(
        "node_tracer_errors_total",
        "Failures the agent logged and survived (a rescan, a pod source, a counter read), by operation.",
        Counter,
    );
    for (op, n) in &h.errors {
        f.sample(&[("operation", op)], *n);
    }
}

/// ICMP type as a label value, from the crate's one name table: `icmp_echo_request`,
/// `icmpv6_neighbour_solicitation`, or `icmp_type_N` for types without a name.
pub fn icmp_type_label(family: u8, ty: u8) -> String {
    let prefix = if family == 6 { "icmpv6" } else { "icmp" };
    match crate::icmp::icmp_type_name(family, ty, 0) {
        "unknown" => format!("{prefix}_type_{ty}"),
        name => format!("{prefix}_{}", name.replace(' ', "_")),
    }
}

#[cfg(test)]
mod tests;
