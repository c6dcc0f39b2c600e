//! Docker Engine as a pod source: a real `dockerd` of the test's own (see
//! `node_tracer_tests::docker`), its containers named the way `docker inspect` names them on the
//! default bridge, on a user-defined network (`br-<id>`), sharing another's namespace, and as
//! cri-dockerd's labelled `k8s_POD_…` sandbox; counts on a container's veth equal the kernel's;
//! engines that hang, answer garbage, refuse, or lose a container between list and inspect give
//! a warning while the other sources still name what they can.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixListener,
    path::Path,
};

use node_tracer_tests::{
    Agent, Pod, TempDir,
    docker::{Engine, only_docker, peers},
    metric, node_tracer, quiet_read, require_root, unique, unique_net,
};
use serde_json::Value;

fn row<'a>(rows: &'a [Value], veth: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == veth)
        .unwrap_or_else(|| panic!("no row for {veth} in {rows:#?}"))
}

/// The row `peers` gives the container's veth carries `docker inspect`'s name, id and image.
fn assert_named_as_inspect(engine: &Engine, rows: &[Value], container: &str) -> String {
    let inspect = engine.inspect(container);
    let veth = engine.host_veth(container);
    let r = row(rows, &veth);
    let name = inspect["Name"].as_str().unwrap().trim_start_matches('/');
    assert_eq!(r["container"]["runtime"], "docker", "{r:#}");
    assert_eq!(r["container"]["id"], inspect["Id"], "{r:#}");
    assert_eq!(r["container"]["name"], name, "{r:#}");
    assert_eq!(r["container"]["image"], inspect["Config"]["Image"], "{r:#}");
    assert_eq!(r["pod"]["source"], "docker", "{r:#}");
    veth
}

#[test]
fn containers_are_named_as_docker_inspect_names_them() {
    require_root();
    let mut engine = Engine::start("dkn");
    let tmp = TempDir::new("dkn");

    // The default bridge, a user-defined network, a container in another's namespace.
    let web = unique("web");
    engine.run(&web, "");
    let net = unique("net");
    let user_bridge = engine.network(&net, &unique_net());
    let db = unique("db");
    engine.run(&db, &format!("--network {net}"));
    let side = unique("side");
    engine.run(&side, &format!("--network container:{web}"));
    // What cri-dockerd makes for a pod: the labelled sandbox, and an app container (labelled
    // too) in its namespace.
    let uid = "0c7f3d2e-5a41-4b8e-9d3c-1f2e3d4c5b6a";
    let labels = format!(
        "--label io.kubernetes.pod.name=busybox --label io.kubernetes.pod.namespace=shop \
         --label io.kubernetes.pod.uid={uid}"
    );
    let sandbox = format!("k8s_POD_busybox_shop_{uid}_0");
    engine.run(
        &sandbox,
        &format!("{labels} --label io.kubernetes.docker.type=podsandbox"),
    );
    let app = format!("k8s_busybox_busybox_shop_{uid}_0");
    engine.run(
        &app,
        &format!(
            "{labels} --label io.kubernetes.docker.type=container --network container:{sandbox}"
        ),
    );

    let args = only_docker(&tmp, &[&engine.socket]);
    let (rows, stderr) = peers(&args);

    // Plain containers: the pod is the container, no Kubernetes namespace.
    let web_veth = assert_named_as_inspect(&engine, &rows, &web);
    let r = row(&rows, &web_veth);
    assert_eq!(r["pod"]["name"], web.as_str(), "{r:#}");
    assert_eq!(r["pod"]["namespace"], "", "{r:#}");
    assert_eq!(r["master"], engine.bridge.name.as_str(), "{r:#}");
    assert_eq!(r["mode"], "bridged");

    // The user-defined network's bridge is a bridge like any other.
    let db_veth = assert_named_as_inspect(&engine, &rows, &db);
    let r = row(&rows, &db_veth);
    assert_eq!(r["pod"]["name"], db.as_str(), "{r:#}");
    assert_eq!(r["master"], user_bridge.as_str(), "{r:#}");
    assert_eq!(r["mode"], "bridged");
    assert!(r["port_no"].as_u64().is_some(), "{r:#}");

    // The sharer has no veth of its own and never names its owner's.
    assert_eq!(engine.host_veth(&side), web_veth);
    assert!(
        rows.iter().all(|r| r["container"]["name"] != side.as_str()),
        "{side} named a veth: {rows:#?}"
    );

    // cri-dockerd's sandbox names the Kubernetes pod; the app container in it never wins.
    let pod_veth = assert_named_as_inspect(&engine, &rows, &sandbox);
    let r = row(&rows, &pod_veth);
    assert_eq!(
        (&r["pod"]["namespace"], &r["pod"]["name"], &r["pod"]["uid"]),
        (
            &Value::from("shop"),
            &Value::from("busybox"),
            &Value::from(uid)
        ),
        "{r:#}"
    );
    assert_eq!(engine.host_veth(&app), pod_veth);
    assert!(
        rows.iter().all(|r| r["container"]["name"] != app.as_str()),
        "{app} named a veth: {rows:#?}"
    );
    assert!(!stderr.contains("WARN"), "a healthy engine warns: {stderr}");

    // The table shows the containers by name, and the pod the way kubectl names it.
    let mut cmd = vec!["peers"];
    cmd.extend(args.iter().map(String::as_str));
    let out = node_tracer(&cmd);
    let table = String::from_utf8_lossy(&out.stdout);
    for (veth, shown) in [
        (&web_veth, format!("{web} (docker)")),
        (&db_veth, format!("{db} (docker)")),
        (&pod_veth, "shop/busybox (docker)".to_owned()),
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(veth.as_str()))
            .unwrap_or_else(|| panic!("no line for {veth}: {table}"));
        assert!(line.ends_with(&shown), "{line:?} should end with {shown:?}");
    }
    // And ends saying the engine answered and named those three ports.
    let last = table.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("docker ({}) 3 ports", engine.socket.display())),
        "{last}"
    );
}

