//! The release `node-tracer` under test, run inside the lab's node namespace.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    bpf,
    sys::{self, Proc},
    tc::Tc,
};

/// Inside the node namespace nothing else listens, so a fixed port is safe.
pub const LISTEN: &str = "127.0.0.1:9465";

pub fn binary() -> PathBuf {
    crate::workspace_root().join("target/release/node-tracer")
}

/// Pod sources pointed at nothing of this machine's real runtimes (other people's containerd
/// may be running): pods are the lab's named namespaces, as on a node without a CRI.
const SOURCES: &[&str] = &[
    "--cri-socket",
    "/run/ntb-no-such.sock",
    "--cni-results-dir",
    "/run/ntb-no-such-dir",
];

/// `node-tracer ARGS` in `netns`, logs to `log`.
pub fn spawn(netns: &str, args: &[&str], log: &Path, name: &str) -> Result<Proc> {
    let log = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    Proc::spawn(
        name,
        Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(binary())
            .args(["--log-level", "warn"])
            .args(args)
            .args(SOURCES)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )
}

pub struct Agent {
    pub proc: Proc,
    pub netns: String,
    /// From spawn to /healthz answering 200: it answers 503 until every veth is attached.
    pub ready_after: Duration,
}

impl Agent {
    pub fn start(netns: &str, extra: &[&str], log: &Path) -> Result<Self> {
        let start = Instant::now();
        let mut args = vec!["run", "--listen", LISTEN];
        args.extend_from_slice(extra);
        let mut proc = spawn(netns, &args, log, "node-tracer run")?;
        let addr = addr()?;
        sys::in_netns(netns, || {
            sys::wait_for(
                "node-tracer run's /healthz to answer 200",
                Duration::from_mins(3),
                Duration::from_millis(5),
                || {
                    proc.check_running()
                        .with_context(|| format!("see {}", log.display()))?;
                    Ok(matches!(sys::http_get(addr, "/healthz"), Ok((200, _, _))))
                },
            )
        })?;
        Ok(Self {
            proc,
            netns: netns.to_string(),
            ready_after: start.elapsed(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// GET `path` inside the node namespace: (body bytes, time).
    pub fn get(&self, path: &str) -> Result<(usize, Duration)> {
        let addr = addr()?;
        let (status, len, took) = sys::in_netns(&self.netns, || sys::http_get(addr, path))?;
        anyhow::ensure!(status == 200, "GET {path}: HTTP {status}");
        Ok((len, took))
    }
}

/// `node_tracer_trace_streams` of the agent listening in `netns`: tracers connected to it.
pub fn trace_streams(netns: &str) -> Result<u64> {
    let addr = addr()?;
    let (status, body, _) = sys::in_netns(netns, || sys::http_fetch(addr, "/metrics"))?;
    anyhow::ensure!(status == 200, "GET /metrics: HTTP {status}");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("node_tracer_trace_streams "))
        .and_then(|v| v.trim().parse().ok())
        .context("no node_tracer_trace_streams in /metrics")
}

fn addr() -> Result<SocketAddr> {
    LISTEN.parse().context("listen address")
}

/// Waits until every veth in `veths` (names in `netns`) has at least `progs` programs on both
/// tcx hooks; returns the time waited.
pub fn wait_attached(netns: &str, veths: &[String], progs: usize) -> Result<Duration> {
    sys::in_netns(netns, || {
        let ifindexes: Vec<u32> = veths.iter().filter_map(|v| sys::ifindex(v)).collect();
        anyhow::ensure!(
            ifindexes.len() == veths.len(),
            "some of the lab's veths are missing"
        );
        sys::wait_for(
            "programs on every veth",
            Duration::from_mins(3),
            Duration::from_millis(20),
            || {
                Ok(ifindexes.iter().all(|i| {
                    let (a, b) = bpf::tcx_counts(*i);
                    a >= progs && b >= progs
                }))
            },
        )
    })
}

/// Whether both hooks of `ifindex` carry a program, as a tcx link or a clsact filter: what
/// "attached" means while fast-start's netlink step lasts.
pub fn hooked(tc: &mut Tc, ifindex: u32) -> bool {
    let (ti, te) = bpf::tcx_counts(ifindex);
    if ti >= 1 && te >= 1 {
        return true;
    }
    let (fi, fe) = tc.filter_counts(ifindex);
    ti + fi >= 1 && te + fe >= 1
}

/// Waits until every veth in `veths` (names in `netns`) is [`hooked`].
pub fn wait_hooked(netns: &str, veths: &[String]) -> Result<Duration> {
    sys::in_netns(netns, || {
        let mut todo: Vec<u32> = veths.iter().filter_map(|v| sys::ifindex(v)).collect();
        anyhow::ensure!(
            todo.len() == veths.len(),
            "some of the lab's veths are missing"
        );
        let mut tc = Tc::open()?;
        // A hooked veth stays hooked (fast-start adds tcx before it removes the filters), so
        // each pass only asks about the rest.
        sys::wait_for(
            "programs on every veth",
            Duration::from_mins(3),
            Duration::from_millis(20),
            || {
                todo.retain(|i| !hooked(&mut tc, *i));
                Ok(todo.is_empty())
            },
        )
    })
}
