//! TCP health and coverage per port: `node_tracer_tcp_flags_total`,
//! `node_tracer_tcp_handshake_seconds` and `node_tracer_unseen_packets_total`.
//!
//! Flag and handshake series exist only once a port saw that flag or a handshake in that
//! direction (a veth without TCP adds none); `unseen_packets` has both directions of every
//! attached port, so that an alert on its increase has a series to start from.

use super::{
    pod_labels,
    text::{Exposition, Type},
};
use crate::model::{Direction, Snapshot};

/// (name, help) of each family, shared with the oracle.
pub(super) const FLAGS: (&str, &str) = (
    "node_tracer_tcp_flags_total",
    "TCP packets with SYN (without ACK), SYN-ACK, RST or FIN, by direction (pod's point of view).",
);
pub(super) const HANDSHAKE: (&str, &str) = (
    "node_tracer_tcp_handshake_seconds",
    "Time from a SYN to its SYN-ACK seen at the veth; direction transmit: the pod connected out.",
);
pub(super) const UNSEEN: (&str, &str) = (
    "node_tracer_unseen_packets_total",
    "Packets the kernel counted on the veth (pod side for receive) that our programs never saw.",
);

pub(super) fn families(out: &mut Exposition, snap: &Snapshot) {
    let mut f = out.family(FLAGS.0, FLAGS.1, Type::Counter);
    for p in &snap.ports {
        let (ns, pod) = pod_labels(p);
        for c in &p.counters.tcp_flags {
            let l = [
                ("namespace", ns),
                ("pod", pod),
                ("interface", p.name.as_str()),
                ("direction", c.direction.as_str()),
                ("flag", c.flag.as_str()),
            ];
            f.sample(&l, c.count);
        }
    }
    let mut f = out.family(HANDSHAKE.0, HANDSHAKE.1, Type::Histogram);
    for p in &snap.ports {
        let (ns, pod) = pod_labels(p);
        for h in &p.counters.handshakes {
            let dir = h.direction.as_str();
            for (le, n) in h.cumulative() {
                let le = if le.is_finite() {
                    le.to_string()
                } else {
                    "+Inf".to_string()
                };
                let l = [
                    ("namespace", ns),
                    ("pod", pod),
                    ("interface", p.name.as_str()),
                    ("direction", dir),
                    ("le", le.as_str()),
                ];
                f.sample_as("_bucket", &l, n);
            }
            let l = [
                ("namespace", ns),
                ("pod", pod),
                ("interface", p.name.as_str()),
                ("direction", dir),
            ];
            f.sample_as("_sum", &l, h.sum_ns as f64 / 1e9);
            f.sample_as("_count", &l, h.count);
        }
    }
    let mut f = out.family(UNSEEN.0, UNSEEN.1, Type::Counter);
    for p in snap.ports.iter().filter(|p| p.attached) {
        let (ns, pod) = pod_labels(p);
        for (d, n) in [
            (Direction::Receive, p.counters.unseen_rx),
            (Direction::Transmit, p.counters.unseen_tx),
        ] {
            let l = [
                ("namespace", ns),
                ("pod", pod),
                ("interface", p.name.as_str()),
                ("direction", d.as_str()),
            ];
            f.sample(&l, n);
        }
    }
}
