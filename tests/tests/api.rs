//! Who may read the agent: `/metrics` and `/healthz` for anyone, `/snapshot` and `/trace/icmp`
//! only for a caller who proves who it is (a bearer token from a file, or a TLS client
//! certificate), or, with neither configured, only on a loopback listener. Against the real
//! agent, with real pods pinging, real certificates and the real CLI clients.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use node_tracer_client::{Agent as Client, ClientError, Credentials, blocking};
use node_tracer_tests::{
    Agent, Link, Netns, Pod, TempDir, binary, http_get, metric, node_tracer, node_tracer_in,
    require_root, signal_and_wait, stop_child, unique, unique_net,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

/// Two pods on a bridge of the test's own: something for a trace to see.
struct Pods {
    a: Pod,
    b: Pod,
    _bridge: Link,
}

impl Pods {
    fn new() -> Self {
        let bridge = Link::bridge("ab");
        let net = unique_net();
        let a = Pod::bridged("aa", &bridge, &format!("{net}.2"), 24);
        let b = Pod::bridged("ab", &bridge, &format!("{net}.3"), 24);
        Self {
            a,
            b,
            _bridge: bridge,
        }
    }

    fn agent_args(&self) -> Vec<String> {
        ["-i", &self.a.veth.name, "-i", &self.b.veth.name]
            .map(String::from)
            .to_vec()
    }
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn write_file(path: &Path, text: &str) {
    // A new file renamed over the old, the way a Secret update or cert-manager replaces one.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `node_tracer_api_denied_total{reason}`: a counter, so a whole number.
fn denied(agent: &Agent, reason: &str) -> u64 {
    metric(
        &agent.metrics(),
        "node_tracer_api_denied_total",
        &[("reason", reason)],
    )
    .unwrap_or_else(|| panic!("no node_tracer_api_denied_total{{reason={reason}}}")) as u64
}

fn client(url: &str, creds: &Credentials) -> Client {
    let mut c = Client::new(url, creds).expect("client");
    c.timeout = Duration::from_secs(30);
    c
}

fn token_creds(path: &Path) -> Credentials {
    Credentials {
        token_file: Some(path.to_owned()),
        ..Credentials::default()
    }
}

/// `trace icmp --connect URL EXTRA --count 2`: runs while pod a pings pod b, until it has its
/// two packets; returns their JSON objects (not the summary). A generous timeout only catches
/// a hang.
fn trace_through(url: &str, extra: &[&str], pods: &Pods) -> Vec<serde_json::Value> {
    let mut child = Command::new(binary())
        .args(["trace", "icmp", "--connect", url, "--json", "--no-summary"])
        .args(["--veth", &pods.a.veth.name, "--type", "echo-request"])
        .args(["--count", "2", "--timeout", "120"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trace icmp --connect");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_mins(3), "the trace hangs");
        pods.a
            .ns
            .exec(&format!("ping -c 1 -W 1 -q {} || true", pods.b.ip));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "trace through the agent: {status}: {err}");
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("summary").is_none())
        .collect()
}

/// A child stopped with SIGTERM by its PID when dropped (also when the test fails).
struct Running(Option<std::process::Child>);

impl Running {
    /// SIGTERM, wait; its stderr, after checking it exited 0.
    fn stop(mut self) -> String {
        let mut child = self.0.take().expect("running");
        let (status, err) = signal_and_wait(&mut child, libc::SIGTERM);
        assert!(status.success(), "exit {status}: {err}");
        err
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }
}

/// What a refused CLI client must say: one line, naming the refusal, exit non-zero.
fn assert_refused(out: &std::process::Output, what: &str, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: exit {}", out.status);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
    assert!(err.contains("refused"), "{what}: {err}");
    assert!(err.contains(why), "{what}: {err}");
}

#[test]
fn without_credentials_the_pod_endpoints_answer_only_on_a_loopback_listener() {
    require_root();
    // The agents live in a node namespace of the test's own: a wildcard listener there is
    // reachable from nothing but this test.
    let node = Netns::new("an");
    let wide: SocketAddr = "127.0.0.1:9465".parse().unwrap();
    let lo: SocketAddr = "127.0.0.1:9466".parse().unwrap();
    let spawn = |listen: &str| {
        Running(Some(
            node_tracer_in(&node, &["run", "--listen", listen])
                .env("NODE_TRACER_LOG", "info")
                .spawn()
                .expect("spawn node-tracer run"),
        ))
    };
    let agents = [spawn("0.0.0.0:9465"), spawn("127.0.0.1:9466")];
    let get = |addr, path: &'static str| node.in_thread(move || http_get(addr, path));
    let ready = |addr| {
        (0..1200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            matches!(get(addr, "/healthz"), Ok((200, _)))
        })
    };
    assert!(ready(wide) && ready(lo), "the agents did not start");

    // 0.0.0.0: reached here through loopback, but the listener is not loopback-only.
    assert_eq!(get(wide, "/metrics").unwrap().0, 200);
    for path in ["/snapshot", "/trace/icmp"] {
        let (status, body) = get(wide, path).unwrap();
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("only on a loopback listener"), "{body}");
    }
    let (_, m) = get(wide, "/metrics").unwrap();
    let refused = metric(
        &m,
        "node_tracer_api_denied_total",
        &[("reason", "not_served_here")],
    );
    assert_eq!(refused, Some(2.0));
    // 127.0.0.1: open, as before.
    assert_eq!(get(lo, "/snapshot").unwrap().0, 200);
    let mut s = node.in_thread(|| TcpStream::connect(lo).unwrap());
    s.write_all(b"GET /trace/icmp HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(s);

    // Each says at start-up what it serves to whom.
    let logs: Vec<String> = agents.into_iter().map(Running::stop).collect();
    assert!(
        logs[0].contains("/snapshot and /trace/icmp are refused on 0.0.0.0:9465"),
        "{}",
        logs[0]
    );
    assert!(logs[1].contains("open to every caller"), "{}", logs[1]);
}

#[test]
fn a_token_guards_the_pod_endpoints_is_read_again_when_rewritten_and_never_leaks() {
    require_root();
    let pods = Pods::new();
    let tmp = TempDir::new("at");
    let token_path = tmp.0.join("token");
    let token = format!("tok-{}", unique("t"));
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    let wrong_path = tmp.0.join("wrong");
    std::fs::write(&wrong_path, "not-the-token").unwrap();

    let mut extra = pods.agent_args();
    extra.extend(["--log-level", "debug", "--api-token-file"].map(String::from));
    extra.push(token_path.display().to_string());
    let agent = Agent::start(&args(&extra));
    let url = format!("http://{}", agent.addr);

    // Prometheus and the probes need nothing.
    assert_eq!(http_get(agent.addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(agent.addr, "/metrics").unwrap().0, 200);
    // No token, a wrong one, the right one. (missing: 2, wrong: 1 so far)
    for path in ["/snapshot", "/trace/icmp"] {
        let (status, body) = http_get(agent.addr, path).unwrap();
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("no or wrong token"), "{body}");
    }
    let e = blocking::get(&client(&url, &token_creds(&wrong_path)), "/snapshot").unwrap_err();
    assert!(
        matches!(e, ClientError::Refused { status: 401, .. }),
        "{e:?}"
    );
    let snap = blocking::get(&client(&url, &token_creds(&token_path)), "/snapshot").unwrap();
    let snap: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    let names: Vec<&str> = snap["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&pods.a.veth.name.as_str()), "{names:?}");

    // The CLI clients: refused in one line without the token (missing: 4), served with it.
    let out = node_tracer(&["trace", "icmp", "--connect", &url, "--timeout", "600"]);
    assert_refused(&out, "trace without a token", "no or wrong token");
    let out = node_tracer(&["macs", "--connect", &url]);
    assert_refused(&out, "macs without a token", "no or wrong token");
    let token_flag = ["--api-token-file", token_path.to_str().unwrap()];
    let events = trace_through(&url, &token_flag, &pods);
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e["interface"], pods.a.veth.name.as_str(), "{e}");
    }
    // From the environment, as in the agent's container.
    let out = Command::new(binary())
        .args(["macs", "--connect", &url])
        .env("NODE_TRACER_API_TOKEN_FILE", &token_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "macs with the token from the environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Rotated while the agent runs: the old token stops working (wrong: 2), the new one works.
    let new_token = format!("tok-{}", unique("n"));
    write_file(&token_path, &new_token);
    let old = tmp.0.join("old");
    std::fs::write(&old, &token).unwrap();
    let e = blocking::get(&client(&url, &token_creds(&old)), "/snapshot").unwrap_err();
    assert!(e.is_refusal(), "{e:?}");
    blocking::get(&client(&url, &token_creds(&token_path)), "/snapshot")
        .expect("the rotated token, without a restart");

    // Every refusal counted, by reason.
    assert_eq!(denied(&agent, "missing_credentials"), 4);
    assert_eq!(denied(&agent, "wrong_token"), 2);
    assert_eq!(denied(&agent, "not_served_here"), 0);

    // The token is nowhere: not in /metrics, the command line, the logs (at debug), --help.
    let metrics = agent.metrics();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid())).unwrap();
    let help = Command::new(binary())
        .args(["run", "--help"])
        .env("NODE_TRACER_API_TOKEN_FILE", &token_path)
        .output()
        .unwrap();
    let (status, log) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("API token file"),
        "the rotation is logged: {log}"
    );
    assert!(log.contains("API: refused"), "refusals are logged: {log}");
    for secret in [&token, &new_token] {
        for (what, text) in [
            ("/metrics", metrics.as_bytes()),
            ("cmdline", &cmdline[..]),
            ("the agent's log", log.as_bytes()),
            ("run --help", &help.stdout[..]),
        ] {
            assert!(
                !String::from_utf8_lossy(text).contains(secret.as_str()),
                "the token is in {what}"
            );
        }
    }
}

