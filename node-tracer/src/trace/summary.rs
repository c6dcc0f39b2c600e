//! The end-of-trace summary: for each ping (family, echo id, sequence), which veths saw the
//! request and which saw the reply, in time order — the path of that ping across the node, the
//! question one tcpdump per veth used to answer.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::TraceStats;
use super::decode::Packet;
use super::format::{interface_name, rfc3339_micros};
use crate::icmp::echo_kind;
use crate::model::{Direction, Port};

/// Pings remembered; past this the summary counts but no longer lists them, so a long trace of a
/// flood cannot grow without bound.
const MAX_PINGS: usize = 16_384;
/// Sightings kept per request or reply (a broadcast ping may cross every veth).
const MAX_HOPS: usize = 64;

/// One sighting of a request or reply on a veth.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hop {
    ts: SystemTime,
    ifindex: u32,
    interface: String,
    /// `namespace/name`.
    pod: Option<String>,
    /// Over several agents: the veth's node.
    node: Option<String>,
    direction: Direction,
}

#[derive(Debug, Clone, Default)]
struct Ping {
    family: u8,
    id: u16,
    seq: u16,
    request: Vec<Hop>,
    reply: Vec<Hop>,
}

impl Ping {
    fn first(&self) -> Option<SystemTime> {
        self.request.iter().chain(&self.reply).map(|h| h.ts).min()
    }
}

/// Accumulates echo requests and replies during a trace.
#[derive(Debug, Default)]
pub struct Summary {
    index: HashMap<(u8, u16, u16), usize>,
    pings: Vec<Ping>,
    /// Echo packets not listed because [`MAX_PINGS`] or [`MAX_HOPS`] was reached.
    overflow: u64,
}

impl Summary {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `p` if it is an echo request or reply with an id and sequence; ignores the rest.
    pub fn add(&mut self, p: &Packet, port: Option<&Port>) {
        let (Some(request), Some(id), Some(seq)) = (echo_kind(p.family, p.icmp_type), p.id, p.seq)
        else {
            return;
        };
        let key = (p.family, id, seq);
        let i = if let Some(&i) = self.index.get(&key) {
            i
        } else {
            if self.pings.len() >= MAX_PINGS {
                self.overflow += 1;
                return;
            }
            self.pings.push(Ping {
                family: p.family,
                id,
                seq,
                ..Ping::default()
            });
            self.index.insert(key, self.pings.len() - 1);
            self.pings.len() - 1
        };
        let ping = &mut self.pings[i];
        let hops = if request {
            &mut ping.request
        } else {
            &mut ping.reply
        };
        if hops.len() >= MAX_HOPS {
            self.overflow += 1;
            return;
        }
        hops.push(Hop {
            ts: p.ts,
            ifindex: p.ifindex,
            interface: interface_name(p.ifindex, port),
            pod: port
                .and_then(|port| port.pod.as_ref())
                .map(crate::model::Pod::qualified_name),
            node: port.and_then(|port| port.node.clone()),
            direction: p.direction,
        });
    }

    /// Pings ordered by first sighting, each with its hops in time order. Events reach us per
    /// CPU, not globally ordered, so the order is restored here rather than trusted on arrival.
    fn sorted(&self) -> Vec<Ping> {
        let mut pings = self.pings.clone();
        for p in &mut pings {
            p.request.sort_by_key(|h| h.ts);
            p.reply.sort_by_key(|h| h.ts);
        }
        pings.sort_by_key(|p| (p.first(), p.family, p.id, p.seq));
        pings
    }

    /// The human summary: one block per ping, then the totals line.
    pub fn render(&self, stats: &TraceStats) -> String {
        let mut out = String::new();
        let pings = self.sorted();
        if !pings.is_empty() {
            out.push_str("ping paths (tx: the pod sent it, rx: the pod received it)\n");
        }
        for p in &pings {
            let family = if p.family == 4 { "icmp" } else { "icmpv6" };
            let head = format!("{family:<6}  id {:<5}  seq {:<5}", p.id, p.seq);
            let _ = writeln!(out, "  {head}  request  {}", path(&p.request));
            let _ = writeln!(
                out,
                "  {:width$}  reply    {}",
                "",
                path(&p.reply),
                width = head.len()
            );
        }
        if self.overflow > 0 {
            let _ = writeln!(out, "  ({} more echo packets not listed)", self.overflow);
        }
        let _ = writeln!(out, "{}", totals(stats));
        out
    }

