//! A real containerd for a test: unique state dir, socket, bridge and subnets, so tests never
//! collide; torn down (pods, daemon, bridge, CNI state) when dropped, also on failure.

use std::{
    path::Path,
    sync::atomic::{AtomicU8, Ordering},
    time::{Duration, Instant},
};

use node_tracer_lab::runtime::{PodHandle, Runtime, RuntimeOptions, Subnet};

use crate::{require_root, require_tool, sh, unique};

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
    start_with(options(tag)).await
}

/// [`start`] with options of the caller's (made from [`options`]).
pub async fn start_with(opts: RuntimeOptions) -> Runtime {
    require_root();
    for t in ["containerd", "runc", "ctr", "nsenter"] {
        require_tool(t);
    }
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "CNI plugins missing: run `cargo xtask setup` (containernetworking-plugins)"
    );
    Runtime::start(opts)
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

/// Whether a containerd started with `rt_config` runs.
pub fn containerd_running(rt_config: &Path) -> bool {
    let needle = rt_config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
    })
}

/// Whether `pid` runs (a zombie waiting for PID 1 to reap it does not), given a moment to die.
pub fn running(pid: u32) -> bool {
    let start = Instant::now();
    loop {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        if text
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
        {
            return false;
        }
        if start.elapsed() > Duration::from_secs(2) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What must be gone once a runtime is stopped or dropped.
pub fn assert_cleaned(opts: &RuntimeOptions, pods: &[PodHandle]) {
    assert!(
        !containerd_running(&opts.state_dir.join("config.toml")),
        "containerd still runs"
    );
    assert!(
        !Path::new("/sys/class/net").join(&opts.bridge).exists(),
        "bridge left"
    );
    assert!(!opts.state_dir.exists(), "state dir left");
    for pod in pods {
        assert!(!pod.netns.exists(), "{} left", pod.netns.display());
        if let Some(pid) = pod.pid {
            assert!(!running(pid), "pause {pid} left");
        }
        let shim_socket = sh(&format!(
            "printf %s '{}/k8s.io/{}' | sha256sum",
            opts.socket.display(),
            pod.id
        ));
        let shim_socket = format!("/run/containerd/s/{}", &shim_socket[..64]);
        assert!(!Path::new(&shim_socket).exists(), "{shim_socket} left");
        let lo = format!("/var/lib/cni/results/cni-loopback-{}-lo", pod.id);
        assert!(!Path::new(&lo).exists(), "{lo} left");
        let cg = format!("/sys/fs/cgroup/memory/kubepods/besteffort/pod{}", pod.uid);
        assert!(!Path::new(&cg).exists(), "{cg} left");
    }
    for net in [opts.bridge_network(), opts.ptp_network()] {
        assert!(
            !Path::new("/var/lib/cni/networks").join(&net).exists(),
            "{net} IPAM left"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*opts.state_dir.to_string_lossy()),
        "mount under state dir left"
    );
}

/// A lab started by another process (tests/src/bin/lab_owner.rs, whose path the test passes:
/// `env!("CARGO_BIN_EXE_lab_owner")`): killed, it leaves its containerd and pods behind as a
/// `kill -9` of `node-tracer run --lab` would. Dropped unkilled, it stops its lab cleanly.
pub struct LabOwner {
    child: std::process::Child,
    /// Its containerd.
    pub daemon: u32,
    /// A bridged and a routed pod.
    pub pods: Vec<PodHandle>,
}

impl LabOwner {
    pub fn start(exe: &str, opts: &RuntimeOptions) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(exe)
            .args([&opts.name, &opts.bridge])
            .args([opts.bridge_subnet.to_string(), opts.ptp_subnet.to_string()])
            // Open for as long as the owner should run: closed, it stops the lab.
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn lab_owner");
        let mut out = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        while !out.ends_with("ready\n") {
            let n = stdout.read_line(&mut out).expect("read lab_owner");
            if n == 0 {
                let _ = child.wait();
                panic!("lab_owner ended early: {out}");
            }
        }
        let daemon = out
            .lines()
            .find_map(|l| l.strip_prefix("daemon ")?.parse().ok())
            .expect("daemon pid");
        let pods: Vec<PodHandle> = out
            .lines()
            .filter_map(|l| l.strip_prefix("pod "))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                PodHandle {
                    id: f[0].into(),
                    uid: f[1].into(),
                    netns: f[2].into(),
                    pid: f[3].parse().ok(),
                    name: String::new(),
                    namespace: "ns".into(),
                    handler: String::new(),
                    netns_inode: 0,
                }
            })
            .collect();
        assert_eq!(pods.len(), 2, "{out}");
        Self {
            child,
            daemon,
            pods,
        }
    }

    /// SIGKILL: its lab stays, nobody left to remove it.
    pub fn kill(mut self) -> (u32, Vec<PodHandle>) {
        // SAFETY: our own child, by PID, not reaped yet.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) },
            0
        );
        let _ = self.child.wait();
        (self.daemon, std::mem::take(&mut self.pods))
    }

    /// Closes its stdin: it stops its lab and exits.
    pub fn stop(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait lab_owner");
        assert!(status.success(), "lab_owner: {status}");
    }
}

impl Drop for LabOwner {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// When dropped, starts and stops a runtime under `opts` if a containerd of theirs still runs:
/// the start removes a killed owner's leftover. For tests that kill one, also when they fail.
pub struct Recover(pub RuntimeOptions);

impl Drop for Recover {
    fn drop(&mut self) {
        if !containerd_running(&self.0.state_dir.join("config.toml")) {
            return;
        }
        let opts = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                if let Ok(r) = Runtime::start(opts).await {
                    let _ = r.stop().await;
                }
            });
        })
        .join();
    }
}
