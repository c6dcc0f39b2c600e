//! TCP health at the veth, as the programs see it: SYN, SYN-ACK, RST and FIN packets per
//! direction, and the time from a SYN to its SYN-ACK (the handshake as the veth sees it).

use node_tracer_common::{HANDSHAKE_BOUNDS_NS, HANDSHAKE_BUCKETS, TCP_FIN, TCP_RST, TCP_SYN};
use serde::{Deserialize, Serialize};

use crate::direction::Direction;

/// A TCP flag the programs count. A SYN with ACK is a `synack`, never a `syn`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum TcpFlag {
    Syn,
    Synack,
    Rst,
    Fin,
}

impl TcpFlag {
    pub const ALL: [TcpFlag; 4] = [TcpFlag::Syn, TcpFlag::Synack, TcpFlag::Rst, TcpFlag::Fin];

    /// The flag of a `TCP_FLAGS` key (`TCP_*`), `None` for a value this agent does not know.
    pub fn from_index(flag: u8) -> Option<Self> {
        match flag {
            TCP_SYN => Some(TcpFlag::Syn),
            node_tracer_common::TCP_SYNACK => Some(TcpFlag::Synack),
            TCP_RST => Some(TcpFlag::Rst),
            TCP_FIN => Some(TcpFlag::Fin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TcpFlag::Syn => "syn",
            TcpFlag::Synack => "synack",
            TcpFlag::Rst => "rst",
            TcpFlag::Fin => "fin",
        }
    }
}

/// Packets carrying one flag, in one direction (the pod's point of view).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcpFlagCount {
    pub direction: Direction,
    pub flag: TcpFlag,
    pub count: u64,
}

/// Handshakes timed on a port, by who connected: `transmit` when the pod sent the SYN (it
/// connected out), `receive` when the SYN came to the pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Handshakes {
    pub direction: Direction,
    pub count: u64,
    pub sum_ns: u64,
    /// Per bucket of [`bounds_seconds`] plus a last one for the rest; not cumulative.
    pub buckets: Vec<u64>,
}

impl Handshakes {
    /// Mean handshake time in seconds (0 without handshakes).
    pub fn mean_seconds(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64 / 1e9
        }
    }

    /// Prometheus' cumulative buckets: (upper bound in seconds, count at or below it); the
    /// last bound is +Inf and its count is `count`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        bounds_seconds()
            .into_iter()
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(i, le)| {
                acc += self.buckets.get(i).copied().unwrap_or(0);
                (le, acc)
            })
            .collect()
    }

    /// Adds another reading of the same port and direction (another CPU's).
    pub fn add(&mut self, count: u64, sum_ns: u64, buckets: &[u64]) {
        self.count += count;
        self.sum_ns += sum_ns;
        self.buckets.resize(HANDSHAKE_BUCKETS, 0);
        for (b, n) in self.buckets.iter_mut().zip(buckets) {
            *b += n;
        }
    }
}

/// The histogram's finite upper bounds, in seconds.
pub fn bounds_seconds() -> Vec<f64> {
    HANDSHAKE_BOUNDS_NS
        .iter()
        .map(|ns| *ns as f64 / 1e9)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_become_cumulative_ending_in_the_count() {
        let mut h = Handshakes {
            direction: Direction::Receive,
            count: 0,
            sum_ns: 0,
            buckets: Vec::new(),
        };
        h.add(2, 300_000, &[1, 1, 0, 0, 0, 0, 0, 0]);
        h.add(1, 2_000_000_000, &[0, 0, 0, 0, 0, 0, 0, 1]);
        let c = h.cumulative();
        assert_eq!(c.len(), HANDSHAKE_BUCKETS);
        assert_eq!(c[0], (0.0001, 1));
        assert_eq!(c[1], (0.0005, 2));
        assert_eq!(c[HANDSHAKE_BUCKETS - 2].1, 2);
        assert_eq!(c[HANDSHAKE_BUCKETS - 1], (f64::INFINITY, 3));
        assert!((h.mean_seconds() - 2.0003 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn flags_name_as_the_metric_contract_says() {
        let names: Vec<_> = TcpFlag::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(names, ["syn", "synack", "rst", "fin"]);
        for (i, f) in TcpFlag::ALL.iter().enumerate() {
            assert_eq!(TcpFlag::from_index(i as u8), Some(*f));
        }
        assert_eq!(TcpFlag::from_index(9), None);
    }
}
