//! The detail pane of the selected veth: who it is (pod, wiring, peer, addresses, MACs) on the
//! left, what it carries (per protocol and direction, ICMP by type, TCP flags, handshakes and
//! unseen packets) on the right.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};

use super::app::App;
use super::fmt::{ago, count, fit, icmp_type_name, si};
use super::rates::{icmp_deltas, packet_deltas, per_second};
use crate::model::{Direction, Mode, PROTOCOLS, Port};

fn bold(s: impl Into<String>) -> Span<'static> {
    Span::styled(s.into(), Style::new().add_modifier(Modifier::BOLD))
}

fn field(name: &str, value: String) -> Line<'static> {
    Line::from(vec![bold(format!("{name:<8}")), Span::raw(value)])
}

fn dir(d: Direction) -> &'static str {
    match d {
        Direction::Receive => "rx",
        Direction::Transmit => "tx",
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(" ")
    }
}

pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let (Some(row), Some(port)) = (app.selected_row(), app.selected_port()) else {
        return;
    };
    let title = Line::from(vec![
        bold(format!(" {} ", row.veth)),
        Span::raw(format!("{} ", row.pod)),
    ]);
    let block = Block::default().borders(Borders::TOP).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // The traffic tables are 40 cells wide; identity takes what is left (and clips with …).
    let [left, right] = Layout::horizontal([Constraint::Fill(1), Constraint::Length(40)])
        .spacing(1)
        .areas(inner);
    frame.render_widget(
        Paragraph::new(identity(
            port,
            app.snapshot.taken_at_ms,
            usize::from(left.width),
        )),
        left,
    );
    frame.render_widget(Paragraph::new(traffic(port, app)), right);
}

fn identity(p: &Port, now_ms: u64, width: usize) -> Vec<Line<'static>> {
    let mut out = vec![
        field("veth", format!("{} (if {})", p.name, p.ifindex)),
        field("mac", p.mac.clone().unwrap_or_else(|| "-".to_owned())),
        field(
            "pod",
            p.pod.as_ref().map_or_else(
                || "- (not found)".to_owned(),
                // A Docker container has no Kubernetes namespace: `shop-web`, not `/shop-web`.
                |pod| format!("{} ({})", pod.qualified_name(), pod.source.as_str()),
            ),
        ),
    ];
    // Which container holds the namespace, as `docker ps` shows it (name, short id, image).
    if let Some(c) = p.pod.as_ref().and_then(|pod| pod.container.as_ref()) {
        let id = c.id.get(..12).unwrap_or(&c.id);
        out.push(field(
            "ctr",
            format!("{} {id} {} ({})", c.name, c.image, c.runtime),
        ));
    }
    let flags = [
        (p.hairpin, "hairpin"),
        (p.promiscuous, "promisc"),
        (!p.attached, "NOT ATTACHED"),
        // Packets passed this veth past our hooks (see `coverage`).
        (p.counters.unseen_rx + p.counters.unseen_tx > 0, "UNSEEN"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join(" ");
    let wiring = match (p.mode, &p.master, p.port_no) {
        (_, Some(m), Some(n)) => format!("bridge {m} port {n}"),
        (_, Some(m), None) => format!("bridge {m}"),
        (Mode::Routed, None, _) => "routed (no bridge)".to_owned(),
        _ => "unattached".to_owned(),
    };
    out.push(field(
        "wiring",
        format!("{wiring} {flags}").trim_end().to_owned(),
    ));
    match &p.peer {
        Some(peer) => {
            // As `ip link` prints it inside the pod: its own ifindex, then @if the host end.
            let name = peer.name.as_deref().unwrap_or("?");
            let nsid = peer
                .netnsid
                .map_or_else(|| "-".to_owned(), |n| n.to_string());
            out.push(field(
                "peer",
                format!("{}: {name}@if{} nsid {nsid}", peer.ifindex, p.ifindex),
            ));
            out.push(field(
                "pod mac",
                peer.mac.clone().unwrap_or_else(|| "-".to_owned()),
            ));
            out.push(field("pod ip", list(&peer.addresses)));
            out.push(field(
                "netns",
                peer.netns.clone().unwrap_or_else(|| "-".to_owned()),
            ));
        }
        None => out.push(field("peer", "- (unknown)".to_owned())),
    }
    out.push(field("host ip", list(&p.addresses)));
    out.push(field("routes", list(&p.routes)));
    out.push(Line::from(bold(format!(
        "{:<17} {:<2} {:>7} {}",
        "MAC", "", "PKTS", "LAST SEEN"
    ))));
    if p.macs.is_empty() {
        out.push(Line::raw("none seen yet"));
    }
    let mut macs: Vec<_> = p.macs.iter().collect();
    macs.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then(a.mac.cmp(&b.mac)));
    for m in macs {
        out.push(Line::raw(format!(
            "{:<17} {:<2} {:>7} {}",
            m.mac,
            dir(m.direction),
            count(m.packets),
            ago(now_ms, m.last_seen_ms)
        )));
    }
    out.into_iter().map(|l| clip(l, width)).collect()
}

