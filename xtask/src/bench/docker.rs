//! A Docker host (`--only docker`): a `dockerd` of the bench's own whose containers live in a
//! node namespace of the bench's own (the daemon is entered into it with `nsenter --net`, so
//! cgroups and mounts are the host's, as dockerd needs; `ip netns exec` would hide the cgroup
//! mounts). Measures `peers --json` over its containers (200; 20 with `--quick`) and the agent's
//! relabel time: `docker run -d` has returned -> the new container's veth carries its name in
//! /metrics.
//!
//! Every name starts with `ntb<pid>`; the daemon, its containers, mounts, namespace, bridge and
//! directory are removed on drop, also on error or Ctrl-C. `--iptables=false`: the host's
//! firewall is never touched, and nothing is routed out of the namespace.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Settings, agent,
    report::{Goal, Row, Stat},
    sys::{self, Proc},
};

const IMAGE: &str = "ntbbox:1";
/// Pod sources pointed at nothing but our engine (other people's runtimes may be running).
const ABSENT: [&str; 4] = [
    "--cri-socket",
    "/run/ntb-no-such.sock",
    "--cni-results-dir",
    "/run/ntb-no-such-dir",
];

#[derive(Debug, Default)]
pub struct Results {
    /// Containers running while measured; 0 when the part did not run.
    pub containers: usize,
    pub peers_s: Vec<f64>,
    pub relabel_ms: Vec<f64>,
}

