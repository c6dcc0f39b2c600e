//! What a user gets from bad input: a clear one-line error and a non-zero exit, never a panic,
//! and nothing attached or left behind. Also the programs' own logs (aya-log) reaching the
//! agent's log, end to end.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Agent, Link, Pod, binary, metric, node_tracer, require_root, require_tool, unique, unique_net,
};

/// Runs node-tracer at error level (so only the error is printed) and returns (code, stderr).
fn fails(args: &[&str]) -> (i32, String) {
    let mut all = vec!["--log-level", "error"];
    all.extend_from_slice(args);
    let out = node_tracer(&all);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    (out.status.code().unwrap_or(-1), err)
}

fn one_line(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {err}");
    assert!(lines[0].starts_with("node-tracer: error: "), "{err}");
    lines[0]
}

#[test]
fn a_busy_port_fails_before_attaching_anything() {
    require_root();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let br = Link::bridge("cb");
    let pod = Pod::bridged("cp", &br, "10.9.0.2", 24);
    let (code, err) = fails(&["run", "--listen", &addr, "-i", &pod.veth.name]);
    assert_eq!(code, 1);
    let line = one_line(&err);
    assert!(
        line.contains(&format!("listen on {addr}")) && line.contains("in use"),
        "{line}"
    );
    // Nothing of ours on the veth: its tcx chain is empty.
    let (_, progs) = aya::programs::SchedClassifier::query_tcx(
        &pod.veth.name,
        aya::programs::TcAttachType::Ingress,
    )
    .unwrap();
    assert!(progs.is_empty(), "nothing attached");
}

#[test]
fn a_missing_interface_is_named() {
    require_root();
    let name = unique("no");
    let (code, err) = fails(&["run", "--listen", "127.0.0.1:0", "-i", &name]);
    assert_eq!(code, 1);
    assert!(
        one_line(&err).contains(&format!("no such interface: {name}")),
        "{err}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let (code, err) = fails(&["run", "--bogus"]);
    assert_eq!(code, 2, "clap's usage exit code");
    assert!(err.contains("unexpected argument '--bogus'"), "{err}");
    let (code, err) = fails(&["run", "--listen", "not-an-address"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'not-an-address'"), "{err}");
    let (_, err) = fails(&["run", "--attach-mode", "xdp"]);
    assert!(err.contains("possible values: auto, tcx, netlink"), "{err}");
    let (code, err) = fails(&["lab", "up", "--name", "far-too-long-name"]);
    assert_eq!(code, 1);
    assert!(
        one_line(&err).contains("--name must be 1 to 8 letters or digits"),
        "{err}"
    );
}

/// The capabilities the kernel really asks for (deploy/README.md, "Least privilege"): CAP_SYS_ADMIN
/// always (setns; it also satisfies bpf(2)'s CAP_BPF and CAP_PERFMON checks), CAP_NET_ADMIN in
/// netlink mode. tests/tests/deploy.rs proves the sets; this checks the message.
#[test]
fn a_missing_capability_is_named() {
    require_root();
    require_tool("capsh");
    for (cap, mode, name) in [
        ("cap_sys_admin", "tcx", "CAP_SYS_ADMIN"),
        ("cap_net_admin", "netlink", "CAP_NET_ADMIN"),
    ] {
        let out = Command::new("capsh")
            .arg(format!("--drop={cap}"))
            .arg("--")
            .arg("-c")
            .arg(format!(
                "exec {} --log-level error run --listen 127.0.0.1:0 --attach-mode {mode} -i lo",
                binary().display()
            ))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let line = one_line(&err);
        assert!(line.contains(name), "{cap} dropped: {line}");
    }
}

/// The programs log through aya-log when a map is full (rate-limited to powers of two per CPU):
/// the record must reach the agent's own log, and the failure its metrics.
#[test]
fn program_logs_reach_the_agent_log() {
    require_root();
    require_tool("python3");
    let br = Link::bridge("lb");
    let a = Pod::bridged("la", &br, "10.9.0.2", 24);
    let b = Pod::bridged("lb", &br, "10.9.0.3", 24);
    // One port: ICMP_STATS holds 16 (port, direction, family, type) entries.
    let agent = Agent::start(&[
        "--max-ports",
        "1",
        "-i",
        &a.veth.name,
        "--log-level",
        "warn",
    ]);
    // 24 distinct ICMP types from pod A: more than ICMP_STATS can hold.
    a.ns.exec(&format!(
        "python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for t in range(100, 124):
    s.sendto(bytes([t, 0, 0, 0, 0, 0, 0, 0]), (\"{}\", 0))
'",
        b.ip
    ));
    let start = Instant::now();
    loop {
        let m = agent.metrics();
        if metric(
            &m,
            "node_tracer_map_update_errors_total",
            &[("map", "ICMP_STATS")],
        )
        .is_some_and(|v| v > 0.0)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "no ICMP_STATS failure counted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (status, err) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "agent exit: {status}: {err}");
    assert!(
        err.contains("ICMP_STATS full: type"),
        "the program's aya-log record reached the agent's log:\n{err}"
    );
}

/// Runs node-tracer at error level and waits for its exit, for at most a bound far longer than
/// any start-up and far shorter than the watch or trace the arguments ask for: an exit within
/// it is an answer given at once, not one given when the watch or trace ended. Returns (code,
/// stderr) of a failure.
fn fails_before_it_would_end(args: &[&str]) -> (i32, String) {
    const NEVER: Duration = Duration::from_mins(5);
    let mut child = Command::new(binary())
        .args(["--log-level", "error"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node-tracer");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > NEVER {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: no answer within {NEVER:?}: it waits for the whole watch or trace");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    (status.code().unwrap_or(-1), err)
}

/// `macs --bridge NAME` for a bridge this host does not have says so before watching anything.
#[test]
fn macs_names_a_missing_bridge_at_once() {
    require_root();
    let name = unique("nob");
    let (code, err) =
        fails_before_it_would_end(&["macs", "--bridge", &name, "--duration", "1000000"]);
    assert_eq!(code, 1);
    let line = one_line(&err);
    assert!(line.ends_with(&format!("no bridge named {name}")), "{line}");
}

/// `trace icmp --pod P` where no pod of the node matches P refuses at once instead of tracing
/// "on 0 veths" until its timeout.
#[test]
fn a_trace_filter_that_matches_no_veth_is_refused_at_once() {
    require_root();
    let pattern = format!("{}/*", unique("nopod"));
    let (code, err) =
        fails_before_it_would_end(&["trace", "icmp", "--pod", &pattern, "--timeout", "1000000"]);
    assert_eq!(code, 1);
    let line = one_line(&err);
    assert!(
        line.contains("nothing to trace") && line.contains(&format!("--pod {pattern}")),
        "{line}"
    );
    // The same for a veth pattern no veth has.
    let veths = format!("{}*", unique("nov"));
    let (code, err) =
        fails_before_it_would_end(&["trace", "icmp", "--veth", &veths, "--timeout", "1000000"]);
    assert_eq!(code, 1);
    assert!(one_line(&err).contains(&format!("--veth {veths}")), "{err}");
    // A filter that matches a pod's veth is traced, until its --timeout.
    let br = Link::bridge("tb");
    let pod = Pod::bridged("tp", &br, &format!("{}.2", unique_net()), 24);
    let out = node_tracer(&["trace", "icmp", "--pod", &pod.ns.name, "--timeout", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
