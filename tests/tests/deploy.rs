//! What `deploy/` ships, checked against the real thing: the manifests carry the fields a node
//! agent needs (and the capabilities the kernel really asks for, proven under `capsh`), the
//! dashboard and the rules name only metrics a live agent exports, and promtool accepts the
//! config and passes the rule tests.

// Shared with prometheus.rs, which uses the server half; this file only needs `deploy_dir`.
#[allow(dead_code)]
#[path = "support/prom.rs"]
mod prom;

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Agent, Link, Pod, TempDir, binary, free_port, http_get, require_root, require_tool, sh,
    signal_and_wait, unique, unique_net,
};
use prom::deploy_dir;
use serde::Deserialize as _;
use serde_yaml::Value;

fn yaml(rel: &str) -> Value {
    let path = deploy_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The capabilities the DaemonSet adds, as capsh names (`cap_sys_admin`).
fn manifest_caps() -> Vec<String> {
    let ds = yaml("daemonset.yaml");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    strs(&c["securityContext"]["capabilities"]["add"])
        .iter()
        .map(|c| format!("cap_{}", c.to_lowercase()))
        .collect()
}

#[test]
fn manifests_carry_host_access_least_privilege_probes_and_discovery() {
    let k = yaml("kustomization.yaml");
    let resources = strs(&k["resources"]);
    for r in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "daemonset.yaml",
        "service.yaml",
        "podmonitor.yaml",
    ] {
        assert!(resources.iter().any(|x| x == r), "kustomization lacks {r}");
        assert!(deploy_dir().join(r).exists(), "{r} missing");
    }
    assert_eq!(k["namespace"], "node-tracer");

    let ds = yaml("daemonset.yaml");
    assert_eq!(ds["kind"], "DaemonSet");
    let pod = &ds["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "node-tracer");
    assert_eq!(ds["spec"]["selector"]["matchLabels"], *labels);
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9465");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true, "veths live in the host netns");
    // Not needed, by experiment (deploy/README.md): /host/proc plus ptrace rules suffice.
    assert_ne!(spec["hostPID"], true);
    assert_eq!(spec["serviceAccountName"], "node-tracer");
    assert_eq!(spec["automountServiceAccountToken"], false);

    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let add: BTreeSet<String> = strs(&sc["capabilities"]["add"]).into_iter().collect();
    assert_eq!(
        add,
        ["NET_ADMIN", "SYS_ADMIN"].map(String::from).into(),
        "the set proven by capabilities_* below"
    );
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);

    let port = &c["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["containerPort"].as_u64()),
        (Some("metrics"), Some(9465))
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let h = &c[probe]["httpGet"];
        assert_eq!(
            (h["path"].as_str(), h["port"].as_u64()),
            (Some("/healthz"), Some(9465)),
            "{probe}"
        );
    }
    // Start-up attaches every veth first (measured 36-91 s for 1,000 veths in tcx mode): the
    // startup probe must allow minutes, or liveness would kill the agent on big nodes.
    let startup = &c["startupProbe"];
    let budget = startup["periodSeconds"].as_u64().unwrap_or(10)
        * startup["failureThreshold"].as_u64().unwrap_or(3);
    assert!(budget >= 180, "startup budget {budget} s");
    let r = &c["resources"];
    assert_eq!(r["requests"]["cpu"], "50m");
    assert_eq!(r["requests"]["memory"], "64Mi");
    assert_eq!(r["limits"]["cpu"], "200m");
    assert_eq!(r["limits"]["memory"], "128Mi");

    // Every host path the agent reads is mounted where its flags point.
    let volumes = spec["volumes"].as_sequence().unwrap();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount = |host: &str| -> &Value {
        let v = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == host)
            .unwrap_or_else(|| panic!("no hostPath volume for {host}"));
        mounts
            .iter()
            .find(|m| m["name"] == v["name"])
            .unwrap_or_else(|| panic!("volume for {host} not mounted"))
    };
    let args = strs(&c["args"]);
    assert_eq!(args[0], "run");
    let flag = |name: &str| -> String {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name}= in {args:?}"))
            .to_string()
    };
    assert_eq!(flag("listen"), "0.0.0.0:9465");
    for (host, flag_name, ro) in [
        ("/proc", Some("proc-root"), true),
        ("/run/netns", Some("netns-dir"), true),
        ("/var/run/netns", None, true),
        ("/run", None, true),
        ("/var/lib/cni/results", Some("cni-results-dir"), true),
        ("/sys/fs/bpf", None, true),
    ] {
        let m = mount(host);
        if let Some(f) = flag_name {
            assert_eq!(
                m["mountPath"].as_str(),
                Some(flag(f).as_str()),
                "--{f} vs mount of {host}"
            );
        }
        assert_eq!(
            m["readOnly"].as_bool().unwrap_or(false),
            ro,
            "readOnly of {host}"
        );
    }
    // Pod namespaces are bind-mounted after the agent starts, a runtime may start after it:
    // they must propagate in.
    for host in ["/run/netns", "/var/run/netns", "/run"] {
        assert_eq!(mount(host)["mountPropagation"], "HostToContainer", "{host}");
    }
    // Every runtime's socket is found under the host's /run, whichever the node runs: no
    // single socket is mounted (a `type: Socket` volume fails the pod where that runtime is
    // absent), the CRI defaults apply, and Docker's socket is named where the mount has it.
    assert_eq!(mount("/run")["mountPath"], "/run");
    let run = volumes
        .iter()
        .find(|v| v["hostPath"]["path"] == "/run")
        .unwrap();
    assert_eq!(run["hostPath"]["type"], "Directory");
    assert!(
        volumes.iter().all(|v| v["hostPath"]["type"] != "Socket"),
        "a socket volume: {volumes:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--cri-socket")),
        "the defaults name every CRI runtime: {args:?}"
    );
    let under_run = node_tracer::pods::DEFAULT_CRI_SOCKETS
        .iter()
        .filter(|s| s.starts_with("/run/"))
        .count();
    assert!(under_run >= 4, "containerd, CRI-O, k3s/RKE2, cri-dockerd");
    assert_eq!(flag("docker-socket"), "/run/docker.sock");
    assert_eq!(mount("/proc")["mountPath"], "/host/proc");
    // The API token: the kustomization's generated Secret, mounted read-only where the flag
    // and the clients' environment variable point; the agent is not started without it, since
    // it listens on 0.0.0.0 and would otherwise refuse /snapshot and /trace/icmp.
    let generator = k["secretGenerator"]
        .as_sequence()
        .and_then(|g| g.iter().find(|g| g["name"] == "node-tracer-api"))
        .expect("a secretGenerator named node-tracer-api");
    assert_eq!(strs(&generator["files"]), ["token=api-token"]);
    let token_volume = volumes
        .iter()
        .find(|v| v["secret"]["secretName"] == "node-tracer-api")
        .expect("a volume of the node-tracer-api Secret");
    let token_mount = mounts
        .iter()
        .find(|m| m["name"] == token_volume["name"])
        .expect("the token volume mounted");
    assert_eq!(token_mount["readOnly"], true);
    let token_file = flag("api-token-file");
    assert_eq!(
        token_file,
        format!("{}/token", token_mount["mountPath"].as_str().unwrap()),
        "--api-token-file names the Secret's `token` key in its mount"
    );
    let env_token = c["env"]
        .as_sequence()
        .and_then(|e| e.iter().find(|e| e["name"] == "NODE_TRACER_API_TOKEN_FILE"))
        .expect("NODE_TRACER_API_TOKEN_FILE for clients run in the container");
    assert_eq!(env_token["value"].as_str(), Some(token_file.as_str()));
    // And every flag is one the binary really has.
    let help = String::from_utf8(
        Command::new(binary())
            .args(["run", "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for a in &args[1..] {
        let name = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{name} ")) || help.contains(&format!("{name} <")),
            "{name} not in run --help"
        );
    }

    let svc = yaml("service.yaml");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["selector"], *labels);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");

    let pm = yaml("podmonitor.yaml");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(pm["spec"]["selector"]["matchLabels"], *labels);
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        (ep["port"].as_str(), ep["path"].as_str()),
        (Some("metrics"), Some("/metrics"))
    );
    assert_eq!(
        ep["honorLabels"], true,
        "the agent's namespace/pod labels name the observed pod"
    );

    assert_eq!(
        yaml("serviceaccount.yaml")["automountServiceAccountToken"],
        false
    );
    assert_eq!(yaml("namespace.yaml")["metadata"]["name"], "node-tracer");
}

