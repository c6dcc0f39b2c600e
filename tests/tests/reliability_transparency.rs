//! Transparency: the programs never change, drop, reorder or hold back a frame, whatever its
//! shape, and return `TCX_NEXT` for every one of them.
//!
//! The lab is a "wire" through the host: pod A's `eth0` ↔ host veth `va`, pod B's `eth0` ↔ host
//! veth `vb`, and on each host veth a clsact `u32` filter matching everything, redirecting every frame to the
//! other veth's egress. Unlike a bridge (br_netfilter is loaded on these machines and drops
//! malformed IP), the redirect forwards any frame as is, so the capture in pod B shows exactly
//! what left `va`'s tc ingress (our `nt_ingress`, then the redirect) and `vb`'s tc egress (our
//! `nt_egress`). The redirect is also "another tool's tc program" running after ours.

use std::{
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use node_tracer_tests::{
    Agent, Capture, KernelCounters, Link, Netns, TempDir, metric, quiet_ipv6, require_root,
    require_tool, sh, unique,
};

/// Crafts frames of every shape, writes them (hex, one per line) to argv[2] and sends them in
/// order from argv[1] with an `AF_PACKET` raw socket. Source MAC 02:4e:54:00:00:01 marks them.
const CRAFT: &str = r#"
import random, socket, struct, sys
random.seed(9)
SRC = bytes.fromhex("024e54000001"); DST = bytes.fromhex("024e54fffffe")
def eth(t, p): return DST + SRC + struct.pack("!H", t) + p
def ip4(proto, payload, frag=0, ihl=5, total=None):
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total or 20 + len(payload), 7, frag, 64, proto, 0,
                    bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return h + b"\0" * (ihl * 4 - 20) + payload
def ip6(nh, payload):
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + b"\xfd" + b"\0" * 14 + b"\1" + b"\xfd" + b"\0" * 14 + b"\2" + payload
def ext(nh, n): return bytes([nh, n]) + b"\1\4" + b"\0" * (n * 8 + 4)
icmp = b"\x08\0\0\0\0\1\0\1" + b"x" * 32
udp = struct.pack("!HHHH", 1, 2, 40, 0) + b"u" * 32
frames = []
for n in range(150):   # random bytes after a fixed Ethernet address pair
    frames.append(DST + SRC + random.randbytes(random.randint(2, 1500)))
for n in range(40):    # random bytes behind each ethertype we parse
    for t in (0x0800, 0x86dd, 0x0806, 0x8100, 0x88a8):
        frames.append(eth(t, random.randbytes(random.randint(0, 80))))
full4 = ip4(6, struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 0x50, 2, 512, 0, 0))
full6 = ip6(58, icmp)
for cut in range(0, len(full4)):   # truncated IPv4 and TCP headers
    frames.append(eth(0x0800, full4[:cut]))
for cut in range(0, len(full6), 3):  # truncated IPv6 and ICMPv6 headers
    frames.append(eth(0x86dd, full6[:cut]))
frames.append(eth(0x0806, b"\0\1\x08\0\6\4"))  # truncated ARP
frames.append(eth(0x0800, ip4(1, icmp, ihl=15)))  # IPv4 with options
frames.append(eth(0x0800, ip4(1, icmp, ihl=3)))   # bogus IHL
frames.append(eth(0x0800, ip4(17, udp, total=65535)))  # lying total length
vlan = lambda tag, t, p: struct.pack("!HH", tag, t) + p
frames.append(eth(0x8100, vlan(10, 0x0800, ip4(17, udp))))
frames.append(eth(0x8100, vlan(11, 0x86dd, ip6(58, icmp))))
frames.append(eth(0x88a8, vlan(20, 0x8100, vlan(21, 0x0800, ip4(1, icmp)))))  # QinQ
frames.append(eth(0x88a8, vlan(20, 0x8100, vlan(21, 0x8100, vlan(22, 0x0800, ip4(1, icmp))))))  # 3 tags
for depth in (1, 7, 8, 9, 12, 30):  # IPv6 extension-header chains, longer than we walk
    chain = icmp; nh = 58
    for i in range(depth):
        kind = (0, 60, 43, 51)[i % 4]
        if kind == 51:
            chain = bytes([nh, 2]) + b"\0" * 10 + chain  # AH: (2 + 2) * 4 bytes
        else:
            chain = ext(nh, 1) + chain
        nh = kind
    frames.append(eth(0x86dd, ip6(nh, chain)))
