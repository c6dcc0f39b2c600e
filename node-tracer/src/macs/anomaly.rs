//! What about a port's MACs deserves an operator's attention, decided from one snapshot.
//!
//! Observations run from when our programs attached (and the LRU map may evict the least recent
//! MACs on a very busy node), so every rule reads "seen since node-tracer attached".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::transmitted;
use crate::model::{FdbState, MacSeen, Pod, Port, Snapshot};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// The same source MAC sent from more than one port of a bridge.
    DuplicateMac,
    /// A pod sent frames from a MAC other than its eth0 MAC while also using its own.
    SpoofedSource,
    /// A pod's frames moved from one MAC to another, never both at once.
    MacChanged,
    /// A learned FDB entry with no frame from that MAC seen on its port.
    LearnedWithoutTraffic,
    /// The host veth is in promiscuous mode.
    Promiscuous,
    /// The bridge port reflects frames back to where they came from.
    Hairpin,
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::DuplicateMac => "duplicate_mac",
            AnomalyKind::SpoofedSource => "spoofed_source",
            AnomalyKind::MacChanged => "mac_changed",
            AnomalyKind::LearnedWithoutTraffic => "learned_without_traffic",
            AnomalyKind::Promiscuous => "promiscuous",
            AnomalyKind::Hairpin => "hairpin",
        }
    }
}

/// One flag on one port, with a short explanation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub interface: String,
    pub ifindex: u32,
    pub bridge: Option<String>,
    pub port_no: Option<u16>,
    pub pod: Option<Pod>,
    /// The MAC concerned (`None` for port flags).
    pub mac: Option<String>,
    pub detail: String,
}

/// Every anomaly of the snapshot, sorted by interface, kind and MAC.
pub fn anomalies(snap: &Snapshot) -> Vec<Anomaly> {
    let mut out = Vec::new();
    for p in &snap.ports {
        port_flags(p, &mut out);
        sources(p, &mut out);
    }
    duplicates(snap, &mut out);
    unobserved(snap, &mut out);
    out.sort_by(|a, b| (&a.interface, a.kind, &a.mac).cmp(&(&b.interface, b.kind, &b.mac)));
    out
}

fn flag(p: &Port, kind: AnomalyKind, mac: Option<&str>, detail: String) -> Anomaly {
    Anomaly {
        kind,
        interface: p.name.clone(),
        ifindex: p.ifindex,
        bridge: p.master.clone(),
        port_no: p.port_no,
        pod: p.pod.clone(),
        mac: mac.map(str::to_string),
        detail,
    }
}

fn port_flags(p: &Port, out: &mut Vec<Anomaly>) {
    if p.promiscuous {
        out.push(flag(
            p,
            AnomalyKind::Promiscuous,
            None,
            "promiscuous mode was set on the host veth by hand (the bridge's own promiscuity is \
             not reported): it accepts frames for any MAC; often a leftover from debugging"
                .into(),
        ));
    }
    if p.hairpin && !p.hairpin_expected {
        out.push(flag(
            p,
            AnomalyKind::Hairpin,
            None,
            "hairpin mode: the bridge sends frames back out of the port they came in on, so the \
             pod hears its own broadcasts; expected only with CNI hairpinMode or kubelet \
             hairpin-veth (a pod reaching itself through its Service)"
                .into(),
        ));
    }
}

/// What is worth knowing but is no anomaly: hairpin ports on a bridge whose CNI configuration
/// asks for hairpin mode (flannel's default, Podman's). Sorted like [`anomalies`].
pub fn notes(snap: &Snapshot) -> Vec<Anomaly> {
    snap.ports
        .iter()
        .filter(|p| p.hairpin && p.hairpin_expected)
        .map(|p| {
            flag(
                p,
                AnomalyKind::Hairpin,
                None,
                format!(
                    "hairpin mode, as the CNI configuration of {} asks (\"hairpinMode\": true): \
                     a pod can reach itself through its Service; expected",
                    p.master.as_deref().unwrap_or("its bridge")
                ),
            )
        })
        .collect()
}

/// Frames from a MAC other than the pod's eth0 MAC: spoofing when both were in use over the same
/// period, a MAC change when one use ended before the other began.
fn sources(p: &Port, out: &mut Vec<Anomaly>) {
    let Some(own) = p.peer.as_ref().and_then(|x| x.mac.as_deref()) else {
        return;
    };
    let own_seen = transmitted(p).find(|m| m.mac.eq_ignore_ascii_case(own));
    for f in transmitted(p).filter(|m| !m.mac.eq_ignore_ascii_case(own)) {
        let anomaly = if is_unicast(&f.mac) {
            match own_seen {
                Some(o) if overlaps(f, o) => flag(
                    p,
                    AnomalyKind::SpoofedSource,
                    Some(&f.mac),
                    format!(
                        "the pod sent {} frames from {} while also sending from its eth0 MAC \
                         {own}: forged source MACs, or a bridge or VM inside the pod",
                        f.packets, f.mac
                    ),
                ),
                Some(o) => {
                    // The earlier one is the former MAC, whichever the topology last read.
                    let (former, current) = if f.last_seen_ms <= o.first_seen_ms {
                        (f, o)
                    } else {
                        (o, f)
                    };
                    flag(
                        p,
                        AnomalyKind::MacChanged,
                        Some(&former.mac),
                        format!(
                            "the pod sent from {} until it switched to {}, never both at once: \
                             its MAC changed (neighbours' ARP caches and the FDB may still hold \
                             the old one)",
                            former.mac, current.mac
                        ),
                    )
                }
                None => flag(
                    p,
                    AnomalyKind::SpoofedSource,
                    Some(&f.mac),
                    format!(
                        "the pod sent {} frames from {}, which is not its eth0 MAC {own} (no \
                         frame from {own} was seen)",
                        f.packets, f.mac
                    ),
                ),
            }
        } else {
            flag(
                p,
                AnomalyKind::SpoofedSource,
                Some(&f.mac),
                format!(
                    "the pod sent {} frames with a multicast or zero source MAC: forged or \
                     malformed (the bridge drops them)",
                    f.packets
                ),
            )
        };
        out.push(anomaly);
    }
}

