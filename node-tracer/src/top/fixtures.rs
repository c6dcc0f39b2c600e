//! Hand-built snapshots and helpers shared by the screen and state tests: a lab node, an empty
//! node, a thousand veths, and a `TestBackend` screen dump.

use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::App;
use super::render::{render, table_rows};
use crate::model::{
    Bridge, Direction, IcmpCount, MacSeen, Mode, Peer, Pod, PodSource, Port, PortCounters, Snapshot,
};

pub const T0: u64 = 1_700_000_000_000;

pub fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

pub fn ch(c: char) -> KeyEvent {
    key(KeyCode::Char(c))
}

/// A pod's veth with `pkts` packets per protocol per second (receive, transmit) over `secs`
/// seconds, and 100-byte packets except TCP at 1000.
#[allow(clippy::too_many_arguments)]
pub fn veth(
    ifindex: u32,
    name: &str,
    bridge: Option<(&str, u16)>,
    pod: (&str, &str),
    pod_ip: &str,
    rx: [u64; 8],
    tx: [u64; 8],
    secs: u64,
) -> Port {
    let size = |i: usize| if i == 3 { 1000 } else { 100 };
    let mut c = PortCounters::default();
    for i in 0..8 {
        c.rx_packets[i] = rx[i] * secs;
        c.tx_packets[i] = tx[i] * secs;
        c.rx_bytes[i] = rx[i] * secs * size(i);
        c.tx_bytes[i] = tx[i] * secs * size(i);
    }
    let pod_mac = format!("0a:58:0a:f4:00:{ifindex:02x}");
    Port {
        ifindex,
        name: name.to_owned(),
        mac: Some(format!("ee:ee:ee:ee:ee:{ifindex:02x}")),
        mode: if bridge.is_some() {
            Mode::Bridged
        } else {
            Mode::Routed
        },
        kind: crate::model::PortKind::Veth,
        master: bridge.map(|b| b.0.to_owned()),
        port_no: bridge.map(|b| b.1),
        addresses: Vec::new(),
        routes: Vec::new(),
        peer: Some(Peer {
            ifindex: 2,
            name: Some("eth0".to_owned()),
            mac: Some(pod_mac.clone()),
            addresses: vec![pod_ip.to_owned()],
            netnsid: Some(ifindex as i32 - 6),
            netns: Some(format!("/var/run/netns/cni-{ifindex:04}")),
            netns_inode: Some(4_026_532_000 + u64::from(ifindex)),
        }),
        pod: Some(Pod {
            namespace: pod.0.to_owned(),
            name: pod.1.to_owned(),
            uid: format!("uid-{ifindex}"),
            source: PodSource::Cri,
            container: None,
        }),
        attached: true,
        promiscuous: false,
        hairpin: bridge.is_some(),
        hairpin_expected: false,
        counters: c,
        macs: vec![MacSeen {
            mac: pod_mac,
            direction: Direction::Transmit,
            packets: tx.iter().sum::<u64>() * secs,
            bytes: 0,
            first_seen_ms: T0 - 3_600_000,
            last_seen_ms: T0 + secs * 1000 - 1000,
        }],
        node: None,
    }
}