frames.append(eth(0x86dd, ip6(0, bytes([58, 255]) + b"\0" * 6)))  # hop-by-hop claiming 2 KiB
for off, mf in ((0, 1), (1, 1), (2, 0)):  # IPv4 fragments of an ICMP echo
    frames.append(eth(0x0800, ip4(1, icmp if off == 0 else b"y" * 8, frag=(mf << 13) | off)))
for off, m in ((0, 1), (8, 0)):  # IPv6 fragments
    frames.append(eth(0x86dd, ip6(44, struct.pack("!BBHI", 58, 0, (off << 3) | m, 99) + icmp)))
frames.append(eth(0x0800, ip4(17, struct.pack("!HHHH", 1, 2, 8980, 0) + b"j" * 8972)))  # jumbo
frames.append(DST + SRC + random.randbytes(9000))  # jumbo noise
frames.append(DST + SRC + b"\x08\x00")  # header only
# The u32 redirect reads 4 bytes past the (VLAN-stripped) Ethernet header; shorter frames are
# left to the host stack, so the wire cannot carry them. test_run fuzzing covers those lengths.
def carried(fr):
    tagged = fr[12:14] in (b"\x81\x00", b"\x88\xa8") and len(fr) >= 18
    return len(fr) - (18 if tagged else 14) >= 4
frames = [fr for fr in frames if carried(fr)]
with open(sys.argv[2], "w") as f:
    for fr in frames:
        f.write(fr.hex() + "\n")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
import time
for fr in frames:
    s.send(fr)
    time.sleep(0.0005)  # stay under the per-CPU backlog: a drop there is not ours to test
"#;

/// Two pods joined through the host by tc redirects.
struct Wire {
    a: Netns,
    b: Netns,
    va: Link,
    vb: Link,
}

impl Wire {
    fn new() -> Self {
        let a = Netns::new("ta");
        let b = Netns::new("tb");
        let va = Link { name: unique("va") };
        let vb = Link { name: unique("vb") };
        for (ns, v) in [(&a, &va), (&b, &vb)] {
            quiet_ipv6(Some(ns), "default");
            sh(&format!(
                "ip link add {} mtu 9000 type veth peer name eth0 mtu 9000 netns {}",
                v.name, ns.name
            ));
            quiet_ipv6(None, &v.name);
            sh(&format!("ip link set {} up", v.name));
            ns.exec("ip link set eth0 up");
        }
        for (from, to) in [(&va, &vb), (&vb, &va)] {
            sh(&format!(
                // u32 matching everything: this kernel has no cls_matchall.
                "tc qdisc add dev {f} clsact && tc filter add dev {f} ingress prio 100 u32 \
                 match u32 0 0 action mirred egress redirect dev {t}",
                f = from.name,
                t = to.name
            ));
        }
        // Let link-up chatter pass.
        std::thread::sleep(Duration::from_millis(500));
        Self { a, b, va, vb }
    }
}

/// tcpdump inside a namespace, stopped by its PID.
struct NsCapture(Capture);

impl NsCapture {
    fn start(ns: &Netns, filter: &str, dir: &Path, tag: &str) -> Self {
        let file = dir.join(format!("{tag}.pcap"));
        Self(Capture::spawn(
            Command::new("ip")
                .args([
                    "netns", "exec", &ns.name, "tcpdump", "-i", "eth0", "-Q", "in",
                ])
                .args(["-n", "-U", "--immediate-mode", "-s", "0", "-w"])
                .arg(&file)
                .arg(filter),
            file,
        ))
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns every captured frame.
    fn finish(self) -> Vec<Vec<u8>> {
        read_pcap(&self.0.stop())
    }
}

/// Frames of a classic little-endian pcap file, in order.
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(data.len() >= 24, "pcap too short");
    assert_eq!(&data[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian pcap");
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[off + 8..off + 12].try_into().unwrap()) as usize;
        let orig = u32::from_le_bytes(data[off + 12..off + 16].try_into().unwrap()) as usize;
        assert_eq!(incl, orig, "frame truncated by the capture");
        out.push(data[off + 16..off + 16 + incl].to_vec());
        off += 16 + incl;
    }
    out
}

