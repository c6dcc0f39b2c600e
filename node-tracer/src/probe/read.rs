//! Reading the programs' maps: every attached port's counters, ICMP types and source MACs,
//! summed over CPUs, and the programs' own statistics.
//!
//! The reader owns descriptors of its own for the maps (duplicates of the loader's) and reads
//! the attached ports from what the probe last published, so a scrape reads the kernel at that
//! moment without the probe, and never waits behind an attach or a detach.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
};

use aya::{
    Ebpf,
    maps::{IterableMap as _, Map, MapData, PerCpuArray, PerCpuHashMap},
};
use node_tracer_common::{
    DIR_EGRESS, DIR_INGRESS, HandshakeStats, IcmpKey, MacKey, MacStats, PROG_EGRESS,
    PROG_EGRESS_NL, PROG_INGRESS, PROG_INGRESS_NL, PROG_KFREE_SKB, PROG_TCP_RETX, PROTO_COUNT,
    PortDirKey, PortStats, STAT_COUNT, TcpFlagKey, count_slot,
};

use super::{batch, bpf, map_errors::MapErrors, program_fd};
use crate::{
    clock::Clock,
    error::{Error, Result},
    model::{Direction, IcmpCount, MacSeen, PortCounters, format_mac},
    published::Published,
};

/// Raw totals of one port read from the maps.
#[derive(Debug, Default, Clone)]
pub struct PortReading {
    pub counters: PortCounters,
    pub macs: Vec<MacSeen>,
}

/// One read of the maps.
#[derive(Debug, Default)]
pub struct Readings {
    pub ports: HashMap<u32, PortReading>,
    /// `ICMP_STATS` entries this read saw (for [`MapReader::map_entries`], so one scrape reads
    /// that map once).
    pub icmp_entries: usize,
}

/// The ports the programs count for, as the probe last published them.
#[derive(Debug, Default, Clone)]
pub struct AttachedPorts {
    /// ifindex -> `PORT_COUNTERS` slot (a port gets its slot just before its attach).
    pub slot_of: HashMap<u32, u32>,
    /// Ports with both programs attached.
    pub attached: HashSet<u32>,
    /// Attached ports by how: (tcx, netlink).
    pub by_mode: (usize, usize),
}

/// Everything a scrape needs to read the kernel, shareable between threads.
pub struct MapReader {
    counters: Map,
    port_stats: Map,
    icmp: Map,
    pub(super) tcp_flags: Map,
    pub(super) handshakes: Map,
    macs: Map,
    agent_stats: Map,
    programs: Vec<(&'static str, OwnedFd)>,
    pub(super) ports: Published<AttachedPorts>,
    pub(super) errors: MapErrors,
    /// Drops and retransmits (see [`super::drops`]).
    pub drops: super::drops::DropMaps,
}

impl MapReader {
    pub(super) fn new(ebpf: &Ebpf, drops: super::drops::DropMaps) -> Result<Self> {
        fn open<'a, M: TryFrom<&'a Map, Error = aya::maps::MapError> + IterableMapData>(
            ebpf: &'a Ebpf,
            name: &'static str,
        ) -> Result<Map> {
            let typed = M::try_from(ebpf.map(name).ok_or(Error::MapMissing(name))?)
                .map_err(|source| Error::Map { name, source })?;
            let fd = typed
                .data()
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::io(format!("dup the fd of map {name}"), e))?;
            MapData::from_fd(fd)
                .and_then(Map::from_map_data)
                .map_err(|source| Error::Map { name, source })
        }
        // The tracepoint programs only where their part runs: one that did not load has no fd,
        // and one that loaded but did not attach never runs.
        let tracepoints = [
            (PROG_KFREE_SKB, drops.tracking.drops),
            (PROG_TCP_RETX, drops.tracking.retransmits),
        ];
        let programs = [PROG_INGRESS, PROG_EGRESS, PROG_INGRESS_NL, PROG_EGRESS_NL]
            .into_iter()
            .chain(tracepoints.into_iter().filter(|t| t.1).map(|t| t.0))
            .map(|name| Ok((name, program_fd(ebpf, name)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            counters: open::<PerCpuArray<_, PortStats>>(ebpf, "PORT_COUNTERS")?,
            port_stats: open::<PerCpuHashMap<_, u32, PortStats>>(ebpf, "PORT_STATS")?,
            icmp: open::<PerCpuHashMap<_, IcmpKey, u64>>(ebpf, "ICMP_STATS")?,
            tcp_flags: open::<PerCpuHashMap<_, TcpFlagKey, u64>>(ebpf, "TCP_FLAGS")?,
            handshakes: open::<PerCpuHashMap<_, PortDirKey, HandshakeStats>>(ebpf, "HANDSHAKES")?,
            macs: open::<PerCpuHashMap<_, MacKey, MacStats>>(ebpf, "MAC_SEEN")?,
            agent_stats: open::<PerCpuArray<_, u64>>(ebpf, "AGENT_STATS")?,
            programs,
            ports: Published::default(),
            errors: MapErrors::default(),
            drops,
        })
    }

