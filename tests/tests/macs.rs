//! `node-tracer macs` on a real bridge: the FDB it reports is the kernel's (`bridge fdb show`),
//! joined with the pods the test made, and every anomaly is caused for real — a MAC change,
//! forged frames from a raw socket, one MAC in two pods, entries learned while nobody watched,
//! hairpin and promiscuous ports — while a clean bridge flags nothing.

use std::{collections::BTreeSet, time::Duration};

use node_tracer_tests::{
    Agent, Link, Pod, TempDir, metric, node_tracer, require_root, require_tool, sh, sh_output,
    unique_net,
};
use serde_json::Value;

const FORGED: &str = "02:de:ad:be:ef:01";

fn setup() {
    require_root();
    for tool in ["bridge", "ping", "python3"] {
        require_tool(tool);
    }
}

/// A bridge with `n` pods on one /24.
fn bridge_with(n: usize) -> (Link, Vec<Pod>) {
    let br = Link::bridge("mcbr");
    let net = unique_net();
    let pods = (0..n)
        .map(|i| Pod::bridged("mc", &br, &format!("{net}.{}", i + 2), 24))
        .collect();
    (br, pods)
}

fn agent_on(pods: &[Pod]) -> Agent {
    let mut args: Vec<&str> = Vec::new();
    for p in pods {
        args.extend(["-i", p.veth.name.as_str()]);
    }
    Agent::start(&args)
}

/// `macs --connect AGENT --bridge BR --json`.
fn macs(agent: &Agent, br: &Link) -> Value {
    let url = format!("http://{}", agent.addr);
    let out = node_tracer(&["macs", "--connect", &url, "--bridge", &br.name, "--json"]);
    assert!(
        out.status.success(),
        "macs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("macs --json output")
}

fn port<'a>(report: &'a Value, veth: &str) -> &'a Value {
    report["bridges"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["interface"] == veth)
        .unwrap_or_else(|| panic!("no port {veth} in {report:#}"))
}

