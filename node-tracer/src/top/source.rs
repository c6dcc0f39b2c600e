//! Where `top` gets its snapshots: the local probe (wired by the CLI) or a running agent's
//! JSON at `URL/snapshot`, read through the one API client ([`node_tracer_client::Agent`]).

use std::future::Future;

use node_tracer_client::{Agent, ClientError, Credentials};

use crate::model::Snapshot;

/// A supply of snapshots. `top` calls `next` once per interval from its own thread, on a
/// current-thread tokio runtime it owns; tasks `next` spawns live on that runtime.
pub trait SnapshotSource: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Snapshot, SourceError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// A view over several agents, none of which answered: each named, with its reason.
    #[error("no agent answered: {0}")]
    NoAgent(String),
    #[error("snapshot JSON")]
    Json(#[from] serde_json::Error),
    /// For sources other than HTTP (the local probe) to carry their own error.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl SourceError {
    /// The error and its causes on one line, for a view that shows it as text.
    pub fn one_line(&self) -> String {
        node_tracer_client::one_line(self)
    }
}

/// Reads `URL/snapshot` from a running `node-tracer run`.
#[derive(Debug, Clone)]
pub struct HttpSource {
    agent: Agent,
}

impl HttpSource {
    /// `url` as [`node_tracer_client::AgentUrl`] takes it, with `creds` read now.
    pub fn new(url: &str, creds: &Credentials) -> Result<HttpSource, SourceError> {
        Ok(HttpSource {
            agent: Agent::new(url, creds)?,
        })
    }

    /// The agent, for its other endpoints.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The full URL fetched, for messages.
    pub fn url(&self) -> String {
        self.agent.url("/snapshot")
    }
}

impl From<Agent> for HttpSource {
    fn from(agent: Agent) -> Self {
        Self { agent }
    }
}

impl SnapshotSource for HttpSource {
    async fn next(&mut self) -> Result<Snapshot, SourceError> {
        let body = self.agent.get("/snapshot").await?;
        Ok(serde_json::from_slice(&body)?)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn fetches_a_snapshot_over_tcp() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let snap = Snapshot {
            taken_at_ms: 42,
            ..Snapshot::default()
        };
        let body = serde_json::to_vec(&snap).unwrap();
        let server = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 1024];
            let n = c.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).into_owned();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            c.write_all(head.as_bytes()).await.unwrap();
            c.write_all(&body).await.unwrap();
            req
        });
        let mut src = HttpSource::new(&format!("http://{addr}"), &Credentials::default()).unwrap();
        assert_eq!(src.next().await.unwrap(), snap);
        assert!(
            server
                .await
                .unwrap()
                .starts_with("GET /snapshot HTTP/1.1\r\n")
        );
    }

    #[tokio::test]
    async fn refused_connection_is_an_error_not_a_hang() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut src = HttpSource::new(&format!("{addr}"), &Credentials::default()).unwrap();
        let e = src.next().await.unwrap_err();
        assert!(
            matches!(e, SourceError::Agent(ClientError::Connect { .. })),
            "{e:?}"
        );
        // Its cause is said once (anyhow's `{:#}` and our one_line both walk the chain).
        let line = e.one_line();
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
        assert_eq!(
            format!("{:#}", anyhow::Error::new(e))
                .matches("Connection refused")
                .count(),
            1
        );
    }
}
