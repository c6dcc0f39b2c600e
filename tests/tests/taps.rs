//! Taps (a VM's NIC) are ports like veths: attached, named after the process holding them open,
//! and counted exactly against the kernel's own counters. Other bridge ports (the node's NIC in
//! a bridge; here a VXLAN that sends nowhere) are uplinks: listed, and attached only with
//! `--attach-uplinks`, also when they join a bridge after the agent started.
//!
//! Everything lives in a node namespace of the test's own, so the agent there sees only these
//! links.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use node_tracer_tests::{
    Netns, free_port, http_get, metric, node_tracer_in, require_root, require_tool,
    signal_and_wait, unique,
};
use serde_json::Value;

/// Opens `/dev/net/tun` as a tap named argv[1] (IFF_TAP | IFF_NO_PI, as QEMU does), says its pid,
/// then writes N ARP requests "who-has TARGET tell SENDER" for every line N on stdin. It reads
/// what the tap transmits, as a VM does: the kernel counts a tap's tx when the reader takes it.
const HOLDER: &str = r"
import fcntl, os, socket, struct, sys, threading
name, target = sys.argv[1], socket.inet_aton(sys.argv[2])
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', name.encode(), 0x0002 | 0x1000))
mac = bytes.fromhex('020000000050')
frame = (b'\xff' * 6 + mac + b'\x08\x06' + b'\x00\x01\x08\x00\x06\x04\x00\x01' + mac
         + socket.inet_aton(sys.argv[3]) + b'\x00' * 6 + target)
def drain():
    while True:
        os.read(fd, 2048)
threading.Thread(target=drain, daemon=True).start()
print(os.getpid(), flush=True)
for line in sys.stdin:
    for _ in range(int(line)):
        os.write(fd, frame)
    print('done', flush=True)
";

struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Holder {
    fn start(node: &Netns, tap: &str, target: &str, sender: &str) -> Self {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.name,
                "/usr/bin/python3",
                "-c",
                HOLDER,
            ])
            .args([tap, target, sender])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the tap holder");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("holder said {line:?}"));
        Self {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    fn write_frames(&mut self, n: u32) {
        writeln!(self.stdin, "{n}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "the holder stopped");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = signal_and_wait(&mut self.child, libc::SIGKILL);
    }
}

struct NodeAgent {
    child: Child,
    addr: std::net::SocketAddr,
}

impl NodeAgent {
    fn start(node: &Netns, extra: &[&str]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let child = node_tracer_in(node, &["--log-level", "warn", "run", "--listen", &listen])
            .args(extra)
            .spawn()
            .expect("spawn node-tracer run");
        Self {
            child,
            addr: listen.parse().unwrap(),
        }
    }

    fn get(&self, node: &Netns, path: &str) -> Option<String> {
        node.in_thread(|| http_get(self.addr, path).ok())
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    }

    /// The snapshot once `ready` holds of it; panics (naming the last answer) only after a
    /// minute, long enough that it catches a hang, not a slow machine.
    fn snapshot_when(&mut self, node: &Netns, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < Duration::from_mins(1) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node-tracer run exited: {status}");
            }
            if let Some(body) = self.get(node, "/snapshot") {
                let snap: Value = serde_json::from_str(&body).expect("snapshot JSON");
                let ports = snap["ports"].as_array().cloned().unwrap_or_default();
                if ready(&ports) {
                    return ports;
                }
                last = Some(ports);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agent never got there; last snapshot ports: {last:#?}");
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = signal_and_wait(&mut self.child, libc::SIGTERM);
    }
}

fn port<'a>(ports: &'a [Value], name: &str) -> &'a Value {
    ports
        .iter()
        .find(|p| p["name"] == name || p["interface"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {ports:#?}"))
}

/// tcx programs on a link of the node namespace (ingress plus egress), as the kernel lists
/// them: nothing else attaches in a namespace of the test's own.
fn tcx_programs(node: &Netns, dev: &str) -> usize {
    node.in_thread(|| {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .iter()
            .map(|ty| SchedClassifier::query_tcx(dev, *ty).map_or(0, |(_, progs)| progs.len()))
            .sum()
    })
}

/// The kernel's counters of a link in the node namespace (`ip netns exec` mounts that
/// namespace's /sys; a thread's setns alone does not).
fn counters(node: &Netns, dev: &str) -> (u64, u64) {
    let out = node.exec(&format!(
        "cat /sys/class/net/{dev}/statistics/rx_packets /sys/class/net/{dev}/statistics/tx_packets"
    ));
    let mut n = out.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

#[test]
fn tap_is_attached_named_after_its_holder_and_counted_uplink_listed_not_attached() {
    require_root();
    require_tool("python3");
    let node = Netns::new("tn");
    let pod = Netns::new("tp");
    for ns in [&node, &pod] {
        // No IPv6 chatter: the counts hold only the frames the test sends.
        ns.exec("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    }
    let (br, veth, vx, tap) = (unique("b"), unique("v"), unique("x"), unique("t"));
    node.exec(&format!(
        "ip link add {br} type bridge && ip link set {br} up && \
         ip link add {veth} type veth peer name eth0 netns {pod} && \
         ip link set {veth} master {br} up && \
         ip link add {vx} type vxlan id 42 dstport 0 local 127.0.0.1 nolearning && \
         ip link set {vx} master {br} up",
        pod = pod.name
    ));
    pod.exec("ip addr add 10.0.0.2/24 dev eth0 && ip link set eth0 up");
    let mut holder = Holder::start(&node, &tap, "10.0.0.2", "10.0.0.50");
    node.exec(&format!("ip link set {tap} master {br} up"));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", holder.pid)).unwrap();
    let holder_name = format!("{}[{}]", comm.trim_end(), holder.pid);

    let mut agent = NodeAgent::start(&node, &[]);
    let ports = agent.snapshot_when(&node, |ports| {
        ports
            .iter()
            .any(|p| p["name"] == tap.as_str() && p["attached"] == true)
            && ports
                .iter()
                .any(|p| p["name"] == veth.as_str() && p["attached"] == true)
    });
    let t = port(&ports, &tap);
    assert_eq!(t["kind"], "tap");
    assert_eq!(t["mode"], "bridged");
    assert_eq!(t["master"], br.as_str());
    assert_eq!(t["pod"]["name"], holder_name.as_str());
    assert_eq!(t["pod"]["source"], "proc");
    let u = port(&ports, &vx);
    assert_eq!(u["kind"], "uplink");
    assert_eq!(u["master"], br.as_str());
    assert_eq!(u["attached"], false);
    assert_eq!(
        port(&ports, &veth).get("kind"),
        None,
        "a veth's JSON is unchanged"
    );
    assert_eq!(
        tcx_programs(&node, &tap),
        2,
        "ingress and egress on the tap"
    );
    assert_eq!(tcx_programs(&node, &vx), 0, "nothing on the uplink");

    // Frames written into the tap are what the kernel receives on it (the VM transmits); the
    // pod's ARP replies, forwarded by the bridge, are what the tap transmits (the VM receives).
    let k0 = counters(&node, &tap);
    let metrics = |agent: &NodeAgent| agent.get(&node, "/metrics").expect("metrics");
    let m0 = metrics(&agent);
    holder.write_frames(40);
    // Counters and metrics read at one instant: bracketed by two kernel reads that agree.
    let (k1, m1) = loop {
        let before = counters(&node, &tap);
        let m = metrics(&agent);
        if counters(&node, &tap) == before {
            break (before, m);
        }
    };
    let sum = |text: &str, name: &str| {
        metric(text, name, &[("interface", tap.as_str())]).unwrap_or(0.0) as u64
    };
    let vm_sent = sum(&m1, "node_tracer_transmit_packets_total")
        - sum(&m0, "node_tracer_transmit_packets_total");
    let vm_got = sum(&m1, "node_tracer_receive_packets_total")
        - sum(&m0, "node_tracer_receive_packets_total");
    assert_eq!(vm_sent, k1.0 - k0.0, "tap rx = VM transmit");
    assert_eq!(vm_got, k1.1 - k0.1, "tap tx = VM receive");
    assert_eq!(vm_sent, 40, "every frame written into the tap");
    assert!(
        vm_got > 0,
        "the pod's ARP replies reach the tap: {k0:?} -> {k1:?}"
    );
    let labelled = m1.lines().any(|l| {
        l.starts_with("node_tracer_transmit_packets_total{")
            && l.contains(&format!("interface=\"{tap}\""))
            && l.contains(&format!("pod=\"{holder_name}\""))
    });
    assert!(labelled, "no series names the holder:\n{m1}");

    // peers lists the uplink with its kind, the tap with its holder.
    let out = node_tracer_in(&node, &["peers", "--json"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(port(&rows, &vx)["kind"], "uplink");
    assert_eq!(port(&rows, &tap)["pod"]["name"], holder_name.as_str());
    // macs lists the uplink with its FDB entries (its own MAC, permanent on the bridge).
    let url = format!("http://{}", agent.addr);
    let out = node_tracer_in(&node, &["macs", "--json", "--connect", &url])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bridge = report["bridges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == br.as_str())
        .expect("our bridge in macs");
    let row = port(bridge["ports"].as_array().unwrap(), &vx);
    assert_eq!(row["kind"], "uplink");
    let vx_mac = node.exec(&format!("cat /sys/class/net/{vx}/address"));
    assert!(
        row["macs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mac"] == vx_mac.trim() && !m["fdb"].as_array().unwrap().is_empty()),
        "{row:#}"
    );
    drop(agent);
    assert_eq!(tcx_programs(&node, &tap), 0, "detached on exit");

    // Asked for, the uplink is attached too.
    let mut agent = NodeAgent::start(&node, &["--attach-uplinks"]);
    agent.snapshot_when(&node, |ports| {
        ports
            .iter()
            .any(|p| p["name"] == vx.as_str() && p["attached"] == true)
    });
    assert_eq!(tcx_programs(&node, &vx), 2);
    drop(agent);
    drop(holder);
}

#[test]
fn an_uplink_joining_a_bridge_after_start_is_listed_and_attached_on_its_event() {
    require_root();
    let node = Netns::new("tu");
    let pod = Netns::new("tq");
    node.exec("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    let (br, veth, vx) = (unique("b"), unique("v"), unique("x"));
    node.exec(&format!(
        "ip link add {br} type bridge && ip link set {br} up && \
         ip link add {veth} type veth peer name eth0 netns {pod} && \
         ip link set {veth} master {br} up",
        pod = pod.name
    ));
    let mut agent = NodeAgent::start(&node, &["--attach-uplinks"]);
    agent.snapshot_when(&node, |ports| {
        ports
            .iter()
            .any(|p| p["name"] == veth.as_str() && p["attached"] == true)
    });
    let events = |agent: &NodeAgent| {
        metric(
            &agent.get(&node, "/metrics").expect("metrics"),
            "node_tracer_link_events_total",
            &[],
        )
        .expect("node_tracer_link_events_total")
    };
    let before = events(&agent);

    // A VXLAN made after the agent started joins the bridge: no veth changed, yet the agent
    // hears of it from that link's own event (not from a rescan that happened to run).
    node.exec(&format!(
        "ip link add {vx} type vxlan id 42 dstport 0 local 127.0.0.1 nolearning && \
         ip link set {vx} master {br} up"
    ));
    let ports = agent.snapshot_when(&node, |ports| {
        ports
            .iter()
            .any(|p| p["name"] == vx.as_str() && p["attached"] == true)
    });
    let u = port(&ports, &vx);
    assert_eq!(u["kind"], "uplink", "{u:#}");
    assert_eq!(u["master"], br.as_str(), "{u:#}");
    assert_eq!(tcx_programs(&node, &vx), 2);
    assert!(events(&agent) > before, "the join was a link event");

    // Out of the bridge it is no port at all.
    node.exec(&format!("ip link set {vx} nomaster"));
    agent.snapshot_when(&node, |ports| {
        !ports.iter().any(|p| p["name"] == vx.as_str())
    });
}
