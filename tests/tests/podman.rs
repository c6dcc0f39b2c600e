//! Podman as a pod source: a real rootful Podman of the test's own (see
//! `node_tracer_tests::podman`), no API service, its containers named the way `podman inspect`
//! names them, a container in another's namespace never naming it; counts on a container's
//! veth equal the kernel's, under the container's name.

use std::process::Output;

use node_tracer_tests::{
    Agent, TempDir, metric, node_tracer, podman::Podman, quiet_read, require_root, unique,
};
use serde_json::Value;

/// Sources that reach no runtime but Podman's processes (other tests may run a CRI runtime, a
/// lab or a Docker Engine).
fn only_podman(tmp: &TempDir) -> Vec<String> {
    [
        ("--cri-socket", "absent-cri.sock"),
        ("--docker-socket", "absent-docker.sock"),
        ("--cni-results-dir", "no-cni"),
    ]
    .iter()
    .flat_map(|(flag, file)| [(*flag).to_owned(), tmp.0.join(file).display().to_string()])
    .collect()
}

fn peers(args: &[String]) -> (Vec<Value>, String) {
    let mut cmd = vec!["peers", "--json"];
    cmd.extend(args.iter().map(String::as_str));
    let out: Output = node_tracer(&cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "peers failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let rows: Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
    (rows.as_array().unwrap().clone(), stderr)
}

fn row<'a>(rows: &'a [Value], veth: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == veth)
        .unwrap_or_else(|| panic!("no row for {veth} in {rows:#?}"))
}

#[test]
fn containers_are_named_as_podman_inspect_names_them() {
    require_root();
    let podman = Podman::start("pdn");
    let tmp = TempDir::new("pdn");
    let (web, db, side) = (unique("web"), unique("db"), unique("side"));
    podman.run(&web, "");
    podman.run(&db, "");
    podman.run(&side, &format!("--network container:{web}"));

    let args = only_podman(&tmp);
    let (rows, stderr) = peers(&args);
    let mut veths = Vec::new();
    for name in [&web, &db] {
        let inspect = podman.inspect(name);
        let veth = podman.host_veth(name);
        let r = row(&rows, &veth);
        assert_eq!(r["pod"]["source"], "podman", "{r:#}");
        assert_eq!(r["pod"]["name"], inspect["Name"], "{r:#}");
        assert_eq!(r["pod"]["namespace"], "", "{r:#}");
        assert_eq!(r["container"]["runtime"], "podman", "{r:#}");
        assert_eq!(r["container"]["id"], inspect["Id"], "{r:#}");
        assert_eq!(r["container"]["name"], inspect["Name"], "{r:#}");
        assert_eq!(r["container"]["image"], inspect["ImageName"], "{r:#}");
        assert_eq!(r["master"], podman.bridge.name.as_str(), "{r:#}");
        assert_eq!(r["mode"], "bridged", "{r:#}");
        veths.push(veth);
    }
    // The sharer has no veth of its own and never names its owner's.
    assert_eq!(podman.host_veth(&side), veths[0]);
    assert!(
        rows.iter().all(|r| r["container"]["name"] != side.as_str()),
        "{side} named a veth: {rows:#?}"
    );
    assert!(!stderr.contains("WARN"), "a healthy Podman warns: {stderr}");

    // The table shows the containers by name, and ends saying Podman answered.
    let mut cmd = vec!["peers"];
    cmd.extend(args.iter().map(String::as_str));
    let out = node_tracer(&cmd);
    let table = String::from_utf8_lossy(&out.stdout);
    for (veth, name) in veths.iter().zip([&web, &db]) {
        let line = table
            .lines()
            .find(|l| l.starts_with(veth.as_str()))
            .unwrap_or_else(|| panic!("no line for {veth}: {table}"));
        assert!(line.ends_with(&format!("{name} (podman)")), "{line:?}");
    }
    // Other tests of this binary may run containers too: at least ours are counted.
    let last = table.lines().last().unwrap_or_default();
    let named: usize = last
        .split("podman ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no podman count in {last:?}"));
    assert!(named >= 2, "{last}");
}

#[test]
fn counts_on_a_container_veth_equal_the_kernels_under_its_name() {
    require_root();
    let podman = Podman::start("pdc");
    let tmp = TempDir::new("pdc");
    let (a, b) = (unique("a"), unique("b"));
    podman.run(&a, "");
    podman.run(&b, "");
    let veth = podman.host_veth(&a);
    let b_ip = podman.ip(&b);

    let mut args = only_podman(&tmp);
    args.extend(["-i".to_owned(), veth.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    let labels = [
        ("interface", veth.as_str()),
        ("namespace", ""),
        ("pod", a.as_str()),
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
    podman.podman(&format!("exec {a} ping -c 10 -i 0.2 -q {b_ip}"));
    let (k1, m1) = quiet_read(&agent, &veth);
    // Host veth ingress is what the container transmits.
    let tx = sum(&m1, "node_tracer_transmit_packets_total")
        - sum(&m0, "node_tracer_transmit_packets_total");
    let rx = sum(&m1, "node_tracer_receive_packets_total")
        - sum(&m0, "node_tracer_receive_packets_total");
    assert_eq!(tx, k1.rx_packets - k0.rx_packets, "transmit vs kernel");
    assert_eq!(rx, k1.tx_packets - k0.tx_packets, "receive vs kernel");
    assert!(tx >= 10 && rx >= 10, "the pings were counted: {tx} {rx}");
    let bytes = |m: &str, n: &str| {
        metric(m, n, &[("interface", veth.as_str()), ("pod", a.as_str())]).unwrap_or(0.0) as u64
    };
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
    let (status, stderr) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
