//! `node-tracer trace icmp` against tcpdump on every veth of a lab: the same (veth, direction,
//! family, type, id, seq) multiset, no more, no fewer; its pcapng output read by tshark; no
//! events at all while nobody traces; and its CLI errors.
//!
//! Routing between the two routed pods goes through the host. Instead of flipping the shared
//! host's `net.ipv4.ip_forward` (other tests and other people's runs read and restore it), the
//! test turns on `net.ipv4.conf.<veth>.forwarding` for its own two routed veths only: IPv4 checks
//! forwarding on the input device, and the setting goes away with the veths.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use node_tracer_tests::{
    Agent, Capture, Link, Netns, Pod, TempDir, binary, metric, node_tracer, node_tracer_in,
    require_root, require_tool, sh, unique_net,
};
use serde_json::Value;

/// One ICMP packet as both tools describe it: host veth, direction from the pod's point of
/// view, family, type, and echo id and sequence where the type has them.
type Key = (String, &'static str, u8, u8, Option<u16>, Option<u16>);

/// Pings per flow: small, so the multisets stay readable in a failure message.
const N: u32 = 3;

/// A running `node-tracer trace icmp`, stopped with SIGINT by its PID (killed on drop).
struct Trace {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Trace {
    /// Starts `node-tracer trace icmp --json ARGS` and waits for "tracing ICMP on N veths".
    fn start(args: &[&str], veths: usize) -> Self {
        let mut child = Command::new(binary())
            .args(["trace", "icmp", "--json"])
            .args(args)
            .env("NODE_TRACER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node-tracer trace icmp");
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut trace = Self {
            child,
            stdout: Some(stdout),
            stderr: rx,
            stderr_seen: Vec::new(),
        };
        let want = format!("tracing ICMP on {veths} veths");
        loop {
            match trace.stderr.recv_timeout(Duration::from_mins(2)) {
                Ok(line) => {
                    let ready = line.contains(&want);
                    trace.stderr_seen.push(line);
                    if ready {
                        break;
                    }
                }
                Err(e) => panic!(
                    "trace icmp not ready ({e}): {:?} {}",
                    trace.child.try_wait(),
                    trace.stderr_seen.join("\n")
                ),
            }
        }
        trace
    }

    /// SIGINT, then its exit status, stdout and stderr.
    fn stop(self) -> (ExitStatus, String, String) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.finish()
    }

    /// Waits for it to end by itself (`--timeout`, `--count`).
    fn finish(mut self) -> (ExitStatus, String, String) {
        let status = self.child.wait().expect("wait trace");
        let out = self.stdout.take().unwrap().join().unwrap();
        let mut err = std::mem::take(&mut self.stderr_seen);
        err.extend(self.stderr.try_iter());
        (status, out, err.join("\n"))
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The packet objects of a `--json` trace (the summary object apart), failing on lost events.
fn packets(stdout: &str) -> (Vec<Value>, Value) {
    let mut packets = Vec::new();
    let mut summary = None;
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("events_lost").is_none(), "events lost: {line}");
        if v["summary"] == true {
            summary = Some(v);
        } else {
            packets.push(v);
        }
    }
    (packets, summary.expect("a summary object at the end"))
}

fn u16_of(v: &Value) -> Option<u16> {
    v.as_u64().map(|n| u16::try_from(n).unwrap())
}

fn key_of_json(v: &Value) -> Key {
    let direction = match v["direction"].as_str() {
        Some("transmit") => "transmit",
        Some("receive") => "receive",
        other => panic!("direction {other:?}"),
    };
    (
        v["interface"].as_str().expect("interface").to_owned(),
        direction,
        u8::try_from(v["family"].as_u64().unwrap()).unwrap(),
        u8::try_from(v["type"].as_u64().unwrap()).unwrap(),
        u16_of(&v["id"]),
        u16_of(&v["seq"]),
    )
}

/// tshark prints some integer fields in hex (`0x1a2b`).
fn field(s: &str) -> Option<u16> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    Some(match s.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16).unwrap(),
        None => s.parse().unwrap_or_else(|e| panic!("{e}: {s:?}")),
    })
}

