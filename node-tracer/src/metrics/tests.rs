use super::*;
use crate::model::{Mode, Peer, Pod, PodSource, PortCounters};

fn port(name: &str, pod: Option<(&str, &str)>) -> Port {
    let mut counters = PortCounters::default();
    counters.tx_packets[1] = 3;
    counters.tx_bytes[1] = 294;
    counters.rx_packets[4] = 7;
    Port {
        ifindex: 7,
        name: name.into(),
        mode: Mode::Bridged,
        master: Some("cni0".into()),
        port_no: Some(2),
        peer: Some(Peer {
            ifindex: 2,
            name: Some("eth0".into()),
            ..Peer::default()
        }),
        pod: pod.map(|(ns, n)| Pod {
            namespace: ns.into(),
            name: n.into(),
            uid: "u".into(),
            source: PodSource::Cri,
            container: None,
        }),
        counters,
        ..Port::default()
    }
}

fn text(snap: &Snapshot, health: &Health) -> String {
    String::from_utf8(encode(snap, health)).unwrap()
}

#[test]
fn counters_carry_pod_labels_and_pod_direction() {
    let snap = Snapshot {
        ports: vec![port("veth591ea0bf", Some(("default", "web-1")))],
        ..Snapshot::default()
    };
    let t = text(&snap, &Health::default());
    assert!(t.contains(
        "node_tracer_transmit_packets_total{namespace=\"default\",pod=\"web-1\",name=\"\",interface=\"veth591ea0bf\",protocol=\"icmp\"} 3"
    ), "{t}");
    assert!(t.contains(
        "node_tracer_receive_packets_total{namespace=\"default\",pod=\"web-1\",name=\"\",interface=\"veth591ea0bf\",protocol=\"udp\"} 7"
    ));
    assert!(t.contains("node_tracer_transmit_bytes_total{namespace=\"default\",pod=\"web-1\",name=\"\",interface=\"veth591ea0bf\"} 294"));
    assert!(t.contains("bridge=\"cni0\""));
    assert!(t.contains("port_no=\"2\""));
}

/// A Docker container that is no Kubernetes pod: `pod` keeps its name as before, and `name`
/// carries it where cAdvisor's series do; a cri-dockerd sandbox gets its container's name too.
#[test]
fn a_containers_name_is_the_name_label() {
    let mut web = port("veth591ea0bf", Some(("", "shop-web")));
    let mut sandbox = port("vethsandbox", Some(("shop", "busybox")));
    for (p, name) in [
        (&mut web, "shop-web"),
        (&mut sandbox, "k8s_POD_busybox_shop_u_0"),
    ] {
        let pod = p.pod.as_mut().unwrap();
        pod.source = PodSource::Docker;
        pod.container = Some(crate::model::Container {
            runtime: "docker".into(),
            id: "3956c459e213".into(),
            name: name.into(),
            image: "nginx".into(),
        });
    }
    web.hairpin = true;
    let snap = Snapshot {
        ports: vec![web, sandbox, port("vethk8s", Some(("default", "web-1")))],
        ..Snapshot::default()
    };
    let t = text(&snap, &Health::default());
    for family in [
        "transmit_packets_total",
        "receive_packets_total",
        "transmit_bytes_total",
        "receive_bytes_total",
        "port_macs",
    ] {
        let series = format!(
            "node_tracer_{family}{{namespace=\"\",pod=\"shop-web\",name=\"shop-web\",interface=\"veth591ea0bf\""
        );
        assert!(t.contains(&series), "{series} in {t}");
    }
    assert!(t.contains(
        "node_tracer_mac_anomalies{kind=\"hairpin\",namespace=\"\",pod=\"shop-web\",name=\"shop-web\",interface=\"veth591ea0bf\"} 1"
    ), "{t}");
    assert!(
        t.contains("mode=\"bridged\",namespace=\"\",pod=\"shop-web\",name=\"shop-web\"} 1"),
        "{t}"
    );
    assert!(
        t.contains("namespace=\"shop\",pod=\"busybox\",name=\"k8s_POD_busybox_shop_u_0\""),
        "{t}"
    );
    // A pod the CRI named has no container record: its name label is empty, i.e. absent.
    assert!(
        t.contains("namespace=\"default\",pod=\"web-1\",name=\"\",interface=\"vethk8s\""),
        "{t}"
    );
    assert_eq!(t, oracle::encode(&snap, &Health::default()));
}

#[test]
fn a_port_that_is_gone_has_no_series() {
    let snap = Snapshot {
        ports: vec![port("vethgone", None)],
        ..Snapshot::default()
    };
    assert!(text(&snap, &Health::default()).contains("vethgone"));
    assert!(!text(&Snapshot::default(), &Health::default()).contains("vethgone"));
}

