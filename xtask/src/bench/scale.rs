//! A node with many pods: agent start-up, one /metrics scrape, memory, idle CPU, attach latency
//! for veths created while the agent runs, `peers --json`, and start-up in netlink mode for
//! comparison with tcx.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use super::{
    Settings,
    agent::{self, Agent},
    lab::Lab,
    sys,
    tc::Tc,
};

#[derive(Debug, Default)]
pub struct Results {
    pub veths: usize,
    /// Spawn to every hook attached (default mode: tcx).
    pub startup_s: f64,
    /// Pods sending while the agent starts (one in ten).
    pub busy: usize,
    /// Spawn to the veths of the [`Results::busy`] pods attached (default mode): they go first.
    pub startup_busy_s: Option<f64>,
    /// The same with `--attach-mode fast-start` (clsact filters first).
    pub startup_fast_s: Option<f64>,
    /// Spawn to /healthz answering 200 (503 until the first attach pass is done).
    pub serve_s: f64,
    /// Spawn to /healthz with `--attach-mode netlink` (clsact + cls_bpf).
    pub startup_netlink_s: Option<f64>,
    pub metrics_ms: Vec<f64>,
    pub metrics_bytes: usize,
    /// Agent CPU time per scrape (clock-tick resolution).
    pub metrics_cpu_ms: f64,
    pub rss_mib: f64,
    pub idle_cpu_pct: f64,
    /// New veth created -> both its hooks carry our programs.
    pub attach_ms: Vec<f64>,
    /// The same for a bare loader that only attaches the empty program (the kernel's floor).
    pub attach_floor_ms: Vec<f64>,
    pub peers_s: Vec<f64>,
    /// SIGTERM to exit of the tcx agent.
    pub stop_s: f64,
    /// Spawn to every hook attached with `--expedite-rcu` (tcx, grace periods expedited), and
    /// SIGTERM to exit of that agent; none when the host already runs expedited.
    pub startup_expedited_s: Option<f64>,
    pub stop_expedited_s: Option<f64>,
    /// [`Results::attach_ms`] with `--expedite-rcu`.
    pub attach_expedited_ms: Vec<f64>,
    /// `/metrics` quiet and during a burst of attaches.
    pub scrapes: super::scrapes::Results,
}

