//! The join and the anomaly rules over hand-made snapshots (the real kernel is in
//! `tests/tests/macs.rs`).

use super::*;
use crate::model::{Bridge, Mode, Peer, PodSource};

const T: u64 = 1_700_000_000_000;
const A: &str = "0a:58:0a:f4:01:05";
const B: &str = "0a:58:0a:f4:01:06";
const FORGED: &str = "02:de:ad:be:ef:01";

/// Seen from `first` to `last` seconds after T.
fn seen(mac: &str, first: u64, last: u64) -> MacSeen {
    MacSeen {
        mac: mac.into(),
        direction: Direction::Transmit,
        packets: 3,
        bytes: 294,
        first_seen_ms: T + first * 1000,
        last_seen_ms: T + last * 1000,
    }
}

fn port(ifindex: u32, port_no: u16, own: &str, macs: Vec<MacSeen>) -> Port {
    Port {
        ifindex,
        name: format!("veth{ifindex}"),
        mode: Mode::Bridged,
        master: Some("cni0".into()),
        port_no: Some(port_no),
        mac: Some(format!("ee:ee:ee:ee:ee:{ifindex:02x}")),
        peer: Some(Peer {
            ifindex: 2,
            name: Some("eth0".into()),
            mac: Some(own.into()),
            ..Peer::default()
        }),
        pod: Some(Pod {
            namespace: "default".into(),
            name: format!("web-{ifindex}"),
            uid: String::new(),
            source: PodSource::Cri,
            container: None,
        }),
        attached: true,
        macs,
        ..Port::default()
    }
}

fn routed(ifindex: u32, own: &str, macs: Vec<MacSeen>) -> Port {
    Port {
        mode: Mode::Routed,
        master: None,
        port_no: None,
        ..port(ifindex, 0, own, macs)
    }
}

fn fdb(p: &Port, mac: &str, state: FdbState) -> FdbEntry {
    FdbEntry {
        bridge: "cni0".into(),
        bridge_ifindex: 3,
        ifindex: p.ifindex,
        interface: p.name.clone(),
        port_no: p.port_no,
        mac: mac.into(),
        state,
        updated_ms: 1500,
        ..FdbEntry::default()
    }
}

fn snap(ports: Vec<Port>, fdb: Vec<FdbEntry>) -> Snapshot {
    Snapshot {
        taken_at_ms: T + 10_000,
        ports,
        bridges: vec![Bridge {
            ifindex: 3,
            name: "cni0".into(),
            ..Bridge::default()
        }],
        fdb,
        ..Snapshot::default()
    }
}

/// Two pods pinging each other: each port has its veth's local entry and its pod's learned one.
fn clean() -> Snapshot {
    let a = port(7, 1, A, vec![seen(A, 1, 9)]);
    let b = port(8, 2, B, vec![seen(B, 1, 9)]);
    let fdb = vec![
        fdb(&a, A, FdbState::Learned),
        fdb(&a, "ee:ee:ee:ee:ee:07", FdbState::Local),
        fdb(&b, B, FdbState::Learned),
        fdb(&b, "ee:ee:ee:ee:ee:08", FdbState::Local),
    ];
    snap(vec![a, b], fdb)
}

fn kinds(s: &Snapshot) -> Vec<(String, AnomalyKind, Option<String>)> {
    anomalies(s)
        .into_iter()
        .map(|a| (a.interface, a.kind, a.mac))
        .collect()
}

#[test]
fn clean_bridge_flags_nothing() {
    assert!(anomalies(&clean()).is_empty(), "{:#?}", anomalies(&clean()));
}

#[test]
fn join_puts_fdb_and_observations_on_one_row() {
    let r = report(&clean(), None).unwrap();
    let ports = &r.bridges[0].ports;
    assert_eq!(ports.len(), 2);
    assert_eq!(
        (ports[0].port_no, ports[0].interface.as_str()),
        (Some(1), "veth7")
    );
    assert_eq!(ports[0].pod.as_ref().unwrap().name, "web-7");
    assert_eq!(ports[0].peer_mac.as_deref(), Some(A));
    let row = ports[0].macs.iter().find(|m| m.mac == A).unwrap();
    assert_eq!(row.fdb[0].state, FdbState::Learned);
    assert!(!row.fdb[0].local);
    assert_eq!(row.transmit.as_ref().unwrap().packets, 3);
    let local = ports[0].macs.iter().find(|m| m.mac != A).unwrap();
    assert!(local.fdb[0].local && local.transmit.is_none());
}

