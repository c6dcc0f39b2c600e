//! Screens of `top`, drawn on ratatui's `TestBackend` and compared with the `.snap` files in
//! `snapshots/` (review a changed one with `cargo insta review` or by reading it).

use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Modifier;

use super::app::{Action, App, SortKey};
use super::fixtures::{T0, app_of, ch, key, lab, lab_app, many, screen};
use super::render::{render, table_rows};
use crate::model::Snapshot;

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
        fdb: Vec::new(),
        ..Snapshot::default()
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

/// The web pod drops 4 packets a second (two reasons) and retransmits 2 segments: its row shows
/// the rates, its detail pane the reasons, most first, with what is new since the last sample.
#[test]
fn drops_and_retransmits_of_a_pod() {
    let mut app = lab_app();
    app.set_sort(SortKey::Drops, false);
    let web = &app.rows[app.view[0]];
    assert_eq!(
        (web.veth.as_str(), web.drops, web.retx),
        ("veth1c2a6f3e", 4.0, 2.0)
    );
    app.on_key(key(KeyCode::Enter));
    insta::assert_snapshot!("detail_drops", screen(&mut app, 120, 34));
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

#[test]
fn a_thousand_veths() {
    let mut app = app_of(many(1000, 10), many(1000, 11));
    assert_eq!(app.view.len(), 1000);
    insta::assert_snapshot!("thousand_top", screen(&mut app, 120, 30));
    app.on_key(key(KeyCode::End));
    insta::assert_snapshot!("thousand_end", screen(&mut app, 120, 30));
}

/// Ten refreshes of a thousand veths, each a rebuild, a sort, a key and a frame: every one
/// lands (the selection follows its veth through each re-sort and each key moves it, the view
/// still holds them all). How long they take is
/// a figure for the bench, not a bound here: a debug build on a busy box varies too much.
#[test]
fn a_thousand_veths_redraw_ten_times() {
    let (a, b) = (many(1000, 10), many(1000, 11));
    let mut app = app_of(a, b.clone());
    let mut t = Terminal::new(TestBackend::new(200, 60)).unwrap();
    let name = |app: &App| app.selected_port().map(|p| p.name.clone());
    let mut moved_to = name(&app);
    for i in 0..10 {
        app.on_snapshot(Snapshot {
            taken_at_ms: b.taken_at_ms + 1000 * (i + 1),
            ..b.clone()
        });
        // The refresh re-sorts; the selection stays on its veth.
        assert_eq!(name(&app), moved_to, "refresh {i} lost the selection");
        app.on_key(ch('j'));
        assert_ne!(name(&app), moved_to, "refresh {i}: j did not move");
        moved_to = name(&app);
        t.draw(|f| render(f, &app)).unwrap();
    }
    assert_eq!(app.view.len(), 1000);
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

#[test]
fn a_docker_container_reads_by_its_name_and_its_detail_names_the_container() {
    let docker = |secs| {
        let mut s = lab(secs);
        s.ports[0].pod = Some(crate::model::Pod {
            namespace: String::new(),
            name: "shop-web".into(),
            uid: String::new(),
            source: crate::model::PodSource::Docker,
            container: Some(crate::model::Container {
                runtime: "docker".into(),
                id: "3956c459e21361850e91b4b254af".into(),
                name: "shop-web".into(),
                image: "nginx:1".into(),
            }),
        });
        s
    };
    let mut app = app_of(docker(100), docker(101));
    let veth = app
        .rows
        .iter()
        .find(|r| r.pod == "shop-web")
        .unwrap()
        .veth
        .clone();
    let pos = app
        .view
        .iter()
        .position(|&i| app.rows[i].veth == veth)
        .unwrap();
    for _ in 0..pos {
        app.on_key(ch('j'));
    }
    app.on_key(key(KeyCode::Enter));
    let text = screen(&mut app, 120, 34);
    assert!(text.contains("pod     shop-web (docker)"), "{text}");
    assert!(
        text.contains("ctr     shop-web 3956c459e213 nginx:1 (docker)"),
        "{text}"
    );
}

/// A port with packets that passed its veth past our hooks is flagged in the table itself: its
/// count in UNSEEN where the column fits, its veth in red at every width, first when sorted by
/// unseen; a port we are not attached to compares nothing and reads "-".
#[test]
fn a_port_with_unseen_packets_is_flagged_in_the_table() {
    let flagged = |secs| {
        let mut s = lab(secs);
        s.ports[3].counters.unseen_rx = 40;
        s.ports[3].counters.unseen_tx = 2;
        s.ports[1].attached = false;
        s
    };
    let mut app = app_of(flagged(100), flagged(101));
    app.set_sort(SortKey::Unseen, false);
    let first = &app.rows[app.view[0]];
    assert_eq!(
        (first.veth.as_str(), first.unseen),
        ("gke77e0f2a14c9", Some(42))
    );
    let wide = screen(&mut app, 132, 20);
    let header = wide.lines().find(|l| l.contains("POD")).unwrap();
    // Sorted by it: the arrow takes a cell of the 6 (as for DROP/s).
    assert!(header.contains("▼UNSE…"), "{wide}");
    let row = |name: &str| wide.lines().find(|l| l.contains(name)).unwrap().to_owned();
    let col = header.chars().take_while(|&c| c != '▼').count();
    let under = |name: &str| row(name).chars().skip(col).take(6).collect::<String>();
    assert_eq!(under("gke77e0f2a14c9").trim(), "42", "{wide}");
    assert_eq!(under("veth8f31d0b2").trim(), "-", "{wide}");
    assert_eq!(under("veth1c2a6f3e").trim(), "0", "{wide}");
    for w in [132, 60] {
        let mut t = Terminal::new(TestBackend::new(w, 20)).unwrap();
        app.set_page(table_rows(ratatui::layout::Rect::new(0, 0, w, 20), &app));
        t.draw(|f| render(f, &app)).unwrap();
        let buf = t.backend().buffer();
        let red = |name: &str| {
            (0..20).find_map(|y| {
                let line: String = (0..w).map(|x| buf[(x, y)].symbol()).collect();
                let x = line.find(name)?;
                // The column of the first character (cells before it are single-width).
                let x = line[..x].chars().count() as u16;
                Some(buf[(x, y)].fg == ratatui::style::Color::Red)
            })
        };
        assert_eq!(red("gke77e0f2a14c9"), Some(true), "{w} wide");
        assert_eq!(red("gke3a9d1c0b7e1"), Some(false), "{w} wide");
    }
}
