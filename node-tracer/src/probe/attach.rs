//! Attaching both programs to a port, first in its tcx chain or as clsact filters over netlink,
//! and detaching them again, with the port's counter slot and map entries made and cleared
//! around it.

use std::{collections::HashSet, os::fd::OwnedFd};

use aya::maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap};
use aya::programs::{
    LinkOrder, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
};
use node_tracer_common::{
    HandshakeStats, IcmpKey, MacKey, MacStats, PROG_EGRESS, PROG_EGRESS_NL, PROG_INGRESS,
    PROG_INGRESS_NL, PortDirKey, PortSlot, PortStats, TcpFlagKey,
};

use super::{AttachMode, Probe, program, qdisc, read::AttachedPorts};
use node_tracer_client::one_line;

use crate::error::{Error, Result};

pub(super) struct Attachment {
    pub name: String,
    pub hooks: Hooks,
    pub since: std::time::Instant,
}

/// How one port's two programs are attached.
pub(super) enum Hooks {
    /// tcx links made by aya (`--attach-mode tcx`).
    Tcx {
        ingress: SchedClassifierLinkId,
        egress: SchedClassifierLinkId,
    },
    /// clsact filters running the `_nl` programs.
    Netlink {
        ingress: SchedClassifierLinkId,
        egress: SchedClassifierLinkId,
        /// We added the clsact qdisc (or found our own stale filters on it), so we remove it on
        /// detach when nothing else uses it.
        owns_qdisc: bool,
    },
    /// tcx links made by an upgrade from netlink: closing them detaches.
    Links { _ingress: OwnedFd, _egress: OwnedFd },
}

impl Probe {
    /// Attaches both programs to `name`, ahead of every other program on it. Idempotent.
    pub fn attach(&mut self, ifindex: u32, name: &str) -> Result<()> {
        if let Some(a) = self.attached.get_mut(&ifindex) {
            // Renamed: the attachment follows the ifindex, only the label changes.
            if a.name != name {
                a.name = name.to_string();
            }
            return Ok(());
        }
        if self.attached.len() >= self.max_ports as usize {
            return Err(Error::MaxPorts {
                interface: name.to_owned(),
                max: self.max_ports,
            });
        }
        // Create the counters first so the first packet is counted without an insert on the hot
        // path.
        self.create_counters(ifindex)?;
        let result = self.attach_hooks(name);
        match result {
            Ok(hooks) => {
                self.attached.insert(
                    ifindex,
                    Attachment {
                        name: name.to_string(),
                        hooks,
                        since: std::time::Instant::now(),
                    },
                );
                self.publish();
                Ok(())
            }
            Err(e) => {
                self.forget_port(ifindex);
                Err(e)
            }
        }
    }

