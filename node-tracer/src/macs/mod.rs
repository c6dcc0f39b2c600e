//! `node-tracer macs`: `brctl showmacs` that knows the pods.
//!
//! Per bridge and port: the kernel's FDB entries (port number, MAC, local or learned, ageing)
//! joined with the veth and pod behind the port and with the source MACs our programs saw the
//! pod send; routed veths (no bridge) with the MACs they sent; and the [`anomalies`] an operator
//! wants to hear about. Everything here is a pure function of a [`Snapshot`].
//!
//! Only the transmit direction (host veth ingress) is joined: those are the frames the bridge
//! learns from. The source MACs a pod *received* are other ports' MACs; they stay in
//! `/snapshot`.

mod anomaly;
mod collect;
mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use anomaly::{Anomaly, AnomalyKind, anomalies, notes};
pub use collect::{Source, collect};
pub use render::to_table;

use crate::error::Error;
use crate::model::{Direction, FdbEntry, FdbState, MacSeen, Pod, Port, PortKind, Snapshot};

/// What `macs --json` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Milliseconds since the Unix epoch when the snapshot was taken.
    pub taken_at_ms: u64,
    pub bridges: Vec<BridgeMacs>,
    /// Veths with no bridge (routed, or unattached): only what they sent.
    pub routed: Vec<PortMacs>,
    pub anomalies: Vec<Anomaly>,
    /// Information, not anomalies: what looks odd but is the configuration working (a hairpin
    /// port where the CNI configuration asks for hairpin mode). Absent from older agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Anomaly>,
    /// The node, in `macs` over several agents (one report per node: MACs repeat across nodes
    /// without being duplicates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BridgeMacs {
    pub name: String,
    pub ifindex: u32,
    /// By port number; the bridge's own entries (no port number) last.
    pub ports: Vec<PortMacs>,
}

/// One port (or routed veth) and the MACs behind it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PortMacs {
    pub interface: String,
    pub ifindex: u32,
    /// `None` for a routed veth, or for the bridge's own entries.
    pub port_no: Option<u16>,
    /// "tap" or "uplink" (the node's NIC in a bridge, a VXLAN); absent for a veth.
    #[serde(default, skip_serializing_if = "PortKind::is_veth")]
    pub kind: PortKind,
    pub pod: Option<Pod>,
    /// The pod's eth0 MAC (the veth's peer).
    pub peer_mac: Option<String>,
    /// Whether our programs watch this port: without them there is nothing "seen".
    pub attached: bool,
    pub promiscuous: bool,
    pub hairpin: bool,
    /// By MAC.
    pub macs: Vec<MacRow>,
}

