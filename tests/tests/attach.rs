//! Where our programs sit and what they leave: first in the tcx chain (and at the lowest
//! netlink priority), programs after ours still run, and nothing of ours stays after SIGTERM or,
//! in tcx mode, SIGKILL.

use std::{fmt::Write as _, process::Command, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use node_tracer_tests::{
    Agent, Link, Netns, Pod, attached_in, binary, free_port, http_get, node_tracer_in, quiet,
    require_root, require_tool, sh, signal_and_wait,
};
use serde_json::Value;

/// Program ids on a tcx hook, in chain order.
fn chain(iface: &str, ty: TcAttachType) -> Vec<u32> {
    let (_, progs) = SchedClassifier::query_tcx(iface, ty).expect("query tcx");
    progs.iter().map(aya::programs::ProgramInfo::id).collect()
}

#[test]
fn tcx_first_in_chain_others_still_run_nothing_left_after_term_or_kill() {
    require_root();
    let br = Link::bridge("ab");
    let a = Pod::bridged("aa", &br, "10.9.0.2", 24);
    let b = Pod::bridged("ab", &br, "10.9.0.3", 24);
    let veth = a.veth.name.as_str();
    let args = ["--attach-mode", "tcx", "-i", veth];

    let earlier = Agent::start(&args);
    let earlier_ids = earlier.program_ids();
    // A second agent attaches later, and still goes first: "first in the chain" is ours to keep.
    let later = Agent::start(&args);
    let later_ids = later.program_ids();
    for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
        let order = chain(veth, ty);
        assert_eq!(order.len(), 2, "{ty:?}: {order:?}");
        assert!(
            later_ids.contains(&order[0]),
            "{ty:?}: the later agent is first: {order:?}"
        );
        assert!(
            earlier_ids.contains(&order[1]),
            "{ty:?}: then the earlier one: {order:?}"
        );
    }
    // The program after ours still sees every packet: both count what the kernel counts.
    let read = || (earlier.transmit_packets(veth), later.transmit_packets(veth));
    let (k0, (t_early, t_late)) = quiet(veth, read);
    a.ns.exec(&format!("ping -c 25 -i 0.01 -q {}", b.ip));
    let (k1, (early, late)) = quiet(veth, read);
    let k = k1.rx_packets - k0.rx_packets;
    assert!(k >= 25);
    assert_eq!(late - t_late, k, "the first program");
    assert_eq!(early - t_early, k, "the program after it");

    // SIGTERM: the later agent's programs leave the chain, the other's stay.
    let (status, _) = later.stop_with(libc::SIGTERM);
    assert!(status.success());
    for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
        let order = chain(veth, ty);
        assert_eq!(order.len(), 1, "{ty:?}: {order:?}");
        assert!(earlier_ids.contains(&order[0]));
    }
    // SIGKILL: the kernel drops tcx links with the process; nothing of ours remains.
    let _ = earlier.stop_with(libc::SIGKILL);
    for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
        assert!(chain(veth, ty).is_empty(), "{ty:?} after SIGKILL");
    }
}

fn attached_with(agent: &Agent, mode: &str) -> u64 {
    attached_in(&agent.metrics(), mode).unwrap_or(0)
}

