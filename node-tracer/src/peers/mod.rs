//! `node-tracer peers`: what is behind every host-side veth, and, read from an agent, which
//! veths passed packets past its hooks (unseen packets, see `coverage`).

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    model::{Bridge, Container, Peer, Pod, PodSource, Port, PortKind, Snapshot},
    pods::Answered,
};

/// One row of `peers --json` (the contract of DESIGN.md).
#[derive(Debug, Serialize)]
pub struct PeerRow<'a> {
    pub ifindex: u32,
    pub name: &'a str,
    pub mac: Option<&'a str>,
    pub mode: &'static str,
    /// "tap" or "uplink"; absent for a veth (rows read as before taps).
    #[serde(skip_serializing_if = "PortKind::is_veth")]
    pub kind: PortKind,
    pub master: Option<&'a str>,
    pub port_no: Option<u16>,
    pub addresses: &'a [String],
    pub routes: &'a [String],
    pub peer: Option<&'a Peer>,
    pub pod: Option<PodRow<'a>>,
    /// The engine's container owning the peer's namespace, beside the pod (not inside it, so
    /// `pod` keeps its four fields).
    pub container: Option<&'a Container>,
    /// Packets the kernel counted on the veth that the agent's hooks never saw; `null` where no
    /// programs are attached (always, without `--connect`: `peers` alone attaches nothing).
    pub unseen: Option<Unseen>,
}

/// `unseen` of a `peers --json` row, from the pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Unseen {
    pub receive: u64,
    pub transmit: u64,
}

impl Unseen {
    /// What the port's counters say, where programs count for it.
    pub fn of(p: &Port) -> Option<Self> {
        p.attached.then_some(Self {
            receive: p.counters.unseen_rx,
            transmit: p.counters.unseen_tx,
        })
    }

    /// Whether the port is flagged: anything at all passed it unseen.
    pub fn any(self) -> bool {
        self.receive + self.transmit > 0
    }
}

/// `pod` of a `peers --json` row: the contract's four fields.
#[derive(Debug, Serialize)]
pub struct PodRow<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub source: PodSource,
}

impl<'a> From<&'a Pod> for PodRow<'a> {
    fn from(p: &'a Pod) -> Self {
        Self {
            namespace: &p.namespace,
            name: &p.name,
            uid: &p.uid,
            source: p.source,
        }
    }
}

impl<'a> From<&'a Port> for PeerRow<'a> {
    fn from(p: &'a Port) -> Self {
        Self {
            ifindex: p.ifindex,
            name: &p.name,
            mac: p.mac.as_deref(),
            mode: p.mode.as_str(),
            kind: p.kind,
            master: p.master.as_deref(),
            port_no: p.port_no,
            addresses: &p.addresses,
            routes: &p.routes,
            peer: p.peer.as_ref(),
            pod: p.pod.as_ref().map(PodRow::from),
            container: p.pod.as_ref().and_then(|pod| pod.container.as_ref()),
            unseen: Unseen::of(p),
        }
    }
}

pub fn to_json(snap: &Snapshot) -> serde_json::Result<String> {
    let rows: Vec<PeerRow<'_>> = snap.ports.iter().map(PeerRow::from).collect();
    serde_json::to_string_pretty(&rows)
}

