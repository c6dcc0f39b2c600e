//! The loader: loads the tc programs, attaches them to veths (first in the tcx chain, or as
//! clsact filters over netlink where tcx is missing or not wanted), and reads their maps.
//!
//! Ownership: in tcx mode every attachment is a bpf_link held by this process, so the kernel
//! detaches it when we exit, even on SIGKILL. In netlink mode filters outlive us; they carry our
//! program names, which is how the next start finds and removes its own stale filters (and only
//! those).
//!
//! Speed: a tcx attach waits for an RCU grace period while holding rtnl (about 14 ms each, two
//! per veth, and threads cannot overlap them); a clsact filter does not (about 1 ms). But adding
//! or removing a clsact qdisc on an up device deactivates it for a moment (`qdisc_graft` calls
//! `dev_deactivate`), and packets sent to it then are dropped: measured, 8 drops in 80 qdisc
//! changes at 2,000 pps. So the default is tcx, which never drops a packet, and `fast-start` is an
//! opt-in for huge nodes: netlink at once, then tcx in the background
//! ([`Probe::next_upgrade`]), the two program sets handing over without losing or
//! double-counting a packet (`observe` in the programs).

mod batch;
mod qdisc;
pub mod rcu;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use node_tracer_common::{
    DIR_EGRESS, DIR_INGRESS, IcmpKey, MacKey, MacStats, PROG_EGRESS, PROG_EGRESS_NL, PROG_INGRESS,
    PROG_INGRESS_NL, PortSlot, PortStats, STAT_COUNT,
};

use crate::{
    error::{Error, Result},
    model::{Direction, IcmpCount, MacSeen, PortCounters, format_mac},
};

/// How programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tcx where the kernel has it (>= 6.6), else netlink.
    Auto,
    /// tcx links (kernel >= 6.6): first in the chain, gone when the agent exits; about 30 ms a
    /// veth (two RCU grace periods under rtnl), so veths that carry traffic are attached first.
    Tcx,
    /// A clsact qdisc and cls_bpf filters over netlink (older kernels). Adding and removing the
    /// qdisc can drop packets in flight on a busy veth (the kernel deactivates it meanwhile).
    Netlink,
    /// Netlink at once (about 1 ms a veth), then tcx in the background without losing or
    /// double-counting a packet; for nodes with thousands of veths. The clsact qdisc added and
    /// removed on each veth can drop packets in flight, as in netlink mode.
    FastStart,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Tcx => "tcx",
            AttachMode::Netlink => "netlink",
            AttachMode::FastStart => "fast-start",
        }
    }
}

/// Sizes and behaviour fixed at load time.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub mode: AttachMode,
    /// Ports we attach to at most: the per-port counter array's size (kernel memory: about
    /// 340 bytes per port and CPU).
    pub max_ports: u32,
    /// Distinct (port, direction, source MAC) the LRU map keeps.
    pub max_macs: u32,
    /// Fast-start mode: how long a port stays on netlink before it moves to tcx.
    pub tcx_after: std::time::Duration,
    /// Level below which the programs' own log statements are compiled out at load time.
    pub log_level: log::LevelFilter,
    /// Expedite RCU grace periods during the initial attach pass and the final detach (tcx
    /// only): see [`rcu`].
    pub expedite_rcu: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            mode: AttachMode::Auto,
            max_ports: 1024,
            max_macs: 16384,
            tcx_after: std::time::Duration::from_secs(1),
            log_level: log::LevelFilter::Warn,
            expedite_rcu: false,
        }
    }
}

/// The object file built by build.rs from `node-tracer-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/node-tracer-ebpf"));

struct Attachment {
    name: String,
    hooks: Hooks,
    since: std::time::Instant,
}

