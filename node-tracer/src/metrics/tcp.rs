//! TCP health and coverage per port: `node_tracer_tcp_flags_total`,
//! `node_tracer_tcp_handshake_seconds` and `node_tracer_unseen_packets_total`.
//!
//! Flag and handshake series exist only once a port saw that flag or a handshake in that
//! direction (a veth without TCP adds none); `unseen_packets` has both directions of every
//! attached port, so that an alert on its increase has a series to start from.

use super::{
    PortLabels,
    text::{Exposition, Type},
};
use crate::model::{Direction, Port};

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

pub(super) fn families<'a, I>(out: &mut Exposition, ports: impl Fn() -> I)
where
    I: Iterator<Item = (&'a Port, &'a PortLabels<'a>)>,
{
    let mut f = out.family(FLAGS.0, FLAGS.1, Type::Counter);
    for (p, l) in ports() {
        for c in &p.counters.tcp_flags {
            let l = [
                ("namespace", l.namespace),
                ("pod", l.pod),
                ("name", l.name),
                ("interface", l.interface),
                ("direction", c.direction.as_str()),
                ("flag", c.flag.as_str()),
            ];
            f.sample(&l, c.count);
        }
    }
    let mut f = out.family(HANDSHAKE.0, HANDSHAKE.1, Type::Histogram);
    for (p, pl) in ports() {
        for h in &p.counters.handshakes {
            let dir = h.direction.as_str();
            for (le, n) in h.cumulative() {
                let le = if le.is_finite() {
                    le.to_string()
                } else {
                    "+Inf".to_string()
                };
                let l = [
                    ("namespace", pl.namespace),
                    ("pod", pl.pod),
                    ("name", pl.name),
                    ("interface", pl.interface),
                    ("direction", dir),
                    ("le", le.as_str()),
                ];
                f.sample_as("_bucket", &l, n);
            }
            let l = [
                ("namespace", pl.namespace),
                ("pod", pl.pod),
                ("name", pl.name),
                ("interface", pl.interface),
                ("direction", dir),
            ];
            f.sample_as("_sum", &l, h.sum_ns as f64 / 1e9);
            f.sample_as("_count", &l, h.count);
        }
    }
    let mut f = out.family(UNSEEN.0, UNSEEN.1, Type::Counter);
    for (p, pl) in ports().filter(|(p, _)| p.attached) {
        for (d, n) in [
            (Direction::Receive, p.counters.unseen_rx),
            (Direction::Transmit, p.counters.unseen_tx),
        ] {
            let l = [
                ("namespace", pl.namespace),
                ("pod", pl.pod),
                ("name", pl.name),
                ("interface", pl.interface),
                ("direction", d.as_str()),
            ];
            f.sample(&l, n);
        }
    }
}
