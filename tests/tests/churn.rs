//! Live churn with a real pod runtime: pods created and deleted while the agent runs. A new
//! pod's veth is attached and labelled from netlink events, its traffic counted exactly with its
//! pod labels; a deleted pod takes its series, map entries and attachments with it.
//!
//! One test in this binary on purpose: its agent attaches to every veth of the host, and test
//! binaries run one after another, so it never touches another test's veths.

// Counters are integers, exact in f64.
#![allow(clippy::float_cmp)]

use std::time::{Duration, Instant};

use node_tracer_tests::{Agent, metric, quiet_read, runtime};
use serde_json::Value;

fn port_of<'a>(snap: &'a Value, uid: &str) -> Option<&'a Value> {
    snap["ports"]
        .as_array()?
        .iter()
        .find(|p| p["pod"]["uid"] == uid)
}

/// Waits until the agent's snapshot shows the pod's veth attached and labelled.
fn wait_labelled(agent: &Agent, uid: &str) -> String {
    let start = Instant::now();
    loop {
        let snap = agent.snapshot();
        if let Some(p) = port_of(&snap, uid)
            && p["attached"] == true
        {
            return p["name"].as_str().unwrap().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pod {uid} not attached and labelled after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn icmp_tx(m: &str, veth: &str, pod: &str) -> f64 {
    metric(
        m,
        "node_tracer_transmit_packets_total",
        &[
            ("namespace", "default"),
            ("pod", pod),
            ("interface", veth),
            ("protocol", "icmp"),
        ],
    )
    .unwrap_or(0.0)
}

/// bpf links (tcx: bpftool 7.1 prints type 11) running one of `progs`.
fn links_of(progs: &std::collections::HashSet<u32>) -> usize {
    let v: Value = serde_json::from_str(&node_tracer_tests::sh("bpftool -j link show")).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .is_some_and(|id| progs.contains(&id))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_and_go_while_the_agent_runs() {
    node_tracer_tests::require_tool("bpftool");
    let rt = runtime::start("ch").await;
    let sock = rt.socket().to_string_lossy().to_string();
    let agent = Agent::start(&["--cri-socket", &sock]);
    let programs = agent.programs();
    assert_eq!(
        programs.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "nt_egress",
            "nt_egress_nl",
            "nt_ingress",
            "nt_ingress_nl",
            "nt_kfree_skb",
            "nt_tcp_retx"
        ],
        "the agent loaded nt_ingress, nt_egress, their netlink twins and the drop and \
         retransmit tracepoint programs, each in the run time metric"
    );
    let all_programs: std::collections::HashSet<u32> = programs.values().copied().collect();
    // The tc programs' links are per port; the tracepoints' two are the agent's own.
    let agents_programs: std::collections::HashSet<u32> = programs
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "nt_kfree_skb" | "nt_tcp_retx"))
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(links_of(&all_programs) - links_of(&agents_programs), 2);

    // Created after the agent: found from RTM_NEWLINK, labelled once the CRI knows the pod.
    let a = rt
        .run_pod("web-a", "default", &runtime::uid(), "runc")
        .await
        .unwrap();
    let b = rt
        .run_pod("web-b", "default", &runtime::uid(), "runc")
        .await
        .unwrap();
    let veth_a = wait_labelled(&agent, &a.uid);
    let veth_b = wait_labelled(&agent, &b.uid);
    assert_ne!(veth_a, veth_b);

    // Traffic sent once the pod is up is counted exactly, with its pod labels.
    let (k0, m0) = quiet_read(&agent, &veth_a);
    node_tracer_tests::sh(&format!(
        "nsenter --net={} ping -c 20 -i 0.02 -q {}",
        a.netns.display(),
        runtime::pod_ip(&b)
    ));
    let (k1, m1) = quiet_read(&agent, &veth_a);
    assert_eq!(
        icmp_tx(&m1, &veth_a, "web-a") - icmp_tx(&m0, &veth_a, "web-a"),
        20.0
    );
    let tx = |m: &str| {
        metric(
            m,
            "node_tracer_transmit_packets_total",
            &[("interface", &veth_a)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        (tx(&m1) - tx(&m0)) as u64,
        k1.rx_packets - k0.rx_packets,
        "vs kernel counters"
    );
    let info = metric(
        &m1,
        "node_tracer_port_info",
        &[("interface", &veth_a), ("pod", "web-a")],
    );
    assert_eq!(info, Some(1.0), "port_info carries the pod");

    // A deleted pod takes its series, map entries and attachments with it.
    rt.remove_pod(&a).await.unwrap();
    wait_until("veth_a's series to go", || {
        !agent.metrics().contains(&format!("interface=\"{veth_a}\""))
    });
    let snap = agent.snapshot();
    assert!(
        !snap["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == veth_a.as_str()),
        "the deleted veth is gone from the snapshot"
    );
    // Counts read in one scrape are consistent with each other even while other veths come and
    // go; the link count is compared only once every port has moved to tcx and no attach
    // happened around it.
    let attached = |m: &str| {
        let n = |mode| metric(m, "node_tracer_attached_interfaces", &[("mode", mode)]).unwrap();
        (n("tcx"), n("netlink"))
    };
    let mut checked = false;
    for _ in 0..30 {
        let m2 = agent.metrics();
        let (tcx, netlink) = attached(&m2);
        let entries = ["PORT_COUNTERS", "PORT_STATS"]
            .map(|map| metric(&m2, "node_tracer_map_entries", &[("map", map)]).unwrap())
            .iter()
            .sum::<f64>();
        assert_eq!(
            entries,
            tcx + netlink,
            "one PORT_COUNTERS slot or PORT_STATS entry per attached port, no more"
        );
        // Two tcx links (ingress, egress) per attached port: the deleted veth's were released.
        let links = links_of(&agents_programs);
        if netlink == 0.0 && attached(&agent.metrics()) == (tcx, netlink) {
            assert_eq!(links, 2 * tcx as usize, "tcx links of the agent's programs");
            checked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(checked, "attachments never settled");

    // And a pod created after a deletion is picked up too.
    let c = rt
        .run_pod("web-c", "default", &runtime::uid(), "runc")
        .await
        .unwrap();
    let veth_c = wait_labelled(&agent, &c.uid);
    let m3 = agent.metrics();
    node_tracer_tests::sh(&format!(
        "nsenter --net={} ping -c 5 -i 0.02 -q {}",
        c.netns.display(),
        runtime::pod_ip(&b)
    ));
    let m4 = agent.metrics();
    assert_eq!(
        icmp_tx(&m4, &veth_c, "web-c") - icmp_tx(&m3, &veth_c, "web-c"),
        5.0
    );

    drop(agent);
    // SIGTERM detaches everything: no link of its programs is left.
    assert_eq!(links_of(&all_programs), 0);
    rt.stop().await.unwrap();
}