/// The ICMP packets of one capture, read with tshark. The outer header only (`occurrence=f`):
/// an error message quotes the packet that caused it.
fn tshark_keys(file: &Path, veth: &str, direction: &'static str) -> Vec<Key> {
    let out = sh(&format!(
        "tshark -r {} -n -Y 'icmp || icmpv6' -T fields -E occurrence=f \
         -e icmp.type -e icmp.ident -e icmp.seq \
         -e icmpv6.type -e icmpv6.echo.identifier -e icmpv6.echo.sequence_number 2>/dev/null",
        file.display()
    ));
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 6, "{line:?}");
            let (family, ty, id, seq) = if f[0].is_empty() {
                (6, f[3], f[4], f[5])
            } else {
                (4, f[0], f[1], f[2])
            };
            (
                veth.to_owned(),
                direction,
                family,
                u8::try_from(field(ty).expect("type")).unwrap(),
                field(id),
                field(seq),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<Key>) -> Vec<Key> {
    v.sort();
    v
}

/// How many packets of `keys` went through `veth` in `direction` with this family and type.
fn count(keys: &[Key], veth: &str, direction: &str, family: u8, ty: u8) -> usize {
    keys.iter()
        .filter(|k| k.0 == veth && k.1 == direction && k.2 == family && k.3 == ty)
        .count()
}

/// Two bridged pods (IPv4 and IPv6) and two routed pods sharing one /32 gateway.
struct Lab {
    _br: Link,
    a: Pod,
    b: Pod,
    r1: Pod,
    r2: Pod,
    gw: String,
}

impl Lab {
    fn new() -> Self {
        let net = unique_net();
        let br = Link::bridge("br");
        let a = Pod::bridged("a", &br, &format!("{net}.2"), 24);
        let b = Pod::bridged("b", &br, &format!("{net}.3"), 24);
        a.ns.exec("ip -6 addr add fd00::a/64 dev eth0 nodad");
        b.ns.exec("ip -6 addr add fd00::b/64 dev eth0 nodad");
        let net = unique_net();
        let gw = format!("{net}.1");
        let r1 = Pod::routed("r1", &format!("{net}.5"), &gw);
        let r2 = Pod::routed("r2", &format!("{net}.6"), &gw);
        r1.ns
            .exec(&format!("ip route add {}/32 via {gw} dev eth0", r2.ip));
        r2.ns
            .exec(&format!("ip route add {}/32 via {gw} dev eth0", r1.ip));
        sh(&format!(
            "sysctl -qw net.ipv4.conf.{}.forwarding=1 net.ipv4.conf.{}.forwarding=1",
            r1.veth.name, r2.veth.name
        ));
        // Link-up chatter (MLD reports for the new addresses, repeated for robustness) must be
        // over before any capture starts: it would fall between tcpdump's start and the trace's.
        std::thread::sleep(Duration::from_secs(4));
        Self {
            _br: br,
            a,
            b,
            r1,
            r2,
            gw,
        }
    }

    fn veths(&self) -> [&str; 4] {
        [
            self.a.veth.name.as_str(),
            self.b.veth.name.as_str(),
            self.r1.veth.name.as_str(),
            self.r2.veth.name.as_str(),
        ]
    }

    /// An agent on the lab's veths, and its URL for `--connect`.
    fn agent(&self) -> (Agent, String) {
        let args: Vec<&str> = self.veths().iter().flat_map(|v| ["-i", *v]).collect();
        let agent = Agent::start(&args);
        let url = format!("http://{}", agent.addr);
        (agent, url)
    }

    fn veth_args(&self) -> Vec<&str> {
        self.veths().iter().flat_map(|v| ["--veth", *v]).collect()
    }

