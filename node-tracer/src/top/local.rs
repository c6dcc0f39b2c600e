//! `top` without an agent: snapshots straight from a [`Node`](crate::node::Node) this process
//! attached itself.

use std::future::{Future, ready};

use super::source::{SnapshotSource, SourceError};
use crate::model::Snapshot;
use crate::node::LocalSource;

impl SnapshotSource for LocalSource {
    fn next(&mut self) -> impl Future<Output = Result<Snapshot, SourceError>> {
        // The read path: counters read now, no lock the attach side holds.
        ready(Ok(self.state.read.snapshot()))
    }
}
