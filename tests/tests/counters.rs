//! The programs' counts equal the kernel's own interface counters and tcpdump's, per veth,
//! direction and protocol, over the same interval; also after the agent restarts.

use std::time::Duration;

use node_tracer_tests::{
    Agent, Capture, KernelCounters, Link, Pod, TempDir, attached_in, iface_stat, metric,
    quiet_read, require_root, require_tool, sh,
};

const PROTOCOLS: [(&str, &str); 5] = [
    ("arp", "arp"),
    ("icmp", "icmp"),
    ("icmpv6", "icmp6"),
    ("tcp", "tcp"),
    ("udp", "udp"),
];

struct Reading {
    kernel: KernelCounters,
    /// Pod's point of view: receive, transmit; per protocol packets, and bytes.
    rx: Vec<f64>,
    tx: Vec<f64>,
    rx_bytes: f64,
    tx_bytes: f64,
    echo_requests_tx: f64,
    echo_replies_rx: f64,
    unreachable_rx: f64,
}

fn read(agent: &Agent, veth: &str) -> Reading {
    let (kernel, m) = quiet_read(agent, veth);
    let per = |name: &str| -> Vec<f64> {
        PROTOCOLS
            .iter()
            .map(|(p, _)| metric(&m, name, &[("interface", veth), ("protocol", p)]).unwrap_or(0.0))
            .collect()
    };
    Reading {
        kernel,
        rx: per("node_tracer_receive_packets_total"),
        tx: per("node_tracer_transmit_packets_total"),
        rx_bytes: metric(
            &m,
            "node_tracer_receive_bytes_total",
            &[("interface", veth)],
        )
        .unwrap_or(0.0),
        tx_bytes: metric(
            &m,
            "node_tracer_transmit_bytes_total",
            &[("interface", veth)],
        )
        .unwrap_or(0.0),
        echo_requests_tx: metric(
            &m,
            "node_tracer_icmp_messages_total",
            &[
                ("interface", veth),
                ("direction", "transmit"),
                ("type", "icmp_echo_request"),
            ],
        )
        .unwrap_or(0.0),
        echo_replies_rx: metric(
            &m,
            "node_tracer_icmp_messages_total",
            &[
                ("interface", veth),
                ("direction", "receive"),
                ("type", "icmp_echo_reply"),
            ],
        )
        .unwrap_or(0.0),
        unreachable_rx: metric(
            &m,
            "node_tracer_icmp_messages_total",
            &[
                ("interface", veth),
                ("direction", "receive"),
                ("type", "icmp_destination_unreachable"),
            ],
        )
        .unwrap_or(0.0),
    }
}

fn delta(a: &[f64], b: &[f64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| (y - x) as u64).collect()
}

