//! The kernel's own packet counters of a veth and of its peer, over rtnetlink: one
//! `RTM_GETLINK` per device, the peer's asked for by its link-netnsid (`IFLA_TARGET_NETNSID`),
//! so no namespace is entered. Blocking and quick (a request and its reply, no dump).

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// A socket for [`Kernel::rx_packets`].
pub struct Kernel {
    socket: Socket,
    seq: u32,
}

impl Kernel {
    pub fn open() -> std::io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// `rx_packets` of link `ifindex`, in the namespace `netnsid` names (the caller's own
    /// when `None`). `None` when the link is gone or the kernel says no.
    pub fn rx_packets(&mut self, ifindex: u32, netnsid: Option<i32>) -> Option<u64> {
        self.seq = self.seq.wrapping_add(1);
        let mut link = LinkMessage::default();
        link.header.index = ifindex;
        if let Some(id) = netnsid {
            link.attributes.push(LinkAttribute::IfNetnsId(id));
        }
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, RouteNetlinkMessage::GetLink(link).into());
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0).ok()?;
        // Replies to earlier requests that timed out cannot be pending: every request is
        // answered before the next is sent, and one with another sequence number is skipped.
        loop {
            let (data, _) = self.socket.recv_from_full().ok()?;
            let mut off = 0;
            while off < data.len() {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]).ok()?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return None;
                }
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                return match reply.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                        l.attributes.iter().find_map(|a| match a {
                            LinkAttribute::Stats64(s) => Some(s.rx_packets),
                            _ => None,
                        })
                    }
                    _ => None,
                };
            }
        }
    }
}
