//! Support for node-tracer's integration tests: real namespaces, veths and bridges with unique
//! names, removed on drop (also when a test fails); the real `node-tracer` binary as a child
//! process stopped by its PID.
//!
//! Every object a test makes starts with [`PREFIX`], so `cargo xtask test` can sweep whatever an
//! interrupted run left behind without touching anything else.
#![allow(clippy::missing_panics_doc)]

pub mod cluster;
pub mod docker;
mod host_dirs;
pub mod podman;
pub mod runtime;
pub mod tc_shot;

use std::{
    collections::HashSet,
    io::Read as _,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Prefix of every namespace and link the tests create.
pub const PREFIX: &str = "ntt";

/// Fails the test unless it runs as root: privileged tests never skip silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this integration test needs root (real namespaces, veths and BPF); run `cargo xtask test` as root"
    );
}

/// Fails the test when a tool it needs is missing (`cargo xtask setup` installs them).
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "`{tool}` is not installed; run `cargo xtask setup`");
}

/// A name unique to this process and call, at most 15 bytes (the kernel's IFNAMSIZ - 1):
/// `ntt` + a tag of up to 4 characters + 8 base-36 digits.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(4)
        .collect();
    let mut id = (u64::from(pid) << 16 | u64::from(n & 0xffff)) % 36u64.pow(8);
    let mut digits = [b'0'; 8];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(id % 36) as usize];
        id /= 36;
    }
    format!("{PREFIX}{tag}{}", std::str::from_utf8(&digits).unwrap())
}

