//! Joins topology, pods and the programs' counters into the one [`Snapshot`] every view reads.

use std::collections::HashMap;

use crate::{
    model::{Port, Snapshot},
    pods::PodIndex,
    probe::PortReading,
    topology::Topology,
};

/// Builds the snapshot: every veth of `topology`, labelled with its pod and carrying the counters
/// read from the maps. `attached` tells which ports our programs are on.
pub fn build(
    topology: &Topology,
    pods: &PodIndex,
    readings: &HashMap<u32, PortReading>,
    is_attached: impl Fn(u32) -> bool,
) -> Snapshot {
    let ports = topology
        .ports
        .iter()
        .map(|p| {
            let mut port: Port = p.clone();
            pods.label(&mut port);
            port.attached = is_attached(p.ifindex);
            if let Some(r) = readings.get(&p.ifindex) {
                port.counters.clone_from(&r.counters);
                port.macs.clone_from(&r.macs);
            }
            port
        })
        .collect();
    Snapshot {
        taken_at_ms: now_ms(),
        ports,
        bridges: topology.bridges.clone(),
        fdb: Vec::new(),
        drops: crate::drop_report::DropReport::default(),
        node: None,
        unreachable: Vec::new(),
        taken_at_by_node: std::collections::BTreeMap::new(),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