    /// The attached ports as of the last attach or detach.
    pub fn attached(&self) -> Arc<AttachedPorts> {
        self.ports.load()
    }

    /// Agent-side map failures: (map, operation, count).
    pub fn map_errors(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.errors.totals()
    }

    /// Sums every map over CPUs: counters, ICMP types and MACs per attached port (and per
    /// `PORT_STATS` entry, attached or not).
    pub fn read(&self) -> Result<Readings> {
        let ports_now = self.ports.load();
        let mut out: HashMap<u32, PortReading> = HashMap::new();
        // Per (ifindex, MAC, direction): totals over CPUs of MAC_SEEN plus the pending counts the
        // programs keep for the last MAC of each port (see `PortDir`).
        let mut macs: HashMap<(u32, [u8; 6], u8), MacTotal> = HashMap::new();
        let mut ports: Vec<(u32, aya::maps::PerCpuValues<PortStats>)> = Vec::new();
        let counters =
            PerCpuArray::<_, PortStats>::try_from(&self.counters).map_err(|source| Error::Map {
                name: "PORT_COUNTERS",
                source,
            })?;
        // The slots in use lie below the highest one: one batch call reads them all.
        let used = ports_now.slot_of.values().max().map_or(0, |m| m + 1);
        match batch_of::<u32, PortStats>(counters.map(), used) {
            Ok(all) => {
                let mut by_slot: HashMap<u32, Vec<PortStats>> = all.into_iter().collect();
                for (&ifindex, slot) in &ports_now.slot_of {
                    if let Some(per_cpu) = by_slot.remove(slot) {
                        ports.push((ifindex, per_cpu_values(per_cpu)?));
                    }
                }
            }
            Err(e) => {
                self.errors.record("PORT_COUNTERS", "batch lookup", &e);
                for (&ifindex, &slot) in &ports_now.slot_of {
                    let per_cpu = counters.get(&slot, 0).map_err(|source| Error::Map {
                        name: "PORT_COUNTERS",
                        source,
                    })?;
                    ports.push((ifindex, per_cpu));
                }
            }
        }
        for entry in &self.port_stats()? {
            ports.push(entry.map_err(|source| Error::Map {
                name: "PORT_STATS",
                source,
            })?);
        }
        for (ifindex, per_cpu) in ports {
            let c = &mut out.entry(ifindex).or_default().counters;
            for s in per_cpu.iter() {
                // Host ingress is what the pod transmits; host egress what it receives.
                let (tx, rx) = (
                    &s.dirs[usize::from(DIR_INGRESS)],
                    &s.dirs[usize::from(DIR_EGRESS)],
                );
                for p in 0..PROTO_COUNT {
                    let (t, r) = (&tx.counts[count_slot(p)], &rx.counts[count_slot(p)]);
                    c.tx_packets[p] += t.packets;
                    c.tx_bytes[p] += t.bytes;
                    c.rx_packets[p] += r.packets;
                    c.rx_bytes[p] += r.bytes;
                }
                for (dir, d) in [DIR_INGRESS, DIR_EGRESS].into_iter().zip(&s.dirs) {
                    if d.mac_valid != 0 && d.mac_packets != 0 {
                        macs.entry((ifindex, d.mac, dir)).or_default().add(
                            d.mac_packets,
                            d.mac_bytes,
                            d.mac_first_ns,
                            d.mac_last_ns,
                        );
                    }
                }
            }
        }
        let icmp = self.hash_entries::<IcmpKey, u64>("ICMP_STATS", &self.icmp)?;
        let icmp_entries = icmp.len();
        for (k, per_cpu) in icmp {
            if let Some(r) = out.get_mut(&k.ifindex) {
                r.counters.icmp.push(IcmpCount {
                    direction: pod_direction(k.dir),
                    family: k.family,
                    icmp_type: k.icmp_type,
                    count: per_cpu.iter().sum(),
                });
            }
        }
        self.read_tcp(&mut out)?;
        let clock = Clock::now();
        for (k, per_cpu) in self.hash_entries::<MacKey, MacStats>("MAC_SEEN", &self.macs)? {
            if !out.contains_key(&k.ifindex) {
                continue;
            }
            let t = macs.entry((k.ifindex, k.mac, k.dir)).or_default();
            for v in &per_cpu {
                t.add(v.packets, v.bytes, v.first_ns, v.last_ns);
            }
        }
        for ((ifindex, mac, dir), t) in macs {
            let Some(r) = out.get_mut(&ifindex) else {
                continue;
            };
            r.macs.push(MacSeen {
                mac: format_mac(&mac),
                direction: pod_direction(dir),
                packets: t.packets,
                bytes: t.bytes,
                first_seen_ms: clock.mono_to_unix_ms(t.first_ns.unwrap_or(0)),
                last_seen_ms: clock.mono_to_unix_ms(t.last_ns),
            });
        }
        for r in out.values_mut() {
            r.counters
                .icmp
                .sort_by_key(|c| (c.direction, c.family, c.icmp_type));
            r.macs
                .sort_by(|a, b| (a.direction, &a.mac).cmp(&(b.direction, &b.mac)));
        }
        Ok(Readings {
            ports: out,
            icmp_entries,
        })
    }