/// Runs a command line through `sh -c`, failing the test with its stderr if it fails.
pub fn sh(cmd: &str) -> String {
    let out = sh_output(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command line, returning its output whatever the exit status.
pub fn sh_output(cmd: &str) -> Output {
    Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn sh for `{cmd}`: {e}"))
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        sh(&format!("ip netns add {name}"));
        let ns = Self { name };
        ns.exec("ip link set lo up");
        ns
    }

    /// Runs a command line inside the namespace.
    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} bash -c '{}'",
            self.name,
            cmd.replace('\'', r"'\''")
        ))
    }

    pub fn exec_output(&self, cmd: &str) -> Output {
        sh_output(&format!(
            "ip netns exec {} bash -c '{}'",
            self.name,
            cmd.replace('\'', r"'\''")
        ))
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip` commands (one per line, as `ip -batch` reads them) inside the namespace in one
    /// process: hundreds of links in a fraction of a second.
    pub fn ip_batch(&self, commands: &str) {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), commands.as_bytes())
            .expect("write to ip -batch");
        let out = child.wait_with_output().expect("wait ip -batch");
        assert!(
            out.status.success(),
            "ip -n {} -batch: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `work` on a thread of its own that has entered this namespace (`setns` is per
    /// thread; the thread exits right after), for calls that act on the caller's namespace:
    /// netlink sockets, tcx queries by name.
    pub fn in_thread<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let f = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: an open namespace fd; setns changes only this scoped thread.
                let rc =
                    unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                work()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh_output(&format!("ip netns del {}", self.name));
    }
}

/// A link in the host namespace (veth, bridge, ...), deleted on drop. Deleting one end of a veth
/// deletes both.
#[derive(Debug)]
pub struct Link {
    pub name: String,
}

impl Link {
    pub fn bridge(tag: &str) -> Self {
        let name = unique(tag);
        sh(&format!("ip link add {name} type bridge"));
        let link = Self { name };
        quiet_ipv6(None, &link.name);
        sh(&format!("ip link set {} up", link.name));
        link
    }

    pub fn ifindex(&self) -> u32 {
        ifindex(&self.name)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = sh_output(&format!("ip link del {}", self.name));
    }
}

/// The host link whose ifindex is `ifindex` (a container's `eth0` `iflink` names its host veth).
pub fn link_by_ifindex(ifindex: &str) -> String {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("ifindex")).is_ok_and(|i| i.trim() == ifindex)
        })
        .map_or_else(
            || panic!("no host link with ifindex {ifindex}"),
            |e| e.file_name().to_string_lossy().into_owned(),
        )
}

pub fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .unwrap_or_else(|e| panic!("ifindex of {name}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// A "pod": a namespace whose `eth0` is the peer of a host-side veth.
#[derive(Debug)]
pub struct Pod {
    /// Host-side veth (dropped before the namespace).
    pub veth: Link,
    pub ns: Netns,
    pub ip: String,
}

impl Pod {
    /// A pod on `bridge` with address `ip/prefix` (gateway-less: traffic stays on the bridge).
    pub fn bridged(tag: &str, bridge: &Link, ip: &str, prefix: u8) -> Self {
        let ns = Netns::new(tag);
        let veth = unique("v");
        quiet_ipv6(Some(&ns), "default");
        sh(&format!(
            "ip link add {veth} type veth peer name eth0 netns {ns}",
            ns = ns.name
        ));
        // Owned from here on, so a failure below still deletes it.
        let veth = Link { name: veth };
        quiet_ipv6(None, &veth.name);
        sh(&format!(
            "ip link set {} master {} up",
            veth.name, bridge.name
        ));
        ns.exec(&format!(
            "ip addr add {ip}/{prefix} dev eth0 && ip link set eth0 up"
        ));
        Self {
            veth,
            ns,
            ip: ip.to_string(),
        }
    }

    /// A pod with no bridge: the host veth and the pod's eth0 form a point-to-point link.
    pub fn routed(tag: &str, ip: &str, host_ip: &str) -> Self {
        let ns = Netns::new(tag);
        let veth = unique("v");
        quiet_ipv6(Some(&ns), "default");
        sh(&format!(
            "ip link add {veth} type veth peer name eth0 netns {}",
            ns.name
        ));
        let link = Link { name: veth.clone() };
        quiet_ipv6(None, &veth);
        sh(&format!(
            "ip link set {veth} up && \
             ip addr add {host_ip}/32 dev {veth} && ip route add {ip}/32 dev {veth}"
        ));
        ns.exec(&format!(
            "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && \
             ip route add {host_ip}/32 dev eth0"
        ));
        Self {
            veth: link,
            ns,
            ip: ip.to_string(),
        }
    }

    pub fn mac(&self) -> String {
        self.ns
            .exec("cat /sys/class/net/eth0/address")
            .trim()
            .to_string()
    }
}

/// The kernel's own counters of an interface (`/sys/class/net/NAME/statistics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One of the kernel's counters of an interface: `/sys/class/net/IFNAME/statistics/FIELD`
/// (`rx_packets`, `tx_dropped`, ...).
pub fn iface_stat(ifname: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/{field}"))
        .unwrap_or_else(|e| panic!("{ifname} {field}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// `node_tracer_attached_interfaces{mode=MODE}` of a metrics text (`tcx` or `netlink`).
pub fn attached_in(metrics: &str, mode: &str) -> Option<u64> {
    metric(
        metrics,
        "node_tracer_attached_interfaces",
        &[("mode", mode)],
    )
    .map(|v| v as u64)
}

impl KernelCounters {
    pub fn read(ifname: &str) -> Self {
        let r = |f: &str| iface_stat(ifname, f);
        Self {
            rx_packets: r("rx_packets"),
            tx_packets: r("tx_packets"),
            rx_bytes: r("rx_bytes"),
            tx_bytes: r("tx_bytes"),
        }
    }
}

/// Reads the agent's metrics and the kernel's counters of `veth` at one instant (see [`quiet`]).
pub fn quiet_read(agent: &Agent, veth: &str) -> (KernelCounters, String) {
    quiet(veth, || agent.metrics())
}

/// Runs `read` (counters of agents, of a tc filter) and reads the kernel's counters of `veth` at
/// one instant: `read` is bracketed by two kernel reads and retried until no packet crossed the
/// veth during it, so an exact comparison never races a stray packet (the MLD reports and other
/// IPv6 chatter of a pod that just came up).
pub fn quiet<T>(veth: &str, mut read: impl FnMut() -> T) -> (KernelCounters, T) {
    for _ in 0..50 {
        let before = KernelCounters::read(veth);
        let value = read();
        if KernelCounters::read(veth) == before {
            return (before, value);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{veth} never went quiet for one read");
}

/// Path of the `node-tracer` binary under test (`NODE_TRACER_BIN`, else the workspace's debug
/// build, which `cargo xtask test` builds first).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NODE_TRACER_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/node-tracer");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p node-tracer` (or run `cargo xtask test`)",
        p.display()
    );
    p
}

/// `ip netns exec NS node-tracer ARGS`, with no pod source but the named namespaces (no CRI
/// socket, no CNI cache): an agent or tracer in a test's own node namespace. Stdin and stdout
/// closed, stderr piped (callers may change any of them before spawning).
pub fn node_tracer_in(ns: &Netns, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(binary())
        .args(args)
        .args(["--cri-socket", "/run/ntt-none.sock"])
        .args(["--cni-results-dir", "/run/ntt-none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `node-tracer ARGS` to completion.
pub fn node_tracer(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn node-tracer")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `node-tracer run`, stopped with SIGTERM (then SIGKILL) by its PID on drop.
#[derive(Debug)]
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    stderr: Drained,
}

/// A child's stderr, read as it comes. An agent logging at debug level writes more than a
/// pipe's 64 KiB within seconds of starting; left unread, it blocks on the full pipe and never
/// answers.
#[derive(Debug)]
struct Drained {
    text: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drained {
    fn start(child: &mut Child) -> Self {
        let text = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = child.stderr.take().map(|mut pipe| {
            let text = std::sync::Arc::clone(&text);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    text.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            })
        });
        Self { text, reader }
    }

    /// All the child wrote, once it has exited: the reader gets until the pipe's end (a
    /// generous bound, in case a grandchild inherited the pipe and keeps it open).
    fn all(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let start = Instant::now();
            while !reader.is_finished() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }
}

impl Agent {
    /// Starts `node-tracer run --listen 127.0.0.1:PORT EXTRA...` and waits until `/healthz`
    /// answers 200.
    pub fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["run", "--listen", &listen];
        args.extend_from_slice(extra);
        let mut child = Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node-tracer run");
        let stderr = Drained::start(&mut child);
        let mut agent = Self {
            child,
            addr: listen.parse().unwrap(),
            stderr,
        };
        agent.wait_ready(Duration::from_mins(1));
        agent
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "node-tracer run exited early ({status}): {}",
                    self.stderr.all()
                );
            }
            if let Ok((200, _)) = http_get(self.addr, "/healthz") {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "node-tracer run not ready after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn get(&self, path: &str) -> String {
        let (status, body) =
            http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics")
    }

    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/snapshot")).expect("snapshot JSON")
    }

    /// Kernel ids of the agent's programs, as it reports them (the `id` label of
    /// `node_tracer_program_runs_total`).
    pub fn program_ids(&self) -> HashSet<u32> {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("node_tracer_program_runs_total{"))
            .filter_map(|l| l.split("id=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect()
    }

    /// The agent's programs by name (the `program` label of `node_tracer_program_runs_total`)
    /// with their kernel ids.
    pub fn programs(&self) -> std::collections::BTreeMap<String, u32> {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("node_tracer_program_runs_total{"))
            .filter_map(|l| {
                let label = |k: &str| l.split(&format!("{k}=\"")).nth(1)?.split('"').next();
                Some((label("program")?.to_owned(), label("id")?.parse().ok()?))
            })
            .collect()
    }

    /// Packets the pod behind `veth` sent, all protocols, as the agent counts them now (0 while
    /// it has no series for the veth).
    pub fn transmit_packets(&self, veth: &str) -> u64 {
        metric(
            &self.metrics(),
            "node_tracer_transmit_packets_total",
            &[("interface", veth)],
        )
        .unwrap_or(0.0) as u64
    }

    /// Sends `signal` and waits for the process; returns its stderr.
    pub fn stop_with(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        let (status, _) = signal_and_wait(&mut self.child, signal);
        (status, self.stderr.all())
    }
}

/// Sends `signal` to a child of ours by its PID, waits for it to exit, and returns its exit
/// status and whatever it wrote to its (piped) stderr.
pub fn signal_and_wait(child: &mut Child, signal: i32) -> (std::process::ExitStatus, String) {
    // SAFETY: signalling our own child by its PID; it is not reaped yet, so the PID is still its.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().expect("wait for the child");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).expect("read the child's stderr");
    }
    (status, err)
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}

/// SIGTERM, a grace period, SIGKILL, reaped: node-tracer-sys's one copy.
pub use node_tracer_sys::process::stop_child;

/// A GET through the project's one API client (plain HTTP, no credentials): (status, body).
/// Bounded by a generous timeout, so a server that never answers is an error, not a hang.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut agent = node_tracer_client::Agent::plain(addr);
    agent.timeout = Duration::from_secs(10);
    let fetch = || node_tracer_client::blocking::fetch(&agent, path);
    // The blocking client makes a runtime of its own, which tokio refuses inside an async test:
    // there it runs on a thread of its own (which starts in this thread's network namespace).
    let fetched = if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(fetch).join().expect("the GET thread panicked"))
    } else {
        fetch()
    };
    fetched
        .map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
        .map_err(|e| std::io::Error::other(node_tracer_client::one_line(&e)))
}

