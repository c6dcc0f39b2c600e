//! The lab node: the node of the seeds in namespaces. `up` twice is harmless, the pods really
//! talk, and `down` leaves nothing behind.

use std::time::Duration;

use node_tracer_tests::{KernelCounters, node_tracer, require_root, require_tool, unique};

fn ok(args: &[&str]) -> String {
    let out = node_tracer(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exists(link: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(link).exists()
}

/// Runs its closure on drop: cleanup that also happens when an assertion fails.
struct Down<F: Fn()>(F);

impl<F: Fn()> Drop for Down<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

#[test]
fn lab_up_is_idempotent_and_down_leaves_nothing() {
    require_root();
    require_tool("ping");
    // A short name: it prefixes the lab's interface names (15 bytes at most).
    let name = unique("").chars().take(8).collect::<String>();
    let bridge = unique("lb");
    let docker = unique("ld");
    let args = |action: &'static str| {
        vec![
            "lab".to_string(),
            action.to_string(),
            "--name".into(),
            name.clone(),
            "--bridge".into(),
            bridge.clone(),
            "--docker-bridge".into(),
            docker.clone(),
        ]
    };
    let run = |action: &'static str| {
        let a = args(action);
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Whatever happens below, take the lab down at the end.
    let _down = Down(|| {
        let a = args("down");
        let _ = node_tracer(&a.iter().map(String::as_str).collect::<Vec<_>>());
    });

    let first = run("up");
    let second = run("up");
    assert_eq!(first, second, "a second `up` changes nothing");
    let veths: Vec<String> = first
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    assert_eq!(veths.len(), 4, "four pods: {first}");
    assert!(exists(&bridge) && exists(&docker));
    assert_eq!(first.matches("bridged").count(), 2);
    assert_eq!(first.matches("routed").count(), 2);
    // The docker bridge has no ports; the other has the two bridged pods.
    let ports = |br: &str| {
        std::fs::read_dir(format!("/sys/class/net/{br}/brif")).map_or(0, Iterator::count)
    };
    assert_eq!(ports(&docker), 0);
    assert_eq!(ports(&bridge), 2);

    // Steady pings flow on every pod's veth.
    let before: Vec<KernelCounters> = veths
        .iter()
        .map(String::as_str)
        .map(KernelCounters::read)
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    for (v, b) in veths.iter().zip(&before) {
        let a = KernelCounters::read(v);
        assert!(a.rx_packets > b.rx_packets, "{v}: pings flow");
    }

    let state_file = format!("/run/node-tracer/lab-{name}.json");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let pids: Vec<u64> = state["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(!pids.is_empty(), "the lab started pings");

    run("down");
    assert!(
        !std::path::Path::new(&state_file).exists(),
        "state file removed"
    );
    for pid in &pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.starts_with(b"ping"), "ping {pid} still runs");
    }
    for v in &veths {
        assert!(!exists(v), "{v} removed");
    }
    assert!(!exists(&bridge) && !exists(&docker));
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{name}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    // `down` twice is fine too.
    run("down");
}
