//! The bridges' forwarding databases and the ports' flags kept current from netlink
//! notifications (`RTNLGRP_NEIGH` for entries, `RTNLGRP_LINK` for bridges, ports and flags), so
//! a scrape reads them without a dump.
//!
//! A read first applies every notification the kernel has queued on our socket, so it is as
//! fresh as a dump: the kernel queues a notification before the change's own netlink request
//! returns (`bridge fdb add`, `ip link set promisc on`), and a change made before the read began
//! is in the queue by then. A background task keeps the queue short between reads; an overrun
//! (`ENOBUFS`: notifications lost) costs one dump.

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    time::Instant,
};

use netlink_packet_route::{AddressFamily, RouteNetlinkMessage, link::LinkMessage};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    sys::{Socket, protocols::NETLINK_ROUTE},
};
use tokio::io::unix::AsyncFd;

use super::{FdbDump, FdbRead, RawFdb, assemble, dump_blocking, parse_bridge_port, raw};
use crate::topology::{
    TopologyError,
    dump::{self, LinkRecord, parse_link},
};

/// The bridges' FDB as of the last notification read.
pub struct LiveFdb {
    /// Readiness of the table's socket, for [`LiveFdb::follow`] (first: deregistered before
    /// the socket closes).
    ready: AsyncFd<i32>,
    table: Mutex<Table>,
}

struct Table {
    sock: Socket,
    /// Bridges, bridge ports, and any link a notification told us about (for its flags).
    links: HashMap<u32, LinkRecord>,
    /// Entries of a bridge's own database by (bridge, MAC, VLAN): the kernel's own key, so a
    /// MAC moving to another port replaces its entry.
    /// With each, when it was read: its timers have run on since.
    entries: HashMap<EntryKey, (RawFdb, Instant)>,
    buf: Vec<u8>,
}

/// (bridge ifindex, MAC, VLAN).
type EntryKey = (u32, [u8; 6], Option<u16>);

/// Big enough for a burst of hundreds of veths between two drains.
const RECV_BUFFER: usize = 4 << 20;

impl LiveFdb {
    /// Subscribes, then reads everything once. Must be called inside a tokio runtime.
    pub async fn start() -> Result<Arc<Self>, TopologyError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(TopologyError::Socket)?;
        sock.bind_auto().map_err(TopologyError::Socket)?;
        for group in [libc::RTNLGRP_LINK, libc::RTNLGRP_NEIGH] {
            sock.add_membership(group).map_err(TopologyError::Socket)?;
        }
        sock.set_non_blocking(true).map_err(TopologyError::Socket)?;
        if let Err(e) = sock.set_rx_buf_sz(RECV_BUFFER) {
            log::debug!("FDB notifications: receive buffer left at its default: {e}");
        }
        // SAFETY: the socket lives in the same `LiveFdb` as the registration, which is
        // dropped (deregistered) first.
        let ready = unsafe {
            AsyncFd::register_with_interest(sock.as_raw_fd(), tokio::io::Interest::READABLE)
        }
        .map_err(|e| TopologyError::Socket(e.into_parts().1))?;
        // Subscribed first: a change during the dump is in the queue, and applying it after the
        // dump converges (every notification carries the entry's whole state).
        let mut table = Table {
            sock,
            links: HashMap::new(),
            entries: HashMap::new(),
            buf: vec![0; 64 << 10],
        };
        table.reset(
            dump::with_connection(|handle| async move { super::dump(&handle).await }).await?,
        );
        Ok(Arc::new(Self {
            table: Mutex::new(table),
            ready,
        }))
    }

    /// The entries and flags now. An entry's ageing timers are the kernel's as last told, run
    /// on since (the kernel resets them on traffic without telling: see
    /// [`FdbRead::apply`](super::FdbRead::apply) for the part the programs see).
    pub fn read(&self) -> FdbRead {
        let mut t = self.lock();
        t.drain();
        let hz = super::user_hz();
        let now = Instant::now();
        let raws: Vec<RawFdb> = t
            .entries
            .values()
            .map(|(r, at)| {
                let ticks = (now.duration_since(*at).as_millis() as u64 * hz / 1000) as u32;
                RawFdb {
                    updated_ticks: r.updated_ticks.saturating_add(ticks),
                    used_ticks: r.used_ticks.saturating_add(ticks),
                    ..r.clone()
                }
            })
            .collect();
        assemble(t.links.values(), &raws)
    }

    /// Applies notifications as they come, so the queue never overruns between reads. Ends
    /// when the socket fails.
    pub async fn follow(self: Arc<Self>) {
        loop {
            let Ok(mut guard) = self.ready.readable().await else {
                return;
            };
            // Before draining: what arrives after the drain's last read wakes us again.
            guard.clear_ready();
            self.lock().drain();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing here is left half-done by a panic that matters: the next drain or dump fixes it.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Table {
    fn reset(&mut self, dump: FdbDump) {
        self.links = dump.links.into_iter().map(|l| (l.ifindex, l)).collect();
        let now = Instant::now();
        self.entries = dump
            .raws
            .into_iter()
            .filter_map(|r| Some(((r.master?, r.mac, r.vlan), (r, now))))
            .collect();
    }

    /// Applies every queued notification; after an overrun, starts again from a dump.
    fn drain(&mut self) {
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::info!("FDB notifications overran; reading the bridges' FDB again");
                    match dump_blocking() {
                        Ok(d) => self.reset(d),
                        Err(e) => {
                            crate::failures::count("fdb_dump");
                            log::warn!(
                                "reading the bridges' FDB: {}",
                                node_tracer_client::one_line(&e)
                            );
                        }
                    }
                }
                Err(e) => {
                    crate::failures::count("fdb_notifications");
                    log::warn!("FDB notifications: {e}");
                    return;
                }
            }
            let buf = std::mem::take(&mut self.buf);
            for msg in messages(&buf) {
                self.apply(msg);
            }
            self.buf = buf;
        }
    }

    fn apply(&mut self, msg: RouteNetlinkMessage) {
        match msg {
            RouteNetlinkMessage::NewNeighbour(m) => {
                if let Some(r) = raw(&m)
                    && let Some(master) = r.master
                {
                    self.entries
                        .insert((master, r.mac, r.vlan), (r, Instant::now()));
                }
            }
            RouteNetlinkMessage::DelNeighbour(m) => {
                if let Some(r) = raw(&m)
                    && let Some(master) = r.master
                {
                    self.entries.remove(&(master, r.mac, r.vlan));
                }
            }
            RouteNetlinkMessage::NewLink(m) => self.link_changed(&m),
            RouteNetlinkMessage::DelLink(m) => self.link_removed(&m),
            _ => {}
        }
    }

    fn link_changed(&mut self, msg: &LinkMessage) {
        let new = if msg.header.interface_family == AddressFamily::Bridge {
            // A port's bridge view (hairpin, port number): the kind comes from elsewhere.
            let mut port = parse_bridge_port(msg);
            if let Some(old) = self.links.get(&port.ifindex) {
                port.kind = old.kind;
                port.mac.clone_from(&old.mac);
            }
            port
        } else {
            let mut link = parse_link(msg);
            // An `AF_UNSPEC` message carries the port number only inside bridge slave data,
            // which a kernel may leave out: keep the one we know while the master stays.
            if let Some(old) = self.links.get(&link.ifindex)
                && link.port_no.is_none()
                && link.master.is_some()
                && link.master == old.master
            {
                link.port_no = old.port_no;
                link.hairpin = old.hairpin;
            }
            link
        };
        self.links.insert(new.ifindex, new);
    }

    fn link_removed(&mut self, msg: &LinkMessage) {
        let ifindex = msg.header.index;
        if msg.header.interface_family == AddressFamily::Bridge {
            // Left its bridge; the link itself lives on.
            if let Some(l) = self.links.get_mut(&ifindex) {
                l.master = None;
                l.port_no = None;
                l.hairpin = false;
            }
            return;
        }
        self.links.remove(&ifindex);
        // The kernel says so entry by entry too; this only spares a stale one if it did not.
        self.entries
            .retain(|(bridge, _, _), (r, _)| *bridge != ifindex && r.ifindex != ifindex);
    }
}

