//! The shipped DaemonSet's pod spec, run the way the kubelet runs it: `kubectl kustomize deploy/`
//! rendered, its container translated to CRI (args, env, every volume mount with its
//! propagation, capabilities, read-only root, user, seccomp, memory and CPU limits) and run by
//! a real containerd in a host-network sandbox, from the image `cargo xtask image` packs
//! (`node_tracer_image::build`, here from the tests' binary). Lab pods beside it.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use node_tracer_lab::runtime::{
    PodHandle, Runtime,
    container::{
        Capability, ContainerConfig, ContainerMetadata, EXITED, ImageSpec, Int64Value, KeyValue,
        LinuxContainerConfig, Mount, Propagation, Resources, SecurityContext, SecurityProfile,
    },
};
use node_tracer_tests::{
    TempDir, binary, http_get, metric, require_root, require_tool, runtime, unique,
};
use serde::Deserialize as _;
use serde_yaml::Value;

/// What the kubelet masks and makes read-only in a container that is not privileged
/// (k8s.io/kubernetes `securitycontext.DefaultMaskedPaths` / `DefaultReadonlyPaths`).
const MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The rendered DaemonSet, and the token its Secret was generated from.
fn render(tmp: &Path) -> (Value, String) {
    let copy = tmp.join("deploy");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let ok = Command::new("cp")
        .arg("-r")
        .arg(&deploy)
        .arg(&copy)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cp -r deploy/");
    // The one file an operator adds (deploy/README.md); everything else is the shipped text.
    let token = unique("tok");
    std::fs::write(copy.join("api-token"), &token).unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&copy)
        .output()
        .expect("spawn kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let ds = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in the rendered manifest");
    (ds, token)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Kubernetes quantities as the manifest writes them: `200m` CPU, `128Mi` memory.
fn millicpu(q: &str) -> i64 {
    q.strip_suffix('m')
        .map_or_else(|| q.parse::<i64>().unwrap() * 1000, |m| m.parse().unwrap())
}

fn bytes(q: &str) -> i64 {
    let units = [("Ki", 1i64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)];
    units
        .iter()
        .find_map(|(u, n)| q.strip_suffix(u).map(|v| v.parse::<i64>().unwrap() * n))
        .unwrap_or_else(|| q.parse().unwrap())
}

/// The container of `pod` as the kubelet hands it to the CRI. `host_paths` maps a hostPath of
/// the manifest to where that thing is on this node (the test's /run holds the lab's containerd
/// socket, the host's does not); `secret_dir` is the Secret volume's files.
fn container_config(
    pod: &Value,
    host_paths: &HashMap<&str, PathBuf>,
    secret_dir: &Path,
) -> ContainerConfig {
    let c = &pod["containers"][0];
    let volumes: HashMap<&str, &Value> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let v = volumes[m["name"].as_str().unwrap()];
        let host_path = if let Some(p) = v["hostPath"]["path"].as_str() {
            // Symlinks resolved: containerd 1.6 checks a HostToContainer source's propagation
            // on the path as written, and /var/run (a symlink to /run) is on the private `/`
            // of a host without systemd, while /run/netns itself is shared.
            let on_node = host_paths
                .get(p)
                .cloned()
                .unwrap_or_else(|| std::fs::canonicalize(p).unwrap_or_else(|_| p.into()));
            if v["hostPath"]["type"] == "DirectoryOrCreate" {
                assert!(on_node.is_dir(), "{p}: the test host should have it");
            }
            on_node
        } else if v.get("secret").is_some() {
            secret_dir.to_path_buf()
        } else {
            panic!("volume kind not translated: {v:?}");
        };
        let propagation = match m["mountPropagation"].as_str() {
            None | Some("None") => Propagation::Private,
            Some("HostToContainer") => Propagation::HostToContainer,
            Some("Bidirectional") => Propagation::Bidirectional,
            Some(other) => panic!("mountPropagation {other}"),
        };
        mounts.push(Mount {
            container_path: m["mountPath"].as_str().unwrap().into(),
            host_path: host_path.to_string_lossy().into_owned(),
            readonly: m["readOnly"].as_bool().unwrap_or(false),
            propagation: propagation.into(),
        });
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let limits = &c["resources"]["limits"];
    let requests = &c["resources"]["requests"];
    let period = 100_000;
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c["name"].as_str().unwrap().into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: c["image"].as_str().unwrap().into(),
        }),
        command: strs(&c["command"]),
        args: strs(&c["args"]),
        envs: c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| KeyValue {
                key: e["name"].as_str().unwrap().into(),
                // The kubelet resolves the downward API; the one field the manifest asks for is
                // the node's name.
                value: if let Some(v) = e["value"].as_str() {
                    v.into()
                } else {
                    let field = e["valueFrom"]["fieldRef"]["fieldPath"].as_str();
                    assert_eq!(field, Some("spec.nodeName"), "env {e:?}");
                    node_tracer_tests::sh("hostname").trim().into()
                },
            })
            .collect(),
        mounts,
        labels: HashMap::new(),
        log_path: "node-tracer/0.log".into(),
        linux: Some(LinuxContainerConfig {
            resources: Some(Resources {
                cpu_period: period,
                cpu_quota: millicpu(limits["cpu"].as_str().unwrap()) * period / 1000,
                cpu_shares: millicpu(requests["cpu"].as_str().unwrap()) * 1024 / 1000,
                memory_limit_in_bytes: bytes(limits["memory"].as_str().unwrap()),
                // system-node-critical: the kubelet's guaranteed score; the runtime keeps it
                // no lower than its own (restrict_oom_score_adj).
                oom_score_adj: -997,
            }),
            security_context: Some(SecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: strs(&sc["capabilities"]["add"]),
                    drop_capabilities: strs(&sc["capabilities"]["drop"]),
                }),
                privileged: false,
                run_as_user: sc["runAsUser"].as_i64().map(|value| Int64Value { value }),
                readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
                no_new_privs: sc["allowPrivilegeEscalation"] == false,
                masked_paths: MASKED.map(String::from).to_vec(),
                readonly_paths: READONLY.map(String::from).to_vec(),
                seccomp: Some(SecurityProfile::default()),
            }),
        }),
    }
}