    fn attach_hooks(&mut self, name: &str) -> Result<Hooks> {
        let netlink = self.mode != AttachMode::Tcx;
        let (prog_in, prog_eg) = if netlink {
            (PROG_INGRESS_NL, PROG_EGRESS_NL)
        } else {
            (PROG_INGRESS, PROG_EGRESS)
        };
        let mut owns_qdisc = false;
        if netlink {
            owns_qdisc = remove_stale_filters(name);
            match tc::qdisc_add_clsact(name) {
                Ok(()) => owns_qdisc = true,
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(Error::Attach {
                        interface: name.to_string(),
                        direction: "clsact",
                        source: e.into(),
                    });
                }
            }
        }
        let ingress = self.attach_one(name, prog_in, TcAttachType::Ingress, netlink)?;
        let egress = match self.attach_one(name, prog_eg, TcAttachType::Egress, netlink) {
            Ok(id) => id,
            Err(e) => {
                if let Ok(p) = program(&mut self.ebpf, prog_in)
                    && let Err(d) = p.detach(ingress)
                {
                    log::debug!("undoing the ingress attach on {name}: {}", one_line(&d));
                }
                return Err(e);
            }
        };
        Ok(if netlink {
            Hooks::Netlink {
                ingress,
                egress,
                owns_qdisc,
            }
        } else {
            Hooks::Tcx { ingress, egress }
        })
    }

    fn attach_one(
        &mut self,
        iface: &str,
        prog: &'static str,
        ty: TcAttachType,
        netlink: bool,
    ) -> Result<SchedClassifierLinkId> {
        let options = if netlink {
            TcAttachOptions::Netlink(NlOptions {
                // Lowest priority number runs first.
                priority: 1,
                ..NlOptions::default()
            })
        } else {
            TcAttachOptions::TcxOrder(LinkOrder::first())
        };
        let p = program(&mut self.ebpf, prog)?;
        p.attach_with_options(iface, ty, options)
            .map_err(|source| Error::Attach {
                interface: iface.to_string(),
                direction: if ty == TcAttachType::Ingress {
                    "ingress"
                } else {
                    "egress"
                },
                source,
            })
    }

    /// Detaches from `ifindex` and forgets its counters. A veth that is already gone is fine: the
    /// kernel dropped the attachment with it.
    pub fn detach(&mut self, ifindex: u32) {
        if let Some(a) = self.attached.remove(&ifindex) {
            self.detach_hooks(&a.name, a.hooks);
        }
        self.no_upgrade.remove(&ifindex);
        self.forget_port(ifindex);
    }

    pub(super) fn detach_hooks(&mut self, name: &str, hooks: Hooks) {
        let (ids, owns_qdisc) = match hooks {
            Hooks::Tcx { ingress, egress } => {
                ([(PROG_INGRESS, ingress), (PROG_EGRESS, egress)], false)
            }
            Hooks::Netlink {
                ingress,
                egress,
                owns_qdisc,
            } => (
                [(PROG_INGRESS_NL, ingress), (PROG_EGRESS_NL, egress)],
                owns_qdisc,
            ),
            // Closing the links detaches them.
            Hooks::Links { .. } => return,
        };
        for (prog, id) in ids {
            if let Ok(p) = program(&mut self.ebpf, prog)
                && let Err(e) = p.detach(id)
            {
                log::debug!("detach {prog} from {name}: {}", one_line(&e));
            }
        }
        if owns_qdisc {
            remove_clsact_if_unused(name);
        }
    }

    /// Detaches everything this probe attached, and nothing else.
    pub fn detach_all(&mut self) {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        for i in all {
            self.detach(i);
        }
    }

    /// Removes map entries of ports we are not attached to (a packet racing a detach may have
    /// re-created one).
    pub fn collect_garbage(&mut self) {
        let keys: Vec<_> = match self.port_stats_mut() {
            Ok(m) => m.keys().collect(),
            Err(e) => {
                self.reader.errors.record("PORT_STATS", "open", &e);
                return;
            }
        };
        let stale: HashSet<u32> = keys
            .into_iter()
            .filter_map(|k| {
                k.inspect_err(|e| self.reader.errors.record("PORT_STATS", "walk", e))
                    .ok()
            })
            .filter(|i| !self.attached.contains_key(i))
            .collect();
        for i in stale {
            self.forget_port(i);
        }
    }

    /// Tells the read path which ports are attached now, and their counter slots.
    pub(super) fn publish(&self) {
        let netlink = self
            .attached
            .values()
            .filter(|a| matches!(a.hooks, Hooks::Netlink { .. }))
            .count();
        self.reader.ports.store(AttachedPorts {
            slot_of: self.slots.of.clone(),
            attached: self.attached.keys().copied().collect(),
            by_mode: (self.attached.len() - netlink, netlink),
        });
    }

    /// A zeroed `PORT_COUNTERS` slot published in `PORT_SLOTS`, or else a `PORT_STATS` entry.
    fn create_counters(&mut self, ifindex: u32) -> Result<()> {
        if let Some((index, slot)) = self.slots.claim(ifindex) {
            let zero = zeroed_per_cpu()?;
            let published = self
                .per_cpu_array_mut("PORT_COUNTERS")
                .and_then(|mut c| {
                    c.set(slot, zero, 0).map_err(|source| Error::Map {
                        name: "PORT_COUNTERS",
                        source,
                    })
                })
                .and_then(|()| {
                    self.slot_table_mut()?
                        .set(index, PortSlot { ifindex, slot }, 0)
                        .map_err(|source| Error::Map {
                            name: "PORT_SLOTS",
                            source,
                        })
                });
            if published.is_err() {
                self.slots.release(ifindex);
            }
            return published;
        }
        self.port_stats_mut()?
            .insert(ifindex, zeroed_per_cpu()?, 0)
            .map_err(|source| Error::Map {
                name: "PORT_STATS",
                source,
            })
    }

    /// Clears what the maps hold of `ifindex`. Nothing here is fatal, but an entry left behind
    /// is counted and logged (see [`super::map_errors`]).
    fn forget_port(&mut self, ifindex: u32) {
        let errors = &self.reader.errors;
        if let Some(index) = self.slots.release(ifindex) {
            match self.ebpf.map_mut("PORT_SLOTS").map(Array::try_from) {
                Some(Ok(mut t)) => {
                    if let Err(e) = t.set(index, PortSlot::default(), 0) {
                        errors.record("PORT_SLOTS", "clear", &e);
                    }
                }
                Some(Err(e)) => errors.record("PORT_SLOTS", "open", &e),
                None => errors.record("PORT_SLOTS", "open", &Error::MapMissing("PORT_SLOTS")),
            }
        }
        self.publish();
        let errors = &self.reader.errors;
        remove_keys::<u32, PortStats>(&mut self.ebpf, "PORT_STATS", errors, |k| *k == ifindex);
        remove_keys::<IcmpKey, u64>(&mut self.ebpf, "ICMP_STATS", errors, |k| {
            k.ifindex == ifindex
        });
        remove_keys::<MacKey, MacStats>(&mut self.ebpf, "MAC_SEEN", errors, |k| {
            k.ifindex == ifindex
        });
        remove_keys::<TcpFlagKey, u64>(&mut self.ebpf, "TCP_FLAGS", errors, |k| {
            k.ifindex == ifindex
        });
        remove_keys::<PortDirKey, HandshakeStats>(&mut self.ebpf, "HANDSHAKES", errors, |k| {
            k.ifindex == ifindex
        });
    }

    fn slot_table_mut(&mut self) -> Result<Array<&mut MapData, PortSlot>> {
        let map = self
            .ebpf
            .map_mut("PORT_SLOTS")
            .ok_or(Error::MapMissing("PORT_SLOTS"))?;
        Array::try_from(map).map_err(|source| Error::Map {
            name: "PORT_SLOTS",
            source,
        })
    }

    fn per_cpu_array_mut(
        &mut self,
        name: &'static str,
    ) -> Result<PerCpuArray<&mut MapData, PortStats>> {
        let map = self.ebpf.map_mut(name).ok_or(Error::MapMissing(name))?;
        PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })
    }

    fn port_stats_mut(&mut self) -> Result<PerCpuHashMap<&mut MapData, u32, PortStats>> {
        let map = self
            .ebpf
            .map_mut("PORT_STATS")
            .ok_or(Error::MapMissing("PORT_STATS"))?;
        PerCpuHashMap::try_from(map).map_err(|source| Error::Map {
            name: "PORT_STATS",
            source,
        })
    }
}

