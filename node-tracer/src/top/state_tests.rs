//! The state and rate maths of `top` without a terminal: rates, totals, filter, sort,
//! selection, paging, pause.

use std::time::Duration;

use ratatui::crossterm::event::KeyCode;

use super::app::{Action, App, SortKey};
use super::fixtures::{app_of, ch, key, lab, lab_app, many};

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