    /// The `--json` summary: the last line of the stream, marked `"summary": true`.
    pub fn to_json(&self, stats: &TraceStats) -> Value {
        let pings: Vec<Value> = self
            .sorted()
            .iter()
            .map(|p| {
                json!({
                    "family": p.family,
                    "id": p.id,
                    "seq": p.seq,
                    "request": hops_json(&p.request),
                    "reply": hops_json(&p.reply),
                })
            })
            .collect();
        json!({
            "summary": true,
            "seen": stats.seen,
            "matched": stats.matched,
            "undecoded": stats.undecoded,
            "lost": stats.lost,
            "pings": pings,
            "pings_not_listed": self.overflow,
        })
    }
}

fn path(hops: &[Hop]) -> String {
    if hops.is_empty() {
        return "(not seen)".to_owned();
    }
    let parts: Vec<String> = hops
        .iter()
        .map(|h| {
            let dir = match h.direction {
                Direction::Transmit => "tx",
                Direction::Receive => "rx",
            };
            let node = h
                .node
                .as_deref()
                .map(|n| format!("{n}:"))
                .unwrap_or_default();
            match &h.pod {
                Some(pod) => format!("{node}{}({pod}) {dir}", h.interface),
                None => format!("{node}{} {dir}", h.interface),
            }
        })
        .collect();
    parts.join(" -> ")
}

fn hops_json(hops: &[Hop]) -> Vec<Value> {
    hops.iter()
        .map(|h| {
            let (namespace, pod) = match h.pod.as_deref().and_then(|p| p.split_once('/')) {
                Some((ns, name)) => (Some(ns), Some(name)),
                None => (None, None),
            };
            let mut v = json!({
                "time": rfc3339_micros(h.ts),
                "interface": h.interface,
                "ifindex": h.ifindex,
                "namespace": namespace,
                "pod": pod,
                "direction": h.direction.as_str(),
            });
            if let (Some(node), Some(o)) = (&h.node, v.as_object_mut()) {
                o.insert("node".into(), node.as_str().into());
            }
            v
        })
        .collect()
}

