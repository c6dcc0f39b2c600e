//! Screens and state of `top`, from hand-built snapshots: no root, no kernel, no terminal.

use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Modifier;

use super::app::{Action, App, SortKey};
use super::render::{render, table_rows};
use crate::model::{
    Bridge, Direction, IcmpCount, MacSeen, Mode, Peer, Pod, PodSource, Port, PortCounters, Snapshot,
};

const T0: u64 = 1_700_000_000_000;

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn ch(c: char) -> KeyEvent {
    key(KeyCode::Char(c))
}

/// A pod's veth with `pkts` packets per protocol per second (receive, transmit) over `secs`
/// seconds, and 100-byte packets except TCP at 1000.
#[allow(clippy::too_many_arguments)]
fn veth(
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
        }),
        attached: true,
        promiscuous: false,
        hairpin: bridge.is_some(),
        counters: c,
        macs: vec![MacSeen {
            mac: pod_mac,
            direction: Direction::Transmit,
            packets: tx.iter().sum::<u64>() * secs,
            bytes: 0,
            first_seen_ms: T0 - 3_600_000,
            last_seen_ms: T0 + secs * 1000 - 1000,
        }],
    }
}

/// The lab node `secs` seconds after the counters started: cni0 with two pods, docker0 empty,
/// two GKE-style routed pods whose host ends share 10.0.0.1/32.
fn lab(secs: u64) -> Snapshot {
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
    }
}

/// An app that has seen `a` then `b`.
fn app_of(a: Snapshot, b: Snapshot) -> App {
    let mut app = App::new(Duration::from_secs(1), None, None).unwrap();
    app.on_snapshot(a);
    app.on_snapshot(b);
    app
}

fn lab_app() -> App {
    app_of(lab(100), lab(101))
}

