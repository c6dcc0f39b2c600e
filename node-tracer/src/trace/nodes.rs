//! `trace icmp` over several agents: their event streams as one [`EventSource`], each veth
//! named with its node, so one ping's request leaving a pod on one node and entering a pod on
//! another is one path in the summary.
//!
//! ifindexes repeat from node to node, and the tracer looks veths up by ifindex alone: each
//! (agent, ifindex) gets an id of its own here, which the lookup turns back into the veth with
//! its real ifindex and its node.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::future::join_all;
use node_tracer_client::Agent;
use node_tracer_common::IcmpEvent;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{AgentTrace, EventSource};
use crate::agents::{address, node_labels};
use crate::model::Port;

type Lookup = Arc<dyn Fn(u32) -> Option<Port> + Send + Sync>;

enum Msg {
    Event(IcmpEvent),
    /// The agent's stream ended; why, when it did not just close.
    Ended(usize, Option<String>),
}

/// (agent, ifindex) <-> the id the tracer sees.
#[derive(Default)]
struct Ids {
    by_key: HashMap<(usize, u32), u32>,
    keys: Vec<(usize, u32)>,
}

impl Ids {
    fn id(&mut self, agent: usize, ifindex: u32) -> u32 {
        let next = u32::try_from(self.keys.len() + 1).unwrap_or(u32::MAX);
        *self.by_key.entry((agent, ifindex)).or_insert_with(|| {
            self.keys.push((agent, ifindex));
            next
        })
    }

    fn key(&self, id: u32) -> Option<(usize, u32)> {
        self.keys
            .get(usize::try_from(id).ok()?.checked_sub(1)?)
            .copied()
    }
}

struct Node {
    label: String,
    address: String,
    lookup: Lookup,
    lost: Arc<AtomicU64>,
}

/// The event streams of several agents, merged as they arrive.
pub struct NodesTrace {
    nodes: Arc<Vec<Node>>,
    ids: Arc<Mutex<Ids>>,
    rx: mpsc::UnboundedReceiver<Msg>,
    tasks: Vec<JoinHandle<()>>,
    /// Streams still open.
    live: usize,
    /// Veths the agents have attached, as of their first snapshots.
    pub attached: usize,
}

impl NodesTrace {
    /// Connects to every agent at once. One that does not answer is named in a warning and left
    /// out; the error is the agents' (each named) only when none answers.
    pub async fn connect(agents: Vec<Agent>) -> Result<Self, String> {
        let addresses: Vec<String> = agents.iter().map(address).collect();
        let got = join_all(agents.into_iter().map(AgentTrace::from_agent)).await;
        let mut traces = Vec::new();
        let mut failed = Vec::new();
        for (addr, r) in addresses.into_iter().zip(got) {
            match r {
                Ok(t) => traces.push((addr, t)),
                Err(e) => {
                    log::warn!(
                        "the agent at {addr} is left out: {}",
                        node_tracer_client::one_line(&e)
                    );
                    failed.push(format!("{addr}: {}", e.one_line()));
                }
            }
        }
        if traces.is_empty() {
            return Err(format!("no agent answered: {}", failed.join("; ")));
        }
        let labels = node_labels(
            &traces
                .iter()
                .map(|(addr, t)| (t.node.clone(), addr.clone()))
                .collect::<Vec<_>>(),
        );
        let attached = traces.iter().map(|(_, t)| t.attached).sum();
        let nodes: Vec<Node> = traces
            .iter()
            .zip(labels)
            .map(|((addr, t), label)| Node {
                label,
                address: addr.clone(),
                lookup: Arc::new(t.ports()),
                lost: Arc::new(AtomicU64::new(0)),
            })
            .collect();
        let ids = Arc::new(Mutex::new(Ids::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = traces
            .into_iter()
            .enumerate()
            .map(|(i, (_, t))| {
                tokio::spawn(follow(i, t, tx.clone(), ids.clone(), nodes[i].lost.clone()))
            })
            .collect();
        Ok(Self {
            live: nodes.len(),
            nodes: Arc::new(nodes),
            ids,
            rx,
            tasks,
            attached,
        })
    }

    /// The agents' names (node, else address), in the order given.
    pub fn labels(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.label.clone()).collect()
    }

    /// The veth lookup for [`super::Tracer`]: the veth on its node, with its node and real
    /// ifindex (a veth the agent's snapshot does not have yet is named `if<N>`).
    pub fn ports(&self) -> impl Fn(u32) -> Option<Port> + use<> {
        let (nodes, ids) = (self.nodes.clone(), self.ids.clone());
        move |id| {
            let (agent, ifindex) = lock(&ids).key(id)?;
            let node = nodes.get(agent)?;
            let mut port = (node.lookup)(ifindex).unwrap_or_else(|| Port {
                ifindex,
                name: format!("if{ifindex}"),
                ..Port::default()
            });
            port.node = Some(node.label.clone());
            Some(port)
        }
    }

    fn ended(&mut self, agent: usize, why: Option<&str>) {
        self.live = self.live.saturating_sub(1);
        let Some(n) = self.nodes.get(agent) else {
            return;
        };
        let why = why.map(|w| format!(": {w}")).unwrap_or_default();
        if self.live > 0 {
            log::warn!(
                "the agent of node {} at {} ended its trace stream{why}; tracing on with the \
                 other {}",
                n.label,
                n.address,
                self.live
            );
        } else {
            log::warn!(
                "the agent of node {} at {} ended its trace stream{why}; no agent left",
                n.label,
                n.address
            );
        }
    }
}

impl Drop for NodesTrace {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(ids: &Mutex<Ids>) -> std::sync::MutexGuard<'_, Ids> {
    ids.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands one agent's events on, under their ids, until its stream ends.
async fn follow(
    agent: usize,
    mut trace: AgentTrace,
    tx: mpsc::UnboundedSender<Msg>,
    ids: Arc<Mutex<Ids>>,
    lost: Arc<AtomicU64>,
) {
    while let Some(mut ev) = trace.next_event().await {
        lost.store(trace.lost(), Ordering::Relaxed);
        ev.ifindex = lock(&ids).id(agent, ev.ifindex);
        if tx.send(Msg::Event(ev)).is_err() {
            return;
        }
    }
    let _ = tx.send(Msg::Ended(agent, trace.error().map(str::to_owned)));
}

impl EventSource for NodesTrace {
    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = Option<IcmpEvent>> + Send + '_>> {
        Box::pin(async move {
            while self.live > 0 {
                // Cancel-safe: a message is taken only when recv completes.
                match self.rx.recv().await? {
                    Msg::Event(ev) => return Some(ev),
                    Msg::Ended(i, why) => self.ended(i, why.as_deref()),
                }
            }
            None
        })
    }

    fn try_next(&mut self) -> Option<IcmpEvent> {
        loop {
            match self.rx.try_recv().ok()? {
                Msg::Event(ev) => return Some(ev),
                Msg::Ended(i, why) => self.ended(i, why.as_deref()),
            }
        }
    }

    fn lost(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.lost.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_ifindex_on_two_agents_is_two_ids_and_back() {
        let mut ids = Ids::default();
        let a = ids.id(0, 5);
        let b = ids.id(1, 5);
        assert_ne!(a, b);
        assert_eq!(ids.id(0, 5), a);
        assert_eq!(ids.key(a), Some((0, 5)));
        assert_eq!(ids.key(b), Some((1, 5)));
        assert_eq!(ids.key(0), None);
        assert_eq!(ids.key(99), None);
    }
}
