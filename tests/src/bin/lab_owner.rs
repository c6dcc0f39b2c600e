//! `lab_owner NAME BRIDGE BRIDGE_SUBNET PTP_SUBNET`: starts a lab runtime with one bridged and
//! one routed pod, prints `daemon PID`, one `pod ID UID NETNS PAUSE_PID` line each and `ready`.
//! Then it stops the lab when its stdin closes, or leaves it behind when it is SIGKILLed: the
//! owners of tests/lab_leftover.rs.

use std::{fmt::Write as _, io::Write as _};

use node_tracer_lab::runtime::{Runtime, RuntimeOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, bridge, bridge_subnet, ptp_subnet] = &args[..] else {
        eprintln!("usage: lab_owner NAME BRIDGE BRIDGE_SUBNET PTP_SUBNET");
        std::process::exit(2);
    };
    let mut opts = RuntimeOptions::new(name);
    opts.bridge.clone_from(bridge);
    opts.bridge_subnet = bridge_subnet.parse().expect("bridge subnet");
    opts.ptp_subnet = ptp_subnet.parse().expect("ptp subnet");
    let rt = Runtime::start(opts).await.expect("start containerd");
    let mut out = format!("daemon {}\n", rt.pid().expect("containerd pid"));
    for (pod, handler) in [("a", "runc"), ("b", "ptp")] {
        let uid = format!("{name}-{pod}");
        let p = rt
            .run_pod(pod, "ns", &uid, handler)
            .await
            .expect("RunPodSandbox");
        let _ = writeln!(
            out,
            "pod {} {} {} {}",
            p.id,
            p.uid,
            p.netns.display(),
            p.pid.expect("pause pid")
        );
    }
    out += "ready\n";
    std::io::stdout().write_all(out.as_bytes()).expect("stdout");
    std::io::stdout().flush().expect("stdout");
    // Killed here, the runtime's teardown never runs.
    let _ = tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await;
    rt.stop().await.expect("stop the lab");
}