pub fn run(lab: &mut Lab, s: &Settings) -> Result<Results> {
    let node = lab.node();
    eprintln!(
        "    creating {} pods (one namespace and veth each)",
        s.veths
    );
    let mut veths = lab.add_pods("p", s.veths)?;
    veths.extend([
        super::lab::CLIENT_VETH.to_string(),
        super::lab::SERVER_VETH.to_string(),
    ]);
    let late_pods = lab.add_empty_pods("a", s.new_veths)?;
    let burst_pods = lab.add_empty_pods("b", s.new_veths)?;
    let mut r = Results {
        veths: veths.len(),
        ..Results::default()
    };

    // The floor first, on the same node (1,000 veths) with no agent running.
    let loader = super::bare_loader::BareLoader::start(&node)?;
    r.attach_floor_ms = attach_latency(&node, &late_pods)?;
    let attached = loader.finish()?;
    ensure!(
        attached >= late_pods.len(),
        "the bare loader attached {attached} veths, {} were made",
        late_pods.len()
    );
    delete_late(&node, late_pods.len())?;
    eprintln!(
        "    attach floor (bare loader, empty program): p99 {:.1} ms over {} new veths",
        super::report::percentile(&r.attach_floor_ms, 99.0),
        r.attach_floor_ms.len()
    );

    // One pod in ten sends while the agent starts, as on a node where some pods are busy.
    let busy: Vec<usize> = (0..s.veths).filter(|i| i % 10 == 9).collect();
    let busy_veths: Vec<String> = busy.iter().map(|&i| veths[i].clone()).collect();
    let busy_pods: Vec<String> = busy.iter().map(|i| lab.ns(&format!("p{i}"))).collect();
    r.busy = busy.len();
    let senders = Senders::start(&busy_pods)?;

    let start = Instant::now();
    // 1,000 veths and the late ones exceed the default --max-ports (1,024).
    let (agent, busy_s) = std::thread::scope(|sc| {
        let watch = sc.spawn(|| {
            agent::wait_hooked(&node, &busy_veths).map(|_| start.elapsed().as_secs_f64())
        });
        let agent = Agent::start(
            &node,
            &["--max-ports", "2048"],
            &s.out_dir.join("agent-scale.log"),
        );
        let busy_s = watch
            .join()
            .map_err(|_| anyhow::anyhow!("the busy-veth watcher panicked"))?;
        anyhow::Ok((agent?, busy_s?))
    })?;
    r.startup_busy_s = Some(busy_s);
    r.serve_s = agent.ready_after.as_secs_f64();
    agent::wait_hooked(&node, &veths)?;
    r.startup_s = start.elapsed().as_secs_f64();
    let sent = senders.stop()?;
    eprintln!(
        "    start-up: the {} busy veths ({sent} packets sent) attached after {busy_s:.2} s, \
         serving after {:.2} s, all {} veths attached after {:.2} s",
        r.busy, r.serve_s, r.veths, r.startup_s
    );

    // Let the post-start relabel pass finish before calling anything idle.
    sys::sleep(Duration::from_secs(2))?;
    r.idle_cpu_pct = sys::cpu_pct_over(agent.pid(), s.idle)?;
    // The agent's own CPU time per scrape, next to the wall time: on a shared machine the wall
    // time is mostly waiting for a core.
    let cpu0 = sys::cpu_seconds(agent.pid())?;
    for _ in 0..5 {
        let (bytes, took) = agent.get("/metrics")?;
        r.metrics_bytes = bytes;
        r.metrics_ms.push(took.as_secs_f64() * 1e3);
    }
    r.metrics_cpu_ms = (sys::cpu_seconds(agent.pid())? - cpu0) / 5.0 * 1e3;
    r.rss_mib = sys::rss_mib(agent.pid())?;
    eprintln!(
        "    idle cpu {:.2}%, rss {:.1} MiB, /metrics {} bytes",
        r.idle_cpu_pct, r.rss_mib, r.metrics_bytes
    );

    r.scrapes = super::scrapes::run(&node, &burst_pods, if s.quick { 20 } else { 50 })?;
    r.attach_ms = attach_latency(&node, &late_pods)?;
    // SIGTERM to exit: the agent detaches every hook, each again an RCU grace period (the
    // process is killed after 20 s, which detaches the rest as its links close).
    let stop = Instant::now();
    drop(agent);
    r.stop_s = stop.elapsed().as_secs_f64();
    eprintln!(
        "    stopped (detaching {} veths) in {:.2} s",
        r.veths + late_pods.len(),
        r.stop_s
    );
    // The late veths go again so the netlink start-up sees the same node as the tcx one.
    delete_late(&node, late_pods.len())?;

    for _ in 0..3 {
        r.peers_s.push(peers(&node, r.veths)?);
    }

    let agent = Agent::start(
        &node,
        &["--attach-mode", "netlink", "--max-ports", "2048"],
        &s.out_dir.join("agent-netlink.log"),
    )?;
    r.startup_netlink_s = Some(agent.ready_after.as_secs_f64());
    eprintln!(
        "    netlink mode: serving (all attached) after {:.2} s",
        agent.ready_after.as_secs_f64()
    );
    drop(agent);

    // Stopped before the background move to tcx gets far (detaching tcx is as slow as
    // attaching): what is measured is how soon every veth is counted.
    let start = Instant::now();
    let agent = Agent::start(
        &node,
        &["--attach-mode", "fast-start", "--max-ports", "2048"],
        &s.out_dir.join("agent-fast-start.log"),
    )?;
    agent::wait_hooked(&node, &veths)?;
    r.startup_fast_s = Some(start.elapsed().as_secs_f64());
    eprintln!(
        "    fast-start mode: all attached after {:.2} s",
        start.elapsed().as_secs_f64()
    );
    drop(agent);

    expedited(&node, &veths, &late_pods, s, &mut r)?;
    Ok(r)
}

/// Traffic out of some pods: each sends a datagram every 10 ms to an address of its subnet that
/// no one has (a permanent neighbour entry, so nothing is resolved): the frames cross the pod's
/// veth and end on the node side. Stopped by [`Senders::stop`] or on drop.
struct Senders {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Senders {
    const TO: &str = "10.200.255.254";