/// MACs the pod behind `veth` was seen sending.
fn sent(report: &Value, veth: &str) -> BTreeSet<String> {
    port(report, veth)["macs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["transmit"]["packets"].as_u64().is_some_and(|n| n > 0))
        .map(|m| m["mac"].as_str().unwrap().to_string())
        .collect()
}

/// (kind, mac) of every anomaly on `veth`.
fn flags(report: &Value, veth: &str) -> Vec<(String, Option<String>)> {
    report["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["interface"] == veth)
        .map(|a| {
            assert!(a["detail"].as_str().is_some_and(|d| !d.is_empty()), "{a}");
            (
                a["kind"].as_str().unwrap().to_string(),
                a["mac"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The gauge's value (a count of flags, so whole); 0 when the series is absent.
fn anomaly_gauge(agent: &Agent, kind: &str, veth: &str) -> u64 {
    metric(
        &agent.metrics(),
        "node_tracer_mac_anomalies",
        &[("kind", kind), ("interface", veth)],
    )
    .map_or(0, |v| v as u64)
}

fn ping(from: &Pod, to: &Pod, count: u32) {
    from.ns
        .exec(&format!("ping -c {count} -i 0.2 -W 1 -q {}", to.ip));
}

/// `(interface, port_no, mac, vlan, state)` of the bridge's own entries, as `bridge fdb` sees
/// them: port numbers from sysfs, states in our words.
type Entry = (String, Option<u64>, String, Option<u64>, String);

fn kernel_fdb(br: &Link) -> BTreeSet<Entry> {
    let text = sh(&format!("bridge -j fdb show br {}", br.name));
    let all: Vec<Value> = serde_json::from_str(&text).expect("bridge -j fdb");
    all.iter()
        // `self` entries are every device's address lists, not the bridge's database.
        .filter(|e| e["master"] == br.name.as_str())
        .map(|e| {
            let dev = e["ifname"].as_str().unwrap().to_string();
            let port_no = (dev != br.name).then(|| {
                let hex = sh(&format!("cat /sys/class/net/{dev}/brport/port_no"));
                u64::from_str_radix(hex.trim().trim_start_matches("0x"), 16).unwrap()
            });
            let state = match e["state"].as_str().unwrap_or("") {
                "permanent" => "local",
                "static" => "static",
                "" | "stale" => "learned",
                other => panic!("unexpected fdb state {other}"),
            };
            (
                dev,
                port_no,
                e["mac"].as_str().unwrap().to_string(),
                e["vlan"].as_u64(),
                state.to_string(),
            )
        })
        .collect()
}

fn reported_fdb(report: &Value) -> BTreeSet<Entry> {
    let mut out = BTreeSet::new();
    for p in report["bridges"][0]["ports"].as_array().unwrap() {
        for m in p["macs"].as_array().unwrap() {
            for f in m["fdb"].as_array().unwrap() {
                assert_eq!(f["local"], f["state"] == "local", "{f}");
                out.insert((
                    p["interface"].as_str().unwrap().to_string(),
                    p["port_no"].as_u64(),
                    m["mac"].as_str().unwrap().to_string(),
                    f["vlan"].as_u64(),
                    f["state"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn clean_bridge_matches_bridge_fdb_and_flags_nothing() {
    setup();
    let (br, pods) = bridge_with(2);
    let agent = agent_on(&pods);
    ping(&pods[0], &pods[1], 3);
    ping(&pods[1], &pods[0], 3);
    let r = macs(&agent, &br);

    let ours = reported_fdb(&r);
    let kernel = kernel_fdb(&br);
    assert_eq!(ours, kernel, "macs --json and bridge fdb show disagree");
    for p in &pods {
        let row = port(&r, &p.veth.name);
        let mac = p.mac();
        // Pods from `ip netns add` resolve through the netns source.
        assert_eq!(row["pod"]["name"], p.ns.name.as_str());
        assert_eq!(row["pod"]["namespace"], "");
        assert_eq!(row["peer_mac"], mac.as_str());
        assert_eq!(row["attached"], true);
        assert_eq!(sent(&r, &p.veth.name), BTreeSet::from([mac.clone()]));
        // The pod's MAC is learned on its own port, and that row carries what was seen.
        assert!(
            kernel.contains(&(
                p.veth.name.clone(),
                row["port_no"].as_u64(),
                mac,
                None,
                "learned".into()
            )),
            "{kernel:#?}"
        );
    }
    assert_eq!(r["anomalies"], Value::Array(vec![]), "{r:#}");
    let m = agent.metrics();
    for p in &pods {
        let l = [("interface", p.veth.name.as_str())];
        assert_eq!(metric(&m, "node_tracer_port_macs", &l), Some(1.0));
        assert_eq!(metric(&m, "node_tracer_mac_anomalies", &l), None, "{m}");
    }
}

#[test]
fn a_pod_changing_its_mac_is_a_change_not_spoofing() {
    setup();
    let (br, pods) = bridge_with(2);
    let (a, b) = (&pods[0], &pods[1]);
    let old = a.mac();
    let new = "02:00:5e:10:00:01";
    let agent = agent_on(&pods);
    ping(a, b, 3);
    std::thread::sleep(Duration::from_millis(100));
    a.ns.exec(&format!("ip link set eth0 address {new}"));
    // b must ask again, or it keeps answering the old MAC.
    b.ns.exec("ip neigh flush all");
    ping(a, b, 3);

    let r = macs(&agent, &br);
    assert_eq!(
        sent(&r, &a.veth.name),
        BTreeSet::from([old.clone(), new.to_string()])
    );
    assert_eq!(
        flags(&r, &a.veth.name),
        [("mac_changed".to_string(), Some(old))],
        "{r:#}"
    );
    assert!(flags(&r, &b.veth.name).is_empty());
    assert_eq!(anomaly_gauge(&agent, "mac_changed", &a.veth.name), 1);
    assert_eq!(anomaly_gauge(&agent, "spoofed_source", &a.veth.name), 0);
}

#[test]
fn forged_source_frames_from_a_pod_are_spoofing() {
    setup();
    let (br, pods) = bridge_with(2);
    let (a, b) = (&pods[0], &pods[1]);
    let agent = agent_on(&pods);
    ping(a, b, 3);
    // A broadcast frame with a forged source, from a raw socket inside the pod.
    a.ns.exec(&format!(
        "python3 -c 'import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); \
         s.bind((\"eth0\", 0)); \
         s.send(bytes.fromhex(\"ffffffffffff{}88b5\") + bytes(46))'",
        FORGED.replace(':', "")
    ));
    ping(a, b, 3);

    let r = macs(&agent, &br);
    assert!(sent(&r, &a.veth.name).contains(FORGED), "{r:#}");
    assert_eq!(
        flags(&r, &a.veth.name),
        [("spoofed_source".to_string(), Some(FORGED.to_string()))],
        "{r:#}"
    );
    assert!(flags(&r, &b.veth.name).is_empty(), "{r:#}");
    assert_eq!(anomaly_gauge(&agent, "spoofed_source", &a.veth.name), 1);
    // The table says it too, with its explanation.
    let url = format!("http://{}", agent.addr);
    let out = node_tracer(&["macs", "--connect", &url, "--bridge", &br.name]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("spoofed_source") && !text.contains("not its eth0 MAC"),
        "{text}"
    );
    assert!(text.contains(&format!("while also sending from its eth0 MAC {}", a.mac())));
}

#[test]
fn one_mac_in_two_pods_is_flagged_on_both_ports() {
    setup();
    let (br, pods) = bridge_with(3);
    let dup = "02:00:5e:10:00:02";
    for p in &pods[..2] {
        let original = p.mac();
        p.ns.exec(&format!("ip link set eth0 address {dup}"));
        // What the pod sent when its link came up taught the bridge its first MAC; that entry
        // would rightly be flagged as learned without traffic, which is another test's subject.
        let _ = sh_output(&format!(
            "bridge fdb del {original} dev {} master",
            p.veth.name
        ));
    }
    let agent = agent_on(&pods);
    // Replies go to whichever port the bridge learned last: only the requests matter here.
    for p in &pods[..2] {
        pods[2].ns.exec("ip neigh flush all");
        let _ =
            p.ns.exec_output(&format!("ping -c 2 -i 0.2 -W 1 -q {}", pods[2].ip));
    }
    let r = macs(&agent, &br);
    for p in &pods[..2] {
        assert_eq!(
            flags(&r, &p.veth.name),
            [("duplicate_mac".to_string(), Some(dup.to_string()))],
            "{r:#}"
        );
        assert_eq!(anomaly_gauge(&agent, "duplicate_mac", &p.veth.name), 1);
    }
    assert!(flags(&r, &pods[2].veth.name).is_empty(), "{r:#}");
}

#[test]
fn one_mac_configured_in_two_pods_is_a_duplicate_without_any_traffic() {
    setup();
    let (br, pods) = bridge_with(3);
    let dup = "02:00:5e:10:00:03";
    for p in &pods {
        // Quiet pods: no IPv6 chatter (MLD, DAD) while macs watches.
        p.ns.exec("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    }
    for p in &pods[..2] {
        p.ns.exec(&format!("ip link set eth0 address {dup}"));
    }
    let mut args = vec!["macs", "--bridge", &br.name, "--json", "--duration", "1"];
    for p in &pods {
        args.extend(["-i", p.veth.name.as_str()]);
    }
    let out = node_tracer(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("macs --json output");
    let dups = |veth: &str| -> Vec<(String, Option<String>)> {
        flags(&r, veth)
            .into_iter()
            .filter(|(k, _)| k == "duplicate_mac")
            .collect()
    };
    for p in &pods[..2] {
        assert!(
            sent(&r, &p.veth.name).is_empty(),
            "no frame was sent: {r:#}"
        );
        assert_eq!(
            dups(&p.veth.name),
            [("duplicate_mac".to_string(), Some(dup.to_string()))],
            "{r:#}"
        );
    }
    assert!(dups(&pods[2].veth.name).is_empty(), "{r:#}");
}

#[test]
fn entries_learned_while_nobody_watched_are_flagged_until_traffic_is_seen() {
    setup();
    let (br, pods) = bridge_with(2);
    let (a, b) = (&pods[0], &pods[1]);
    for p in &pods {
        // No IPv6 chatter (MLD reports) that would show the MAC behind our back.
        p.ns.exec("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    }
    // The bridge learns both MACs before any program is attached. Forgetting the neighbours
    // afterwards keeps the pods quiet: b would otherwise re-probe a's MAC within seconds.
    ping(a, b, 2);
    for p in &pods {
        p.ns.exec("ip neigh flush all");
    }
    let agent = agent_on(&pods);
    // And one more entry no frame ever taught it.
    let dynamic = "02:00:5e:10:00:03";
    sh(&format!(
        "bridge fdb add {dynamic} dev {} master dynamic",
        a.veth.name
    ));
    let r = macs(&agent, &br);
    let kernel = kernel_fdb(&br);
    assert!(
        kernel.iter().any(|e| e.2 == dynamic && e.4 == "learned"),
        "a dynamic entry looks learned: {kernel:#?}"
    );
    let learned = "learned_without_traffic".to_string();
    assert_eq!(
        flags(&r, &a.veth.name),
        [
            (learned.clone(), Some(a.mac())),
            (learned.clone(), Some(dynamic.to_string())),
        ]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>(),
        "{r:#}"
    );
    assert_eq!(flags(&r, &b.veth.name), [(learned.clone(), Some(b.mac()))]);
    assert_eq!(anomaly_gauge(&agent, &learned, &a.veth.name), 2);

    // Once the pods talk, only the entry nobody sent from stays flagged: a gauge, not a count.
    ping(a, b, 2);
    let r = macs(&agent, &br);
    assert_eq!(
        flags(&r, &a.veth.name),
        [(learned.clone(), Some(dynamic.to_string()))]
    );
    assert!(flags(&r, &b.veth.name).is_empty(), "{r:#}");
    assert_eq!(anomaly_gauge(&agent, &learned, &a.veth.name), 1);
}

#[test]
fn hairpin_and_promiscuous_ports_are_flagged_while_they_last() {
    setup();
    let (br, pods) = bridge_with(3);
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    sh(&format!("bridge link set dev {} hairpin on", a.veth.name));
    let agent = agent_on(&pods);
    // Set while the agent runs: no veth comes or goes, so only a fresh read can see it.
    sh(&format!("ip link set {} promisc on", b.veth.name));
    ping(a, b, 2);
    ping(c, a, 2);
    let r = macs(&agent, &br);
    assert_eq!(port(&r, &a.veth.name)["hairpin"], true);
    assert_eq!(port(&r, &b.veth.name)["promiscuous"], true);
    assert_eq!(flags(&r, &a.veth.name), [("hairpin".to_string(), None)]);
    assert_eq!(flags(&r, &b.veth.name), [("promiscuous".to_string(), None)]);
    assert!(flags(&r, &c.veth.name).is_empty(), "{r:#}");
    assert_eq!(anomaly_gauge(&agent, "hairpin", &a.veth.name), 1);
    assert_eq!(anomaly_gauge(&agent, "promiscuous", &b.veth.name), 1);
    assert_eq!(anomaly_gauge(&agent, "hairpin", &b.veth.name), 0);

    // Turned off, the flags clear: the gauge follows the port's state.
    sh(&format!("bridge link set dev {} hairpin off", a.veth.name));
    sh(&format!("ip link set {} promisc off", b.veth.name));
    let r = macs(&agent, &br);
    assert!(flags(&r, &a.veth.name).is_empty(), "{r:#}");
    assert!(flags(&r, &b.veth.name).is_empty(), "{r:#}");
    assert_eq!(anomaly_gauge(&agent, "hairpin", &a.veth.name), 0);
    assert_eq!(anomaly_gauge(&agent, "promiscuous", &b.veth.name), 0);
}

#[test]
fn hairpin_is_a_note_where_the_cni_configuration_asks_for_it_and_a_warning_elsewhere() {
    setup();
    let (asked, pods_a) = bridge_with(1);
    // A bridge no CNI configuration names (kept until the end).
    let (_other, pods_b) = bridge_with(1);
    let (a, b) = (&pods_a[0], &pods_b[0]);
    for p in [a, b] {
        sh(&format!("bridge link set dev {} hairpin on", p.veth.name));
    }
    // flannel's shape: the bridge plugin as a delegate with hairpinMode.
    let conf = TempDir::new("mchp");
    std::fs::write(
        conf.0.join("10-flannel.conflist"),
        format!(
            r#"{{"name":"cbr0","cniVersion":"0.3.1","plugins":[{{"type":"flannel",
            "delegate":{{"bridge":"{}","hairpinMode":true,"isDefaultGateway":true}}}}]}}"#,
            asked.name
        ),
    )
    .unwrap();
    let conf_dir = conf.0.display().to_string();
    let out = node_tracer(&[
        "macs",
        "--json",
        "--duration",
        "1",
        "--cni-conf-dir",
        &conf_dir,
        "-i",
        &a.veth.name,
        "-i",
        &b.veth.name,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("macs --json output");
    let on = |list: &str, veth: &str| -> Vec<String> {
        r[list]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|x| x["interface"] == veth)
            .map(|x| x["kind"].as_str().unwrap().to_string())
            .collect()
    };
    // (The bridges learned the pods' MACs before macs watched: other flags, other tests.)
    let hairpin = |list: &str, veth: &str| on(list, veth).iter().any(|k| k == "hairpin");
    assert_eq!(on("notes", &a.veth.name), ["hairpin"], "{r:#}");
    assert!(!hairpin("anomalies", &a.veth.name), "{r:#}");
    assert!(hairpin("anomalies", &b.veth.name), "{r:#}");
    assert!(on("notes", &b.veth.name).is_empty(), "{r:#}");
}

#[test]
fn without_an_agent_macs_attaches_for_a_while_itself() {
    setup();
    let (br, pods) = bridge_with(2);
    let (a, b) = (&pods[0], &pods[1]);
    let (ns, ip) = (a.ns.name.clone(), b.ip.clone());
    // Pings that outlast the attach and the watch window.
    let pinger = std::thread::spawn(move || {
        sh(&format!(
            "ip netns exec {ns} ping -c 30 -i 0.2 -W 1 -q {ip} >/dev/null"
        ));
    });
    let out = node_tracer(&[
        "macs",
        "--bridge",
        &br.name,
        "--json",
        "--duration",
        "2",
        "-i",
        &a.veth.name,
        "-i",
        &b.veth.name,
    ]);
    pinger.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(sent(&r, &a.veth.name).contains(&a.mac()), "{r:#}");
    assert_eq!(port(&r, &a.veth.name)["pod"]["name"], a.ns.name.as_str());
    assert_eq!(reported_fdb(&r), kernel_fdb(&br));
    assert_eq!(
        r["routed"],
        Value::Array(vec![]),
        "--bridge leaves routed veths out"
    );
    // Its programs went away with it.
    let links = sh(&format!(
        "bpftool net show dev {} 2>/dev/null || true",
        a.veth.name
    ));
    assert!(!links.contains("nt_ingress"), "{links}");
}

/// The pod's own MAC as the agent saw it transmit: (first seen, last seen, packets).
fn seen(agent: &Agent, veth: &str, mac: &str) -> (u64, u64, u64) {
    let snap = agent.snapshot();
    let port = snap["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == veth)
        .unwrap_or_else(|| panic!("{veth} in the snapshot"));
    let m = port["macs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == mac && m["direction"] == "transmit")
        .unwrap_or_else(|| panic!("{mac} on {veth}: {}", port["macs"]));
    let n = |k: &str| m[k].as_u64().unwrap();
    (n("first_seen_ms"), n("last_seen_ms"), n("packets"))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// First and last seen are wall-clock times that follow the traffic: the programs refresh
/// "last seen" once per clock tick rather than per packet, which must not freeze it under a
/// steady stream.
#[test]
fn first_and_last_seen_follow_a_steady_stream() {
    setup();
    let (_br, pods) = bridge_with(2);
    let (a, b) = (&pods[0], &pods[1]);
    // No IPv6 from the pod: its link-up chatter (MLD reports repeated a second later, router
    // solicitations every 4 s) could cross the veth after the agent attaches and before t0,
    // and "first seen" would rightly be earlier than the pings.
    a.ns.exec("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1");
    let agent = agent_on(&pods);
    let mac = a.mac();
    let t0 = unix_ms();
    // One CPU (the pod's transmit runs where ping runs), so one per-CPU entry sees the whole
    // second of traffic: its "last seen" must move along with it.
    a.ns.exec(&format!("taskset -c 0 ping -c 100 -i 0.01 -q {}", b.ip));
    let (first, last, n) = seen(&agent, &a.veth.name, &mac);
    let t1 = unix_ms();
    // The coarse clock has tick resolution (up to 10 ms).
    assert!(
        t0 <= first + 10 && last <= t1 + 10,
        "{t0} {first} {last} {t1}"
    );
    assert!(last >= first + 900, "a second of pings: {first} -> {last}");
    assert!(n >= 100);
    std::thread::sleep(Duration::from_millis(1500));
    a.ns.exec(&format!("taskset -c 0 ping -c 200 -i 0.005 -q {}", b.ip));
    let (first2, last2, n2) = seen(&agent, &a.veth.name, &mac);
    let t2 = unix_ms();
    assert_eq!(first2, first, "first seen stays");
    assert!(n2 >= n + 200);
    assert!(
        last2 >= last + 1500 && last2 <= t2 + 10,
        "last seen moved with the second stream: {last} -> {last2} (now {t2})"
    );
}