#[test]
fn counts_on_a_container_veth_equal_the_kernels_under_its_name() {
    require_root();
    let mut engine = Engine::start("dkc");
    let tmp = TempDir::new("dkc");
    let net = unique("net");
    let subnet = unique_net();
    let user_bridge = engine.network(&net, &subnet);
    let (a, b) = (unique("a"), unique("b"));
    engine.run(&a, &format!("--network {net}"));
    engine.run(&b, &format!("--network {net}"));
    let veth = engine.host_veth(&a);
    let b_ip = engine.inspect(&b)["NetworkSettings"]["Networks"][&net]["IPAddress"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut args = only_docker(&tmp, &[&engine.socket]);
    args.extend(["-i".to_owned(), veth.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    // cAdvisor's `name` label: the name `docker inspect` gives, without its leading '/'.
    let inspected = engine.inspect(&a)["Name"].as_str().unwrap().to_owned();
    let name = inspected.trim_start_matches('/');
    let labels = [
        ("interface", veth.as_str()),
        ("namespace", ""),
        ("pod", a.as_str()),
        ("name", name),
    ];
    let sum = |m: &str, name: &str| -> u64 {
        node_tracer::model::PROTOCOLS
            .iter()
            .map(|p| {
                let mut l = labels.to_vec();
                l.push(("protocol", p));
                metric(m, name, &l).unwrap_or(0.0) as u64
            })
            .sum()
    };
    let (k0, m0) = quiet_read(&agent, &veth);
    assert!(
        m0.contains(&format!("pod=\"{a}\"")),
        "the container's name labels its veth: {m0}"
    );
    assert_eq!(
        metric(&m0, "node_tracer_port_info", &labels),
        Some(1.0),
        "port_info carries name={name:?}: {m0}"
    );
    engine.docker(&format!("exec {a} ping -c 10 -i 0.2 -q {b_ip}"));
    let (k1, m1) = quiet_read(&agent, &veth);
    // Host veth ingress is what the container transmits.
    let tx = sum(&m1, "node_tracer_transmit_packets_total")
        - sum(&m0, "node_tracer_transmit_packets_total");
    let rx = sum(&m1, "node_tracer_receive_packets_total")
        - sum(&m0, "node_tracer_receive_packets_total");
    assert_eq!(tx, k1.rx_packets - k0.rx_packets, "transmit vs kernel");
    assert_eq!(rx, k1.tx_packets - k0.tx_packets, "receive vs kernel");
    assert!(tx >= 10 && rx >= 10, "the pings were counted: {tx} {rx}");
    let bytes = |m: &str, n: &str| metric(m, n, &labels).unwrap_or(0.0) as u64;
    assert_eq!(
        bytes(&m1, "node_tracer_transmit_bytes_total")
            - bytes(&m0, "node_tracer_transmit_bytes_total"),
        k1.rx_bytes - k0.rx_bytes,
        "transmit bytes vs kernel"
    );
    assert_eq!(
        bytes(&m1, "node_tracer_receive_bytes_total")
            - bytes(&m0, "node_tracer_receive_bytes_total"),
        k1.tx_bytes - k0.tx_bytes,
        "receive bytes vs kernel"
    );

    // Drops and TCP series carry the name too: b connects to a closed port of a three times;
    // each SYN dies in a (no_socket), which answers each with a RST.
    let a_ip = engine.inspect(&a)["NetworkSettings"]["Networks"][&net]["IPAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    let named = |m: &str, family: &str, extra: &[(&str, &str)]| -> u64 {
        let mut l = labels.to_vec();
        l.extend_from_slice(extra);
        metric(m, family, &l).unwrap_or(0.0) as u64
    };
    let syn = [("direction", "receive"), ("flag", "syn")];
    let rst = [("direction", "transmit"), ("flag", "rst")];
    let no_socket = [("reason", "no_socket")];
    let m0 = agent.metrics();
    engine.docker(&format!(
        "exec {b} sh -c 'for i in 1 2 3; do busybox nc -w 5 {a_ip} 9 </dev/null; done; true'"
    ));
    // The three were refused before `nc` returned; a scrape may still be on its way.
    let start = std::time::Instant::now();
    let m1 = loop {
        let m = agent.metrics();
        let seen = named(&m, "node_tracer_drops_total", &no_socket)
            - named(&m0, "node_tracer_drops_total", &no_socket);
        if seen >= 3 || start.elapsed() > std::time::Duration::from_secs(30) {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for (family, extra) in [
        ("node_tracer_tcp_flags_total", &syn[..]),
        ("node_tracer_tcp_flags_total", &rst[..]),
        ("node_tracer_drops_total", &no_socket[..]),
    ] {
        assert_eq!(
            named(&m1, family, extra) - named(&m0, family, extra),
            3,
            "{family}{extra:?} with name={name:?}: {m1}"
        );
    }

    // macs reads the user-defined bridge like any other, with the container's name.
    let url = format!("http://{}", agent.addr);
    let out = node_tracer(&[
        "macs",
        "--connect",
        &url,
        "--bridge",
        &user_bridge,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "macs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("macs JSON");
    let port = report["bridges"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["interface"] == veth.as_str())
        .unwrap_or_else(|| panic!("no {veth} in {report:#}"));
    assert_eq!(port["pod"]["name"], a.as_str(), "{port:#}");
    assert_eq!(report["bridges"][0]["name"], user_bridge.as_str());

    let (status, stderr) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A fake engine on a unix socket: each connection gets `answer(request line)` and is closed.
fn fake_engine(path: &Path, answer: impl Fn(&str) -> Vec<u8> + Send + 'static) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = vec![0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let line = head.lines().next().unwrap_or("").to_owned();
            let _ = c.write_all(&answer(&line));
        }
    });
}

fn json_reply(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn engines_that_hang_answer_garbage_refuse_or_lose_a_container_only_warn() {
    require_root();
    let tmp = TempDir::new("dkh");
    let subnet = unique_net();
    // Two namespaces with veths: the fake engine names one, the other only has its
    // /run/netns name.
    let named = Pod::routed("dka", &format!("{subnet}.2"), &format!("{subnet}.1"));
    let other = Pod::routed("dkb", &format!("{subnet}.3"), &format!("{subnet}.1"));

    // Accepts and never answers.
    let hang = tmp.0.join("hang.sock");
    let l = UnixListener::bind(&hang).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    // Not HTTP at all.
    let garbage = tmp.0.join("garbage.sock");
    fake_engine(&garbage, |_| {
        b"\x00\x00\x00\x05garbage\xff\xfe\r\n\r\n".to_vec()
    });
    // HTTP, but not the Engine's JSON.
    let not_json = tmp.0.join("notjson.sock");
    fake_engine(&not_json, |_| {
        json_reply("200 OK", "<html>not an engine</html>")
    });
    // A socket file nobody listens on: connection refused.
    let refused = tmp.0.join("refused.sock");
    drop(UnixListener::bind(&refused).unwrap());
    // An engine whose first container died between the list and its inspect.
    let racing = tmp.0.join("racing.sock");
    let sandbox_key = named.ns.path();
    fake_engine(&racing, move |line| {
        if line.starts_with("GET /containers/json ") {
            json_reply(
                "200 OK",
                r#"[{"Id":"deadbeefdead0001"},{"Id":"a1ive0000000002"}]"#,
            )
        } else if line.starts_with("GET /containers/deadbeefdead0001/json ") {
            json_reply(
                "404 Not Found",
                r#"{"message":"No such container: deadbeefdead0001"}"#,
            )
        } else if line.starts_with("GET /containers/a1ive0000000002/json ") {
            json_reply(
                "200 OK",
                &format!(
                    r#"{{"Id":"a1ive0000000002","Name":"/survivor","Config":{{"Image":"img:1","Labels":null}},
                    "State":{{"Running":true,"Pid":0}},"HostConfig":{{"NetworkMode":"default"}},
                    "NetworkSettings":{{"SandboxKey":"{sandbox_key}"}}}}"#
                ),
            )
        } else {
            json_reply("404 Not Found", r#"{"message":"page not found"}"#)
        }
    });

    let sockets = [&hang, &garbage, &not_json, &refused, &racing];
    let sockets: Vec<&Path> = sockets.iter().map(|p| p.as_path()).collect();
    let args = only_docker(&tmp, &sockets);
    let (rows, stderr) = peers(&args);

    let r = row(&rows, &named.veth.name);
    assert_eq!(r["pod"]["name"], "survivor", "{r:#}");
    assert_eq!(r["pod"]["source"], "docker", "{r:#}");
    assert_eq!(r["container"]["id"], "a1ive0000000002", "{r:#}");
    // The other sources still name what they can.
    let r = row(&rows, &other.veth.name);
    assert_eq!(r["pod"]["name"], other.ns.name.as_str(), "{r:#}");
    assert_eq!(r["pod"]["source"], "netns", "{r:#}");

    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    for (what, needle) in [
        ("hang", hang.display().to_string()),
        ("garbage", garbage.display().to_string()),
        ("not JSON", not_json.display().to_string()),
        ("refused", refused.display().to_string()),
        ("lost container", "deadbeefdead".to_owned()),
    ] {
        assert_eq!(
            warnings.iter().filter(|l| l.contains(&needle)).count(),
            1,
            "one warning for the {what} engine: {stderr}"
        );
    }

    // The agent too: it comes up, and labels the veth from the engine that answers.
    let mut agent_args = args.clone();
    agent_args.extend(["-i".to_owned(), named.veth.name.clone()]);
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = Agent::start(&agent_args);
    let m = agent.metrics();
    assert_eq!(
        metric(
            &m,
            "node_tracer_port_info",
            &[
                ("interface", named.veth.name.as_str()),
                ("namespace", ""),
                ("pod", "survivor"),
                ("name", "survivor")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    let (status, err) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