/// Value of the sample `name{labels}` in a Prometheus text exposition, where every label given
/// matches; sums when several series match.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if !labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_ifnamsiz_and_differ() {
        let a = unique("pod");
        let b = unique("pod");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert!(a.starts_with(PREFIX));
    }

    #[test]
    fn metric_sums_matching_series() {
        let text = "# HELP x y\nm_total{interface=\"a\",protocol=\"icmp\"} 3\n\
                    m_total{interface=\"a\",protocol=\"udp\"} 4\nm_total{interface=\"b\",protocol=\"udp\"} 5\n";
        assert_eq!(metric(text, "m_total", &[("interface", "a")]), Some(7.0));
        assert_eq!(metric(text, "m_total", &[("protocol", "udp")]), Some(9.0));
        assert_eq!(metric(text, "m_total", &[("interface", "c")]), None);
    }
}

/// Disables IPv6 chatter (router solicitations, DAD) on `iface` in the current namespace or in
/// `netns`, so a measured interval holds only the traffic a test sends. Must run before the link
/// comes up.
pub fn quiet_ipv6(netns: Option<&Netns>, iface: &str) {
    let cmd = format!(
        "sysctl -qw net.ipv6.conf.{iface}.router_solicitations=0 net.ipv6.conf.{iface}.accept_dad=0 \
         net.ipv6.conf.{iface}.dad_transmits=0"
    );
    match netns {
        Some(ns) => {
            ns.exec(&cmd);
        }
        None => {
            sh(&cmd);
        }
    }
}

