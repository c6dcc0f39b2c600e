//! Parsing and joining FDB entries, without a kernel.

use netlink_packet_route::{link::LinkFlags, neighbour::NeighbourCacheInfo};

use super::*;

fn link(ifindex: u32, name: &str, kind: Kind, port_no: Option<u16>) -> LinkRecord {
    LinkRecord {
        ifindex,
        name: name.into(),
        mac: None,
        kind,
        master: None,
        link: None,
        link_netnsid: None,
        promiscuous: false,
        port_no,
        hairpin: false,
        ether: true,
    }
}

fn links() -> Vec<LinkRecord> {
    vec![
        link(3, "cni0", Kind::Bridge, None),
        link(7, "veth591ea0bf", Kind::Veth, Some(2)),
        link(9, "bond0", Kind::Other, None),
    ]
}

fn raw_entry() -> RawFdb {
    RawFdb {
        ifindex: 7,
        master: Some(3),
        mac: [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05],
        state: NeighbourState::Reachable,
        updated_ticks: 150,
        used_ticks: 20,
        ..RawFdb::default()
    }
}

#[test]
fn learned_entry_names_bridge_and_port() {
    let l = links();
    let by: HashMap<u32, &LinkRecord> = l.iter().map(|l| (l.ifindex, l)).collect();
    let e = entry(&raw_entry(), &by, 100).unwrap();
    assert_eq!(e.bridge, "cni0");
    assert_eq!(e.interface, "veth591ea0bf");
    assert_eq!(e.port_no, Some(2));
    assert_eq!(e.mac, "0a:58:0a:f4:01:05");
    assert_eq!(e.state, FdbState::Learned);
    assert_eq!((e.updated_ms, e.used_ms), (1500, 200));
}

#[test]
fn states_map_like_bridge_fdb_show() {
    let l = links();
    let by: HashMap<u32, &LinkRecord> = l.iter().map(|l| (l.ifindex, l)).collect();
    let with = |state| {
        entry(
            &RawFdb {
                state,
                ..raw_entry()
            },
            &by,
            100,
        )
        .unwrap()
        .state
    };
    assert_eq!(with(NeighbourState::Permanent), FdbState::Local);
    assert_eq!(with(NeighbourState::Noarp), FdbState::Static);
    // An entry past the ageing time but not yet collected is reported stale: still learned.
    assert_eq!(with(NeighbourState::Stale), FdbState::Learned);
}

#[test]
fn self_entries_and_non_bridge_masters_are_not_fdb_entries() {
    let l = links();
    let by: HashMap<u32, &LinkRecord> = l.iter().map(|l| (l.ifindex, l)).collect();
    let own = RawFdb {
        flags: NeighbourFlags::Own,
        ..raw_entry()
    };
    assert!(entry(&own, &by, 100).is_none());
    let no_master = RawFdb {
        master: None,
        ..raw_entry()
    };
    assert!(entry(&no_master, &by, 100).is_none());
    let bond = RawFdb {
        master: Some(9),
        ..raw_entry()
    };
    assert!(entry(&bond, &by, 100).is_none());
}

#[test]
fn bridge_own_entries_have_no_port_number() {
    let l = links();
    let by: HashMap<u32, &LinkRecord> = l.iter().map(|l| (l.ifindex, l)).collect();
    let e = entry(
        &RawFdb {
            ifindex: 3,
            state: NeighbourState::Permanent,
            vlan: Some(1),
            ..raw_entry()
        },
        &by,
        100,
    )
    .unwrap();
    assert_eq!((e.interface.as_str(), e.port_no), ("cni0", None));
    assert_eq!(e.vlan, Some(1));
}

