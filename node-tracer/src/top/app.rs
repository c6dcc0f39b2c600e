//! The view's state, free of any terminal: rows built from the latest two snapshots, sort,
//! filter, selection and toggles. Keys come in as crossterm events but nothing here does I/O.

use std::collections::HashMap;
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::rates::{self, Rates};
use super::row::build_row;
pub use super::row::{Row, RowKey, peer_label};
pub use super::sort::SortKey;
use super::sort::compare;
use crate::error::Error;
use crate::model::{Port, Snapshot};

/// Sums over the ports of one bridge (or of all routed / unattached veths).
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeTotal {
    pub name: String,
    pub ports: usize,
    pub rates: Rates,
}

/// Which overlay or input currently owns the keyboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Normal,
    Help,
    /// Editing the filter; holds the filter to go back to on Esc.
    Filter {
        before: String,
    },
}

/// What the event loop should do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
}

// Each bool is an independent on/off key (Enter, p, b); an enum would only rename them.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub struct App {
    pub interval: Duration,
    pub snapshot: Snapshot,
    /// The sample before `snapshot`, for deltas (ICMP per type in the detail pane).
    pub prev: Option<Snapshot>,
    pub elapsed_ms: u64,
    pub rows: Vec<Row>,
    /// Indices into `rows` after filter and sort: what the table shows, top to bottom.
    pub view: Vec<usize>,
    pub sort: SortKey,
    pub reverse: bool,
    pub filter: String,
    pub mode: Input,
    /// Position in `view`.
    pub selected: usize,
    /// First `view` position on screen.
    pub offset: usize,
    /// Table rows that fit on screen, told by the event loop for paging and scrolling.
    pub page: usize,
    pub detail: bool,
    pub paused: bool,
    pub bridges: bool,
    pub samples: u64,
    /// The last error from the snapshot source, shown until the next good snapshot.
    pub error: Option<String>,
    pub totals: Vec<BridgeTotal>,
}

impl App {
    pub fn new(
        interval: Duration,
        filter: Option<String>,
        sort: Option<&str>,
    ) -> Result<App, Error> {
        let (sort, reverse) = match sort {
            Some(s) => SortKey::parse(s)?,
            None => (SortKey::RxBps, false),
        };
        Ok(App {
            interval,
            snapshot: Snapshot::default(),
            prev: None,
            elapsed_ms: 0,
            rows: Vec::new(),
            view: Vec::new(),
            sort,
            reverse,
            filter: filter.unwrap_or_default(),
            mode: Input::Normal,
            selected: 0,
            offset: 0,
            page: 20,
            detail: false,
            paused: false,
            bridges: true,
            samples: 0,
            error: None,
            totals: Vec::new(),
        })
    }

    /// Takes a new sample. While paused the screen stays frozen; the sample after unpausing is
    /// compared with the last one shown, so its rates average over the pause.
    pub fn on_snapshot(&mut self, snap: Snapshot) {
        if self.paused {
            return;
        }
        // A view over several agents names the ones that did not answer; the rest is shown.
        self.error = (!snap.unreachable.is_empty()).then(|| snap.unreachable.join("; "));
        // An agent serves its latest sample; polling it faster than it samples returns the same
        // one again, which is no news (and would read as a second of silence).
        if self.samples > 0 && snap.taken_at_ms == self.snapshot.taken_at_ms {
            return;
        }
        self.samples += 1;
        let prev = std::mem::replace(&mut self.snapshot, snap);
        self.prev = (self.samples > 1).then_some(prev);
        self.rebuild();
    }

    pub fn on_error(&mut self, e: String) {
        self.error = Some(e);
    }

