//! Rates from two snapshots: counter deltas over the time between them. Pure, so the maths is
//! tested without a kernel.

use crate::model::{Direction, IcmpCount, PortCounters, Snapshot};

/// The protocol mix buckets shown by `top`, coarser than [`crate::model::PROTOCOLS`].
pub const MIX: [&str; 5] = ["icmp", "tcp", "udp", "arp", "other"];

/// Maps an index of [`crate::model::PROTOCOLS`] to its [`MIX`] bucket: `ICMPv6` counts as ICMP
/// (a person asking "which veth sees my pings" means both), IP-other and non-IP as other.
pub fn mix_bucket(proto: usize) -> usize {
    match proto {
        1 | 2 => 0,
        3 => 1,
        4 => 2,
        0 => 3,
        _ => 4,
    }
}

/// What changed on one port over the last interval, from the pod's point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub rx_pps: f64,
    pub tx_pps: f64,
    pub rx_bps: f64,
    pub tx_bps: f64,
    /// Packets (receive + transmit) per [`MIX`] bucket over the interval.
    pub mix: [u64; 5],
}

impl Rates {
    /// Share of each [`MIX`] bucket in percent, or `None` when the port was silent.
    pub fn mix_percent(&self) -> Option<[u8; 5]> {
        let total: u64 = self.mix.iter().sum();
        if total == 0 {
            return None;
        }
        Some(
            self.mix
                .map(|n| ((n as f64 * 100.0 / total as f64).round()) as u8),
        )
    }

    /// The bucket with most packets and its share, for the narrow table.
    pub fn dominant(&self) -> Option<(&'static str, u8)> {
        let pct = self.mix_percent()?;
        let (i, _) = self
            .mix
            .iter()
            .enumerate()
            .max_by_key(|&(i, n)| (*n, std::cmp::Reverse(i)))?;
        Some((MIX[i], pct[i]))
    }

    /// Adds another port's rates, for per-bridge totals.
    pub fn add(&mut self, o: &Rates) {
        self.rx_pps += o.rx_pps;
        self.tx_pps += o.tx_pps;
        self.rx_bps += o.rx_bps;
        self.tx_bps += o.tx_bps;
        for (a, b) in self.mix.iter_mut().zip(o.mix) {
            *a += b;
        }
    }
}

/// Growth of a monotonic counter. A counter that went down was reset (the veth was recreated
/// or the agent restarted): the growth is unknown, and 0 is the honest lower bound.
pub fn delta(prev: u64, cur: u64) -> u64 {
    cur.saturating_sub(prev)
}

/// `delta` per second over `elapsed_ms`; 0 when no time passed (two reads in one millisecond
/// would otherwise divide by zero).
pub fn per_second(delta: u64, elapsed_ms: u64) -> f64 {
    if elapsed_ms == 0 {
        0.0
    } else {
        delta as f64 * 1000.0 / elapsed_ms as f64
    }
}

/// Milliseconds between two snapshots; 0 if the clock went backwards.
pub fn elapsed_ms(prev: &Snapshot, cur: &Snapshot) -> u64 {
    cur.taken_at_ms.saturating_sub(prev.taken_at_ms)
}

/// Per-protocol packet deltas (receive, transmit), indexed as [`crate::model::PROTOCOLS`].
/// Without a previous sample there is no interval, so every delta is 0.
pub fn packet_deltas(prev: Option<&PortCounters>, cur: &PortCounters) -> ([u64; 8], [u64; 8]) {
    let Some(p) = prev else {
        return ([0; 8], [0; 8]);
    };
    (
        std::array::from_fn(|i| delta(p.rx_packets[i], cur.rx_packets[i])),
        std::array::from_fn(|i| delta(p.tx_packets[i], cur.tx_packets[i])),
    )
}

/// Rates of one port over `elapsed_ms`, given its counters in the previous snapshot (if the
/// port existed then).
pub fn port_rates(prev: Option<&PortCounters>, cur: &PortCounters, elapsed_ms: u64) -> Rates {
    let Some(p) = prev else {
        return Rates::default();
    };
    let sum = |prev: &[u64; 8], cur: &[u64; 8]| -> u64 {
        prev.iter().zip(cur).map(|(a, b)| delta(*a, *b)).sum()
    };
    let (rx, tx) = packet_deltas(prev, cur);
    let mut mix = [0; 5];
    for i in 0..8 {
        mix[mix_bucket(i)] += rx[i] + tx[i];
    }
    Rates {
        rx_pps: per_second(rx.iter().sum(), elapsed_ms),
        tx_pps: per_second(tx.iter().sum(), elapsed_ms),
        rx_bps: per_second(sum(&p.rx_bytes, &cur.rx_bytes) * 8, elapsed_ms),
        tx_bps: per_second(sum(&p.tx_bytes, &cur.tx_bytes) * 8, elapsed_ms),
        mix,
    }
}

/// One ICMP message type on one port: its total and its growth over the last interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpDelta {
    pub direction: Direction,
    pub family: u8,
    pub icmp_type: u8,
    pub total: u64,
    pub delta: u64,
}

