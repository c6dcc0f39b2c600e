//! A two-node cluster on this machine, for views over several agents: each node a network
//! namespace with its own bridge (`cni0`), one pod and an agent; the nodes joined like
//! flannel's VXLAN backend (a `vxlan` link per node over a veth between them, a route per pod
//! subnet through it). No default route anywhere; everything is removed on drop.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{Netns, TempDir, node_tracer_in, require_root, require_tool, sh, unique, unique_net};

/// Where each agent listens inside its node (nothing else listens there).
pub const PORT: u16 = 9465;
/// Generous: only catches a hang on a loaded machine.
pub const HANG: Duration = Duration::from_mins(2);

/// A process stopped by its PID (SIGTERM, then SIGKILL) when the test ends, also on failure.
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        crate::stop_child(&mut self.0, Duration::from_secs(10));
    }
}

/// One node: its namespace (dropped last), a bridge with one pod, and an agent.
pub struct Node {
    /// Stopped first, before anything it watches goes away.
    pub agent: Option<Stopped>,
    pub name: &'static str,
    /// Its address on the underlay, where its agent listens.
    pub underlay_ip: String,
    pub underlay_dev: String,
    pub pod: Netns,
    /// The pod's veth, inside the node.
    pub veth: String,
    pub pod_ip: String,
    pub ns: Netns,
}

pub struct Cluster {
    pub a: Node,
    pub b: Node,
    token: TempDir,
}

impl Cluster {
    /// Builds both nodes and starts their agents (waiting until each answers).
    pub fn up() -> Self {
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

    pub fn token_file(&self) -> String {
        self.token.0.join("token").display().to_string()
    }

    /// `--connect` to both agents, and the token they share.
    pub fn connect_args(&self) -> Vec<String> {
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

    pub fn ready(&self) -> bool {
        let addr = format!("127.0.0.1:{PORT}").parse().unwrap();
        self.ns
            .in_thread(|| crate::http_get(addr, "/healthz"))
            .is_ok_and(|(s, _)| s == 200)
    }

    /// Its pod's route to the other node's pods (through its bridge; no default route).
    pub fn route_to(&self, other: &Node) {
        let gw = self.pod_ip.rsplit_once('.').unwrap().0;
        let other_net = other.pod_ip.rsplit_once('.').unwrap().0;
        self.pod.exec(&format!(
            "ip route add {other_net}.0/24 via {gw}.1 dev eth0"
        ));
    }
}

/// A child's lines, each as it comes, from a thread (so a wait can time out).
pub fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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