    /// Every flow, each ping run to completion (ping fails without its replies).
    fn send(&self) {
        let ping = format!("ping -c {N} -i 0.05 -W 5 -q");
        // Empty neighbour caches: the IPv6 pings start with neighbour discovery.
        self.a.ns.exec("ip neigh flush all");
        self.b.ns.exec("ip neigh flush all");
        self.a.ns.exec(&format!("{ping} {}", self.b.ip));
        self.b.ns.exec(&format!("{ping} {}", self.a.ip));
        self.a.ns.exec(&format!("{ping} -6 fd00::b"));
        self.r1.ns.exec(&format!("{ping} {}", self.r2.ip));
        self.r1.ns.exec(&format!("{ping} {}", self.gw));
        self.r2.ns.exec(&format!("{ping} {}", self.gw));
        // Pin the IPv6 neighbours now, so no reachability probe (a unicast solicitation some
        // seconds later) falls between the trace's stop and tcpdump's.
        for (pod, addr, peer) in [(&self.a, "fd00::b", &self.b), (&self.b, "fd00::a", &self.a)] {
            pod.ns.exec(&format!(
                "ip -6 neigh replace {addr} lladdr {} dev eth0 nud permanent",
                peer.mac()
            ));
        }
    }
}

fn preconditions() {
    require_root();
    for t in ["tcpdump", "tshark", "ping"] {
        require_tool(t);
    }
}

#[test]
fn trace_lists_exactly_what_tcpdump_sees_on_every_veth() {
    preconditions();
    let lab = Lab::new();
    trace_matches_tcpdump(&lab, || Trace::start(&lab.veth_args(), 4));
}

/// Programs (tcx) on one hook of `veth`.
fn programs_on(veth: &str, ty: aya::programs::TcAttachType) -> usize {
    aya::programs::SchedClassifier::query_tcx(veth, ty)
        .expect("query tcx")
        .1
        .len()
}

/// `trace icmp --connect`: the same packets, from the agent's own programs. The tracer adds no
/// program anywhere, and once it is gone the agent's programs stop writing events.
#[test]
fn trace_through_the_agent_sees_the_same_and_attaches_nothing() {
    use aya::programs::TcAttachType::{Egress, Ingress};
    preconditions();
    let lab = Lab::new();
    let veths = lab.veths();
    let (agent, url) = lab.agent();
    let streams = |agent: &Agent| metric(&agent.metrics(), "node_tracer_trace_streams", &[]);
    assert_eq!(streams(&agent), Some(0.0));
    trace_matches_tcpdump(&lab, || {
        let mut args = vec!["--connect", url.as_str()];
        args.extend(lab.veth_args());
        let trace = Trace::start(&args, 4);
        for v in veths {
            assert_eq!(
                (programs_on(v, Ingress), programs_on(v, Egress)),
                (1, 1),
                "{v}: only the agent's programs"
            );
        }
        assert_eq!(streams(&agent), Some(1.0));
        trace
    });
    // The tracer has gone: within the hub's next tick or two, nobody streams, and pings no
    // longer make events.
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        streams(&agent) == Some(0.0)
    });
    assert!(gone, "the agent still counts a trace stream");
    let sent = |agent: &Agent| metric(&agent.metrics(), "node_tracer_events_sent_total", &[]);
    let before = sent(&agent).expect("events_sent metric");
    assert!(before > 0.0, "the agent's programs wrote the traced events");
    lab.a
        .ns
        .exec(&format!("ping -c 5 -i 0.05 -W 5 -q {}", lab.b.ip));
    assert_eq!(sent(&agent), Some(before), "events written with no tracer");

    // An agent that is not there: one line, non-zero.
    drop(agent);
    let out = node_tracer(&["trace", "icmp", "--connect", &url]);
    assert_one_line_error(&out, "--connect to no agent");
}