/// ICMP counters joined with the previous sample, most recently active first (then busiest),
/// so "which veth sees my pings" is answered by the first lines of the detail pane.
pub fn icmp_deltas(prev: Option<&[IcmpCount]>, cur: &[IcmpCount]) -> Vec<IcmpDelta> {
    let mut out: Vec<IcmpDelta> = cur
        .iter()
        .map(|c| {
            let before = prev.and_then(|p| {
                p.iter()
                    .find(|o| {
                        o.direction == c.direction
                            && o.family == c.family
                            && o.icmp_type == c.icmp_type
                    })
                    .map(|o| o.count)
            });
            IcmpDelta {
                direction: c.direction,
                family: c.family,
                icmp_type: c.icmp_type,
                total: c.count,
                // A type absent before appeared during the interval (prev given) or we have
                // no interval at all (prev absent).
                delta: match (prev, before) {
                    (Some(_), Some(b)) => delta(b, c.count),
                    (Some(_), None) => c.count,
                    (None, _) => 0,
                },
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.delta
            .cmp(&a.delta)
            .then(b.total.cmp(&a.total))
            .then((a.family, a.icmp_type, a.direction).cmp(&(b.family, b.icmp_type, b.direction)))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(
        rx_pkts: [u64; 8],
        tx_pkts: [u64; 8],
        rx_bytes: u64,
        tx_bytes: u64,
    ) -> PortCounters {
        let mut c = PortCounters {
            rx_packets: rx_pkts,
            tx_packets: tx_pkts,
            ..PortCounters::default()
        };
        c.rx_bytes[3] = rx_bytes;
        c.tx_bytes[3] = tx_bytes;
        c
    }

    #[test]
    fn delta_of_a_reset_counter_is_zero_not_negative() {
        assert_eq!(delta(10, 15), 5);
        assert_eq!(delta(15, 10), 0);
        assert_eq!(delta(u64::MAX, 0), 0);
    }

    #[test]
    fn per_second_scales_by_elapsed_time() {
        assert!((per_second(10, 2000) - 5.0).abs() < 1e-9);
        assert!((per_second(3, 500) - 6.0).abs() < 1e-9);
        assert!(per_second(10, 0).abs() < f64::EPSILON);
    }

    #[test]
    fn port_rates_are_from_the_pods_point_of_view() {
        let prev = counters([0; 8], [0; 8], 0, 0);
        let cur = counters(
            [0, 4, 0, 10, 0, 0, 0, 0],
            [2, 0, 0, 6, 0, 0, 0, 0],
            1000,
            500,
        );
        let r = port_rates(Some(&prev), &cur, 2000);
        assert!((r.rx_pps - 7.0).abs() < 1e-9);
        assert!((r.tx_pps - 4.0).abs() < 1e-9);
        assert!((r.rx_bps - 4000.0).abs() < 1e-9);
        assert!((r.tx_bps - 2000.0).abs() < 1e-9);
        assert_eq!(r.mix, [4, 16, 0, 2, 0]);
        assert_eq!(r.mix_percent(), Some([18, 73, 0, 9, 0]));
        assert_eq!(r.dominant(), Some(("tcp", 73)));
    }

    #[test]
    fn first_sample_and_reset_give_zero_rates() {
        let cur = counters([5; 8], [5; 8], 100, 100);
        assert_eq!(port_rates(None, &cur, 1000), Rates::default());
        let before_reset = counters([50; 8], [50; 8], 9000, 9000);
        let r = port_rates(Some(&before_reset), &cur, 1000);
        assert_eq!(r, Rates::default());
        assert_eq!(r.mix_percent(), None);
        assert_eq!(r.dominant(), None);
    }

    #[test]
    fn icmpv6_counts_as_icmp_and_ip_other_as_other() {
        assert_eq!(mix_bucket(2), 0);
        assert_eq!(mix_bucket(0), 3);
        assert_eq!(mix_bucket(5), 4);
        assert_eq!(mix_bucket(7), 4);
    }

    #[test]
    fn elapsed_never_negative() {
        let a = Snapshot {
            taken_at_ms: 5000,
            ..Snapshot::default()
        };
        let b = Snapshot {
            taken_at_ms: 4000,
            ..Snapshot::default()
        };
        assert_eq!(elapsed_ms(&a, &b), 0);
        assert_eq!(elapsed_ms(&b, &a), 1000);
    }

    #[test]
    fn icmp_deltas_put_active_types_first() {
        let ic = |direction, family, icmp_type, count| IcmpCount {
            direction,
            family,
            icmp_type,
            count,
        };
        let prev = vec![
            ic(Direction::Receive, 4, 8, 10),
            ic(Direction::Transmit, 4, 0, 10),
        ];
        let cur = vec![
            ic(Direction::Receive, 4, 8, 10),
            ic(Direction::Transmit, 4, 0, 13),
            ic(Direction::Transmit, 6, 135, 2),
        ];
        let d = icmp_deltas(Some(&prev), &cur);
        let got: Vec<(u8, u64, u64)> = d.iter().map(|x| (x.icmp_type, x.total, x.delta)).collect();
        assert_eq!(got, vec![(0, 13, 3), (135, 2, 2), (8, 10, 0)]);
        assert!(icmp_deltas(None, &cur).iter().all(|x| x.delta == 0));
    }
}
