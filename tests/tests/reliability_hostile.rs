//! Hostile input at the agent level: abusive HTTP clients, malformed CNI cache files, pod names
//! built to break the exposition format, a CRI socket that hangs or answers garbage, a 200+
//! character namespace name and a `/proc` that changes while it is read. Each gives a warning or
//! a clear error; never a panic, a hang or a wrong label.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixListener,
    process::{Command, Stdio},
    time::Duration,
};

use node_tracer_tests::{
    Agent, Link, Netns, Pod, TempDir, http_get, metric, node_tracer, quiet_ipv6, require_root,
    require_tool, sh, unique, unique_net,
};

fn routed_pod() -> Pod {
    let net = unique_net();
    Pod::routed("ho", &format!("{net}.2"), &format!("{net}.1"))
}

/// Reads until the agent answers and closes, or closes without a word (the reply is then empty;
/// a reset counts as closed). No answer within `wait` fails the test: a hang is not a refusal.
fn outcome(mut s: TcpStream, wait: Duration, what: &str) -> String {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => String::from_utf8_lossy(&buf).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            String::from_utf8_lossy(&buf).into_owned()
        }
        Err(e) => panic!("{what}: no answer within {wait:?}, the connection still open: {e}"),
    }
}

/// Sends `request` as is; returns the status code, or None when the agent closed without one.
fn raw(addr: SocketAddr, request: &[u8], what: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).expect("connect");
    // The server may close mid-write on an oversized request: that is a refusal too.
    let _ = s.write_all(request);
    let reply = outcome(s, Duration::from_mins(2), what);
    reply.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sources that never reach the node's real runtime (other tests may run one).
fn isolated_sources(tmp: &TempDir) -> [String; 4] {
    [
        "--cri-socket".into(),
        tmp.0.join("absent.sock").display().to_string(),
        "--cni-results-dir".into(),
        tmp.0.join("cni").display().to_string(),
    ]
}

#[test]
fn http_answers_only_get_refuses_oversized_and_survives_slow_and_concurrent_clients() {
    require_root();
    let pod = routed_pod();
    let tmp = TempDir::new("ht");
    let mut args: Vec<String> = isolated_sources(&tmp).into();
    args.extend(["-i".into(), pod.veth.name.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    let addr = agent.addr;

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let req = format!(
            "{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw(addr, req.as_bytes(), method), Some(405), "{method}");
    }
    for path in ["/nope", "/metrics/x", "/healthz/..", "/snapshot.json"] {
        assert_eq!(http_get(addr, path).unwrap().0, 404, "{path}");
    }
    // A 64 KiB header: 431, or the connection closed; never accepted, never a crash.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let status = raw(addr, big.as_bytes(), "a 64 KiB header");
    assert!(
        matches!(status, Some(431) | None),
        "oversized request got {status:?}"
    );
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200, "still serving");

    // 200 clients that send half a request and stall.
    let fds_before = fd_count(agent.pid());
    let slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect slow client");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let (code, body) = http_get(addr, "/healthz").expect("healthz beside 200 stalled clients");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // 50 concurrent scrapes, all complete.
    let scrapes: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || http_get(addr, "/metrics")))
        .collect();
    for s in scrapes {
        let (code, body) = s.join().unwrap().expect("concurrent /metrics");
        assert_eq!(code, 200);
        assert!(body.contains("node_tracer_attached_interfaces"), "{body}");
    }
    // The stalled clients are cut off by the header read timeout (10 s), not kept forever.
    // Our wait is far longer than that timeout: silence until then is a hang, not a refusal.
    let first = slow.into_iter().next().unwrap();
    let reply = outcome(first, Duration::from_mins(2), "the first stalled client");
    assert!(
        reply.is_empty() || reply.contains(" 408 "),
        "stalled client got {reply}"
    );
    // Their sockets are released: the agent's descriptors are back to where they were.
    let mut fds_after = fd_count(agent.pid());
    for _ in 0..100 {
        if fds_after <= fds_before + 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        fds_after = fd_count(agent.pid());
    }
    assert!(
        fds_after <= fds_before + 2,
        "fds {fds_before} -> {fds_after}"
    );
    let (status, stderr) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const HOSTILE_NAME: &str = "we\"b} 1\nnode_tracer_fake{x=\"y\\";
const HOSTILE_NAMESPACE: &str = "sh,op=\"x\"";