#[test]
fn a_read_refreshes_port_flags_the_topology_read_earlier() {
    use crate::model::Port;
    let mut snap = Snapshot {
        ports: vec![
            Port {
                ifindex: 7,
                master: Some("cni0".into()),
                hairpin: true,
                ..Port::default()
            },
            Port {
                ifindex: 9,
                ..Port::default()
            },
        ],
        ..Snapshot::default()
    };
    let read = FdbRead {
        entries: vec![FdbEntry::default()],
        flags: HashMap::from([(7, (true, false)), (9, (false, true))]),
    };
    read.apply(&mut snap);
    assert!(snap.ports[0].promiscuous && !snap.ports[0].hairpin);
    // Hairpin means nothing without a bridge, as in the topology.
    assert!(!snap.ports[1].hairpin);
    assert_eq!(snap.fdb.len(), 1);
}

#[test]
fn bridge_ports_carry_name_master_number_and_flags() {
    use rtnetlink::packet_core::DefaultNla;
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = 7;
    msg.header.flags = LinkFlags::Up | LinkFlags::Promisc;
    msg.attributes = vec![
        LinkAttribute::IfName("veth1".into()),
        LinkAttribute::Controller(3),
        LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![1])),
            LinkProtoInfoBridge::Other(DefaultNla::new(
                IFLA_BRPORT_NO,
                5u16.to_ne_bytes().to_vec(),
            )),
        ]),
    ];
    let r = parse_bridge_port(&msg);
    assert_eq!(
        (r.ifindex, r.name.as_str(), r.master, r.port_no),
        (7, "veth1", Some(3), Some(5))
    );
    assert!(r.promiscuous && r.hairpin);
}

#[test]
fn parses_a_netlink_message() {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = 7;
    msg.header.state = NeighbourState::Reachable;
    msg.header.flags = NeighbourFlags::Sticky;
    let mut ci = [0u8; 16];
    ci[8..12].copy_from_slice(&42u32.to_ne_bytes());
    msg.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]),
        NeighbourAttribute::Controller(3),
        NeighbourAttribute::Vlan(10),
        NeighbourAttribute::CacheInfo(NeighbourCacheInfo::parse(&ci).unwrap()),
    ];
    let r = raw(&msg).unwrap();
    assert_eq!(r.master, Some(3));
    assert_eq!(r.vlan, Some(10));
    assert_eq!(r.mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(r.updated_ticks, 42);
    let l = links();
    let by: HashMap<u32, &LinkRecord> = l.iter().map(|l| (l.ifindex, l)).collect();
    assert!(entry(&r, &by, 100).unwrap().sticky);
    msg.header.family = AddressFamily::Inet;
    assert!(raw(&msg).is_none(), "an ARP neighbour is not an FDB entry");
}

#[test]
fn learned_entries_are_as_fresh_as_the_last_frame_the_programs_saw() {
    use crate::model::{Direction, MacSeen, Port};
    let mac = "0a:58:0a:f4:01:05";
    let seen = |direction, last_seen_ms| MacSeen {
        mac: mac.into(),
        direction,
        packets: 1,
        bytes: 60,
        first_seen_ms: 1,
        last_seen_ms,
    };
    let mut snap = Snapshot {
        taken_at_ms: 100_000,
        ports: vec![Port {
            ifindex: 7,
            macs: vec![
                seen(Direction::Transmit, 99_500),
                // What the pod received does not refresh the bridge's entry.
                seen(Direction::Receive, 99_990),
            ],
            ..Port::default()
        }],
        ..Snapshot::default()
    };
    let entry = |state, updated_ms| FdbEntry {
        ifindex: 7,
        mac: mac.into(),
        state,
        updated_ms,
        ..FdbEntry::default()
    };
    FdbRead {
        entries: vec![
            entry(FdbState::Learned, 60_000),
            entry(FdbState::Learned, 100),
            entry(FdbState::Local, 60_000),
        ],
        flags: HashMap::new(),
    }
    .apply(&mut snap);
    let ages: Vec<u64> = snap.fdb.iter().map(|e| e.updated_ms).collect();
    // Refreshed by the frame 0.5 s ago; a fresher timer stays; a local entry never ages.
    assert_eq!(ages, [500, 100, 60_000]);
}
