//! The programs' parse of every kind of frame, tshark as the oracle. The programs read an
//! untagged IPv4, ARP or plain IPv6 frame in place (the common path) and take a general path
//! for everything else (VLAN and QinQ tags, IPv6 extension headers, frames shorter than an
//! IPv4 header). Crafted frames of both kinds run once each through `nt_ingress` with
//! `BPF_PROG_TEST_RUN`, and each must be counted under the protocol tshark dissects, once, with
//! its ICMP type, TCP SYN and source MAC counted too.

use std::{collections::HashMap, process::Command};

use node_tracer::{
    model::{MacSeen, PROTOCOLS, format_mac},
    probe::{Probe, ProbeOptions},
    tcp::TcpFlag,
};
use node_tracer_tests::{TempDir, require_root, require_tool};

const PROG_INGRESS: &str = "nt_ingress";
const TCX_NEXT: u32 = 0xffff_ffff;
/// The kernel gives test-run skbs the loopback device.
const LO: u32 = 1;

/// Source MACs: one for frames the common path takes, one for the rest, one for short frames.
const MAC_COMMON: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc0];
const MAC_REST: [u8; 6] = [0x02, 0, 0, 0, 0, 0xe1];
const MAC_SHORT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x5e];

fn eth(src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An 802.1Q (or 802.1ad) tag's TCI and the ethertype it carries, then the payload.
fn tag(vid: u16, inner: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = vid.to_be_bytes().to_vec();
    t.extend_from_slice(&inner.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

fn ip4(proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 7, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    h.extend_from_slice(payload);
    h
}

fn ip6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    for last in [1u8, 2] {
        h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
    }
    h.extend_from_slice(payload);
    h
}

/// A hop-by-hop, routing or destination-options header (8 bytes, padded with PadN) before
/// `payload`, whose header is `next`.
fn ext(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
    h.extend_from_slice(payload);
    h
}

/// A routing header of type 0 with no segments left (8 bytes).
fn routing(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
    h.extend_from_slice(payload);
    h
}

fn udp() -> Vec<u8> {
    let mut u = vec![0x30, 0x39, 0x00, 0x35, 0, 16, 0, 0];
    u.extend_from_slice(b"node-tra");
    u
}

fn tcp_syn() -> Vec<u8> {
    let mut t = vec![
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
    ];
    t.extend_from_slice(&[0, 0, 0, 0]);
    t
}

fn echo(icmp_type: u8) -> Vec<u8> {
    let mut e = vec![icmp_type, 0, 0, 0, 0x12, 0x34, 0, 1];
    e.extend_from_slice(b"observed, never changed");
    e
}

fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xe1, 10, 0, 0, 1]);
    a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    a
}

const IP: u16 = 0x0800;
const IP6: u16 = 0x86dd;
const ARP: u16 = 0x0806;
const Q: u16 = 0x8100;
const AD: u16 = 0x88a8;