    fn rebuild(&mut self) {
        // Until the second sample there are no rates and the order is by name; following the
        // selected veth into the first rate order would leave the cursor mid-list.
        let keep = if self.samples > 2 {
            self.selected_row().map(Row::key)
        } else {
            None
        };
        self.elapsed_ms = self
            .prev
            .as_ref()
            .map_or(0, |p| rates::elapsed_ms(p, &self.snapshot));
        // A port is the same port only if ifindex and name agree: the kernel reuses ifindexes.
        let before: HashMap<(Option<&str>, u32), &Port> = self
            .prev
            .iter()
            .flat_map(|s| &s.ports)
            .map(|p| ((p.node.as_deref(), p.ifindex), p))
            .collect();
        self.rows = self
            .snapshot
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let prev = before
                    .get(&(p.node.as_deref(), p.ifindex))
                    .copied()
                    .filter(|q| q.name == p.name);
                build_row(i, p, prev, self.node_elapsed_ms(p.node.as_deref()))
            })
            .collect();
        super::loss::fill(
            &mut self.rows,
            &self.snapshot.ports,
            self.prev.as_ref().map(|p| &p.drops),
            &self.snapshot.drops,
            self.elapsed_ms,
        );
        self.totals = self.bridge_totals();
        self.refilter(keep);
    }

    /// The interval of `node`'s own two samples in a view over several agents; the view's
    /// otherwise.
    fn node_elapsed_ms(&self, node: Option<&str>) -> u64 {
        let times = |s: &Snapshot| node.and_then(|n| s.taken_at_by_node.get(n).copied());
        match (self.prev.as_ref().and_then(times), times(&self.snapshot)) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => self.elapsed_ms,
        }
    }

    fn bridge_totals(&self) -> Vec<BridgeTotal> {
        let mut out: Vec<BridgeTotal> = self
            .snapshot
            .bridges
            .iter()
            .map(|b| BridgeTotal {
                name: b.name.clone(),
                ports: 0,
                rates: Rates::default(),
            })
            .collect();
        for r in &self.rows {
            let name = r.bridge_total();
            let idx = if let Some(i) = out.iter().position(|t| t.name == name) {
                i
            } else {
                out.push(BridgeTotal {
                    name,
                    ports: 0,
                    rates: Rates::default(),
                });
                out.len() - 1
            };
            out[idx].ports += 1;
            out[idx].rates.add(&r.rates);
        }
        out
    }

    /// Reapplies filter and sort, keeping the selection on the same veth when it is still shown.
    fn refilter(&mut self, keep: Option<RowKey>) {
        let needle = self.filter.to_lowercase();
        self.view = (0..self.rows.len())
            .filter(|&i| self.rows[i].haystack.contains(&needle))
            .collect();
        let (key, desc) = (self.sort, self.sort.descending() != self.reverse);
        let rows = &self.rows;
        self.view.sort_by(|&a, &b| {
            let (ra, rb) = (&rows[a], &rows[b]);
            let o = compare(key, ra, rb);
            let o = if desc { o.reverse() } else { o };
            // Ties by pod then veth, always A→Z, so equal rows do not shuffle between refreshes.
            o.then_with(|| ra.pod.cmp(&rb.pod))
                .then_with(|| ra.veth.cmp(&rb.veth))
        });
        self.selected = keep
            .and_then(|k| self.view.iter().position(|&i| self.rows[i].key() == k))
            .unwrap_or(0);
        self.scroll();
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.view.get(self.selected).map(|&i| &self.rows[i])
    }

    pub fn selected_port(&self) -> Option<&Port> {
        self.selected_row()
            .and_then(|r| self.snapshot.ports.get(r.port))
    }

    /// The selected port as it was in the previous sample, if it is the same veth.
    pub fn selected_prev(&self) -> Option<&Port> {
        let cur = self.selected_port()?;
        self.prev
            .as_ref()?
            .ports
            .iter()
            .find(|p| p.ifindex == cur.ifindex && p.name == cur.name && p.node == cur.node)
    }

    /// Sets how many table rows fit, and keeps the selection on screen.
    pub fn set_page(&mut self, rows: usize) {
        self.page = rows.max(1);
        self.scroll();
    }

    fn scroll(&mut self) {
        let max_off = self.view.len().saturating_sub(self.page);
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + self.page {
            self.offset = self.selected + 1 - self.page;
        }
        self.offset = self.offset.min(max_off);
    }

    fn select(&mut self, pos: usize) {
        self.selected = pos.min(self.view.len().saturating_sub(1));
        self.scroll();
    }

    pub fn set_sort(&mut self, key: SortKey, reverse: bool) {
        let keep = self.selected_row().map(Row::key);
        self.sort = key;
        self.reverse = reverse;
        self.refilter(keep);
    }

    pub fn set_filter(&mut self, f: &str) {
        let keep = self.selected_row().map(Row::key);
        f.clone_into(&mut self.filter);
        self.refilter(keep);
    }

    pub fn on_key(&mut self, k: KeyEvent) -> Action {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match std::mem::replace(&mut self.mode, Input::Normal) {
            Input::Help => Action::Continue, // any key closes help
            Input::Filter { before } => {
                self.filter_key(k, before);
                Action::Continue
            }
            Input::Normal => self.normal_key(k),
        }
    }

    fn filter_key(&mut self, k: KeyEvent, before: String) {
        // The filter applies as it is typed; Esc puts back the one from before.
        let mut f = self.filter.clone();
        match k.code {
            KeyCode::Enter => return,
            KeyCode::Esc => return self.set_filter(&before),
            KeyCode::Backspace => {
                f.pop();
            }
            KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => f.push(c),
            _ => {}
        }
        self.set_filter(&f);
        self.mode = Input::Filter { before };
    }

    fn normal_key(&mut self, k: KeyEvent) -> Action {
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Down | KeyCode::Char('j') => self.select(self.selected + 1),
            KeyCode::Up | KeyCode::Char('k') => self.select(self.selected.saturating_sub(1)),
            KeyCode::PageDown => self.select(self.selected + self.page),
            KeyCode::PageUp => self.select(self.selected.saturating_sub(self.page)),
            KeyCode::Home | KeyCode::Char('g') => self.select(0),
            KeyCode::End | KeyCode::Char('G') => self.select(usize::MAX),
            KeyCode::Enter => self.detail = !self.detail,
            KeyCode::Char('/') => {
                self.mode = Input::Filter {
                    before: self.filter.clone(),
                }
            }
            KeyCode::Char('s') => {
                let i = SortKey::ALL
                    .iter()
                    .position(|&k| k == self.sort)
                    .unwrap_or(0);
                self.set_sort(SortKey::ALL[(i + 1) % SortKey::ALL.len()], false);
            }
            KeyCode::Char('S') => self.set_sort(self.sort, !self.reverse),
            KeyCode::Char('p' | ' ') => self.paused = !self.paused,
            KeyCode::Char('b') => self.bridges = !self.bridges,
            KeyCode::Char('?' | 'h') => self.mode = Input::Help,
            _ => {}
        }
        Action::Continue
    }
}