/// A MAC behind a port: in the FDB, sent from the pod, or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MacRow {
    pub mac: String,
    /// The FDB's entries for this MAC on this port (one per VLAN); empty when the bridge does
    /// not send this MAC here.
    pub fdb: Vec<FdbFacts>,
    /// Frames the pod sent with this source MAC, since our programs attached.
    pub transmit: Option<Seen>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdbFacts {
    pub vlan: Option<u16>,
    pub state: FdbState,
    /// brctl's "is local?": a MAC of the port or bridge itself.
    pub local: bool,
    pub extern_learn: bool,
    pub sticky: bool,
    /// Milliseconds since the bridge last refreshed the entry (brctl's ageing timer).
    pub ageing_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

impl From<&MacSeen> for Seen {
    fn from(m: &MacSeen) -> Self {
        Self {
            packets: m.packets,
            bytes: m.bytes,
            first_seen_ms: m.first_seen_ms,
            last_seen_ms: m.last_seen_ms,
        }
    }
}

impl From<&FdbEntry> for FdbFacts {
    fn from(e: &FdbEntry) -> Self {
        Self {
            vlan: e.vlan,
            state: e.state,
            local: e.state == FdbState::Local,
            extern_learn: e.extern_learn,
            sticky: e.sticky,
            ageing_ms: e.updated_ms,
        }
    }
}

/// Joins the snapshot into per-port rows; only `bridge` (and no routed veths) when given.
pub fn report(snap: &Snapshot, bridge: Option<&str>) -> Result<Report, Error> {
    let mut names: Vec<(u32, &str)> = snap
        .bridges
        .iter()
        .map(|b| (b.ifindex, b.name.as_str()))
        .collect();
    for e in &snap.fdb {
        if !names.iter().any(|(_, n)| *n == e.bridge) {
            names.push((e.bridge_ifindex, e.bridge.as_str()));
        }
    }
    names.sort_unstable();
    if let Some(b) = bridge
        && !names.iter().any(|(_, n)| *n == b)
    {
        return Err(Error::NoSuchBridge(b.to_string()));
    }
    let bridges = names
        .into_iter()
        .filter(|(_, n)| bridge.is_none_or(|b| b == *n))
        .map(|(ifindex, name)| bridge_rows(snap, ifindex, name))
        .collect();
    let routed = if bridge.is_some() {
        Vec::new()
    } else {
        snap.ports
            .iter()
            .filter(|p| p.master.is_none())
            .map(port_row)
            .collect()
    };
    let on_bridge = |a: &Anomaly| bridge.is_none_or(|b| a.bridge.as_deref() == Some(b));
    let anomalies = anomalies(snap).into_iter().filter(on_bridge).collect();
    let notes = notes(snap).into_iter().filter(on_bridge).collect();
    Ok(Report {
        taken_at_ms: snap.taken_at_ms,
        bridges,
        routed,
        anomalies,
        notes,
        node: None,
    })
}

pub fn to_json(report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}

fn bridge_rows(snap: &Snapshot, ifindex: u32, name: &str) -> BridgeMacs {
    let mut ports: BTreeMap<u32, PortMacs> = snap
        .ports
        .iter()
        .filter(|p| p.master.as_deref() == Some(name))
        .map(|p| (p.ifindex, port_row(p)))
        .collect();
    for e in snap.fdb.iter().filter(|e| e.bridge == name) {
        // Ports that are not veths (a VXLAN device, a NIC) and the bridge itself exist only in
        // the FDB.
        let row = ports.entry(e.ifindex).or_insert_with(|| PortMacs {
            interface: e.interface.clone(),
            ifindex: e.ifindex,
            port_no: e.port_no,
            ..PortMacs::default()
        });
        match row.macs.iter_mut().find(|m| m.mac == e.mac) {
            Some(m) => m.fdb.push(e.into()),
            None => row.macs.push(MacRow {
                mac: e.mac.clone(),
                fdb: vec![e.into()],
                transmit: None,
            }),
        }
    }
    let mut ports: Vec<PortMacs> = ports.into_values().collect();
    for p in &mut ports {
        p.macs.sort_by(|a, b| a.mac.cmp(&b.mac));
        for m in &mut p.macs {
            m.fdb.sort_by_key(|f| f.vlan);
        }
    }
    ports.sort_by(|a, b| {
        (a.port_no.is_none(), a.port_no, &a.interface).cmp(&(
            b.port_no.is_none(),
            b.port_no,
            &b.interface,
        ))
    });
    BridgeMacs {
        name: name.to_string(),
        ifindex,
        ports,
    }
}

fn port_row(p: &Port) -> PortMacs {
    PortMacs {
        interface: p.name.clone(),
        ifindex: p.ifindex,
        port_no: p.port_no,
        kind: p.kind,
        pod: p.pod.clone(),
        peer_mac: p.peer.as_ref().and_then(|x| x.mac.clone()),
        attached: p.attached,
        promiscuous: p.promiscuous,
        hairpin: p.hairpin,
        macs: transmitted(p)
            .map(|m| MacRow {
                mac: m.mac.clone(),
                fdb: Vec::new(),
                transmit: Some(m.into()),
            })
            .collect(),
    }
}

/// The source MACs of frames the pod sent (host veth ingress).
pub(crate) fn transmitted(p: &Port) -> impl Iterator<Item = &MacSeen> {
    p.macs.iter().filter(|m| m.direction == Direction::Transmit)
}