/// Strictly: times are coarse (a jiffy), so the last frame from an old MAC and the first from
/// the new one can share a millisecond without the pod ever using both.
fn overlaps(a: &MacSeen, b: &MacSeen) -> bool {
    a.first_seen_ms < b.last_seen_ms && b.first_seen_ms < a.last_seen_ms
}

/// Not multicast (which includes broadcast) and not all zeroes: the only sources a bridge
/// learns.
pub(crate) fn is_unicast(mac: &str) -> bool {
    let first = mac
        .split(':')
        .next()
        .and_then(|o| u8::from_str_radix(o, 16).ok());
    let zero = mac.split(':').all(|o| o == "00");
    first.is_some_and(|b| b & 1 == 0) && !zero
}

fn pod_name(p: &Port) -> String {
    match &p.pod {
        Some(pod) if pod.namespace.is_empty() => format!("{} ({})", p.name, pod.name),
        Some(pod) => format!("{} ({}/{})", p.name, pod.namespace, pod.name),
        None => p.name.clone(),
    }
}

/// A unicast MAC behind more than one port of the same bridge (one L2 domain): sent from
/// there, or simply configured on the pod's eth0. The configuration alone is enough: two pods
/// whose eth0 carry the same MAC collide the moment they talk, whether or not either sent a frame
/// while we watched. Routed veths are point-to-point links each: the same MAC on two of them
/// harms nothing.
fn duplicates(snap: &Snapshot, out: &mut Vec<Anomaly>) {
    // Per (bridge, MAC): each port once, and whether it was seen sending it.
    let mut by_mac: BTreeMap<(&str, String), Vec<(&Port, bool)>> = BTreeMap::new();
    for p in &snap.ports {
        let Some(bridge) = p.master.as_deref() else {
            continue;
        };
        let mut macs: BTreeMap<String, bool> = transmitted(p)
            .filter(|m| is_unicast(&m.mac))
            .map(|m| (m.mac.to_ascii_lowercase(), true))
            .collect();
        if let Some(own) = p.peer.as_ref().and_then(|x| x.mac.as_deref())
            && is_unicast(own)
        {
            macs.entry(own.to_ascii_lowercase()).or_insert(false);
        }
        for (mac, sent) in macs {
            by_mac.entry((bridge, mac)).or_default().push((p, sent));
        }
    }
    for ((bridge, mac), ports) in by_mac.into_iter().filter(|(_, v)| v.len() > 1) {
        let fdb = snap
            .fdb
            .iter()
            .find(|e| {
                e.bridge == bridge
                    && e.mac.eq_ignore_ascii_case(&mac)
                    && e.state == FdbState::Learned
            })
            .map_or_else(String::new, |e| {
                format!("; the bridge now forwards it to {}", e.interface)
            });
        let all_sent = ports.iter().all(|(_, sent)| *sent);
        for (p, _) in &ports {
            let others: Vec<String> = ports
                .iter()
                .filter(|(o, _)| o.ifindex != p.ifindex)
                .map(|(o, _)| pod_name(o))
                .collect();
            let detail = if all_sent {
                format!(
                    "also sent from {}: two pods share this MAC, or it moves between ports \
                     (flapping){fdb}",
                    others.join(", ")
                )
            } else {
                format!(
                    "also behind {} (an eth0 configured with it, or frames sent from it): two \
                     pods on one bridge share this MAC, and frames for it reach only one of \
                     them{fdb}",
                    others.join(", ")
                )
            };
            out.push(flag(p, AnomalyKind::DuplicateMac, Some(&mac), detail));
        }
    }
}

/// A learned entry on a port we watch, for a MAC we never saw the pod send: learned before we
/// attached (and idle since), added by hand as `dynamic`, or evicted from our map.
fn unobserved(snap: &Snapshot, out: &mut Vec<Anomaly>) {
    for e in &snap.fdb {
        if e.state != FdbState::Learned || e.extern_learn {
            continue;
        }
        let Some(p) = snap
            .ports
            .iter()
            .find(|p| p.ifindex == e.ifindex && p.attached)
        else {
            continue;
        };
        if transmitted(p).any(|m| m.mac.eq_ignore_ascii_case(&e.mac)) {
            continue;
        }
        // One flag per MAC, even when the entry exists in several VLANs.
        if out.iter().any(|a| {
            a.kind == AnomalyKind::LearnedWithoutTraffic
                && a.ifindex == p.ifindex
                && a.mac.as_deref() == Some(e.mac.as_str())
        }) {
            continue;
        }
        let elsewhere: Vec<String> = snap
            .ports
            .iter()
            .filter(|o| o.ifindex != p.ifindex && transmitted(o).any(|m| m.mac == e.mac))
            .map(pod_name)
            .collect();
        let elsewhere = if elsewhere.is_empty() {
            String::new()
        } else {
            format!("; it was seen from {}", elsewhere.join(", "))
        };
        out.push(flag(
            p,
            AnomalyKind::LearnedWithoutTraffic,
            Some(&e.mac),
            format!(
                "the bridge learned {} on this port (refreshed {:.1}s ago) but no frame from it \
                 was seen here since node-tracer attached: learned before, added by hand, or a \
                 stale entry{elsewhere}",
                e.mac,
                e.updated_ms as f64 / 1000.0
            ),
        ));
    }
}