/// How one port's two programs are attached.
enum Hooks {
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

/// Loaded programs and their attachments.
pub struct Probe {
    ebpf: Ebpf,
    mode: AttachMode,
    attached: HashMap<u32, Attachment>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    max_ports: u32,
    /// Fast-start mode: the tcx programs, for upgrades made without holding the probe.
    tcx_programs: Option<Arc<(OwnedFd, OwnedFd)>>,
    /// Ports whose move to tcx failed: they stay on netlink.
    no_upgrade: HashSet<u32>,
    tcx_after: std::time::Duration,
    slots: Slots,
    /// `ICMP_STATS` entries the last [`Probe::read`] saw, for the [`Probe::map_entries`] of the
    /// same scrape (taken by it), so one scrape reads that map once.
    icmp_entries_read: std::cell::Cell<Option<usize>>,
}

/// Which `PORT_COUNTERS` slot each port uses, and which `PORT_SLOTS` index it holds.
struct Slots {
    /// `PORT_SLOTS` size - 1.
    mask: u32,
    /// ifindex -> slot.
    of: HashMap<u32, u32>,
    /// `PORT_SLOTS` indexes in use.
    taken: HashSet<u32>,
    /// Oldest freed first: a slot is reused as late as possible, so a packet that raced its
    /// port's detach lands on a slot nobody reads.
    free: VecDeque<u32>,
}

impl Slots {
    fn new(max_ports: u32) -> Self {
        Self {
            mask: slot_table_len(max_ports) - 1,
            of: HashMap::new(),
            taken: HashSet::new(),
            free: (0..max_ports).collect(),
        }
    }

    /// A slot for `ifindex`, unless its table index is another port's.
    fn claim(&mut self, ifindex: u32) -> Option<(u32, u32)> {
        let index = ifindex & self.mask;
        if self.taken.contains(&index) {
            return None;
        }
        let slot = self.free.pop_front()?;
        self.of.insert(ifindex, slot);
        self.taken.insert(index);
        Some((index, slot))
    }

