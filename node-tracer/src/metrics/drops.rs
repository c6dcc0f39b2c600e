//! `node_tracer_drops_total`, `node_tracer_tcp_retransmits_total`, and whether each part runs.
//!
//! Only what was seen has a series: a pod that never dropped nor retransmitted adds none, and a
//! reason appears the first time a packet dies of it.

use super::text::{Exposition, Type};
use crate::drop_report::DropReport;

pub(super) fn families(out: &mut Exposition, r: &DropReport) {
    let mut f = out.family(
        "node_tracer_drops_total",
        "Packets the kernel dropped, by pod (its host veth as interface; all empty for the host) \
         and reason (enum skb_drop_reason, from the kernel's BTF).",
        Type::Counter,
    );
    for d in &r.drops {
        let l = [
            ("namespace", d.namespace.as_str()),
            ("pod", d.pod.as_str()),
            ("name", d.name.as_str()),
            ("interface", d.interface.as_str()),
            ("reason", d.reason.as_str()),
        ];
        f.sample(&l, d.count);
    }
    let mut f = out.family(
        "node_tracer_tcp_retransmits_total",
        "TCP segments retransmitted by sockets of the pod's network namespace (empty labels: \
         the host and namespaces of no pod), as the namespace's TcpRetransSegs counts them.",
        Type::Counter,
    );
    for x in &r.retransmits {
        let l = [
            ("namespace", x.namespace.as_str()),
            ("pod", x.pod.as_str()),
            ("name", x.name.as_str()),
        ];
        f.sample(&l, x.count);
    }
    let mut f = out.family(
        "node_tracer_tracking_enabled",
        "1 when the part runs: drops (tracepoint kfree_skb) and retransmits \
         (tcp_retransmit_skb); 0 when turned off or the kernel lacks what it needs (see the log).",
        Type::Gauge,
    );
    f.sample(&[("part", "drops")], u64::from(r.drops_on));
    f.sample(&[("part", "retransmits")], u64::from(r.retransmits_on));
}
