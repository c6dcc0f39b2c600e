//! A lab whose owner was SIGKILLed is removed by the next start under its name, and the host is
//! put back as it was before the killed owner, not as the owner left it. Alone in its binary:
//! the host state it compares (ip_forward, containerd's and CNI's dirs, cgroups) is shared by
//! every runtime, and the test binaries run one after another.

use std::path::{Path, PathBuf};

use node_tracer_lab::runtime::Runtime;
use node_tracer_tests::{
    require_root, require_tool,
    runtime::{LabOwner, Recover, assert_cleaned, options, running},
};

/// What a runtime changes on the host and its last stop puts back.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    ip_forward: String,
    /// Of /run/containerd, /var/lib/cni and every cgroup hierarchy's k8s.io and kubepods: those
    /// that exist.
    dirs: Vec<PathBuf>,
}

impl HostState {
    fn read() -> Self {
        let mut watched: Vec<PathBuf> = ["/run/containerd", "/var/lib/cni"]
            .map(PathBuf::from)
            .to_vec();
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            watched.push(h.path().join("k8s.io"));
            watched.push(h.path().join("kubepods"));
        }
        Self {
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap()
                .trim()
                .into(),
            dirs: watched.into_iter().filter(|p| p.exists()).collect(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owners_lab_is_removed_and_the_host_put_back_as_before_it() {
    require_root();
    for t in ["containerd", "runc", "ctr", "nsenter"] {
        require_tool(t);
    }
    assert!(
        Path::new("/usr/lib/cni/bridge").exists(),
        "CNI plugins missing: run `cargo xtask setup` (containernetworking-plugins)"
    );
    let before = HostState::read();
    let opts = options("lkil");
    let _cleanup = Recover(opts.clone());
    let owner = LabOwner::start(env!("CARGO_BIN_EXE_lab_owner"), &opts);
    let changed = HostState::read();
    // Else nothing below could tell a put-back host from one left as the owner made it.
    assert_ne!(
        changed, before,
        "this host already has what a lab adds (ip_forward=1, /run/containerd, /var/lib/cni, \
         k8s.io and kubepods cgroups), so the test cannot see it put back"
    );
    let (daemon, pods) = owner.kill();
    assert!(running(daemon), "containerd died with its owner");
    assert_eq!(
        HostState::read(),
        changed,
        "the killed owner put the host back"
    );

    // The next start: the leftover goes, the new lab runs and stops, the host is as before.
    let rt = Runtime::start(opts.clone())
        .await
        .expect("start over a killed owner's lab");
    assert!(!running(daemon), "the leftover containerd still runs");
    let pod = rt
        .run_pod("c", "ns", &format!("{}-c", opts.name), "runc")
        .await
        .expect("a pod in the new lab");
    rt.stop().await.expect("stop the new lab");
    let mut all = pods;
    all.push(pod);
    assert_cleaned(&opts, &all);
    assert_eq!(HostState::read(), before);
}
