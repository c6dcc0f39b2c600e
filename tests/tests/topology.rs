//! `topology::scan` and `topology::watch` against the real kernel: real veths, bridges and
//! namespaces, compared with the kernel's own view (`ip -j -d link`, `/sys/class/net`).
//!
//! Other tests create veths in parallel, so every assertion looks only at this test's objects.

use std::{
    fmt::Write as _,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use node_tracer::{
    model::{Mode, Port},
    topology::{self, LinkEvent, ScanOptions, Topology},
};
use node_tracer_tests::{Link, Netns, Pod, ifindex, require_root, sh, sh_output, unique};
use serde_json::Value;

async fn scan() -> Topology {
    topology::scan(&ScanOptions::default()).await.expect("scan")
}

fn port<'a>(topo: &'a Topology, name: &str) -> &'a Port {
    topo.ports
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} missing from scan: {:?}", names(topo)))
}

fn names(topo: &Topology) -> Vec<&str> {
    topo.ports.iter().map(|p| p.name.as_str()).collect()
}

/// The kernel's detailed view of a host link (`ip -j -d link show dev NAME`).
fn ip_link(name: &str) -> Value {
    let out = sh(&format!("ip -j -d link show dev {name}"));
    let v: Value = serde_json::from_str(&out).expect("ip -j JSON");
    v[0].clone()
}

fn sys(name: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{file}"))
        .unwrap_or_else(|e| panic!("{name}/{file}: {e}"))
        .trim()
        .to_string()
}

fn inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .ino()
}

/// An address block no other test uses: 100.64.0.0/10 carved by PID and call.
fn unique_net() -> (u8, u8) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let id = std::process::id().wrapping_mul(7).wrapping_add(n);
    (64 + (id % 64) as u8, ((id / 64) % 256) as u8)
}

