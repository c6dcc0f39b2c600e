//! The bridges' forwarding databases, read over netlink: one `RTM_GETNEIGH` dump with family
//! `AF_BRIDGE` (what `bridge fdb show` sends), and two small link dumps to name the bridges and
//! their ports.
//!
//! The FDB changes whenever a frame teaches the bridge something or an entry ages out, and the
//! ports' promiscuous and hairpin flags change without any veth coming or going, so neither is
//! read with the topology: [`LiveFdb`] keeps both current from the kernel's notifications, with
//! one dump at start and after an overrun, never one per scrape. The entries' ageing timers are
//! the one thing no notification carries (the kernel resets a learned entry's timer at every
//! frame from its MAC and tells nobody): they run on from the last notification, and a learned
//! entry is never older than the last frame our programs saw from its MAC on its port
//! ([`FdbRead::apply`]).
//!
//! Not one full link dump: for every veth whose peer is in another namespace the kernel looks up
//! that namespace's id with a linear walk over all the ids the host has given out, one per pod,
//! so a full dump costs O(pods²) in the kernel (~30 ms of every scrape at 1,000 pods). Bridges
//! (filtered by kind) and bridge ports (`AF_BRIDGE`, what `bridge link show` sends) carry no
//! namespace id; the promiscuity of the few ports on no bridge is asked one `SIOCGIFFLAGS` each.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkProtoInfoBridge},
    neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
};
use rtnetlink::Handle;
use rtnetlink::packet_core::Nla as _;

mod live;

pub use live::LiveFdb;

use super::{
    TopologyError,
    dump::{self, Kind, LinkRecord},
};
use crate::model::{FdbEntry, FdbState, Snapshot, format_mac};

/// One read: the entries, and every link's port flags as of the same instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdbRead {
    pub entries: Vec<FdbEntry>,
    /// Per ifindex: (promiscuous, hairpin).
    pub flags: HashMap<u32, (bool, bool)>,
}

impl FdbRead {
    /// Puts the entries into the snapshot and refreshes its ports' flags. A port on no bridge is
    /// not in the read: its promiscuity is asked of the kernel here, in the caller's namespace.
    pub fn apply(self, snap: &mut Snapshot) {
        let mut sock = None;
        for p in &mut snap.ports {
            let flags = self.flags.get(&p.ifindex).copied().or_else(|| {
                let sock = sock.get_or_insert_with(ioctl_socket).as_ref()?;
                // Hairpin is a bridge port's setting: off anywhere else.
                promiscuous(sock, &p.name).map(|on| (on, false))
            });
            if let Some((promiscuous, hairpin)) = flags {
                p.promiscuous = promiscuous;
                p.hairpin = hairpin && p.master.is_some();
            }
        }
        snap.fdb = self.entries;
        refresh_from_frames_seen(snap);
    }
}

/// The bridge refreshes a learned entry at every frame from its MAC and tells nobody, but the
/// programs saw those frames on the ports they are attached to: an entry is at most as old as
/// the last frame they saw from its MAC on its port.
fn refresh_from_frames_seen(snap: &mut Snapshot) {
    let ports: HashMap<u32, &crate::model::Port> =
        snap.ports.iter().map(|p| (p.ifindex, p)).collect();
    for e in snap.fdb.iter_mut().filter(|e| e.state == FdbState::Learned) {
        let Some(port) = ports.get(&e.ifindex) else {
            continue;
        };
        let last_seen = port
            .macs
            .iter()
            .filter(|m| m.direction == crate::model::Direction::Transmit && m.mac == e.mac)
            .map(|m| m.last_seen_ms)
            .max()
            .unwrap_or(0);
        if last_seen != 0 {
            e.updated_ms = e.updated_ms.min(snap.taken_at_ms.saturating_sub(last_seen));
        }
    }
}

/// What the kernel holds, before it is joined into entries: the bridges and bridge ports, and
/// the raw neighbour messages of family `AF_BRIDGE`.
#[derive(Debug, Default)]
pub(crate) struct FdbDump {
    pub links: Vec<LinkRecord>,
    pub raws: Vec<RawFdb>,
}