#[test]
fn forged_source_while_using_own_mac_is_spoofing() {
    let a = port(7, 1, A, vec![seen(A, 1, 9), seen(FORGED, 5, 5)]);
    assert_eq!(
        kinds(&snap(vec![a], vec![])),
        [(
            "veth7".into(),
            AnomalyKind::SpoofedSource,
            Some(FORGED.into())
        )]
    );
}

#[test]
fn foreign_source_without_own_traffic_is_spoofing() {
    let a = port(7, 1, A, vec![seen(FORGED, 5, 6)]);
    let found = anomalies(&snap(vec![a], vec![]));
    assert_eq!(found[0].kind, AnomalyKind::SpoofedSource);
    assert!(found[0].detail.contains(A), "{}", found[0].detail);
}

#[test]
fn multicast_or_zero_source_is_spoofing_even_alone() {
    for mac in [
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
    ] {
        let a = port(7, 1, A, vec![seen(A, 1, 2), seen(mac, 8, 9)]);
        assert_eq!(
            kinds(&snap(vec![a], vec![]))[0].1,
            AnomalyKind::SpoofedSource,
            "{mac}"
        );
    }
}

#[test]
fn a_mac_change_is_not_spoofing_whichever_mac_the_topology_read() {
    const NEW: &str = "02:00:00:00:00:99";
    // Topology read after the change: eth0 is NEW, A is history.
    let fresh = port(7, 1, NEW, vec![seen(A, 1, 3), seen(NEW, 5, 9)]);
    // Topology read before the change: eth0 still says A.
    let stale = port(7, 1, A, vec![seen(A, 1, 3), seen(NEW, 5, 9)]);
    for p in [fresh, stale] {
        let found = anomalies(&snap(vec![p], vec![]));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].kind, AnomalyKind::MacChanged);
        assert_eq!(found[0].mac.as_deref(), Some(A), "the former MAC is named");
        assert!(found[0].detail.contains(NEW));
    }
}

#[test]
fn a_change_within_one_coarse_tick_is_still_a_change() {
    const NEW: &str = "02:00:00:00:00:99";
    let p = port(7, 1, NEW, vec![seen(A, 1, 5), seen(NEW, 5, 9)]);
    assert_eq!(kinds(&snap(vec![p], vec![]))[0].1, AnomalyKind::MacChanged);
}

#[test]
fn a_mac_on_two_ports_of_one_bridge_flags_both() {
    let a = port(7, 1, A, vec![seen(A, 1, 9)]);
    let b = port(8, 2, A, vec![seen(A, 1, 9)]);
    let learned = fdb(&b, A, FdbState::Learned);
    let found = anomalies(&snap(vec![a, b], vec![learned]));
    let dup: Vec<&Anomaly> = found
        .iter()
        .filter(|a| a.kind == AnomalyKind::DuplicateMac)
        .collect();
    assert_eq!(dup.len(), 2, "{found:#?}");
    assert!(dup[0].detail.contains("veth8 (default/web-8)"));
    assert!(dup[0].detail.contains("forwards it to veth8"));
    assert!(dup[1].detail.contains("veth7"));
}

#[test]
fn two_eth0_with_one_mac_on_a_bridge_are_a_duplicate_before_any_frame() {
    let a = port(7, 1, A, vec![]);
    let b = port(8, 2, &A.to_ascii_uppercase(), vec![]);
    let c = port(9, 3, B, vec![seen(B, 1, 9)]);
    let found = anomalies(&snap(vec![a, b, c], vec![]));
    let dup: Vec<(&str, Option<&str>)> = found
        .iter()
        .filter(|a| a.kind == AnomalyKind::DuplicateMac)
        .map(|a| (a.interface.as_str(), a.mac.as_deref()))
        .collect();
    assert_eq!(dup, [("veth7", Some(A)), ("veth8", Some(A))], "{found:#?}");
    assert!(found[0].detail.contains("configured"), "{found:#?}");
    // One port sending its own MAC is one port, not a duplicate of itself.
    let d = port(10, 4, &B.to_ascii_uppercase(), vec![seen(B, 1, 9)]);
    assert!(anomalies(&snap(vec![d], vec![])).is_empty());
}

