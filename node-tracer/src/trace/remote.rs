//! `trace icmp --connect URL`: the [`EventSource`] of a running agent, its events streamed over
//! HTTP (`GET /trace/icmp`, lines as in [`wire`]), and the agent's snapshot to name their pods.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use node_tracer_client::{Agent, Credentials, Stream};
use node_tracer_common::IcmpEvent;
use tokio::time::Instant;

use super::{
    EventSource,
    wire::{self, Line},
};
use crate::model::{Port, Snapshot};
use crate::top::{HttpSource, SnapshotSource as _, SourceError};

/// Veths by ifindex, as the agent's last snapshot had them.
type Ports = Arc<Mutex<HashMap<u32, Port>>>;

/// A trace through a running agent: its event stream, and its snapshot to label the events. The
/// snapshot (a few MB on a big node) is read again only when an event comes from a veth whose
/// pod the last one did not name (a new pod), at most once a second, or when it is half a minute
/// old. It is read before that event is handed on, so a new pod's first packets carry its name.
pub struct AgentTrace {
    events: RemoteEvents,
    agent: HttpSource,
    ports: Ports,
    read_at: Instant,
    /// An event held while the snapshot is read for it: kept here, the read can be cancelled
    /// without losing it.
    pending: Option<IcmpEvent>,
    /// Veths the agent has attached, as of the first snapshot.
    pub attached: usize,
    /// The agent's node, as its first snapshot named it.
    pub node: Option<String>,
}

impl AgentTrace {
    pub async fn connect(url: &str, creds: &Credentials) -> Result<Self, SourceError> {
        Self::from_agent(Agent::new(url, creds)?).await
    }

    /// Reads the agent's snapshot, then opens its event stream.
    pub async fn from_agent(agent: Agent) -> Result<Self, SourceError> {
        let mut agent = HttpSource::from(agent);
        let snap = agent.next().await?;
        let node = snap.node.clone();
        let attached = snap.ports.iter().filter(|p| p.attached).count();
        let stream = agent.agent().stream("/trace/icmp").await?;
        Ok(Self {
            events: RemoteEvents::new(Box::new(stream)),
            agent,
            ports: Arc::new(Mutex::new(by_ifindex(snap))),
            read_at: Instant::now(),
            pending: None,
            attached,
            node,
        })
    }

    /// The pod lookup for [`super::Tracer`]: from the latest snapshot.
    pub fn ports(&self) -> impl Fn(u32) -> Option<Port> + use<> {
        let ports = self.ports.clone();
        move |ifindex| lock(&ports).get(&ifindex).cloned()
    }

    /// Why the stream ended early, if it did not just close.
    pub fn error(&self) -> Option<&str> {
        self.events.error()
    }

    /// Whether to read the snapshot again before handing on `ev`: its veth is new to us, or
    /// its pod is not known yet (the agent names it a moment after the veth appears).
    fn stale_for(&self, ev: &IcmpEvent) -> bool {
        let age = self.read_at.elapsed();
        age >= Duration::from_secs(30)
            || (age >= Duration::from_secs(1)
                && lock(&self.ports)
                    .get(&ev.ifindex)
                    .is_none_or(|p| p.pod.is_none()))
    }
}

fn by_ifindex(snap: Snapshot) -> HashMap<u32, Port> {
    snap.ports.into_iter().map(|p| (p.ifindex, p)).collect()
}

fn lock(ports: &Ports) -> std::sync::MutexGuard<'_, HashMap<u32, Port>> {
    ports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EventSource for AgentTrace {
    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = Option<IcmpEvent>> + Send + '_>> {
        Box::pin(async move {
            if self.pending.is_none() {
                self.pending = Some(self.events.next_event().await?);
            }
            if let Some(ev) = self.pending
                && self.stale_for(&ev)
            {
                self.read_at = Instant::now();
                match self.agent.next().await {
                    Ok(snap) => *lock(&self.ports) = by_ifindex(snap),
                    Err(e) => log::debug!("re-reading the agent's snapshot: {e}"),
                }
            }
            self.pending.take()
        })
    }

    fn try_next(&mut self) -> Option<IcmpEvent> {
        self.pending.take().or_else(|| self.events.try_next())
    }

    fn lost(&self) -> u64 {
        self.events.lost()
    }
}

/// Longest line accepted: an event line is under 400 bytes, so anything longer is not ours.
const MAX_LINE: usize = 64 << 10;