/// Reads every bridge's FDB in the calling thread's network namespace.
pub async fn read(handle: &Handle) -> Result<FdbRead, TopologyError> {
    let d = dump(handle).await?;
    Ok(assemble(&d.links, &d.raws))
}

/// Three dumps: the bridges (filtered by kind), the bridge ports (`AF_BRIDGE`), the entries.
pub(crate) async fn dump(handle: &Handle) -> Result<FdbDump, TopologyError> {
    let bridges = dump::dump_links(handle, |m| {
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
    })
    .await?;
    let ports = dump::dump_links(handle, |m| {
        m.header.interface_family = AddressFamily::Bridge;
    })
    .await?;
    let neighbours: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(|source| TopologyError::Netlink {
            what: "bridge fdb dump",
            source,
        })?;
    let links = bridges
        .iter()
        .map(dump::parse_link)
        // The kind filter is only as old as kernel 4.x: keep bridges alone whatever answered.
        .filter(|l| l.kind == Kind::Bridge)
        .chain(ports.iter().map(parse_bridge_port))
        .collect();
    Ok(FdbDump {
        links,
        raws: neighbours.iter().filter_map(raw).collect(),
    })
}

/// Joins raw entries with the links that name their bridge and port.
pub(crate) fn assemble<'a>(
    links: impl IntoIterator<Item = &'a LinkRecord>,
    raws: impl IntoIterator<Item = &'a RawFdb>,
) -> FdbRead {
    let by_index: HashMap<u32, &LinkRecord> = links.into_iter().map(|l| (l.ifindex, l)).collect();
    let hz = user_hz();
    let mut entries: Vec<FdbEntry> = raws
        .into_iter()
        .filter_map(|r| entry(r, &by_index, hz))
        .collect();
    entries.sort_by(|a, b| {
        (a.bridge_ifindex, a.port_no, &a.mac, a.vlan).cmp(&(
            b.bridge_ifindex,
            b.port_no,
            &b.mac,
            b.vlan,
        ))
    });
    let flags = by_index
        .values()
        .map(|l| (l.ifindex, (l.promiscuous, l.hairpin)))
        .collect();
    FdbRead { entries, flags }
}

/// `IFLA_BRPORT_MODE` (hairpin) and `IFLA_BRPORT_NO` inside an `AF_BRIDGE` link message's
/// `IFLA_PROTINFO` (netlink-packet-route leaves both unparsed there).
const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_BRPORT_NO: u16 = 18;

/// A bridge port from an `AF_BRIDGE` link dump: the fields a full dump's record would have for
/// it (the same kernel function fills the port attributes of both).
pub(crate) fn parse_bridge_port(msg: &LinkMessage) -> LinkRecord {
    let mut record = LinkRecord::from_header(msg);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => record.name.clone_from(name),
            LinkAttribute::Controller(master) => record.master = Some(*master),
            LinkAttribute::ProtoInfoBridge(infos) => {
                for info in infos {
                    let LinkProtoInfoBridge::Other(nla) = info else {
                        continue;
                    };
                    let mut value = [0u8; 2];
                    match (nla.kind(), nla.value_len()) {
                        (IFLA_BRPORT_MODE, 1) => {
                            nla.emit_value(&mut value[..1]);
                            record.hairpin = value[0] != 0;
                        }
                        (IFLA_BRPORT_NO, 2) => {
                            nla.emit_value(&mut value);
                            record.port_no = Some(u16::from_ne_bytes(value));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    record
}

/// Whether `name` is in promiscuous mode (`None`: no such interface here). The same
/// `dev_get_flags` a link dump reports, for the one interface.
fn promiscuous(sock: &OwnedFd, name: &str) -> Option<bool> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a valid socket and a NUL-terminated name in a properly sized ifreq, which the
    // kernel fills in.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) } < 0 {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS set the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Some(i32::from(flags) & libc::IFF_PROMISC != 0)
}

/// A socket to ask interface flags through (any family does; this one always exists).
fn ioctl_socket() -> Option<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    // SAFETY: a fresh fd nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// [`dump`] for synchronous callers (a resync after notifications were lost): runs on a
/// short-lived thread with its own runtime, as namespace visits do, so it never blocks on, or
/// nests inside, the caller's runtime.
pub(crate) fn dump_blocking() -> Result<FdbDump, TopologyError> {
    const FDB: &str = "FDB read";
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("fdb-read".into())
            .spawn_scoped(scope, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|source| TopologyError::Thread { what: FDB, source })?;
                rt.block_on(dump::with_connection(|handle| async move {
                    dump(&handle).await
                }))
            })
            .map_err(|source| TopologyError::Thread { what: FDB, source })?;
        worker.join().map_err(|_| TopologyError::Panicked(FDB))?
    })
}

