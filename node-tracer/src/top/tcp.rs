//! The detail pane's TCP lines: flags per direction, handshake times, and packets the kernel
//! counted on the veth that our programs never saw.

use ratatui::style::{Modifier, Style};
use ratatui::text::Line;

use super::fmt::count;
use crate::model::{Direction, PortCounters};
use crate::tcp::TcpFlag;

/// 40 cells, like the tables above them. Without TCP, one line says so (the pane is short).
pub fn lines(c: &PortCounters) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let mut out = Vec::new();
    if c.tcp_flags.is_empty() {
        out.push(Line::raw("no TCP SYN/RST/FIN seen"));
    } else {
        out.extend(flag_table(c, bold));
    }
    for h in &c.handshakes {
        // Who sent the SYN: the pod connected out (tx), or someone connected in (rx).
        let who = match h.direction {
            Direction::Transmit => "out",
            Direction::Receive => "in",
        };
        out.push(Line::raw(format!(
            "handshake {who:<3} {:>7} mean {}",
            count(h.count),
            duration(h.mean_seconds())
        )));
    }
    let unseen = format!(
        "unseen    rx {:>7}  tx {:>7}",
        count(c.unseen_rx),
        count(c.unseen_tx)
    );
    out.push(if c.unseen_rx + c.unseen_tx > 0 {
        Line::styled(unseen, bold.add_modifier(Modifier::REVERSED))
    } else {
        Line::raw(unseen)
    });
    out
}

fn flag_table(c: &PortCounters, bold: Style) -> Vec<Line<'static>> {
    let mut out = vec![Line::styled(
        format!(
            "{:<3} {:>8} {:>8} {:>8} {:>8}",
            "TCP", "SYN", "SYNACK", "RST", "FIN"
        ),
        bold,
    )];
    for (d, name) in [(Direction::Receive, "rx"), (Direction::Transmit, "tx")] {
        let n = |f: TcpFlag| {
            c.tcp_flags
                .iter()
                .find(|x| x.direction == d && x.flag == f)
                .map_or(0, |x| x.count)
        };
        out.push(Line::raw(format!(
            "{name:<3} {:>8} {:>8} {:>8} {:>8}",
            count(n(TcpFlag::Syn)),
            count(n(TcpFlag::Synack)),
            count(n(TcpFlag::Rst)),
            count(n(TcpFlag::Fin))
        )));
    }
    out
}

/// `850µs`, `12.3ms`, `1.20s`.
fn duration(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.0}µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{seconds:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{Handshakes, TcpFlagCount};

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.000_85), "850µs");
        assert_eq!(duration(0.0123), "12.3ms");
        assert_eq!(duration(1.2), "1.20s");
    }

    #[test]
    fn flags_handshakes_and_unseen_fit_the_pane() {
        let c = PortCounters {
            tcp_flags: vec![TcpFlagCount {
                direction: Direction::Receive,
                flag: TcpFlag::Syn,
                count: 20,
            }],
            handshakes: vec![Handshakes {
                direction: Direction::Receive,
                count: 20,
                sum_ns: 20 * 120_000,
                buckets: vec![],
            }],
            unseen_rx: 40,
            ..PortCounters::default()
        };
        let l = lines(&c);
        let text: Vec<String> = l.iter().map(ToString::to_string).collect();
        assert!(text.iter().all(|t| t.chars().count() <= 40), "{text:#?}");
        assert!(
            text[1].starts_with("rx") && text[1].contains("20"),
            "{text:#?}"
        );
        assert!(
            text[3].contains("in") && text[3].contains("120µs"),
            "{text:#?}"
        );
        assert!(text[4].contains("40"), "{text:#?}");
    }
}