/// Fast-start mode: netlink at once, then tcx ahead of another tcx program, and no trace of the
/// netlink step left; killed during the netlink step, the next start cleans up after it.
#[test]
fn fast_start_ends_first_in_the_tcx_chain_and_leaves_nothing_of_the_netlink_step() {
    require_root();
    require_tool("tc");
    let br = Link::bridge("ub");
    let a = Pod::bridged("ua", &br, "10.9.0.2", 24);
    let b = Pod::bridged("ub", &br, "10.9.0.3", 24);
    let veth = a.veth.name.as_str();
    let other = Agent::start(&["--attach-mode", "tcx", "-i", veth]);
    let other_ids = other.program_ids();

    // Killed while still on netlink: its filters stay behind (no process owns them).
    let killed = Agent::start(&[
        "--attach-mode",
        "fast-start",
        "--tcx-after",
        "3600",
        "-i",
        veth,
    ]);
    assert_eq!(attached_with(&killed, "netlink"), 1);
    let _ = killed.stop_with(libc::SIGKILL);
    assert_eq!(
        filters(veth, "ingress").len(),
        1,
        "the killed agent's filter"
    );

    let auto = Agent::start(&[
        "--attach-mode",
        "fast-start",
        "--tcx-after",
        "0",
        "-i",
        veth,
    ]);
    let ids = auto.program_ids();
    let start = std::time::Instant::now();
    while attached_with(&auto, "tcx") != 1 {
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "never moved to tcx"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
        let order = chain(veth, ty);
        assert_eq!(order.len(), 2, "{ty:?}: {order:?}");
        assert!(ids.contains(&order[0]), "{ty:?}: ours first: {order:?}");
        assert!(other_ids.contains(&order[1]), "{ty:?}: {order:?}");
    }
    for hook in ["ingress", "egress"] {
        assert!(
            filters(veth, hook).is_empty(),
            "{hook}: {:?}",
            filters(veth, hook)
        );
    }
    assert!(!sh(&format!("tc qdisc show dev {veth}")).contains("clsact"));
    let read = || (auto.transmit_packets(veth), other.transmit_packets(veth));
    let (k0, (t_auto, t_other)) = quiet(veth, read);
    a.ns.exec(&format!("ping -c 25 -i 0.01 -q {}", b.ip));
    let (k1, (t_auto1, t_other1)) = quiet(veth, read);
    let k = k1.rx_packets - k0.rx_packets;
    assert_eq!(t_auto1 - t_auto, k, "ours, first");
    assert_eq!(t_other1 - t_other, k, "the program after ours");

    let _ = auto.stop_with(libc::SIGKILL);
    for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
        assert_eq!(chain(veth, ty).len(), 1, "{ty:?} after SIGKILL");
    }
}

/// Filters on the clsact hook of `dev`: (preference, kind, name or action) in kernel order.
fn filters(dev: &str, hook: &str) -> Vec<(u64, String, String)> {
    let v: Value =
        serde_json::from_str(&sh(&format!("tc -j filter show dev {dev} {hook}"))).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|f| f.get("options").is_some())
        .map(|f| {
            let name = f["options"]["bpf_name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (
                f["pref"].as_u64().unwrap_or(0),
                f["kind"].as_str().unwrap_or_default().to_string(),
                name,
            )
        })
        .collect()
}

fn mirror_hits(dev: &str) -> u64 {
    let v: Value =
        serde_json::from_str(&sh(&format!("tc -s -j filter show dev {dev} ingress"))).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .find_map(|f| {
            f["options"]["actions"]
                .as_array()?
                .iter()
                .find(|a| a["kind"] == "mirred")?["stats"]["packets"]
                .as_u64()
        })
        .expect("the other tool's filter")
}

#[test]
fn netlink_mode_runs_first_keeps_other_filters_and_leaves_only_them() {
    require_root();
    require_tool("tc");
    let br = Link::bridge("nb");
    let a = Pod::bridged("na", &br, "10.9.0.2", 24);
    let b = Pod::bridged("nb", &br, "10.9.0.3", 24);
    let sink = Link::bridge("ns");
    let veth = a.veth.name.as_str();
    // No IPv6 from the pod: a packet of its link-up chatter crossing between the three reads
    // below would be in one delta and not the others (it happened once: 27 against 26).
    a.ns.exec("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1");
    // Another tool's clsact filter, there before us (this kernel has u32 and mirred; no matchall).
    sh(&format!(
        "tc qdisc add dev {veth} clsact && tc filter add dev {veth} ingress prio 100 protocol all \
         u32 match u32 0 0 action mirred egress mirror dev {}",
        sink.name
    ));

    let agent = Agent::start(&["--attach-mode", "netlink", "-i", veth]);
    let ours_first = filters(veth, "ingress");
    assert_eq!(
        ours_first.first().map(|f| f.1.as_str()),
        Some("bpf"),
        "{ours_first:?}"
    );
    assert!(ours_first[0].2.starts_with("nt_ingress"), "{ours_first:?}");
    assert!(
        ours_first.iter().any(|f| f.1 == "u32"),
        "the other filter stays: {ours_first:?}"
    );
    assert!(
        filters(veth, "egress")
            .iter()
            .any(|f| f.2.starts_with("nt_egress"))
    );

    // Our program returns TC_ACT_UNSPEC: the next filter still runs for every packet.
    let read = || (mirror_hits(veth), agent.transmit_packets(veth));
    let (k0, (hits0, t0)) = quiet(veth, read);
    a.ns.exec(&format!("ping -c 25 -i 0.01 -q {}", b.ip));
    let (k1, (hits1, t1)) = quiet(veth, read);
    let k = k1.rx_packets - k0.rx_packets;
    assert_eq!(t1 - t0, k, "ours counts every packet");
    assert_eq!(hits1 - hits0, k, "the filter after ours sees every packet");

    // SIGTERM: our filters go; the other tool's filter and its clsact qdisc stay.
    let (status, _) = agent.stop_with(libc::SIGTERM);
    assert!(status.success());
    let left = filters(veth, "ingress");
    assert!(left.iter().all(|f| !f.2.starts_with("nt_")), "{left:?}");
    assert!(left.iter().any(|f| f.1 == "u32"), "{left:?}");
    assert!(filters(veth, "egress").is_empty());
    assert!(sh(&format!("tc qdisc show dev {veth}")).contains("clsact"));
}