    /// What the programs could not do, summed over CPUs (index: `STAT_*`).
    pub fn program_stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        let arr =
            PerCpuArray::<_, u64>::try_from(&self.agent_stats).map_err(|source| Error::Map {
                name: "AGENT_STATS",
                source,
            })?;
        let mut out = [0u64; STAT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            match arr.get(&(i as u32), 0) {
                Ok(v) => *slot = v.iter().sum(),
                Err(e) => self.errors.record("AGENT_STATS", "lookup", &e),
            }
        }
        Ok(out)
    }

    /// Run time and count of each program, the tc programs and the drop and retransmit
    /// tracepoint programs that run (non-zero only while `kernel.bpf_stats_enabled=1`).
    pub fn program_run_stats(&self) -> Vec<(&'static str, u32, std::time::Duration, u64)> {
        self.programs
            .iter()
            .filter_map(|(name, fd)| {
                let (id, time, runs) = bpf::prog_run_stats(fd.as_fd())
                    .inspect_err(|e| log::debug!("run statistics of {name}: {e}"))
                    .ok()?;
                Some((*name, id, time, runs))
            })
            .collect()
    }

    /// Ports with a `PORT_COUNTERS` slot, and entries in `PORT_STATS` and `ICMP_STATS` (`PORT_STATS`
    /// is rarely more than empty; `ICMP_STATS` as `icmp_entries` says, the count of the read just
    /// before, else counted in one batch read).
    pub fn map_entries(&self, icmp_entries: Option<usize>) -> Vec<(&'static str, usize)> {
        let mut out = vec![
            ("PORT_COUNTERS", self.ports.load().slot_of.len()),
            (
                "PORT_STATS",
                self.port_stats().map_or(0, |m| m.keys().count()),
            ),
        ];
        let icmp = icmp_entries.or_else(|| {
            self.hash_entries::<IcmpKey, u64>("ICMP_STATS", &self.icmp)
                .ok()
                .map(|e| e.len())
        });
        if let Some(n) = icmp {
            out.push(("ICMP_STATS", n));
        }
        out.extend(self.drops.entries());
        out
    }

