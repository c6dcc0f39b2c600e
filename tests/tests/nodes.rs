//! Views over several agents (`--connect` repeated): a two-node cluster on this machine. Each
//! node is a network namespace with its own bridge, a pod and an agent; the nodes are joined
//! like flannel's VXLAN backend (a `vxlan` link per node over a veth between them, a route per
//! pod subnet through it). A ping from the pod on node A to the pod on node B is traced by
//! both agents at once and checked against tcpdump on both veths; `top` shows each pod once
//! with its node; an agent killed mid-trace is named in a warning while the other's lines go on.

use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Capture, TempDir,
    cluster::{Cluster, HANG, Node, Stopped, lines},
    node_tracer_in, sh, sh_output, unique,
};
use serde_json::Value;

/// `trace icmp` over both agents, run inside node A (as `kubectl exec` into an agent would).
fn trace(c: &Cluster, extra: &[&str]) -> (Stopped, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut cmd = node_tracer_in(&c.a.ns, &["trace", "icmp", "--json"]);
    cmd.args(c.connect_args())
        .args(["--type", "echo-request", "--type", "echo-reply"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn trace icmp");
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    (Stopped(child), out, err)
}

/// Waits for the trace's log line saying it traces (both agents connected).
fn wait_tracing(err: &mpsc::Receiver<String>) {
    loop {
        match err.recv_timeout(HANG) {
            Ok(l) if l.contains("tracing ICMP") => {
                assert!(l.contains("node-a") && l.contains("node-b"), "{l}");
                return;
            }
            Ok(l) => assert!(!l.contains("ERROR"), "{l}"),
            Err(e) => panic!("the trace never started: {e}"),
        }
    }
}

/// (node, veth, direction, type, id, seq) of a trace's packet line.
type Key = (String, String, String, String, u64, u64);

fn key(v: &Value) -> Key {
    (
        v["node"].as_str().unwrap_or("?").into(),
        v["interface"].as_str().unwrap_or("?").into(),
        v["direction"].as_str().unwrap().into(),
        v["type_name"].as_str().unwrap().into(),
        v["id"].as_u64().unwrap(),
        v["seq"].as_u64().unwrap(),
    )
}

/// The echo packets tcpdump wrote, as trace keys.
fn captured(file: &std::path::Path, node: &Node, direction: &str) -> BTreeSet<Key> {
    let text = sh(&format!(
        "tcpdump -r {} -n icmp 2>/dev/null",
        file.display()
    ));
    text.lines()
        .filter_map(|l| {
            // tcpdump's words are the trace's type names.
            let ty = if l.contains("echo request") {
                "echo request"
            } else if l.contains("echo reply") {
                "echo reply"
            } else {
                return None;
            };
            let num = |k: &str| -> u64 {
                let rest = &l[l.find(k).unwrap() + k.len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            Some((
                node.name.to_owned(),
                node.veth.clone(),
                direction.to_owned(),
                ty.to_owned(),
                num(", id "),
                num(", seq "),
            ))
        })
        .collect()
}

fn capture(node: &Node, q: &str, dir: &TempDir) -> Capture {
    let file = dir.0.join(format!("{}-{q}.pcap", node.veth));
    Capture::spawn(
        Command::new("ip")
            .args(["netns", "exec", &node.ns.name])
            .args([
                "tcpdump",
                "-i",
                &node.veth,
                "-Q",
                q,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "256",
                "-w",
            ])
            .arg(&file),
        file,
    )
}

/// A ping from the pod on node A to the pod on node B crosses two nodes: the trace over both
/// agents lists exactly what tcpdump sees on both veths (packet by packet: node, veth,
/// direction, ICMP type, id, seq), and its summary joins each ping's path across the nodes.
#[test]
fn a_ping_across_two_nodes_is_one_path_matching_tcpdump_on_both_veths() {
    let c = Cluster::up();
    c.a.route_to(&c.b);
    c.b.route_to(&c.a);
    let tmp = TempDir::new("ndc");
    let caps = [
        (&c.a, "transmit", capture(&c.a, "in", &tmp)),
        (&c.a, "receive", capture(&c.a, "out", &tmp)),
        (&c.b, "transmit", capture(&c.b, "in", &tmp)),
        (&c.b, "receive", capture(&c.b, "out", &tmp)),
    ];
    let pings = 5;
    // Each ping: request out of A's pod and into B's, the reply back: 4 lines.
    let (mut t, out, err) = trace(&c, &["--count", &(pings * 4).to_string()]);
    wait_tracing(&err);
    c.a.pod
        .exec(&format!("ping -c {pings} -i 0.2 -W 5 -q {}", c.b.pod_ip));
    let status = wait_exit(&mut t.0);
    let got: Vec<Value> = out
        .try_iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        status.success(),
        "{status}: {:?}",
        err.try_iter().collect::<Vec<_>>()
    );
    let (packets, summary): (Vec<&Value>, Vec<&Value>) =
        got.iter().partition(|v| v.get("summary").is_none());
    let traced: BTreeSet<Key> = packets.iter().map(|v| key(v)).collect();
    assert_eq!(traced.len(), packets.len(), "a packet twice: {packets:?}");
    let mut seen = BTreeSet::new();
    for (node, dir, cap) in caps {
        seen.extend(captured(&cap.stop(), node, dir));
    }
    assert_eq!(traced, seen, "the trace against tcpdump on both veths");
    assert_eq!(traced.len(), usize::try_from(pings * 4).unwrap());

    // The summary: per ping, the request leaves A's pod on node A and enters B's pod on node
    // B; the reply goes back.
    let summary = summary.first().expect("a summary line");
    let paths = summary["pings"].as_array().unwrap();
    assert_eq!(paths.len(), usize::try_from(pings).unwrap(), "{summary}");
    let hops = |h: &Value| -> Vec<(String, String, String)> {
        h.as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["node"].as_str().unwrap_or("?").into(),
                    x["interface"].as_str().unwrap().into(),
                    x["direction"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let hop = |n: &Node, d: &str| (n.name.to_owned(), n.veth.clone(), d.to_owned());
    for p in paths {
        assert_eq!(
            hops(&p["request"]),
            [hop(&c.a, "transmit"), hop(&c.b, "receive")],
            "{p}"
        );
        assert_eq!(
            hops(&p["reply"]),
            [hop(&c.b, "transmit"), hop(&c.a, "receive")],
            "{p}"
        );
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < HANG, "the trace never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node B's agent killed mid-trace: a warning names it, and node A's lines go on (the test
/// tells the warning from a hang, and a trace that died from one that traces on).
#[test]
fn an_agent_killed_mid_trace_is_named_and_the_other_goes_on() {
    let mut c = Cluster::up();
    c.a.route_to(&c.b);
    c.b.route_to(&c.a);
    let (mut t, out, err) = trace(&c, &[]);
    wait_tracing(&err);
    let _ping = Stopped(
        Command::new("ip")
            .args(["netns", "exec", &c.a.pod.name, "ping", "-q", "-i", "0.2"])
            .arg(&c.b.pod_ip)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping"),
    );
    let node_of = |l: &str| {
        serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| v["node"].as_str().map(str::to_owned))
    };
    // Lines from both nodes first.
    let mut nodes = BTreeSet::new();
    while nodes.len() < 2 {
        let l = out
            .recv_timeout(HANG)
            .expect("no trace lines from both nodes");
        nodes.extend(node_of(&l));
    }
    let mut agent = c.b.agent.take().unwrap();
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let warning = loop {
        match err.recv_timeout(HANG) {
            Ok(l) if l.contains("WARN") => break l,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no warning: the trace hangs"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the trace ended instead: {:?}", t.0.try_wait())
            }
        }
    };
    assert!(
        warning.contains("node-b") && warning.contains(&c.b.underlay_ip),
        "{warning}"
    );
    // Drain what was printed before the warning, then node A's packets keep coming.
    while out.try_recv().is_ok() {}
    let mut after = 0;
    while after < 4 {
        let l = match out.recv_timeout(HANG) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no lines after the warning: a hang"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the trace ended: {:?}", t.0.try_wait())
            }
        };
        assert_eq!(node_of(&l).as_deref(), Some("node-a"), "{l}");
        after += 1;
    }
    assert!(matches!(t.0.try_wait(), Ok(None)), "the trace still runs");
}

/// A tmux server of the test's own (`-S` socket), killed on drop, also when the test fails.
struct TmuxServer<'a>(&'a str);

