//! Joins the host's dumps and the peer namespaces' dumps into ports and bridges.

use std::collections::HashMap;

use super::{
    Topology,
    dump::{Kind, LinkRecord, NsView},
    format,
    netns::Candidate,
};
use crate::model::{Bridge, Peer, Port, PortKind};

/// What was learned about the peer namespaces, by nsid.
pub(crate) struct PeerNamespaces<'a> {
    /// The host's own namespace inode (peers in the host namespace carry it).
    pub host_inode: u64,
    /// Which file opens each nsid.
    pub files: HashMap<i32, &'a Candidate>,
    /// What each namespace held when visited.
    pub views: HashMap<i32, &'a NsView>,
}

pub(crate) fn build(host: &NsView, peers: &PeerNamespaces<'_>) -> Topology {
    let by_index: HashMap<u32, &LinkRecord> = host.links.iter().map(|l| (l.ifindex, l)).collect();
    let mut ports: Vec<Port> = host
        .links
        .iter()
        .filter_map(|l| Some((l, port_kind(l, &by_index)?)))
        .map(|(l, kind)| Port {
            kind,
            ..port(l, host, &by_index, peers)
        })
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

/// Which links are ports: every veth and tap, and any other link enslaved to a bridge (an uplink).
fn port_kind(link: &LinkRecord, by_index: &HashMap<u32, &LinkRecord>) -> Option<PortKind> {
    match link.kind {
        Kind::Veth => Some(PortKind::Veth),
        Kind::Tap => Some(PortKind::Tap),
        Kind::Bridge => None,
        Kind::Other => link
            .master
            .and_then(|m| by_index.get(&m))
            .filter(|m| m.kind == Kind::Bridge)
            .map(|_| PortKind::Uplink),
    }
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
    // IFLA_LINK of a VXLAN or macvlan is its lower device, not a peer.
    if link.kind != Kind::Veth {
        return None;
    }
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
    let file = peers.files.get(&nsid).copied();
    let view = peers.views.get(&nsid).copied();
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::Mode;

    fn link(ifindex: u32, name: &str, kind: Kind) -> LinkRecord {
        LinkRecord {
            ifindex,
            name: name.to_string(),
            mac: Some(format!("02:00:00:00:00:{ifindex:02x}")),
            kind,
            master: None,
            link: None,
            link_netnsid: None,
            promiscuous: false,
            port_no: None,
            hairpin: false,
            ether: true,
        }
    }

    /// The seed's `veth591ea0bf@if3` with host ifindex 3 = `docker0`: the peer is link 3 of the
    /// pod's namespace, never the host's docker0.
    #[test]
    fn peer_ifindex_is_looked_up_in_the_peer_namespace() {
        let cni0 = link(4, "cni0", Kind::Bridge);
        let mut veth = link(7, "veth591ea0bf", Kind::Veth);
        veth.master = Some(4);
        veth.port_no = Some(2);
        veth.link = Some(3);
        veth.link_netnsid = Some(0);
        let host = NsView {
            links: vec![link(3, "docker0", Kind::Bridge), cni0, veth],
            ..NsView::default()
        };
        let pod = NsView {
            links: vec![link(1, "lo", Kind::Other), link(3, "eth0", Kind::Veth)],
            addresses: HashMap::from([(3, vec!["10.244.1.5/24".to_string()])]),
            routes: HashMap::new(),
        };
        let file = Candidate {
            path: PathBuf::from("/run/netns/pod"),
            inode: 4_026_532_999,
        };
        let topo = build(
            &host,
            &PeerNamespaces {
                host_inode: 1,
                files: HashMap::from([(0, &file)]),
                views: HashMap::from([(0, &pod)]),
            },
        );

        let port = &topo.ports[0];
        assert_eq!(port.mode, Mode::Bridged);
        assert_eq!(port.master.as_deref(), Some("cni0"));
        assert_eq!(port.port_no, Some(2));
        let peer = port.peer.as_ref().unwrap();
        assert_eq!(peer.name.as_deref(), Some("eth0"));
        assert_eq!(peer.addresses, ["10.244.1.5/24"]);
        assert_eq!(peer.netns.as_deref(), Some("/run/netns/pod"));
        assert_eq!(peer.netns_inode, Some(4_026_532_999));
        let docker0 = topo.bridges.iter().find(|b| b.name == "docker0").unwrap();
        assert!(docker0.ports.is_empty());
        assert_eq!(
            topo.bridges
                .iter()
                .find(|b| b.name == "cni0")
                .unwrap()
                .ports,
            ["veth591ea0bf"]
        );
    }

    #[test]
    fn unvisited_namespace_keeps_only_what_the_host_knows() {
        let mut veth = link(9, "veth1", Kind::Veth);
        veth.link = Some(2);
        veth.link_netnsid = Some(5);
        let host = NsView {
            links: vec![link(2, "eth0", Kind::Other), veth],
            routes: HashMap::from([(9, vec!["10.8.0.9/32".to_string()])]),
            ..NsView::default()
        };
        let topo = build(
            &host,
            &PeerNamespaces {
                host_inode: 1,
                files: HashMap::new(),
                views: HashMap::new(),
            },
        );
        let port = &topo.ports[0];
        assert_eq!(port.mode, Mode::Routed);
        let peer = port.peer.as_ref().unwrap();
        assert_eq!((peer.ifindex, peer.netnsid), (2, Some(5)));
        assert_eq!(
            (peer.name.as_ref(), peer.netns.as_ref(), peer.netns_inode),
            (None, None, None)
        );
    }

    /// A VM's tap and the node's NIC in `br0` beside a pod's veth: the tap is a port like the
    /// veth, the NIC an uplink, a tun (IP packets) and the bridge itself no port at all.
    #[test]
    fn taps_are_ports_and_other_bridge_members_uplinks() {
        let br0 = link(4, "br0", Kind::Bridge);
        let mut veth = link(5, "veth1", Kind::Veth);
        let mut vnet = link(6, "vnet0", Kind::Tap);
        let mut eth0 = link(2, "eth0", Kind::Other);
        eth0.link = Some(9);
        for l in [&mut veth, &mut vnet, &mut eth0] {
            l.master = Some(4);
        }
        let host = NsView {
            links: vec![eth0, br0, veth, vnet, link(7, "tun0", Kind::Other)],
            ..NsView::default()
        };
        let topo = build(
            &host,
            &PeerNamespaces {
                host_inode: 1,
                files: HashMap::new(),
                views: HashMap::new(),
            },
        );
        let kinds: Vec<(&str, PortKind, Mode, bool)> = topo
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.kind, p.mode, p.peer.is_some()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("eth0", PortKind::Uplink, Mode::Bridged, false),
                ("veth1", PortKind::Veth, Mode::Bridged, false),
                ("vnet0", PortKind::Tap, Mode::Bridged, false),
            ]
        );
    }
}