/// Removes the entries of the per-CPU hash map `name` whose key `matches`. A key already gone
/// (the LRU evicted it meanwhile, or it never existed) is what we wanted: not an error.
fn remove_keys<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    errors: &super::map_errors::MapErrors,
    matches: impl Fn(&K) -> bool,
) {
    let mut m = match ebpf.map_mut(name).map(PerCpuHashMap::<_, K, V>::try_from) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return errors.record(name, "open", &e),
        None => return errors.record(name, "open", &Error::MapMissing(name)),
    };
    let keys: Vec<K> = m
        .keys()
        .filter_map(|k| k.inspect_err(|e| errors.record(name, "walk", e)).ok())
        .filter(|k| matches(k))
        .collect();
    for k in &keys {
        match m.remove(k) {
            Ok(()) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => errors.record(name, "remove", &e),
        }
    }
}

fn zeroed_per_cpu() -> Result<aya::maps::PerCpuValues<PortStats>> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
    aya::maps::PerCpuValues::try_from(vec![PortStats::default(); n])
        .map_err(|e| Error::io("per-CPU values", e))
}

/// Removes filters of ours a killed agent left on `iface` (netlink mode), never those of a
/// running agent. Returns whether any were found: then the clsact qdisc was most likely ours too.
fn remove_stale_filters(iface: &str) -> bool {
    match qdisc::remove_orphan_filters(
        iface,
        &[PROG_INGRESS, PROG_EGRESS, PROG_INGRESS_NL, PROG_EGRESS_NL],
    ) {
        Ok(0) => false,
        Ok(n) => {
            log::info!("removed {n} stale filters left on {iface} by an earlier run");
            true
        }
        Err(e) => {
            log::debug!("looking for stale filters on {iface}: {}", one_line(&e));
            false
        }
    }
}

/// Deletes the clsact qdisc of `iface` when no filter at all remains on it: another tool's
/// filters keep it alive.
fn remove_clsact_if_unused(iface: &str) {
    match qdisc::filters_on(iface) {
        Ok(0) => {
            if let Err(e) = qdisc::delete_clsact(iface) {
                log::debug!("removing clsact from {iface}: {}", one_line(&e));
            }
        }
        Ok(n) => log::debug!("leaving clsact on {iface}: {n} other filters use it"),
        Err(e) => log::debug!("listing filters on {iface}: {}", one_line(&e)),
    }
}
