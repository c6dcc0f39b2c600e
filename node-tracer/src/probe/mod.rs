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

mod attach;
mod batch;
mod bpf;
pub mod drops;
pub mod kernel_btf;
mod map_errors;
mod privileges;
mod qdisc;
pub mod rcu;
mod read;
mod slots;
mod tcp;
mod upgrade;

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::SchedClassifier,
    util::KernelVersion,
};
use node_tracer_common::{PROG_EGRESS, PROG_EGRESS_NL, PROG_INGRESS, PROG_INGRESS_NL, STAT_COUNT};

use crate::error::{Error, Result};
use attach::{Attachment, Hooks};
pub use read::{AttachedPorts, MapReader, PortReading, Readings};
use slots::Slots;
pub use upgrade::{TcxLinks, Upgrade};

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
    /// Count dropped packets by reason and TCP retransmits (tracepoints `kfree_skb` and
    /// `tcp_retransmit_skb`); the agent's, not a standalone trace's.
    pub track_drops: bool,
    /// Also attach to uplinks: bridge ports that are neither veths nor taps (`eth0` in `br0`).
    pub attach_uplinks: bool,
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
            track_drops: false,
            attach_uplinks: false,
        }
    }
}

/// The object file built by build.rs from `node-tracer-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/node-tracer-ebpf"));

/// Loaded programs and their attachments. Reading the maps goes through its [`MapReader`],
/// which the caller can hold apart (see [`Probe::reader`]).
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
    reader: Arc<MapReader>,
}

impl Probe {
    /// Loads (and verifies) the programs; attaches nothing yet.
    pub fn load(opts: &ProbeOptions) -> Result<Self> {
        let mode = match opts.mode {
            AttachMode::Auto if kernel_has_tcx() => AttachMode::Tcx,
            AttachMode::Auto | AttachMode::FastStart if !kernel_has_tcx() => AttachMode::Netlink,
            m => m,
        };
        privileges::check_privileges(mode)?;
        let level = log_level_byte(opts.log_level);
        let slots = Slots::new(opts.max_ports);
        let prepared = if opts.track_drops {
            drops::Prepared::from_kernel()
        } else {
            drops::Prepared::off()
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("PORT_SLOTS", slots.mask + 1)
            .map_max_entries("PORT_COUNTERS", opts.max_ports)
            .override_global("SLOT_MASK", &slots.mask, true)
            .map_max_entries("PORT_STATS", opts.max_ports)
            .map_max_entries("ICMP_STATS", opts.max_ports.saturating_mul(16))
            .map_max_entries("MAC_SEEN", opts.max_macs)
            // Two directions of four flags, and of handshakes, per port: never full.
            .map_max_entries("TCP_FLAGS", opts.max_ports.saturating_mul(8))
            .map_max_entries("HANDSHAKES", opts.max_ports.saturating_mul(2))
            .override_global("AYA_LOG_LEVEL", &level, false)
            .override_global("DROP_CFG", &prepared.config, true)
            // A series per (device or namespace, reason) seen, and one per namespace.
            .map_max_entries("DROP_STATS", opts.max_ports.saturating_mul(16))
            .map_max_entries("RETX_STATS", opts.max_ports.saturating_mul(2))
            .load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!(
                    "eBPF logs unavailable: {}",
                    node_tracer_client::one_line(&e)
                );
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
        let tracking = drops::attach(&mut ebpf, &prepared);
        let reader = Arc::new(MapReader::new(
            &ebpf,
            drops::DropMaps::open(&ebpf, tracking, prepared.reasons.unwrap_or_default())?,
        )?);
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
            reader,
        })
    }

    /// The maps' reader: counters read through it never wait for this probe's owner.
    pub fn reader(&self) -> Arc<MapReader> {
        self.reader.clone()
    }

    /// The mode in use (never `Auto`).
    pub fn mode(&self) -> AttachMode {
        self.mode
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

    /// Sums every map over CPUs (see [`MapReader::read`]).
    pub fn read(&self) -> Result<HashMap<u32, PortReading>> {
        self.reader.read().map(|r| r.ports)
    }

    /// What the programs could not do, summed over CPUs (index: `STAT_*`).
    pub fn program_stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        self.reader.program_stats()
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
        let Some(name) = [PROG_INGRESS, PROG_EGRESS, PROG_INGRESS_NL, PROG_EGRESS_NL]
            .into_iter()
            .find(|n| *n == prog)
        else {
            return Err(Error::MapMissing("test_run: no such program"));
        };
        let fd = program_fd(&self.ebpf, name)?;
        bpf::prog_test_run(fd.as_fd(), frame, repeat)
            .map_err(|e| Error::io(format!("BPF_PROG_TEST_RUN {name}"), e))
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
    // Any program type: the tc classifiers and the tracepoint programs alike.
    ebpf.program(name)
        .ok_or(Error::MapMissing(name))?
        .fd()
        .map_err(|source| Error::Program { name, source })?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io(format!("dup the fd of {name}"), e))
}

/// tcx arrived in Linux 6.6.
fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_map_to_aya_log_bytes() {
        assert_eq!(log_level_byte(log::LevelFilter::Off), 0);
        assert_eq!(log_level_byte(log::LevelFilter::Trace), 5);
    }

    /// The fdinfo scan (node-tracer-sys) finds a map this process holds: a live BPF object, so
    /// it lives here, where the tests can make one.
    #[test]
    fn our_own_maps_are_found_among_what_we_hold() {
        use node_tracer_sys::held::held_bpf_objects;
        // A per-CPU array (type 6) of one entry, held by this process.
        let fd = super::batch::tests::map(6, 1);
        let me = std::process::id();
        let mine = held_bpf_objects(Some(me));
        assert!(mine.iter().any(|h| h.map_id.is_some()), "{mine:?}");
        assert!(held_bpf_objects(None).iter().any(|h| h.pid == me));
        drop(fd);
    }
}
