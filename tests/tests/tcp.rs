//! TCP health at the veth (`node_tracer_tcp_flags_total`, `node_tracer_tcp_handshake_seconds`)
//! against tcpdump's count of the same flags on the same veth, and coverage
//! (`node_tracer_unseen_packets_total`) against the kernel's own counters of the veth's peer.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Agent, Capture, Link, Netns, Pod, TempDir, ifindex, metric, node_tracer, quiet, quiet_ipv6,
    quiet_read, require_root, require_tool, sh, unique,
};

/// tcpdump filters of the flags, as the programs define them (a SYN with ACK is a `synack`),
/// quoted for the shell `Capture::finish` runs them in.
const FLAGS: [(&str, &str); 4] = [
    ("syn", "'tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn'"),
    (
        "synack",
        "'tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)'",
    ),
    ("rst", "'tcp[tcpflags] & tcp-rst != 0'"),
    ("fin", "'tcp[tcpflags] & tcp-fin != 0'"),
];

fn flags(m: &str, veth: &str, direction: &str) -> Vec<u64> {
    FLAGS
        .iter()
        .map(|(flag, _)| {
            metric(
                m,
                "node_tracer_tcp_flags_total",
                &[
                    ("interface", veth),
                    ("direction", direction),
                    ("flag", flag),
                ],
            )
            .unwrap_or(0.0) as u64
        })
        .collect()
}

fn unseen(m: &str, veth: &str, direction: &str) -> Option<u64> {
    metric(
        m,
        "node_tracer_unseen_packets_total",
        &[("interface", veth), ("direction", direction)],
    )
    .map(|v| v as u64)
}

/// A server process of the test's own, stopped by its PID on drop.
struct Listener(std::process::Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn flags_and_handshakes_equal_tcpdump_for_connections_into_a_pod() {
    const N: usize = 20;
    const REFUSED: usize = 5;
    require_root();
    for t in ["tcpdump", "busybox"] {
        require_tool(t);
    }
    let br = Link::bridge("br");
    let server = Pod::bridged("srv", &br, "10.11.0.2", 24);
    let client = Pod::bridged("cli", &br, "10.11.0.3", 24);
    let veth = server.veth.name.clone();
    let agent = Agent::start(&["--attach-mode", "tcx", "-i", &veth]);
    // A server that keeps one listening socket (iperf3 reopens its own between tests, and a
    // connection in that moment is refused), closing each connection at once.
    let _listener = Listener(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &server.ns.name,
                "busybox",
                "nc",
                "-ll",
                "-p",
                "5201",
            ])
            .args(["-e", "true"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("busybox nc"),
    );
    let start = Instant::now();
    while !server.ns.exec("ss -Hltn").contains(":5201") {
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "nc never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let tmp = TempDir::new("tcp");
    let cap_in = Capture::start(&veth, "in", &tmp.0);
    let cap_out = Capture::start(&veth, "out", &tmp.0);
    // N connections opened and closed, then REFUSED to a closed port (SYN, then RST-ACK).
    client.ns.exec(&format!(
        "for i in $(seq {N}); do (exec 3<>/dev/tcp/{ip}/5201) || exit 1; done; \
         for i in $(seq {REFUSED}); do (exec 3<>/dev/tcp/{ip}/5999) 2>/dev/null; done; true",
        ip = server.ip
    ));
    let filters: Vec<&str> = FLAGS.iter().map(|(_, f)| *f).collect();
    // Host ingress is what the pod transmits.
    let dump_tx = cap_in.finish(&filters);
    let dump_rx = cap_out.finish(&filters);
    let (_, m) = quiet_read(&agent, &veth);
    let ours_rx = flags(&m, &veth, "receive");
    let ours_tx = flags(&m, &veth, "transmit");
    assert_eq!(ours_rx, dump_rx, "received syn/synack/rst/fin vs tcpdump");
    assert_eq!(
        ours_tx, dump_tx,
        "transmitted syn/synack/rst/fin vs tcpdump"
    );
    // At least one each: on a busy machine a SYN (or SYN-ACK) is sometimes sent again, and the
    // veth sees it again too; the comparison with tcpdump above is the exact one.
    assert!(dump_rx[0] >= (N + REFUSED) as u64, "tcpdump saw every SYN");
    assert!(dump_tx[1] >= N as u64, "tcpdump saw every SYN-ACK");
    assert!(dump_tx[2] >= REFUSED as u64, "refused connections reset");

    let hs = |suffix: &str, direction: &str| {
        metric(
            &m,
            &format!("node_tracer_tcp_handshake_seconds{suffix}"),
            &[("interface", &veth), ("direction", direction)],
        )
    };
    assert_eq!(hs("_count", "receive"), Some(N as f64), "{m}");
    let inf = metric(
        &m,
        "node_tracer_tcp_handshake_seconds_bucket",
        &[
            ("interface", &veth),
            ("direction", "receive"),
            ("le", "+Inf"),
        ],
    );
    assert_eq!(inf, Some(N as f64));
    let sum = hs("_sum", "receive").unwrap();
    assert!(sum > 0.0 && sum < N as f64, "handshake time sum {sum}");
    // The pod connected nowhere: no series for that direction.
    assert_eq!(hs("_count", "transmit"), None);
    assert_eq!(unseen(&m, &veth, "receive"), Some(0));
    assert_eq!(unseen(&m, &veth, "transmit"), Some(0));
    // Series stay bounded: 22 for any attached veth (README), plus one per flag and direction
    // seen, one per drop reason seen, and 10 per handshake direction (8 buckets, sum, count).
    let series = |name: &str| {
        m.lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("interface=\"{veth}\"")))
            .count()
    };
    let all = series("node_tracer_");
    let flag_series = series("node_tracer_tcp_flags_total");
    // The refused SYNs die in the pod (no_socket): one drop series per reason seen.
    let drop_series = series("node_tracer_drops_total");
    eprintln!(
        "series of a veth with {N} connections in: {all} ({flag_series} flag series, \
         {drop_series} drop series)"
    );
    assert_eq!(all, 22 + flag_series + drop_series + 10);
}