/// The base renders as kustomize (kubectl's built-in) builds it: every object in the
/// node-tracer namespace, the image substituted, the API token's Secret generated from
/// `deploy/api-token` and mounted by its generated name. Rendered from a copy of deploy/ that
/// only adds the token file an operator generates (it is never committed).
#[test]
fn kustomize_renders_the_base() {
    require_tool("kubectl");
    let tmp = TempDir::new("kz");
    let copy = tmp.0.join("deploy");
    let out = Command::new("cp")
        .arg("-r")
        .arg(deploy_dir())
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -r deploy/");
    let token = unique("tok");
    std::fs::write(copy.join("api-token"), &token).unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&copy)
        .output()
        .expect("spawn kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let mut kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "DaemonSet",
            "Namespace",
            "PodMonitor",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "node-tracer", "{:?}", d["kind"]);
        }
    }
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let image = pod["containers"][0]["image"].as_str().unwrap();
    // The name `cargo xtask image` tags (tests/image.rs runs it under containerd).
    assert_eq!(image, format!("node-tracer:{}", env!("CARGO_PKG_VERSION")));
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    let name = secret["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("node-tracer-api-"), "{name}");
    let mounted = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["secret"]["secretName"].as_str() == Some(name));
    assert!(mounted, "the DaemonSet mounts the generated {name}");
    let data = secret["data"]["token"].as_str().unwrap();
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), data.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&decoded.stdout), token);
}

