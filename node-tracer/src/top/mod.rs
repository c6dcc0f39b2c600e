//! `node-tracer top`: the live view. One row per host-side veth with its pod, wiring, rates
//! from the pod's point of view, protocol mix and MACs; sortable, filterable, with a detail
//! pane and per-bridge totals.
//!
//! The state ([`app`]) and the drawing ([`render`]) are pure and tested with ratatui's
//! `TestBackend`; only [`term`] touches the terminal, and snapshots come in through
//! [`SnapshotSource`] so the view runs without root.

pub mod app;
mod columns;
mod detail;
#[cfg(test)]
mod fixtures;
pub mod fmt;
mod local;
mod loss;
mod nodes;
pub mod rates;
pub mod render;
mod row;
mod sort;
pub mod source;
#[cfg(test)]
mod state_tests;
mod tcp;
mod term;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use fmt::icmp_type_name;
pub use nodes::NodesSource;
pub use source::{HttpSource, SnapshotSource, SourceError};
pub use term::{require_terminal, run};

/// How `top` starts.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Time between snapshots.
    pub interval: Duration,
    /// Initial filter (matches pod, namespace, veth, bridge).
    pub filter: Option<String>,
    /// Initial sort column, by [`app::SortKey::name`]; a leading `-` reverses it.
    pub sort: Option<String>,
}

impl Default for TopOptions {
    fn default() -> Self {
        TopOptions {
            interval: Duration::from_secs(1),
            filter: None,
            sort: None,
        }
    }
}