/// Cuts a line to the pane width with an ellipsis instead of letting it end mid-word silently.
fn clip(l: Line<'static>, width: usize) -> Line<'static> {
    if l.width() <= width {
        return l;
    }
    let text: String = l.spans.iter().map(|s| s.content.as_ref()).collect();
    let style = l.spans.first().map(|s| s.style).unwrap_or_default();
    Line::from(vec![
        Span::styled(String::new(), style),
        Span::raw(fit(&text, width)),
    ])
}

fn traffic(p: &Port, app: &App) -> Vec<Line<'static>> {
    let prev = app.selected_prev().map(|q| &q.counters);
    let (rx, tx) = packet_deltas(prev, &p.counters);
    let c = &p.counters;
    let mut out = vec![Line::from(bold(format!(
        "{:<10} {:>6} {:>6} {:>7} {:>7}",
        "PROTO", "RX pps", "TX pps", "RX pkts", "TX pkts"
    )))];
    for (i, name) in PROTOCOLS.iter().enumerate() {
        let line = format!(
            "{name:<10} {:>6} {:>6} {:>7} {:>7}",
            si(per_second(rx[i], app.elapsed_ms)),
            si(per_second(tx[i], app.elapsed_ms)),
            count(c.rx_packets[i]),
            count(c.tx_packets[i])
        );
        let silent = c.rx_packets[i] == 0 && c.tx_packets[i] == 0;
        out.push(if silent {
            Line::styled(line, Style::new().add_modifier(Modifier::DIM))
        } else {
            Line::raw(line)
        });
    }
    // 40 cells like the table above: "rx4" is direction and IP family (ping vs ping -6).
    out.push(Line::from(bold(format!(
        "{:<3} {:<23} {:>6} {:>5}",
        "", "ICMP TYPE", "+NEW", "TOTAL"
    ))));
    let icmp = icmp_deltas(
        app.selected_prev().map(|q| q.counters.icmp.as_slice()),
        &c.icmp,
    );
    if icmp.is_empty() {
        out.push(Line::raw("no ICMP seen"));
    }
    for d in icmp {
        let line = format!(
            "{}{} {:<23} {:>6} {:>5}",
            dir(d.direction),
            if d.family == 6 { '6' } else { '4' },
            fit(icmp_type_name(d.family, d.icmp_type), 23),
            if d.delta > 0 {
                format!("+{}", count(d.delta))
            } else {
                String::new()
            },
            count(d.total)
        );
        out.push(if d.delta > 0 {
            Line::styled(line, Style::new().add_modifier(Modifier::BOLD))
        } else {
            Line::raw(line)
        });
    }
    out.extend(super::tcp::lines(c));
    out.extend(losses(p, app));
    out
}

/// The veth's top drop reasons (drops on it or inside its pod) and its pod's retransmits.
fn losses(p: &Port, app: &App) -> Vec<Line<'static>> {
    let report = &app.snapshot.drops;
    if !report.drops_on && !report.retransmits_on {
        return vec![Line::raw("drops: not tracked by this agent")];
    }
    let mut out = vec![Line::from(bold(format!(
        "{:<27} {:>6} {:>5}",
        "DROP REASON", "+NEW", "TOTAL"
    )))];
    let before = |reason: &str| {
        app.prev.as_ref().map_or(0, |q| {
            q.drops
                .reasons_of(&p.name)
                .iter()
                .find(|(r, _)| *r == reason)
                .map_or(0, |(_, n)| *n)
        })
    };
    let reasons = report.reasons_of(&p.name);
    if reasons.is_empty() {
        out.push(Line::raw("no drops seen"));
    }
    for (reason, total) in reasons.into_iter().take(3) {
        let new = total.saturating_sub(before(reason));
        out.push(Line::raw(format!(
            "{:<27} {:>6} {:>5}",
            fit(reason, 27),
            if new > 0 {
                format!("+{}", count(new))
            } else {
                String::new()
            },
            count(total)
        )));
    }
    if let Some(pod) = &p.pod {
        let n = report.retransmits_of(&pod.namespace, &pod.name);
        out.push(Line::raw(format!(
            "{:<27} {:>6} {:>5}",
            "tcp retransmits",
            "",
            count(n)
        )));
    }
    out
}