    fn start(pods: &[String]) -> Result<Self> {
        let mut socks = Vec::with_capacity(pods.len());
        for pod in pods {
            sys::ip_batch(
                Some(pod),
                &[format!(
                    "neigh add {} lladdr 02:00:00:c8:ff:fe dev eth0 nud permanent",
                    Self::TO
                )],
            )?;
            // A socket stays in the namespace it was made in, whichever thread uses it.
            socks.push(sys::in_netns(pod, || {
                std::net::UdpSocket::bind("0.0.0.0:0").context("udp socket")
            })?);
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for sock in &socks {
                    sock.send_to(b"busy", (Self::TO, 9))
                        .context("send from a busy pod")?;
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(sent)
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sending; the number of datagrams sent.
    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .context("senders already stopped")?
            .join()
            .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The default mode with `--expedite-rcu`: the same tcx attaches (at start, then of new veths,
/// then the detach at exit), their grace periods expedited. The host-wide switch must be back at
/// 0 afterwards.
fn expedited(
    node: &str,
    veths: &[String],
    late_pods: &[String],
    s: &Settings,
    r: &mut Results,
) -> Result<()> {
    let before = crate::rcu_expedited();
    if before != "0" {
        // The flag does nothing where the knob is already 1: no figure to take. In CI that
        // would hide the mode's smoke run, so it is an error there.
        ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "/sys/kernel/rcu_expedited is {before:?}, not 0: --expedite-rcu cannot be measured"
        );
        eprintln!("    --expedite-rcu: skipped, /sys/kernel/rcu_expedited is {before:?}, not 0");
        return Ok(());
    }
    let start = Instant::now();
    let agent = Agent::start(
        node,
        &["--expedite-rcu", "--max-ports", "2048"],
        &s.out_dir.join("agent-expedited.log"),
    )?;
    agent::wait_hooked(node, veths)?;
    r.startup_expedited_s = Some(start.elapsed().as_secs_f64());
    r.attach_expedited_ms = attach_latency(node, late_pods)?;
    let stop = Instant::now();
    drop(agent);
    r.stop_expedited_s = Some(stop.elapsed().as_secs_f64());
    delete_late(node, late_pods.len())?;
    ensure!(
        crate::rcu_expedited() == "0",
        "/sys/kernel/rcu_expedited is still 1 after the --expedite-rcu agent stopped"
    );
    eprintln!(
        "    --expedite-rcu: all attached after {:.2} s, stopped in {:.2} s",
        r.startup_expedited_s.unwrap_or_default(),
        r.stop_expedited_s.unwrap_or_default()
    );
    Ok(())
}

/// Creates one veth at a time (peer into its own pod namespace) through a running `ip -batch`, so
/// t0 is the moment the request is written rather than an `ip` start-up, and times until both
/// hooks of the new veth carry a program (a clsact filter at first, in fast-start mode).
fn attach_latency(node: &str, pods: &[String]) -> Result<Vec<f64>> {
    sys::in_netns(node, || {
        let mut ip = sys::Proc::spawn(
            "ip -batch",
            Command::new("ip")
                .args(["-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let mut stdin = ip.child.stdin.take().context("ip stdin")?;
        let mut tc = Tc::open()?;
        let mut out = Vec::with_capacity(pods.len());
        for (i, pod) in pods.iter().enumerate() {
            let name = format!("ntba{i}");
            let t0 = Instant::now();
            writeln!(
                stdin,
                "link add {name} type veth peer name eth0 netns {pod}"
            )
            .and_then(|()| stdin.flush())
            .context("write to ip -batch")?;
            let mut ifindex = None;
            sys::wait_for(
                &format!("programs on new veth {name}"),
                Duration::from_secs(10),
                // 1 ms: fine enough for a 50 ms goal; polling faster takes rtnl (the queries need it)
                // thousands of times a second from under the attach being timed.
                Duration::from_millis(1),
                || {
                    if ifindex.is_none() {
                        ifindex = sys::ifindex(&name);
                    }
                    Ok(ifindex.is_some_and(|i| agent::hooked(&mut tc, i)))
                },
            )?;
            out.push(t0.elapsed().as_secs_f64() * 1e3);
            // Veths on a real node arrive one pod at a time, not back to back.
            sys::sleep(Duration::from_millis(20))?;
        }
        drop(stdin);
        ip.stop();
        Ok(out)
    })
}

/// Deletes the `n` veths [`attach_latency`] made.
fn delete_late(node: &str, n: usize) -> Result<()> {
    let del: Vec<String> = (0..n).map(|i| format!("link del ntba{i}")).collect();
    sys::ip_batch(Some(node), &del)
}

/// One `node-tracer peers --json`, in seconds.
fn peers(node: &str, want: usize) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", node])
        .arg(agent::binary())
        .args(["--log-level", "warn", "peers", "--json"])
        .args([
            "--cri-socket",
            "/run/ntb-no-such.sock",
            "--cni-results-dir",
            "/run/ntb-no-such-dir",
        ])
        .stdin(Stdio::null())
        .output()
        .context("run node-tracer peers")?;
    let took = t.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "node-tracer peers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("peers --json output")?;
    let n = json.as_array().map_or(0, Vec::len);
    ensure!(n >= want, "peers listed {n} veths, the lab has {want}");
    Ok(took)
}