#[tokio::test]
async fn bridged_ports_match_the_kernel() {
    require_root();
    let br = Link::bridge("br");
    let (a, b) = unique_net();
    let pod1 = Pod::bridged("p1", &br, &format!("100.{a}.{b}.2"), 24);
    let pod2 = Pod::bridged("p2", &br, &format!("100.{a}.{b}.3"), 24);
    sh(&format!(
        "bridge link set dev {} hairpin on",
        pod1.veth.name
    ));
    sh(&format!("ip link set {} promisc on", pod2.veth.name));

    let topo = scan().await;
    for pod in [&pod1, &pod2] {
        let p = port(&topo, &pod.veth.name);
        let kernel = ip_link(&pod.veth.name);
        let slave = &kernel["linkinfo"]["info_slave_data"];
        assert_eq!(p.ifindex, ifindex(&pod.veth.name));
        assert_eq!(p.mode, Mode::Bridged);
        assert_eq!(p.master.as_deref(), Some(br.name.as_str()));
        let no = u16::from_str_radix(slave["no"].as_str().unwrap().trim_start_matches("0x"), 16)
            .unwrap();
        assert_eq!(p.port_no, Some(no), "bridge port number");
        assert_eq!(p.hairpin, slave["hairpin"].as_bool().unwrap());
        let kernel_promisc = kernel["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "PROMISC");
        assert_eq!(p.promiscuous, kernel_promisc);
        assert_eq!(p.mac.as_deref(), kernel["address"].as_str());

        let peer = p.peer.as_ref().expect("peer");
        assert_eq!(peer.ifindex.to_string(), sys(&pod.veth.name, "iflink"));
        assert_eq!(peer.name.as_deref(), Some("eth0"));
        assert_eq!(peer.mac.as_deref(), Some(pod.mac().as_str()));
        assert_eq!(peer.addresses.first(), Some(&format!("{}/24", pod.ip)));
        assert_eq!(
            peer.netnsid,
            kernel["link_netnsid"].as_i64().map(|i| i as i32)
        );
        assert_eq!(peer.netns.as_deref(), Some(pod.ns.path().as_str()));
        assert_eq!(peer.netns_inode, Some(inode(&pod.ns.path())));
    }
    assert!(port(&topo, &pod1.veth.name).hairpin);
    assert!(port(&topo, &pod2.veth.name).promiscuous);
    assert_ne!(
        port(&topo, &pod1.veth.name).port_no,
        port(&topo, &pod2.veth.name).port_no
    );

    let bridge = topo
        .bridges
        .iter()
        .find(|b| b.name == br.name)
        .expect("bridge listed");
    let mut members = vec![pod1.veth.name.clone(), pod2.veth.name.clone()];
    members.sort();
    assert_eq!(bridge.ports, members);
    assert_eq!(bridge.ifindex, br.ifindex());
    assert_eq!(bridge.mac, Some(sys(&br.name, "address")));
}

/// Seed trap: `veth591ea0bf@if3` where host ifindex 3 is `docker0`. The pod's link is given the
/// same ifindex as a host bridge; the peer must be the pod's link, never the bridge.
#[tokio::test]
async fn peer_ifindex_that_collides_with_a_host_link_resolves_in_the_pod() {
    require_root();
    let decoy = Link::bridge("dk");
    let ns = Netns::new("col");
    let veth = Link { name: unique("v") };
    let inner = unique("in");
    // Made inside the pod with the decoy's ifindex, then the host end moves out to us.
    sh(&format!(
        "ip -n {ns} link add {inner} index {idx} type veth peer name {v} && \
         ip -n {ns} link set {v} netns {pid}",
        v = veth.name,
        idx = decoy.ifindex(),
        ns = ns.name,
        pid = std::process::id()
    ));
    let inner_mac = ns
        .exec(&format!("cat /sys/class/net/{inner}/address"))
        .trim()
        .to_string();
    let inner_index: u32 = ns
        .exec(&format!("cat /sys/class/net/{inner}/ifindex"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        inner_index,
        decoy.ifindex(),
        "the test must make the ifindexes collide"
    );

    let topo = scan().await;
    let peer = port(&topo, &veth.name).peer.clone().expect("peer");
    assert_eq!(peer.ifindex, decoy.ifindex());
    assert_eq!(peer.name.as_deref(), Some(inner.as_str()));
    assert_eq!(peer.mac.as_deref(), Some(inner_mac.as_str()));
    assert_ne!(peer.mac, Some(sys(&decoy.name, "address")));
    assert_eq!(peer.netns.as_deref(), Some(ns.path().as_str()));
}

/// Seed trap: GKE's routed veths all carry the same /32 and no bridge.
#[tokio::test]
async fn routed_veths_share_one_address_and_differ_by_route() {
    require_root();
    let (a, b) = unique_net();
    let gw = format!("100.{a}.{b}.1");
    let pods: Vec<Pod> = (2..5)
        .map(|i| Pod::routed("rt", &format!("100.{a}.{b}.{i}"), &gw))
        .collect();

    let topo = scan().await;
    let mut inodes = Vec::new();
    for pod in &pods {
        let p = port(&topo, &pod.veth.name);
        assert_eq!(p.mode, Mode::Routed);
        assert_eq!(p.master, None);
        assert_eq!(p.port_no, None);
        // The kernel adds an IPv6 link-local address on its own; the IPv4 one is the shared /32.
        let v4: Vec<&String> = p.addresses.iter().filter(|a| !a.contains(':')).collect();
        assert_eq!(v4, [&format!("{gw}/32")]);
        assert_eq!(p.routes, [format!("{}/32", pod.ip)]);
        let peer = p.peer.as_ref().expect("peer");
        assert_eq!(peer.name.as_deref(), Some("eth0"));
        assert_eq!(peer.mac.as_deref(), Some(pod.mac().as_str()));
        assert_eq!(peer.addresses.first(), Some(&format!("{}/32", pod.ip)));
        assert_eq!(peer.netns.as_deref(), Some(pod.ns.path().as_str()));
        assert_eq!(
            peer.netnsid,
            ip_link(&pod.veth.name)["link_netnsid"]
                .as_i64()
                .map(|i| i as i32)
        );
        inodes.push(peer.netns_inode.expect("inode"));
    }
    inodes.sort_unstable();
    inodes.dedup();
    assert_eq!(
        inodes.len(),
        pods.len(),
        "each veth leads to its own namespace"
    );
    assert!(topo.bridges.iter().all(|br| {
        br.ports
            .iter()
            .all(|n| !pods.iter().any(|p| &p.veth.name == n))
    }));
}

/// A process that holds a network namespace, killed by its PID on drop.
struct Holder(Child);

impl Holder {
    fn new() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let holder = Self(child);
        let own = inode("/proc/self/ns/net");
        let path = holder.ns_path();
        let start = Instant::now();
        // unshare execs sleep only after entering the new namespace.
        while std::fs::metadata(&path).map_or(own, |m| m.ino()) == own {
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "unshare did not switch namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        holder
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn ns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seed trap: a container namespace that no `/run/netns` file names.
#[tokio::test]
async fn peer_in_a_namespace_held_only_by_a_process() {
    require_root();
    let holder = Holder::new();
    let veth = Link { name: unique("v") };
    let inner = unique("in");
    sh(&format!(
        "ip link add {} type veth peer name {inner}",
        veth.name
    ));
    let inner_mac = sys(&inner, "address");
    sh(&format!("ip link set {inner} netns {}", holder.pid()));

    let topo = scan().await;
    let peer = port(&topo, &veth.name).peer.clone().expect("peer");
    assert_eq!(peer.name.as_deref(), Some(inner.as_str()));
    assert_eq!(peer.mac.as_deref(), Some(inner_mac.as_str()));
    assert_eq!(peer.ifindex.to_string(), sys(&veth.name, "iflink"));
    assert_eq!(peer.netns.as_deref(), Some(holder.ns_path().as_str()));
    assert_eq!(peer.netns_inode, Some(inode(&holder.ns_path())));
    assert_eq!(
        peer.netnsid,
        ip_link(&veth.name)["link_netnsid"]
            .as_i64()
            .map(|i| i as i32)
    );
    assert!(peer.netnsid.is_some());
}

#[tokio::test]
async fn peer_in_the_host_namespace() {
    require_root();
    let a = Link { name: unique("v") };
    let b = unique("v");
    sh(&format!(
        "ip link add {} type veth peer name {b} && ip addr add fd00:{:x}::1/64 dev {b}",
        a.name,
        std::process::id() & 0xffff
    ));

    let topo = scan().await;
    let pa = port(&topo, &a.name);
    let peer = pa.peer.as_ref().expect("peer");
    assert_eq!(peer.ifindex, ifindex(&b));
    assert_eq!(peer.name.as_deref(), Some(b.as_str()));
    assert_eq!(peer.mac, Some(sys(&b, "address")));
    assert_eq!(peer.netnsid, None);
    assert_eq!(peer.netns, None);
    assert_eq!(peer.netns_inode, Some(inode("/proc/self/ns/net")));
    assert!(
        peer.addresses.iter().any(|c| c.starts_with("fd00:")),
        "{:?}",
        peer.addresses
    );
    assert_eq!(pa.mode, Mode::Unattached);
    // The other end is a host veth too, and points back.
    let pb = port(&topo, &b);
    assert_eq!(
        pb.peer.as_ref().and_then(|p| p.name.as_deref()),
        Some(a.name.as_str())
    );
}

/// Seed trap: GKE's `docker0` has no ports and must still be listed.
#[tokio::test]
async fn bridge_without_ports_is_listed() {
    require_root();
    let br = Link::bridge("eb");
    let (a, b) = unique_net();
    sh(&format!("ip addr add 100.{a}.{b}.1/24 dev {}", br.name));
    let topo = scan().await;
    let bridge = topo
        .bridges
        .iter()
        .find(|x| x.name == br.name)
        .expect("empty bridge listed");
    assert!(bridge.ports.is_empty());
    assert_eq!(bridge.ifindex, br.ifindex());
    assert_eq!(bridge.mac, Some(sys(&br.name, "address")));
    assert_eq!(bridge.addresses.first(), Some(&format!("100.{a}.{b}.1/24")));
    assert!(
        topo.ports.iter().all(|p| p.name != br.name),
        "a bridge is not a port"
    );
}

/// When no namespace file reaches the peer's namespace, the scan still succeeds and says what it
/// knows (ifindex, nsid) without inventing the rest.
#[tokio::test]
async fn unreachable_peer_namespace_leaves_fields_empty() {
    require_root();
    let (a, b) = unique_net();
    let pod = Pod::routed("un", &format!("100.{a}.{b}.2"), &format!("100.{a}.{b}.1"));
    let opts = ScanOptions {
        extra_netns_paths: vec!["/nonexistent/netns".into()],
        netns_dir: "/nonexistent/run-netns".into(),
        ..ScanOptions::default()
    };
    let topo = topology::scan(&opts).await.expect("scan");
    let p = port(&topo, &pod.veth.name);
    let peer = p.peer.as_ref().expect("peer");
    assert_eq!(peer.ifindex.to_string(), sys(&pod.veth.name, "iflink"));
    assert!(peer.netnsid.is_some());
    assert_eq!(peer.name, None);
    assert_eq!(peer.mac, None);
    assert_eq!(peer.netns, None);
    // The host side does not depend on the peer.
    assert_eq!(p.mode, Mode::Routed);

    // An extra path is enough to reach it again, a file or a directory of them.
    let by_file = ScanOptions {
        extra_netns_paths: vec![pod.ns.path().into()],
        ..opts.clone()
    };
    let topo = topology::scan(&by_file).await.expect("scan");
    let peer = port(&topo, &pod.veth.name).peer.clone().expect("peer");
    assert_eq!(peer.name.as_deref(), Some("eth0"));
    assert_eq!(peer.netns.as_deref(), Some(pod.ns.path().as_str()));
    let opts = ScanOptions {
        extra_netns_paths: vec!["/run/netns".into()],
        ..opts
    };
    let topo = topology::scan(&opts).await.expect("scan");
    let peer = port(&topo, &pod.veth.name).peer.clone().expect("peer");
    assert_eq!(peer.name.as_deref(), Some("eth0"));
    assert_eq!(peer.netns.as_deref(), Some(pod.ns.path().as_str()));
}

async fn next_event(w: &mut topology::LinkWatcher, want: impl Fn(&LinkEvent) -> bool) -> LinkEvent {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, w.next())
            .await
            .expect("timed out waiting for a link event")
            .expect("watcher ended");
        if want(&ev) {
            return ev;
        }
    }
}

/// Many links made at once with `ip -batch`, removed on drop (also when the test fails).
struct Batch {
    undo: PathBuf,
}

impl Batch {
    fn run(commands: &str, undo: &str) -> Self {
        let file = std::env::temp_dir().join(format!("{}.batch", unique("b")));
        let batch = Self {
            undo: file.with_extension("undo"),
        };
        std::fs::write(&batch.undo, undo).unwrap();
        std::fs::write(&file, commands).unwrap();
        let out = sh_output(&format!("ip -batch {}", file.display()));
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "ip -batch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        batch
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let _ = sh_output(&format!("ip -force -batch {}", self.undo.display()));
        let _ = std::fs::remove_file(&self.undo);
    }
}

/// A veth's own events, or a `Resync` (another test's burst of veths may overrun our socket;
/// then the caller's answer is a rescan, and so is ours).
fn about(name: &str) -> impl Fn(&LinkEvent) -> bool + '_ {
    move |e| match e {
        LinkEvent::Added { name: n, .. }
        | LinkEvent::Removed { name: n, .. }
        | LinkEvent::PortChanged { name: n, .. } => n == name,
        LinkEvent::Resync => true,
    }
}

#[tokio::test]
async fn watch_reports_veths_added_and_removed() {
    require_root();
    let mut w = topology::watch().expect("watch");
    let ns = Netns::new("w");
    let veth = Link { name: unique("v") };
    // A bridge made first: had it been reported, it would be the first event below.
    let br = Link::bridge("wb");
    sh(&format!(
        "ip link add {} type veth peer name eth0 netns {}",
        veth.name, ns.name
    ));
    let idx = ifindex(&veth.name);
    let name = veth.name.clone();
    let ev = next_event(&mut w, |e| about(&name)(e) || about(&br.name)(e)).await;
    if ev == LinkEvent::Resync {
        assert!(
            scan()
                .await
                .ports
                .iter()
                .any(|p| p.name == name && p.ifindex == idx)
        );
    } else {
        assert_eq!(
            ev,
            LinkEvent::Added {
                ifindex: idx,
                name: name.clone()
            }
        );
    }

    // A flag change is not a new veth: the next event about it must be its removal.
    sh(&format!("ip link set {name} up"));
    drop(veth);
    let ev = next_event(&mut w, about(&name)).await;
    if ev == LinkEvent::Resync {
        assert!(scan().await.ports.iter().all(|p| p.name != name));
    } else {
        assert_eq!(ev, LinkEvent::Removed { ifindex: idx, name });
    }
}

/// Hundreds of veths at once overrun the socket: the watcher must say so, not go quiet.
#[tokio::test]
async fn watch_reports_resync_when_notifications_are_lost() {
    require_root();
    let mut w = topology::watch().expect("watch");
    let mut add = String::new();
    let mut del = String::new();
    for _ in 0..150 {
        let n = unique("ov");
        let _ = writeln!(add, "link add {n} type veth peer name {n}p");
        let _ = writeln!(del, "link del {n}");
    }
    // Nobody reads the socket while 300 links appear.
    let _links = Batch::run(&add, &del);
    let ev = next_event(&mut w, |e| *e == LinkEvent::Resync).await;
    assert_eq!(ev, LinkEvent::Resync);
}

/// Many pods at once: every peer resolves. `NTT_SCAN_PODS` sets how many (200 by default, so the
/// suite stays quick; 1000 is the design target). How long it takes is the bench's business
/// (`peers_1000_s`): a timed assertion here would fail on a busy machine, not on a slow scan.
#[tokio::test]
async fn scan_of_many_pods_resolves_every_peer() {
    require_root();
    let n: usize = std::env::var("NTT_SCAN_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let pods: Vec<(String, String)> = (0..n).map(|_| (unique("bn"), unique("bv"))).collect();
    let mut add = String::new();
    let mut del = String::new();
    for (ns, v) in &pods {
        let _ = writeln!(
            add,
            "netns add {ns}\nlink add {v} type veth peer name eth0 netns {ns}"
        );
        let _ = writeln!(del, "link del {v}\nnetns del {ns}");
    }
    let _pods = Batch::run(&add, &del);

    let start = Instant::now();
    let topo = scan().await;
    let took = start.elapsed();
    let mut resolved = 0;
    for (ns, v) in &pods {
        let peer = port(&topo, v).peer.clone().expect("peer");
        assert_eq!(peer.netns, Some(format!("/run/netns/{ns}")));
        assert_eq!(peer.name.as_deref(), Some("eth0"));
        resolved += 1;
    }
    assert_eq!(resolved, n);
    eprintln!(
        "scan of {} ports ({n} pods) took {took:?}",
        topo.ports.len()
    );
}

/// A pod of the private node: its own namespace, a veth from the node into it, and (optionally)
/// an address on its end.
fn node_pod(node: &Netns, addr: Option<&str>) -> (Netns, String) {
    let pod = Netns::new("sp");
    let veth = unique("sv");
    node.exec(&format!(
        "ip link add {veth} type veth peer name eth0 netns {}",
        pod.name
    ));
    if let Some(a) = addr {
        pod.exec(&format!("ip addr add {a}/24 dev eth0"));
    }
    (pod, veth)
}

/// The agent rescans after every burst of link events; on a node with 1,000 pods a full scan
/// enters 1,000 namespaces. A [`topology::Scanner`] enters only new or changed ones, and must
/// still never serve a stale peer: one without the address the runtime added later, one of a
/// namespace that is gone (its nsid may be handed to the next one), or one read before a
/// netlink overrun (`forget`).
#[test]
fn rescans_enter_only_new_or_changed_namespaces() {
    require_root();
    let node = Netns::new("sn");
    let (a, b) = unique_net();
    let ip = |i: u8| format!("100.{a}.{b}.{i}");
    let mut pods: Vec<(Netns, String)> = (1..=3).map(|i| node_pod(&node, Some(&ip(i)))).collect();
    let opts = ScanOptions::default();

    // The scanner reads the namespace its thread is in: a private node namespace keeps other
    // tests' veths (created in parallel in the host namespace) out of the counts.
    node.in_thread(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Shorter than the default grace for an address, so the test can outlast it.
        let grace = Duration::from_secs(3);
        let mut scanner = topology::Scanner::with_address_grace(grace);
        let scan = |s: &mut topology::Scanner| rt.block_on(s.scan(&opts)).expect("scan");
        let peer_of = |topo: &Topology, veth: &str| port(topo, veth).peer.clone().expect("peer");

        let first = scan(&mut scanner);
        for (i, (pod, veth)) in pods.iter().enumerate() {
            let peer = peer_of(&first, veth);
            assert_eq!(peer.netns.as_deref(), Some(pod.path().as_str()));
            assert_eq!(peer.addresses, vec![format!("{}/24", ip(i as u8 + 1))]);
        }
        assert_eq!(scanner.visits(), 3);
        assert!(scanner.settled());

        // Nothing changed: nothing entered, the same answer.
        assert_eq!(scan(&mut scanner), first);
        assert_eq!(scanner.visits(), 3);

        // A pod whose address is not there yet (CNI adds it after the veth) is entered again at
        // every scan until it has one.
        let (late, late_veth) = node_pod(&node, None);
        let topo = scan(&mut scanner);
        assert!(peer_of(&topo, &late_veth).addresses.is_empty());
        assert_eq!(scanner.visits(), 4, "only the new namespace is entered");
        assert!(!scanner.settled());
        late.exec(&format!("ip addr add {}/24 dev eth0", ip(9)));
        let topo = scan(&mut scanner);
        assert_eq!(
            peer_of(&topo, &late_veth).addresses,
            vec![format!("{}/24", ip(9))]
        );
        assert_eq!(scanner.visits(), 5);
        assert!(scanner.settled());
        scan(&mut scanner);
        assert_eq!(scanner.visits(), 5);
        pods.push((late, late_veth));

        // A pod goes with its namespace, and a new one comes; the kernel may give it the nsid
        // (and the namespace inode) of the one that went.
        let (gone, gone_veth) = pods.remove(0);
        let gone_nsid = peer_of(&first, &gone_veth).netnsid;
        drop(gone);
        // Namespaces die asynchronously (a kernel work item), and their veths with them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while node
            .exec_output(&format!("ip link show {gone_veth}"))
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "{gone_veth} outlived its pod");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (new, new_veth) = node_pod(&node, Some(&ip(10)));
        let topo = scan(&mut scanner);
        assert!(topo.ports.iter().all(|p| p.name != gone_veth));
        let peer = peer_of(&topo, &new_veth);
        assert_eq!(peer.netns.as_deref(), Some(new.path().as_str()));
        assert_eq!(peer.netns_inode, Some(inode(&new.path())));
        assert_eq!(peer.addresses, vec![format!("{}/24", ip(10))]);
        eprintln!(
            "nsid of the gone pod {gone_nsid:?}, of the new one {:?}",
            peer.netnsid
        );
        assert_eq!(scanner.visits(), 6);
        pods.push((new, new_veth));

        // A second veth into a known namespace changes it: entered again.
        let extra = unique("sx");
        node.exec(&format!(
            "ip link add {extra} type veth peer name eth1 netns {}",
            pods[0].0.name
        ));
        pods[0]
            .0
            .exec(&format!("ip addr add {}/24 dev eth1", ip(11)));
        let topo = scan(&mut scanner);
        assert_eq!(peer_of(&topo, &extra).name.as_deref(), Some("eth1"));
        assert_eq!(scanner.visits(), 7);

        // A peer that never gets an address (an L2-only pod) is entered again only during the
        // grace, then taken as it is: a node of such pods is not entered in full at every scan.
        let (bare, bare_veth) = node_pod(&node, None);
        scan(&mut scanner);
        assert_eq!(scanner.visits(), 8);
        assert!(!scanner.settled());
        std::thread::sleep(grace);
        let topo = scan(&mut scanner);
        assert_eq!(peer_of(&topo, &bare_veth).name.as_deref(), Some("eth0"));
        assert_eq!(scanner.visits(), 8);
        assert!(scanner.settled());
        pods.push((bare, bare_veth));

        // After an overrun every namespace is entered again.
        scanner.forget();
        let again = scan(&mut scanner);
        assert_eq!(scanner.visits(), 8 + pods.len() as u64);
        for (pod, veth) in &pods {
            assert_eq!(
                peer_of(&again, veth).netns.as_deref(),
                Some(pod.path().as_str())
            );
        }
    });
}
