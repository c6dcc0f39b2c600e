//! A real containerd for a test: unique state dir, socket, bridge and subnets, so tests never
//! collide; torn down (pods, daemon, bridge, CNI state) when dropped, also on failure.

use std::sync::atomic::{AtomicU8, Ordering};

use node_tracer::lab::runtime::{PodHandle, Runtime, RuntimeOptions, Subnet};

use crate::{require_root, require_tool, unique};

/// Options no other runtime of this process uses. The second octet differs from the one
/// tests/pods.rs uses (20..220), so runtimes of both test binaries never share a subnet.
pub fn options(tag: &str) -> RuntimeOptions {
    static N: AtomicU8 = AtomicU8::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let b = 230 + (std::process::id() % 20) as u8;
    let mut o = RuntimeOptions::new(&unique(tag));
    o.bridge = unique("br");
    o.bridge_subnet = Subnet::new([10, b, n.wrapping_mul(2), 0].into(), 24);
    o.ptp_subnet = Subnet::new([10, b, n.wrapping_mul(2) + 1, 0].into(), 24);
    o
}

/// Starts a runtime after checking the tools it needs (a failure, never a skip).
pub async fn start(tag: &str) -> Runtime {
    require_root();
    for t in ["containerd", "runc", "ctr", "nsenter"] {
        require_tool(t);
    }
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "CNI plugins missing: run `cargo xtask setup` (containernetworking-plugins)"
    );
    Runtime::start(options(tag))
        .await
        .unwrap_or_else(|e| panic!("start containerd: {e}"))
}

/// A pod uid that is unique and valid for the runtime.
pub fn uid() -> String {
    static N: AtomicU8 = AtomicU8::new(0);
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pod's IPv4 address on eth0, read in its namespace.
pub fn pod_ip(pod: &PodHandle) -> String {
    let out = crate::sh(&format!(
        "nsenter --net={} ip -4 -o addr show dev eth0",
        pod.netns.display()
    ));
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 on eth0 of {}: {out}", pod.name))
        .to_string()
}