#[test]
fn hostile_pod_names_and_malformed_cni_cache_files() {
    require_root();
    require_tool("promtool");
    let pod = routed_pod();
    let tmp = TempDir::new("hc");
    let cni = tmp.0.join("cni");
    std::fs::create_dir_all(&cni).unwrap();
    let good = serde_json::json!({
        "cniVersion": "1.0.0",
        "cniArgs": [["K8S_POD_NAMESPACE", HOSTILE_NAMESPACE], ["K8S_POD_NAME", HOSTILE_NAME],
                    ["K8S_POD_UID", "u-1"]],
        "result": {"interfaces": [{"name": pod.veth.name},
                                  {"name": "eth0", "sandbox": pod.ns.path()}]}
    });
    std::fs::write(cni.join("net-good-eth0"), good.to_string()).unwrap();
    std::fs::write(cni.join("net-empty-eth0"), "").unwrap();
    std::fs::write(
        cni.join("net-trunc-eth0"),
        "{\"cniArgs\": [[\"K8S_POD_NAME\"",
    )
    .unwrap();
    std::fs::write(
        cni.join("net-binary-eth0"),
        [0u8, 0xff, 0xfe, 0x80, 0x00, 0x7b],
    )
    .unwrap();
    std::fs::write(cni.join("net-deep-eth0"), "[".repeat(100_000)).unwrap();
    std::fs::write(
        cni.join("net-types-eth0"),
        r#"{"cniArgs":[["K8S_POD_NAME",7]],"result":{"interfaces":[{"sandbox":12}]}}"#,
    )
    .unwrap();
    std::fs::write(
        cni.join("net-gone-eth0"),
        r#"{"cniArgs":[["K8S_POD_NAME","ghost"]],"result":{"interfaces":[{"sandbox":"/run/netns/nttnothere"}]}}"#,
    )
    .unwrap();
    sh(&format!("mkfifo {}", cni.join("net-fifo-eth0").display()));
    std::fs::create_dir(cni.join("net-dir-eth0")).unwrap();
    std::os::unix::fs::symlink("net-loop-eth0", cni.join("net-loop-eth0")).unwrap();

    let srcs = isolated_sources(&tmp);
    let mut args: Vec<&str> = srcs.iter().map(String::as_str).collect();
    args.extend(["-i", &pod.veth.name]);
    let agent = Agent::start(&args);
    // The gateway is .1 of the pod's /24: replace the last octet only.
    let gateway = pod.ip.rsplit_once('.').unwrap().0;
    pod.ns.exec(&format!("ping -c 3 -i 0.01 -q {gateway}.1"));

    // The JSON snapshot carries the names exactly.
    let snap = agent.snapshot();
    let text = snap.to_string();
    let port = snap["ports"]
        .as_array()
        .or_else(|| snap.as_array())
        .and_then(|ps| ps.iter().find(|p| p["name"] == pod.veth.name.as_str()))
        .unwrap_or_else(|| panic!("{} not in snapshot: {text}", pod.veth.name));
    assert_eq!(port["pod"]["name"], HOSTILE_NAME, "{port}");
    assert_eq!(port["pod"]["namespace"], HOSTILE_NAMESPACE, "{port}");

    // The exposition stays well formed: every sample line is ours and the labels are escaped.
    let m = agent.metrics();
    for line in m.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("node_tracer_"), "broken line: {line:?}");
        assert!(
            !line.starts_with("node_tracer_fake"),
            "injected series: {line:?}"
        );
    }
    let escaped = r#"pod="we\"b} 1\nnode_tracer_fake{x=\"y\\""#;
    let series = metric(
        &m,
        "node_tracer_transmit_packets_total",
        &[
            ("interface", &pod.veth.name),
            ("namespace", r#"sh,op=\"x\""#),
        ],
    );
    assert!(
        series.is_some_and(|v| v >= 3.0),
        "series with escaped labels: {m}"
    );
    assert!(
        m.contains(escaped),
        "pod label not escaped as {escaped}: {m}"
    );
    {
        require_tool("promtool");
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let msg = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(!msg.contains("parsing error"), "promtool: {msg}");
    }
    let (status, stderr) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for junk in [
        "net-empty-eth0",
        "net-trunc-eth0",
        "net-deep-eth0",
        "net-binary-eth0",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(junk) && l.contains("WARN")),
            "no warning for {junk}: {stderr}"
        );
    }
}

