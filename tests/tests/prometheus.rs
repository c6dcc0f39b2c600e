//! A real Prometheus scraping a real agent: rates match the traffic the test sends, pod labels
//! are the namespaces' names, a vanished veth's series go stale, and hostile pod names survive
//! the exposition format and Prometheus's API byte for byte.

#[path = "support/prom.rs"]
mod prom;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use node_tracer_lab::runtime::{Runtime, RuntimeOptions, Subnet};
use node_tracer_tests::{
    Agent, Link, Pod, require_root, require_tool, sh_output, unique, unique_net,
};
use prom::{Prometheus, eventually, promql_string};

/// `ping -i 0.2` (5 echo requests a second) from inside a namespace; killed by PID on drop.
struct Pinger(Child);

impl Pinger {
    fn start(from: &Pod, to: &Pod) -> Self {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &from.ns.name,
                "ping",
                "-q",
                "-i",
                "0.2",
                &to.ip,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping");
        Self(child)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn preconditions() {
    require_root();
    for t in ["prometheus", "promtool", "ping", "ip"] {
        require_tool(t);
    }
}

#[test]
fn prometheus_rates_match_pings_and_vanished_veths_go_stale() {
    preconditions();
    let net = unique_net();
    let br = Link::bridge("br");
    let a = Pod::bridged("pa", &br, &format!("{net}.2"), 24);
    let b = Pod::bridged("pb", &br, &format!("{net}.3"), 24);
    let idle = Pod::bridged("pi", &br, &format!("{net}.4"), 24);
    let agent = Agent::start(&[
        "-i",
        &a.veth.name,
        "-i",
        &b.veth.name,
        "-i",
        &idle.veth.name,
    ]);
    let prom = Prometheus::start(agent.addr);
    let ping = Pinger::start(&a, &b);

    // A sends 5 echo requests a second, B answers each; the idle pod sends nothing once its
    // link-up chatter is over (IPv6 router solicitations and DAD are off).
    let by_iface = "sum by (interface) (rate(node_tracer_transmit_packets_total[5s]))";
    eventually(Duration::from_secs(40), || {
        let rates = prom.values_by(by_iface, "interface");
        let get = |veth: &str| rates.iter().find(|(i, _)| i == veth).map(|(_, v)| *v);
        let (ra, rb, ri) = (get(&a.veth.name), get(&b.veth.name), get(&idle.veth.name));
        let near5 = |r: Option<f64>| r.is_some_and(|r| (4.0..=6.5).contains(&r));
        if near5(ra) && near5(rb) && ri == Some(0.0) {
            Ok(())
        } else {
            Err(format!(
                "rates {rates:?}; want ~5 on {} and {}, 0 on {}; targets: {}",
                a.veth.name,
                b.veth.name,
                idle.veth.name,
                prom.targets()
            ))
        }
    });
    // The ICMP view agrees: A's veth sees the echo requests leave the pod. rate() over a 5 s
    // window of 1 s scrapes extrapolates and jitters on a loaded machine: retry like above, and
    // accept a band that still tells 5/s from 0 and from 10.
    eventually(Duration::from_secs(40), || {
        let echo = prom.values_by(
            &format!(
                "sum by (interface) (rate(node_tracer_icmp_messages_total{{interface=\"{}\",direction=\"transmit\",type=\"icmp_echo_request\"}}[5s]))",
                a.veth.name
            ),
            "interface",
        );
        if echo.len() == 1 && (3.5..=6.5).contains(&echo[0].1) {
            Ok(())
        } else {
            Err(format!("echo requests from A: {echo:?}"))
        }
    });

    // Pods made as named namespaces are resolved by the netns source: pod = the namespace's
    // name, namespace empty (Prometheus drops empty labels).
    let pods = prom.query("sum by (namespace, pod) (rate(node_tracer_transmit_packets_total[5s]))");
    let mut names: Vec<(String, String)> = pods
        .iter()
        .map(|s| {
            (
                s["metric"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s["metric"]["pod"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    names.sort();
    let mut want: Vec<(String, String)> = [&a, &b, &idle]
        .iter()
        .map(|p| (String::new(), p.ns.name.clone()))
        .collect();
    want.sort();
    assert_eq!(names, want, "pod labels are the netns names");

    // The shipped recording rules run on the live data.
    let rules = prom.rules();
    for group in rules["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {}: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
    eventually(Duration::from_secs(30), || {
        let v = prom.values_by(
            "protocol:node_tracer_packets:rate1m{protocol=\"icmp\"}",
            "protocol",
        );
        // 5 requests + 5 replies, each seen leaving one pod and entering another: 20 a second
        // at most. The rule's arithmetic is checked by `promtool test rules`; here a 1m window
        // over a younger series only underestimates.
        match v.first() {
            Some((_, r)) if *r > 1.0 && *r <= 22.0 => Ok(()),
            _ => Err(format!("protocol:node_tracer_packets:rate1m {v:?}")),
        }
    });

    // A veth that vanishes takes its series with it: gone from the next scrape, and
    // Prometheus marks them stale, so an instant query stops returning them at once.
    let gone = a.veth.name.clone();
    let selector = format!("node_tracer_transmit_packets_total{{interface=\"{gone}\"}}");
    // Asked before the delete: a scrape (every second) right after it would already mark them.
    assert!(!prom.query(&selector).is_empty(), "{gone} has no series");
    drop(ping);
    let out = sh_output(&format!("ip link del {gone}"));
    assert!(
        out.status.success(),
        "ip link del {gone}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(5), || {
        let left = prom.query(&selector);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} series of {gone} still answer", left.len()))
        }
    });
    assert!(!agent.metrics().contains(&gone));
    // The others are still there.
    assert!(
        !prom
            .query(&format!(
                "node_tracer_port_info{{interface=\"{}\"}}",
                b.veth.name
            ))
            .is_empty()
    );
}

/// A named namespace whose name holds what a label value can: quotes, backslashes, a newline,
/// unicode. Deleted on drop.
struct HostileNetns {
    name: String,
}

impl HostileNetns {
    fn new() -> Self {
        // `ip netns` refuses only '/', "." and ".."; the ntt prefix keeps the cleanup sweep able
        // to find it.
        let name = format!("{}\"q\\b\nl☃é", unique("hn"));
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add {name:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }
}

impl Drop for HostileNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn hostile_pod_names_pass_promtool_and_round_trip_through_prometheus() {
    preconditions();
    let ns = HostileNetns::new();
    let veth = unique("hv");
    let out = Command::new("ip")
        .args([
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _link = Link { name: veth.clone() };
    let out = sh_output(&format!("ip link set {veth} up"));
    assert!(out.status.success());

    let agent = Agent::start(&["-i", &veth]);
    let metrics = agent.metrics();
    assert!(
        metrics.contains(r#"pod="ntt"#) && metrics.contains(r#"\"q\\b\nl☃é""#),
        "escaped pod label in:\n{metrics}"
    );

    // Series hygiene as deploy/README.md counts it: a veth with no traffic yet has 8 protocols
    // x 2 directions of packets, 2 byte counters, port_info, port_macs and 2 unseen_packets
    // (an attached veth); ICMP and TCP series come only once seen.
    let series = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&format!("interface=\"{veth}\"")))
        .count();
    assert_eq!(series, 22, "series of an idle veth:\n{metrics}");

    // promtool parses and lints the live exposition.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    {
        use std::io::Write as _;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
    }
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Through Prometheus and back: the label value is the namespace's name, byte for byte, and
    // the same name selects the series.
    let prom = Prometheus::start(agent.addr);
    let series = eventually(Duration::from_secs(20), || {
        let s = prom.query(&format!("node_tracer_port_info{{interface=\"{veth}\"}}"));
        if s.is_empty() {
            Err(format!("no port_info yet; targets: {}", prom.targets()))
        } else {
            Ok(s)
        }
    });
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["metric"]["pod"].as_str(), Some(ns.name.as_str()));
    let by_name = prom.query(&format!(
        "node_tracer_transmit_packets_total{{pod={}}}",
        promql_string(&ns.name)
    ));
    assert_eq!(by_name.len(), 8, "one series per protocol: {by_name:?}");
    assert!(
        by_name
            .iter()
            .all(|s| s["metric"]["interface"] == veth.as_str())
    );
}

/// The pod's IPv4 address and host-side veth, read from the kernel: `eth0@ifN` in the pod's
/// namespace names the host ifindex N.
fn pod_wiring(netns: &str) -> (String, String) {
    let addr = node_tracer_tests::sh(&format!("ip -n {netns} -4 -o addr show eth0"));
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 on eth0 in {netns}: {addr}"))
        .to_string();
    let link = node_tracer_tests::sh(&format!("ip -n {netns} -o link show eth0"));
    let ifindex: u32 = link
        .split_once("eth0@if")
        .and_then(|(_, r)| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peer ifindex in {link:?}"));
    let veth = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("ifindex"))
                .is_ok_and(|i| i.trim() == ifindex.to_string())
        })
        .map_or_else(
            || panic!("no host link with ifindex {ifindex}"),
            |e| e.file_name().to_string_lossy().into_owned(),
        );
    (ip, veth)
}

/// The same through a real runtime: containerd pods (CRI RunPodSandbox, CNI bridge), named by
/// the CRI source, their series gone once the pod is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pods_carry_cri_names_into_prometheus() {
    preconditions();
    for t in ["containerd", "ctr", "runc", "gcc"] {
        require_tool(t);
    }
    let mut opts = RuntimeOptions::new(&unique("prom"));
    opts.bridge = unique("br");
    // Apart from pods.rs's 10.20-219 range and from each other process.
    let b = 230 + (std::process::id() % 20) as u8;
    opts.bridge_subnet = Subnet::new([10, b, 0, 0].into(), 24);
    opts.ptp_subnet = Subnet::new([10, b, 1, 0].into(), 24);
    let rt = Runtime::start(opts.clone())
        .await
        .expect("start containerd");
    let mut pods = Vec::new();
    for name in ["web-0", "web-1"] {
        let uid = format!("{}-{name}", opts.name);
        pods.push(
            rt.run_pod(name, "shop", &uid, "runc")
                .await
                .expect("RunPodSandbox"),
        );
    }
    let netns: Vec<String> = pods
        .iter()
        .map(|p| p.netns.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let (_, veth0) = pod_wiring(&netns[0]);
    let (ip1, veth1) = pod_wiring(&netns[1]);
    let socket = opts.socket.display().to_string();
    let agent = Agent::start(&["--cri-socket", &socket, "-i", &veth0, "-i", &veth1]);
    let prom = Prometheus::start(agent.addr);
    let ping = Command::new("ip")
        .args(["netns", "exec", &netns[0], "ping", "-q", "-i", "0.2", &ip1])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ping");
    let ping = Killed(ping);

    let q = "sum by (namespace, pod) (rate(node_tracer_transmit_packets_total[5s]))";
    eventually(Duration::from_secs(40), || {
        let rows: Vec<(String, String, f64)> = prom
            .query(q)
            .iter()
            .map(|s| {
                (
                    s["metric"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    s["metric"]["pod"].as_str().unwrap_or_default().to_string(),
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN),
                )
            })
            .collect();
        let ok = rows.len() == 2
            && ["web-0", "web-1"].iter().all(|n| {
                rows.iter()
                    .any(|(ns, p, r)| ns == "shop" && p == n && (4.0..=6.5).contains(r))
            });
        if ok {
            Ok(())
        } else {
            Err(format!("{rows:?}; targets: {}", prom.targets()))
        }
    });

    drop(ping);
    let gone = pods.remove(0);
    rt.remove_pod(&gone).await.expect("remove pod");
    let selector = format!("node_tracer_transmit_packets_total{{interface=\"{veth0}\"}}");
    eventually(Duration::from_secs(5), || {
        let left = prom.query(&selector);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} series of removed pod web-0 still answer",
                left.len()
            ))
        }
    });
    // The other pod stays, under its CRI name.
    eventually(Duration::from_secs(5), || {
        let left = prom.query("count by (namespace, pod) (node_tracer_port_info)");
        let names: Vec<(&str, &str)> = left
            .iter()
            .map(|s| {
                (
                    s["metric"]["namespace"].as_str().unwrap_or_default(),
                    s["metric"]["pod"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        if names == [("shop", "web-1")] {
            Ok(())
        } else {
            Err(format!("pods left: {names:?}"))
        }
    });
    drop(prom);
    drop(agent);
    rt.stop().await.expect("stop runtime");
}

/// Kills its process by PID on drop (also when the test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