/// The lab node `secs` seconds after the counters started: cni0 with two pods, docker0 empty,
/// two GKE-style routed pods whose host ends share 10.0.0.1/32.
pub fn lab(secs: u64) -> Snapshot {
    let web = veth(
        6,
        "veth1c2a6f3e",
        Some(("cni0", 1)),
        ("default", "web-7d4b9c6f5-x2k4q"),
        "10.244.0.5/24",
        [0, 0, 0, 800, 0, 0, 0, 0],
        [1, 0, 0, 600, 0, 0, 0, 0],
        secs,
    );
    let mut dns = veth(
        7,
        "veth8f31d0b2",
        Some(("cni0", 2)),
        ("kube-system", "coredns-5d78c9869d-qk2mz"),
        "10.244.0.6/24",
        [1, 0, 0, 2, 120, 0, 0, 0],
        [1, 0, 0, 2, 120, 0, 0, 0],
        secs,
    );
    // A second MAC on the same port: a macvlan or a misbehaving pod, exactly what MACS is for.
    dns.macs.push(MacSeen {
        mac: "02:42:ac:11:00:09".to_owned(),
        direction: Direction::Transmit,
        packets: 3,
        bytes: 180,
        first_seen_ms: T0 - 60_000,
        last_seen_ms: T0 - 42_000,
    });
    let mut pinger = veth(
        9,
        "gke3a9d1c0b7e1",
        None,
        ("default", "pinger"),
        "10.8.0.12/32",
        [0, 2, 0, 0, 0, 0, 0, 0],
        [0, 2, 0, 0, 0, 0, 0, 0],
        secs,
    );
    pinger.counters.icmp = vec![
        IcmpCount {
            direction: Direction::Transmit,
            family: 4,
            icmp_type: 8,
            count: 2 * secs,
        },
        IcmpCount {
            direction: Direction::Receive,
            family: 4,
            icmp_type: 0,
            count: 2 * secs,
        },
        IcmpCount {
            direction: Direction::Receive,
            family: 4,
            icmp_type: 3,
            count: 1,
        },
    ];
    let exporter = veth(
        10,
        "gke77e0f2a14c9",
        None,
        ("monitoring", "node-exporter-9v7xl"),
        "10.8.0.13/32",
        [1, 0, 0, 30, 0, 0, 0, 0],
        [0, 0, 0, 25, 0, 0, 0, 1],
        secs,
    );
    let mut ports = vec![web, dns, pinger, exporter];
    for p in &mut ports[2..] {
        p.addresses = vec!["10.0.0.1/32".to_owned()];
        p.routes = p.peer.iter().flat_map(|q| q.addresses.clone()).collect();
        p.hairpin = false;
    }
    Snapshot {
        taken_at_ms: T0 + secs * 1000,
        ports,
        bridges: vec![
            Bridge {
                ifindex: 3,
                name: "docker0".into(),
                mac: None,
                addresses: vec!["172.17.0.1/16".into()],
                ports: vec![],
            },
            Bridge {
                ifindex: 4,
                name: "cni0".into(),
                mac: None,
                addresses: vec!["10.244.0.1/24".into()],
                ports: vec!["veth1c2a6f3e".into(), "veth8f31d0b2".into()],
            },
        ],
        fdb: Vec::new(),
        drops: lab_drops(secs),
        ..Snapshot::default()
    }
}

/// web drops 3 packets a second to a firewall rule and 1 to a closed port, and retransmits 2
/// TCP segments a second.
fn lab_drops(secs: u64) -> crate::drop_report::DropReport {
    use crate::drop_report::{DropCount, DropReport, RetransmitCount};
    let web = |reason: &str, count: u64| DropCount {
        namespace: "default".into(),
        pod: "web-7d4b9c6f5-x2k4q".into(),
        interface: "veth1c2a6f3e".into(),
        reason: reason.into(),
        count,
        ..DropCount::default()
    };
    DropReport {
        drops_on: true,
        retransmits_on: true,
        drops: vec![web("netfilter_drop", 3 * secs), web("no_socket", secs)],
        retransmits: vec![RetransmitCount {
            namespace: "default".into(),
            pod: "web-7d4b9c6f5-x2k4q".into(),
            count: 2 * secs,
            ..RetransmitCount::default()
        }],
    }
}

/// An app that has seen `a` then `b`.
pub fn app_of(a: Snapshot, b: Snapshot) -> App {
    let mut app = App::new(Duration::from_secs(1), None, None).unwrap();
    app.on_snapshot(a);
    app.on_snapshot(b);
    app
}

pub fn lab_app() -> App {
    app_of(lab(100), lab(101))
}

/// Draws `app` on a `w`x`h` screen the way the event loop does and returns the text, one line
/// per row, trailing blanks cut.
pub fn screen(app: &mut App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    app.set_page(table_rows(ratatui::layout::Rect::new(0, 0, w, h), app));
    t.draw(|f| render(f, app)).unwrap();
    let b = t.backend().buffer();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| b[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn many(n: u32, secs: u64) -> Snapshot {
    let ports = (0..n)
        .map(|i| {
            let rx = [
                1,
                u64::from(i % 7),
                0,
                u64::from(i % 100) * 10,
                u64::from(i % 13),
                0,
                0,
                0,
            ];
            let tx = [
                1,
                u64::from(i % 5),
                0,
                u64::from(i % 90) * 8,
                u64::from(i % 11),
                0,
                0,
                0,
            ];
            let ns = ["default", "kube-system", "shop", "batch"][i as usize % 4];
            veth(
                100 + i,
                &format!("veth{:08x}", 0x1000_0000 + i * 7919),
                Some(("cni0", (i + 1) as u16)),
                (ns, &format!("worker-{i:04}")),
                &format!("10.244.{}.{}/24", i / 250, i % 250 + 2),
                rx,
                tx,
                secs,
            )
        })
        .collect();
    Snapshot {
        taken_at_ms: T0 + secs * 1000,
        ports,
        bridges: vec![Bridge {
            name: "cni0".into(),
            ..Bridge::default()
        }],
        fdb: Vec::new(),
        ..Snapshot::default()
    }
}