#[test]
fn a_busy_normal_veth_reads_zero_unseen_at_every_scrape() {
    require_root();
    require_tool("iperf3");
    let br = Link::bridge("br");
    let a = Pod::bridged("a", &br, "10.12.0.2", 24);
    let b = Pod::bridged("b", &br, "10.12.0.3", 24);
    let agent = Agent::start(&["-i", &a.veth.name, "-i", &b.veth.name]);
    // In the foreground, as a child of ours stopped on drop (a daemon would outlive the test).
    let _server = Listener(
        std::process::Command::new("ip")
            .args(["netns", "exec", &a.ns.name, "iperf3", "-s", "-p", "5201"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut client = std::process::Command::new("ip")
        .args([
            "netns", "exec", &b.ns.name, "iperf3", "-c", &a.ip, "-p", "5201",
        ])
        .args(["-t", "8", "-b", "50M", "--bidir"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 client");
    let mut scrapes = 0;
    let mut busy = 0;
    while client.try_wait().expect("iperf3 status").is_none() {
        let m = agent.metrics();
        for veth in [&a.veth.name, &b.veth.name] {
            for d in ["receive", "transmit"] {
                assert_eq!(
                    unseen(&m, veth, d),
                    Some(0),
                    "{veth} {d} at scrape {scrapes}"
                );
            }
        }
        if metric(
            &m,
            "node_tracer_transmit_packets_total",
            &[("interface", &b.veth.name)],
        )
        .unwrap_or(0.0)
            > 1000.0
        {
            busy += 1;
        }
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(busy >= 10, "{busy} of {scrapes} scrapes saw traffic");
    // Once the traffic is over, the last estimates are complete: still 0.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        let m = agent.metrics();
        for veth in [&a.veth.name, &b.veth.name] {
            for d in ["receive", "transmit"] {
                assert_eq!(unseen(&m, veth, d), Some(0), "{veth} {d} after the traffic");
            }
        }
    }
}

/// `r1 = ifindex; r2 = 0; r0 = bpf_redirect_peer(r1, r2); exit`, loaded through bpf(2).
fn load_redirect_peer(target: u32) -> OwnedFd {
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_FUNC_REDIRECT_PEER: u64 = 155;
    let insns: [u64; 4] = [
        0xb7 | (1 << 8) | (u64::from(target) << 32),
        0xb7 | (2 << 8),
        0x85 | (BPF_FUNC_REDIRECT_PEER << 32),
        0x95,
    ];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_SCHED_CLS) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    bpf(5, &mut attr, "PROG_LOAD redirect_peer")
}

/// A tcx link running `prog` on the ingress of `ifindex`; closing it detaches.
fn tcx_ingress(prog: &OwnedFd, ifindex: u32) -> OwnedFd {
    const BPF_TCX_INGRESS: u64 = 46;
    let mut attr = [0u64; 16];
    attr[0] = prog.as_raw_fd() as u64 | (u64::from(ifindex) << 32);
    attr[1] = BPF_TCX_INGRESS;
    bpf(28, &mut attr, "LINK_CREATE tcx")
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16], what: &str) -> OwnedFd {
    // SAFETY: `attr` is a zeroed, 8-aligned 128-byte `union bpf_attr` for `cmd`; the pointers
    // in it point at memory alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128u32) };
    assert!(r >= 0, "bpf({what}): {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor the kernel just gave us.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

#[test]
fn packets_redirected_past_the_veth_are_unseen_by_the_kernels_count() {
    const SENT: u64 = 40;
    require_root();
    // The pod: a veth nobody routes to. The sender: another veth whose host side redirects
    // everything it receives straight into the pod (`bpf_redirect_peer`), past the pod's host
    // veth and its egress hook.
    let pod = Pod::routed("pod", "10.13.0.2", "10.13.0.1");
    let sender_ns = Netns::new("snd");
    let sender = unique("v");
    quiet_ipv6(Some(&sender_ns), "default");
    sh(&format!(
        "ip link add {sender} type veth peer name eth0 netns {}",
        sender_ns.name
    ));
    let sender_link = Link { name: sender };
    quiet_ipv6(None, &sender_link.name);
    sh(&format!("ip link set {} up", sender_link.name));
    let pod_mac = pod.mac();
    sender_ns.exec(&format!(
        "ip addr add 10.13.0.9/24 dev eth0 && ip link set eth0 up && \
         ip neigh add {} lladdr {pod_mac} dev eth0",
        pod.ip
    ));
    let veth = pod.veth.name.clone();
    let agent = Agent::start(&["--attach-mode", "tcx", "-i", &veth]);
    let prog = load_redirect_peer(ifindex(&veth));
    let _link = tcx_ingress(&prog, ifindex(&sender_link.name));
    let pod_rx = || {
        pod.ns
            .exec("cat /sys/class/net/eth0/statistics/rx_packets")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let ours_rx = |m: &str| {
        metric(
            m,
            "node_tracer_receive_packets_total",
            &[("interface", &veth)],
        )
        .unwrap_or(0.0) as u64
    };
    // The estimate starts from two scrapes at least a second apart (see `coverage`).
    let (_, m0) = quiet(&veth, || agent.metrics());
    std::thread::sleep(Duration::from_millis(1100));
    let (_, m1) = quiet(&veth, || agent.metrics());
    assert_eq!(unseen(&m1, &veth, "receive"), Some(0));
    let (k0, h0) = (pod_rx(), ours_rx(&m1));
    assert_eq!(
        ours_rx(&m0),
        h0,
        "nothing crossed the veth while the estimate started"
    );

    sender_ns.exec(&format!(
        "for i in $(seq {SENT}); do echo x > /dev/udp/{}/9; done",
        pod.ip
    ));
    // Wait (generously) for the estimate to catch up; it must then stay exactly there.
    let start = Instant::now();
    let mut last;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let (_, m) = quiet(&veth, || agent.metrics());
        last = unseen(&m, &veth, "receive").unwrap();
        if last >= SENT || start.elapsed() > Duration::from_mins(1) {
            break;
        }
    }
    let (_, m) = quiet(&veth, || agent.metrics());
    let kernel_not_ours = (pod_rx() - k0) - (ours_rx(&m) - h0);
    assert_eq!(
        kernel_not_ours, SENT,
        "the kernel counted what our hooks did not"
    );
    assert_eq!(last, SENT, "unseen after the traffic");
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        let m = agent.metrics();
        assert_eq!(unseen(&m, &veth, "receive"), Some(SENT));
        assert_eq!(unseen(&m, &veth, "transmit"), Some(0));
    }

    // `peers` through the agent flags the veth. Alone, `peers` has no counters and says
    // nothing of it.
    let url = format!("http://{}", agent.addr);
    let run = |args: &[&str]| {
        let out = node_tracer(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "peers {args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&run(&["peers", "--connect", &url, "--json"])).unwrap();
    let row = |rows: &[serde_json::Value], name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in peers"))
            .clone()
    };
    assert_eq!(
        row(&rows, &veth)["unseen"],
        serde_json::json!({"receive": SENT, "transmit": 0})
    );
    let table = run(&["peers", "--connect", &url]);
    let line = table
        .lines()
        .find(|l| l.starts_with(veth.as_str()))
        .unwrap_or_else(|| panic!("no {veth} in {table}"));
    assert!(line.contains(&format!("rx {SENT} tx 0 !")), "{table}");
    assert!(
        table
            .lines()
            .last()
            .unwrap()
            .contains(&format!("UNSEEN packets on {veth}")),
        "{table}"
    );
    let alone: Vec<serde_json::Value> = serde_json::from_str(&run(&["peers", "--json"])).unwrap();
    assert!(row(&alone, &veth)["unseen"].is_null());
    assert!(!run(&["peers"]).contains("UNSEEN"));
}