fn promtool(args: &[&str]) -> String {
    require_tool("promtool");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir().join("prometheus"))
        .output()
        .expect("spawn promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_tests_pass() {
    let out = promtool(&["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "rules", "rules.yaml"]);
    assert!(out.contains("SUCCESS: 15 rules found"), "{out}");
    let out = promtool(&["test", "rules", "rules_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Metric names in a PromQL expression (identifiers naming node-tracer series or rules).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.contains("node_tracer"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn dashboard_and_rules_name_only_metrics_a_live_agent_exports() {
    require_root();
    require_tool("iperf3");
    let net = unique_net();
    let br = Link::bridge("br");
    let a = Pod::bridged("da", &br, &format!("{net}.2"), 24);
    let b = Pod::bridged("db", &br, &format!("{net}.3"), 24);
    // Hairpin on a bridge port is a MAC anomaly, so node_tracer_mac_anomalies is exported too.
    sh(&format!(
        "ip link set {} type bridge_slave hairpin on",
        a.veth.name
    ));
    let agent = Agent::start(&["-i", &a.veth.name, "-i", &b.veth.name]);
    a.ns.exec(&format!("ping -c 3 -i 0.2 -q {}", b.ip));
    // A SYN that b's firewall drops: a drop (netfilter_drop) and, after a second, a retransmit,
    // so node_tracer_drops_total and node_tracer_tcp_retransmits_total are exported too.
    b.ns.exec("iptables -A INPUT -p tcp --dport 9 -j DROP");
    let _ = a.ns.exec_output(&format!(
        "timeout 2.5 bash -c \"echo > /dev/tcp/{}/9\"",
        b.ip
    ));
    // A TCP handshake into b, so the TCP flag and handshake series exist.
    b.ns.exec("iperf3 -s -1 -D -p 5201 --logfile /dev/null");
    let start = Instant::now();
    while !b.ns.exec("ss -Hltn").contains(":5201") {
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "iperf3 never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.ns.exec(&format!("(exec 3<>/dev/tcp/{}/5201)", b.ip));
    let start = Instant::now();
    let live = loop {
        let m = agent.metrics();
        let has = |name: &str| m.lines().any(|l| l.starts_with(&format!("{name}{{")));
        if has("node_tracer_tcp_retransmits_total")
            && has("node_tracer_drops_total")
            && has("node_tracer_tcp_handshake_seconds_bucket")
            || start.elapsed() > Duration::from_secs(30)
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let exported: BTreeSet<String> = live
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();

    let rules = yaml("prometheus/rules.yaml");
    let mut recorded = BTreeSet::new();
    let mut exprs = Vec::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            if let Some(name) = r["record"].as_str() {
                recorded.insert(name.to_string());
            }
            exprs.push((
                format!("rule {:?}", r["record"].as_str().or(r["alert"].as_str())),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/node-tracer.json")).unwrap(),
    )
    .unwrap();
    let mut panels_with_ours = 0;
    for p in dash["panels"].as_array().unwrap() {
        let mut any = false;
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap().to_string();
            any |= !metric_names(&e).is_empty();
            exprs.push((format!("panel {}", p["title"]), e));
        }
        if any {
            panels_with_ours += 1;
        }
    }
    assert!(
        panels_with_ours >= 8,
        "the dashboard queries node-tracer metrics"
    );
    let mut seen = BTreeSet::new();
    for (what, e) in &exprs {
        for name in metric_names(e) {
            assert!(
                exported.contains(&name) || recorded.contains(&name),
                "{what} queries {name}, which the agent does not export and no rule records; exported: {exported:?}"
            );
            seen.insert(name);
        }
    }
    // The panels the issue asks for are there.
    for m in [
        "node_tracer_icmp_messages_total",
        "node_tracer_mac_anomalies",
        "node_tracer_attached_interfaces",
        "node_tracer_transmit_packets_total",
        "namespace_pod:node_tracer_transmit_bytes:rate1m",
        "node_tracer_drops_total",
        "node_tracer_tcp_retransmits_total",
        "node_tracer_tcp_handshake_seconds_bucket",
        "node_tracer_tcp_flags_total",
        "node_tracer_unseen_packets_total",
    ] {
        assert!(seen.contains(m), "nothing queries {m}");
    }
}

/// `node-tracer run` under `capsh` with exactly `keep` (all other capabilities dropped from the
/// bounding set, as `capabilities: drop: [ALL], add: [...]` does), stopped by PID on drop.
struct Capped {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Capped {
    fn start(keep: &[&str], extra: &[&str]) -> Self {
        require_tool("capsh");
        let all = sh("capsh --print");
        let bounding = all
            .lines()
            .find_map(|l| l.strip_prefix("Bounding set ="))
            .expect("capsh --print: no bounding set");
        let drop: Vec<&str> = bounding
            .split(',')
            .map(str::trim)
            .filter(|c| !keep.contains(c))
            .collect();
        for k in keep {
            assert!(
                bounding.contains(k),
                "{k} is not in this shell's bounding set"
            );
        }
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("capsh")
            .arg(format!("--drop={}", drop.join(",")))
            .args(["--", "-c", r#"exec "$0" "$@""#])
            .arg(binary())
            .args(["run", "--listen", &addr.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn capsh");
        Self { child, addr }
    }

    /// Waits until /healthz answers; panics with stderr if the agent exits first.
    fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited ({st}): {}", self.stderr());
            }
            if let Ok((200, _)) = http_get(self.addr, "/healthz") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "agent not healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the agent to exit; (success, stderr).
    fn wait_exit(mut self) -> (bool, String) {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return (st.success(), self.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent still running; /healthz: {:?}",
                http_get(self.addr, "/healthz")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    fn get(&self, path: &str) -> String {
        let (status, body) = http_get(self.addr, path).unwrap();
        assert_eq!(status, 200, "{path}");
        body
    }

    /// SIGTERM, then its stderr (all of it: the pipe closes when the agent exits).
    fn stop(mut self) -> String {
        // capsh exec'd bash exec'd the agent: the child's PID is the agent's.
        signal_and_wait(&mut self.child, libc::SIGTERM).1
    }
}

impl Drop for Capped {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The one veth of a pod: the agent under test must enter its namespace to name the peer.
fn peer_name(agent: &Capped, veth: &str) -> Option<String> {
    let snap: serde_json::Value = serde_json::from_str(&agent.get("/snapshot")).unwrap();
    snap["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == veth)
        .and_then(|p| p["peer"]["name"].as_str().map(str::to_owned))
}

/// The agent runs with exactly `keep` and ends up attached with `ends_in` (fast-start moves from
/// netlink to tcx a moment after the start, which must work with the same capabilities).
fn assert_works(keep: &[&str], mode: &str, ends_in: &str, pod: &Pod) {
    let mut agent = Capped::start(
        keep,
        &[
            "--attach-mode",
            mode,
            "--tcx-after",
            "0",
            "-i",
            &pod.veth.name,
        ],
    );
    agent.wait_healthy();
    let want = format!("node_tracer_attached_interfaces{{mode=\"{ends_in}\"}} 1");
    let start = Instant::now();
    let mut metrics = agent.get("/metrics");
    while !metrics.contains(&want) && start.elapsed() < Duration::from_mins(1) {
        std::thread::sleep(Duration::from_millis(100));
        metrics = agent.get("/metrics");
    }
    assert!(
        metrics.contains(&want),
        "{keep:?} {mode}: not attached with {ends_in}:\n{metrics}"
    );
    // setns worked: the peer inside the pod's namespace is named.
    assert_eq!(
        peer_name(&agent, &pod.veth.name).as_deref(),
        Some("eth0"),
        "{keep:?} {mode}"
    );
    let err = agent.stop();
    assert!(!err.contains("error"), "{keep:?} {mode}: {err}");
}

fn assert_refused(keep: &[&str], mode: &str, pod: &Pod, missing: &str) {
    let agent = Capped::start(keep, &["--attach-mode", mode, "-i", &pod.veth.name]);
    let (ok, err) = agent.wait_exit();
    assert!(!ok, "{keep:?} {mode}: exited 0");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{keep:?} {mode}: one line, got {err:?}");
    assert!(
        lines[0].starts_with("node-tracer: error:")
            && lines[0].contains(&format!("missing capability {missing}")),
        "{keep:?} {mode}: {err}"
    );
}

fn cap_lab() -> (Link, Pod) {
    require_root();
    let br = Link::bridge("br");
    let net = unique_net();
    let pod = Pod::bridged("cp", &br, &format!("{net}.2"), 24);
    (br, pod)
}

#[test]
fn capabilities_tcx_needs_exactly_cap_sys_admin() {
    let (_br, pod) = cap_lab();
    // CAP_SYS_ADMIN alone: the kernel accepts it for bpf(2) (bpf_capable, perfmon_capable,
    // bpf_net_capable) and tcx attach, and setns needs it.
    assert_works(&["cap_sys_admin"], "tcx", "tcx", &pod);
    // auto picks tcx on this kernel (>= 6.6).
    assert_works(&["cap_sys_admin"], "auto", "tcx", &pod);
    assert_refused(&[], "tcx", &pod, "CAP_SYS_ADMIN");
    // The "obvious" eBPF set cannot enter pod namespaces.
    assert_refused(
        &["cap_bpf", "cap_perfmon", "cap_net_admin"],
        "tcx",
        &pod,
        "CAP_SYS_ADMIN",
    );
}

#[test]
fn capabilities_netlink_mode_needs_cap_net_admin_too_and_the_manifest_set_works() {
    let (_br, pod) = cap_lab();
    assert_works(
        &["cap_sys_admin", "cap_net_admin"],
        "netlink",
        "netlink",
        &pod,
    );
    assert_refused(&["cap_sys_admin"], "netlink", &pod, "CAP_NET_ADMIN");
    assert_refused(&["cap_net_admin"], "netlink", &pod, "CAP_SYS_ADMIN");
    // What deploy/daemonset.yaml grants runs in both modes.
    let caps = manifest_caps();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    assert_works(&caps, "netlink", "netlink", &pod);
    assert_works(&caps, "auto", "tcx", &pod);
    // fast-start: netlink at once, then tcx through a raw BPF_LINK_CREATE.
    assert_works(&caps, "fast-start", "tcx", &pod);
    assert_refused(&["cap_sys_admin"], "fast-start", &pod, "CAP_NET_ADMIN");
}

/// Kills an `unshare --net sleep` (a namespace only a process holds) by PID on drop.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn capabilities_without_cap_sys_ptrace_process_namespaces_stay_unresolved_with_a_warning() {
    require_root();
    require_tool("unshare");
    let holder = Holder(
        Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = holder.0.id();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let start = Instant::now();
    while std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .as_ref()
        == Some(&host)
    {
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "unshare never unshared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let veth = unique("pv");
    sh(&format!(
        "ip link add {veth} type veth peer name eth0 netns {pid}"
    ));
    let _link = Link { name: veth.clone() };
    sh(&format!("ip link set {veth} up"));

    // The holder runs as root with every capability: only CAP_SYS_PTRACE opens its
    // /proc/PID/ns/net to an agent with fewer.
    let mut agent = Capped::start(&["cap_sys_admin"], &["-i", &veth]);
    agent.wait_healthy();
    assert_eq!(peer_name(&agent, &veth), None);
    let err = agent.stop();
    assert!(err.contains("no CAP_SYS_PTRACE"), "warning names it: {err}");

    let mut agent = Capped::start(&["cap_sys_admin", "cap_sys_ptrace"], &["-i", &veth]);
    agent.wait_healthy();
    let start = Instant::now();
    while peer_name(&agent, &veth).is_none() {
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "peer not resolved with CAP_SYS_PTRACE"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let snap: serde_json::Value = serde_json::from_str(&agent.get("/snapshot")).unwrap();
    let port = snap["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == veth.as_str())
        .unwrap()
        .clone();
    assert_eq!(port["pod"]["name"], format!("sleep[{pid}]"));
    assert_eq!(port["pod"]["source"], "proc");
    let err = agent.stop();
    assert!(!err.contains("CAP_SYS_PTRACE"), "{err}");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
}