    /// Frees the slot of `ifindex`: its table index, if it had one.
    fn release(&mut self, ifindex: u32) -> Option<u32> {
        let slot = self.of.remove(&ifindex)?;
        self.free.push_back(slot);
        self.taken.remove(&(ifindex & self.mask));
        Some(ifindex & self.mask)
    }
}

/// `PORT_SLOTS` length for `max_ports`: a power of two, twice as many as ports, so that two
/// live ports rarely share an index (ifindexes mostly grow one by one).
fn slot_table_len(max_ports: u32) -> u32 {
    max_ports.max(1).next_power_of_two().saturating_mul(2)
}

/// A port to move from netlink to tcx: [`Upgrade::attach`] (slow, no lock needed), then
/// [`Probe::finish_upgrade`].
pub struct Upgrade {
    pub ifindex: u32,
    pub name: String,
    programs: Arc<(OwnedFd, OwnedFd)>,
}

/// The tcx links an upgrade made: (ingress, egress).
pub type TcxLinks = (OwnedFd, OwnedFd);

/// Raw totals of one port read from the maps.
#[derive(Debug, Default, Clone)]
pub struct PortReading {
    pub counters: PortCounters,
    pub macs: Vec<MacSeen>,
}

impl Probe {
    /// Loads (and verifies) the programs; attaches nothing yet.
    pub fn load(opts: &ProbeOptions) -> Result<Self> {
        let mode = match opts.mode {
            AttachMode::Auto if kernel_has_tcx() => AttachMode::Tcx,
            AttachMode::Auto | AttachMode::FastStart if !kernel_has_tcx() => AttachMode::Netlink,
            m => m,
        };
        check_privileges(mode)?;
        let level = log_level_byte(opts.log_level);
        let slots = Slots::new(opts.max_ports);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("PORT_SLOTS", slots.mask + 1)
            .map_max_entries("PORT_COUNTERS", opts.max_ports)
            .override_global("SLOT_MASK", &slots.mask, true)
            .map_max_entries("PORT_STATS", opts.max_ports)
            .map_max_entries("ICMP_STATS", opts.max_ports.saturating_mul(16))
            .map_max_entries("MAC_SEEN", opts.max_macs)
            .override_global("AYA_LOG_LEVEL", &level, false)
            .load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("eBPF logs unavailable: {e}");
                None
            }
        };
        for name in [PROG_INGRESS, PROG_EGRESS, PROG_INGRESS_NL, PROG_EGRESS_NL] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
        }
        let tcx_programs = if mode == AttachMode::FastStart {
            Some(Arc::new((
                program_fd(&ebpf, PROG_INGRESS)?,
                program_fd(&ebpf, PROG_EGRESS)?,
            )))
        } else {
            None
        };
        Ok(Self {
            ebpf,
            mode,
            attached: HashMap::new(),
            logger,
            max_ports: opts.max_ports,
            tcx_programs,
            no_upgrade: HashSet::new(),
            tcx_after: opts.tcx_after,
            slots,
            icmp_entries_read: std::cell::Cell::new(None),
        })
    }

    /// The mode in use (never `Auto`).
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Attached ports by how they are attached: (tcx, netlink).
    pub fn attached_by_mode(&self) -> (usize, usize) {
        let netlink = self
            .attached
            .values()
            .filter(|a| matches!(a.hooks, Hooks::Netlink { .. }))
            .count();
        (self.attached.len() - netlink, netlink)
    }

    /// Takes the aya-log reader, for the caller to poll (readable when the programs logged).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// Attached ports: ifindex and name.
    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.attached.iter().map(|(i, a)| (*i, a.name.as_str()))
    }

    /// Attaches both programs to `name`, ahead of every other program on it. Idempotent.
    pub fn attach(&mut self, ifindex: u32, name: &str) -> Result<()> {
        if let Some(a) = self.attached.get(&ifindex) {
            if a.name == name {
                return Ok(());
            }
            // Renamed: the attachment follows the ifindex, only the label changes.
            let a = self.attached.get_mut(&ifindex).expect("checked above");
            a.name = name.to_string();
            return Ok(());
        }
        if self.attached.len() >= self.max_ports as usize {
            return Err(Error::Netlink(format!(
                "not attaching {name}: --max-ports {} reached",
                self.max_ports
            )));
        }
        // Create the counters first so the first packet is counted without an insert on the hot
        // path.
        self.create_counters(ifindex)?;
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
                    self.forget_port(ifindex);
                    return Err(Error::Attach {
                        interface: name.to_string(),
                        direction: "clsact",
                        source: e.into(),
                    });
                }
            }
        }
        let ingress = match self.attach_one(name, prog_in, TcAttachType::Ingress, netlink) {
            Ok(id) => id,
            Err(e) => {
                self.forget_port(ifindex);
                return Err(e);
            }
        };
        let egress = match self.attach_one(name, prog_eg, TcAttachType::Egress, netlink) {
            Ok(id) => id,
            Err(e) => {
                if let Ok(p) = program(&mut self.ebpf, prog_in) {
                    let _ = p.detach(ingress);
                }
                self.forget_port(ifindex);
                return Err(e);
            }
        };
        let hooks = if netlink {
            Hooks::Netlink {
                ingress,
                egress,
                owns_qdisc,
            }
        } else {
            Hooks::Tcx { ingress, egress }
        };
        self.attached.insert(
            ifindex,
            Attachment {
                name: name.to_string(),
                hooks,
                since: std::time::Instant::now(),
            },
        );
        Ok(())
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

    fn detach_hooks(&mut self, name: &str, hooks: Hooks) {
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
                log::debug!("detach {prog} from {name}: {e}");
            }
        }
        if owns_qdisc {
            remove_clsact_if_unused(name);
        }
    }

    /// Fast-start mode: the next port due to move from netlink to tcx, if any.
    pub fn next_upgrade(&self) -> Option<Upgrade> {
        let programs = self.tcx_programs.as_ref()?;
        let (ifindex, a) = self.attached.iter().find(|(i, a)| {
            matches!(a.hooks, Hooks::Netlink { .. })
                && a.since.elapsed() >= self.tcx_after
                && !self.no_upgrade.contains(i)
        })?;
        Some(Upgrade {
            ifindex: *ifindex,
            name: a.name.clone(),
            programs: programs.clone(),
        })
    }

    /// Completes an upgrade: with the tcx programs in place, removes the netlink ones. Until
    /// then both ran and the netlink ones stepped aside (`tcx_seen`), so no packet was counted
    /// twice or missed. On failure the port stays on netlink for good.
    pub fn finish_upgrade(&mut self, up: &Upgrade, links: Result<TcxLinks>) {
        let links = match links {
            Ok(l) => l,
            Err(e) => {
                log::warn!("{e}; {} stays attached with netlink", up.name);
                self.no_upgrade.insert(up.ifindex);
                return;
            }
        };
        // Detached (veth gone) while we attached: dropping the links undoes the attach.
        let Some(a) = self.attached.get_mut(&up.ifindex) else {
            return;
        };
        if !matches!(a.hooks, Hooks::Netlink { .. }) {
            return;
        }
        let old = std::mem::replace(
            &mut a.hooks,
            Hooks::Links {
                _ingress: links.0,
                _egress: links.1,
            },
        );
        let name = a.name.clone();
        self.detach_hooks(&name, old);
    }

    /// Detaches everything this probe attached, and nothing else.
    pub fn detach_all(&mut self) {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        for i in all {
            self.detach(i);
        }
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

    fn forget_port(&mut self, ifindex: u32) {
        if let Some(index) = self.slots.release(ifindex)
            && let Ok(mut t) = self.slot_table_mut()
        {
            let _ = t.set(index, PortSlot::default(), 0);
        }
        if let Ok(mut m) = self.port_stats_mut() {
            let _ = m.remove(&ifindex);
        }
        if let Some(map) = self.ebpf.map_mut("ICMP_STATS")
            && let Ok(mut m) = PerCpuHashMap::<_, IcmpKey, u64>::try_from(map)
        {
            let keys: Vec<IcmpKey> = m.keys().filter_map(Result::ok).collect();
            for k in keys.iter().filter(|k| k.ifindex == ifindex) {
                let _ = m.remove(k);
            }
        }
        if let Some(map) = self.ebpf.map_mut("MAC_SEEN")
            && let Ok(mut m) = PerCpuHashMap::<_, MacKey, MacStats>::try_from(map)
        {
            let keys: Vec<MacKey> = m.keys().filter_map(Result::ok).collect();
            for k in keys.iter().filter(|k| k.ifindex == ifindex) {
                let _ = m.remove(k);
            }
        }
    }

    /// Removes map entries of ports we are not attached to (a packet racing a detach may have
    /// re-created one).
    pub fn collect_garbage(&mut self) {
        let stale: HashSet<u32> = match self.port_stats() {
            Ok(m) => m
                .keys()
                .filter_map(Result::ok)
                .filter(|i| !self.attached.contains_key(i))
                .collect(),
            Err(_) => return,
        };
        for i in stale {
            self.forget_port(i);
        }
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

    fn port_stats(&self) -> Result<PerCpuHashMap<&MapData, u32, PortStats>> {
        let map = self
            .ebpf
            .map("PORT_STATS")
            .ok_or(Error::MapMissing("PORT_STATS"))?;
        PerCpuHashMap::try_from(map).map_err(|source| Error::Map {
            name: "PORT_STATS",
            source,
        })
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

    /// Sums every map over CPUs: counters, ICMP types and MACs per attached port.
    pub fn read(&self) -> Result<HashMap<u32, PortReading>> {
        let mut out: HashMap<u32, PortReading> = HashMap::new();
        // Per (ifindex, MAC, direction): totals over CPUs of MAC_SEEN plus the pending counts the
        // programs keep for the last MAC of each port (see `MacCache`).
        let mut macs: HashMap<(u32, [u8; 6], u8), MacTotal> = HashMap::new();
        let mut ports: Vec<(u32, aya::maps::PerCpuValues<PortStats>)> = Vec::new();
        let map = self
            .ebpf
            .map("PORT_COUNTERS")
            .ok_or(Error::MapMissing("PORT_COUNTERS"))?;
        let counters = PerCpuArray::<_, PortStats>::try_from(map).map_err(|source| Error::Map {
            name: "PORT_COUNTERS",
            source,
        })?;
        // The slots in use lie below the highest one: one batch call reads them all.
        let used = self.slots.of.values().max().map_or(0, |m| m + 1);
        match batch_of::<u32, PortStats>(counters.map(), used) {
            Ok(all) => {
                let mut by_slot: HashMap<u32, Vec<PortStats>> = all.into_iter().collect();
                for (&ifindex, slot) in &self.slots.of {
                    if let Some(per_cpu) = by_slot.remove(slot) {
                        ports.push((ifindex, per_cpu_values(per_cpu)?));
                    }
                }
            }
            Err(e) => {
                log::debug!("PORT_COUNTERS: no batch lookup ({e}); one slot at a time");
                for (&ifindex, &slot) in &self.slots.of {
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
                for p in 0..8 {
                    // Host ingress is what the pod transmits; host egress what it receives.
                    c.tx_packets[p] += s.packets[usize::from(DIR_INGRESS)][p];
                    c.tx_bytes[p] += s.bytes[usize::from(DIR_INGRESS)][p];
                    c.rx_packets[p] += s.packets[usize::from(DIR_EGRESS)][p];
                    c.rx_bytes[p] += s.bytes[usize::from(DIR_EGRESS)][p];
                }
                for (dir, m) in [DIR_INGRESS, DIR_EGRESS].into_iter().zip(&s.macs) {
                    if m.valid != 0 && m.packets != 0 {
                        macs.entry((ifindex, m.mac, dir))
                            .or_default()
                            .add(m.packets, m.bytes, m.first_ns, m.last_ns);
                    }
                }
            }
        }
        let map = self
            .ebpf
            .map("ICMP_STATS")
            .ok_or(Error::MapMissing("ICMP_STATS"))?;
        let icmp =
            PerCpuHashMap::<_, IcmpKey, u64>::try_from(map).map_err(|source| Error::Map {
                name: "ICMP_STATS",
                source,
            })?;
        let icmp = hash_entries(&icmp);
        self.icmp_entries_read.set(Some(icmp.len()));
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
        let clock = Clock::now();
        let map = self
            .ebpf
            .map("MAC_SEEN")
            .ok_or(Error::MapMissing("MAC_SEEN"))?;
        let seen =
            PerCpuHashMap::<_, MacKey, MacStats>::try_from(map).map_err(|source| Error::Map {
                name: "MAC_SEEN",
                source,
            })?;
        for (k, per_cpu) in hash_entries(&seen) {
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
        Ok(out)
    }

    /// What the programs could not do, summed over CPUs (index: `STAT_*`).
    pub fn program_stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        let map = self
            .ebpf
            .map("AGENT_STATS")
            .ok_or(Error::MapMissing("AGENT_STATS"))?;
        let arr = PerCpuArray::<_, u64>::try_from(map).map_err(|source| Error::Map {
            name: "AGENT_STATS",
            source,
        })?;
        let mut out = [0u64; STAT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(v) = arr.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        Ok(out)
    }

    /// Run time and count of each program (non-zero only while `kernel.bpf_stats_enabled=1`).
    pub fn program_run_stats(&self) -> Vec<(&'static str, u32, std::time::Duration, u64)> {
        let mut out = Vec::new();
        for name in [PROG_INGRESS, PROG_EGRESS, PROG_INGRESS_NL, PROG_EGRESS_NL] {
            if let Some(aya::programs::Program::SchedClassifier(p)) = self.ebpf.program(name)
                && let Ok(info) = p.info()
            {
                out.push((name, info.id(), info.run_time(), info.run_count()));
            }
        }
        out
    }

    /// Turns per-packet ICMP events on or off.
    pub fn set_tracing(&mut self, on: bool) -> Result<()> {
        let map = self
            .ebpf
            .map_mut("TRACE_ON")
            .ok_or(Error::MapMissing("TRACE_ON"))?;
        let mut arr = Array::<_, u32>::try_from(map).map_err(|source| Error::Map {
            name: "TRACE_ON",
            source,
        })?;
        arr.set(0, u32::from(on), 0).map_err(|source| Error::Map {
            name: "TRACE_ON",
            source,
        })
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(Error::MapMissing("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| Error::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Runs program `prog` (`nt_ingress` or `nt_egress`) on `frame` through `BPF_PROG_TEST_RUN`,
    /// `repeat` times, without any interface: returns the program's return value and the mean run
    /// time in nanoseconds. The kernel gives the skb its loopback device, so counts land on the
    /// `PORT_STATS` entry of ifindex 1 of the caller's namespace. For fuzzing and benchmarks.
    pub fn test_run(&self, prog: &str, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
        /// The `test` member of `union bpf_attr` (linux/bpf.h), up to `batch_size`.
        #[repr(C)]
        #[derive(Default)]
        struct TestRunAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            pad: u32,
        }
        const BPF_PROG_TEST_RUN: libc::c_long = 10;

        let Some(name) = [PROG_INGRESS, PROG_EGRESS, PROG_INGRESS_NL, PROG_EGRESS_NL]
            .into_iter()
            .find(|n| *n == prog)
        else {
            return Err(Error::MapMissing("test_run: no such program"));
        };
        let p: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(Error::MapMissing(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        let fd = p
            .fd()
            .map_err(|source| Error::Program { name, source })?
            .as_fd()
            .as_raw_fd();
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(fd).map_err(|_| Error::MapMissing(name))?,
            data_size_in: u32::try_from(frame.len())
                .map_err(|_| Error::io("test_run", std::io::ErrorKind::InvalidInput.into()))?,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..TestRunAttr::default()
        };
        // SAFETY: `attr` is a fully initialised `TestRunAttr`; `data_in` points at `frame`, which
        // outlives the call and which the kernel only reads; no output buffers are given.
        unsafe { sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }
            .map_err(|e| Error::io(format!("BPF_PROG_TEST_RUN {name}"), e))?;
        Ok((attr.retval, attr.duration))
    }

    /// Ports with a `PORT_COUNTERS` slot, and entries in `PORT_STATS` and `ICMP_STATS` (`PORT_STATS`
    /// is rarely more than empty; `ICMP_STATS` as the [`Probe::read`] just before saw it, else
    /// counted in one batch read).
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        let mut out = vec![
            ("PORT_COUNTERS", self.slots.of.len()),
            (
                "PORT_STATS",
                self.port_stats().map_or(0, |m| m.keys().count()),
            ),
        ];
        if let Some(n) = self.icmp_entries_read.take() {
            out.push(("ICMP_STATS", n));
        } else if let Some(map) = self.ebpf.map("ICMP_STATS")
            && let Ok(m) = PerCpuHashMap::<_, IcmpKey, u64>::try_from(map)
        {
            out.push(("ICMP_STATS", hash_entries(&m).len()));
        }
        out
    }

    /// Entries in `MAC_SEEN` and `ICMP_STATS` belonging to `ifindex` (0 after a detach).
    pub fn entries_for(&self, ifindex: u32) -> usize {
        let mut n = 0;
        if let Some(map) = self.ebpf.map("MAC_SEEN")
            && let Ok(m) = PerCpuHashMap::<_, MacKey, MacStats>::try_from(map)
        {
            n += m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.ifindex == ifindex)
                .count();
        }
        if let Some(map) = self.ebpf.map("ICMP_STATS")
            && let Ok(m) = PerCpuHashMap::<_, IcmpKey, u64>::try_from(map)
        {
            n += m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.ifindex == ifindex)
                .count();
        }
        n
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // aya would drop the links too; doing it here also removes clsact qdiscs we added.
        self.detach_all();
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(Error::MapMissing(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

/// A descriptor of the loaded program `name` of our own.
fn program_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd> {
    let p: &SchedClassifier = ebpf
        .program(name)
        .ok_or(Error::MapMissing(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })?;
    p.fd()
        .map_err(|source| Error::Program { name, source })?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io(format!("dup the fd of {name}"), e))
}

impl Upgrade {
    /// Attaches the tcx programs first in the chain of both hooks: the slow part (two RCU grace
    /// periods), done without the probe. The netlink programs stay until `finish_upgrade`.
    pub fn attach(&self) -> Result<TcxLinks> {
        let ingress = tcx_link(&self.programs.0, self.ifindex, BPF_TCX_INGRESS)
            .map_err(|e| self.error("ingress", e))?;
        let egress = tcx_link(&self.programs.1, self.ifindex, BPF_TCX_EGRESS)
            .map_err(|e| self.error("egress", e))?;
        Ok((ingress, egress))
    }

    fn error(&self, direction: &'static str, e: std::io::Error) -> Error {
        Error::io(
            format!("moving {} {direction} from netlink to tcx", self.name),
            e,
        )
    }
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_BEFORE: u32 = 1 << 3;

/// `BPF_LINK_CREATE` of a tcx link putting `prog` first on `ifindex` (what aya's
/// `LinkOrder::first()` does, but callable without `&mut` on the program).
fn tcx_link(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> std::io::Result<OwnedFd> {
    /// The `link_create` member of `union bpf_attr` (linux/bpf.h), up to its `tcx` part.
    #[repr(C)]
    struct LinkCreateAttr {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        relative_fd: u32,
        pad: u32,
        expected_revision: u64,
    }
    let mut attr = LinkCreateAttr {
        prog_fd: u32::try_from(prog.as_raw_fd()).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        target_ifindex: ifindex,
        attach_type,
        // Before everything, with no relative program: first in the chain.
        flags: BPF_F_BEFORE,
        relative_fd: 0,
        pad: 0,
        expected_revision: 0,
    };
    // SAFETY: `attr` is a fully initialised `LinkCreateAttr` and holds no pointers.
    let fd = unsafe { sys_bpf(BPF_LINK_CREATE, &mut attr) }?;
    let fd = i32::try_from(fd).map_err(|_| std::io::ErrorKind::InvalidData)?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// bpf(2): `cmd` with `attr`, its part of `union bpf_attr` (the kernel takes a prefix of the
/// union, sized by the last argument). Returns what the call returns (an fd for commands that
/// make one).
///
/// # Safety
/// `T` must be the `#[repr(C)]` layout `cmd` expects, fully initialised, and every pointer in it
/// valid for what the kernel reads or writes through it during the call.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller's contract; `attr` outlives the call and its size is passed along.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// Up to `limit` entries of a per-CPU map in a few calls (see [`batch`]).
fn batch_of<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::MapData,
    limit: u32,
) -> std::io::Result<Vec<(K, Vec<V>)>> {
    let max_entries = map
        .info()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .max_entries();
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    batch::per_cpu_entries(map.fd().as_fd(), max_entries, cpus, limit)
}

/// Every entry of a per-CPU hash map: in a few batch calls, or walked one entry at a time where
/// the kernel cannot batch.
fn hash_entries<K: aya::Pod, V: aya::Pod>(map: &PerCpuHashMap<&MapData, K, V>) -> Vec<(K, Vec<V>)> {
    batch_of(map.map(), u32::MAX).unwrap_or_else(|_| {
        map.iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.iter().copied().collect()))
            .collect()
    })
}

fn per_cpu_values(v: Vec<PortStats>) -> Result<aya::maps::PerCpuValues<PortStats>> {
    aya::maps::PerCpuValues::try_from(v).map_err(|e| Error::io("per-CPU values", e))
}

fn zeroed_per_cpu() -> Result<aya::maps::PerCpuValues<PortStats>> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
    aya::maps::PerCpuValues::try_from(vec![PortStats::default(); n])
        .map_err(|e| Error::io("per-CPU values", e))
}

/// tcx arrived in Linux 6.6.
fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

fn pod_direction(host_dir: u8) -> Direction {
    if host_dir == DIR_INGRESS {
        Direction::Transmit
    } else {
        Direction::Receive
    }
}

/// aya-log's level byte: statements above it are skipped in the kernel.
fn log_level_byte(level: log::LevelFilter) -> u8 {
    match level {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => 1,
        log::LevelFilter::Warn => 2,
        log::LevelFilter::Info => 3,
        log::LevelFilter::Debug => 4,
        log::LevelFilter::Trace => 5,
    }
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
            log::debug!("looking for stale filters on {iface}: {e}");
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
                log::debug!("removing clsact from {iface}: {e}");
            }
        }
        Ok(n) => log::debug!("leaving clsact on {iface}: {n} other filters use it"),
        Err(e) => log::debug!("listing filters on {iface}: {e}"),
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

/// Maps the programs' `CLOCK_MONOTONIC` timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mono_ns: u64,
    unix_ns: u64,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
            unix_ns: unix.as_nanos() as u64,
        }
    }

    /// 0 stays 0 (never seen).
    pub fn mono_to_unix_ms(&self, mono_ns: u64) -> u64 {
        if mono_ns == 0 {
            return 0;
        }
        (self
            .unix_ns
            .saturating_sub(self.mono_ns.saturating_sub(mono_ns)))
            / 1_000_000
    }
}

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// Fails early, naming the missing capability, instead of a cryptic EPERM from bpf(2) or a
/// silently unresolved peer. The rules are the kernel's (6.x), verified one capability at a time
/// under `capsh` (tests/tests/deploy.rs, deploy/README.md "Least privilege"):
/// - `setns` into a pod's network namespace (peer name, MAC, addresses) needs CAP_SYS_ADMIN, and
///   nothing else would do. CAP_SYS_ADMIN also satisfies every bpf(2) check we hit:
///   `bpf_capable()` (CAP_BPF), `perfmon_capable()` (CAP_PERFMON: the verifier rejects our map
///   pointer arithmetic without it) and `bpf_net_capable()` (CAP_NET_ADMIN: tc program load and
///   tcx attach). So CAP_BPF and CAP_PERFMON are never needed on top.
/// - netlink attach mode adds a clsact qdisc over rtnetlink, which checks CAP_NET_ADMIN itself.
/// - CAP_SYS_PTRACE only widens the /proc pod source (see [`capability_warnings`]).
fn check_privileges(mode: AttachMode) -> Result<()> {
    let eff = effective_capabilities()?;
    let missing = missing_capabilities(eff, mode);
    if missing.is_empty() {
        for w in capability_warnings(eff) {
            log::warn!("{w}");
        }
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
    let why: Vec<&str> = missing.iter().map(|(_, w)| *w).collect();
    Err(Error::Privilege(format!(
        "missing capability {} ({}); grant it or run as root (deploy/README.md, \"Least privilege\")",
        names.join(", "),
        why.join("; ")
    )))
}

fn effective_capabilities() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("read /proc/self/status", e))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0))
}