    /// Entries in `MAC_SEEN` and `ICMP_STATS` belonging to `ifindex` (0 after a detach).
    pub fn entries_for(&self, ifindex: u32) -> usize {
        let mut n = 0;
        if let Ok(m) = PerCpuHashMap::<_, MacKey, MacStats>::try_from(&self.macs) {
            n += m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.ifindex == ifindex)
                .count();
        }
        if let Ok(m) = PerCpuHashMap::<_, IcmpKey, u64>::try_from(&self.icmp) {
            n += m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.ifindex == ifindex)
                .count();
        }
        n
    }

    fn port_stats(&self) -> Result<PerCpuHashMap<&MapData, u32, PortStats>> {
        PerCpuHashMap::try_from(&self.port_stats).map_err(|source| Error::Map {
            name: "PORT_STATS",
            source,
        })
    }

    /// Every entry of a per-CPU hash map: in a few batch calls, or walked one entry at a time
    /// where the kernel cannot batch (counted and logged: a scrape then costs far more).
    pub(super) fn hash_entries<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        map: &Map,
    ) -> Result<Vec<(K, Vec<V>)>> {
        let map = PerCpuHashMap::<_, K, V>::try_from(map)
            .map_err(|source| Error::Map { name, source })?;
        Ok(batch_of(map.map(), u32::MAX).unwrap_or_else(|e| {
            self.errors.record(name, "batch lookup", &e);
            map.iter()
                .filter_map(|entry| {
                    entry
                        .inspect_err(|e| self.errors.record(name, "lookup", e))
                        .ok()
                })
                .map(|(k, v)| (k, v.iter().copied().collect()))
                .collect()
        }))
    }
}

/// A typed map's descriptor, whatever its key and value.
trait IterableMapData {
    fn data(&self) -> &MapData;
}

impl<K: aya::Pod, V: aya::Pod> IterableMapData for PerCpuHashMap<&MapData, K, V> {
    fn data(&self) -> &MapData {
        self.map()
    }
}

impl<V: aya::Pod> IterableMapData for PerCpuArray<&MapData, V> {
    fn data(&self) -> &MapData {
        self.map()
    }
}

/// Up to `limit` entries of a per-CPU map in a few calls (see [`batch`]).
fn batch_of<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    limit: u32,
) -> std::io::Result<Vec<(K, Vec<V>)>> {
    let max_entries = map
        .info()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .max_entries();
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    batch::per_cpu_entries(map.fd().as_fd(), max_entries, cpus, limit)
}

fn per_cpu_values(v: Vec<PortStats>) -> Result<aya::maps::PerCpuValues<PortStats>> {
    aya::maps::PerCpuValues::try_from(v).map_err(|e| Error::io("per-CPU values", e))
}

pub(super) fn pod_direction(host_dir: u8) -> Direction {
    if host_dir == DIR_INGRESS {
        Direction::Transmit
    } else {
        Direction::Receive
    }
}

/// One source MAC's counts summed over CPUs and over its `MAC_SEEN` entry and port cache.
#[derive(Debug, Default)]
struct MacTotal {
    packets: u64,
    bytes: u64,
    /// Earliest non-zero first sighting (a CPU that never saw the MAC has zeroes).
    first_ns: Option<u64>,
    last_ns: u64,
}

impl MacTotal {
    fn add(&mut self, packets: u64, bytes: u64, first_ns: u64, last_ns: u64) {
        self.packets += packets;
        self.bytes += bytes;
        if first_ns != 0 {
            self.first_ns = Some(self.first_ns.map_or(first_ns, |f| f.min(first_ns)));
        }
        self.last_ns = self.last_ns.max(last_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_totals_keep_the_earliest_real_first_sighting() {
        let mut t = MacTotal::default();
        t.add(0, 0, 0, 0);
        t.add(3, 300, 50, 90);
        t.add(2, 100, 40, 70);
        assert_eq!(
            (t.packets, t.bytes, t.first_ns, t.last_ns),
            (5, 400, Some(40), 90)
        );
    }

    #[test]
    fn host_ingress_is_pod_transmit() {
        assert_eq!(pod_direction(DIR_INGRESS), Direction::Transmit);
        assert_eq!(pod_direction(DIR_EGRESS), Direction::Receive);
    }
}