#[test]
fn netlink_mode_on_a_bare_veth_leaves_no_qdisc() {
    require_root();
    let br = Link::bridge("qb");
    let a = Pod::bridged("qa", &br, "10.9.0.2", 24);
    let veth = a.veth.name.as_str();
    let agent = Agent::start(&["--attach-mode", "netlink", "-i", veth]);
    assert!(sh(&format!("tc qdisc show dev {veth}")).contains("clsact"));
    let (status, _) = agent.stop_with(libc::SIGTERM);
    assert!(status.success());
    // The clsact qdisc was ours and nothing else uses it: gone with us.
    assert!(!sh(&format!("tc qdisc show dev {veth}")).contains("clsact"));
}

/// `/sys/kernel/rcu_expedited`, the host-wide switch `--expedite-rcu` sets for a moment.
fn rcu_expedited() -> String {
    std::fs::read_to_string("/sys/kernel/rcu_expedited")
        .expect("read /sys/kernel/rcu_expedited")
        .trim()
        .to_string()
}

/// Waits (up to `within`) until `f` holds; false if it never did.
fn eventually(within: Duration, poll: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(poll);
    }
    f()
}

/// Programs on the tcx hooks of `ifaces`, which live in `ns` (asked from a thread that entered
/// it: tcx queries go by name in the caller's namespace).
fn tcx_programs_in(ns: &Netns, ifaces: &[String]) -> usize {
    ns.in_thread(|| {
        ifaces
            .iter()
            .flat_map(|i| [(i, TcAttachType::Ingress), (i, TcAttachType::Egress)])
            .map(|(i, ty)| chain(i, ty).len())
            .sum()
    })
}

/// The `--expedite-rcu` watchdog processes alive (only this test starts agents with the flag).
fn watchdogs() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"restore-rcu-expedited"))
        })
        .count()
}