/// Sends the crafted frames from pod A and returns (sent, captured in pod B).
fn send_crafted(wire: &Wire, tmp: &TempDir, tag: &str) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let script = tmp.0.join("craft.py");
    std::fs::write(&script, CRAFT).unwrap();
    let sent_file = tmp.0.join(format!("{tag}.hex"));
    let cap = NsCapture::start(&wire.b, "ether src 02:4e:54:00:00:01", &tmp.0, tag);
    // One CPU: one sender queue, so the order on the wire is the order of the sends.
    wire.a.exec(&format!(
        "taskset -c 0 python3 {} eth0 {}",
        script.display(),
        sent_file.display()
    ));
    std::thread::sleep(Duration::from_millis(500));
    let got = cap.finish();
    let sent = std::fs::read_to_string(&sent_file)
        .unwrap()
        .lines()
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect();
    (sent, got)
}

fn first_difference(a: &[Vec<u8>], b: &[Vec<u8>]) -> String {
    let missing: Vec<String> = a
        .iter()
        .enumerate()
        .filter(|(_, f)| !b.contains(f))
        .map(|(i, f)| format!("#{i} {}B {:02x?}", f.len(), &f[12..f.len().min(20)]))
        .collect();
    eprintln!("missing: {missing:?}");
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "frame {i} differs:\n  {:02x?}\n  {:02x?}",
            &a[i][..a[i].len().min(64)],
            &b[i][..b[i].len().min(64)]
        ),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

fn port_packets(agent: &Agent, veth: &str, family: &str) -> u64 {
    metric(&agent.metrics(), family, &[("interface", veth)]).unwrap_or(0.0) as u64
}

#[test]
fn frames_of_every_shape_arrive_byte_identical_and_in_order() {
    require_root();
    require_tool("tcpdump");
    require_tool("python3");
    require_tool("taskset");
    let wire = Wire::new();
    let tmp = TempDir::new("tr");

    let (sent, without) = send_crafted(&wire, &tmp, "without");
    assert!(sent.len() > 400, "{} frames crafted", sent.len());
    assert!(
        sent == without,
        "without node-tracer the wire is not transparent: {}",
        first_difference(&sent, &without)
    );

    let agent = Agent::start(&["-i", &wire.va.name, "-i", &wire.vb.name]);
    let k_before = KernelCounters::read(&wire.va.name);
    let tx_before = port_packets(&agent, &wire.va.name, "node_tracer_transmit_packets_total");
    let rx_before = port_packets(&agent, &wire.vb.name, "node_tracer_receive_packets_total");
    let (_, with) = send_crafted(&wire, &tmp, "with");
    let k_after = KernelCounters::read(&wire.va.name);
    assert!(
        without == with,
        "with node-tracer attached frames changed: {}",
        first_difference(&without, &with)
    );
    // Our programs saw every frame, on both hops, exactly as often as the kernel did.
    let tx = port_packets(&agent, &wire.va.name, "node_tracer_transmit_packets_total") - tx_before;
    let rx = port_packets(&agent, &wire.vb.name, "node_tracer_receive_packets_total") - rx_before;
    assert_eq!(tx, k_after.rx_packets - k_before.rx_packets, "va ingress");
    assert!(
        tx >= sent.len() as u64,
        "va ingress saw {tx} < {}",
        sent.len()
    );
    assert!(
        rx >= sent.len() as u64,
        "vb egress saw {rx} < {}",
        sent.len()
    );
    // The redirect after ours ran: nothing stopped at our program.
    let filters = sh(&format!("tc -s filter show dev {} ingress", wire.va.name));
    assert!(filters.contains("mirred"), "{filters}");
}

