//! Which table columns fit a given width, and what each one is called and sorted by.

use super::app::SortKey;
use super::rates::MIX;

const POD_MIN: u16 = 12;
const POD_MAX: u16 = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Col {
    /// In a view over several agents only; as wide as the longest node name.
    Node,
    Pod,
    Veth,
    Bridge,
    Port,
    Peer,
    RxPps,
    TxPps,
    RxBps,
    TxBps,
    /// The busiest protocol and its share, for narrow screens.
    Mix,
    /// One share column per protocol bucket, for wide screens.
    Share(usize),
    Macs,
    /// Packets dropped per second (on the veth or inside the pod).
    Drops,
    /// TCP segments the pod retransmitted per second.
    Retx,
    /// Packets that passed the veth past our hooks, since the agent started (0 on a normal
    /// veth: any other value flags the port).
    Unseen,
}

impl Col {
    pub(super) fn width(self) -> u16 {
        match self {
            Col::Pod => POD_MIN,
            Col::Node => NODE_MAX,
            Col::Veth => 15, // IFNAMSIZ - 1
            Col::Bridge => 8,
            Col::Port | Col::Macs => 4,
            Col::Drops | Col::Retx | Col::Unseen => 6,
            Col::Peer => 11,
            Col::RxPps | Col::TxPps | Col::RxBps | Col::TxBps => 7,
            Col::Mix => 9,
            Col::Share(_) => 5,
        }
    }

    pub(super) fn title(self) -> &'static str {
        match self {
            Col::Node => "NODE",
            Col::Pod => "POD",
            Col::Veth => "VETH",
            Col::Bridge => "BRIDGE",
            Col::Port => "PORT",
            Col::Peer => "PEER",
            Col::RxPps => "RX pps",
            Col::TxPps => "TX pps",
            Col::RxBps => "RX bps",
            Col::TxBps => "TX bps",
            Col::Mix => "MIX",
            Col::Share(i) => ["ICMP", "TCP", "UDP", "ARP", "OTH"][i],
            Col::Macs => "MACS",
            Col::Drops => "DROP/s",
            Col::Retx => "RETX/s",
            Col::Unseen => "UNSEEN",
        }
    }

    pub(super) fn numeric(self) -> bool {
        !matches!(
            self,
            Col::Node | Col::Pod | Col::Veth | Col::Bridge | Col::Peer | Col::Mix
        )
    }

    pub(super) fn sorted_by(self, k: SortKey) -> bool {
        match (self, k) {
            (Col::Pod, SortKey::Pod)
            | (Col::Veth, SortKey::Veth)
            | (Col::Bridge, SortKey::Bridge)
            | (Col::Peer, SortKey::Peer)
            | (Col::RxPps, SortKey::RxPps)
            | (Col::TxPps, SortKey::TxPps)
            | (Col::RxBps, SortKey::RxBps)
            | (Col::TxBps, SortKey::TxBps)
            | (Col::Macs, SortKey::Macs)
            | (Col::Drops, SortKey::Drops)
            | (Col::Retx, SortKey::Retx)
            | (Col::Unseen, SortKey::Unseen) => true,
            (Col::Mix, k) => matches!(
                k,
                SortKey::Icmp | SortKey::Tcp | SortKey::Udp | SortKey::Arp | SortKey::Other
            ),
            (Col::Share(i), k) => MIX[i] == k.name(),
            _ => false,
        }
    }
}

/// Widest NODE column; longer node names are cut.
const NODE_MAX: u16 = 20;

/// The columns that fit `width`: a NODE column first when `node` (the longest node name) is
/// not 0, then [`fitting`] the rest.
pub(super) fn columns(width: u16, node: usize) -> Vec<(Col, u16)> {
    if node == 0 {
        return fitting(width);
    }
    let w = u16::try_from(node).unwrap_or(NODE_MAX).clamp(4, NODE_MAX);
    let mut cols = vec![(Col::Node, w)];
    cols.extend(fitting(width.saturating_sub(w + 1)));
    cols
}

/// Picks the columns that fit `width`, most useful first, and their widths. The pod column
/// takes what is left, up to [`POD_MAX`].
fn fitting(width: u16) -> Vec<(Col, u16)> {
    use Col::{
        Bridge, Drops, Macs, Mix, Peer, Pod, Port, Retx, RxBps, RxPps, TxBps, TxPps, Unseen, Veth,
    };
    let need = |cols: &[Col]| -> u16 { cols.iter().map(|c| c.width() + 1).sum::<u16>() - 1 };
    let shares = [
        Col::Share(0),
        Col::Share(1),
        Col::Share(2),
        Col::Share(3),
        Col::Share(4),
    ];
    let mut candidates: Vec<Vec<Col>> = vec![
        vec![Pod, Veth, RxBps, TxBps],
        vec![Pod, Veth, RxPps, TxPps, RxBps, TxBps],
        vec![Pod, Veth, RxPps, TxPps, RxBps, TxBps, Macs],
        vec![Pod, Veth, RxPps, TxPps, RxBps, TxBps, Mix, Macs],
        vec![
            Pod, Veth, RxPps, TxPps, RxBps, TxBps, Drops, Retx, Mix, Macs,
        ],
        vec![
            Pod, Veth, Bridge, Port, RxPps, TxPps, RxBps, TxBps, Drops, Retx, Mix, Macs,
        ],
        // UNSEEN after the wiring: a flagged port's veth is red at every width anyway.
        vec![
            Pod, Veth, Bridge, Port, RxPps, TxPps, RxBps, TxBps, Drops, Retx, Unseen, Mix, Macs,
        ],
        vec![
            Pod, Veth, Bridge, Port, Peer, RxPps, TxPps, RxBps, TxBps, Drops, Retx, Unseen, Mix,
            Macs,
        ],
    ];
    let mut wide = vec![
        Pod, Veth, Bridge, Port, Peer, RxPps, TxPps, RxBps, TxBps, Drops, Retx, Unseen,
    ];
    wide.extend(shares);
    wide.push(Macs);
    candidates.push(wide);
    // Past the essentials, an extra column is only worth it while the pod keeps 24 cells: the
    // pod name is what people scan for.
    let chosen = candidates
        .into_iter()
        .enumerate()
        .rev()
        .find(|(i, c)| need(c) + if *i >= 4 { 24 - POD_MIN } else { 0 } <= width)
        .map_or_else(|| vec![Pod, Veth, RxBps, TxBps], |(_, c)| c);
    let spare = width.saturating_sub(need(&chosen));
    chosen
        .into_iter()
        .map(|c| {
            (
                c,
                if c == Pod {
                    (POD_MIN + spare).min(POD_MAX)
                } else {
                    c.width()
                },
            )
        })
        .collect()
}