impl Drop for TmuxServer<'_> {
    fn drop(&mut self) {
        let _ = sh_output(&format!("tmux -S {} kill-server", self.0));
    }
}

/// `top` over both agents shows each pod's veth once, with its node in the NODE column.
#[test]
fn top_over_two_agents_shows_each_pod_once_with_its_node() {
    let c = Cluster::up();
    let dir = TempDir::new("tmx");
    let socket = dir.0.join("tmux.sock").display().to_string();
    let session = unique("top");
    let tmux = |args: &str| sh(&format!("tmux -S {socket} {args}"));
    tmux(&format!(
        "-f /dev/null new-session -d -s {session} -x 200 -y 40 sh"
    ));
    let _kill = TmuxServer(&socket);
    let cmd = format!(
        "ip netns exec {} {} top {} --interval 0.5",
        c.a.ns.name,
        node_tracer_tests::binary().display(),
        c.connect_args().join(" ")
    );
    tmux(&format!("send-keys -t {session} -l '{cmd}'"));
    tmux(&format!("send-keys -t {session} Enter"));
    let start = Instant::now();
    let screen = loop {
        let s = tmux(&format!("capture-pane -p -t {session}"));
        if s.contains(&c.a.veth) && s.contains(&c.b.veth) {
            break s;
        }
        assert!(start.elapsed() < HANG, "both pods never shown:\n{s}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(screen.contains("NODE"), "{screen}");
    for n in [&c.a, &c.b] {
        let rows: Vec<&str> = screen.lines().filter(|l| l.contains(&n.veth)).collect();
        assert_eq!(rows.len(), 1, "{} once:\n{screen}", n.veth);
        assert_eq!(rows[0].split_whitespace().next(), Some(n.name), "{screen}");
    }
    tmux(&format!("send-keys -t {session} q"));
}

/// `macs` over both agents: one report per node, each with its own cni0 and its own pod's
/// veth, and nothing of one node in the other's.
#[test]
fn macs_over_two_agents_reports_each_node() {
    let c = Cluster::up();
    let out = node_tracer_in(&c.a.ns, &["macs", "--json"])
        .args(c.connect_args())
        .stdout(Stdio::piped())
        .output()
        .expect("run macs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (r, n, other) in [(&reports[0], &c.a, &c.b), (&reports[1], &c.b, &c.a)] {
        assert_eq!(r["node"], n.name, "{r}");
        let ports: Vec<&str> = r["bridges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["name"] == "cni0")
            .flat_map(|b| b["ports"].as_array().unwrap())
            .filter_map(|p| p["interface"].as_str())
            .collect();
        assert!(ports.contains(&n.veth.as_str()), "{r}");
        assert!(!ports.contains(&other.veth.as_str()), "{r}");
    }
}