/// `trace icmp --connect --write`: the pcapng made from the agent's events holds what the trace
/// printed (so what tcpdump saw, which the printed lines match), packet for packet, with one
/// interface per veth, named after the veth and its pod.
#[test]
fn trace_through_the_agent_writes_a_pcapng_of_what_tcpdump_sees() {
    preconditions();
    let lab = Lab::new();
    let veths = lab.veths();
    let (_agent, url) = lab.agent();
    let tmp = TempDir::new("cpcap");
    let file = tmp.0.join("trace.pcapng");
    let file_arg = file.display().to_string();
    let pkts = trace_matches_tcpdump(&lab, || {
        let mut args = vec!["--connect", url.as_str(), "--write", file_arg.as_str()];
        args.extend(lab.veth_args());
        Trace::start(&args, 4)
    });

    // Every frame of the file: its interface (id, name) and its outer ICMP header.
    let out = sh(&format!(
        "tshark -r {file_arg} -n -T fields -E occurrence=f \
         -e frame.interface_id -e frame.interface_name \
         -e icmp.type -e icmp.ident -e icmp.seq \
         -e icmpv6.type -e icmpv6.echo.identifier -e icmpv6.echo.sequence_number 2>/dev/null"
    ));
    let frames: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        frames.len(),
        pkts.len(),
        "pcapng frames vs printed lines:\n{out}"
    );
    let mut interfaces = BTreeMap::new();
    for (f, p) in frames.iter().zip(&pkts) {
        assert_eq!(f.len(), 8, "{f:?}");
        let (veth, pod) = (p["interface"].as_str().unwrap(), p["pod"].as_str().unwrap());
        assert!(
            f[1].starts_with(&format!("{veth} (")) && f[1].ends_with(&format!("{pod})")),
            "interface {:?} for {p}",
            f[1]
        );
        // One interface per veth: a veth always comes back with the id it was given first.
        let id = *interfaces.entry(veth.to_owned()).or_insert(f[0]);
        assert_eq!(f[0], id, "{veth} on two interfaces: {out}");
        let (ty, ident, seq) = if f[2].is_empty() {
            (f[5], f[6], f[7])
        } else {
            (f[2], f[3], f[4])
        };
        let (_, _, _, want_ty, want_id, want_seq) = key_of_json(p);
        assert_eq!(
            (field(ty), field(ident), field(seq)),
            (Some(u16::from(want_ty)), want_id, want_seq),
            "frame {f:?} for {p}"
        );
    }
    let mut ids: Vec<&str> = interfaces.values().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        (interfaces.len(), ids.len()),
        (veths.len(), veths.len()),
        "one interface per veth: {interfaces:?}"
    );
}

/// A process ended with SIGTERM by its PID (then killed) when the test ends, also on failure.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        node_tracer_tests::stop_child(&mut self.0, Duration::from_secs(10));
    }
}

/// Through the agent, a pod that appears while the trace runs is named on its packets: the
/// tracer reads the agent's snapshot again before it prints a packet of a veth whose pod it
/// does not know yet. (The agent runs in a namespace of its own, so it may follow every veth
/// there, and the pod is named after its network namespace.)
#[test]
fn trace_through_the_agent_names_a_pod_that_appears_during_the_trace() {
    preconditions();
    let node = Netns::new("tn");
    let addr: std::net::SocketAddr = "127.0.0.1:9465".parse().unwrap();
    let in_node = |path: &str| node.in_thread(|| node_tracer_tests::http_get(addr, path));
    let _agent = Stopped(
        node_tracer_in(&node, &["run", "--listen", &addr.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node-tracer run"),
    );
    let ok = |path: &str| matches!(in_node(path), Ok((200, _)));
    assert!(
        (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            ok("/healthz")
        }),
        "the agent did not start"
    );
    let trace = Stopped(
        node_tracer_in(
            &node,
            &["trace", "icmp", "--connect", &format!("http://{addr}")],
        )
        .args(["--json", "--type", "echo-request", "--type", "echo-reply"])
        .args(["--count", "6", "--timeout", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn trace icmp --connect"),
    );
    let streams = || {
        in_node("/metrics")
            .ok()
            .and_then(|(_, m)| metric(&m, "node_tracer_trace_streams", &[]))
    };
    assert!(
        (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            streams() == Some(1.0)
        }),
        "the trace did not connect"
    );

    // Now the pod: a veth whose peer is in a namespace of its own, with an address.
    let pod = Netns::new("tp");
    let net = unique_net();
    let veth = node_tracer_tests::unique("tv");
    node.exec(&format!(
        "ip link add {veth} type veth peer name eth0 netns {p} && \
         ip addr add {net}.1/24 dev {veth} && ip link set {veth} up",
        p = pod.name
    ));
    pod.exec(&format!(
        "ip addr add {net}.2/24 dev eth0 && ip link set eth0 up"
    ));
    // The agent names it a moment after the veth appears.
    let named = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        in_node("/snapshot").is_ok_and(|(_, body)| {
            serde_json::from_str::<Value>(&body).is_ok_and(|v| {
                v["ports"].as_array().is_some_and(|ports| {
                    ports.iter().any(|p| {
                        p["name"] == veth.as_str() && p["pod"]["name"] == pod.name.as_str()
                    })
                })
            })
        })
    });
    assert!(named, "the agent never named {veth}'s pod");
    // Past the tracer's once-a-second limit on re-reading, whatever the pod's link-up chatter
    // made it read before the agent had the name.
    std::thread::sleep(Duration::from_millis(1200));
    pod.exec(&format!("ping -c 3 -i 0.2 -W 5 -q {net}.1"));

    let mut trace = trace;
    let status = trace.0.wait().expect("wait trace");
    let mut out = String::new();
    trace
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    trace
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    let (pkts, _) = packets(&out);
    assert_eq!(pkts.len(), 6, "{out}");
    for p in &pkts {
        assert_eq!(p["interface"], veth.as_str(), "{p}");
        assert_eq!(p["pod"], pod.name.as_str(), "{p}");
    }
}

