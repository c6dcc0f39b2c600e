//! The `macs` table: `brctl showmacs` columns, plus the pod and what the programs saw, then the
//! anomalies with their explanations.

use std::fmt::Write as _;

use super::{Anomaly, MacRow, PortMacs, Report};
use crate::model::Pod;

const HEADER: [&str; 10] = [
    "port",
    "interface",
    "pod",
    "mac",
    "fdb",
    "ageing",
    "tx pkts",
    "tx bytes",
    "first seen",
    "last seen",
];

/// The whole report as text.
pub fn to_table(r: &Report) -> String {
    let mut out = String::new();
    let on = r
        .node
        .as_deref()
        .map(|n| format!(" on node {n}"))
        .unwrap_or_default();
    for b in &r.bridges {
        let _ = writeln!(out, "bridge {} (ifindex {}){on}", b.name, b.ifindex);
        if b.ports.is_empty() {
            out.push_str("  (no ports, no entries)\n\n");
            continue;
        }
        let rows: Vec<[String; 10]> = b
            .ports
            .iter()
            .flat_map(|p| port_lines(p, r.taken_at_ms, Some(&b.name)))
            .collect();
        out.push_str(&columns(&rows));
        out.push('\n');
    }
    if !r.routed.is_empty() {
        let _ = writeln!(out, "veths without a bridge{on}");
        let rows: Vec<[String; 10]> = r
            .routed
            .iter()
            .flat_map(|p| port_lines(p, r.taken_at_ms, None))
            .collect();
        out.push_str(&columns(&rows));
        out.push('\n');
    }
    if r.anomalies.is_empty() {
        let _ = writeln!(out, "no anomalies{on}");
    } else {
        let _ = writeln!(out, "anomalies{on} ({})", r.anomalies.len());
        for a in &r.anomalies {
            flag_lines(&mut out, a);
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(out, "notes{on} ({}), expected", r.notes.len());
        for a in &r.notes {
            flag_lines(&mut out, a);
        }
    }
    out
}

/// One flag: kind, port, where it is, the MAC; its explanation on the next line.
fn flag_lines(out: &mut String, a: &Anomaly) {
    let mut whereabouts: Vec<String> = Vec::new();
    if let Some(n) = a.port_no {
        whereabouts.push(format!("port {n}"));
    }
    if let Some(p) = &a.pod {
        whereabouts.push(pod_text(p));
    }
    let whereabouts = if whereabouts.is_empty() {
        String::new()
    } else {
        format!(" ({})", whereabouts.join(", "))
    };
    let mac = a
        .mac
        .as_deref()
        .map(|m| format!(" {m}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  {:<24} {}{whereabouts}{mac}\n      {}",
        a.kind.as_str(),
        a.interface,
        a.detail
    );
}

fn pod_text(p: &Pod) -> String {
    p.qualified_name()
}

fn port_lines(p: &PortMacs, now_ms: u64, bridge: Option<&str>) -> Vec<[String; 10]> {
    let port = match (p.port_no, bridge) {
        (Some(n), _) => n.to_string(),
        (None, Some(b)) if p.interface == b => "self".into(),
        _ => "-".into(),
    };
    let mut interface = p.interface.clone();
    if p.promiscuous {
        interface.push_str(" [promisc]");
    }
    if p.hairpin {
        interface.push_str(" [hairpin]");
    }
    let pod = p.pod.as_ref().map_or_else(|| "-".into(), pod_text);
    let mut lines: Vec<[String; 10]> = p
        .macs
        .iter()
        .map(|m| mac_line(m, now_ms, p.attached))
        .collect();
    if lines.is_empty() {
        lines.push(std::array::from_fn(|i| {
            if i == 3 { "-".into() } else { String::new() }
        }));
    }
    lines[0][0] = port;
    lines[0][1] = interface;
    lines[0][2] = pod;
    lines
}

fn mac_line(m: &MacRow, now_ms: u64, attached: bool) -> [String; 10] {
    let fdb = if m.fdb.is_empty() {
        "-".to_string()
    } else {
        m.fdb
            .iter()
            .map(|f| {
                let mut s = f.state.as_str().to_string();
                if let Some(v) = f.vlan {
                    let _ = write!(s, "@vlan{v}");
                }
                if f.sticky {
                    s.push_str("+sticky");
                }
                if f.extern_learn {
                    s.push_str("+extern");
                }
                s
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    // Local entries never age: brctl shows their timer too, but it means nothing.
    let ageing = m
        .fdb
        .iter()
        .filter(|f| !f.local)
        .map(|f| f.ageing_ms)
        .min()
        .map_or_else(|| "-".into(), |ms| format!("{:.2}", ms as f64 / 1000.0));
    let (pkts, bytes, first, last) = match &m.transmit {
        Some(s) => (
            s.packets.to_string(),
            s.bytes.to_string(),
            ago(now_ms, s.first_seen_ms),
            ago(now_ms, s.last_seen_ms),
        ),
        // Unwatched ports have nothing to say; watched ones saw nothing.
        None if attached => ("0".into(), "0".into(), "-".into(), "-".into()),
        None => ("?".into(), "?".into(), "-".into(), "-".into()),
    };
    [
        String::new(),
        String::new(),
        String::new(),
        m.mac.clone(),
        fdb,
        ageing,
        pkts,
        bytes,
        first,
        last,
    ]
}

/// `12s ago`, `3m05s ago`, `2h10m ago`; `-` for never.
pub(crate) fn ago(now_ms: u64, t_ms: u64) -> String {
    if t_ms == 0 {
        return "-".into();
    }
    let s = now_ms.saturating_sub(t_ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m{:02}s ago", s / 60, s % 60),
        _ => format!("{}h{:02}m ago", s / 3600, s % 3600 / 60),
    }
}

fn columns(rows: &[[String; 10]]) -> String {
    let mut width = HEADER.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(String::from);
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::from("  ");
        for (i, (c, w)) in r.iter().zip(width).enumerate() {
            // Counts read best right-aligned.
            if (6..8).contains(&i) {
                let _ = write!(line, "{c:>w$}  ");
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
