//! Coexistence: other tc programs (tcx and clsact) on the same veths keep working before and
//! after ours; veths, bridges and namespaces vanishing under the agent never crash it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Agent, Link, Pod, TempDir, attached_in, http_get, node_tracer, quiet, require_root,
    require_tool, sh, unique, unique_net,
};

/// Packets handled by the mirror action of the clsact u32 filter on `veth` ingress.
fn mirror_hits(veth: &str) -> u64 {
    let out = sh(&format!("tc -s -j filter show dev {veth} ingress"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find_map(|f| {
            f["options"]["actions"]
                .as_array()?
                .iter()
                .find(|a| a["kind"] == "mirred")?["stats"]["packets"]
                .as_u64()
        })
        .expect("mirror filter present")
}

fn isolated(tmp: &TempDir) -> Vec<String> {
    vec![
        "--cri-socket".into(),
        tmp.0.join("absent.sock").display().to_string(),
        "--cni-results-dir".into(),
        tmp.0.join("cni").display().to_string(),
    ]
}

#[test]
fn two_tcx_programs_and_a_clsact_filter_all_see_every_packet() {
    require_root();
    require_tool("ping");
    let tmp = TempDir::new("cx");
    let net = unique_net();
    let gw = format!("{net}.1");
    let pod = Pod::routed("cx", &format!("{net}.2"), &gw);
    let veth = pod.veth.name.as_str();
    // Another tool's clsact filter, there before us: mirrors every frame to a sink veth.
    let sink = Link { name: unique("xs") };
    sh(&format!(
        "ip link add {s} type veth peer name {p} && ip link set {s} up && ip link set {p} up",
        s = sink.name,
        p = unique("xp")
    ));
    sh(&format!(
        "tc qdisc add dev {veth} clsact && tc filter add dev {veth} ingress prio 100 u32 \
         match u32 0 0 action mirred egress mirror dev {}",
        sink.name
    ));
    let mut args = isolated(&tmp);
    args.extend([
        "--attach-mode".into(),
        "tcx".into(),
        "-i".into(),
        veth.into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Two agents: for each, the other is "another tcx program" on the same hooks.
    let first = Agent::start(&args);
    let second = Agent::start(&args);

    let round = |agents: &[&Agent]| {
        let read = || {
            let counts: Vec<u64> = agents.iter().map(|a| a.transmit_packets(veth)).collect();
            (counts, mirror_hits(veth))
        };
        let (k_before, (before, m_before)) = quiet(veth, read);
        pod.ns.exec(&format!("ping -c 40 -i 0.01 -q {gw}"));
        let (k_after, (after, m_after)) = quiet(veth, read);
        let kernel = k_after.rx_packets - k_before.rx_packets;
        assert!(kernel >= 40);
        for (a, b) in after.iter().zip(before) {
            assert_eq!(a - b, kernel, "a tcx program missed or doubled packets");
        }
        assert_eq!(m_after - m_before, kernel, "the clsact filter after us");
    };
    round(&[&first, &second]);
    // One leaves: the other and the clsact filter go on exactly.
    drop(first);
    round(&[&second]);
    drop(second);
    round(&[]);
}

/// Waits until `cond` holds, failing with `what` after a generous minute.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_mins(1), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_veth_deleted_while_attached_takes_its_series_and_the_agent_goes_on() {
    require_root();
    let tmp = TempDir::new("cd");
    let net = unique_net();
    let gw = format!("{net}.1");
    let a = Pod::routed("da", &format!("{net}.2"), &gw);
    let b = Pod::routed("db", &format!("{net}.3"), &gw);
    let mut args = isolated(&tmp);
    args.extend([
        "-i".into(),
        a.veth.name.clone(),
        "-i".into(),
        b.veth.name.clone(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    a.ns.exec(&format!("ping -c 3 -i 0.01 -q {gw}"));
    let gone = a.veth.name.clone();
    assert!(agent.metrics().contains(&format!("interface=\"{gone}\"")));
    drop(a);
    wait_for("series of a deleted veth disappear", || {
        !agent.metrics().contains(&format!("interface=\"{gone}\""))
    });
    let before = agent.transmit_packets(&b.veth.name);
    b.ns.exec(&format!("ping -c 5 -i 0.01 -q {gw}"));
    assert!(
        agent.transmit_packets(&b.veth.name) >= before + 5,
        "the other veth still counted"
    );
    let m = agent.metrics();
    let attached: u64 = ["tcx", "netlink"]
        .map(|mode| attached_in(&m, mode).unwrap())
        .iter()
        .sum();
    assert_eq!(attached, 1, "detached from the deleted veth");
}

#[test]
fn the_bridge_deleted_under_its_ports_leaves_them_unattached_and_served() {
    require_root();
    let tmp = TempDir::new("cb");
    let br = Link::bridge("br");
    let a = Pod::bridged("ba", &br, "10.41.0.2", 24);
    let b = Pod::bridged("bb", &br, "10.41.0.3", 24);
    let mut args = isolated(&tmp);
    args.extend([
        "-i".into(),
        a.veth.name.clone(),
        "-i".into(),
        b.veth.name.clone(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    let mode_of = |veth: &str| -> Option<String> {
        agent.snapshot()["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == veth)
            .and_then(|p| p["mode"].as_str().map(str::to_string))
    };
    assert_eq!(mode_of(&a.veth.name).as_deref(), Some("bridged"));
    drop(br);
    wait_for("ports become unattached once the bridge is gone", || {
        mode_of(&a.veth.name).as_deref() == Some("unattached")
            && mode_of(&b.veth.name).as_deref() == Some("unattached")
    });
    assert_eq!(http_get(agent.addr, "/healthz").unwrap().0, 200);
    let m = agent.metrics();
    assert!(
        m.lines().any(|l| l.starts_with("node_tracer_port_info")
            && l.contains(&format!("interface=\"{}\"", a.veth.name))
            && l.contains("mode=\"unattached\"")),
        "{m}"
    );
    // Still attached and counting on the now bridgeless veths.
    // (No path to the other pod now: its ARP requests are what leaves.)
    let read = || agent.transmit_packets(&b.veth.name);
    let (k_before, before) = quiet(&b.veth.name, read);
    b.ns.exec("ip neigh flush all; ping -c 2 -i 0.2 -W 1 -q 10.41.0.2 || true");
    // Let neighbour resolution give up (3 probes, 1 s apart) so nothing is in flight.
    std::thread::sleep(Duration::from_secs(5));
    let (k_after, after) = quiet(&b.veth.name, read);
    let kernel = k_after.rx_packets - k_before.rx_packets;
    assert!(kernel > 0);
    assert_eq!(after - before, kernel);
}

#[test]
fn namespaces_vanishing_during_peers_never_break_it() {
    require_root();
    let tmp = TempDir::new("cn");
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let net = unique_net();
                let pods: Vec<Pod> = (2..6)
                    .map(|i| Pod::routed("nv", &format!("{net}.{i}"), &format!("{net}.1")))
                    .collect();
                // Namespaces go first, taking their veths with them, as a runtime would.
                for p in &pods {
                    sh(&format!("ip netns del {}", p.ns.name));
                }
                drop(pods);
                n += 1;
            }
            n
        })
    };
    let srcs = isolated(&tmp);
    let mut args = vec!["peers", "--json"];
    args.extend(srcs.iter().map(String::as_str));
    let mut failure = None;
    for i in 0..20 {
        let out = node_tracer(&args);
        let ok = out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| v.is_array());
        if !ok {
            failure = Some(format!(
                "run {i}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().expect("churn thread");
    assert!(failure.is_none(), "{failure:?}");
    assert!(rounds >= 1, "namespaces were churned");
}