fn frames() -> Vec<Vec<u8>> {
    let c = MAC_COMMON;
    let r = MAC_REST;
    vec![
        // The common path.
        eth(c, IP, &ip4(17, &udp())),
        eth(c, IP, &ip4(6, &tcp_syn())),
        eth(c, IP, &ip4(1, &echo(8))),
        eth(c, IP, &ip4(47, &[0; 16])),
        eth(c, ARP, &arp()),
        eth(c, IP6, &ip6(17, &udp())),
        eth(c, IP6, &ip6(6, &tcp_syn())),
        eth(c, IP6, &ip6(58, &echo(128))),
        // One tag.
        eth(r, Q, &tag(10, IP, &ip4(17, &udp()))),
        eth(r, Q, &tag(10, IP, &ip4(6, &tcp_syn()))),
        eth(r, Q, &tag(10, IP, &ip4(1, &echo(8)))),
        eth(r, Q, &tag(10, IP, &ip4(47, &[0; 16]))),
        eth(r, Q, &tag(10, ARP, &arp())),
        eth(r, Q, &tag(11, IP6, &ip6(17, &udp()))),
        eth(r, Q, &tag(11, IP6, &ip6(58, &echo(128)))),
        // Two (QinQ).
        eth(r, AD, &tag(20, Q, &tag(21, IP, &ip4(17, &udp())))),
        eth(r, AD, &tag(20, Q, &tag(21, IP, &ip4(6, &tcp_syn())))),
        eth(r, AD, &tag(20, Q, &tag(21, IP6, &ip6(58, &echo(128))))),
        // IPv6 extension headers.
        eth(r, IP6, &ip6(0, &ext(17, &udp()))),
        eth(r, IP6, &ip6(60, &routing(43, &ext(6, &tcp_syn())))),
        eth(r, IP6, &ip6(0, &ext(60, &ext(58, &echo(128))))),
        eth(r, IP6, &ip6(0, &ext(59, &[]))),
        eth(r, Q, &tag(12, IP6, &ip6(60, &ext(6, &tcp_syn())))),
        // Another ethertype, untagged and tagged.
        eth(r, 0x88b5, &[0x55; 46]),
        eth(r, Q, &tag(13, 0x88b5, &[0x55; 42])),
        // Shorter than the common path's 34 bytes.
        eth(MAC_SHORT, ARP, &arp()[..6]),
        eth(MAC_SHORT, 0x88b5, &[0x55; 2]),
    ]
}

/// A classic little-endian pcap of Ethernet frames.
fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&4u16.to_le_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&65535u32.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    for (n, f) in frames.iter().enumerate() {
        p.extend_from_slice(&(n as u32).to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&(f.len() as u32).to_le_bytes());
        p.extend_from_slice(&(f.len() as u32).to_le_bytes());
        p.extend_from_slice(f);
    }
    p
}

/// Our protocol bucket (`PROTOCOLS` index) for tshark's `frame.protocols` of a frame: the first
/// network protocol after Ethernet and its tags, and the first header after IP or after IPv6
/// and its extension headers.
fn bucket(protocols: &str) -> usize {
    let index = |name: &str| PROTOCOLS.iter().position(|p| *p == name).unwrap();
    let mut layers = protocols
        .split(':')
        .filter(|l| !matches!(*l, "eth" | "ethertype" | "vlan" | "ieee8021ad"));
    match layers.next() {
        Some("arp") => index("arp"),
        Some("ip") => match layers.next() {
            Some(l4 @ ("tcp" | "udp" | "icmp")) => index(l4),
            _ => index("ipv4_other"),
        },
        Some("ipv6") => match layers.find(|l| !l.starts_with("ipv6.")) {
            Some(l4 @ ("tcp" | "udp" | "icmpv6")) => index(l4),
            _ => index("ipv6_other"),
        },
        _ => index("other"),
    }
}

/// What tshark says of each frame.
struct Dissected {
    /// Our protocol bucket.
    bucket: usize,
    /// (family, type) of an ICMP or ICMPv6 message.
    icmp: Option<(u8, u8)>,
    syn: bool,
}

fn tshark(frames: &[Vec<u8>]) -> Vec<Dissected> {
    let dir = TempDir::new("parse");
    let file = dir.0.join("frames.pcap");
    std::fs::write(&file, pcap(frames)).expect("write pcap");
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&file)
        .args(["-T", "fields", "-E", "occurrence=f"])
        .args([
            "-e",
            "frame.protocols",
            "-e",
            "icmp.type",
            "-e",
            "icmpv6.type",
        ])
        .args(["-e", "tcp.flags.syn", "-e", "tcp.flags.ack"])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("tshark prints UTF-8");
    let dissected: Vec<Dissected> = text
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let field = |i: usize| f.get(i).copied().unwrap_or("");
            let icmp = [(4, field(1)), (6, field(2))]
                .into_iter()
                .find_map(|(family, t)| Some((family, t.parse::<u8>().ok()?)));
            // tshark prints flags as 1/0 or True/False depending on its version.
            let set = |v: &str| v == "1" || v.eq_ignore_ascii_case("true");
            Dissected {
                bucket: bucket(field(0)),
                icmp,
                syn: set(field(3)) && !set(field(4)),
            }
        })
        .collect();
    assert_eq!(
        dissected.len(),
        frames.len(),
        "tshark read every frame:\n{text}"
    );
    dissected
}

