//! Map operations of the agent itself that failed, none of them fatal (a removal left an entry
//! behind, a batch read fell back to one entry at a time): each one is counted for the health
//! metric `node_tracer_map_errors_total`, and logged at the 1st, 2nd, 4th, 8th... occurrence of
//! its kind, so a failure that repeats every scrape cannot flood the log.

use std::{collections::BTreeMap, sync::Mutex};

/// Failures by (map, operation).
#[derive(Debug, Default)]
pub struct MapErrors {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl MapErrors {
    pub fn record(
        &self,
        map: &'static str,
        op: &'static str,
        error: &(dyn std::error::Error + 'static),
    ) {
        let n = {
            let mut counts = self
                .counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = counts.entry((map, op)).or_default();
            *n += 1;
            *n
        };
        if n.is_power_of_two() {
            log::warn!(
                "{op} on eBPF map {map} failed: {} ({n} such failures so far)",
                node_tracer_client::one_line(error)
            );
        }
    }

    /// (map, operation, failures), in a stable order.
    pub fn totals(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((map, op), n)| (*map, *op, *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_map_and_operation() {
        let e = MapErrors::default();
        let err = |code| std::io::Error::from_raw_os_error(code);
        e.record("MAC_SEEN", "remove", &err(libc::EPERM));
        e.record("MAC_SEEN", "remove", &err(libc::EPERM));
        e.record("ICMP_STATS", "batch lookup", &err(libc::EINVAL));
        assert_eq!(
            e.totals(),
            [("ICMP_STATS", "batch lookup", 1), ("MAC_SEEN", "remove", 2)]
        );
    }
}