/// Runs `start`ed trace while the lab sends every flow, and compares its lines with tcpdump on
/// both directions of every veth.
/// Runs the trace `start` gives around `lab.send()`; checks its lines against tcpdump on every
/// veth and returns them, in the order printed.
fn trace_matches_tcpdump(lab: &Lab, start: impl FnOnce() -> Trace) -> Vec<Value> {
    let tmp = TempDir::new("trc");
    let veths = lab.veths();
    // tcpdump -Q in on the host veth sees what the pod transmits.
    let captures: Vec<(&str, &'static str, Capture)> = veths
        .iter()
        .flat_map(|v| [(*v, "in", "transmit"), (*v, "out", "receive")])
        .map(|(v, q, dir)| (v, dir, Capture::start(v, q, &tmp.0)))
        .collect();
    let trace = start();
    lab.send();
    std::thread::sleep(Duration::from_secs(1));
    let (status, stdout, stderr) = trace.stop();
    assert!(status.success(), "trace icmp: {status}: {stderr}");
    let mut tcpdump = Vec::new();
    for (veth, dir, cap) in captures {
        let file = cap.file.clone();
        cap.finish(&[]);
        tcpdump.extend(tshark_keys(&file, veth, dir));
    }

    let (pkts, summary) = packets(&stdout);
    let ours: Vec<Key> = pkts.iter().map(key_of_json).collect();
    let (ours, tcpdump) = (sorted(ours), sorted(tcpdump));
    assert_eq!(
        ours, tcpdump,
        "trace icmp (left) vs tcpdump (right)\nstderr: {stderr}"
    );
    assert_eq!(summary["matched"], pkts.len());
    assert_eq!(summary["lost"], 0);

    // Not two empty lists: what we sent is there, on the veths it crossed.
    let n = N as usize;
    let [a, b, r1, r2] = veths;
    for (veth, dir, fam, ty, want) in [
        (a, "transmit", 4, 8, n),
        (a, "receive", 4, 0, n),
        (b, "receive", 4, 8, n),
        (b, "transmit", 4, 0, n),
        (b, "transmit", 4, 8, n),
        (a, "receive", 4, 8, n),
        (a, "transmit", 6, 128, n),
        (b, "receive", 6, 128, n),
        (b, "transmit", 6, 129, n),
        (a, "receive", 6, 129, n),
        // to r2 and to the gateway
        (r1, "transmit", 4, 8, 2 * n),
        (r1, "receive", 4, 0, 2 * n),
        (r2, "receive", 4, 8, n),
        (r2, "transmit", 4, 0, n),
        (r2, "transmit", 4, 8, n),
        (r2, "receive", 4, 0, n),
    ] {
        assert_eq!(
            count(&ours, veth, dir, fam, ty),
            want,
            "{veth} {dir} icmp{fam} type {ty}: {ours:?}"
        );
    }
    // Neighbour discovery before the first IPv6 echo: a solicits, b advertises.
    assert!(count(&ours, a, "transmit", 6, 135) >= 1, "{ours:?}");
    assert!(count(&ours, b, "receive", 6, 135) >= 1, "{ours:?}");
    assert!(count(&ours, b, "transmit", 6, 136) >= 1, "{ours:?}");
    assert!(count(&ours, a, "receive", 6, 136) >= 1, "{ours:?}");

    // The request a ping sent is the one its peer got: same id and sequence on both veths.
    let requests = |veth: &str, dir: &str| -> Vec<(Option<u16>, Option<u16>)> {
        ours.iter()
            .filter(|k| k.0 == veth && k.1 == dir && k.2 == 6 && k.3 == 128)
            .map(|k| (k.4, k.5))
            .collect()
    };
    assert_eq!(requests(a, "transmit"), requests(b, "receive"));
    assert!(
        requests(a, "transmit")
            .iter()
            .all(|(i, s)| i.is_some() && s.is_some())
    );

    // Every line names its pod: the namespace behind the veth.
    let pods: BTreeMap<&str, &str> = [
        (a, lab.a.ns.name.as_str()),
        (b, lab.b.ns.name.as_str()),
        (r1, lab.r1.ns.name.as_str()),
        (r2, lab.r2.ns.name.as_str()),
    ]
    .into();
    for p in &pkts {
        let veth = p["interface"].as_str().unwrap();
        assert_eq!(p["pod"].as_str(), Some(pods[veth]), "{p}");
    }
    pkts
}

#[test]
fn pcapng_has_one_named_interface_per_veth_and_every_packet() {
    preconditions();
    let net = unique_net();
    let br = Link::bridge("br");
    let a = Pod::bridged("a", &br, &format!("{net}.2"), 24);
    let b = Pod::bridged("b", &br, &format!("{net}.3"), 24);
    let tmp = TempDir::new("pcap");
    let file = tmp.0.join("trace.pcapng");
    let file_arg = file.display().to_string();
    let trace = Trace::start(
        &[
            "--veth",
            &a.veth.name,
            "--veth",
            &b.veth.name,
            "--write",
            &file_arg,
            // This one ends by itself: --timeout, then the file is closed and the summary out.
            "--timeout",
            "10",
        ],
        2,
    );
    a.ns.exec(&format!("ping -c {N} -i 0.05 -W 5 -q {}", b.ip));
    let (status, stdout, stderr) = trace.finish();
    assert!(status.success(), "{status}: {stderr}");
    let (pkts, _) = packets(&stdout);
    // N requests and N replies, each on both veths.
    assert_eq!(
        pkts.iter().filter(|p| p["family"] == 4).count(),
        4 * N as usize,
        "{stdout}"
    );

    let names = sh(&format!(
        "tshark -r {file_arg} -T fields -e frame.interface_name 2>/dev/null"
    ));
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), pkts.len(), "pcapng packets vs JSON lines");
    // In order, packet for packet, the interface named after the veth and its pod.
    for (name, p) in names.iter().zip(&pkts) {
        let veth = p["interface"].as_str().unwrap();
        let pod = if veth == a.veth.name { &a } else { &b };
        assert!(
            name.starts_with(&format!("{veth} (")) && name.ends_with(&format!("{})", pod.ns.name)),
            "{name:?} for {p}"
        );
    }
    // And the frames themselves: the same ICMP types in the same order.
    let types = sh(&format!(
        "tshark -r {file_arg} -T fields -e icmp.type -e icmpv6.type 2>/dev/null"
    ));
    let json_types: Vec<String> = pkts.iter().map(|p| p["type"].to_string()).collect();
    let pcap_types: Vec<String> = types.lines().map(|l| l.trim().to_owned()).collect();
    assert_eq!(pcap_types, json_types);
}

