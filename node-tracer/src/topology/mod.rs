//! The host's veths, bridges and their peers, read over netlink (rtnetlink), never by parsing
//! `ip` output.
//!
//! CONTRACT (used by snapshot/agent; keep these signatures):
//! - `pub struct Topology { pub ports: Vec<model::Port>, pub bridges: Vec<model::Bridge> }`
//!   ports: one per veth in the host netns, sorted by ifindex; `counters`, `macs`, `pod`,
//!   `attached` left default. `peer.netns_inode` set when the peer's namespace was opened.
//! - `pub async fn scan(opts: &ScanOptions) -> Result<Topology, TopologyError>`
//! - `pub fn watch() -> Result<LinkWatcher, TopologyError>`; `LinkWatcher::next().await ->
//!   Option<LinkEvent>` with `LinkEvent::{Added{ifindex,name}, Removed{ifindex,name}, Resync}`
//!   (Resync after ENOBUFS: the caller rescans everything).

// TEMPORARY stand-in until the netlink implementation lands: sysfs only, no peers, no events.
use std::path::PathBuf;

use crate::model::{Bridge, Mode, Port};

#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub ports: Vec<Port>,
    pub bridges: Vec<Bridge>,
}

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub extra_netns_paths: Vec<PathBuf>,
    pub proc_root: PathBuf,
    pub netns_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("topology: {0}")]
pub struct TopologyError(String);

pub async fn scan(_opts: &ScanOptions) -> Result<Topology, TopologyError> {
    let mut t = Topology::default();
    let rd = std::fs::read_dir("/sys/class/net").map_err(|e| TopologyError(e.to_string()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let base = e.path();
        let read = |f: &str| {
            std::fs::read_to_string(base.join(f))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let ifindex: u32 = read("ifindex").parse().unwrap_or(0);
        let iflink: u32 = read("iflink").parse().unwrap_or(0);
        if base.join("bridge").exists() {
            t.bridges.push(Bridge {
                ifindex,
                name,
                ..Bridge::default()
            });
            continue;
        }
        let is_veth = std::fs::read_to_string(base.join("uevent"))
            .unwrap_or_default()
            .is_empty()
            && iflink != ifindex
            && read("type") == "1";
        if !is_veth && iflink == ifindex {
            continue;
        }
        let master = std::fs::read_link(base.join("master"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()));
        t.ports.push(Port {
            ifindex,
            name,
            mode: if master.is_some() {
                Mode::Bridged
            } else {
                Mode::Unattached
            },
            master,
            ..Port::default()
        });
    }
    t.ports.sort_by_key(|p| p.ifindex);
    Ok(t)
}

pub struct LinkWatcher;

pub enum LinkEvent {
    Added { ifindex: u32, name: String },
    Removed { ifindex: u32, name: String },
    Resync,
}

impl LinkWatcher {
    pub async fn next(&mut self) -> Option<LinkEvent> {
        std::future::pending().await
    }
}

pub fn watch() -> Result<LinkWatcher, TopologyError> {
    Ok(LinkWatcher)
}