/// The fields of one `RTM_NEWNEIGH` an FDB entry needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RawFdb {
    pub ifindex: u32,
    /// `NDA_MASTER`: set on entries of a bridge's own database, absent on the `self` entries
    /// every device reports for its unicast and multicast address lists.
    pub master: Option<u32>,
    pub mac: [u8; 6],
    pub vlan: Option<u16>,
    pub state: NeighbourState,
    pub flags: NeighbourFlags,
    /// `NDA_CACHEINFO` `updated` and `used`, in clock ticks (`USER_HZ`).
    pub updated_ticks: u32,
    pub used_ticks: u32,
}

pub(crate) fn raw(msg: &NeighbourMessage) -> Option<RawFdb> {
    if msg.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut r = RawFdb {
        ifindex: msg.header.ifindex,
        state: msg.header.state,
        flags: msg.header.flags,
        ..RawFdb::default()
    };
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            NeighbourAttribute::Controller(m) => r.master = Some(*m),
            NeighbourAttribute::Vlan(v) => r.vlan = Some(*v),
            NeighbourAttribute::CacheInfo(c) => {
                r.updated_ticks = c.updated;
                r.used_ticks = c.used;
            }
            _ => {}
        }
    }
    r.mac = mac?;
    Some(r)
}

/// Turns a raw entry into the model's, naming the bridge and the port; `None` for anything that
/// is not an entry of a bridge's own database.
pub(crate) fn entry(r: &RawFdb, links: &HashMap<u32, &LinkRecord>, hz: u64) -> Option<FdbEntry> {
    let master = r.master?;
    if r.flags.contains(NeighbourFlags::Own) {
        return None;
    }
    let bridge = links.get(&master).filter(|b| b.kind == Kind::Bridge)?;
    let dev = links.get(&r.ifindex);
    let on_bridge = r.ifindex == master;
    let state = if r.state == NeighbourState::Permanent {
        FdbState::Local
    } else if r.state == NeighbourState::Noarp {
        FdbState::Static
    } else {
        FdbState::Learned
    };
    let ms = |ticks: u32| u64::from(ticks) * 1000 / hz.max(1);
    Some(FdbEntry {
        bridge: bridge.name.clone(),
        bridge_ifindex: master,
        ifindex: r.ifindex,
        interface: dev.map_or_else(|| r.ifindex.to_string(), |d| d.name.clone()),
        port_no: if on_bridge {
            None
        } else {
            dev.and_then(|d| d.port_no)
        },
        mac: format_mac(&r.mac),
        vlan: r.vlan,
        state,
        extern_learn: r.flags.contains(NeighbourFlags::ExtLearned),
        sticky: r.flags.contains(NeighbourFlags::Sticky),
        updated_ms: ms(r.updated_ticks),
        used_ms: ms(r.used_ticks),
    })
}

/// Clock ticks per second of `NDA_CACHEINFO` (the kernel reports `clock_t`, as `iproute2`
/// assumes when it divides by `sysconf(_SC_CLK_TCK)`).
fn user_hz() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

#[cfg(test)]
mod tests;