/// A CA and what it signs, as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Pki {
    fn ca(&self, name: &str) -> (Ca, PathBuf) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let path = self.dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        (
            Ca {
                issuer: Issuer::new(p, key),
                pem: cert.pem(),
            },
            path,
        )
    }

    /// (cert, key) signed by `ca`; `expired` puts its validity in the past.
    fn leaf(&self, ca: &Ca, name: &str, sans: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        if expired {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2020, 6, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        // The chain: the leaf, then its CA.
        write_file(&c, &format!("{}{}", cert.pem(), ca.pem));
        write_file(&k, &key.serialize_pem());
        (c, k)
    }
}

fn tls_creds(ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> Credentials {
    Credentials {
        ca: Some(ca.to_owned()),
        cert: cert.map(|c| c.0.clone()),
        key: cert.map(|c| c.1.clone()),
        ..Credentials::default()
    }
}

#[test]
fn client_certificates_over_tls_beside_plain_metrics_and_renewed_certificates() {
    require_root();
    let pods = Pods::new();
    let tmp = TempDir::new("tl");
    let pki = Pki { dir: tmp.0.clone() };
    let (ca, ca_path) = pki.ca("ca");
    let (other_ca, _) = pki.ca("other-ca");
    let server = pki.leaf(&ca, "server", &["127.0.0.1"], false);
    let good = pki.leaf(&ca, "client", &[], false);
    let expired = pki.leaf(&ca, "expired", &[], true);
    let foreign = pki.leaf(&other_ca, "foreign", &[], false);

    let mut extra = pods.agent_args();
    for (flag, path) in [
        ("--tls-cert", &server.0),
        ("--tls-key", &server.1),
        ("--tls-client-ca", &ca_path),
    ] {
        extra.push(flag.into());
        extra.push(path.display().to_string());
    }
    let agent = Agent::start(&args(&extra));
    let https = format!("https://{}", agent.addr);

    // Plain HTTP on the same port: probes and Prometheus as before; the pod endpoints ask.
    assert_eq!(http_get(agent.addr, "/metrics").unwrap().0, 200);
    assert_eq!(http_get(agent.addr, "/snapshot").unwrap().0, 401);
    // TLS without a client certificate: a TLS caller like any other, refused (missing: 2).
    let anonymous = client(&https, &tls_creds(&ca_path, None));
    assert_eq!(blocking::fetch(&anonymous, "/metrics").unwrap().0, 200);
    let e = blocking::get(&anonymous, "/snapshot").unwrap_err();
    assert!(
        matches!(e, ClientError::Refused { status: 401, .. }),
        "{e:?}"
    );
    // The right certificate: served.
    let ok = client(&https, &tls_creds(&ca_path, Some(&good)));
    let snap = blocking::get(&ok, "/snapshot").unwrap();
    assert!(String::from_utf8_lossy(&snap).contains(&pods.a.veth.name));
    // Expired, or signed by another CA: the handshake fails, and says so.
    for (what, cert) in [("expired", &expired), ("foreign", &foreign)] {
        let c = client(&https, &tls_creds(&ca_path, Some(cert)));
        let e = blocking::get(&c, "/snapshot").unwrap_err();
        assert!(matches!(e, ClientError::TlsRefused { .. }), "{what}: {e:?}");
    }
    assert_eq!(denied(&agent, "tls_handshake"), 2);
    assert_eq!(denied(&agent, "missing_credentials"), 2);

    // The CLI with the certificate streams the pods' pings.
    let flags = [
        "--tls-ca",
        ca_path.to_str().unwrap(),
        "--tls-cert",
        good.0.to_str().unwrap(),
        "--tls-key",
        good.1.to_str().unwrap(),
    ];
    let events = trace_through(&https, &flags, &pods);
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e["interface"], pods.a.veth.name.as_str(), "{e}");
    }
    // Without one: one line.
    let out = node_tracer(&[
        "trace",
        "icmp",
        "--connect",
        &https,
        "--tls-ca",
        ca_path.to_str().unwrap(),
    ]);
    assert_refused(&out, "trace over TLS without a certificate", "HTTP 401");

    // The server certificate renewed in place (by a new CA here, so the change shows): new
    // connections get the new one without a restart.
    let (renewed_ca, renewed_ca_path) = pki.ca("renewed-ca");
    let renewed = pki.leaf(&renewed_ca, "server-renewed", &["127.0.0.1"], false);
    let trusts_renewed = client(&https, &tls_creds(&renewed_ca_path, Some(&good)));
    assert!(blocking::get(&trusts_renewed, "/snapshot").is_err());
    std::fs::copy(&renewed.0, &server.0).unwrap();
    std::fs::copy(&renewed.1, &server.1).unwrap();
    blocking::get(&trusts_renewed, "/snapshot").expect("the renewed certificate");
    assert!(
        blocking::get(&ok, "/snapshot").is_err(),
        "the old one is gone"
    );
    let (status, log) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn bad_credentials_files_stop_the_start_in_one_line() {
    require_root();
    let tmp = TempDir::new("ab");
    let empty = tmp.0.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let garbage = tmp.0.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = tmp.0.join("missing");
    let (m, e, g) = (
        missing.to_str().unwrap(),
        empty.to_str().unwrap(),
        garbage.to_str().unwrap(),
    );
    for (what, flags, says) in [
        ("missing token file", vec!["--api-token-file", m], m),
        (
            "empty token file",
            vec!["--api-token-file", e],
            "holds no token",
        ),
        (
            "garbage certificate",
            vec!["--tls-cert", g, "--tls-key", g],
            "no certificate",
        ),
    ] {
        let mut cmd = vec!["run", "--listen", "127.0.0.1:0", "-i", "lo"];
        cmd.extend(flags);
        let out = node_tracer(&cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{what}: {err}");
        assert!(errors[0].contains(says), "{what}: {err}");
        assert!(
            !err.contains("attached"),
            "{what}: nothing is attached first: {err}"
        );
    }
    // Half a key pair: clap says so before anything runs.
    let out = node_tracer(&["run", "--tls-cert", g]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

/// The hostile-HTTP cases, against the authenticated endpoints. Each tells a refusal (an
/// answer, or the agent closing the connection) from a hang (no answer within the generous
/// timeout).
#[test]
fn hostile_clients_of_the_authenticated_endpoints_are_refused_not_hung() {
    require_root();
    let pods = Pods::new();
    let tmp = TempDir::new("ah");
    let pki = Pki { dir: tmp.0.clone() };
    let (ca, ca_path) = pki.ca("ca");
    let server = pki.leaf(&ca, "server", &["127.0.0.1"], false);
    let token_path = tmp.0.join("token");
    std::fs::write(&token_path, "hostile-test-token").unwrap();
    let mut extra = pods.agent_args();
    for (flag, path) in [
        ("--tls-cert", &server.0),
        ("--tls-key", &server.1),
        ("--tls-client-ca", &ca_path),
        ("--api-token-file", &token_path),
    ] {
        extra.push(flag.into());
        extra.push(path.display().to_string());
    }
    let agent = Agent::start(&args(&extra));
    let addr = agent.addr;
    let started = Instant::now();

    // A guessing client: 200 wrong tokens, each refused; the log says so a bounded number of
    // times.
    let wrong = tmp.0.join("wrong");
    for i in 0..200 {
        std::fs::write(&wrong, format!("guess-{i}")).unwrap();
        let c = client(&format!("http://{addr}"), &token_creds(&wrong));
        let e = blocking::get(&c, "/snapshot").unwrap_err();
        assert!(e.is_refusal(), "guess {i}: {e:?}");
    }
    assert_eq!(denied(&agent, "wrong_token"), 200);

    // Answered or closed, never left hanging: read until the agent answers or closes.
    let outcome = |mut s: TcpStream| -> String {
        s.set_read_timeout(Some(Duration::from_mins(2))).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => String::from_utf8_lossy(&buf).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
            Err(e) => panic!("no answer, the connection still open: {e}"),
        }
    };
    // An Authorization header of 64 KiB: 431, or closed.
    let mut s = TcpStream::connect(addr).unwrap();
    let big = format!(
        "GET /snapshot HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes());
    let reply = outcome(s);
    assert!(reply.is_empty() || reply.contains(" 431 "), "{reply}");
    // Not TLS after a TLS record type: the handshake fails and the agent closes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[22, 3, 1, 0, 5, b'h', b'e', b'l', b'l', b'o'])
        .unwrap();
    assert_eq!(outcome(s), "", "garbage after a TLS record type");
    // A client that connects and says nothing: cut off (the first-bytes and header timeouts).
    let s = TcpStream::connect(addr).unwrap();
    let reply = outcome(s);
    assert!(reply.is_empty() || reply.contains(" 408 "), "{reply}");
    // Still serving both kinds of caller.
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    let c = client(&format!("http://{addr}"), &token_creds(&token_path));
    blocking::get(&c, "/snapshot").expect("the right token, after all that");

    let (status, log) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    // One message per ten seconds at most, however many refusals.
    let messages = log.matches("API: refused").count() as u64;
    let bound = started.elapsed().as_secs() / 10 + 1;
    assert!(
        (1..=bound).contains(&messages),
        "{messages} refusal messages in {:?}",
        started.elapsed()
    );
}
