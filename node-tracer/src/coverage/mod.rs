//! Coverage: packets the kernel counted on a veth that our programs never saw, per direction
//! (`node_tracer_unseen_packets_total`). A packet can pass a veth without its tc hooks: a
//! `bpf_redirect_peer` from another device's ingress lands in the pod without the host veth's
//! egress, an `AF_PACKET` socket with `PACKET_QDISC_BYPASS` skips egress, a program before ours
//! in the chain can steal a packet.
//!
//! The kernel's counters: for what the pod receives, the pod side's `rx_packets` (a
//! redirect into the pod counts there and nowhere on the host side); for what it transmits, the
//! host veth's `rx_packets`. Both are compared with what our hooks counted in that direction.
//!
//! A normal veth must read exactly 0, always. The kernel counts a packet a little before or
//! after our hook does (the host's receive is counted when the packet is queued, our ingress
//! hook runs when it is taken off the queue; our egress hook runs before the pod side counts
//! it), and the kernel counted packets before we attached. So the kernel's window of counts
//! lies strictly inside ours, by at least [`LAG`] at both ends: our baseline is read first, the
//! kernel's one `LAG` later; then each estimate compares the kernel's count of at least `LAG`
//! ago with ours now. A packet the kernel counted in its window was seen by our hook inside
//! ours unless it was never seen. The estimate can only fall short (a packet dropped after our
//! egress hook offsets one unseen packet), never exceed, and the counter never goes down.

mod kernel;

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

pub use kernel::Kernel;

use crate::model::Snapshot;

/// How far apart in time the kernel's and our counts are compared: far longer than a packet
/// waits between the kernel's count and our hook (a backlog queue: microseconds).
pub const LAG: Duration = Duration::from_secs(1);

/// Counts per direction from the pod's point of view: `[receive, transmit]`.
pub type Pair = [u64; 2];

/// Where one port's estimate stands.
#[derive(Debug, Clone)]
enum PortState {
    /// Our baseline is read; the kernel's is taken at least `LAG` later.
    Started { ours: Pair, at: Instant },
    Counting {
        ours0: Pair,
        kernel0: Pair,
        /// The kernel's counts at `at`, compared with ours at least `LAG` later.
        kernel_then: Pair,
        at: Instant,
        unseen: Pair,
    },
}

impl PortState {
    /// Whether a read now would move the estimate on (at most once per [`LAG`]): reads in
    /// between need not ask the kernel.
    fn due(&self, now: Instant) -> bool {
        let (PortState::Started { at, .. } | PortState::Counting { at, .. }) = self;
        now.duration_since(*at) >= LAG
    }

    fn unseen(&self) -> Pair {
        match self {
            PortState::Started { .. } => [0; 2],
            PortState::Counting { unseen, .. } => *unseen,
        }
    }

    /// Moves on with this read's counts; returns the unseen counts so far.
    fn step(&mut self, ours: Pair, kernel: Pair, now: Instant) -> Pair {
        match self {
            PortState::Started { ours: ours0, at } => {
                if now.duration_since(*at) >= LAG {
                    *self = PortState::Counting {
                        ours0: *ours0,
                        kernel0: kernel,
                        kernel_then: kernel,
                        at: now,
                        unseen: [0; 2],
                    };
                }
                [0; 2]
            }
            PortState::Counting {
                ours0,
                kernel0,
                kernel_then,
                at,
                unseen,
            } => {
                if now.duration_since(*at) >= LAG {
                    for d in 0..2 {
                        let counted = kernel_then[d].saturating_sub(kernel0[d]);
                        let seen = ours[d].saturating_sub(ours0[d]);
                        unseen[d] = unseen[d].max(counted.saturating_sub(seen));
                    }
                    *kernel_then = kernel;
                    *at = now;
                }
                *unseen
            }
        }
    }
}

/// The estimates of every attached port, advanced by each snapshot.
#[derive(Default)]
pub struct Coverage {
    state: Mutex<(Option<Kernel>, HashMap<u32, PortState>)>,
}

impl Coverage {
    /// Reads the kernel's counters of every attached port of `snap` and fills in its
    /// `unseen_rx` / `unseen_tx`. A port whose counters cannot be read keeps its last estimate.
    pub fn update(&self, snap: &mut Snapshot) {
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let (kernel, ports) = &mut *guard;
        if kernel.is_none() {
            match Kernel::open() {
                Ok(k) => *kernel = Some(k),
                Err(e) => {
                    crate::failures::count("coverage_socket");
                    log::debug!("netlink socket for link counters: {e}");
                    return;
                }
            }
        }
        let Some(kernel) = kernel.as_mut() else {
            return;
        };
        let now = Instant::now();
        let attached: std::collections::HashSet<u32> = snap
            .ports
            .iter()
            .filter(|p| p.attached)
            .map(|p| p.ifindex)
            .collect();
        ports.retain(|i, _| attached.contains(i));
        for p in snap.ports.iter_mut().filter(|p| p.attached) {
            let Some(peer) = &p.peer else {
                continue;
            };
            // Ours first: see the module's comment on the order of reads.
            let c = &p.counters;
            let ours = [c.rx_packets_total(), c.tx_packets_total()];
            let Some(state) = ports.get_mut(&p.ifindex) else {
                // The baseline is ours alone; the kernel is asked from the next read on.
                ports.insert(p.ifindex, PortState::Started { ours, at: now });
                continue;
            };
            // The kernel is asked at most once per LAG and port, however often views read.
            let due = state.due(now);
            let kernel_now = due
                .then(|| {
                    Some([
                        kernel.rx_packets(peer.ifindex, peer.netnsid)?,
                        kernel.rx_packets(p.ifindex, None)?,
                    ])
                })
                .flatten();
            let [rx, tx] = match kernel_now {
                Some(k) => state.step(ours, k, now),
                None => state.unseen(),
            };
            p.counters.unseen_rx = rx;
            p.counters.unseen_tx = tx;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_packets_and_counts_before_attach_never_read_as_unseen() {
        let t0 = Instant::now();
        let mut s = PortState::Started {
            ours: [0, 0],
            at: t0,
        };
        // The kernel counted 1000 packets before we attached, and 5 more in flight.
        assert_eq!(s.step([3, 0], [1005, 0], t0 + LAG / 2), [0, 0]);
        assert_eq!(s.step([5, 0], [1005, 0], t0 + LAG), [0, 0]);
        // 100 packets each way; the kernel has counted 2 our hook has not yet seen.
        assert_eq!(s.step([105, 100], [1107, 100], t0 + 2 * LAG), [0, 0]);
        assert_eq!(s.step([107, 100], [1107, 100], t0 + 3 * LAG), [0, 0]);
    }

    #[test]
    fn packets_past_our_hooks_are_counted_once_and_never_go_down() {
        let t0 = Instant::now();
        let mut s = PortState::Started {
            ours: [10, 10],
            at: t0,
        };
        s.step([10, 10], [50, 60], t0 + LAG);
        // 7 packets reach the pod past our egress hook.
        s.step([10, 10], [57, 60], t0 + 2 * LAG);
        assert_eq!(s.step([10, 10], [57, 60], t0 + 3 * LAG), [7, 0]);
        // A drop after our hook (we saw it, the pod did not) does not take one back.
        assert_eq!(s.step([11, 10], [57, 60], t0 + 4 * LAG), [7, 0]);
        // Reads closer than LAG leave the estimate as it is.
        assert_eq!(s.step([11, 10], [90, 60], t0 + 4 * LAG), [7, 0]);
    }
}