#[test]
fn hostile_pod_names_are_escaped() {
    let snap = Snapshot {
        ports: vec![port("veth0", Some(("ns\"x", "a\\b\nc")))],
        ..Snapshot::default()
    };
    let t = text(&snap, &Health::default());
    assert!(t.contains(r#"namespace="ns\"x",pod="a\\b\nc""#), "{t}");
    // Every sample stays on one line: a raw newline in a label would split it.
    for line in t.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("node_tracer_"), "broken line: {line:?}");
    }
}

#[test]
fn mac_anomalies_are_a_gauge_per_kind_and_port() {
    use crate::model::{Direction, MacSeen};
    let mut p = port("veth591ea0bf", Some(("default", "web-1")));
    p.hairpin = true;
    p.peer.as_mut().unwrap().mac = Some("0a:58:0a:f4:01:05".into());
    for (mac, first, last) in [
        ("0a:58:0a:f4:01:05", 1, 9),
        ("02:de:ad:be:ef:01", 5, 5),
        ("02:de:ad:be:ef:02", 6, 6),
    ] {
        p.macs.push(MacSeen {
            mac: mac.into(),
            direction: Direction::Transmit,
            packets: 1,
            bytes: 60,
            first_seen_ms: first,
            last_seen_ms: last,
        });
    }
    let t = text(
        &Snapshot {
            ports: vec![p, port("vethclean", None)],
            ..Snapshot::default()
        },
        &Health::default(),
    );
    assert!(t.contains("# TYPE node_tracer_mac_anomalies gauge"), "{t}");
    assert!(t.contains(
        "node_tracer_mac_anomalies{kind=\"spoofed_source\",namespace=\"default\",pod=\"web-1\",name=\"\",interface=\"veth591ea0bf\"} 2"
    ), "{t}");
    assert!(t.contains(
        "node_tracer_mac_anomalies{kind=\"hairpin\",namespace=\"default\",pod=\"web-1\",name=\"\",interface=\"veth591ea0bf\"} 1"
    ));
    assert!(!t.contains(
        "node_tracer_mac_anomalies{kind=\"hairpin\",namespace=\"\",pod=\"\",name=\"\",interface=\"vethclean\""
    ));
}

#[test]
fn trace_events_sent_and_lost_are_exported() {
    let mut health = Health::default();
    health.program_stats[node_tracer_common::STAT_EVENTS_SENT as usize] = 12;
    health.program_stats[node_tracer_common::STAT_EVENTS_LOST as usize] = 3;
    let t = text(&Snapshot::default(), &health);
    assert!(t.contains("\nnode_tracer_events_sent_total 12\n"), "{t}");
    assert!(t.contains("\nnode_tracer_events_lost_total 3\n"), "{t}");
}