/// `path` from `addr` until it answers 200, or the container has exited (then its log).
async fn until_ok(rt: &Runtime, id: &str, log: &Path, addr: SocketAddr, path: &str) -> String {
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = http_get(addr, path) {
            return body;
        }
        let (status, _) = rt.container_status(id).await.unwrap();
        assert!(
            status.state != EXITED && start.elapsed() < Duration::from_mins(3),
            "{path} never answered 200 (container state {}, exit {} {} {}); log:\n{}",
            status.state,
            status.exit_code,
            status.reason,
            status.message,
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `/metrics` until `done` says so (a generous bound only catches a hang).
async fn wait_metrics(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Ok((200, text)) = http_get(addr, "/metrics")
            && done(&text)
        {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_mins(2),
            "never in /metrics: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ping(from: &PodHandle, to: &PodHandle) -> Child {
    Command::new("nsenter")
        .arg(format!("--net={}", from.netns.display()))
        .args(["ping", "-q", "-i", "0.2"])
        .arg(runtime::pod_ip(to))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ping")
}

/// BPF program ids the process holds open (`prog_id:` in its fds' fdinfo).
fn prog_ids_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn prog_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonset_pod_spec_runs_under_containerd() {
    require_root();
    for t in ["kubectl", "ctr", "bpftool", "ping"] {
        require_tool(t);
    }
    let tmp = TempDir::new("img");
    let (ds, token) = render(&tmp.0);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    let port = u16::try_from(c["ports"][0]["containerPort"].as_u64().unwrap()).unwrap();
    // The manifest's port on the host network: one such test at a time on a machine.
    assert!(
        TcpListener::bind(("0.0.0.0", port)).is_ok(),
        "port {port} is busy: the manifest's --listen needs it"
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // The image, packed as `cargo xtask image` packs it.
    let image_tar = tmp.0.join("node-tracer.tar");
    let built = node_tracer_image::build(
        &node_tracer_image::ImageSpec {
            binary: binary(),
            version: env!("CARGO_PKG_VERSION").into(),
            revision: None,
            name: "node-tracer".into(),
        },
        &image_tar,
    )
    .expect("build the image");
    let image = c["image"].as_str().unwrap();
    assert!(
        built.tags.iter().any(|t| t == image),
        "the manifest's image {image} is not one the build tags: {:?}",
        built.tags
    );

    // The manifest mounts the host's /run, where every runtime has its socket. Here /run is
    // a directory of the test's own, shared as /run is on a host with systemd (HostToContainer
    // needs that), holding the lab's containerd socket where containerd's default puts it and
    // the mount point of /run/netns, which the manifest mounts inside it.
    let run = SharedDir::new(&tmp.0.join("run"));
    std::fs::create_dir_all(run.0.join("netns")).unwrap();
    let mut opts = runtime::options("img");
    opts.socket = run.0.join("containerd/containerd.sock");
    // Pods first: containerd's CNI code makes /run/netns a shared mount with the first one,
    // which HostToContainer needs (deploy/README.md).
    let rt = runtime::start_with(opts).await;
    let a = rt
        .run_pod(&unique("a"), "shop", &runtime::uid(), "runc")
        .await
        .unwrap();
    let b = rt
        .run_pod(&unique("b"), "shop", &runtime::uid(), "runc")
        .await
        .unwrap();
    rt.import_image(&image_tar).expect("ctr images import");

    let secret = tmp.0.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("token"), &token).unwrap();
    let host_paths = HashMap::from([("/run", run.0.clone())]);
    let config = container_config(pod, &host_paths, &secret);
    let agent = rt
        .run_host_pod(&unique("nt"), "node-tracer", &runtime::uid())
        .await
        .expect("host-network sandbox");
    let log = Path::new(&agent.config.log_directory).join("node-tracer/0.log");
    let id = rt
        .start_container(&agent, config)
        .await
        .expect("create and start the agent's container");

    // The probes answer as the manifest expects.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["port"].as_u64(), Some(u64::from(port)), "{probe}");
        until_ok(&rt, &id, &log, addr, get["path"].as_str().unwrap()).await;
    }
    let (_, pid) = rt.container_status(&id).await.unwrap();
    let pid = pid.expect("the agent's host PID");
    // The runtime applied the limits the manifest asks for.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroup
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .expect("a memory cgroup");
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(limit.trim(), "134217728", "memory limit of {memory}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    // CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21), nothing else; no_new_privs; seccomp filter.
    assert_eq!(field("CapEff:"), "0000000000201000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");

    // The pods, named through the CRI socket found under the /run mount.
    let names = |text: &str, p: &PodHandle| {
        metric(
            text,
            "node_tracer_port_info",
            &[("namespace", "shop"), ("pod", &p.name)],
        )
        .is_some()
    };
    wait_metrics(addr, "pods a and b", |t| names(t, &a) && names(t, &b)).await;
    // `peers` in the container, with no socket flag, found containerd at its default path
    // under the mount and named the pods from it (not from the CNI cache beside it).
    let out = rt
        .exec_sync(
            &id,
            &["node-tracer", "peers", "--proc-root=/host/proc"],
            Duration::from_mins(1),
        )
        .await
        .expect("ExecSync");
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit_code,
        0,
        "peers in the container: {table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in [&a, &b] {
        let shown = format!("shop/{} (cri)", p.name);
        assert!(
            table.lines().any(|l| l.ends_with(&shown)),
            "no line ends with {shown:?}: {table}"
        );
    }
    let last = table.lines().last().unwrap_or_default();
    assert!(
        last.contains("cri (/run/containerd/containerd.sock)"),
        "{last}"
    );
    // A pod created after the agent started: its netns mount reaches the container.
    let late = rt
        .run_pod(&unique("c"), "shop", &runtime::uid(), "runc")
        .await
        .unwrap();
    let mut pings = vec![ping(&a, &b), ping(&late, &a)];
    wait_metrics(addr, "the late pod, named and counted", |t| {
        metric(
            t,
            "node_tracer_transmit_packets_total",
            &[("pod", &late.name), ("protocol", "icmp")],
        )
        .is_some_and(|v| v > 0.0)
    })
    .await;

    // `kubectl exec ds/node-tracer -- node-tracer trace icmp --connect …` (the README's line).
    let url = format!("http://127.0.0.1:{port}");
    let out = rt
        .exec_sync(
            &id,
            &[
                "node-tracer",
                "trace",
                "icmp",
                "--connect",
                &url,
                "--json",
                "--count",
                "4",
                "--timeout",
                "20",
            ],
            Duration::from_secs(25),
        )
        .await
        .expect("ExecSync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit_code,
        0,
        "trace icmp in the container: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        [&a, &b, &late].iter().any(|p| stdout.contains(&p.name)),
        "trace names none of the pods: {stdout}"
    );
    for p in &mut pings {
        let _ = p.kill();
        let _ = p.wait();
    }

    // Stop as the kubelet does, with the manifest's grace period: a clean exit (0, not a
    // SIGKILL's 137) that detached everything (no program of the agent is left).
    let held = prog_ids_of(pid);
    assert!(!held.is_empty(), "the agent holds no BPF program");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    rt.stop_container(&id, Duration::from_secs(grace))
        .await
        .expect("StopContainer");
    let (status, _) = rt.container_status(&id).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        (status.state, status.exit_code),
        (EXITED, 0),
        "log:\n{text}"
    );
    let left: Vec<u32> = held.into_iter().filter(|i| prog_exists(*i)).collect();
    assert!(left.is_empty(), "programs left after the stop: {left:?}");
    assert!(
        !text.contains("private mount"),
        "propagation warning on a shared host mount:\n{text}"
    );
    rt.stop().await.expect("runtime teardown");
}

/// A directory bind-mounted on itself and made shared (a mount peer group of its own);
/// unmounted on drop, before the directory is removed.
struct SharedDir(PathBuf);

impl SharedDir {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        node_tracer_tests::sh(&format!("mount --bind {d} {d} && mount --make-shared {d}"));
        Self(dir.to_path_buf())
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = node_tracer_tests::sh_output(&format!("umount -l {}", self.0.display()));
    }
}
