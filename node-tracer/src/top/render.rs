//! Drawing, as a pure function of [`App`]: no I/O, so every screen is a `TestBackend` snapshot.
//!
//! Only the rows on screen are formatted, so a frame costs O(visible rows) whatever the number
//! of veths. Styling leans on bold/reverse/dim and a single red for trouble, which read the same
//! on light and dark terminals.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table, Wrap};

use super::app::{App, BridgeTotal, Input, SortKey};
use super::columns::{Col, columns};
use super::fmt::{count, fit, si};
use super::rates::Rates;

/// Below this the table cannot show a pod, a veth and both bit rates.
pub const MIN_WIDTH: u16 = 50;
pub const MIN_HEIGHT: u16 = 10;

/// Screen areas, computed the same way for drawing and for telling the app its page size.
struct Areas {
    status: Rect,
    error: Option<Rect>,
    bridges: Option<Rect>,
    table: Rect,
    detail: Option<Rect>,
    footer: Rect,
}

fn areas(area: Rect, app: &App) -> Areas {
    let error_h = u16::from(app.error.is_some());
    let detail = app.detail && app.selected_row().is_some();
    // The detail pane needs the height more than the totals do; they come back when it closes.
    let bridges_h = if app.bridges && !detail && !app.totals.is_empty() {
        // Header plus up to a quarter of the screen, so totals never crowd out the table.
        1 + (app.totals.len() as u16).min((area.height / 4).max(1))
    } else {
        0
    };
    let rest = area.height.saturating_sub(2 + error_h + bridges_h);
    // The table keeps its header and a few rows around the selection; the pane gets the rest.
    let detail_h = if detail {
        rest.saturating_sub((rest * 3 / 10).max(4))
    } else {
        0
    };
    let [status, error, bridges, table, detail, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(error_h),
        Constraint::Length(bridges_h),
        Constraint::Fill(1),
        Constraint::Length(detail_h),
        Constraint::Length(1),
    ])
    .areas(area);
    Areas {
        status,
        error: (error_h > 0).then_some(error),
        bridges: (bridges_h > 0).then_some(bridges),
        table,
        detail: (detail_h > 0).then_some(detail),
        footer,
    }
}

/// How many veth rows the table shows in a frame of `area`: the app's page size.
pub fn table_rows(area: Rect, app: &App) -> usize {
    usize::from(areas(area, app).table.height.saturating_sub(1))
}

pub fn render(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "Terminal too small: {}x{}.\nnode-tracer top needs at least {MIN_WIDTH}x{MIN_HEIGHT}.\nResize, or press q to quit.",
            area.width, area.height
        );
        let y = area.height.saturating_sub(3) / 2;
        let r = Rect {
            y: area.y + y,
            height: area.height.saturating_sub(y),
            ..area
        };
        frame.render_widget(
            Paragraph::new(msg)
                .alignment(Alignment::Center)
                .wrap(Wrap { trim: true }),
            r,
        );
        return;
    }
    let a = areas(area, app);
    status(frame, a.status, app);
    if let (Some(r), Some(e)) = (a.error, &app.error) {
        let s = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
        frame.render_widget(Line::styled(format!(" source: {e}"), s), r);
    }
    // NODE only in a view over several agents: as wide as the longest node name.
    let node = app
        .rows
        .iter()
        .filter_map(|r| r.node.as_ref().map(|n| n.chars().count()))
        .max()
        .unwrap_or(0);
    let cols = columns(area.width, node);
    if let Some(r) = a.bridges {
        bridges(frame, r, app, &cols);
    }
    table(frame, a.table, app, &cols);
    if let Some(r) = a.detail {
        super::detail::render(frame, r, app);
    }
    footer(frame, a.footer, app);
    if app.mode == Input::Help {
        help(frame, area);
    }
}

