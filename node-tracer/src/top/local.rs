//! `top` without an agent: snapshots straight from a [`Node`](crate::node::Node) this process
//! attached itself.

use std::future::{Future, ready};

use super::source::{SnapshotSource, SourceError};
use crate::model::Snapshot;
use crate::node::{LocalSource, lock};

impl SnapshotSource for LocalSource {
    fn next(&mut self) -> impl Future<Output = Result<Snapshot, SourceError>> {
        ready(Ok(lock(&self.state).snapshot()))
    }
}
