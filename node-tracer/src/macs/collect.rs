//! Where `macs` gets its snapshot: a running agent, or our own programs attached for a while
//! (observed MACs exist only while programs are attached).

use std::time::Duration;

use crate::{
    error::{Error, Result},
    model::Snapshot,
    node::{Node, NodeOptions},
};

/// Where to read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A running `node-tracer run`, so the node is not attached twice.
    Connect(node_tracer_client::Agent),
    /// Attach our own programs for `duration`, then read (Ctrl-C reads at once).
    Attach {
        node: Box<NodeOptions>,
        duration: Duration,
    },
}

/// Takes one snapshot from `source`.
pub async fn collect(source: Source) -> Result<Snapshot> {
    match source {
        Source::Connect(agent) => {
            // Straight from the API client: `macs` needs nothing of `top`.
            let body = agent.get("/snapshot").await.map_err(Error::AgentSnapshot)?;
            serde_json::from_slice(&body).map_err(Error::SnapshotJson)
        }
        Source::Attach { node, duration } => {
            let node = Node::start(&node).await?;
            log::info!(
                "watching source MACs for {:.1}s; Ctrl-C to stop early",
                duration.as_secs_f64()
            );
            let waited = tokio::select! {
                () = tokio::time::sleep(duration) => Ok(()),
                r = crate::shutdown::wait() => r.map(drop),
            };
            // A few syscalls and one netlink dump: short enough to run on this thread.
            let snap = node.snapshot();
            node.stop();
            waited.map_err(|e| Error::io("wait for a stop signal", e))?;
            Ok(snap)
        }
    }
}
