//! Views over several agents (`--connect` repeated): a two-node cluster on this machine. Each
//! node is a network namespace with its own bridge, a pod and an agent; the nodes are joined
//! like flannel's VXLAN backend (a `vxlan` link per node over a veth between them, a route per
//! pod subnet through it). A ping from the pod on node A to the pod on node B is traced by
//! both agents at once and checked against tcpdump on both veths; `top` shows each pod once
//! with its node; an agent killed mid-trace is named in a warning while the other's lines go on.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Capture, Netns, TempDir, node_tracer_in, require_root, require_tool, sh, sh_output, unique,
    unique_net,
};
use serde_json::Value;

/// Where each agent listens inside its node (nothing else listens there).
const PORT: u16 = 9465;
/// Generous: only catches a hang on a loaded machine.
const HANG: Duration = Duration::from_mins(2);

/// A process stopped by its PID (SIGTERM, then SIGKILL) when the test ends, also on failure.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        node_tracer_tests::stop_child(&mut self.0, Duration::from_secs(10));
    }
}

/// One node: its namespace (dropped last), a bridge with one pod, and an agent.
struct Node {
    /// Stopped first, before anything it watches goes away.
    agent: Option<Stopped>,
    name: &'static str,
    /// Its address on the underlay, where its agent listens.
    underlay_ip: String,
    underlay_dev: String,
    pod: Netns,
    /// The pod's veth, inside the node.
    veth: String,
    pod_ip: String,
    ns: Netns,
}

struct Cluster {
    a: Node,
    b: Node,
    token: TempDir,
}

impl Cluster {
    fn new() -> Self {
        require_root();
        for t in ["tcpdump", "ping", "tmux"] {
            require_tool(t);
        }
        let (na, nb, underlay, overlay) = (unique_net(), unique_net(), unique_net(), unique_net());
        let (ns_a, ns_b) = (Netns::new("nda"), Netns::new("ndb"));
        // The underlay: one veth between the two nodes (a host's NIC on the node network).
        let ul = unique("ul");
        sh(&format!(
            "ip -n {a} link add {ul} type veth peer name {ul}b netns {b}",
            a = ns_a.name,
            b = ns_b.name
        ));
        let token = TempDir::new("tok");
        std::fs::write(token.0.join("token"), "s3cret-nodes\n").unwrap();
        let mut a = Node::new(ns_a, "node-a", &ul, &format!("{underlay}.1"), &na);
        let mut b = Node::new(
            ns_b,
            "node-b",
            &format!("{ul}b"),
            &format!("{underlay}.2"),
            &nb,
        );
        // flannel.1 on each node: VXLAN to the other node, and the other node's pod subnet
        // through it. No default route anywhere.
        for (me, other, my_ip, other_ip, other_net) in [
            (&a, &b, format!("{overlay}.1"), format!("{overlay}.2"), &nb),
            (&b, &a, format!("{overlay}.2"), format!("{overlay}.1"), &na),
        ] {
            me.ns.exec(&format!(
                "ip link add vx0 type vxlan id 42 local {} remote {} dstport 8472 dev {} && \
                 ip addr add {my_ip}/24 dev vx0 && ip link set vx0 up && \
                 ip route add {other_net}.0/24 via {other_ip} dev vx0 && \
                 sysctl -qw net.ipv4.ip_forward=1",
                me.underlay_ip, other.underlay_ip, me.underlay_dev,
            ));
        }
        let tok = token.0.join("token").display().to_string();
        a.start_agent(&tok);
        b.start_agent(&tok);
        Self { a, b, token }
    }

    fn token_file(&self) -> String {
        self.token.0.join("token").display().to_string()
    }

    /// `--connect` to both agents, and the token they share.
    fn connect_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        for n in [&self.a, &self.b] {
            v.push("--connect".into());
            v.push(format!("http://{}:{PORT}", n.underlay_ip));
        }
        v.push("--api-token-file".into());
        v.push(self.token_file());
        v
    }
}

impl Node {
    fn new(
        ns: Netns,
        name: &'static str,
        underlay_dev: &str,
        underlay_ip: &str,
        net: &str,
    ) -> Self {
        ns.exec(&format!(
            "ip addr add {underlay_ip}/24 dev {underlay_dev} && ip link set {underlay_dev} up && \
             ip link add cni0 type bridge && ip addr add {net}.1/24 dev cni0 && \
             ip link set cni0 up"
        ));
        let pod = Netns::new("pod");
        let veth = unique("v");
        sh(&format!(
            "ip -n {n} link add {veth} type veth peer name eth0 netns {p}",
            n = ns.name,
            p = pod.name
        ));
        ns.exec(&format!(
            "sysctl -qw net.ipv6.conf.{veth}.disable_ipv6=1 && \
             ip link set {veth} master cni0 up"
        ));
        pod.exec(&format!(
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && \
             ip addr add {net}.2/24 dev eth0 && ip link set eth0 up"
        ));
        Self {
            name,
            underlay_ip: underlay_ip.into(),
            underlay_dev: underlay_dev.into(),
            pod,
            veth,
            pod_ip: format!("{net}.2"),
            agent: None,
            ns,
        }
    }

    /// The agent, listening on the underlay with a token (off loopback, the API needs one).
    fn start_agent(&mut self, token: &str) {
        let listen = format!("0.0.0.0:{PORT}");
        let child = node_tracer_in(&self.ns, &["run", "--listen", &listen])
            .args(["--node-name", self.name, "--api-token-file", token])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node-tracer run");
        self.agent = Some(Stopped(child));
        let start = Instant::now();
        while !self.ready() {
            assert!(
                start.elapsed() < HANG,
                "the agent of {} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ready(&self) -> bool {
        let addr = format!("127.0.0.1:{PORT}").parse().unwrap();
        self.ns
            .in_thread(|| node_tracer_tests::http_get(addr, "/healthz"))
            .is_ok_and(|(s, _)| s == 200)
    }

    /// Its pod's route to the other node's pods (through its bridge; no default route).
    fn route_to(&self, other: &Node) {
        let gw = self.pod_ip.rsplit_once('.').unwrap().0;
        let other_net = other.pod_ip.rsplit_once('.').unwrap().0;
        self.pod.exec(&format!(
            "ip route add {other_net}.0/24 via {gw}.1 dev eth0"
        ));
    }
}

/// A child's lines, each as it comes, from a thread (so a wait can time out).
fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

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
    let c = Cluster::new();
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
    let mut c = Cluster::new();
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
    let c = Cluster::new();
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
    let c = Cluster::new();
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