/// Every family with series, label values that need escaping (quotes, backslashes,
/// newlines, non-ASCII), counts beyond 2^53, and a port with no pod or peer.
fn hostile_fixture() -> (Snapshot, Health) {
    use crate::model::{IcmpCount, MacSeen};
    let mut ports = Vec::new();
    for (i, (ns, pod)) in [
        ("default", "web-1"),
        ("ns\"x", "a\\b\nc"),
        ("kube-system", "coredns-ü-日本\\\""),
        ("", "\n\n"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = port(&format!("veth{i}\"\\"), Some((ns, pod)));
        p.ifindex = 10 + i as u32;
        p.hairpin = i % 2 == 1;
        p.promiscuous = i == 2;
        p.counters.rx_bytes[3] = u64::MAX - i as u64;
        p.counters.tx_packets[7] = (1 << 53) + 1;
        p.counters.icmp = vec![
            IcmpCount {
                direction: Direction::Receive,
                family: 4,
                icmp_type: 0,
                count: 5,
            },
            IcmpCount {
                direction: Direction::Transmit,
                family: 6,
                icmp_type: 201,
                count: 9,
            },
        ];
        p.attached = i != 3;
        p.counters.unseen_rx = i as u64;
        p.counters.unseen_tx = 7 * i as u64;
        if i < 2 {
            p.counters.tcp_flags = vec![
                crate::tcp::TcpFlagCount {
                    direction: Direction::Receive,
                    flag: crate::tcp::TcpFlag::Syn,
                    count: 3,
                },
                crate::tcp::TcpFlagCount {
                    direction: Direction::Transmit,
                    flag: crate::tcp::TcpFlag::Synack,
                    count: 3,
                },
            ];
            p.counters.handshakes = vec![crate::tcp::Handshakes {
                direction: Direction::Receive,
                count: 3,
                sum_ns: 1_234_567,
                buckets: vec![1, 1, 0, 0, 0, 0, 0, 1],
            }];
        }
        p.peer.as_mut().unwrap().netns = Some(format!("/run/netns/\"{i}\n"));
        // Half the ports are containers, with names that need escaping too.
        if i % 2 == 0 {
            p.pod.as_mut().unwrap().container = Some(crate::model::Container {
                runtime: "podman".into(),
                id: format!("{i:064}"),
                name: format!("c{i}\"\\\n☃"),
                image: "img".into(),
            });
        }
        p.peer.as_mut().unwrap().mac = Some("0a:58:0a:f4:01:05".into());
        for mac in ["0a:58:0a:f4:01:05", "02:de:ad:be:ef:01"] {
            p.macs.push(MacSeen {
                mac: mac.into(),
                direction: Direction::Transmit,
                packets: 1,
                bytes: 60,
                first_seen_ms: 1,
                last_seen_ms: 2,
            });
        }
        ports.push(p);
    }
    ports.push(Port {
        ifindex: 99,
        name: "vethbare".into(),
        ..Port::default()
    });
    let mut health = Health {
        attached: (3, 1),
        attach_errors: 2,
        netlink_resyncs: 1,
        link_events: 17,
        netns_visits: 1003,
        trace_streams: 2,
        program_runs: vec![
            (
                "nt_ingress",
                41,
                std::time::Duration::from_nanos(1_234_567),
                99,
            ),
            ("nt_egress", 42, std::time::Duration::ZERO, 0),
        ],
        map_entries: vec![("PORT_COUNTERS", 3), ("PORT_STATS", 1), ("ICMP_STATS", 8)],
        api_denied: vec![("wrong_token", 4), ("missing_credentials", 0)],
        errors: vec![("rescan", 2), ("pods_cri", 1)],
        map_errors: vec![("MAC_SEEN", "remove", 2), ("ICMP_STATS", "batch lookup", 1)],
        ..Health::default()
    };
    for (i, v) in health.program_stats.iter_mut().enumerate() {
        *v = 1000 + i as u64;
    }
    let drops = crate::drop_report::DropReport {
        drops_on: true,
        retransmits_on: false,
        drops: vec![crate::drop_report::DropCount {
            namespace: "ns\"x".into(),
            pod: "a\\b\nc".into(),
            name: "c1\"\\\n☃".into(),
            interface: "veth1\"\\".into(),
            reason: "netfilter_drop".into(),
            count: 12,
        }],
        retransmits: vec![
            crate::drop_report::RetransmitCount {
                namespace: String::new(),
                pod: String::new(),
                name: String::new(),
                count: 3,
            },
            crate::drop_report::RetransmitCount {
                namespace: "ns\"x".into(),
                pod: "a\\b\nc".into(),
                name: "c1\"\\\n☃".into(),
                count: 4,
            },
        ],
    };
    let snap = Snapshot {
        ports,
        drops,
        ..Snapshot::default()
    };
    (snap, health)
}

#[test]
fn the_exposition_is_what_the_prometheus_crate_writes() {
    let (snap, health) = hostile_fixture();
    let ours = text(&snap, &health);
    assert_eq!(ours, oracle::encode(&snap, &health));
    // The fixture reaches every family and escapes something: a weaker fixture would let
    // the comparison pass on less.
    for family in [
        "icmp_messages_total",
        "mac_anomalies",
        "program_run_seconds_total",
        "map_entries",
        "api_denied_total",
        "map_errors_total",
        "errors_total",
        "drops_total",
        "tcp_retransmits_total",
        "tracking_enabled",
    ] {
        assert!(
            ours.contains(&format!("# TYPE node_tracer_{family} ")),
            "{family}"
        );
    }
    assert!(ours.contains(r#"pod="a\\b\nc""#), "{ours}");
    assert!(ours.contains(r#"pod="coredns-ü-日本\\\"""#), "{ours}");
    assert!(ours.contains(r#"name="c2\"\\\n☃""#), "{ours}");
}

#[test]
fn empty_snapshots_match_the_prometheus_crate_too() {
    let (snap, health) = (Snapshot::default(), Health::default());
    assert_eq!(text(&snap, &health), oracle::encode(&snap, &health));
}

#[test]
fn icmp_types_have_stable_label_values() {
    assert_eq!(icmp_type_label(4, 8), "icmp_echo_request");
    assert_eq!(icmp_type_label(6, 135), "icmpv6_neighbour_solicitation");
    assert_eq!(icmp_type_label(4, 200), "icmp_type_200");
}

#[test]
fn tcp_series_exist_only_once_seen_and_unseen_only_for_attached_ports() {
    let mut quiet = port("vethquiet", Some(("default", "idle")));
    quiet.attached = true;
    let t = text(
        &Snapshot {
            ports: vec![quiet],
            ..Snapshot::default()
        },
        &Health::default(),
    );
    assert!(!t.contains("node_tracer_tcp_"), "{t}");
    assert!(t.contains(
        "node_tracer_unseen_packets_total{namespace=\"default\",pod=\"idle\",name=\"\",interface=\"vethquiet\",direction=\"receive\"} 0\n"
    ));
    let (snap, health) = hostile_fixture();
    let t = text(&snap, &health);
    assert!(t.contains("# TYPE node_tracer_tcp_handshake_seconds histogram\n"));
    assert!(t.contains(
        "node_tracer_tcp_handshake_seconds_bucket{namespace=\"default\",pod=\"web-1\",name=\"c0\\\"\\\\\\n☃\",interface=\"veth0\\\"\\\\\",direction=\"receive\",le=\"0.0005\"} 2\n"
    ), "{t}");
    assert!(t.contains("le=\"+Inf\"} 3\n"));
    assert_eq!(t.matches("node_tracer_unseen_packets_total{").count(), 6);
}

/// The `name` label is on every family of a pod, drops and retransmits included: it reaches the
/// drop report through the attribution, from the same container record as the port's series.
#[test]
fn every_family_of_a_container_carries_its_name() {
    use crate::probe::drops::{Counted, DropReading};
    const HOST: u64 = 4_026_531_840;
    let mut web = port("vethweb", Some(("", "shop-web")));
    web.ifindex = 7;
    web.attached = true;
    web.peer.as_mut().unwrap().netns_inode = Some(100);
    let pod = web.pod.as_mut().unwrap();
    pod.source = PodSource::Docker;
    pod.container = Some(crate::model::Container {
        runtime: "docker".into(),
        id: "3956c459e213".into(),
        name: "shop-web".into(),
        image: "nginx".into(),
    });
    let mut k8s = port("vethk8s", Some(("default", "web-1")));
    k8s.ifindex = 8;
    k8s.attached = true;
    k8s.peer.as_mut().unwrap().netns_inode = Some(200);
    for p in [&mut web, &mut k8s] {
        p.counters.unseen_rx = 2;
        p.counters.tcp_flags = vec![crate::tcp::TcpFlagCount {
            direction: Direction::Transmit,
            flag: crate::tcp::TcpFlag::Syn,
            count: 1,
        }];
        p.counters.handshakes = vec![crate::tcp::Handshakes {
            direction: Direction::Transmit,
            count: 1,
            sum_ns: 1_000,
            buckets: vec![1, 0, 0, 0, 0, 0, 0, 0],
        }];
    }
    let ports = vec![web, k8s];
    let at = |ifindex, netns| DropReading {
        ifindex,
        netns,
        reason: "no_socket".into(),
        count: 3,
    };
    let counted = Counted {
        // On each host veth, and inside each pod's namespace.
        drops: vec![at(7, HOST), at(2, 100), at(8, HOST), at(2, 200)],
        retransmits: vec![(100, 5), (200, 6)],
        host_netns: HOST,
    };
    let (drops, retransmits) = crate::drops::attribute(&ports, &counted);
    let snap = Snapshot {
        ports,
        drops: crate::drop_report::DropReport {
            drops_on: true,
            retransmits_on: true,
            drops,
            retransmits,
        },
        ..Snapshot::default()
    };
    let t = text(&snap, &Health::default());
    for (pod, name) in [
        ("namespace=\"\",pod=\"shop-web\"", "shop-web"),
        ("namespace=\"default\",pod=\"web-1\"", ""),
    ] {
        for series in [
            "drops_total",
            "tcp_retransmits_total",
            "tcp_flags_total",
            "tcp_handshake_seconds_bucket",
            "tcp_handshake_seconds_count",
            "unseen_packets_total",
        ] {
            let want = format!("node_tracer_{series}{{{pod},name=\"{name}\"");
            assert!(t.contains(&want), "{want} in {t}");
        }
    }
    assert!(t.contains(
        "node_tracer_drops_total{namespace=\"\",pod=\"shop-web\",name=\"shop-web\",interface=\"vethweb\",reason=\"no_socket\"} 6\n"
    ), "{t}");
    assert!(t.contains(
        "node_tracer_tcp_retransmits_total{namespace=\"\",pod=\"shop-web\",name=\"shop-web\"} 5\n"
    ), "{t}");
    assert_eq!(t, oracle::encode(&snap, &Health::default()));
}