/// The closing line, printed even when nothing matched: lost events are never silent.
pub fn totals(stats: &TraceStats) -> String {
    let mut s = format!("{} packets seen, {} matched", stats.seen, stats.matched);
    if stats.undecoded > 0 {
        let _ = write!(s, ", {} undecodable", stats.undecoded);
    }
    let _ = write!(s, ", {} events lost", stats.lost);
    if stats.lost > 0 {
        s.push_str(" (ring buffer full: the trace is incomplete)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::decode::{decode, testframes::*};
    use super::*;
    use crate::model::{Pod, PodSource};

    fn port(ifindex: u32, name: &str, pod: Option<&str>) -> Port {
        Port {
            ifindex,
            name: name.into(),
            pod: pod.map(|p| Pod {
                namespace: "default".into(),
                name: p.into(),
                uid: "u".into(),
                source: PodSource::Cri,
                container: None,
            }),
            ..Port::default()
        }
    }

    fn echo(ifindex: u32, dir: u8, ts: u64, ty: u8, seq: u16) -> Packet {
        let (f, l4) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], ty, 0, 77, seq, &[]);
        decode(&event(ifindex, dir, ts, &f, 4, l4), at_epoch).unwrap()
    }

    #[test]
    fn paths_in_time_order_whatever_the_arrival_order() {
        let a = port(5, "vethA", Some("web-1"));
        let b = port(6, "vethB", Some("web-2"));
        let mut s = Summary::new();
        // Arrival order scrambled, as from two CPUs; seq 2 arrives before seq 1.
        s.add(&echo(6, 0, 40, 0, 1), Some(&b)); // reply leaves web-2
        s.add(&echo(5, 0, 210, 8, 2), Some(&a));
        s.add(&echo(6, 1, 20, 8, 1), Some(&b)); // request reaches web-2
        s.add(&echo(5, 0, 10, 8, 1), Some(&a)); // request leaves web-1
        s.add(&echo(5, 1, 50, 0, 1), Some(&a)); // reply reaches web-1
        let stats = TraceStats {
            seen: 6,
            matched: 5,
            lost: 0,
            undecoded: 1,
        };
        let text = s.render(&stats);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ping paths (tx: the pod sent it, rx: the pod received it)"
        );
        assert_eq!(
            lines[1],
            "  icmp    id 77     seq 1      request  vethA(default/web-1) tx -> vethB(default/web-2) rx"
        );
        // The reply lines up under the request.
        assert_eq!(
            lines[2],
            format!(
                "{}reply    vethB(default/web-2) tx -> vethA(default/web-1) rx",
                " ".repeat(31)
            )
        );
        assert!(
            lines[3].contains("seq 2") && lines[3].ends_with("request  vethA(default/web-1) tx")
        );
        assert!(lines[4].ends_with("reply    (not seen)"));
        assert_eq!(
            lines[5],
            "6 packets seen, 5 matched, 1 undecodable, 0 events lost"
        );

        let v = s.to_json(&stats);
        assert_eq!(v["summary"], true);
        assert_eq!(v["pings"][0]["seq"], 1);
        assert_eq!(v["pings"][0]["request"][0]["interface"], "vethA");
        assert_eq!(v["pings"][0]["request"][1]["pod"], "web-2");
        assert_eq!(v["pings"][0]["reply"][1]["direction"], "receive");
        assert_eq!(v["pings"][1]["reply"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn a_path_across_nodes_names_each_hop_s_node() {
        // The same ifindex on both nodes: the node tells the veths apart.
        let on = |node: &str, name: &str, pod: &str| Port {
            node: Some(node.into()),
            ..port(5, name, Some(pod))
        };
        let (a, b) = (
            on("node-a", "vethA", "web-1"),
            on("node-b", "vethB", "db-0"),
        );
        let mut s = Summary::new();
        s.add(&echo(5, 1, 20, 8, 1), Some(&b));
        s.add(&echo(5, 0, 10, 8, 1), Some(&a));
        let stats = TraceStats::default();
        let text = s.render(&stats);
        assert!(
            text.contains(
                "request  node-a:vethA(default/web-1) tx -> node-b:vethB(default/db-0) rx"
            ),
            "{text}"
        );
        let v = s.to_json(&stats);
        assert_eq!(v["pings"][0]["request"][0]["node"], "node-a");
        assert_eq!(v["pings"][0]["request"][1]["node"], "node-b");
    }

    #[test]
    fn ignores_non_echo_and_reports_loss() {
        let mut s = Summary::new();
        let (f, l4) = icmp4([10, 0, 0, 1], [10, 0, 0, 2], 3, 3, 0, 0, &[]);
        s.add(&decode(&event(5, 1, 0, &f, 4, l4), at_epoch).unwrap(), None);
        let stats = TraceStats {
            seen: 1,
            matched: 1,
            lost: 3,
            undecoded: 0,
        };
        assert_eq!(
            s.render(&stats),
            "1 packets seen, 1 matched, 3 events lost (ring buffer full: the trace is incomplete)\n"
        );
        assert_eq!(s.to_json(&stats)["lost"], 3);
    }

    #[test]
    fn unknown_veth_and_bounded_memory() {
        let mut s = Summary::new();
        for seq in 0..=u16::MAX {
            s.add(&echo(9, 0, u64::from(seq), 8, seq), None);
        }
        assert_eq!(s.pings.len(), MAX_PINGS);
        assert_eq!(s.overflow, 65_536 - MAX_PINGS as u64);
        let text = s.render(&TraceStats::default());
        assert!(text.contains("request  if9 tx\n"));
        assert!(text.contains(&format!(
            "({} more echo packets not listed)",
            65_536 - MAX_PINGS
        )));
    }
}
