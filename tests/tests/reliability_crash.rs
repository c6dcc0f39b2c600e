//! Crash and restart: the agent SIGKILLed at random moments while traffic flows leaves nothing
//! attached in tcx mode, and the next start (in either mode) attaches exactly once, removes only
//! its own stale filters and counts exactly what the kernel counts.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime},
};

use aya::programs::{SchedClassifier, TcAttachType};
use node_tracer_tests::{
    Agent, Link, Pod, binary, free_port, metric, quiet, require_root, require_tool, sh, unique,
    unique_net,
};

/// A child process (traffic, or an agent about to be killed) ended by its PID on drop.
struct Proc(Child);

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn"),
        )
    }

    fn kill(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Milliseconds in `0..max`, different on every call (no RNG crate needed for this).
fn random_ms(max: u64) -> u64 {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(n.wrapping_mul(2_654_435_761)) % max
}

fn flood(pod: &Pod, gw: &str) -> Proc {
    Proc::spawn(Command::new("ip").args([
        "netns",
        "exec",
        &pod.ns.name,
        "ping",
        "-q",
        "-i",
        "0.002",
        "-w",
        "120",
        gw,
    ]))
}

/// Starts `node-tracer run` and SIGKILLs it after a random delay: during start-up, attach, or
/// while serving.
fn start_and_kill(extra: &[&str]) -> u64 {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agent = Proc::spawn(
        Command::new(binary())
            .args(["run", "--listen", &listen])
            .args(extra),
    );
    let delay = random_ms(1500);
    std::thread::sleep(Duration::from_millis(delay));
    agent.kill();
    delay
}

/// PIDs holding each BPF program (through a program or link fd), from `/proc/*/fdinfo`.
///
/// This machine is shared: another checkout's agent may attach its own `nt_*` programs to every
/// veth, ours included. A program a live process holds is that process's; one held by nobody
/// and still attached is what a dead agent left behind.
fn holders() -> HashMap<u32, Vec<i32>> {
    let mut out: HashMap<u32, Vec<i32>> = HashMap::new();
    for h in node_tracer_sys::held::held_bpf_objects(None) {
        if let Some(id) = h.prog_id {
            out.entry(id).or_default().push(h.pid as i32);
        }
    }
    out
}

/// Of program ids `progs`: (held by no live process, i.e. left behind; held by `pid`).
fn orphans_and_held_by(progs: &[u32], pid: Option<i32>) -> (usize, usize) {
    let h = holders();
    let orphans = progs.iter().filter(|id| !h.contains_key(id)).count();
    let held = progs
        .iter()
        .filter(|id| pid.is_some_and(|p| h.get(id).is_some_and(|v| v.contains(&p))))
        .count();
    (orphans, held)
}

/// Ids of the `nt_*` programs in the tcx chains of `iface`.
fn tcx_programs(iface: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(iface, ty)
            .unwrap_or_else(|e| panic!("query tcx on {iface}: {e}"));
        out.extend(
            progs
                .iter()
                .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("nt_")))
                .map(aya::programs::ProgramInfo::id),
        );
    }
    out
}

/// Pings `n` times from the pod and checks our count of what it transmitted equals the kernel's.
fn exact_count(agent: &Agent, pod: &Pod, gw: &str, n: u32) {
    let veth = &pod.veth.name;
    let total = |m: &str| {
        metric(
            m,
            "node_tracer_transmit_packets_total",
            &[("interface", veth)],
        )
        .unwrap_or(0.0) as u64
    };
    let (before_k, before) = quiet(veth, || total(&agent.metrics()));
    pod.ns.exec(&format!("ping -c {n} -i 0.01 -q {gw}"));
    let (after_k, after) = quiet(veth, || total(&agent.metrics()));
    let kernel = after_k.rx_packets - before_k.rx_packets;
    assert!(kernel >= u64::from(n), "kernel saw {kernel}");
    assert_eq!(
        after - before,
        kernel,
        "ours vs kernel: attached more or less than once"
    );
}

fn routed_pod() -> (Pod, String) {
    let net = unique_net();
    let gw = format!("{net}.1");
    let pod = Pod::routed("cr", &format!("{net}.2"), &gw);
    (pod, gw)
}

#[test]
fn sigkill_in_tcx_mode_leaves_nothing_and_restart_attaches_once() {
    require_root();
    require_tool("ping");
    let (pod, gw) = routed_pod();
    let veth = pod.veth.name.clone();
    let mut traffic = flood(&pod, &gw);
    let mut delays = Vec::new();
    for _ in 0..5 {
        delays.push(start_and_kill(&["--attach-mode", "tcx", "-i", &veth]));
        // bpf_links die with the process that held them: nothing of the dead agent remains.
        let progs = tcx_programs(&veth);
        let (orphans, _) = orphans_and_held_by(&progs, None);
        assert_eq!(
            orphans, 0,
            "after SIGKILL at {delays:?} ms: {progs:?} left on {veth}"
        );
    }
    let agent = Agent::start(&["--attach-mode", "tcx", "-i", &veth]);
    let progs = tcx_programs(&veth);
    assert_eq!(
        orphans_and_held_by(&progs, Some(agent.pid())),
        (0, 2),
        "exactly one ingress and one egress program of the new agent: {progs:?}"
    );
    traffic.kill();
    std::thread::sleep(Duration::from_millis(200));
    exact_count(&agent, &pod, &gw, 50);
    let pid = agent.pid();
    drop(agent);
    let progs = tcx_programs(&veth);
    assert_eq!(
        orphans_and_held_by(&progs, Some(pid)),
        (0, 0),
        "SIGTERM detaches"
    );
}