/// Where the stream's bytes come from: the agent's response body, or (in tests) pieces.
pub trait Chunks: Send {
    /// The next bytes, `Ok(None)` at the end. Cancel-safe.
    fn chunk(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<bytes::Bytes>, String>> + Send + '_>>;
}

impl Chunks for Stream {
    fn chunk(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<bytes::Bytes>, String>> + Send + '_>> {
        Box::pin(async move {
            Stream::chunk(self)
                .await
                .map_err(|e| node_tracer_client::one_line(&e))
        })
    }
}

pub struct RemoteEvents {
    stream: Box<dyn Chunks>,
    /// Bytes received and not yet parsed.
    buf: Vec<u8>,
    lost: u64,
    closed: bool,
    /// Why the stream cannot be read on (set when it ends for a reason other than the agent
    /// closing it cleanly).
    error: Option<String>,
}

impl RemoteEvents {
    /// The body of `GET /trace/icmp`.
    pub fn new(stream: Box<dyn Chunks>) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            lost: 0,
            closed: false,
            error: None,
        }
    }

    /// Why the stream ended early, if it did not just close.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The next whole line's event, from what is buffered; heartbeats only update the loss.
    fn parse_buffered(&mut self) -> Option<IcmpEvent> {
        while self.error.is_none() {
            let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    self.error = Some("a line too long: is this a node-tracer agent?".into());
                }
                return None;
            };
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let parsed = std::str::from_utf8(&line[..end])
                .map_err(|_| "a line that is not UTF-8")
                .and_then(wire::parse_line);
            match parsed {
                Ok(l) => {
                    self.lost = l.lost();
                    if let Line::Event(ev, _) = l {
                        return Some(*ev);
                    }
                }
                Err(why) => self.error = Some(why.into()),
            }
        }
        None
    }
}

impl EventSource for RemoteEvents {
    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = Option<IcmpEvent>> + Send + '_>> {
        Box::pin(async move {
            loop {
                if let Some(ev) = self.parse_buffered() {
                    return Some(ev);
                }
                if self.closed || self.error.is_some() {
                    return None;
                }
                // Cancel-safe: a read dropped before it completes has taken no bytes.
                match self.stream.chunk().await {
                    Ok(None) => self.closed = true,
                    Ok(Some(b)) => self.buf.extend_from_slice(&b),
                    Err(e) => self.error = Some(format!("reading the trace stream: {e}")),
                }
            }
        })
    }

    fn try_next(&mut self) -> Option<IcmpEvent> {
        self.parse_buffered()
    }

    fn lost(&self) -> u64 {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use node_tracer_common::SNAP_LEN;

    use super::*;

    fn event(seq: u8) -> IcmpEvent {
        IcmpEvent {
            ts_ns: 1_000_000_000 * u64::from(seq),
            ifindex: 7,
            len: 98,
            dir: 0,
            family: 4,
            icmp_type: 8,
            icmp_code: 0,
            cap_len: 42,
            l4_off: 34,
            data: [seq; SNAP_LEN],
        }
    }

    /// Pieces handed out one per read, each after a pause (so a reader really waits between
    /// them), then the end.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl Chunks for Pieces {
        fn chunk(
            &mut self,
        ) -> Pin<Box<dyn Future<Output = Result<Option<bytes::Bytes>, String>> + Send + '_>>
        {
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(self.0.pop_front().map(bytes::Bytes::from))
            })
        }
    }

    fn source(send: Vec<Vec<u8>>) -> RemoteEvents {
        RemoteEvents::new(Box::new(Pieces(send.into())))
    }

    #[tokio::test]
    async fn events_split_across_reads_heartbeats_and_the_end() {
        let one = wire::event_line(&event(1), 0).into_bytes();
        let (head, tail) = one.split_at(100);
        let two = wire::event_line(&event(2), 3);
        let mut src = source(vec![
            wire::heartbeat_line(0).into_bytes(),
            head.to_vec(),
            tail.to_vec(),
            format!("{}{two}", wire::heartbeat_line(2)).into_bytes(),
        ]);
        assert_eq!(src.next_event().await, Some(event(1)));
        assert_eq!(src.lost(), 0);
        assert_eq!(src.next_event().await, Some(event(2)));
        assert_eq!(src.lost(), 3);
        // The agent closed the connection: the end, and no error.
        assert_eq!(src.next_event().await, None);
        assert_eq!(src.error(), None);
    }

    #[tokio::test]
    async fn a_line_that_is_not_ours_ends_the_stream_with_a_reason() {
        let mut src = source(vec![b"<html>not an agent</html>\n".to_vec()]);
        assert_eq!(src.next_event().await, None);
        assert!(
            src.error()
                .is_some_and(|e| e.contains("not a trace stream line"))
        );
        let mut src = source(vec![vec![b'x'; MAX_LINE + 10]]);
        assert_eq!(src.next_event().await, None);
        assert!(src.error().is_some_and(|e| e.contains("too long")));
    }

    #[tokio::test]
    async fn try_next_takes_only_whole_buffered_lines() {
        let line = wire::event_line(&event(5), 0);
        let (head, _) = line.split_at(50);
        let mut src = source(Vec::new());
        src.buf = format!("{line}{head}").into_bytes();
        assert_eq!(src.try_next(), Some(event(5)));
        assert_eq!(src.try_next(), None);
    }
}
