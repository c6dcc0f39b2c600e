//! `top` over several agents (`--connect` repeated, or a name with several addresses): one
//! snapshot joined from every agent's, each port marked with its node.

use futures::future::join_all;
use node_tracer_client::Agent;

use super::source::{HttpSource, SnapshotSource, SourceError};
use crate::agents::{address, node_labels};
use crate::model::Snapshot;

/// Reads every agent's `/snapshot` at once and joins them. An agent that does not answer is
/// left out of that sample and named in [`Snapshot::unreachable`]; only when none answers is
/// the sample an error.
pub struct NodesSource {
    agents: Vec<(HttpSource, String)>,
}

impl NodesSource {
    pub fn new(agents: Vec<Agent>) -> Self {
        Self {
            agents: agents
                .into_iter()
                .map(|a| {
                    let addr = address(&a);
                    (HttpSource::from(a), addr)
                })
                .collect(),
        }
    }
}

impl SnapshotSource for NodesSource {
    async fn next(&mut self) -> Result<Snapshot, SourceError> {
        let got = join_all(self.agents.iter_mut().map(|(s, _)| s.next())).await;
        let addrs = self.agents.iter().map(|(_, a)| a.clone());
        merge(addrs.zip(got).collect())
    }
}

/// One snapshot from each agent's (by address): ports and bridges of all, each port's `node`
/// set; the latest time of them (each agent's counters are read within the same interval).
pub fn merge(got: Vec<(String, Result<Snapshot, SourceError>)>) -> Result<Snapshot, SourceError> {
    let mut answered = Vec::new();
    let mut failed = Vec::new();
    for (addr, r) in got {
        match r {
            Ok(s) => answered.push((addr, s)),
            Err(e) => failed.push(format!("no snapshot from {addr}: {}", e.one_line())),
        }
    }
    if answered.is_empty() {
        return Err(SourceError::NoAgent(failed.join("; ")));
    }
    let labels = node_labels(
        &answered
            .iter()
            .map(|(addr, s)| (s.node.clone(), addr.clone()))
            .collect::<Vec<_>>(),
    );
    let mut out = Snapshot {
        unreachable: failed,
        ..Snapshot::default()
    };
    for ((_, snap), label) in answered.into_iter().zip(labels) {
        out.taken_at_ms = out.taken_at_ms.max(snap.taken_at_ms);
        out.taken_at_by_node.insert(label.clone(), snap.taken_at_ms);
        out.ports.extend(snap.ports.into_iter().map(|mut p| {
            p.node = Some(label.clone());
            p
        }));
        // Bridge names repeat from node to node (every flannel node has a cni0): the totals
        // are per node.
        out.bridges.extend(snap.bridges.into_iter().map(|mut b| {
            b.name = format!("{label}/{}", b.name);
            b
        }));
        out.fdb.extend(snap.fdb);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bridge, Port};

    fn snap(node: Option<&str>, at: u64, veths: &[(u32, &str)]) -> Snapshot {
        Snapshot {
            taken_at_ms: at,
            node: node.map(str::to_owned),
            ports: veths
                .iter()
                .map(|&(ifindex, name)| Port {
                    ifindex,
                    name: name.into(),
                    master: Some("cni0".into()),
                    ..Port::default()
                })
                .collect(),
            bridges: vec![Bridge {
                name: "cni0".into(),
                ..Bridge::default()
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn every_port_keeps_its_node_and_same_ifindexes_stay_apart() {
        let got = merge(vec![
            (
                "10.0.0.1:9465".into(),
                Ok(snap(Some("n1"), 100, &[(5, "veth1")])),
            ),
            ("10.0.0.2:9465".into(), Ok(snap(None, 120, &[(5, "veth1")]))),
        ])
        .unwrap();
        let nodes: Vec<_> = got
            .ports
            .iter()
            .map(|p| (p.node.as_deref().unwrap(), p.ifindex))
            .collect();
        assert_eq!(nodes, [("n1", 5), ("10.0.0.2:9465", 5)]);
        assert_eq!(got.taken_at_ms, 120);
        assert_eq!(got.taken_at_by_node["n1"], 100);
        let bridges: Vec<_> = got.bridges.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(bridges, ["n1/cni0", "10.0.0.2:9465/cni0"]);
        assert!(got.unreachable.is_empty());
    }

    /// The lab node twice, as two agents (same ifindexes on both), `a` and `b` seconds into
    /// their counters (the lab's rates are steady: any interval gives the same).
    fn two_labs(a: u64, b: u64) -> Snapshot {
        let on = |node: &str, secs| Snapshot {
            node: Some(node.into()),
            ..crate::top::fixtures::lab(secs)
        };
        merge(vec![
            ("10.0.0.1:9465".into(), Ok(on("node-a", a))),
            ("10.0.0.2:9465".into(), Ok(on("node-b", b))),
        ])
        .unwrap()
    }

    #[test]
    fn the_view_keeps_the_nodes_apart_and_shows_their_names() {
        use crate::top::fixtures::{app_of, lab, screen};
        let one = app_of(lab(0), lab(1));
        // Node B's second sample a second later than node A's: each node's rates over its own
        // interval.
        let mut two = app_of(two_labs(0, 0), two_labs(1, 2));
        assert_eq!(two.rows.len(), 2 * one.rows.len());
        // Each row's rates are its own veth's on its own node: the same ifindex on the other
        // node is not its previous sample.
        for r in &two.rows {
            let same = one.rows.iter().find(|o| o.ifindex == r.ifindex).unwrap();
            let per_second =
                |x: &crate::top::rates::Rates| (x.rx_pps, x.tx_pps, x.rx_bps, x.tx_bps);
            assert_eq!(per_second(&r.rates), per_second(&same.rates), "{r:?}");
        }
        let totals: Vec<&str> = two.totals.iter().map(|t| t.name.as_str()).collect();
        assert!(totals.contains(&"node-a/cni0") && totals.contains(&"node-b/cni0"));
        let text = screen(&mut two, 160, 30);
        let header = text.lines().find(|l| l.contains("POD")).unwrap();
        assert!(header.starts_with("NODE "), "{text}");
        let pinger = |node: &str| {
            text.lines()
                .filter(|l| l.contains("default/pinger") && l.trim_start().starts_with(node))
                .count()
        };
        assert_eq!((pinger("node-a"), pinger("node-b")), (1, 1), "{text}");
    }

    #[test]
    fn an_agent_that_fails_is_named_and_the_others_shown() {
        let refused = SourceError::NoAgent("connection refused".into());
        let got = merge(vec![
            ("10.0.0.1:9465".into(), Err(refused)),
            ("10.0.0.2:9465".into(), Ok(snap(Some("n2"), 1, &[(7, "v")]))),
        ])
        .unwrap();
        assert_eq!(got.ports.len(), 1);
        assert_eq!(got.unreachable.len(), 1);
        assert!(got.unreachable[0].contains("10.0.0.1:9465"), "{got:?}");
        let none = merge(vec![(
            "10.0.0.1:9465".into(),
            Err(SourceError::NoAgent("x".into())),
        )]);
        assert!(matches!(none, Err(SourceError::NoAgent(_))));
    }
}