/// Sends a known mix between two bridged pods and checks every count on `a`'s veth.
fn send_and_check(agent: &Agent, a: &Pod, b: &Pod) {
    let tmp = TempDir::new("cap");
    let veth = a.veth.name.as_str();
    // Host veth ingress = what pod A transmits; egress = what it receives.
    let cap_in = Capture::start(veth, "in", &tmp.0);
    let cap_out = Capture::start(veth, "out", &tmp.0);
    let before = read(agent, veth);

    // ARP: an empty neighbour cache makes the first packet resolve.
    a.ns.exec("ip neigh flush all");
    b.ns.exec("ip neigh flush all");
    a.ns.exec(&format!("ping -c 10 -i 0.01 -q {}", b.ip));
    a.ns.exec("ping -6 -c 5 -i 0.01 -q fd00::2");
    // UDP: 25 datagrams of different sizes.
    a.ns.exec(&format!(
        "for i in $(seq 25); do head -c $((i * 7)) /dev/zero > /dev/udp/{}/9999; done",
        b.ip
    ));
    // TCP: a real connection carrying 64 KiB.
    b.ns.exec("iperf3 -s -1 -D -p 5201 --logfile /dev/null");
    std::thread::sleep(Duration::from_millis(300));
    a.ns.exec(&format!("iperf3 -c {} -p 5201 -n 64K >/dev/null", b.ip));
    std::thread::sleep(Duration::from_millis(300));

    let after = read(agent, veth);
    let filters: Vec<&str> = PROTOCOLS.iter().map(|(_, f)| *f).collect();
    let tcpdump_tx = cap_in.finish(&filters);
    let tcpdump_rx = cap_out.finish(&filters);
    let ours_tx = delta(&before.tx, &after.tx);
    let ours_rx = delta(&before.rx, &after.rx);

    // The kernel's own counters: host veth rx is the pod's transmit.
    let k_tx = after.kernel.rx_packets - before.kernel.rx_packets;
    let k_rx = after.kernel.tx_packets - before.kernel.tx_packets;
    assert_eq!(
        ours_tx.iter().sum::<u64>(),
        k_tx,
        "transmit packets vs kernel (ours {ours_tx:?})"
    );
    assert_eq!(
        ours_rx.iter().sum::<u64>(),
        k_rx,
        "receive packets vs kernel (ours {ours_rx:?})"
    );
    assert_eq!(
        (after.tx_bytes - before.tx_bytes) as u64,
        after.kernel.rx_bytes - before.kernel.rx_bytes,
        "transmit bytes vs kernel"
    );
    assert_eq!(
        (after.rx_bytes - before.rx_bytes) as u64,
        after.kernel.tx_bytes - before.kernel.tx_bytes,
        "receive bytes vs kernel"
    );
    // The protocol split, packet for packet, against tcpdump.
    assert_eq!(
        ours_tx, tcpdump_tx,
        "transmit by protocol {PROTOCOLS:?} vs tcpdump"
    );
    assert_eq!(
        ours_rx, tcpdump_rx,
        "receive by protocol {PROTOCOLS:?} vs tcpdump"
    );
    // And against what we know we sent.
    assert_eq!(
        (after.echo_requests_tx - before.echo_requests_tx) as u64,
        10
    );
    assert!(
        ours_tx[0] >= 1 && ours_rx[0] >= 1,
        "ARP both ways: {ours_tx:?} {ours_rx:?}"
    );
    assert_eq!(
        (after.echo_replies_rx - before.echo_replies_rx) as u64,
        10,
        "10 echo replies"
    );
    assert_eq!(ours_tx[1], 10, "only the 10 echo requests are ICMP from A");
    // UDP to a closed port draws port-unreachables (rate limited by the kernel): the ICMP A
    // receives is exactly the replies plus those.
    let unreachable = (after.unreachable_rx - before.unreachable_rx) as u64;
    assert!(unreachable >= 1, "port unreachable messages seen");
    assert_eq!(
        ours_rx[1],
        10 + unreachable,
        "ICMP received = echo replies + unreachables"
    );
    assert!(
        ours_tx[2] >= 5,
        "ICMPv6 echo and neighbour discovery: {ours_tx:?}"
    );
    assert!(ours_tx[3] > 10, "TCP segments: {ours_tx:?}");
    assert_eq!(ours_tx[4], 25, "25 UDP datagrams");
}

fn lab() -> (Link, Pod, Pod) {
    let br = Link::bridge("br");
    let a = Pod::bridged("a", &br, "10.9.0.2", 24);
    let b = Pod::bridged("b", &br, "10.9.0.3", 24);
    a.ns.exec("ip -6 addr add fd00::1/64 dev eth0 nodad");
    b.ns.exec("ip -6 addr add fd00::2/64 dev eth0 nodad");
    // Let link-up chatter (MLD reports) pass before anything is measured.
    std::thread::sleep(Duration::from_millis(1500));
    (br, a, b)
}

fn preconditions() {
    require_root();
    for t in ["tcpdump", "iperf3", "ping"] {
        require_tool(t);
    }
}

#[test]
fn counts_equal_kernel_and_tcpdump_in_tcx_mode_and_after_restart() {
    preconditions();
    let (_br, a, b) = lab();
    let ifaces = [
        "--attach-mode",
        "tcx",
        "-i",
        &a.veth.name,
        "-i",
        &b.veth.name,
    ];
    let agent = Agent::start(&ifaces);
    send_and_check(&agent, &a, &b);
    drop(agent);
    // A fresh agent starts from fresh maps and is exact again.
    let agent = Agent::start(&ifaces);
    send_and_check(&agent, &a, &b);
}

