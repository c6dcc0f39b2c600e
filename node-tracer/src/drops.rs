//! Where packets die, per pod: the kernel's drop counts (by device or namespace, and reason) and
//! TCP retransmits (by namespace), attributed to the pods of a snapshot.
//!
//! A drop belongs to a pod when it died on that pod's host veth, or anywhere inside the pod's
//! network namespace (its `eth0`, its sockets); every other drop is the host's, one series per
//! reason with empty `namespace`, `pod` and `interface`. A pod's series carry its host veth as
//! `interface`, like every other family, so dashboards join them. Keys of a veth or namespace
//! that is gone count as the host's from then on (the counter stays monotonic).

use std::collections::{BTreeMap, HashMap};

use crate::drop_report::{DropCount, RetransmitCount};
use crate::{model::Port, probe::drops::Counted};

/// (namespace, pod, container name, interface) of a port with a pod: the name is looked up once
/// per port here, so every series of the pod carries the same `name` label.
type Owner<'a> = (&'a str, &'a str, &'a str, &'a str);

/// Attributes what the programs counted to the pods of `ports`.
pub fn attribute(ports: &[Port], counted: &Counted) -> (Vec<DropCount>, Vec<RetransmitCount>) {
    let mut by_ifindex: HashMap<u32, Owner> = HashMap::new();
    let mut by_netns: HashMap<u64, Owner> = HashMap::new();
    // Sorted by ifindex, so a pod with two veths is named by its first.
    for p in ports {
        let Some(pod) = &p.pod else { continue };
        let owner = (
            pod.namespace.as_str(),
            pod.name.as_str(),
            pod.container_name(),
            p.name.as_str(),
        );
        by_ifindex.insert(p.ifindex, owner);
        if let Some(ns) = p.peer.as_ref().and_then(|x| x.netns_inode) {
            by_netns.entry(ns).or_insert(owner);
        }
    }
    let host: Owner = ("", "", "", "");
    let mut drops: BTreeMap<(Owner, &str), u64> = BTreeMap::new();
    for d in &counted.drops {
        let on_host_veth = (d.netns == counted.host_netns)
            .then(|| by_ifindex.get(&d.ifindex))
            .flatten();
        let owner = on_host_veth
            .or_else(|| by_netns.get(&d.netns))
            .copied()
            .unwrap_or(host);
        *drops.entry((owner, d.reason.as_str())).or_default() += d.count;
    }
    let mut retx: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for (netns, n) in &counted.retransmits {
        let (ns, pod, name, _) = by_netns.get(netns).copied().unwrap_or(host);
        *retx.entry((ns, pod, name)).or_default() += n;
    }
    (
        drops
            .into_iter()
            .map(|(((ns, pod, name, iface), reason), count)| DropCount {
                namespace: ns.into(),
                pod: pod.into(),
                name: name.into(),
                interface: iface.into(),
                reason: reason.into(),
                count,
            })
            .collect(),
        retx.into_iter()
            .map(|((ns, pod, name), count)| RetransmitCount {
                namespace: ns.into(),
                pod: pod.into(),
                name: name.into(),
                count,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        drop_report::DropReport,
        model::{Peer, Pod, PodSource},
        probe::drops::DropReading,
    };

    const HOST: u64 = 4_026_531_840;

    fn port(ifindex: u32, name: &str, netns: u64, pod: &str) -> Port {
        Port {
            ifindex,
            name: name.into(),
            peer: Some(Peer {
                ifindex: 2,
                netns_inode: Some(netns),
                ..Peer::default()
            }),
            pod: Some(Pod {
                namespace: "shop".into(),
                name: pod.into(),
                uid: String::new(),
                source: PodSource::Cri,
                container: None,
            }),
            ..Port::default()
        }
    }

    fn drop_at(ifindex: u32, netns: u64, reason: &str, count: u64) -> DropReading {
        DropReading {
            ifindex,
            netns,
            reason: reason.into(),
            count,
        }
    }

    #[test]
    fn drops_go_to_the_veth_the_namespace_or_the_host() {
        let ports = [
            port(7, "vethA", 100, "api-1"),
            port(8, "vethB", 200, "api-2"),
        ];
        let counted = Counted {
            drops: vec![
                // On api-1's host veth.
                drop_at(7, HOST, "tc_ingress", 3),
                // Inside api-2: its eth0 (ifindex 2, not the host's 2) and a socket.
                drop_at(2, 200, "netfilter_drop", 5),
                drop_at(0, 200, "netfilter_drop", 1),
                // ifindex 7 in another namespace is not api-1's veth.
                drop_at(7, 999, "no_socket", 4),
                // The host's own device.
                drop_at(1, HOST, "no_socket", 2),
            ],
            retransmits: vec![(100, 9), (HOST, 1), (999, 2)],
            host_netns: HOST,
        };
        let (drops, retx) = attribute(&ports, &counted);
        let find = |pod: &str, reason: &str| {
            drops
                .iter()
                .find(|d| d.pod == pod && d.reason == reason)
                .map(|d| (d.interface.as_str(), d.count))
        };
        assert_eq!(find("api-1", "tc_ingress"), Some(("vethA", 3)));
        assert_eq!(find("api-2", "netfilter_drop"), Some(("vethB", 6)));
        assert_eq!(find("", "no_socket"), Some(("", 6)));
        assert_eq!(drops.len(), 3);
        let report = DropReport {
            drops,
            retransmits: retx,
            drops_on: true,
            retransmits_on: true,
        };
        assert_eq!(report.retransmits_of("shop", "api-1"), 9);
        assert_eq!(report.retransmits_of("", ""), 3);
        assert_eq!(report.drops_of("vethB"), 6);
        assert_eq!(report.reasons_of("vethB"), vec![("netfilter_drop", 6)]);
    }

    #[test]
    fn a_node_without_drops_has_no_series() {
        let ports = [port(7, "vethA", 100, "api-1")];
        let (d, r) = attribute(&ports, &Counted::default());
        assert!(d.is_empty() && r.is_empty());
    }
}