#[test]
fn hairpin_the_cni_configuration_asks_for_is_a_note_not_an_anomaly() {
    let mut asked = port(7, 1, A, vec![seen(A, 1, 9)]);
    asked.hairpin = true;
    asked.hairpin_expected = true;
    let mut not_asked = port(8, 1, B, vec![seen(B, 1, 9)]);
    not_asked.hairpin = true;
    not_asked.master = Some("br0".into());
    // The configuration asks, the port is not in hairpin mode: nothing to say.
    let mut off = port(9, 2, "0a:58:0a:f4:01:07", vec![]);
    off.hairpin_expected = true;
    let s = snap(vec![asked, not_asked, off], vec![]);
    assert_eq!(kinds(&s), [("veth8".into(), AnomalyKind::Hairpin, None)]);
    let n = notes(&s);
    assert_eq!(n.len(), 1, "{n:#?}");
    assert_eq!(
        (n[0].interface.as_str(), n[0].kind),
        ("veth7", AnomalyKind::Hairpin)
    );
    assert!(n[0].detail.contains("cni0") && n[0].detail.contains("expected"));
    let text = to_table(&report(&s, None).unwrap());
    assert!(text.contains("notes (1), expected"), "{text}");
}

#[test]
fn the_same_mac_on_two_bridges_or_routed_veths_is_no_duplicate() {
    let a = port(7, 1, A, vec![seen(A, 1, 9)]);
    let mut b = port(8, 1, A, vec![seen(A, 1, 9)]);
    b.master = Some("docker0".into());
    let c = routed(9, A, vec![seen(A, 1, 9)]);
    let d = routed(10, A, vec![seen(A, 1, 9)]);
    assert!(anomalies(&snap(vec![a, b, c, d], vec![])).is_empty());
}

#[test]
fn learned_entry_without_traffic_is_flagged_only_where_we_watch() {
    let mut a = port(7, 1, A, vec![]);
    let b = port(8, 2, B, vec![seen(B, 1, 9)]);
    let mut entries = vec![
        fdb(&a, A, FdbState::Learned),
        // Local and static entries are configuration, not learning.
        fdb(&a, "ee:ee:ee:ee:ee:07", FdbState::Local),
        fdb(&a, "02:00:00:00:00:01", FdbState::Static),
        // The same learned MAC in another VLAN is one flag, not two.
        FdbEntry {
            vlan: Some(10),
            ..fdb(&a, A, FdbState::Learned)
        },
        // B's MAC learned on A's port while B is seen sending on its own.
        fdb(&a, B, FdbState::Learned),
    ];
    let found = kinds(&snap(vec![a.clone(), b.clone()], entries.clone()));
    assert_eq!(
        found,
        [
            (
                "veth7".into(),
                AnomalyKind::LearnedWithoutTraffic,
                Some(A.into())
            ),
            (
                "veth7".into(),
                AnomalyKind::LearnedWithoutTraffic,
                Some(B.into())
            ),
        ]
    );
    let detail = &anomalies(&snap(vec![a.clone(), b.clone()], entries.clone()))[1].detail;
    assert!(detail.contains("seen from veth8"), "{detail}");
    // Software-installed entries were never learned from frames.
    entries.retain(|e| e.mac != B);
    entries[0].extern_learn = true;
    entries[3].extern_learn = true;
    assert!(anomalies(&snap(vec![a.clone(), b.clone()], entries.clone())).is_empty());
    // Without our programs on the port there is no "seen" to compare with.
    entries[0].extern_learn = false;
    a.attached = false;
    assert!(anomalies(&snap(vec![a, b], entries)).is_empty());
}

#[test]
fn promiscuous_and_hairpin_ports_are_flagged_with_a_reason() {
    let mut a = port(7, 1, A, vec![]);
    a.promiscuous = true;
    a.hairpin = true;
    let found = anomalies(&snap(vec![a], vec![]));
    let k: Vec<AnomalyKind> = found.iter().map(|a| a.kind).collect();
    assert_eq!(k, [AnomalyKind::Promiscuous, AnomalyKind::Hairpin]);
    assert!(
        found
            .iter()
            .all(|a| !a.detail.is_empty() && a.mac.is_none())
    );
    assert_eq!(found[0].port_no, Some(1));
    assert_eq!(found[0].bridge.as_deref(), Some("cni0"));
}

