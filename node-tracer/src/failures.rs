//! Errors the agent survives (it logs them and goes on: a rescan that failed, a pod source that
//! did not answer, a counter read that did not work) are also counted by what failed, so a
//! dashboard sees what a log line said once: `node_tracer_errors_total{operation}`. (Map
//! operations have their own, finer family: `node_tracer_map_errors_total{map,operation}`.)

use std::{collections::BTreeMap, sync::Mutex};

static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

fn counts_mut() -> std::sync::MutexGuard<'static, BTreeMap<&'static str, u64>> {
    COUNTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts one failure of `operation` (a fixed name: it becomes a label value). The caller logs.
pub fn count(operation: &'static str) {
    *counts_mut().entry(operation).or_default() += 1;
}

/// (operation, failures) of every operation that failed since the start.
pub fn counts() -> Vec<(&'static str, u64)> {
    counts_mut().iter().map(|(k, v)| (*k, *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_add_up_by_operation() {
        // Other tests of this process may count too: compare with what was there before.
        let before = |op| {
            counts()
                .iter()
                .find(|(k, _)| *k == op)
                .map_or(0, |(_, n)| *n)
        };
        let (a, b) = (before("test_a"), before("test_b"));
        count("test_a");
        count("test_a");
        count("test_b");
        assert_eq!(before("test_a"), a + 2);
        assert_eq!(before("test_b"), b + 1);
    }
}