/// The table a person reads: one row per veth, then the bridges (empty ones included, since
/// "docker0 with no interfaces" is one of the questions). An UNSEEN column only for a snapshot
/// with counters (an agent's): without programs attached there is nothing to compare.
pub fn to_table(snap: &Snapshot) -> String {
    let counted = snap.ports.iter().any(|p| p.attached);
    let mut rows = vec![[
        "VETH".to_string(),
        "MODE".into(),
        "BRIDGE/PORT".into(),
        "HOST ADDR".into(),
        "PEER".into(),
        "PEER ADDR".into(),
        "NETNS".into(),
        "UNSEEN".into(),
        "POD".into(),
    ]];
    for p in &snap.ports {
        let bridge = match (&p.master, p.port_no) {
            (Some(m), Some(n)) => format!("{m}/{n}"),
            (Some(m), None) => m.clone(),
            _ if !p.routes.is_empty() => format!("routes {}", p.routes.join(",")),
            _ => "-".into(),
        };
        let peer = p.peer.as_ref();
        let peer_name = peer.map_or("-".to_string(), |x| {
            format!("{}@if{}", x.name.as_deref().unwrap_or("?"), x.ifindex)
        });
        let peer_addr = peer.map_or(String::new(), |x| first_global(&x.addresses));
        let netns = peer.map_or(String::new(), |x| match (&x.netns, x.netnsid) {
            (Some(path), _) => path.clone(),
            (None, Some(id)) => format!("nsid {id} (not found)"),
            (None, None) => "host".into(),
        });
        let pod = p.pod.as_ref().map_or("-".to_string(), |pod| {
            format!("{} ({})", pod.qualified_name(), pod.source.as_str())
        });
        rows.push([
            p.name.clone(),
            if p.kind.is_veth() {
                p.mode.as_str().into()
            } else {
                format!("{} {}", p.mode.as_str(), p.kind.as_str())
            },
            bridge,
            first_global(&p.addresses),
            peer_name,
            peer_addr,
            netns,
            Unseen::of(p).map_or_else(|| "-".into(), unseen_cell),
            pod,
        ]);
    }
    if !counted {
        for r in &mut rows {
            r[7].clear();
        }
    }
    let mut out = render(&rows);
    if !snap.bridges.is_empty() {
        out.push('\n');
        let mut b = vec![["BRIDGE".to_string(), "ADDR".into(), "PORTS".into()]];
        for Bridge {
            name,
            addresses,
            ports,
            ..
        } in &snap.bridges
        {
            b.push([
                name.clone(),
                first_global(addresses),
                if ports.is_empty() {
                    "(no ports)".into()
                } else {
                    ports.join(" ")
                },
            ]);
        }
        out.push_str(&render(&b));
    }
    out
}

/// The line `peers` ends with: which pod sources answered and how many ports each named, so a
/// port with no pod is told from a source that never answered.
pub fn sources_line(answered: &[Answered], snap: &Snapshot) -> String {
    let mut parts = Vec::new();
    let mut seen = Vec::new();
    for a in answered {
        if seen.contains(&a.source) {
            continue;
        }
        seen.push(a.source);
        let at: Vec<String> = answered
            .iter()
            .filter(|b| b.source == a.source)
            .filter_map(|b| b.at.as_ref().map(|p| p.display().to_string()))
            .collect();
        let named = snap
            .ports
            .iter()
            .filter(|p| p.pod.as_ref().is_some_and(|pod| pod.source == a.source))
            .count();
        let at = if at.is_empty() {
            String::new()
        } else {
            format!(" ({})", at.join(", "))
        };
        let ports = if named == 1 { "port" } else { "ports" };
        parts.push(format!("{}{at} {named} {ports}", a.source.as_str()));
    }
    if parts.is_empty() {
        return "sources: none answered\n".into();
    }
    format!("sources: {}\n", parts.join(", "))
}

/// `0` for a veth whose hooks saw everything; the counts per direction (the pod's point of view)
/// and a `!` for one that passed packets past them.
fn unseen_cell(u: Unseen) -> String {
    if u.any() {
        format!("rx {} tx {} !", u.receive, u.transmit)
    } else {
        "0".into()
    }
}

/// The line `peers --connect` ends with: the agent it read, and the veths it flags.
pub fn agent_line(agent: &str, snap: &Snapshot) -> String {
    let node = snap
        .node
        .as_ref()
        .map_or_else(String::new, |n| format!(" (node {n})"));
    let attached = snap.ports.iter().filter(|p| p.attached).count();
    let flagged: Vec<&str> = snap
        .ports
        .iter()
        .filter(|p| Unseen::of(p).is_some_and(Unseen::any))
        .map(|p| p.name.as_str())
        .collect();
    let unseen = if flagged.is_empty() {
        "no unseen packets".to_owned()
    } else {
        format!(
            "UNSEEN packets on {} (traffic that passed the veth without the agent's hooks)",
            flagged.join(" ")
        )
    };
    format!("agent: {agent}{node}, {attached} veths attached, {unseen}\n")
}

fn first_global(addrs: &[String]) -> String {
    addrs
        .iter()
        .find(|a| !a.starts_with("fe80:"))
        .or_else(|| addrs.first())
        .cloned()
        .unwrap_or_default()
}

fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else if w > 0 {
                // (A column left empty on every row, UNSEEN without counters, takes no room.)
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
