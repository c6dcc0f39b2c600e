//! One row of the table: what it shows for a port, computed once per snapshot.

use std::collections::BTreeSet;

use super::rates::{self, Rates};
use crate::model::{Mode, Port};

/// One table row: everything the table shows, precomputed per snapshot so drawing a frame only
/// formats the visible rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Index into the current snapshot's `ports`.
    pub port: usize,
    pub ifindex: u32,
    /// The node, in a view over several agents.
    pub node: Option<String>,
    /// `namespace/name`, or `-` when no pod was found.
    pub pod: String,
    pub veth: String,
    /// Bridge name, `routed`, or `-`.
    pub bridge: String,
    pub port_no: Option<u16>,
    pub peer: String,
    pub rates: Rates,
    pub macs: usize,
    /// Packets dropped per second on the pod's veth or inside the pod, and TCP segments its
    /// namespace retransmitted per second (see `loss`).
    pub drops: f64,
    pub retx: f64,
    /// Packets the kernel counted on the veth that our hooks never saw, both directions (see
    /// `coverage`); `None` where our programs are not attached, so nothing is compared.
    pub unseen: Option<u64>,
    /// Lower-case text the filter matches: pod, namespace, veth, bridge, node.
    pub(super) haystack: String,
}

/// A veth across samples: its ifindex on its node (ifindexes repeat from node to node).
pub type RowKey = (Option<String>, u32);

impl Row {
    pub fn key(&self) -> RowKey {
        (self.node.clone(), self.ifindex)
    }

    /// The bridge as the totals name it: per node in a view over several agents.
    pub fn bridge_total(&self) -> String {
        match &self.node {
            Some(n) => format!("{n}/{}", self.bridge),
            None => self.bridge.clone(),
        }
    }
}

/// The peer as the pod's own `ip link` prints it: `eth0@ifN`, where N is the ifindex of the
/// host-side veth (the link's other end, seen from inside the pod).
pub fn peer_label(p: &Port) -> String {
    match &p.peer {
        Some(peer) => format!("{}@if{}", peer.name.as_deref().unwrap_or("?"), p.ifindex),
        None => "-".to_owned(),
    }
}

pub(super) fn build_row(i: usize, p: &Port, prev: Option<&Port>, elapsed_ms: u64) -> Row {
    let pod = p.pod.as_ref().map_or_else(
        || "-".to_owned(),
        // Named namespaces and processes have no Kubernetes namespace: show the name alone.
        crate::model::Pod::qualified_name,
    );
    let bridge = match (p.mode, &p.master) {
        (_, Some(m)) => m.clone(),
        (Mode::Routed, None) => "routed".to_owned(),
        _ => "-".to_owned(),
    };
    let macs = p
        .macs
        .iter()
        .map(|m| m.mac.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    let node = p.node.as_deref().unwrap_or_default();
    let haystack = format!("{pod}\n{}\n{bridge}\n{node}", p.name).to_lowercase();
    Row {
        port: i,
        ifindex: p.ifindex,
        node: p.node.clone(),
        pod,
        veth: p.name.clone(),
        bridge,
        port_no: p.port_no,
        peer: peer_label(p),
        rates: rates::port_rates(prev.map(|q| &q.counters), &p.counters, elapsed_ms),
        macs,
        drops: 0.0,
        retx: 0.0,
        unseen: p
            .attached
            .then(|| p.counters.unseen_rx + p.counters.unseen_tx),
        haystack,
    }
}
