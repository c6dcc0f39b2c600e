//! Reading `TCP_FLAGS` and `HANDSHAKES` into the ports' counters.

use std::collections::HashMap;

use node_tracer_common::{HandshakeStats, PortDirKey, TcpFlagKey};

use super::read::{MapReader, PortReading, pod_direction};
use crate::{
    error::Result,
    tcp::{Handshakes, TcpFlag, TcpFlagCount},
};

impl MapReader {
    /// Adds the TCP flag counts and handshake histograms of the ports in `out`, summed over CPUs.
    pub(super) fn read_tcp(&self, out: &mut HashMap<u32, PortReading>) -> Result<()> {
        for (k, per_cpu) in self.hash_entries::<TcpFlagKey, u64>("TCP_FLAGS", &self.tcp_flags)? {
            let (Some(r), Some(flag)) = (out.get_mut(&k.ifindex), TcpFlag::from_index(k.flag))
            else {
                continue;
            };
            r.counters.tcp_flags.push(TcpFlagCount {
                direction: pod_direction(k.dir),
                flag,
                count: per_cpu.iter().sum(),
            });
        }
        for (k, per_cpu) in
            self.hash_entries::<PortDirKey, HandshakeStats>("HANDSHAKES", &self.handshakes)?
        {
            let Some(r) = out.get_mut(&k.ifindex) else {
                continue;
            };
            let mut h = Handshakes {
                direction: pod_direction(k.dir),
                count: 0,
                sum_ns: 0,
                buckets: Vec::new(),
            };
            for v in &per_cpu {
                h.add(v.count, v.sum_ns, &v.buckets);
            }
            r.counters.handshakes.push(h);
        }
        for r in out.values_mut() {
            r.counters.tcp_flags.sort_by_key(|c| (c.direction, c.flag));
            r.counters.handshakes.sort_by_key(|h| h.direction);
        }
        Ok(())
    }
}
