//! `pods::discover` against real pods: a real containerd started through
//! `node_tracer_lab::runtime`, pods run over CRI exactly as a kubelet runs them (bridge and
//! routed), a named namespace, a process in its own namespace, and runtimes or caches that
//! misbehave.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use node_tracer::{
    model::PodSource,
    pods::{self, PodConfig},
};
use node_tracer_cri::CriClient;
use node_tracer_lab::runtime::{PodHandle, Runtime, RuntimeOptions, Subnet};
use node_tracer_tests::{
    Netns, require_root, require_tool,
    runtime::{LabOwner, Recover, assert_cleaned, running},
    sh, unique,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn init() {
    require_root();
    for tool in ["containerd", "ctr", "runc", "gcc", "ip", "unshare"] {
        require_tool(tool);
    }
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Options no other runtime (of this or another test process) shares: name, bridge, subnets.
fn lab_options(tag: &str) -> RuntimeOptions {
    static N: AtomicU8 = AtomicU8::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let b = 20 + (std::process::id() % 200) as u8;
    let mut o = RuntimeOptions::new(&unique(tag));
    o.bridge = unique("br");
    o.bridge_subnet = Subnet::new([10, b, n.wrapping_mul(2), 0].into(), 24);
    o.ptp_subnet = Subnet::new([10, b, n.wrapping_mul(2) + 1, 0].into(), 24);
    o
}

/// Runtimes alive in this test binary, and [`host_state`] from before the first one started.
static LIVE: Mutex<(usize, Option<String>)> = Mutex::new((0, None));

/// Host state every runtime of the process shares: `ip_forward`, and whether the dirs containerd
/// and CNI always create exist.
fn host_state() -> String {
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let dirs =
        ["/run/containerd", "/var/lib/cni"].map(|d| format!("{d}:{}", Path::new(d).exists()));
    format!("ip_forward={} {}", forward.trim(), dirs.join(" "))
}

/// Starts a runtime, counted in [`LIVE`].
async fn start(opts: &RuntimeOptions) -> Runtime {
    {
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        if live.0 == 0 {
            live.1 = Some(host_state());
        }
        live.0 += 1;
    }
    Runtime::start(opts.clone())
        .await
        .expect("start containerd")
}

/// The runtime is gone. Host state is shared by every runtime of the process, so the last one
/// restores it: checked (under the lock, so no runtime starts meanwhile) when the count is 0.
fn runtime_gone() {
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.0 -= 1;
    if live.0 == 0 {
        assert_eq!(Some(host_state()), live.1.take(), "host state not restored");
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

fn config(cri_sockets: Vec<PathBuf>) -> PodConfig {
    PodConfig {
        cri_sockets,
        cri_timeout: Duration::from_secs(5),
        ..PodConfig::default()
    }
}

/// The host-side veth of a pod, found from both ends: the pod's `eth0@ifN` names the host
/// ifindex N, and the CNI result names the host veth; they must be the same link.
fn host_veth(rt: &Runtime, pod: &PodHandle) -> String {
    let ns_name = pod
        .netns
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let link = sh(&format!("ip -n {ns_name} -o link show eth0"));
    let peer_ifindex: u32 = link
        .split_once("eth0@if")
        .and_then(|(_, r)| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peer ifindex in {link:?}"));
    let net = if pod.handler == "ptp" {
        rt.options().ptp_network()
    } else {
        rt.options().bridge_network()
    };
    let cache = format!("/var/lib/cni/results/{net}-{}-eth0", pod.id);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    let ifaces = result["result"]["interfaces"].as_array().unwrap();
    let sandbox = ifaces.iter().find_map(|i| i["sandbox"].as_str()).unwrap();
    assert_eq!(inode(Path::new(sandbox)), pod.netns_inode, "{cache}");
    let veth = ifaces
        .iter()
        .filter(|i| i.get("sandbox").is_none())
        .map(|i| i["name"].as_str().unwrap().to_string())
        .find(|n| *n != rt.options().bridge)
        .unwrap();
    assert_eq!(
        node_tracer_tests::ifindex(&veth),
        peer_ifindex,
        "{veth} is not eth0's peer"
    );
    veth
}

/// The wiring is what the kubelet + CNI would make: bridge ports on our bridge, routed veths with
/// the gateway /32 and a host route to the pod, and no way out of the pod.
fn assert_wired(rt: &Runtime, pod: &PodHandle) {
    let opts = rt.options();
    let veth = host_veth(rt, pod);
    let link = sh(&format!("ip -o link show {veth}"));
    if pod.handler == "runc" {
        assert!(link.contains(&format!("master {}", opts.bridge)), "{link}");
    } else {
        assert!(!link.contains("master"), "{link}");
        let addr = sh(&format!("ip -o -4 addr show {veth}"));
        // host-local's default gateway: the subnet's first address.
        let gw = format!(
            "{}/32",
            std::net::Ipv4Addr::from(u32::from(opts.ptp_subnet.addr) + 1)
        );
        assert!(addr.contains(&gw), "{addr} lacks {gw}");
        assert!(sh(&format!("ip -4 route show dev {veth}")).contains("scope host"));
    }
    let ns_name = pod
        .netns
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let routes = sh(&format!("ip -n {ns_name} -4 route"));
    assert!(
        !routes.contains("default"),
        "pod {} has a way out: {routes}",
        pod.name
    );
    // Every pod's eth0 is ifindex 2, each in its own namespace: ifindex is never a key.
    assert!(sh(&format!("ip -n {ns_name} -o link show eth0")).starts_with("2: eth0@"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_and_cni_cache_name_real_pods() {
    init();
    let opts = lab_options("lab");
    let rt = start(&opts).await;
    let mut pods = Vec::new();
    for (name, handler) in [
        ("web-0", "runc"),
        ("web-1", "runc"),
        ("db-0", "ptp"),
        ("db-1", "ptp"),
    ] {
        let uid = format!("{}-{name}", opts.name);
        let pod = rt
            .run_pod(name, "shop", &uid, handler)
            .await
            .expect("RunPodSandbox");
        pods.push(pod);
    }

    for pod in &pods {
        assert_wired(&rt, pod);
    }
    let mut inodes: Vec<u64> = pods.iter().map(|p| p.netns_inode).collect();
    inodes.dedup();
    assert_eq!(inodes.len(), 4);

    let index = pods::discover(&config(vec![opts.socket.clone()])).await;
    for pod in &pods {
        let by_path = inode(&pod.netns);
        assert_eq!(by_path, pod.netns_inode);
        if let Some(pid) = pod.pid {
            assert_eq!(inode(Path::new(&format!("/proc/{pid}/ns/net"))), by_path);
        }
        let found = index
            .lookup(by_path)
            .unwrap_or_else(|| panic!("{} not found", pod.name));
        assert_eq!(
            (
                found.namespace.as_str(),
                found.name.as_str(),
                found.uid.as_str(),
                found.source
            ),
            ("shop", pod.name.as_str(), pod.uid.as_str(), PodSource::Cri)
        );
        assert!(index.netns_paths().iter().any(|p| inode(p) == by_path));
    }

    // No runtime to ask: the CNI cache still names every pod.
    let no_cri = pods::discover(&config(vec![opts.state_dir.join("nonexistent.sock")])).await;
    for pod in &pods {
        let found = no_cri.lookup(pod.netns_inode).unwrap();
        assert_eq!(
            (
                found.namespace.as_str(),
                found.name.as_str(),
                found.uid.as_str(),
                found.source
            ),
            (
                "shop",
                pod.name.as_str(),
                pod.uid.as_str(),
                PodSource::CniCache
            )
        );
    }

    // Nothing but /proc: the pause process names the namespace, its cgroup the sandbox id.
    let proc_only = pods::discover(&PodConfig {
        cri_sockets: vec![],
        cni_results_dir: opts.state_dir.join("none"),
        netns_dir: opts.state_dir.join("none"),
        ..PodConfig::default()
    })
    .await;
    for pod in &pods {
        let found = proc_only.lookup(pod.netns_inode).unwrap();
        let pid = pod.pid.unwrap();
        assert_eq!(
            (found.name.clone(), found.uid.as_str(), found.source),
            (format!("pause[{pid}]"), pod.id.as_str(), PodSource::Proc)
        );
    }

    // One pod removed: gone from CRI, from the cache, and from the host.
    let gone = pods.remove(0);
    rt.remove_pod(&gone).await.expect("remove pod");
    assert!(!gone.netns.exists());
    let after = pods::discover(&config(vec![opts.socket.clone()])).await;
    assert!(after.lookup(gone.netns_inode).is_none());
    assert_eq!(
        after.lookup(pods[0].netns_inode).map(|p| p.source),
        Some(PodSource::Cri)
    );

    rt.stop().await.expect("stop runtime");
    runtime_gone();
    pods.push(gone);
    assert_cleaned(&opts, &pods);
}

/// A runtime dropped without `stop` (a failing test) cleans up all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_runtime_cleans_up() {
    init();
    let opts = lab_options("drop");
    let rt = start(&opts).await;
    // containerd runs in a process group of its own: a terminal's Ctrl-C to ours (the owner's)
    // does not kill it before the owner removes the pods over CRI.
    // SAFETY: getpgid has no memory-safety preconditions.
    let pgid = |pid: u32| unsafe { libc::getpgid(pid as libc::pid_t) };
    assert_ne!(pgid(rt.pid().unwrap()), pgid(std::process::id()));
    let a = rt
        .run_pod("a", "ns", &format!("{}-a", opts.name), "runc")
        .await
        .unwrap();
    let b = rt
        .run_pod("b", "ns", &format!("{}-b", opts.name), "ptp")
        .await
        .unwrap();
    assert!(a.netns.exists() && b.netns.exists());
    drop(rt);
    runtime_gone();
    assert_cleaned(&opts, &[a, b]);
}

/// containerd dies under its pods (SIGKILL, no CRI to ask): dropping the runtime still removes
/// the shims, the pause processes, the namespaces, the veths and the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_runtime_cleans_up() {
    init();
    let opts = lab_options("crsh");
    let rt = start(&opts).await;
    let a = rt
        .run_pod("a", "ns", &format!("{}-a", opts.name), "runc")
        .await
        .unwrap();
    let b = rt
        .run_pod("b", "ns", &format!("{}-b", opts.name), "ptp")
        .await
        .unwrap();
    let again = Runtime::start(opts.clone()).await;
    assert!(
        matches!(again, Err(node_tracer_lab::Error::AlreadyRunning(_))),
        "{again:?}"
    );
    let pid = i32::try_from(rt.pid().unwrap()).unwrap();
    // SAFETY: our own child (containerd), by PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    drop(rt);
    runtime_gone();
    assert_cleaned(&opts, &[a, b]);
}

/// The process that started a lab is SIGKILLed (an OOM kill, `kill -9` of `run --lab`): its
/// containerd and pods live on with nobody to remove them. The next start under the same name
/// finds the owner gone, removes all of it, and starts afresh; another lab running meanwhile is
/// left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_whose_owner_was_killed_is_removed_by_the_next_start() {
    init();
    // Started first, so it records the host as it was and puts it back at the end, also what
    // the killed owner changed (same kind of changes: ip_forward, shared dirs, cgroups).
    let other_opts = lab_options("othr");
    let other = start(&other_opts).await;
    let opts = lab_options("lown");
    // Whatever fails below, a later start under the name removes what is left.
    let _cleanup = Recover(opts.clone());
    let (daemon, pods) = LabOwner::start(env!("CARGO_BIN_EXE_lab_owner"), &opts).kill();
    assert!(running(daemon), "containerd died with its owner");
    for p in &pods {
        assert!(p.netns.exists() && running(p.pid.unwrap()), "{p:?} died");
    }

    let rt = start(&opts).await;
    assert!(!running(daemon), "the leftover containerd still runs");
    for p in &pods {
        assert!(!p.netns.exists(), "{} left", p.netns.display());
        assert!(!running(p.pid.unwrap()), "pause {} left", p.pid.unwrap());
    }
    // The new lab works, and the other one still answers.
    let pod = rt
        .run_pod("c", "ns", &format!("{}-c", opts.name), "runc")
        .await
        .expect("a pod in the new lab");
    assert!(pod.netns.exists());
    let cri = CriClient::connect(other.socket(), Duration::from_secs(5))
        .await
        .expect("connect to the other lab");
    cri.version().await.expect("the other lab answers");

    rt.stop().await.expect("stop the new lab");
    runtime_gone();
    let mut all = pods;
    all.push(pod);
    assert_cleaned(&opts, &all);
    other.stop().await.expect("stop the other lab");
    runtime_gone();
    assert_cleaned(&other_opts, &[]);
}

#[tokio::test]
async fn named_netns_resolves_by_name() {
    init();
    let ns = Netns::new("pn");
    let index = pods::discover(&config(vec![])).await;
    let found = index
        .lookup(inode(Path::new(&ns.path())))
        .expect("named netns");
    assert_eq!(
        (found.name.as_str(), found.source),
        (ns.name.as_str(), PodSource::Netns)
    );
    assert!(found.namespace.is_empty() && found.uid.is_empty());
}

/// Kills its process by PID on drop (also when the test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn process_netns_resolves_by_process() {
    init();
    let child = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Killed(child);
    let pid = proc.0.id();
    let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let host = inode(Path::new("/proc/self/ns/net"));
    let start = Instant::now();
    // unshare execs sleep once the namespace exists; until then the pid is in ours, and until
    // the exec it is still named unshare.
    let comm = PathBuf::from(format!("/proc/{pid}/comm"));
    while inode(&ns) == host || std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() != "sleep") {
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "unshare never unshared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let index = pods::discover(&config(vec![])).await;
    let found = index.lookup(inode(&ns)).expect("process netns");
    assert_eq!(
        (found.name.as_str(), found.source),
        (format!("sleep[{pid}]").as_str(), PodSource::Proc)
    );
    assert!(
        index.lookup(host).is_none(),
        "the host namespace is nobody's pod"
    );
    drop(proc);
}

/// A CRI socket that accepts and then `behave`s; returns its path (in `dir`).
fn hostile_socket(dir: &Path, behave: fn(tokio::net::UnixStream)) -> PathBuf {
    let path = dir.join("cri.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            behave(stream);
        }
    });
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Discovery with `socket` as the only CRI socket; a minute without an answer is a hang.
async fn discover_bounded(socket: PathBuf, cni: &Path) -> pods::PodIndex {
    let cfg = PodConfig {
        cri_sockets: vec![socket],
        cni_results_dir: cni.to_path_buf(),
        cri_timeout: Duration::from_millis(500),
        ..PodConfig::default()
    };
    tokio::time::timeout(Duration::from_mins(1), pods::discover(&cfg))
        .await
        .expect("discover hung: the CRI timeout did not bound the bad socket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_cri_socket_costs_only_the_timeout() {
    init();
    let dir = temp_dir("hang");
    let socket = hostile_socket(&dir, |mut s| {
        tokio::spawn(async move {
            // Read and hold the connection open, never answer.
            let mut buf = [0u8; 4096];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    });
    let ns = Netns::new("ph");
    let index = discover_bounded(socket, &dir).await;
    std::fs::remove_dir_all(&dir).unwrap();
    // connect + Version are each bounded by the CRI timeout: discover returned (a socket that
    // never answers would hold it until the hang guard above) and the other sources answered.
    // How long it took is a bench figure, not a bound here.
    // The other sources still answered.
    let found = index.lookup(inode(Path::new(&ns.path()))).unwrap();
    assert_eq!(found.source, PodSource::Netns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_cri_socket_is_skipped() {
    init();
    let dir = temp_dir("garb");
    let socket = hostile_socket(&dir, |mut s| {
        tokio::spawn(async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nthis is not http2 \x00\xff\x00\xff")
                .await;
            let _ = s.write_all(&[0xffu8; 4096]).await;
        });
    });
    let index = discover_bounded(socket, &dir).await;
    std::fs::remove_dir_all(&dir).unwrap();
    for path in index.netns_paths() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        assert_ne!(
            index.lookup(meta.ino()).map(|p| p.source),
            Some(PodSource::Cri)
        );
    }
}

#[tokio::test]
async fn malformed_cni_cache_files_are_skipped() {
    init();
    let dir = temp_dir("cni");
    let ns = Netns::new("pc");
    let good = serde_json::json!({
        "kind": "cniCacheV1", "containerId": "abc", "ifName": "eth0", "networkName": "t",
        "cniArgs": [["K8S_POD_UID", "u-9"], ["K8S_POD_NAME", "good"], ["K8S_POD_NAMESPACE", "ok"]],
        "result": {"interfaces": [{"name": "vethx"}, {"name": "eth0", "sandbox": ns.path()}]}
    });
    std::fs::write(dir.join("t-abc-eth0"), good.to_string()).unwrap();
    for (i, junk) in [
        "",
        "{",
        "null",
        "[[[[",
        r#"{"cniArgs":[["K8S_POD_NAME",7]],"result":{"interfaces":[{"sandbox":"/run/netns"}]}}"#,
        r#"{"cniArgs":[["K8S_POD_NAME","x"]],"result":{"interfaces":[{"sandbox":"/etc/passwd"}]}}"#,
        "\u{0}\u{1}binary",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(dir.join(format!("t-junk{i}-eth0")), junk).unwrap();
    }
    std::fs::create_dir(dir.join("a-directory")).unwrap();
    let cfg = PodConfig {
        cri_sockets: vec![],
        cni_results_dir: dir.clone(),
        ..PodConfig::default()
    };
    let index = pods::discover(&cfg).await;
    std::fs::remove_dir_all(&dir).unwrap();
    let found = index.lookup(inode(Path::new(&ns.path()))).unwrap();
    assert_eq!(
        (
            found.namespace.as_str(),
            found.name.as_str(),
            found.uid.as_str(),
            found.source
        ),
        ("ok", "good", "u-9", PodSource::CniCache)
    );
}