fn mac_packets(macs: &[MacSeen], mac: [u8; 6]) -> u64 {
    let name = format_mac(&mac);
    macs.iter()
        .filter(|m| m.mac == name)
        .map(|m| m.packets)
        .sum()
}

#[test]
fn every_frame_is_counted_under_the_protocol_tshark_dissects() {
    require_root();
    require_tool("tshark");
    let frames = frames();
    let dissected = tshark(&frames);
    let expected: Vec<usize> = dissected.iter().map(|d| d.bucket).collect();
    // Every bucket is reached, the rare path's as well as the common one's.
    for (i, p) in PROTOCOLS.iter().enumerate() {
        assert!(expected.contains(&i), "no crafted frame is {p} for tshark");
    }

    let probe = Probe::load(&ProbeOptions::default()).expect("load programs");
    let mut counted = [0u64; 8];
    for (n, frame) in frames.iter().enumerate() {
        let (ret, _) = probe
            .test_run(PROG_INGRESS, frame, 1)
            .unwrap_or_else(|e| panic!("frame {n}: {e:#}"));
        assert_eq!(ret, TCX_NEXT, "frame {n}");
        let readings = probe.read().expect("read maps");
        let now = readings
            .get(&LO)
            .expect("the test-run port is counted")
            .counters
            .tx_packets;
        let got: Vec<usize> = (0..8).filter(|&i| now[i] != counted[i]).collect();
        assert_eq!(
            got,
            vec![expected[n]],
            "frame {n} ({frame:02x?}) counted as {:?}, tshark says {}",
            got.iter().map(|&i| PROTOCOLS[i]).collect::<Vec<_>>(),
            PROTOCOLS[expected[n]]
        );
        assert_eq!(
            now[expected[n]],
            counted[expected[n]] + 1,
            "frame {n} counted once"
        );
        counted = now;
    }

    let readings = probe.read().expect("read maps");
    let lo = &readings[&LO];
    let total_bytes: u64 = lo.counters.tx_bytes.iter().sum();
    assert_eq!(
        total_bytes,
        frames.iter().map(|f| f.len() as u64).sum::<u64>(),
        "bytes"
    );
    // ICMP messages by family and type, and SYNs, as tshark counts them.
    let mut icmp_expected: HashMap<(u8, u8), u64> = HashMap::new();
    for (family, typ) in dissected.iter().filter_map(|d| d.icmp) {
        *icmp_expected.entry((family, typ)).or_default() += 1;
    }
    let mut icmp_seen: HashMap<(u8, u8), u64> = HashMap::new();
    for c in &lo.counters.icmp {
        *icmp_seen.entry((c.family, c.icmp_type)).or_default() += c.count;
    }
    assert!(
        icmp_expected.len() >= 2,
        "echo requests of both families crafted"
    );
    assert_eq!(icmp_seen, icmp_expected, "ICMP messages by (family, type)");
    let syns = dissected.iter().filter(|d| d.syn).count() as u64;
    assert!(syns >= 4, "SYNs crafted on both paths");
    let seen_syns: u64 = lo
        .counters
        .tcp_flags
        .iter()
        .filter(|f| f.flag == TcpFlag::Syn)
        .map(|f| f.count)
        .sum();
    assert_eq!(seen_syns, syns, "SYNs");
    // Source MACs, from either path.
    let count_of = |mac: [u8; 6]| frames.iter().filter(|f| f[6..12] == mac).count() as u64;
    for mac in [MAC_COMMON, MAC_REST, MAC_SHORT] {
        assert_eq!(
            mac_packets(&lo.macs, mac),
            count_of(mac),
            "frames from {mac:02x?}"
        );
    }
}