#[test]
fn gso_super_packets_pass_intact() {
    require_root();
    require_tool("python3");
    require_tool("ethtool");
    let wire = Wire::new();
    wire.a.exec(
        "ip addr add 10.77.0.1/24 dev eth0 && ethtool -K eth0 tso on gso on 2>/dev/null; true",
    );
    wire.b
        .exec("ip addr add 10.77.0.2/24 dev eth0 && ethtool -K eth0 gro on 2>/dev/null; true");
    let agent = Agent::start(&["-i", &wire.va.name, "-i", &wire.vb.name]);
    let k_before = KernelCounters::read(&wire.va.name);
    let tx_before = port_packets(&agent, &wire.va.name, "node_tracer_transmit_packets_total");
    let bytes_before = port_packets(&agent, &wire.va.name, "node_tracer_transmit_bytes_total");
    // 32 MiB of a known pattern; the receiver prints its SHA-256.
    let recv = "import socket,hashlib;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);\
                s.bind((\"10.77.0.2\",7000));s.listen();c,_=s.accept();h=hashlib.sha256()\n\
                while True:\n d=c.recv(1<<20)\n if not d: break\n h.update(d)\nprint(h.hexdigest())";
    let send = "import socket,hashlib,time\nfor i in range(100):\n try:\n  s=socket.create_connection((\"10.77.0.2\",7000));break\n \
                except OSError: time.sleep(0.1)\nb=bytes(range(256))*4096;h=hashlib.sha256()\n\
                for i in range(32):\n s.sendall(b);h.update(b)\ns.close();print(h.hexdigest())";
    let b_ns = wire.b.name.clone();
    let recv_s = recv.to_string();
    let server = std::thread::spawn(move || {
        sh(&format!("ip netns exec {b_ns} python3 -c '{recv_s}'"))
            .trim()
            .to_string()
    });
    let sent = wire.a.exec(&format!("python3 -c '{send}'"));
    let got = server.join().expect("receiver");
    assert_eq!(sent.trim(), got, "the byte stream changed on the way");
    let k_after = KernelCounters::read(&wire.va.name);
    let tx = port_packets(&agent, &wire.va.name, "node_tracer_transmit_packets_total") - tx_before;
    let bytes =
        port_packets(&agent, &wire.va.name, "node_tracer_transmit_bytes_total") - bytes_before;
    let k_tx = k_after.rx_packets - k_before.rx_packets;
    assert_eq!(tx, k_tx, "packets seen vs kernel");
    assert_eq!(
        bytes,
        k_after.rx_bytes - k_before.rx_bytes,
        "bytes vs kernel"
    );
    // Offloads on: the skbs we saw were super-packets, larger than any frame the MTU allows.
    assert!(
        bytes / tx.max(1) > 9014,
        "no GSO super-packets: {bytes} bytes in {tx} packets"
    );
}

/// `tx_dropped` of `veth`: what the kernel gave up sending to it.
fn tx_dropped(veth: &str) -> u64 {
    node_tracer_tests::iface_stat(veth, "tx_dropped")
}

/// A ping flood, killed when the test ends (also on failure) if still running.
struct Flood(std::process::Child);

impl Drop for Flood {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Attaching and detaching do not drop either. tcx (the default) never touches a qdisc; adding
/// or removing a clsact qdisc on an up device deactivates it for a moment and drops what is sent
/// to it meanwhile, which is why netlink mode and fast-start are not the default. Ten agent
/// starts and stops, all under one ping flood, lose no packet in the default mode.
#[test]
fn starting_and_stopping_in_the_default_mode_drops_nothing() {
    require_root();
    require_tool("ping");
    let br = Link::bridge("td");
    let net = node_tracer_tests::unique_net();
    let a = node_tracer_tests::Pod::bridged("tda", &br, &format!("{net}.2"), 24);
    let b = node_tracer_tests::Pod::bridged("tdb", &br, &format!("{net}.3"), 24);
    std::thread::sleep(Duration::from_millis(500));
    let (da, db) = (tx_dropped(&a.veth.name), tx_dropped(&b.veth.name));
    // The flood runs until the ten cycles are done (its own deadline, ten minutes, only
    // catches a hang): every start and stop happens under it, however slow the machine.
    let mut flood = Flood(
        Command::new("ip")
            .args([
                "netns", "exec", &a.ns.name, "ping", "-f", "-q", "-w", "600", &b.ip,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the ping flood"),
    );
    for cycle in 0..10 {
        let agent = Agent::start(&["-i", &a.veth.name, "-i", &b.veth.name]);
        std::thread::sleep(Duration::from_millis(100));
        drop(agent);
        assert!(
            flood.0.try_wait().expect("poll the flood").is_none(),
            "the flood ended before cycle {cycle} was over"
        );
    }
    // SIGINT: ping stops and prints its summary (`ip netns exec` execs ping, same PID).
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(flood.0.id() as i32, libc::SIGINT) };
    let mut summary = String::new();
    flood
        .0
        .stdout
        .take()
        .expect("the flood's stdout")
        .read_to_string(&mut summary)
        .expect("the flood's summary");
    let _ = flood.0.wait();
    let received = summary
        .split(',')
        .find(|part| part.contains("received"))
        .unwrap_or_else(|| panic!("no summary from the flood: {summary}"))
        .trim()
        .to_owned();
    assert_eq!(
        (tx_dropped(&a.veth.name) - da, tx_dropped(&b.veth.name) - db),
        (0, 0),
        "nothing dropped sending to the pods ({received})"
    );
}