/// tcpdump on one interface and one direction, writing a pcap; stopped by its PID.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i IFACE -Q DIR` (headers only) and waits until it is listening.
    pub fn start(iface: &str, direction: &str, dir: &std::path::Path) -> Self {
        require_tool("tcpdump");
        let file = dir.join(format!("{iface}-{direction}.pcap"));
        Self::spawn(
            Command::new("tcpdump")
                .args([
                    "-i",
                    iface,
                    "-Q",
                    direction,
                    "-n",
                    "-U",
                    "--immediate-mode",
                    // Headers are all we count. In immediate mode libpcap uses fixed-size ring
                    // frames of the snap length: at the default 256 KiB the 2 MiB ring holds 8
                    // packets, and a starved tcpdump on a busy machine dropped TCP bursts.
                    "-s",
                    "256",
                    "-B",
                    "8192",
                    "-w",
                ])
                .arg(&file),
            file,
        )
    }

    /// Spawns a tcpdump command line that writes to `file` (any wrapper, e.g. `ip netns exec`)
    /// and waits until it is listening, so no packet sent after this returns is missed.
    pub fn spawn(cmd: &mut Command, file: PathBuf) -> Self {
        require_tool("tcpdump");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        // tcpdump says "listening on ..." once the socket is bound.
        let mut err = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            match err.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!("tcpdump did not start: {}", String::from_utf8_lossy(&seen)),
            }
        }
        // Keep draining stderr so tcpdump never blocks on it.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        Self { child, file }
    }

    /// Stops tcpdump with SIGINT (which flushes the file) and returns the file's path. Waits
    /// first until the file has stopped growing: on a busy machine tcpdump can still be writing
    /// packets the kernel already counted, and SIGINT would drop what it has not read yet.
    pub fn stop(mut self) -> PathBuf {
        let size = |f: &PathBuf| std::fs::metadata(f).map_or(0, |m| m.len());
        let (mut last, mut stable, start) = (size(&self.file), 0, Instant::now());
        while stable < 3 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            let now = size(&self.file);
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
        }
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        self.file.clone()
    }

    /// Stops tcpdump and counts the captured packets matching each filter.
    pub fn finish(self, filters: &[&str]) -> Vec<u64> {
        let file = self.stop();
        filters
            .iter()
            .map(|f| {
                let out = sh(&format!(
                    "tcpdump -r {} -n {f} 2>/dev/null | wc -l",
                    file.display()
                ));
                out.trim().parse().unwrap()
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A unique /24 prefix ("10.X.Y") for a test, so routes of parallel tests never collide.
pub fn unique_net() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let v = (std::process::id().wrapping_mul(7919).wrapping_add(n)) % 16000;
    format!("10.{}.{}", 100 + v / 250, v % 250)
}