pub fn run(s: &Settings) -> Result<Results> {
    let n = if s.quick { 20 } else { 200 };
    let engine = Engine::start()?;
    let names: Vec<String> = (0..n).map(|i| format!("{}-{i:03}", engine.id)).collect();
    engine.run_many(&names)?;
    let mut r = Results {
        containers: n,
        ..Results::default()
    };
    // One unmeasured run first: the page cache and the engine's own caches warm.
    for round in 0..=s.rounds {
        let took = engine.peers(n)?;
        if round > 0 {
            r.peers_s.push(took);
        }
    }
    let log = s.out_dir.join("docker-agent.log");
    let sock = engine.socket.display().to_string();
    let agent = agent::Agent::start(&engine.node, &["--docker-socket", &sock], &log)?;
    let addr: std::net::SocketAddr = agent::LISTEN.parse().context("listen address")?;
    for i in 0..s.rounds.max(3) {
        let name = format!("{}-new{i}", engine.id);
        engine.docker(&format!("run -d --name {name} {IMAGE} sleep 3600"))?;
        let started = Instant::now();
        let needle = format!("name=\"{name}\"");
        sys::in_netns(&engine.node, || {
            sys::wait_for(
                &format!("{name}'s veth named in /metrics"),
                Duration::from_mins(1),
                Duration::from_millis(5),
                || {
                    let (_, body, _) = sys::http_fetch(addr, "/metrics")?;
                    Ok(String::from_utf8_lossy(&body)
                        .lines()
                        .any(|l| l.starts_with("node_tracer_port_info{") && l.contains(&needle)))
                },
            )
        })
        .with_context(|| format!("see {}", log.display()))?;
        r.relabel_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    drop(agent);
    Ok(r)
}

pub fn rows(s: &Settings, r: &Results) -> Vec<Row> {
    let g = |goal| if s.quick { None } else { Some(goal) };
    let n = r.containers;
    vec![
        Row {
            key: "peers_docker_200_s",
            label: format!("peers --json, {n} Docker containers (one engine)"),
            samples: r.peers_s.clone(),
            stat: Stat::Median,
            goal: g(Goal::AtMost(1.0)),
            unit: "s",
        },
        Row {
            key: "relabel_docker_p99_ms",
            label: format!(
                "agent: docker run -d returned -> veth named in /metrics ({} containers, {n} running)",
                r.relabel_ms.len()
            ),
            samples: r.relabel_ms.clone(),
            stat: Stat::P99,
            goal: g(Goal::AtMost(1000.0)),
            unit: "ms",
        },
    ]
}

/// The bench's own Docker Engine, its containers on a bridge in its own node namespace.
struct Engine {
    id: String,
    node: String,
    socket: PathBuf,
    root: PathBuf,
    daemon: Option<Proc>,
    /// Host directories every dockerd makes whatever its flags, missing before ours started.
    host_dirs: Vec<PathBuf>,
}

impl Engine {
    fn start() -> Result<Self> {
        for tool in ["dockerd", "docker", "busybox", "nsenter"] {
            sys::sh(&format!("command -v {tool}"))
                .with_context(|| format!("{tool} missing: run `cargo xtask setup`"))?;
        }
        let id = format!("ntb{}dk", std::process::id());
        let root = std::env::temp_dir().join(&id);
        let host_dirs = [
            "/run/containerd/s",
            "/run/containerd",
            "/run/docker/plugins",
            "/run/docker",
        ]
        .map(PathBuf::from)
        .into_iter()
        .filter(|d| !d.exists())
        .collect();
        let mut engine = Self {
            node: id.clone(),
            socket: root.join("docker.sock"),
            root,
            id,
            daemon: None,
            host_dirs,
        };
        std::fs::create_dir_all(&engine.root)
            .with_context(|| format!("create {}", engine.root.display()))?;
        let bridge = format!("{}b", engine.id);
        sys::ip_batch(None, &[format!("netns add {}", engine.node)])?;
        sys::ip_batch(
            Some(&engine.node),
            &[
                "link set lo up".into(),
                format!("link add {bridge} type bridge"),
                // A /24 holds the 200 containers and the relabel samples.
                format!("addr add 172.31.250.1/24 dev {bridge}"),
                format!("link set {bridge} up"),
            ],
        )?;
        let log = std::fs::File::create(engine.root.join("dockerd.log"))?;
        let root = engine.root.clone();
        let dir = |d: &str| root.join(d).display().to_string();
        engine.daemon = Some(Proc::spawn(
            "dockerd",
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", engine.node))
                .arg("dockerd")
                .arg(format!("--host=unix://{}", engine.socket.display()))
                .args(["--data-root", &dir("data"), "--exec-root", &dir("exec")])
                .args(["--pidfile", &dir("dockerd.pid"), "--bridge", &bridge])
                .args([
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-forward=false",
                ])
                .args(["--ip-masq=false", "--userland-proxy=false"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?);
        sys::wait_for(
            "dockerd to answer",
            Duration::from_mins(2),
            Duration::from_millis(100),
            || {
                if let Some(d) = engine.daemon.as_mut() {
                    d.check_running()
                        .with_context(|| format!("see {}", dir("dockerd.log")))?;
                }
                Ok(engine.docker("version").is_ok())
            },
        )?;
        let rootfs = engine.root.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin"))?;
        let busybox = sys::sh("command -v busybox")?;
        std::fs::copy(busybox.trim(), rootfs.join("bin/busybox"))?;
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep"))?;
        sys::sh(&format!(
            "tar -C {} -cf {}/rootfs.tar .",
            rootfs.display(),
            engine.root.display()
        ))?;
        engine.docker(&format!(
            "import {}/rootfs.tar {IMAGE}",
            engine.root.display()
        ))?;
        Ok(engine)
    }

    fn cli(&self) -> String {
        format!("docker -H unix://{}", self.socket.display())
    }

    fn docker(&self, args: &str) -> Result<String> {
        sys::sh(&format!("{} {args}", self.cli()))
    }

    /// Created a few at a time, started in batches (a `docker run` each would take minutes).
    fn run_many(&self, names: &[String]) -> Result<()> {
        let (cli, names) = (self.cli(), names.join(" "));
        sys::sh(&format!(
            "printf '%s\\n' {names} | xargs -P 4 -I NAME {cli} create --name NAME {IMAGE} sleep 3600 >/dev/null"
        ))?;
        sys::sh(&format!(
            "printf '%s\\n' {names} | xargs -n 10 -P 4 {cli} start >/dev/null"
        ))?;
        Ok(())
    }

    /// One `peers --json` in the node namespace, timed; fails unless it named `n` containers.
    fn peers(&self, n: usize) -> Result<f64> {
        let start = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .arg(agent::binary())
            .args(["--log-level", "warn", "peers", "--json"])
            .args(ABSENT)
            .arg("--docker-socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .context("spawn node-tracer peers")?;
        let took = start.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("peers: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).context("peers JSON")?;
        let named = rows.as_array().map_or(0, |a| {
            a.iter()
                .filter(|r| r["container"]["runtime"] == "docker")
                .count()
        });
        if named != n {
            bail!("peers named {named} of {n} containers");
        }
        Ok(took)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let cli = self.cli();
            let _ = sys::sh(&format!(
                "ids=$(timeout 60 {cli} ps -aq); [ -z \"$ids\" ] || timeout 300 {cli} rm -f $ids >/dev/null"
            ));
            daemon.stop();
        }
        // The namespaces' bind mounts and the overlays, deepest first.
        let prefix = self.root.display().to_string();
        let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .map(String::from)
            .collect();
        points.sort_unstable_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = sys::sh(&format!("umount -l '{p}'"));
        }
        let _ = sys::ip_batch(None, &[format!("netns del {}", self.node)]);
        let _ = std::fs::remove_dir_all(&self.root);
        for d in &self.host_dirs {
            // Only if empty: another engine may have started since.
            let _ = std::fs::remove_dir(d);
        }
    }
}
