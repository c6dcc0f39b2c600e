//! `node-tracer peers`: what is behind every host-side veth.

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
        }
    }
}

pub fn to_json(snap: &Snapshot) -> serde_json::Result<String> {
    let rows: Vec<PeerRow<'_>> = snap.ports.iter().map(PeerRow::from).collect();
    serde_json::to_string_pretty(&rows)
}

/// The table a person reads: one row per veth, then the bridges (empty ones included, since
/// "docker0 with no interfaces" is one of the questions).
pub fn to_table(snap: &Snapshot) -> String {
    let mut rows = vec![[
        "VETH".to_string(),
        "MODE".into(),
        "BRIDGE/PORT".into(),
        "HOST ADDR".into(),
        "PEER".into(),
        "PEER ADDR".into(),
        "NETNS".into(),
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
            pod,
        ]);
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
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, PodSource};

    fn snap() -> Snapshot {
        Snapshot {
            ports: vec![
                Port {
                    ifindex: 7,
                    name: "veth591ea0bf".into(),
                    mode: Mode::Bridged,
                    master: Some("cni0".into()),
                    port_no: Some(2),
                    peer: Some(Peer {
                        ifindex: 3,
                        name: Some("eth0".into()),
                        addresses: vec!["10.244.1.5/24".into()],
                        netnsid: Some(0),
                        netns: Some("/run/netns/cni-1".into()),
                        ..Peer::default()
                    }),
                    pod: Some(Pod {
                        namespace: "default".into(),
                        name: "web-1".into(),
                        uid: "u1".into(),
                        source: PodSource::Cri,
                        container: None,
                    }),
                    ..Port::default()
                },
                Port {
                    ifindex: 9,
                    name: "veth27cee774".into(),
                    mode: Mode::Routed,
                    addresses: vec!["10.188.2.1/32".into()],
                    routes: vec!["10.188.2.5/32".into()],
                    ..Port::default()
                },
            ],
            bridges: vec![Bridge {
                ifindex: 3,
                name: "docker0".into(),
                ..Bridge::default()
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_last_line_says_which_sources_answered_and_what_each_named() {
        let snap = snap();
        let named = |source| {
            snap.ports
                .iter()
                .filter(|p| p.pod.as_ref().is_some_and(|pod| pod.source == source))
                .count()
        };
        let answered = [
            Answered {
                source: PodSource::Cri,
                at: Some("/run/a.sock".into()),
            },
            Answered {
                source: PodSource::Cri,
                at: Some("/run/b.sock".into()),
            },
            Answered {
                source: PodSource::Proc,
                at: None,
            },
        ];
        let line = sources_line(&answered, &snap);
        let cri = named(PodSource::Cri);
        assert!(cri > 0, "the fixture has CRI pods");
        assert!(
            line.starts_with(&format!(
                "sources: cri (/run/a.sock, /run/b.sock) {cri} port"
            )),
            "{line}"
        );
        assert!(
            line.contains(&format!("proc {} port", named(PodSource::Proc))),
            "{line}"
        );
        assert!(
            !line.contains("docker"),
            "only sources that answered: {line}"
        );
        assert_eq!(sources_line(&[], &snap), "sources: none answered\n");
    }

    #[test]
    fn table_answers_the_seed_questions() {
        let t = to_table(&snap());
        assert!(t.contains("eth0@if3"), "{t}");
        assert!(t.contains("cni0/2"));
        assert!(t.contains("default/web-1 (cri)"));
        assert!(t.contains("routes 10.188.2.5/32"));
        assert!(t.contains("docker0") && t.contains("(no ports)"));
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&snap()).unwrap()).unwrap();
        let row = &v[0];
        for k in [
            "ifindex",
            "name",
            "mac",
            "mode",
            "master",
            "port_no",
            "addresses",
            "routes",
            "peer",
            "pod",
            "container",
        ] {
            assert!(row.get(k).is_some(), "missing {k}");
        }
        assert_eq!(row["mode"], "bridged");
        assert_eq!(row["peer"]["netnsid"], 0);
        assert_eq!(row["pod"]["source"], "cri");
        assert_eq!(v[1]["pod"], serde_json::Value::Null);
        assert_eq!(v[1]["mode"], "routed");
        assert_eq!(row["container"], serde_json::Value::Null);
        assert_eq!(v[1]["container"], serde_json::Value::Null);
    }

    #[test]
    fn a_docker_container_is_the_pod_and_its_record_sits_beside_it() {
        let mut s = snap();
        s.ports[0].pod = Some(Pod {
            namespace: String::new(),
            name: "shop-web".into(),
            uid: String::new(),
            source: PodSource::Docker,
            container: Some(Container {
                runtime: "docker".into(),
                id: "3956c459e213".into(),
                name: "shop-web".into(),
                image: "nginx:1".into(),
            }),
        });
        let t = to_table(&s);
        assert!(t.contains("shop-web (docker)"), "{t}");
        let v: serde_json::Value = serde_json::from_str(&to_json(&s).unwrap()).unwrap();
        let pod = v[0]["pod"].as_object().unwrap();
        let mut keys: Vec<&str> = pod.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["name", "namespace", "source", "uid"]);
        assert_eq!(v[0]["pod"]["source"], "docker");
        assert_eq!(v[0]["container"]["runtime"], "docker");
        assert_eq!(v[0]["container"]["name"], "shop-web");
        assert_eq!(v[0]["container"]["image"], "nginx:1");
        assert_eq!(v[0]["container"]["id"], "3956c459e213");
    }
}