/// Capabilities `mode` cannot run without, given the effective set `eff`: (name, what for).
fn missing_capabilities(eff: u64, mode: AttachMode) -> Vec<(&'static str, &'static str)> {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        missing.push((
            "CAP_SYS_ADMIN",
            "setns into pod network namespaces, and bpf(2) without CAP_BPF and CAP_PERFMON",
        ));
    }
    if mode != AttachMode::Tcx && !has(CAP_NET_ADMIN) {
        missing.push((
            "CAP_NET_ADMIN",
            "netlink attach mode adds a clsact qdisc; tcx (kernel >= 6.6) does not need it",
        ));
    }
    missing
}

/// What works less well without an optional capability.
fn capability_warnings(eff: u64) -> Vec<&'static str> {
    let mut out = Vec::new();
    if eff & (1u64 << CAP_SYS_PTRACE) == 0 {
        // The kernel lets us open /proc/PID/ns/net only of processes of our uid whose
        // capabilities are a subset of ours; CRI and /run/netns need no such access.
        out.push(
            "no CAP_SYS_PTRACE: namespaces held only by processes of another user or with more \
             capabilities (docker without CRI, unshare) are not resolved from /proc",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_go_to_ports_with_a_free_index_and_come_back_oldest_first() {
        let mut s = Slots::new(2);
        assert_eq!(s.mask, 3, "twice the ports, a power of two");
        assert_eq!(s.claim(5), Some((1, 0)));
        // 9 & 3 == 1 is taken by ifindex 5: the hash it is.
        assert_eq!(s.claim(9), None);
        assert_eq!(s.claim(6), Some((2, 1)));
        // No slot left.
        assert_eq!(s.claim(7), None);
        assert_eq!(s.release(5), Some(1));
        assert_eq!(s.release(5), None);
        assert_eq!(s.claim(9), Some((1, 0)));
        assert_eq!(slot_table_len(1024), 2048);
        assert_eq!(slot_table_len(1000), 2048);
        assert_eq!(slot_table_len(0), 2);
    }

    #[test]
    fn monotonic_times_map_to_wall_clock() {
        let c = Clock {
            mono_ns: 10_000_000_000,
            unix_ns: 1_700_000_000_000_000_000,
        };
        assert_eq!(c.mono_to_unix_ms(0), 0);
        assert_eq!(c.mono_to_unix_ms(9_000_000_000), 1_699_999_999_000);
        assert_eq!(c.mono_to_unix_ms(10_000_000_000), 1_700_000_000_000);
    }

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

    #[test]
    fn capabilities_follow_the_kernel_rules() {
        let bit = |b: u32| 1u64 << b;
        // CAP_BPF (39), CAP_PERFMON (38) and CAP_NET_ADMIN without CAP_SYS_ADMIN: no setns.
        let no_sys_admin = bit(39) | bit(38) | bit(CAP_NET_ADMIN);
        assert_eq!(
            missing_capabilities(no_sys_admin, AttachMode::Tcx)
                .iter()
                .map(|m| m.0)
                .collect::<Vec<_>>(),
            ["CAP_SYS_ADMIN"]
        );
        assert!(missing_capabilities(bit(CAP_SYS_ADMIN), AttachMode::Tcx).is_empty());
        assert_eq!(
            missing_capabilities(bit(CAP_SYS_ADMIN), AttachMode::Netlink)[0].0,
            "CAP_NET_ADMIN"
        );
        assert_eq!(missing_capabilities(0, AttachMode::Netlink).len(), 2);
        assert!(
            missing_capabilities(bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN), AttachMode::Netlink)
                .is_empty()
        );
        assert_eq!(capability_warnings(0).len(), 1);
        assert!(capability_warnings(bit(CAP_SYS_PTRACE)).is_empty());
    }

    #[test]
    fn log_levels_map_to_aya_log_bytes() {
        assert_eq!(log_level_byte(log::LevelFilter::Off), 0);
        assert_eq!(log_level_byte(log::LevelFilter::Trace), 5);
    }
}