#[test]
fn counts_equal_kernel_and_tcpdump_in_netlink_mode() {
    preconditions();
    let (_br, a, b) = lab();
    let agent = Agent::start(&[
        "--attach-mode",
        "netlink",
        "-i",
        &a.veth.name,
        "-i",
        &b.veth.name,
    ]);
    send_and_check(&agent, &a, &b);
}

/// Packets and bytes both ways on `veth` from one quiet metrics read, pod's point of view:
/// (received, transmitted, received bytes, transmitted bytes).
fn totals(metrics: &str, veth: &str) -> [u64; 4] {
    let sum = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("interface=\"{veth}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    [
        sum("node_tracer_receive_packets_total{"),
        sum("node_tracer_transmit_packets_total{"),
        sum("node_tracer_receive_bytes_total{"),
        sum("node_tracer_transmit_bytes_total{"),
    ]
}

fn attached(agent: &Agent, mode: &str) -> Option<u64> {
    attached_in(&agent.metrics(), mode)
}

/// Fast-start mode attaches with netlink, then moves each veth to tcx while both programs are in
/// place for a moment. With 1,000 pings a second each way crossing the move, the counts still
/// equal the kernel's: the clsact program steps aside for packets the tcx one counted. (The
/// kernel may drop a packet it is sending to the veth while the clsact qdisc goes away, after
/// our egress program saw it: it counts that one in `tx_dropped`.)
#[test]
fn counts_stay_exact_while_moving_from_netlink_to_tcx() {
    preconditions();
    let (_br, a, b) = lab();
    let veths = [a.veth.name.clone(), b.veth.name.clone()];
    let agent = Agent::start(&[
        "--attach-mode",
        "fast-start",
        "--tcx-after",
        "2",
        "-i",
        &veths[0],
        "-i",
        &veths[1],
    ]);
    assert_eq!(
        attached(&agent, "netlink"),
        Some(2),
        "first attached with netlink"
    );
    let before: Vec<_> = veths.iter().map(|v| quiet_read(&agent, v)).collect();

    let pinger = {
        let (ns, ip) = (a.ns.name.clone(), b.ip.clone());
        std::thread::spawn(move || {
            sh(&format!(
                "ip netns exec {ns} ping -i 0.001 -c 4000 -q {ip} >/dev/null"
            ))
        })
    };
    // The move happens while the pings flow.
    let mut moved = false;
    while !pinger.is_finished() {
        if attached(&agent, "tcx") == Some(2) {
            moved = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(moved, "both veths moved to tcx while the pings ran");
    pinger.join().unwrap();
    assert_eq!(attached(&agent, "netlink"), Some(0));

    for (v, (k0, m0)) in veths.iter().zip(&before) {
        let (k1, m1) = quiet_read(&agent, v);
        let (t0, t1) = (totals(m0, v), totals(&m1, v));
        let ours: Vec<u64> = t0.iter().zip(&t1).map(|(x, y)| y - x).collect();
        // Host rx is the pod's transmit.
        let kernel = vec![
            k1.tx_packets - k0.tx_packets,
            k1.rx_packets - k0.rx_packets,
            k1.tx_bytes - k0.tx_bytes,
            k1.rx_bytes - k0.rx_bytes,
        ];
        let (tx_dropped, rx_dropped) = (iface_stat(v, "tx_dropped"), iface_stat(v, "rx_dropped"));
        assert_eq!(rx_dropped, 0, "{v}: nothing the pod sent was dropped");
        // Every ping crossed it: sent to the pod, or dropped on the way as the qdisc went.
        assert!(
            kernel[0] + tx_dropped >= 4000,
            "{v}: the pings crossed it: {kernel:?}, {tx_dropped} dropped"
        );
        // Packets: exact, counting those the kernel dropped after our egress program.
        assert_eq!(
            [ours[0], ours[1], ours[3]],
            [kernel[0] + tx_dropped, kernel[1], kernel[3]],
            "{v}: [rx, tx, tx bytes] vs the kernel ({tx_dropped} dropped sending to the pod)"
        );
        // Bytes of the dropped packets are not in the kernel's count: a frame is 42..=1514.
        let extra = ours[2] - kernel[2];
        assert!(
            (42 * tx_dropped..=1514 * tx_dropped).contains(&extra),
            "{v}: rx bytes {} vs the kernel's {} with {tx_dropped} dropped",
            ours[2],
            kernel[2]
        );
        // Nothing of the netlink attachment is left: no filter, no clsact qdisc.
        let tc = sh(&format!(
            "tc filter show dev {v} ingress; tc filter show dev {v} egress"
        ));
        assert!(tc.trim().is_empty(), "{v}: filters left: {tc}");
        assert!(!sh(&format!("tc qdisc show dev {v}")).contains("clsact"));
    }
}

/// Two ports whose ifindexes share a `PORT_SLOTS` index (with `--max-ports 2` the table has 4
/// entries): one gets the direct slot, the other the `PORT_STATS` hash, and both count exactly.
#[test]
fn ports_sharing_a_slot_index_are_both_counted_exactly() {
    preconditions();
    let net = node_tracer_tests::unique_net();
    let gw = format!("{net}.1");
    // Five veths: two of them have the same ifindex modulo 4.
    let pods: Vec<Pod> = (0..5)
        .map(|i| Pod::routed(&format!("s{i}"), &format!("{net}.{}", 10 + i), &gw))
        .collect();
    let (p, q) = pods
        .iter()
        .enumerate()
        .find_map(|(i, p)| {
            pods[i + 1..]
                .iter()
                .find(|q| q.veth.ifindex() % 4 == p.veth.ifindex() % 4)
                .map(|q| (p, q))
        })
        .expect("pigeonhole");
    std::thread::sleep(Duration::from_secs(1));
    let agent = Agent::start(&["--max-ports", "2", "-i", &p.veth.name, "-i", &q.veth.name]);
    let m = agent.metrics();
    for map in ["PORT_COUNTERS", "PORT_STATS"] {
        assert_eq!(
            metric(&m, "node_tracer_map_entries", &[("map", map)]),
            Some(1.0),
            "one port in {map}"
        );
    }
    for (pod, n) in [(p, 7), (q, 4)] {
        let v = pod.veth.name.as_str();
        let (k0, m0) = quiet_read(&agent, v);
        pod.ns.exec(&format!("ping -c {n} -i 0.01 -q {gw}"));
        let (k1, m1) = quiet_read(&agent, v);
        let ours: Vec<u64> = totals(&m0, v)
            .iter()
            .zip(totals(&m1, v))
            .map(|(a, b)| b - a)
            .collect();
        let kernel = vec![
            k1.tx_packets - k0.tx_packets,
            k1.rx_packets - k0.rx_packets,
            k1.tx_bytes - k0.tx_bytes,
            k1.rx_bytes - k0.rx_bytes,
        ];
        assert!(kernel[1] >= n, "{v}: {kernel:?}");
        assert_eq!(
            ours, kernel,
            "{v}: [rx, tx, rx bytes, tx bytes] vs the kernel"
        );
    }
}

#[test]
fn routed_veths_with_one_shared_address_are_counted_apart() {
    preconditions();
    let net = node_tracer_tests::unique_net();
    let gw = format!("{net}.1");
    let p1 = Pod::routed("r1", &format!("{net}.5"), &gw);
    let p2 = Pod::routed("r2", &format!("{net}.6"), &gw);
    std::thread::sleep(Duration::from_secs(1));
    let agent = Agent::start(&["-i", &p1.veth.name, "-i", &p2.veth.name]);
    let before1 = read(&agent, &p1.veth.name);
    let before2 = read(&agent, &p2.veth.name);
    p1.ns.exec(&format!("ping -c 7 -i 0.01 -q {gw}"));
    p2.ns.exec(&format!("ping -c 3 -i 0.01 -q {gw}"));
    let after1 = read(&agent, &p1.veth.name);
    let after2 = read(&agent, &p2.veth.name);
    assert_eq!(
        (after1.echo_requests_tx - before1.echo_requests_tx) as u64,
        7
    );
    assert_eq!(
        (after2.echo_requests_tx - before2.echo_requests_tx) as u64,
        3
    );
    assert_eq!(delta(&before1.rx, &after1.rx)[1], 7, "7 replies to pod 1");
    assert_eq!(delta(&before2.rx, &after2.rx)[1], 3, "3 replies to pod 2");
}
