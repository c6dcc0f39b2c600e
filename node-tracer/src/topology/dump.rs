//! Whole-table netlink dumps of one network namespace (links, addresses, routes), parsed into the
//! few fields the topology needs.
//!
//! Dumps, not per-link requests: a node with a thousand veths must be read in a handful of
//! round trips.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
    link::{
        InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType,
        LinkMessage,
    },
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use rtnetlink::Handle;

use super::{TopologyError, format};

/// What kind of link this is, as far as the topology cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Veth,
    /// A `tun` link in tap mode (Ethernet frames): a VM's NIC. Tun mode (IP packets, VPNs) is
    /// `Other`: our programs parse Ethernet headers.
    Tap,
    Bridge,
    Other,
}

/// One link of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkRecord {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<String>,
    pub kind: Kind,
    /// `IFLA_MASTER`: the ifindex of the bridge (or bond, VRF...) this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex in the peer's own namespace.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: this namespace's id for the peer's namespace; absent when the peer
    /// lives in this same namespace.
    pub link_netnsid: Option<i32>,
    pub promiscuous: bool,
    /// `IFLA_BRPORT_NO`, present only on bridge ports.
    pub port_no: Option<u16>,
    pub hairpin: bool,
    /// The link carries Ethernet frames (`ARPHRD_ETHER`): tells a tap from a tun.
    pub ether: bool,
}

/// Everything read from one namespace.
#[derive(Debug, Clone, Default)]
pub(crate) struct NsView {
    pub links: Vec<LinkRecord>,
    /// CIDR strings per ifindex, in kernel order.
    pub addresses: HashMap<u32, Vec<String>>,
    /// Main-table route destinations per output ifindex (only read in the host namespace).
    pub routes: HashMap<u32, Vec<String>>,
}

/// Runs `work` with a fresh rtnetlink connection opened in the calling thread's network
/// namespace.
///
/// The connection is driven inside the same future instead of being spawned, so this works on
/// any runtime flavour, including the throwaway current-thread runtimes of namespace visits.
pub(crate) async fn with_connection<T, F, Fut>(work: F) -> Result<T, TopologyError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, TopologyError>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().map_err(TopologyError::Socket)?;
    tokio::select! {
        result = work(handle) => result,
        () = conn => Err(TopologyError::ConnectionClosed("dump")),
    }
}

/// One link dump of the handle's namespace, the request shaped by `filter` (an address family,
/// a kind; `|_| {}` for every link).
pub(crate) async fn dump_links(
    handle: &Handle,
    filter: impl FnOnce(&mut LinkMessage),
) -> Result<Vec<LinkMessage>, TopologyError> {
    let mut request = handle.link().get();
    filter(request.message_mut());
    request
        .execute()
        .try_collect()
        .await
        .map_err(|source| TopologyError::Netlink {
            what: "link dump",
            source,
        })
}

/// Dumps links and addresses, and routes when `with_routes` (only the host's routes matter).
pub(crate) async fn read_namespace(
    handle: &Handle,
    with_routes: bool,
) -> Result<NsView, TopologyError> {
    let links = dump_links(handle, |_| {}).await?;
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| TopologyError::Netlink {
            what: "address dump",
            source,
        })?;
    let mut view = NsView {
        links: links.iter().map(parse_link).collect(),
        addresses: HashMap::new(),
        routes: HashMap::new(),
    };
    for msg in &addrs {
        if let Some(cidr) = parse_address(msg) {
            view.addresses
                .entry(msg.header.index)
                .or_default()
                .push(cidr);
        }
    }
    for list in view.addresses.values_mut() {
        format::sort_addresses(list);
    }
    if with_routes {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            let routes: Vec<RouteMessage> = handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .map_err(|source| TopologyError::Netlink {
                    what: "route dump",
                    source,
                })?;
            for msg in &routes {
                add_route(&mut view.routes, msg);
            }
        }
    }
    Ok(view)
}

impl LinkRecord {
    /// What the message header says; the attributes fill in the rest.
    pub(crate) fn from_header(msg: &LinkMessage) -> Self {
        Self {
            ifindex: msg.header.index,
            name: String::new(),
            mac: None,
            kind: Kind::Other,
            master: None,
            link: None,
            link_netnsid: None,
            promiscuous: msg.header.flags.contains(LinkFlags::Promisc),
            port_no: None,
            hairpin: false,
            ether: msg.header.link_layer_type == LinkLayerType::Ether,
        }
    }
}

pub(crate) fn parse_link(msg: &LinkMessage) -> LinkRecord {
    let mut record = LinkRecord::from_header(msg);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => record.name.clone_from(name),
            LinkAttribute::Address(mac) => record.mac = Some(crate::model::format_mac(mac)),
            LinkAttribute::Controller(master) => record.master = Some(*master),
            LinkAttribute::Link(link) => record.link = Some(*link),
            LinkAttribute::LinkNetNsId(id) => record.link_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => parse_link_info(infos, &mut record),
            _ => {}
        }
    }
    record
}

fn parse_link_info(infos: &[LinkInfo], record: &mut LinkRecord) {
    for info in infos {
        match info {
            LinkInfo::Kind(InfoKind::Veth) => record.kind = Kind::Veth,
            LinkInfo::Kind(InfoKind::Tun) if record.ether => record.kind = Kind::Tap,
            LinkInfo::Kind(InfoKind::Bridge) => record.kind = Kind::Bridge,
            LinkInfo::PortData(InfoPortData::BridgePort(attrs)) => {
                for attr in attrs {
                    match attr {
                        InfoBridgePort::PortNumber(no) => record.port_no = Some(*no),
                        InfoBridgePort::HairpinMode(on) => record.hairpin = *on,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// The address as `ip addr` shows it: for IPv4 the local address (`IFA_ADDRESS` is the remote
/// end on point-to-point links), for IPv6 `IFA_ADDRESS`.
fn parse_address(msg: &AddressMessage) -> Option<String> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    local
        .or(address)
        .map(|ip| format::cidr(ip, msg.header.prefix_len))
}

fn add_route(routes: &mut HashMap<u32, Vec<String>>, msg: &RouteMessage) {
    if route_table(msg) != u32::from(RouteHeader::RT_TABLE_MAIN)
        || msg.header.kind != RouteType::Unicast
    {
        return;
    }
    let mut dest = None;
    let mut oifs = Vec::new();
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dest = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dest = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(oif) => oifs.push(*oif),
            RouteAttribute::MultiPath(hops) => oifs.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    // No RTA_DST means the default route of the family.
    let dest = dest.unwrap_or(match msg.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    let prefix = msg.header.destination_prefix_length;
    if !format::is_reported_route(dest, prefix) {
        return;
    }
    let cidr = format::cidr(dest, prefix);
    for oif in oifs {
        let list = routes.entry(oif).or_default();
        // The same destination appears once per metric; one mention is enough.
        if !list.contains(&cidr) {
            list.push(cidr.clone());
        }
    }
}

/// Tables above 255 only fit in `RTA_TABLE`; the header then says `RT_TABLE_COMPAT`.
fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}