#[test]
fn bridge_filter_drops_other_bridges_and_routed_veths() {
    let mut s = clean();
    s.ports
        .push(routed(9, "02:00:00:00:00:09", vec![seen(FORGED, 1, 1)]));
    s.bridges.push(Bridge {
        ifindex: 4,
        name: "docker0".into(),
        ..Bridge::default()
    });
    let all = report(&s, None).unwrap();
    assert_eq!(all.bridges.len(), 2);
    assert_eq!(all.routed.len(), 1);
    assert_eq!(all.anomalies.len(), 1, "the routed veth sent a foreign MAC");
    let one = report(&s, Some("cni0")).unwrap();
    assert_eq!(one.bridges.len(), 1);
    assert!(one.routed.is_empty() && one.anomalies.is_empty());
    assert!(matches!(
        report(&s, Some("br-nope")),
        Err(Error::NoSuchBridge(b)) if b == "br-nope"
    ));
}

#[test]
fn ports_known_only_from_the_fdb_and_the_bridge_itself_get_rows() {
    let mut s = clean();
    s.fdb.push(FdbEntry {
        ifindex: 20,
        interface: "vxlan0".into(),
        port_no: Some(3),
        ..fdb(&s.ports[0], "02:00:00:00:00:20", FdbState::Learned)
    });
    s.fdb.push(FdbEntry {
        ifindex: 3,
        interface: "cni0".into(),
        port_no: None,
        vlan: Some(1),
        ..fdb(&s.ports[0], "ee:ee:ee:ee:ee:03", FdbState::Local)
    });
    let r = report(&s, None).unwrap();
    let names: Vec<&str> = r.bridges[0]
        .ports
        .iter()
        .map(|p| p.interface.as_str())
        .collect();
    assert_eq!(names, ["veth7", "veth8", "vxlan0", "cni0"]);
    assert!(!r.bridges[0].ports[2].attached);
    // Nothing watches vxlan0, so its learned entry is not "unobserved".
    assert!(r.anomalies.is_empty());
    let t = to_table(&r);
    assert!(t.contains("self"), "{t}");
    assert!(t.contains("local@vlan1"), "{t}");
}

#[test]
fn json_round_trips_with_readable_names() {
    let mut s = clean();
    s.ports[0].macs.push(seen(FORGED, 5, 5));
    let r = report(&s, None).unwrap();
    let text = to_json(&r).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["anomalies"][0]["kind"], "spoofed_source");
    assert_eq!(v["bridges"][0]["ports"][0]["port_no"], 1);
    let rows = v["bridges"][0]["ports"][0]["macs"].as_array().unwrap();
    let row = rows.iter().find(|m| m["mac"] == A).unwrap();
    assert_eq!(row["fdb"][0]["state"], "learned");
    assert_eq!(row["fdb"][0]["local"], false);
    assert_eq!(row["transmit"]["packets"], 3);
    assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), r);
}

#[test]
fn table_reads_like_showmacs_with_pods() {
    let mut s = clean();
    s.ports[0].macs.push(seen(FORGED, 5, 5));
    s.ports[1].hairpin = true;
    s.ports.push(routed(
        9,
        "02:00:00:00:00:09",
        vec![seen("02:00:00:00:00:09", 2, 8)],
    ));
    insta::assert_snapshot!(to_table(&report(&s, None).unwrap()));
}

#[test]
fn ages_read_naturally() {
    assert_eq!(render::ago(T + 5_400, T), "5s ago");
    assert_eq!(render::ago(T + 185_000, T), "3m05s ago");
    assert_eq!(render::ago(T + 7_800_000, T), "2h10m ago");
    assert_eq!(render::ago(T, 0), "-");
    assert_eq!(
        render::ago(T, T + 500),
        "0s ago",
        "clock skew never goes negative"
    );
}

#[test]
fn unicast_test_reads_the_group_bit() {
    assert!(anomaly::is_unicast(A));
    assert!(anomaly::is_unicast("02:de:ad:be:ef:01"));
    assert!(!anomaly::is_unicast("33:33:00:00:00:01"));
    assert!(!anomaly::is_unicast("00:00:00:00:00:00"));
}
