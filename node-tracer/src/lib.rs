//! node-tracer: an eBPF traffic observer for container nodes.
//!
//! `probe` loads and attaches the tc programs and reads their maps; `topology` reads the host's
//! veths, bridges and peers over netlink; `pods` finds the pod behind each peer namespace;
//! `snapshot` joins them into the one [`model::Snapshot`] that `metrics`, `top`, `peers`, `macs`
//! and `trace` render.

pub mod agent;
pub mod agents;
pub mod api;
pub mod clock;
pub mod coverage;
pub mod direction;
pub mod drop_report;
pub mod drops;
pub mod error;
pub mod failures;
pub mod icmp;
pub mod macs;
pub mod metrics;
pub mod model;
pub mod node;
pub mod peers;
pub mod pods;
pub mod probe;
pub mod published;
pub mod shutdown;
pub mod snapshot;
pub mod tcp;
pub mod top;
pub mod topology;
pub mod trace;