/// The route messages in one datagram.
fn messages(buf: &[u8]) -> impl Iterator<Item = RouteNetlinkMessage> + '_ {
    const HEADER: usize = 16;
    let mut at = 0;
    std::iter::from_fn(move || {
        loop {
            let rest = buf.get(at..)?;
            if rest.len() < HEADER {
                return None;
            }
            let len = u32::from_ne_bytes(rest[..4].try_into().ok()?) as usize;
            if len < HEADER || len > rest.len() {
                return None;
            }
            at += len.next_multiple_of(4);
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::InnerMessage(m),
                    ..
                }) => return Some(m),
                Ok(_) => {}
                Err(e) => log::debug!("FDB notifications: undecodable message: {e}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};

    use super::*;

    fn table() -> Table {
        Table {
            sock: Socket::new(NETLINK_ROUTE).unwrap(),
            links: HashMap::new(),
            entries: HashMap::new(),
            buf: Vec::new(),
        }
    }

    fn neighbour(ifindex: u32, mac: [u8; 6]) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::Reachable;
        m.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            NeighbourAttribute::Controller(3),
        ];
        m
    }

    #[test]
    fn notifications_add_move_and_remove_entries() {
        let mut t = table();
        let mac = [2, 0, 0, 0, 0, 1];
        t.apply(RouteNetlinkMessage::NewNeighbour(neighbour(7, mac)));
        // The MAC moved to another port of the same bridge: one entry, on the new port.
        t.apply(RouteNetlinkMessage::NewNeighbour(neighbour(8, mac)));
        let ports: Vec<u32> = t.entries.values().map(|(r, _)| r.ifindex).collect();
        assert_eq!(ports, [8]);
        t.apply(RouteNetlinkMessage::DelNeighbour(neighbour(8, mac)));
        assert!(t.entries.is_empty());
    }

    #[test]
    fn a_deleted_link_takes_its_entries_and_flags_along() {
        let mut t = table();
        t.apply(RouteNetlinkMessage::NewNeighbour(neighbour(
            7,
            [2, 0, 0, 0, 0, 1],
        )));
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.header.flags = netlink_packet_route::link::LinkFlags::Promisc;
        t.apply(RouteNetlinkMessage::NewLink(link.clone()));
        assert!(t.links[&7].promiscuous);
        t.apply(RouteNetlinkMessage::DelLink(link));
        assert!(t.links.is_empty() && t.entries.is_empty());
    }
}
