//! Where packets die, per pod, and TCP retransmits: counted exactly against the kernel's own
//! counters (an iptables rule's packet counter, the pod namespace's `nstat`, the pod's interface
//! counters), for drops on the pod's side, inside it, and in a pod that routes.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Agent, Netns, Pod, metric, require_root, require_tool, sh, sh_output, tc_shot::TcShot,
    unique_net,
};

/// Generous: only catches a hang. Drops are counted when they happen; this waits for a scrape
/// to show what the kernel's counter shows.
const SETTLE: Duration = Duration::from_secs(30);

fn drops(agent: &Agent, pod: &str, reason: &str) -> u64 {
    let m = agent.metrics();
    metric(
        &m,
        "node_tracer_drops_total",
        &[("pod", pod), ("reason", reason)],
    )
    .unwrap_or(0.0) as u64
}

/// Waits until the agent's count equals the kernel's (both read again each time), then returns
/// them; after `SETTLE` returns the last pair, for the caller's assertion to show.
fn settle(mut agent_count: impl FnMut() -> u64, mut kernel: impl FnMut() -> u64) -> (u64, u64) {
    let start = Instant::now();
    loop {
        let (a, k) = (agent_count(), kernel());
        if (a == k && k > 0) || start.elapsed() > SETTLE {
            return (a, k);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `nstat -saz NAME` in `ns`: the namespace's absolute counter, history left alone.
fn nstat(ns: &Netns, name: &str) -> u64 {
    ns.exec(&format!("nstat -saz {name}"))
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} missing from nstat in {}", ns.name))
}

fn routed_pod(tag: &str) -> Pod {
    let net = unique_net();
    Pod::routed(tag, &format!("{net}.2"), &format!("{net}.1"))
}

fn agent_for(pod: &Pod) -> Agent {
    Agent::start(&["--interface", &pod.veth.name])
}

#[test]
fn netfilter_drop_equals_the_rules_own_counter() {
    require_root();
    require_tool("iptables");
    let pod = routed_pod("dnf");
    // A pod that drops nothing: it must add no series.
    let quiet = routed_pod("dnq");
    pod.ns.exec("iptables -A INPUT -p icmp -j DROP");
    let agent = Agent::start(&["-i", &pod.veth.name, "-i", &quiet.veth.name]);
    sh_output(&format!("ping -q -c 20 -i 0.01 -W 1 {}", pod.ip));
    let rule = || {
        pod.ns
            .exec("iptables -L INPUT -v -x -n")
            .lines()
            .find(|l| l.contains("DROP"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .expect("the DROP rule's packet counter")
    };
    let (ours, kernel) = settle(|| drops(&agent, &pod.ns.name, "netfilter_drop"), rule);
    assert!(kernel >= 20, "the rule dropped {kernel} packets");
    assert_eq!(
        ours, kernel,
        "netfilter_drop of {} vs the rule",
        pod.ns.name
    );
    // Attributed to the pod's host veth, and to no one else.
    let m = agent.metrics();
    assert_eq!(
        metric(
            &m,
            "node_tracer_drops_total",
            &[
                ("pod", &pod.ns.name),
                ("interface", &pod.veth.name),
                ("reason", "netfilter_drop")
            ],
        ),
        Some(kernel as f64),
        "{m}"
    );
    assert!(
        !m.lines().any(|l| l.starts_with("node_tracer_drops_total{")
            && (l.contains(&format!("pod=\"{}\"", quiet.ns.name))
                || l.contains(&pod.ns.name) && !l.contains("netfilter_drop"))),
        "{m}"
    );
}

/// `BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`: the kernel counts every program's runs while the
/// returned descriptor is open, and stops when it closes (also if the test dies), so
/// `kernel.bpf_stats_enabled` is left as it was.
fn enable_bpf_stats() -> OwnedFd {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    // `union bpf_attr`: `enable_stats.type` = BPF_STATS_RUN_TIME (0); the rest zero.
    let mut attr = [0u64; 16];
    // SAFETY: a zeroed, 8-aligned 128-byte `union bpf_attr`; it holds no pointers.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_mut_ptr(), 128u32) };
    assert!(
        r >= 0,
        "BPF_ENABLE_STATS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor the kernel just gave us.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

fn program_runs(agent: &Agent, program: &str) -> u64 {
    metric(
        &agent.metrics(),
        "node_tracer_program_runs_total",
        &[("program", program)],
    )
    .unwrap_or_else(|| panic!("no run count of {program}")) as u64
}

#[test]
fn no_socket_equals_the_pods_udp_no_ports() {
    require_root();
    require_tool("nstat");
    let pod = routed_pod("dns");
    let agent = agent_for(&pod);
    let before = nstat(&pod.ns, "UdpNoPorts");
    // The drop program is in the run time metric beside the tc programs, and so is the
    // retransmit program; with statistics on, each drop is one more run of it.
    assert!(agent.programs().contains_key("nt_tcp_retx"));
    let stats = enable_bpf_stats();
    let runs_before = program_runs(&agent, "nt_kfree_skb");
    // bash's /dev/udp: one datagram per redirection.
    sh(&format!(
        "bash -c 'for i in $(seq 30); do echo x > /dev/udp/{}/9; done'",
        pod.ip
    ));
    // Other drops on the machine run it too: at least ours.
    let runs = program_runs(&agent, "nt_kfree_skb") - runs_before;
    drop(stats);
    assert!(runs >= 30, "nt_kfree_skb ran {runs} times for 30 drops");
    let (ours, kernel) = settle(
        || drops(&agent, &pod.ns.name, "no_socket"),
        || nstat(&pod.ns, "UdpNoPorts") - before,
    );
    assert_eq!(kernel, 30, "UdpNoPorts of {}", pod.ns.name);
    assert_eq!(ours, kernel, "no_socket of {} vs UdpNoPorts", pod.ns.name);
}

/// A raw-socket `ping` (iputils as root, where the namespace's `ping_group_range` leaves root
/// out, as by default) receives its echo replies, which the kernel then frees as `no_socket`
/// because no *ping* socket took them: no drop, so not counted. Datagrams to a closed port
/// right after still are, exactly.
#[test]
fn echo_replies_to_a_raw_socket_ping_are_no_drops() {
    require_root();
    require_tool("nstat");
    let net = unique_net();
    let gateway = format!("{net}.1");
    let pod = Pod::routed("dpg", &format!("{net}.2"), &gateway);
    let agent = agent_for(&pod);
    pod.ns.exec("sysctl -qw net.ipv4.ping_group_range='1 0'");
    let replies = nstat(&pod.ns, "IcmpInEchoReps");
    pod.ns
        .exec(&format!("ping -q -c 10 -i 0.01 -W 1 {gateway}"));
    assert_eq!(
        nstat(&pod.ns, "IcmpInEchoReps") - replies,
        10,
        "the replies arrived"
    );
    let before = nstat(&pod.ns, "UdpNoPorts");
    sh(&format!(
        "bash -c 'for i in $(seq 5); do echo x > /dev/udp/{}/9; done'",
        pod.ip
    ));
    // The replies were freed before the datagrams: counted, they would be here already.
    let (ours, kernel) = settle(
        || drops(&agent, &pod.ns.name, "no_socket"),
        || nstat(&pod.ns, "UdpNoPorts") - before,
    );
    assert_eq!(kernel, 5, "UdpNoPorts of {}", pod.ns.name);
    assert_eq!(
        ours, kernel,
        "no_socket of {}: the closed port's datagrams, not the echo replies",
        pod.ns.name
    );
}

/// A tc program that drops on the pod's `eth0` (inside the pod): every frame the pod's eth0
/// receives dies there, so `tc_ingress` equals its `rx_packets`.
#[test]
fn tc_shot_on_the_pods_eth0_is_tc_ingress() {
    require_root();
    let pod = routed_pod("dtc");
    // Without ARP answers (the program drops them too) the host needs the pod's MAC.
    sh(&format!(
        "ip neigh replace {} lladdr {} dev {} nud permanent",
        pod.ip,
        pod.mac(),
        pod.veth.name
    ));
    let agent = agent_for(&pod);
    let rx = || -> u64 {
        pod.ns
            .exec("cat /sys/class/net/eth0/statistics/rx_packets")
            .trim()
            .parse()
            .unwrap()
    };
    let before = rx();
    let shot = TcShot::ingress(&pod.ns, "eth0");
    sh_output(&format!("ping -q -c 25 -i 0.01 -W 1 {}", pod.ip));
    drop(shot);
    let (ours, kernel) = settle(
        || drops(&agent, &pod.ns.name, "tc_ingress"),
        || rx() - before,
    );
    assert!(kernel >= 25, "eth0 of {} received {kernel}", pod.ns.name);
    assert_eq!(
        ours, kernel,
        "tc_ingress of {} vs eth0 rx_packets",
        pod.ns.name
    );
}

/// Two namespaces routed through a pod; `ping -t 1` across it dies in the pod when forwarded:
/// `ip_inhdr` equals the pod's `IpInHdrErrors`.
#[test]
fn ttl_expiry_in_a_routing_pod_is_ip_inhdr() {
    require_root();
    require_tool("nstat");
    let router = routed_pod("drt");
    let (a, b) = (Netns::new("dra"), Netns::new("drb"));
    let (na, nb) = (unique_net(), unique_net());
    let r = &router.ns.name;
    sh(&format!(
        "ip -n {r} link add ra type veth peer name eth0 netns {a} && \
         ip -n {r} link add rb type veth peer name eth0 netns {b} && \
         ip -n {r} addr add {na}.1/24 dev ra && ip -n {r} link set ra up && \
         ip -n {r} addr add {nb}.1/24 dev rb && ip -n {r} link set rb up && \
         ip -n {a} addr add {na}.2/24 dev eth0 && ip -n {a} link set eth0 up && \
         ip -n {a} route add {nb}.0/24 via {na}.1 && \
         ip -n {b} addr add {nb}.2/24 dev eth0 && ip -n {b} link set eth0 up && \
         ip -n {b} route add {na}.0/24 via {nb}.1 && \
         ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1",
        a = a.name,
        b = b.name
    ));
    // The path works with a normal TTL (so a failure below is the TTL, not the wiring).
    a.exec(&format!("ping -q -c 1 -W 5 {nb}.2"));
    let agent = agent_for(&router);
    let before = nstat(&router.ns, "IpInHdrErrors");
    let _ = a.exec_output(&format!("ping -q -c 15 -i 0.01 -t 1 -W 1 {nb}.2"));
    let (ours, kernel) = settle(
        || drops(&agent, r, "ip_inhdr"),
        || nstat(&router.ns, "IpInHdrErrors") - before,
    );
    assert_eq!(kernel, 15, "IpInHdrErrors of {r}");
    assert_eq!(ours, kernel, "ip_inhdr of {r} vs IpInHdrErrors");
}

/// A TCP stream from a pod to a namespace that drops 3% of what arrives (statistic match in its
/// INPUT): the pod's retransmitted segments equal its `TcpRetransSegs`, GSO on.
#[test]
fn tcp_retransmits_equal_the_pods_tcp_retrans_segs() {
    require_root();
    for tool in ["iperf3", "iptables", "nstat", "ss"] {
        require_tool(tool);
    }
    let pod = routed_pod("drx");
    let recv = Netns::new("drr");
    let n = unique_net();
    let p = &pod.ns.name;
    sh(&format!(
        "ip -n {p} link add eth1 type veth peer name eth1 netns {r} && \
         ip -n {p} addr add {n}.1/24 dev eth1 && ip -n {p} link set eth1 up && \
         ip -n {r} addr add {n}.2/24 dev eth1 && ip -n {r} link set eth1 up",
        r = recv.name
    ));
    recv.exec(
        "iptables -A INPUT -p tcp --dport 5201 -m statistic --mode random --probability 0.03 -j DROP",
    );
    let agent = agent_for(&pod);
    let before = nstat(&pod.ns, "TcpRetransSegs");
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &recv.name, "iperf3", "-s", "-1", "-p", "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    let start = Instant::now();
    while !recv.exec("ss -ltnH sport = :5201").contains("5201") {
        assert!(start.elapsed() < SETTLE, "iperf3 server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = pod
        .ns
        .exec_output(&format!("iperf3 -c {n}.2 -p 5201 -n 8M"));
    let _ = server.wait();
    assert!(
        client.status.success(),
        "iperf3 client: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    let retx = || {
        let m = agent.metrics();
        metric(&m, "node_tracer_tcp_retransmits_total", &[("pod", p)]).unwrap_or(0.0) as u64
    };
    let (ours, kernel) = settle(retx, || nstat(&pod.ns, "TcpRetransSegs") - before);
    assert!(kernel > 0, "no retransmits in {p}");
    assert_eq!(ours, kernel, "retransmits of {p} vs TcpRetransSegs");
}

/// `--no-drop-tracking`: both parts say they are off, and no drop series appears.
#[test]
fn no_drop_tracking_turns_both_parts_off() {
    require_root();
    let pod = routed_pod("dof");
    pod.ns.exec("iptables -A INPUT -p icmp -j DROP");
    let agent = Agent::start(&["--interface", &pod.veth.name, "--no-drop-tracking"]);
    sh_output(&format!("ping -q -c 3 -i 0.01 -W 1 {}", pod.ip));
    let m = agent.metrics();
    for part in ["drops", "retransmits"] {
        assert_eq!(
            metric(&m, "node_tracer_tracking_enabled", &[("part", part)]),
            Some(0.0),
            "{m}"
        );
    }
    assert!(!m.contains("node_tracer_drops_total{"), "{m}");
    let on = agent_for(&pod);
    assert_eq!(
        metric(
            &on.metrics(),
            "node_tracer_tracking_enabled",
            &[("part", "drops")]
        ),
        Some(1.0)
    );
}