/// The map ids a process holds open (from `/proc/PID/fdinfo`).
fn map_ids(pid: u32) -> Vec<u32> {
    node_tracer_sys::held::held_bpf_objects(Some(pid))
        .into_iter()
        .filter_map(|h| h.map_id)
        .collect()
}

/// The `EVENTS` ring buffer of the process `pid`, opened by id.
fn events_ring(pid: u32) -> aya::maps::RingBuf<aya::maps::MapData> {
    for id in map_ids(pid) {
        let Ok(data) = aya::maps::MapData::from_id(id) else {
            continue;
        };
        if data
            .info()
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_owned))
            == Some("EVENTS".into())
        {
            let map = aya::maps::Map::from_map_data(data).unwrap();
            return aya::maps::RingBuf::try_from(map).unwrap();
        }
    }
    panic!("process {pid} holds no EVENTS map");
}

#[test]
fn without_a_tracer_the_programs_write_no_events() {
    preconditions();
    let net = unique_net();
    let br = Link::bridge("br");
    let a = Pod::bridged("a", &br, &format!("{net}.2"), 24);
    let b = Pod::bridged("b", &br, &format!("{net}.3"), 24);
    let agent = Agent::start(&["-i", &a.veth.name, "-i", &b.veth.name]);
    let mut ring = events_ring(agent.child.id());
    let sent = |agent: &Agent| {
        let m = agent.metrics();
        (
            metric(&m, "node_tracer_events_sent_total", &[]).expect("events_sent metric"),
            metric(&m, "node_tracer_events_lost_total", &[]).expect("events_lost metric"),
            metric(
                &m,
                "node_tracer_icmp_messages_total",
                &[("interface", &a.veth.name), ("type", "icmp_echo_request")],
            )
            .unwrap_or(0.0),
        )
    };

    a.ns.exec(&format!("ping -c 10 -i 0.05 -W 5 -q {}", b.ip));
    let (events, lost, requests) = sent(&agent);
    // The programs did see the pings: they counted them.
    assert!(requests >= 10.0, "echo requests counted: {requests}");
    assert_eq!((events, lost), (0.0, 0.0), "events sent, lost");
    assert!(
        ring.next().is_none(),
        "the agent's EVENTS ring buffer holds an event"
    );

    // A tracer in another process loads its own programs and maps: it gets events, the agent
    // still writes none.
    let trace = Trace::start(&["--veth", &a.veth.name, "--veth", &b.veth.name], 2);
    a.ns.exec(&format!("ping -c 10 -i 0.05 -W 5 -q {}", b.ip));
    let (status, stdout, stderr) = trace.stop();
    assert!(status.success(), "{status}: {stderr}");
    let (pkts, _) = packets(&stdout);
    // Every one of them, though SIGINT came right after the last reply: a stop drains what the
    // programs already wrote.
    assert_eq!(
        pkts.iter().filter(|p| p["family"] == 4).count(),
        40,
        "the tracer saw the 10 pings on both veths: {stdout}"
    );
    let (events, lost, after) = sent(&agent);
    assert!(after >= requests + 10.0);
    assert_eq!((events, lost), (0.0, 0.0), "agent events sent, lost");
    assert!(
        ring.next().is_none(),
        "the agent's EVENTS ring buffer holds an event"
    );
}

fn assert_one_line_error(out: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: exit {}", out.status);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(out.stdout.is_empty(), "{what}: stdout {:?}", out.stdout);
    assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
    assert!(err.starts_with("node-tracer: error: "), "{what}: {err}");
}

#[test]
fn trace_cli_errors_are_one_line_and_fail() {
    require_root();
    let out = node_tracer(&["trace", "icmp", "--type", "echo-bogus"]);
    assert_one_line_error(&out, "bad --type");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("echo-bogus"),
        "the message names the bad value"
    );
    for t in [
        "--timeout=-1",
        "--timeout=0",
        "--timeout=nan",
        "--timeout=inf",
    ] {
        let out = node_tracer(&["trace", "icmp", t]);
        assert_one_line_error(&out, t);
        assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"));
    }
    // Written apart, "-1" reads as a flag to the argument parser: still an error, no panic.
    let out = node_tracer(&["trace", "icmp", "--timeout", "-1"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let out = node_tracer(&["trace", "icmp", "--address", "10.0.0.0/99"]);
    assert_one_line_error(&out, "bad --address");
    let out = node_tracer(&["trace", "icmp", "--veth", "ntt-no-such-veth"]);
    assert_one_line_error(&out, "unknown --veth");
}