/// A unix socket that accepts and never answers, and one that answers garbage.
fn bad_cri(tmp: &TempDir) -> (String, String) {
    let hang = tmp.0.join("hang.sock");
    let garbage = tmp.0.join("garbage.sock");
    let l1 = UnixListener::bind(&hang).unwrap();
    let l2 = UnixListener::bind(&garbage).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l1.incoming().flatten() {
            held.push(c);
        }
    });
    std::thread::spawn(move || {
        for mut c in l2.incoming().flatten() {
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\n\x00\x00\x00\x00\x05garbage\xff\xfe");
        }
    });
    (hang.display().to_string(), garbage.display().to_string())
}

#[test]
fn cri_socket_that_hangs_or_answers_garbage_never_blocks_the_agent() {
    require_root();
    let pod = routed_pod();
    let tmp = TempDir::new("hr");
    let (hang, garbage) = bad_cri(&tmp);
    let cni = tmp.0.join("cni").display().to_string();
    let sources = [
        "--cri-socket",
        &hang,
        "--cri-socket",
        &garbage,
        "--cni-results-dir",
        &cni,
    ];
    let mut args = sources.to_vec();
    args.extend(["-i", &pod.veth.name]);
    // Agent::start fails the test if /healthz is not up within a minute.
    let agent = Agent::start(&args);
    assert!(
        agent.metrics().contains(&pod.veth.name),
        "veth attached and labelled"
    );
    // Survived, logged, and counted: both sockets failed at least once (the first discovery).
    let failed = metric(
        &agent.metrics(),
        "node_tracer_errors_total",
        &[("operation", "pods_cri")],
    );
    assert!(failed.is_some_and(|n| n >= 2.0), "{failed:?}");
    let mut peers = vec!["peers", "--json"];
    peers.extend(sources);
    let out = node_tracer(&peers);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == pod.veth.name.as_str())
        .expect("our veth in peers");
    // Identity falls back to the namespace, never to something the garbage said.
    assert_eq!(row["peer"]["netns"], pod.ns.path().as_str(), "{row}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CRI") || stderr.contains("cri"),
        "no warning: {stderr}"
    );
    let (status, err) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn long_netns_name_and_proc_churn_during_peers() {
    require_root();
    require_tool("python3");
    let tmp = TempDir::new("hl");
    // 230 characters: well past IFNAMSIZ, below NAME_MAX.
    let ns = Netns {
        name: format!("{}{}", unique("ln"), "n".repeat(215)),
    };
    sh(&format!("ip netns add {}", ns.name));
    let veth = Link { name: unique("lv") };
    quiet_ipv6(Some(&ns), "default");
    sh(&format!(
        "ip link add {} type veth peer name eth0 netns {} && ip link set {} up",
        veth.name, ns.name, veth.name
    ));
    ns.exec("ip link set eth0 up");
    let srcs = isolated_sources(&tmp);
    let mut args: Vec<&str> = srcs.iter().map(String::as_str).collect();
    args.extend(["-i", &veth.name]);
    let agent = Agent::start(&args);
    let m = agent.metrics();
    let label = format!("netns=\"/run/netns/{}\"", ns.name);
    assert!(
        m.lines()
            .any(|l| l.starts_with("node_tracer_port_info") && l.contains(&label)),
        "port_info with the full netns path: {m}"
    );

    // Processes start and exit in a loop while `peers` walks /proc.
    let mut churn = Command::new("sh")
        .args(["-c", "while :; do /bin/true & /bin/true & wait; done"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peers = vec!["peers", "--json"];
    peers.extend(srcs.iter().map(String::as_str));
    let mut result = Ok(());
    for i in 0..15 {
        let out = node_tracer(&peers);
        if !out.status.success() {
            result = Err(format!("run {i}: {}", String::from_utf8_lossy(&out.stderr)));
            break;
        }
        let rows: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                result = Err(format!("run {i}: JSON: {e}"));
                break;
            }
        };
        let found = rows.as_array().into_iter().flatten().any(|r| {
            r["name"] == veth.name.as_str()
                && r["peer"]["netns"] == format!("/run/netns/{}", ns.name).as_str()
        });
        if !found {
            result = Err(format!("run {i}: {} missing or mislabelled", veth.name));
            break;
        }
    }
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(churn.id() as i32, libc::SIGKILL) };
    let _ = churn.wait();
    result.unwrap();
    drop(agent);
    drop(veth);
}
