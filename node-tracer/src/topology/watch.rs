//! Following veth churn from `RTNLGRP_LINK` notifications, so the agent never polls.

use std::{collections::HashMap, pin::Pin};

use futures::{StreamExt as _, channel::mpsc::UnboundedReceiver};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage, link::LinkMessage};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    proto::Connection,
    sys::SocketAddr,
};

use super::{
    TopologyError,
    dump::{Kind, parse_link},
};

/// A change to the host's set of veths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A veth (or tap) appeared in the host namespace (created, moved in, or renamed: a rename is an
    /// `Added` with the new name for an ifindex the caller already knows).
    Added { ifindex: u32, name: String },
    /// A veth left the host namespace (deleted, or moved to another namespace).
    Removed { ifindex: u32, name: String },
    /// A link that is neither a veth nor a tap (an uplink: a NIC, a VXLAN) joined a bridge,
    /// left it, or went away while in one: the bridge's ports changed, no veth did.
    PortChanged { ifindex: u32, name: String },
    /// The kernel dropped notifications (the socket buffer overran, typically when hundreds of
    /// veths appear at once): what the caller knows may be stale, rescan everything.
    Resync,
}

/// A subscription to link notifications of the host namespace.
pub struct LinkWatcher {
    /// Driven from [`LinkWatcher::next`] rather than spawned, so dropping the watcher closes the
    /// socket and nothing keeps running behind the caller's back.
    conn: Option<Pin<Box<Connection<RouteNetlinkMessage>>>>,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// Kept alive only because the connection shuts down once every handle is gone.
    _handle: Handle,
    /// Veths announced so far by name, so that flag changes (up, down, promisc, carrier) do not
    /// turn into a stream of `Added`.
    known: HashMap<u32, String>,
    /// Other links in a bridge (or any master) now, by ifindex: the master they are in.
    enslaved: HashMap<u32, u32>,
}

impl std::fmt::Debug for LinkWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWatcher")
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}

/// Subscribes to `RTNLGRP_LINK` in the calling thread's namespace. Must be called inside a tokio
/// runtime (the socket registers with its reactor).
pub fn watch() -> Result<LinkWatcher, TopologyError> {
    tokio::runtime::Handle::try_current().map_err(|_| TopologyError::NoRuntime)?;
    let (conn, handle, messages) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
        .map_err(TopologyError::Socket)?;
    Ok(LinkWatcher {
        conn: Some(Box::pin(conn)),
        messages,
        _handle: handle,
        known: HashMap::new(),
        enslaved: HashMap::new(),
    })
}

impl LinkWatcher {
    /// The next veth event; `None` once the netlink socket is closed for good.
    ///
    /// `Added` may repeat for a veth the caller already knows (after a `Resync`, or for links
    /// that existed before the watch began): treat it as "make sure this one is handled".
    ///
    /// Cancel-safe: dropping the future (in a `select!`) loses no event.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            let message = match self.conn.as_mut() {
                Some(conn) => tokio::select! {
                    biased;
                    message = self.messages.next() => message,
                    () = conn => {
                        // Socket gone: hand out what was already read, then end.
                        self.conn = None;
                        continue;
                    }
                },
                None => self.messages.next().await,
            };
            let (message, _) = message?;
            if let Some(event) = self.interpret(message.payload) {
                return Some(event);
            }
        }
    }

    fn interpret(&mut self, payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<LinkEvent> {
        match payload {
            NetlinkPayload::Overrun(_) => {
                // Whatever was dropped could have been a removal: forget everything.
                self.known.clear();
                self.enslaved.clear();
                Some(LinkEvent::Resync)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(msg)) => self.added(&msg),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(msg)) => self.removed(&msg),
            _ => None,
        }
    }

    fn added(&mut self, msg: &LinkMessage) -> Option<LinkEvent> {
        let link = parse_link(msg);
        if link.name.is_empty() {
            return None;
        }
        if !matches!(link.kind, Kind::Veth | Kind::Tap) {
            return self.other_link(msg, link.ifindex, link.master, link.name);
        }
        if self.known.get(&link.ifindex) == Some(&link.name) {
            return None;
        }
        self.known.insert(link.ifindex, link.name.clone());
        Some(LinkEvent::Added {
            ifindex: link.ifindex,
            name: link.name,
        })
    }

    /// A link the agent attaches only on request: an event only when its master changed (a
    /// carrier or flag change repeats the same master). The bridge's own messages about its
    /// ports (`AF_BRIDGE`) carry no link kind, so a veth would look like one of these there.
    fn other_link(
        &mut self,
        msg: &LinkMessage,
        ifindex: u32,
        master: Option<u32>,
        name: String,
    ) -> Option<LinkEvent> {
        if msg.header.interface_family == AddressFamily::Bridge {
            return None;
        }
        let before = match master {
            Some(m) => self.enslaved.insert(ifindex, m),
            None => self.enslaved.remove(&ifindex),
        };
        (before != master).then_some(LinkEvent::PortChanged { ifindex, name })
    }

    fn removed(&mut self, msg: &LinkMessage) -> Option<LinkEvent> {
        let link = parse_link(msg);
        if msg.header.interface_family != AddressFamily::Bridge
            && self.enslaved.remove(&link.ifindex).is_some()
        {
            return Some(LinkEvent::PortChanged {
                ifindex: link.ifindex,
                name: link.name,
            });
        }
        let known = self.known.remove(&link.ifindex);
        // RTM_DELLINK normally carries the kind; a veth we announced counts even without it.
        if !matches!(link.kind, Kind::Veth | Kind::Tap) && known.is_none() {
            return None;
        }
        let name = if link.name.is_empty() {
            known.unwrap_or_default()
        } else {
            link.name
        };
        Some(LinkEvent::Removed {
            ifindex: link.ifindex,
            name,
        })
    }
}
