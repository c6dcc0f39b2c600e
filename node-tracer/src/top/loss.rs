//! Drops and TCP retransmits per row, per second: from the snapshot's drop report, which the
//! agent attributes to pods (a pod's drops by its host veth, its retransmits by its namespace).

use super::rates::{delta, per_second};
use super::row::Row;
use crate::{drop_report::DropReport, model::Port};

/// Sets each row's drop and retransmit rates from `prev` to `cur`.
pub(super) fn fill(
    rows: &mut [Row],
    ports: &[Port],
    prev: Option<&DropReport>,
    cur: &DropReport,
    elapsed_ms: u64,
) {
    for row in rows {
        let Some(p) = ports.get(row.port) else {
            continue;
        };
        let drops = |r: &DropReport| r.drops_of(&p.name);
        let retx = |r: &DropReport| {
            p.pod
                .as_ref()
                .map_or(0, |pod| r.retransmits_of(&pod.namespace, &pod.name))
        };
        // Without an earlier sample there is no rate (as for packets).
        let (d, x) = prev.map_or((0, 0), |q| {
            (delta(drops(q), drops(cur)), delta(retx(q), retx(cur)))
        });
        row.drops = per_second(d, elapsed_ms);
        row.retx = per_second(x, elapsed_ms);
    }
}