/// Draws `app` on a `w`x`h` screen the way the event loop does and returns the text, one line
/// per row, trailing blanks cut.
fn screen(app: &mut App, w: u16, h: u16) -> String {
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

#[test]
fn lab_node_wide() {
    insta::assert_snapshot!(screen(&mut lab_app(), 132, 20));
}

#[test]
fn lab_node_80x24() {
    insta::assert_snapshot!(screen(&mut lab_app(), 80, 24));
}

#[test]
fn lab_node_narrow_60x16() {
    insta::assert_snapshot!(screen(&mut lab_app(), 60, 16));
}

#[test]
fn too_small_terminal_says_so() {
    insta::assert_snapshot!(screen(&mut lab_app(), 40, 8));
}

#[test]
fn empty_node() {
    let empty = Snapshot {
        taken_at_ms: T0,
        ports: vec![],
        bridges: lab(0).bridges[..1].to_vec(),
    };
    let later = Snapshot {
        taken_at_ms: T0 + 1000,
        ..empty.clone()
    };
    insta::assert_snapshot!(screen(&mut app_of(empty, later), 80, 24));
}

#[test]
fn before_the_first_snapshot() {
    let mut app = App::new(Duration::from_secs(2), None, None).unwrap();
    insta::assert_snapshot!(screen(&mut app, 80, 12));
}

#[test]
fn detail_pane_of_a_routed_pod() {
    let mut app = lab_app();
    app.set_filter("pinger");
    app.set_filter("");
    // Select the pinger wherever the sort put it, then open the detail pane.
    let pos = app
        .view
        .iter()
        .position(|&i| app.rows[i].veth == "gke3a9d1c0b7e1")
        .unwrap();
    for _ in 0..pos {
        app.on_key(ch('j'));
    }
    app.on_key(key(KeyCode::Enter));
    assert!(app.detail);
    insta::assert_snapshot!("detail_wide", screen(&mut app, 120, 34));
    insta::assert_snapshot!("detail_80x24", screen(&mut app, 80, 24));
}

#[test]
fn sorted_by_pod_then_reversed() {
    let mut app = lab_app();
    app.on_key(ch('s')); // rx-bps -> tx-bps
    assert_eq!(app.sort, SortKey::TxBps);
    app.set_sort(SortKey::Pod, false);
    insta::assert_snapshot!("sort_pod", screen(&mut app, 100, 14));
    app.on_key(ch('S'));
    insta::assert_snapshot!("sort_pod_reversed", screen(&mut app, 100, 14));
}

#[test]
fn filtered_while_typing_and_applied() {
    let mut app = lab_app();
    for k in [ch('/'), ch('c'), ch('n'), ch('i')] {
        app.on_key(k);
    }
    insta::assert_snapshot!("filter_typing", screen(&mut app, 100, 14));
    app.on_key(key(KeyCode::Enter));
    insta::assert_snapshot!("filter_applied", screen(&mut app, 100, 14));
    app.on_key(ch('/'));
    app.on_key(ch('x'));
    app.on_key(ch('x'));
    insta::assert_snapshot!("filter_no_match", screen(&mut app, 100, 14));
}

#[test]
fn help_and_pause() {
    let mut app = lab_app();
    app.on_key(ch('p'));
    app.on_key(ch('?'));
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn source_error_is_shown_not_fatal() {
    let mut app = lab_app();
    app.on_error("connect to 10.1.2.3:9100: Connection refused (os error 111)".into());
    app.bridges = false;
    insta::assert_snapshot!(screen(&mut app, 100, 12));
}

fn many(n: u32, secs: u64) -> Snapshot {
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
    }
}

#[test]
fn a_thousand_veths() {
    let mut app = app_of(many(1000, 10), many(1000, 11));
    assert_eq!(app.view.len(), 1000);
    insta::assert_snapshot!("thousand_top", screen(&mut app, 120, 30));
    app.on_key(key(KeyCode::End));
    insta::assert_snapshot!("thousand_end", screen(&mut app, 120, 30));
}

#[test]
fn a_thousand_veths_redraw_well_within_a_second() {
    let (a, b) = (many(1000, 10), many(1000, 11));
    let started = Instant::now();
    let mut app = app_of(a, b.clone());
    let mut t = Terminal::new(TestBackend::new(200, 60)).unwrap();
    for i in 0..10 {
        app.on_snapshot(Snapshot {
            taken_at_ms: b.taken_at_ms + 1000 * (i + 1),
            ..b.clone()
        });
        app.on_key(ch('j'));
        t.draw(|f| render(f, &app)).unwrap();
    }
    // Ten rebuilds, sorts and frames; a debug build on a loaded 2-core box stays far under 10s.
    let spent = started.elapsed();
    assert!(
        spent < Duration::from_secs(5),
        "10 refreshes of 1000 veths took {spent:?}"
    );
}

// ---- state ----

#[test]
fn rates_are_per_second_from_the_pods_point_of_view() {
    let app = lab_app();
    let web = app.rows.iter().find(|r| r.veth == "veth1c2a6f3e").unwrap();
    assert!((web.rates.rx_pps - 800.0).abs() < 1e-6);
    assert!((web.rates.tx_pps - 601.0).abs() < 1e-6);
    assert!((web.rates.rx_bps - 800.0 * 1000.0 * 8.0).abs() < 1e-3);
    assert_eq!(web.bridge, "cni0");
    assert_eq!(web.port_no, Some(1));
    assert_eq!(web.peer, "eth0@if6");
    assert_eq!(web.pod, "default/web-7d4b9c6f5-x2k4q");
    let dns = app.rows.iter().find(|r| r.veth == "veth8f31d0b2").unwrap();
    assert_eq!(dns.macs, 2);
    let pinger = app
        .rows
        .iter()
        .find(|r| r.veth == "gke3a9d1c0b7e1")
        .unwrap();
    assert_eq!(pinger.bridge, "routed");
    assert_eq!(pinger.rates.dominant(), Some(("icmp", 100)));
}

#[test]
fn first_snapshot_has_no_rates_yet() {
    let mut app = App::new(Duration::from_secs(1), None, None).unwrap();
    app.on_snapshot(lab(100));
    assert!(app.prev.is_none());
    assert!(
        app.rows
            .iter()
            .all(|r| r.rates.rx_pps == 0.0 && r.rates.tx_bps == 0.0)
    );
}

#[test]
fn a_recreated_veth_with_a_reused_ifindex_starts_from_zero() {
    let mut b = lab(101);
    b.ports[0].name = "vethnew00001".into();
    let app = app_of(lab(100), b);
    let r = app.rows.iter().find(|r| r.ifindex == 6).unwrap();
    assert!(r.rates.rx_pps.abs() < f64::EPSILON);
    // Counters that went down (agent restart) also give 0, never a negative or huge rate.
    let app = app_of(lab(100), lab(50));
    assert!(
        app.rows
            .iter()
            .all(|r| r.rates.rx_pps == 0.0 && r.rates.tx_pps == 0.0)
    );
}

#[test]
fn bridge_totals_include_empty_bridges_and_routed_veths() {
    let app = lab_app();
    let t: Vec<(&str, usize)> = app
        .totals
        .iter()
        .map(|t| (t.name.as_str(), t.ports))
        .collect();
    assert_eq!(t, vec![("docker0", 0), ("cni0", 2), ("routed", 2)]);
    let cni = &app.totals[1];
    assert!((cni.rates.rx_pps - (800.0 + 123.0)).abs() < 1e-6);
}

#[test]
fn filter_matches_pod_namespace_veth_and_bridge_case_insensitively() {
    let mut app = lab_app();
    let shown = |app: &App| {
        app.view
            .iter()
            .map(|&i| app.rows[i].veth.clone())
            .collect::<Vec<_>>()
    };
    app.set_filter("KUBE-SYSTEM");
    assert_eq!(shown(&app), vec!["veth8f31d0b2"]);
    app.set_filter("cni0");
    assert_eq!(shown(&app).len(), 2);
    app.set_filter("gke77");
    assert_eq!(shown(&app), vec!["gke77e0f2a14c9"]);
    app.set_filter("pinger");
    assert_eq!(shown(&app), vec!["gke3a9d1c0b7e1"]);
    app.set_filter("routed");
    assert_eq!(shown(&app).len(), 2);
}

#[test]
fn esc_in_the_filter_puts_back_the_old_one() {
    let mut app = App::new(Duration::from_secs(1), Some("cni".into()), None).unwrap();
    app.on_snapshot(lab(1));
    assert_eq!(app.view.len(), 2);
    for k in [ch('/'), ch('x'), key(KeyCode::Esc)] {
        assert_eq!(app.on_key(k), Action::Continue);
    }
    assert_eq!(app.filter, "cni");
    assert_eq!(app.view.len(), 2);
    for k in [
        ch('/'),
        key(KeyCode::Backspace),
        key(KeyCode::Backspace),
        key(KeyCode::Backspace),
        key(KeyCode::Enter),
    ] {
        app.on_key(k);
    }
    assert_eq!(app.filter, "");
    assert_eq!(app.view.len(), 4);
    // Outside the filter, Esc quits.
    assert_eq!(app.on_key(key(KeyCode::Esc)), Action::Quit);
}

#[test]
fn selection_follows_the_veth_across_refresh_and_sort() {
    let mut app = lab_app();
    app.on_key(ch('j'));
    app.on_key(ch('j'));
    let chosen = app.selected_row().unwrap().ifindex;
    app.on_snapshot(lab(102));
    assert_eq!(app.selected_row().unwrap().ifindex, chosen);
    app.on_key(ch('S'));
    assert_eq!(app.selected_row().unwrap().ifindex, chosen);
    app.set_sort(SortKey::Veth, false);
    assert_eq!(app.selected_row().unwrap().ifindex, chosen);
}

#[test]
fn default_sort_is_busiest_receiver_first_and_parse_checks_names() {
    let app = lab_app();
    assert_eq!(app.rows[app.view[0]].veth, "veth1c2a6f3e");
    assert_eq!(SortKey::parse("-macs").unwrap(), (SortKey::Macs, true));
    assert_eq!(SortKey::parse("RX-PPS").unwrap(), (SortKey::RxPps, false));
    let e = App::new(Duration::from_secs(1), None, Some("speed"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("speed") && e.contains("rx-bps"), "{e}");
}

#[test]
fn sort_key_cycles_through_every_column() {
    let mut app = lab_app();
    let mut seen = vec![app.sort];
    for _ in 0..SortKey::ALL.len() - 1 {
        app.on_key(ch('s'));
        seen.push(app.sort);
    }
    app.on_key(ch('s'));
    assert_eq!(app.sort, SortKey::RxBps);
    assert_eq!(seen.len(), SortKey::ALL.len());
}

#[test]
fn paging_keeps_the_selection_on_screen() {
    let mut app = app_of(many(100, 1), many(100, 2));
    app.set_page(10);
    app.on_key(key(KeyCode::PageDown));
    assert_eq!((app.selected, app.offset), (10, 1));
    app.on_key(key(KeyCode::End));
    assert_eq!((app.selected, app.offset), (99, 90));
    app.on_key(key(KeyCode::Home));
    assert_eq!((app.selected, app.offset), (0, 0));
    app.on_key(ch('k'));
    assert_eq!(app.selected, 0);
}

#[test]
fn the_same_sample_twice_is_not_a_second_of_silence() {
    let mut app = lab_app();
    app.on_error("blip".into());
    app.on_snapshot(lab(101));
    assert_eq!(app.samples, 2);
    assert!(app.error.is_none());
    let web = app.rows.iter().find(|r| r.ifindex == 6).unwrap();
    assert!((web.rates.rx_pps - 800.0).abs() < 1e-6);
}

#[test]
fn paused_app_ignores_snapshots() {
    let mut app = lab_app();
    app.on_key(ch('p'));
    app.on_snapshot(lab(500));
    assert_eq!(app.snapshot.taken_at_ms, lab(101).taken_at_ms);
    app.on_key(ch('p'));
    app.on_snapshot(lab(102));
    assert_eq!(app.samples, 3);
}

#[test]
fn selected_row_is_reversed_and_ctrl_c_quits() {
    let mut app = lab_app();
    let mut t = Terminal::new(TestBackend::new(100, 20)).unwrap();
    app.set_page(table_rows(ratatui::layout::Rect::new(0, 0, 100, 20), &app));
    t.draw(|f| render(f, &app)).unwrap();
    let buf = t.backend().buffer();
    let y = (0..20)
        .find(|&y| {
            (0..100)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                .contains("web-7d4b")
        })
        .unwrap();
    assert!(buf[(0, y)].modifier.contains(Modifier::REVERSED));
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
}
