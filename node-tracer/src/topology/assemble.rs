//! Joins the host's dumps and the peer namespaces' dumps into ports and bridges.

use std::collections::HashMap;

use super::{
    Topology,
    dump::{Kind, LinkRecord, NsView},
    format,
    netns::Candidate,
};
use crate::model::{Bridge, Peer, Port};

/// What was learned about the peer namespaces, by nsid.
pub(crate) struct PeerNamespaces<'a> {
    /// The host's own namespace inode (peers in the host namespace carry it).
    pub host_inode: u64,
    /// Which file opens each nsid.
    pub files: &'a HashMap<i32, Candidate>,
    /// What each namespace held when visited.
    pub views: &'a HashMap<i32, NsView>,
}

pub(crate) fn build(host: &NsView, peers: &PeerNamespaces<'_>) -> Topology {
    let by_index: HashMap<u32, &LinkRecord> = host.links.iter().map(|l| (l.ifindex, l)).collect();
    let mut ports: Vec<Port> = host
        .links
        .iter()
        .filter(|l| l.kind == Kind::Veth)
        .map(|l| port(l, host, &by_index, peers))
        .collect();
    ports.sort_by_key(|p| p.ifindex);

    let mut bridges: Vec<Bridge> = host
        .links
        .iter()
        .filter(|l| l.kind == Kind::Bridge)
        .map(|b| {
            let mut members: Vec<String> = host
                .links
                .iter()
                .filter(|l| l.master == Some(b.ifindex))
                .map(|l| l.name.clone())
                .collect();
            members.sort();
            Bridge {
                ifindex: b.ifindex,
                name: b.name.clone(),
                mac: b.mac.clone(),
                addresses: addresses_of(host, b.ifindex),
                ports: members,
            }
        })
        .collect();
    bridges.sort_by_key(|b| b.ifindex);
    Topology { ports, bridges }
}

fn port(
    link: &LinkRecord,
    host: &NsView,
    by_index: &HashMap<u32, &LinkRecord>,
    peers: &PeerNamespaces<'_>,
) -> Port {
    let bridge = link
        .master
        .and_then(|m| by_index.get(&m))
        .filter(|m| m.kind == Kind::Bridge);
    let routes = host.routes.get(&link.ifindex).cloned().unwrap_or_default();
    Port {
        ifindex: link.ifindex,
        name: link.name.clone(),
        mac: link.mac.clone(),
        mode: format::classify(bridge.is_some(), !routes.is_empty()),
        master: bridge.map(|b| b.name.clone()),
        port_no: bridge.and(link.port_no),
        addresses: addresses_of(host, link.ifindex),
        routes,
        peer: peer(link, host, by_index, peers),
        promiscuous: link.promiscuous,
        hairpin: bridge.is_some() && link.hairpin,
        ..Port::default()
    }
}

fn peer(
    link: &LinkRecord,
    host: &NsView,
    by_index: &HashMap<u32, &LinkRecord>,
    peers: &PeerNamespaces<'_>,
) -> Option<Peer> {
    let ifindex = link.link?;
    let Some(nsid) = link.link_netnsid else {
        // Both ends in the host namespace: the ifindex is meaningful here.
        let other = by_index.get(&ifindex);
        return Some(Peer {
            ifindex,
            name: other.map(|o| o.name.clone()),
            mac: other.and_then(|o| o.mac.clone()),
            addresses: addresses_of(host, ifindex),
            netnsid: None,
            netns: None,
            netns_inode: Some(peers.host_inode),
        });
    };
    let file = peers.files.get(&nsid);
    let view = peers.views.get(&nsid);
    let other = view.and_then(|v| v.links.iter().find(|l| l.ifindex == ifindex));
    Some(Peer {
        ifindex,
        name: other.map(|o| o.name.clone()),
        mac: other.and_then(|o| o.mac.clone()),
        addresses: view.map(|v| addresses_of(v, ifindex)).unwrap_or_default(),
        netnsid: Some(nsid),
        netns: file.map(|f| f.path.to_string_lossy().into_owned()),
        netns_inode: file.map(|f| f.inode),
    })
}

fn addresses_of(view: &NsView, ifindex: u32) -> Vec<String> {
    view.addresses.get(&ifindex).cloned().unwrap_or_default()
}
