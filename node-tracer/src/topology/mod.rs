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
