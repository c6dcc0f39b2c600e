//! Sort columns: their names (for `--sort` and the status line), their natural direction and
//! how two rows compare.

use std::cmp::Ordering;

use super::row::Row;
use crate::error::Error;

/// Columns the table can be sorted by, in the order `s` cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Pod,
    Veth,
    Bridge,
    Peer,
    RxPps,
    TxPps,
    RxBps,
    TxBps,
    Icmp,
    Tcp,
    Udp,
    Arp,
    Other,
    Macs,
    Drops,
    Retx,
    /// Packets that passed the veth past our hooks (see `coverage`): the flagged ports first.
    Unseen,
}

impl SortKey {
    pub const ALL: [SortKey; 17] = [
        SortKey::Pod,
        SortKey::Veth,
        SortKey::Bridge,
        SortKey::Peer,
        SortKey::RxPps,
        SortKey::TxPps,
        SortKey::RxBps,
        SortKey::TxBps,
        SortKey::Icmp,
        SortKey::Tcp,
        SortKey::Udp,
        SortKey::Arp,
        SortKey::Other,
        SortKey::Macs,
        SortKey::Drops,
        SortKey::Retx,
        SortKey::Unseen,
    ];

    /// The name accepted by `--sort` and shown in the status line.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Pod => "pod",
            SortKey::Veth => "veth",
            SortKey::Bridge => "bridge",
            SortKey::Peer => "peer",
            SortKey::RxPps => "rx-pps",
            SortKey::TxPps => "tx-pps",
            SortKey::RxBps => "rx-bps",
            SortKey::TxBps => "tx-bps",
            SortKey::Icmp => "icmp",
            SortKey::Tcp => "tcp",
            SortKey::Udp => "udp",
            SortKey::Arp => "arp",
            SortKey::Other => "other",
            SortKey::Macs => "macs",
            SortKey::Drops => "drops",
            SortKey::Retx => "retx",
            SortKey::Unseen => "unseen",
        }
    }

    /// Parses `--sort`: a column name, optionally prefixed with `-` to reverse its natural order.
    pub fn parse(s: &str) -> Result<(SortKey, bool), Error> {
        let (name, reverse) = s.strip_prefix('-').map_or((s, false), |n| (n, true));
        SortKey::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
            .map(|k| (k, reverse))
            .ok_or_else(|| Error::BadSort {
                given: s.to_owned(),
                valid: SortKey::ALL.map(SortKey::name).join(", "),
            })
    }

    /// Names sort A→Z, numbers busiest first: what a person wants on the first press.
    pub(super) fn descending(self) -> bool {
        !matches!(
            self,
            SortKey::Pod | SortKey::Veth | SortKey::Bridge | SortKey::Peer
        )
    }
}

/// Orders two rows by `key`, smallest first (the caller reverses).
pub(super) fn compare(key: SortKey, a: &Row, b: &Row) -> Ordering {
    let f = |x: f64, y: f64| x.total_cmp(&y);
    let share = |r: &Row, i: usize| r.rates.mix_percent().map_or(0, |p| p[i]);
    match key {
        SortKey::Pod => a.pod.cmp(&b.pod),
        SortKey::Veth => a.veth.cmp(&b.veth),
        SortKey::Bridge => (&a.bridge, a.port_no).cmp(&(&b.bridge, b.port_no)),
        SortKey::Peer => a.peer.cmp(&b.peer),
        SortKey::RxPps => f(a.rates.rx_pps, b.rates.rx_pps),
        SortKey::TxPps => f(a.rates.tx_pps, b.rates.tx_pps),
        SortKey::RxBps => f(a.rates.rx_bps, b.rates.rx_bps),
        SortKey::TxBps => f(a.rates.tx_bps, b.rates.tx_bps),
        SortKey::Icmp => share(a, 0).cmp(&share(b, 0)),
        SortKey::Tcp => share(a, 1).cmp(&share(b, 1)),
        SortKey::Udp => share(a, 2).cmp(&share(b, 2)),
        SortKey::Arp => share(a, 3).cmp(&share(b, 3)),
        SortKey::Other => share(a, 4).cmp(&share(b, 4)),
        SortKey::Macs => a.macs.cmp(&b.macs),
        SortKey::Drops => f(a.drops, b.drops),
        SortKey::Retx => f(a.retx, b.retx),
        SortKey::Unseen => a.unseen.cmp(&b.unseen),
    }
}