/// `tc -j filter show` entries of `iface` and `dir` (ingress/egress).
fn filters(iface: &str, dir: &str) -> Vec<serde_json::Value> {
    let out = sh(&format!("tc -s -j filter show dev {iface} {dir}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc json {out}: {e}"))
}

/// Our filters named `name` on `iface`: (held by no live process, i.e. stale; held by `pid`).
/// Filters of another checkout's live agent on this shared machine are neither.
fn ours(iface: &str, dir: &str, name: &str, pid: Option<i32>) -> (usize, usize) {
    let progs: Vec<u32> = filters(iface, dir)
        .iter()
        .filter(|f| f["options"]["bpf_name"].as_str() == Some(name))
        .filter_map(|f| f["options"]["prog"]["id"].as_u64())
        .map(|id| u32::try_from(id).unwrap())
        .collect();
    orphans_and_held_by(&progs, pid)
}

/// Packets the other tool's mirror action has handled (None when the filter is gone).
fn foreign_hits(iface: &str) -> Option<u64> {
    filters(iface, "ingress").iter().find_map(|f| {
        f["options"]["actions"]
            .as_array()?
            .iter()
            .find(|a| a["kind"] == "mirred")?["stats"]["packets"]
            .as_u64()
    })
}

fn has_clsact(iface: &str) -> bool {
    sh(&format!("tc -j qdisc show dev {iface}")).contains("\"clsact\"")
}

#[test]
fn netlink_restart_removes_only_our_stale_filters() {
    require_root();
    require_tool("ping");
    require_tool("tc");
    let (pod, gw) = routed_pod();
    let veth = pod.veth.name.clone();
    // Another tool's filter (this kernel has no cls_matchall, so u32 matching everything),
    // mirroring every frame to a sink veth so its hit count shows it keeps working.
    let sink = Link { name: unique("sk") };
    sh(&format!(
        "ip link add {s} type veth peer name {p} && ip link set {s} up && ip link set {p} up",
        s = sink.name,
        p = unique("sp")
    ));
    sh(&format!(
        "tc qdisc add dev {veth} clsact && tc filter add dev {veth} ingress prio 100 u32 \
         match u32 0 0 action mirred egress mirror dev {}",
        sink.name
    ));
    let mut traffic = flood(&pod, &gw);
    let mut delays = Vec::new();
    for _ in 0..4 {
        delays.push(start_and_kill(&["--attach-mode", "netlink", "-i", &veth]));
        assert!(
            foreign_hits(&veth).is_some(),
            "the other tool's filter was removed"
        );
        assert!(has_clsact(&veth), "clsact removed after SIGKILL");
        assert!(
            ours(&veth, "ingress", "nt_ingress_nl", None).0 <= 1,
            "filters pile up across crashes ({delays:?} ms)"
        );
    }
    let agent = Agent::start(&["--attach-mode", "netlink", "-i", &veth]);
    let pid = agent.pid();
    // The stale filters are gone, the new agent's are there once.
    assert_eq!(
        ours(&veth, "ingress", "nt_ingress_nl", Some(pid)),
        (0, 1),
        "{:?}",
        filters(&veth, "ingress")
    );
    assert_eq!(
        ours(&veth, "egress", "nt_egress_nl", Some(pid)),
        (0, 1),
        "{:?}",
        filters(&veth, "egress")
    );
    // A second agent starting meanwhile (a rolling update) removes stale filters only: the
    // running agent's stay, and each leaves with its own.
    let second = Agent::start(&["--attach-mode", "netlink", "-i", &veth]);
    assert_eq!(ours(&veth, "ingress", "nt_ingress_nl", Some(pid)), (0, 1));
    assert_eq!(
        ours(&veth, "ingress", "nt_ingress_nl", Some(second.pid())),
        (0, 1)
    );
    let (status, _) = second.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert_eq!(ours(&veth, "ingress", "nt_ingress_nl", Some(pid)), (0, 1));
    assert_eq!(ours(&veth, "egress", "nt_egress_nl", Some(pid)), (0, 1));
    traffic.kill();
    std::thread::sleep(Duration::from_millis(200));
    let hits = foreign_hits(&veth).expect("other tool's filter is still there");
    exact_count(&agent, &pod, &gw, 50);
    let later = foreign_hits(&veth).expect("other tool's filter is still there");
    assert!(
        later >= hits + 50,
        "other tool's filter stopped working: {hits} -> {later}"
    );

    let (status, _) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert_eq!(
        ours(&veth, "ingress", "nt_ingress_nl", None),
        (0, 0),
        "ours removed on SIGTERM"
    );
    assert_eq!(
        ours(&veth, "egress", "nt_egress_nl", None),
        (0, 0),
        "ours removed on SIGTERM"
    );
    assert!(
        foreign_hits(&veth).is_some(),
        "the other tool's filter survives our exit"
    );
    assert!(
        has_clsact(&veth),
        "the clsact qdisc others use survives our exit"
    );
}
