//! `node-tracer peers` against a real pod runtime: containerd + runc + the CNI `bridge` and `ptp`
//! plugins, pods created over CRI the way the kubelet creates them. Every answer is checked
//! against the kernel's own view (`ip -j -d link`, `bridge -j link`, inside the pod's namespace)
//! and against the CRI.

use node_tracer_cri::CriClient;
use node_tracer_tests::{node_tracer, runtime, sh};
use serde_json::Value;

fn json(cmd: &str) -> Value {
    serde_json::from_str(&sh(cmd)).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_names_every_pod_and_agrees_with_the_kernel_and_the_cri() {
    let rt = runtime::start("pe").await;
    let specs = [
        ("default", "web-a", "runc"),
        ("default", "web-b", "runc"),
        ("shop", "api-a", "ptp"),
        ("shop", "api-b", "ptp"),
    ];
    let mut pods = Vec::new();
    for (ns, name, handler) in specs {
        pods.push(
            rt.run_pod(name, ns, &runtime::uid(), handler)
                .await
                .unwrap(),
        );
    }
    let sock = rt.socket().to_string_lossy().to_string();
    let out = node_tracer(&["peers", "--json", "--cri-socket", &sock]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("peers --json is JSON");
    let cri = CriClient::connect(rt.socket(), std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let bridge = &rt.options().bridge;
    let gateway_ptp = {
        let s = rt.options().ptp_subnet.to_string();
        let base = s
            .split('/')
            .next()
            .unwrap()
            .rsplit_once('.')
            .unwrap()
            .0
            .to_string();
        format!("{base}.1/32")
    };

    for pod in &pods {
        let row = rows
            .iter()
            .find(|r| r["pod"]["uid"] == pod.uid.as_str())
            .unwrap_or_else(|| panic!("no row names pod {}/{}", pod.namespace, pod.name));
        // The pod, from the best source.
        assert_eq!(row["pod"]["namespace"], pod.namespace.as_str());
        assert_eq!(row["pod"]["name"], pod.name.as_str());
        assert_eq!(row["pod"]["source"], "cri");
        // The peer is the pod's own namespace, by inode (the path may differ: /var/run vs /run).
        assert_eq!(row["peer"]["netns_inode"], pod.netns_inode);

        // The kernel's view of the host veth.
        let veth = row["name"].as_str().unwrap();
        let link = &json(&format!("ip -j -d link show dev {veth}"))[0];
        assert_eq!(row["ifindex"], link["ifindex"]);
        assert_eq!(row["mac"], link["address"]);
        assert_eq!(
            row["peer"]["ifindex"], link["link_index"],
            "peer ifindex (@ifN)"
        );
        assert_eq!(row["peer"]["netnsid"], link["link_netnsid"], "link-netnsid");
        // Every pod's eth0 is ifindex 2 in its own namespace: the number alone says nothing.
        let inside = &json(&format!(
            "nsenter --net={} ip -j link show dev eth0",
            pod.netns.display()
        ))[0];
        assert_eq!(row["peer"]["ifindex"], inside["ifindex"]);
        assert_eq!(row["peer"]["mac"], inside["address"]);
        assert_eq!(row["peer"]["name"], "eth0");

        // The CRI's view of the pod's address.
        let status = cri.pod_sandbox_status(&pod.id).await.unwrap();
        let ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        assert!(!ip.is_empty(), "CRI reports an IP for {}", pod.name);
        let peer_addrs: Vec<&str> = row["peer"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            peer_addrs.iter().any(|a| a.starts_with(&format!("{ip}/"))),
            "peer addresses {peer_addrs:?} hold the CRI's {ip}"
        );

        if pod.handler == "runc" {
            assert_eq!(row["mode"], "bridged");
            assert_eq!(row["master"], bridge.as_str());
            let port_no = link["linkinfo"]["info_slave_data"]["no"].as_str().unwrap();
            let port_no = u16::from_str_radix(port_no.trim_start_matches("0x"), 16).unwrap();
            assert_eq!(row["port_no"], port_no, "bridge port number");
            let blink = &json(&format!("bridge -j link show dev {veth}"))[0];
            assert_eq!(row["master"], blink["master"]);
        } else {
            // GKE-style: no bridge, the shared gateway /32 on the host side, a route per pod.
            assert_eq!(row["mode"], "routed");
            assert_eq!(row["master"], Value::Null);
            assert_eq!(row["port_no"], Value::Null);
            let addrs: Vec<&str> = row["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                addrs.contains(&gateway_ptp.as_str()),
                "{addrs:?} holds {gateway_ptp}"
            );
            let routes: Vec<&str> = row["routes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                routes.contains(&format!("{ip}/32").as_str()),
                "{routes:?} routes {ip}/32"
            );
        }
    }
    // Both routed veths carry the same gateway address: two rows, two pods, one /32.
    let routed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["master"].is_null() && r["pod"]["namespace"] == "shop")
        .filter(|r| pods.iter().any(|p| r["pod"]["uid"] == p.uid.as_str()))
        .collect();
    assert_eq!(routed.len(), 2);
    assert_ne!(routed[0]["pod"]["name"], routed[1]["pod"]["name"]);

    // The human table answers the same questions.
    let table = node_tracer(&["peers", "--cri-socket", &sock]);
    let table = String::from_utf8_lossy(&table.stdout);
    for pod in &pods {
        assert!(
            table.contains(&format!("{}/{} (cri)", pod.namespace, pod.name)),
            "{table}"
        );
    }
    assert!(table.contains(bridge.as_str()));
    // It ends saying which sources answered and what each named: the runtime named our pods
    // (its socket is this test's own, so exactly them).
    let last = table.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("sources: cri ({sock}) {} ports", pods.len())),
        "{last}"
    );
    assert!(
        !last.contains("docker"),
        "no Docker Engine answered here: {last}"
    );
    rt.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cri_the_cni_cache_still_names_the_pods() {
    let rt = runtime::start("pc").await;
    let pod = rt
        .run_pod("web-c", "default", &runtime::uid(), "runc")
        .await
        .unwrap();
    let out = node_tracer(&["peers", "--json", "--cri-socket", "/nonexistent/ntt.sock"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .iter()
        .find(|r| r["peer"]["netns_inode"] == pod.netns_inode)
        .expect("the pod's veth is listed");
    assert_eq!(row["pod"]["name"], "web-c");
    assert_eq!(row["pod"]["namespace"], "default");
    assert_eq!(row["pod"]["source"], "cni-cache");
    rt.stop().await.unwrap();
}