fn status(frame: &mut Frame, r: Rect, app: &App) {
    let arrow = if ascending(app) { "▲" } else { "▼" };
    let mut spans = vec![Span::styled(
        " node-tracer top ",
        Style::new().add_modifier(Modifier::BOLD),
    )];
    // PAUSED comes first so a narrow screen cannot cut it off.
    if app.paused {
        spans.push(Span::styled(
            " PAUSED ",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    spans.push(Span::raw(format!(
        "│ {} veths, {} shown │ every {} │ sort {} {arrow} ",
        app.rows.len(),
        app.view.len(),
        humantime(app.interval),
        app.sort.name()
    )));
    if !app.filter.is_empty() {
        spans.push(Span::raw(format!("│ filter \"{}\" ", app.filter)));
    }
    if app.samples < 2 && !app.paused {
        spans.push(Span::raw("│ measuring… "));
    }
    let bar = Style::new().add_modifier(Modifier::REVERSED);
    frame.render_widget(Paragraph::new(Line::from(spans)).style(bar), r);
}

/// Whether the table reads A→Z / smallest first: names sort ascending, numbers descending,
/// unless reversed.
fn ascending(app: &App) -> bool {
    app.reverse
        != matches!(
            app.sort,
            SortKey::Pod | SortKey::Veth | SortKey::Bridge | SortKey::Peer
        )
}

fn humantime(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn header_cell(c: Col, w: u16, app: &App) -> Line<'static> {
    let mut t = c.title().to_owned();
    if c.sorted_by(app.sort) {
        let arrow = if ascending(app) { '▲' } else { '▼' };
        if c.numeric() {
            t.insert(0, arrow);
        } else {
            t.push(arrow);
        }
    }
    let style = if c.sorted_by(app.sort) {
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    } else {
        Style::new().add_modifier(Modifier::BOLD)
    };
    let line = Line::styled(fit(&t, usize::from(w)), style);
    if c.numeric() {
        line.right_aligned()
    } else {
        line
    }
}

fn rate_cells(c: Col, r: &Rates) -> Option<String> {
    let pct = |i: usize| {
        r.mix_percent()
            .map_or_else(|| "-".to_owned(), |p| format!("{}%", p[i]))
    };
    Some(match c {
        Col::RxPps => si(r.rx_pps),
        Col::TxPps => si(r.tx_pps),
        Col::RxBps => si(r.rx_bps),
        Col::TxBps => si(r.tx_bps),
        Col::Mix => r
            .dominant()
            .map_or_else(|| "-".to_owned(), |(n, p)| format!("{n} {p}%")),
        Col::Share(i) => pct(i),
        _ => return None,
    })
}

fn widths(cols: &[(Col, u16)]) -> Vec<Constraint> {
    cols.iter().map(|&(_, w)| Constraint::Length(w)).collect()
}

fn cell(c: Col, w: u16, s: &str) -> Line<'static> {
    let l = Line::raw(fit(s, usize::from(w)));
    if c.numeric() { l.right_aligned() } else { l }
}

fn table(frame: &mut Frame, r: Rect, app: &App, cols: &[(Col, u16)]) {
    let header = Row::new(cols.iter().map(|&(c, w)| header_cell(c, w, app)));
    let page = usize::from(r.height.saturating_sub(1));
    // The app scrolls for the page size the loop told it; clamp in case this frame differs.
    let offset = app.offset.min(app.view.len().saturating_sub(page));
    let offset = if app.selected >= offset + page {
        app.selected + 1 - page
    } else {
        offset.min(app.selected)
    };
    let trouble = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
    let rows = app
        .view
        .iter()
        .enumerate()
        .skip(offset)
        .take(page)
        .map(|(pos, &i)| {
            let row = &app.rows[i];
            let cells = cols.iter().map(|&(c, w)| {
                let s = rate_cells(c, &row.rates).unwrap_or_else(|| match c {
                    Col::Node => row.node.clone().unwrap_or_default(),
                    Col::Pod => row.pod.clone(),
                    Col::Veth => row.veth.clone(),
                    Col::Bridge => row.bridge.clone(),
                    Col::Port => row
                        .port_no
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    Col::Peer => row.peer.clone(),
                    // "-": the agent does not track them (turned off, or an older agent).
                    Col::Drops if !app.snapshot.drops.drops_on => "-".to_owned(),
                    Col::Retx if !app.snapshot.drops.retransmits_on => "-".to_owned(),
                    Col::Drops => si(row.drops),
                    Col::Retx => si(row.retx),
                    // "-": not attached here, so nothing to compare with the kernel's count.
                    Col::Unseen => row.unseen.map_or_else(|| "-".to_owned(), count),
                    _ => row.macs.to_string(),
                });
                // A port with unseen packets is flagged in red: its veth always, the count
                // where the UNSEEN column fits.
                let flagged = matches!(c, Col::Veth | Col::Unseen) && row.unseen > Some(0);
                let l = cell(c, w, &s);
                if flagged { l.style(trouble) } else { l }
            });
            let silent = row.rates.rx_pps + row.rates.tx_pps == 0.0;
            let style = match (pos == app.selected, silent) {
                (true, _) => Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD),
                (false, true) => Style::new().add_modifier(Modifier::DIM),
                (false, false) => Style::new(),
            };
            Row::new(cells).style(style)
        });
    frame.render_widget(
        Table::new(rows, widths(cols))
            .header(header)
            .column_spacing(1),
        r,
    );
    if app.view.is_empty() && r.height > 2 {
        let msg = if app.samples == 0 {
            "waiting for the first snapshot…".to_owned()
        } else if app.rows.is_empty() {
            "no veths on this node".to_owned()
        } else {
            format!(
                "no veth matches \"{}\"  (/ to change, Esc in the filter to undo)",
                app.filter
            )
        };
        let m = Rect {
            y: r.y + 2,
            height: 1,
            ..r
        };
        frame.render_widget(
            Line::styled(msg, Style::new().add_modifier(Modifier::ITALIC)).centered(),
            m,
        );
    }
}

fn bridges(frame: &mut Frame, r: Rect, app: &App, cols: &[(Col, u16)]) {
    // Reuse the table's rate columns so totals line up under the rows they sum.
    let first: u16 = cols
        .iter()
        .take_while(|(c, _)| !matches!(c, Col::RxPps | Col::RxBps))
        .map(|(_, w)| w + 1)
        .sum();
    let mut tcols: Vec<(Col, u16)> = vec![
        (Col::Bridge, first.saturating_sub(7).max(8)),
        (Col::Port, 5),
    ];
    tcols.extend(cols.iter().copied().filter(|(c, _)| {
        !matches!(
            c,
            Col::Node | Col::Pod | Col::Veth | Col::Bridge | Col::Port | Col::Peer | Col::Macs
        )
    }));
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let header = Row::new(tcols.iter().map(|&(c, w)| {
        let t = match c {
            Col::Bridge => "BRIDGE TOTALS",
            Col::Port => "VETHS",
            // Drops, retransmits and unseen packets are per pod; blank keeps MIX under MIX.
            Col::Drops | Col::Retx | Col::Unseen => "",
            c => c.title(),
        };
        let l = Line::styled(fit(t, usize::from(w)), bold);
        if c.numeric() { l.right_aligned() } else { l }
    }));
    let shown = usize::from(r.height.saturating_sub(1));
    let rows = app.totals.iter().take(shown).map(|t: &BridgeTotal| {
        Row::new(tcols.iter().map(|&(c, w)| {
            let s = rate_cells(c, &t.rates).unwrap_or_else(|| match c {
                Col::Bridge => t.name.clone(),
                Col::Drops | Col::Retx | Col::Unseen => String::new(),
                _ => t.ports.to_string(),
            });
            cell(c, w, &s)
        }))
    });
    frame.render_widget(
        Table::new(rows, widths(&tcols))
            .header(header)
            .column_spacing(1),
        r,
    );
}

fn footer(frame: &mut Frame, r: Rect, app: &App) {
    let key = Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED);
    let line = if let Input::Filter { .. } = app.mode {
        Line::from(vec![
            Span::styled(" / ", key),
            Span::raw(format!(" filter: {}", app.filter)),
            Span::styled("█", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            Span::raw("   Enter apply · Esc cancel"),
        ])
    } else {
        let keys: [(&str, &str); 9] = [
            ("q", "quit"),
            ("↑↓", "move"),
            ("⏎", "detail"),
            ("/", "filter"),
            ("s", "sort"),
            ("S", "reverse"),
            ("p", if app.paused { "resume" } else { "pause" }),
            ("b", "bridges"),
            ("?", "help"),
        ];
        let mut spans = Vec::new();
        for (k, what) in keys {
            spans.push(Span::styled(k, key));
            spans.push(Span::raw(format!(" {what} ")));
        }
        Line::from(spans)
    };
    frame.render_widget(line, r);
}

fn help(frame: &mut Frame, area: Rect) {
    let lines = [
        "q Esc     quit",
        "↑ ↓ j k   move the selection (PgUp PgDn Home End too)",
        "Enter     show / hide the detail of the selected veth",
        "/         filter by pod, namespace, veth or bridge;",
        "          Enter keeps it, Esc puts back the old one",
        "s         next sort column; S reverses the order",
        "p space   pause / resume (the screen freezes)",
        "b         show / hide per-bridge totals",
        "? h       this help (any key closes it)",
        "",
        "Rates are from the pod's point of view: RX is what",
        "the pod received, TX what it sent. pps = packets/s,",
        "bps = bits/s. MIX is the share of packets last",
        "interval: icmp (v4+v6), tcp, udp, arp, other.",
        "UNSEEN: packets that passed the veth without our",
        "hooks seeing them (0 on a normal veth; red if not).",
        "",
        "--sort: pod veth bridge peer rx-pps tx-pps rx-bps",
        "tx-bps icmp tcp udp arp other macs drops retx",
        "unseen (-name reverses)",
    ];
    let w = (lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 4).min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    frame.render_widget(Clear, r);
    let text = Text::from(lines.iter().map(|l| Line::raw(*l)).collect::<Vec<_>>());
    let block = Block::default().borders(Borders::ALL).title(Line::styled(
        " help ",
        Style::new().add_modifier(Modifier::BOLD),
    ));
    frame.render_widget(Paragraph::new(text).block(block), r);
}