/// `--expedite-rcu` sets the host-wide rcu_expedited only while it attaches (the veths present at
/// start, then each new one) or detaches, and puts it back, also when the agent is killed
/// mid-pass: its watchdog does it then. One test for all of it, since the switch is host-wide.
#[test]
fn expedite_rcu_is_held_only_while_attaching_and_put_back_even_after_sigkill() {
    require_root();
    let _pace = rcu_pace();
    assert_eq!(
        rcu_expedited(),
        "0",
        "this host already runs with rcu_expedited=1, so the test cannot see it change"
    );
    // Should the agent fail to put it back, the test still does (after failing).
    let _knob = PutBack;
    // Enough veths that the pass lasts a while even expedited (pairs with both ends here).
    let node = Netns::new("xr");
    let veths = veth_pairs(&node, 150);
    let start = || {
        node_tracer_in(
            &node,
            &[
                "--log-level",
                "warn",
                "run",
                "--expedite-rcu",
                "--listen",
                "127.0.0.1:0",
                "--attach-mode",
                "tcx",
            ],
        )
        .spawn()
        .expect("spawn node-tracer run --expedite-rcu")
    };
    let knob_is = |v: &'static str| move || rcu_expedited() == v;

    // Where the switch cannot be written (a container's read-only /sys; here a read-only "0"
    // bound over it in a mount namespace of its own), the agent says so and attaches anyway.
    let fake = std::env::temp_dir().join(format!("{}.rcu", node.name));
    std::fs::write(&fake, "0\n").unwrap();
    // Stopped (SIGTERM) once it says it attached both: an event, not a time.
    let log = std::env::temp_dir().join(format!("{}.log", node.name));
    // After `ip netns exec`, which mounts a /sys of its own.
    let ro = Command::new("ip")
        .args(["netns", "exec", &node.name])
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {f} {k} && mount -o remount,bind,ro {k} && \
             {bin} run --expedite-rcu -i xa00 -i xb00 \
             --listen 127.0.0.1:0 --attach-mode tcx --cri-socket /run/ntt-none.sock \
             --cni-results-dir /run/ntt-none 2>{log} & pid=$!; i=0; \
             until grep -q 'attached to 2 interfaces' {log} || [ $i -gt 1200 ]; do \
             sleep 0.1; i=$((i+1)); done; kill -TERM $pid; wait $pid; st=$?; cat {log} >&2; \
             exit $st",
            f = fake.display(),
            k = "/sys/kernel/rcu_expedited",
            bin = binary().display(),
            log = log.display(),
        ))
        .output()
        .expect("run the agent under a read-only rcu_expedited");
    let _ = std::fs::remove_file(&fake);
    let _ = std::fs::remove_file(&log);
    let err = String::from_utf8_lossy(&ro.stderr);
    // Our SIGTERM: a clean stop after it attached to both.
    assert!(ro.status.success(), "{}: {err}", ro.status);
    assert!(
        err.contains("--expedite-rcu: open /sys/kernel/rcu_expedited for writing")
            && err.contains("attaching and detaching at the normal pace"),
        "{err}"
    );
    assert!(err.contains("attached to 2 interfaces"), "{err}");
    assert_eq!(rcu_expedited(), "0");
    assert_eq!(watchdogs(), 0);
    let fast = Duration::from_micros(200);

    // Started: expedited during the pass, back to 0 once every veth is attached.
    let mut agent = Reaped(start());
    assert!(
        eventually(Duration::from_secs(30), fast, knob_is("1")),
        "rcu_expedited never became 1 while attaching"
    );
    assert!(
        eventually(
            Duration::from_mins(1),
            Duration::from_millis(5),
            knob_is("0")
        ),
        "rcu_expedited was not put back after the attach pass"
    );
    assert!(
        eventually(Duration::from_secs(30), Duration::from_millis(50), || {
            tcx_programs_in(&node, &veths) == 2 * veths.len()
        }),
        "not every veth attached: {} tcx programs",
        tcx_programs_in(&node, &veths)
    );
    assert_eq!(watchdogs(), 1, "one watchdog for the agent's lifetime");
    // Running: not expedited, except while a new veth is attached.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rcu_expedited(), "0");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen += usize::from(rcu_expedited() == "1");
            }
            seen
        });
        for i in 0..3 {
            node.exec(&format!("ip link add xn{i} type veth peer name xm{i}"));
        }
        let late: Vec<String> = (0..3)
            .flat_map(|i| [format!("xn{i}"), format!("xm{i}")])
            .collect();
        let attached = eventually(Duration::from_secs(10), Duration::from_millis(5), || {
            tcx_programs_in(&node, &late) == 2 * late.len()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(attached, "the new veths were not attached");
        watcher.join().expect("knob watcher")
    });
    assert!(
        seen > 0,
        "rcu_expedited never became 1 while new veths were attached"
    );
    assert_eq!(rcu_expedited(), "0");
    // SIGTERM: detaches everything and exits cleanly, the switch back at 0.
    let (status, err) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(rcu_expedited(), "0");
    assert_eq!(tcx_programs_in(&node, &veths), 0);
    assert_eq!(watchdogs(), 0);

    // Killed mid-pass: the watchdog puts the switch back, the kernel drops the links.
    let mut agent = Reaped(start());
    assert!(
        eventually(Duration::from_secs(30), fast, knob_is("1")),
        "rcu_expedited never became 1 while attaching"
    );
    let _ = agent.stop(libc::SIGKILL);
    assert!(
        eventually(
            Duration::from_secs(10),
            Duration::from_millis(5),
            knob_is("0")
        ),
        "rcu_expedited stayed 1 after the agent was killed"
    );
    assert!(
        eventually(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || watchdogs() == 0
        ),
        "the watchdog did not exit"
    );
    assert!(
        eventually(Duration::from_secs(30), Duration::from_millis(50), || {
            tcx_programs_in(&node, &veths) == 0
        }),
        "tcx programs left after SIGKILL"
    );
}

/// Ids of the tcx links on one hook of `ifindex` in the calling thread's namespace, from the
/// kernel (`BPF_PROG_QUERY`, whose answer carries link ids since tcx came in). The kernel hands
/// out link ids in increasing order, so they tell in which order links were made.
fn tcx_link_ids(ifindex: u32, attach_type: u32) -> Vec<u32> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    let mut progs = [0u32; 16];
    let mut links = [0u32; 16];
    // union bpf_attr, query part: target_ifindex, attach_type, query_flags, attach_flags,
    // prog_ids, count, (pad), prog_attach_flags, link_ids, link_attach_flags, revision.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[16..24].copy_from_slice(&(progs.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(progs.len() as u32).to_ne_bytes());
    attr[40..48].copy_from_slice(&(links.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` is a valid bpf_attr prefix of its length; the kernel writes at most
    // `count` ids into each array, which outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), attr.len()) };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_QUERY ifindex {ifindex}: {}",
        std::io::Error::last_os_error()
    );
    let n = u32::from_ne_bytes(attr[24..28].try_into().unwrap()) as usize;
    links[..n.min(links.len())].to_vec()
}

/// A tcx attach waits for RCU grace periods, so a first pass over many veths takes a while: the
/// agent attaches first the veths that carry traffic as it starts, then those that carried the
/// most before, then the idle ones.
#[test]
fn veths_that_carry_traffic_are_attached_before_idle_ones() {
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    require_root();
    let node = Netns::new("xo");
    let pairs = 24;
    // Made last (last by ifindex and by name), so any other order reaches them late: pairs
    // that carried many packets before the agent started, then fell silent...
    let past: Vec<usize> = (pairs - 3..pairs).collect();
    // ...and one that sends all along, but has carried far fewer packets so far.
    let live = pairs - 4;
    let mut batch = String::new();
    for i in 0..pairs {
        let _ = writeln!(batch, "link add xa{i:02} type veth peer name xb{i:02}");
        let _ = writeln!(batch, "link set xa{i:02} up");
        let _ = writeln!(batch, "link set xb{i:02} up");
    }
    for &i in past.iter().chain([&live]) {
        let _ = writeln!(batch, "addr add 10.77.{i}.1/24 dev xb{i:02}");
        // A neighbour nobody answers for: the frames cross the veth and end there.
        let _ = writeln!(
            batch,
            "neigh add 10.77.{i}.2 lladdr 02:00:00:00:77:02 dev xb{i:02} nud permanent"
        );
    }
    node.ip_batch(&batch);
    let send = |i: usize, n: usize| {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        for _ in 0..n {
            sock.send_to(b"busy", format!("10.77.{i}.2:9"))
                .expect("send across the veth");
        }
    };
    node.in_thread(|| {
        for &i in &past {
            send(i, 100_000);
        }
    });
    let name = |i: usize, end: &str| format!("{end}{i:02}");
    let packets = |n: &str| {
        let c = node.exec(&format!(
            "cat /sys/class/net/{n}/statistics/rx_packets /sys/class/net/{n}/statistics/tx_packets"
        ));
        c.split_whitespace()
            .map(|v| v.parse::<u64>().unwrap())
            .sum::<u64>()
    };
    let veths: Vec<String> = (0..pairs)
        .flat_map(|i| [name(i, "xa"), name(i, "xb")])
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let links: Vec<(String, Vec<u32>)> = std::thread::scope(|s| {
        // Thousands of packets a second from before the agent starts until it has attached
        // everywhere.
        s.spawn(|| {
            node.in_thread(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    send(live, 1);
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        });
        let _stop = SetOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(100));
        // What the agent will find: the past pairs far ahead of the live one, and both far
        // ahead of the others' IPv6 chatter.
        for end in ["xa", "xb"] {
            for &i in &past {
                let n = packets(&name(i, end));
                assert!(n >= 100_000, "{} carried only {n} packets", name(i, end));
            }
            let n = packets(&name(live, end));
            assert!(
                (10..50_000).contains(&n),
                "live {} carried {n} packets",
                name(live, end)
            );
            for i in (0..pairs).filter(|i| !past.contains(i) && *i != live) {
                let n = packets(&name(i, end));
                assert!(n < 100, "idle {} carried {n} packets", name(i, end));
            }
        }
        let mut agent = Reaped(
            node_tracer_in(
                &node,
                &["--log-level", "warn", "run", "--attach-mode", "tcx"],
            )
            .args(["--listen", "127.0.0.1:0"])
            .spawn()
            .expect("spawn node-tracer run"),
        );
        assert!(
            eventually(Duration::from_mins(1), Duration::from_millis(50), || {
                tcx_programs_in(&node, &veths) == 2 * veths.len()
            }),
            "not every veth attached: {} tcx programs",
            tcx_programs_in(&node, &veths)
        );
        // Each veth's links; their ids tell the order the kernel made them in.
        let links = node.in_thread(|| {
            veths
                .iter()
                .map(|v| {
                    let ifindex = node_tracer_sys::netdev::ifindex_of(v)
                        .unwrap_or_else(|| panic!("{v} is gone"));
                    let mut ids = tcx_link_ids(ifindex, BPF_TCX_INGRESS);
                    ids.extend(tcx_link_ids(ifindex, BPF_TCX_EGRESS));
                    assert_eq!(ids.len(), 2, "{v}: links {ids:?}");
                    (v.clone(), ids)
                })
                .collect()
        });
        let (status, err) = agent.stop(libc::SIGTERM);
        assert!(status.success(), "{status}: {err}");
        links
    });
    assert_eq!(tcx_programs_in(&node, &veths), 0);

    let pair = |v: &str| v[2..].parse::<usize>().unwrap();
    let ids_of = |group: &dyn Fn(usize) -> bool| -> Vec<u32> {
        links
            .iter()
            .filter(|(v, _)| group(pair(v)))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect()
    };
    let live_ids = ids_of(&|i| i == live);
    let past_ids = ids_of(&|i| past.contains(&i));
    let idle_ids = ids_of(&|i| i != live && !past.contains(&i));
    let mut order = links.clone();
    order.sort_by_key(|(_, ids)| ids[0]);
    let order: Vec<&str> = order.iter().map(|(v, _)| v.as_str()).collect();
    assert!(
        live_ids.iter().max() < past_ids.iter().min(),
        "a veth busy only in the past was attached before the live one; order: {order:?}"
    );
    assert!(
        past_ids.iter().max() < idle_ids.iter().min(),
        "an idle veth was attached before a busy one; order: {order:?}"
    );
}

/// Sets the flag when dropped: stops a helper thread also when an assertion fails.
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Held by the test that sets the host-wide rcu_expedited and by those that need the normal pace
/// of tcx attaches, so they never overlap.
fn rcu_pace() -> std::sync::MutexGuard<'static, ()> {
    static PACE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    PACE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sets rcu_expedited back to 0 when the test ends.
struct PutBack;

impl Drop for PutBack {
    fn drop(&mut self) {
        let _ = std::fs::write("/sys/kernel/rcu_expedited", "0");
    }
}

/// A child ended by its PID (and reaped) when the test ends, also on a failed assertion.
struct Reaped(std::process::Child);

impl Reaped {
    fn stop(&mut self, signal: i32) -> (std::process::ExitStatus, String) {
        signal_and_wait(&mut self.0, signal)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.stop(libc::SIGKILL);
        }
    }
}

/// Whether `pid` has an action for `sig` (its bit in /proc/PID/status `SigCgt`): what tells
/// that a process's handler is in place, instead of a guessed sleep.
fn catches(pid: u32, sig: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&mask, 16).ok()
        })
        .is_some_and(|m| m & (1 << (sig - 1)) != 0)
}

/// A stop signal at any moment of start-up ends it early and cleanly: the first pass stops
/// where it is, what it attached is detached, and the agent exits 0 (a DaemonSet's rolling
/// update, a Ctrl-C during a long first pass). Killed by the signal instead, netlink mode would
/// leave its filters on every veth it had reached.
#[test]
fn a_stop_signal_during_start_up_stops_the_first_pass_and_leaves_nothing() {
    require_root();
    require_tool("tc");
    // An expedited first pass could end before the signal is sent.
    let _pace = rcu_pace();
    let node = Netns::new("xs");
    // Long enough a first pass (two RCU grace periods per tcx attach) to be caught inside.
    let veths = veth_pairs(&node, 40);
    let start = |mode: &str| {
        Reaped(
            node_tracer_in(
                &node,
                &["run", "--attach-mode", mode, "--listen", "127.0.0.1:0"],
            )
            .spawn()
            .expect("spawn node-tracer run"),
        )
    };
    let exits = |agent: &mut Reaped| {
        let mut status = None;
        eventually(Duration::from_secs(30), Duration::from_millis(10), || {
            status = agent.0.try_wait().expect("try_wait");
            status.is_some()
        });
        let status = status.expect("still running 30 s after SIGTERM");
        let mut err = String::new();
        if let Some(mut e) = agent.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status, err)
    };

    // tcx, in the middle of the first pass.
    let mut agent = start("tcx");
    assert!(
        eventually(Duration::from_secs(30), Duration::from_millis(2), || {
            tcx_programs_in(&node, &veths) >= 2
        }),
        "nothing attached within 30 s"
    );
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let (status, err) = exits(&mut agent);
    assert!(status.success(), "{status}: {err}");
    let left: usize = err
        .lines()
        .find_map(|l| {
            l.split("stopping: ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no word of stopping early: {err}"));
    assert!(
        (1..veths.len()).contains(&left),
        "{left} of {} veths left unattached",
        veths.len()
    );
    assert!(err.contains("SIGTERM during start-up: detaching"), "{err}");
    assert_eq!(tcx_programs_in(&node, &veths), 0);

    // netlink, as soon as the handler is in place: loading, pod lookup, scan or first pass.
    let mut agent = start("netlink");
    let pid = agent.0.id();
    assert!(
        eventually(Duration::from_secs(10), Duration::from_micros(200), || {
            catches(pid, libc::SIGTERM)
        }),
        "no SIGTERM handler within 10 s"
    );
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let (status, err) = exits(&mut agent);
    assert!(status.success(), "{status}: {err}");
    let qdiscs = node.exec("tc qdisc show");
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
}

/// The agent serves from before its first attach pass: during it (half a minute at 1,000 veths
/// by default) `/metrics` answers with what is attached so far and `/healthz` with 503 and the
/// pass's progress, so a startup or readiness probe waits while Prometheus still scrapes.
#[test]
fn metrics_and_healthz_answer_during_the_first_pass() {
    require_root();
    // An expedited pass could end before the first request.
    let _pace = rcu_pace();
    let node = Netns::new("xh");
    let veths = veth_pairs(&node, 40);
    let total = veths.len();
    // In the namespace's own loopback, where the agent runs.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let get = |path: &str| node.in_thread(|| http_get(addr, path));
    let mut agent = Reaped(
        node_tracer_in(
            &node,
            &["run", "--attach-mode", "tcx", "--listen", &addr.to_string()],
        )
        .spawn()
        .expect("spawn node-tracer run"),
    );
    let want = format!(" of {total} veths attached");
    let mut during: Option<(String, u64)> = None;
    let ready = eventually(Duration::from_mins(1), Duration::from_millis(2), || {
        match get("/healthz") {
            Ok((200, _)) => true,
            Ok((503, body)) => {
                if during.is_none()
                    && body.starts_with("starting: ")
                    && body.trim_end().ends_with(&want)
                    && let Ok((200, m)) = get("/metrics")
                {
                    let attached = attached_in(&m, "tcx").unwrap_or(0);
                    if attached < total as u64 {
                        during = Some((body, attached));
                    }
                }
                false
            }
            Ok((code, body)) => panic!("/healthz: {code} {body}"),
            // Not listening yet.
            Err(_) => false,
        }
    });
    assert!(ready, "/healthz never answered 200");
    let (body, attached) = during.expect("no 503 with the pass's progress while it ran");
    let done: u64 = body
        .trim_start_matches("starting: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(done < total as u64, "{body}");
    assert!(attached < total as u64, "{attached} attached");
    // Once ready, every veth is attached.
    let (_, m) = get("/metrics").expect("/metrics");
    assert_eq!(attached_in(&m, "tcx"), Some(total as u64));
    let (status, err) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(tcx_programs_in(&node, &veths), 0);
}

/// Makes `pairs` veth pairs `xaNN`/`xbNN` in `node` (down, both ends there); returns their names.
fn veth_pairs(node: &Netns, pairs: usize) -> Vec<String> {
    let mut batch = String::new();
    for i in 0..pairs {
        let _ = writeln!(batch, "link add xa{i:02} type veth peer name xb{i:02}");
    }
    node.ip_batch(&batch);
    (0..pairs)
        .flat_map(|i| [format!("xa{i:02}"), format!("xb{i:02}")])
        .collect()
}
