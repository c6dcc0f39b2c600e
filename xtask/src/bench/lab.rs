//! The bench's own node, in namespaces: a "node" namespace holding a bridge and the host-side
//! veths, and one namespace per pod. The agent runs inside the node namespace, so agents of other
//! people on this machine never attach to our veths (nor ours to theirs), and no packet leaves.
//!
//! Every name starts with `ntb<pid>`: `cargo xtask test` sweeps `ntb*` leftovers whose owner is
//! dead. Everything is removed when the [`Lab`] is dropped, also on error or Ctrl-C.

use std::process::{Command, Stdio};

use anyhow::Result;

use super::sys::{self, Proc};

/// Client and server addresses on the bridge.
pub const CLIENT_IP: &str = "192.168.77.1";
pub const SERVER_IP: &str = "192.168.77.2";
/// Host-side veths of the traffic pods (inside the node namespace).
pub const CLIENT_VETH: &str = "ntbc";
pub const SERVER_VETH: &str = "ntbs";

pub struct Lab {
    pub id: String,
    /// Namespaces made, node first.
    netns: Vec<String>,
    /// Processes that live as long as the lab (the iperf3 server).
    procs: Vec<Proc>,
}

impl Lab {
    /// The node namespace with the bridge and two traffic pods on it.
    pub fn new() -> Result<Self> {
        let mut lab = Self {
            id: format!("ntb{}", std::process::id()),
            netns: Vec::new(),
            procs: Vec::new(),
        };
        let node = lab.node();
        let (c, s) = (lab.ns("c"), lab.ns("s"));
        lab.add_netns(&[node.clone(), c.clone(), s.clone()])?;
        // No IPv6 chatter and no forwarding: only the traffic we send.
        let quiet =
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1";
        for ns in [&node, &c, &s] {
            sys::sh(&format!("ip netns exec {ns} {quiet}"))?;
        }
        sys::ip_batch(
            Some(&node),
            &[
                "link set lo up".into(),
                "link add ntbbr type bridge".into(),
                "link set ntbbr up".into(),
                format!("link add {CLIENT_VETH} type veth peer name eth0 netns {c}"),
                format!("link add {SERVER_VETH} type veth peer name eth0 netns {s}"),
                format!("link set {CLIENT_VETH} master ntbbr up"),
                format!("link set {SERVER_VETH} master ntbbr up"),
            ],
        )?;
        for (ns, ip) in [(&c, CLIENT_IP), (&s, SERVER_IP)] {
            sys::ip_batch(
                Some(ns),
                &[
                    "link set lo up".into(),
                    format!("addr add {ip}/24 dev eth0"),
                    "link set eth0 up".into(),
                ],
            )?;
        }
        Ok(lab)
    }

    pub fn node(&self) -> String {
        self.ns("n")
    }

    pub fn ns(&self, tag: &str) -> String {
        format!("{}{tag}", self.id)
    }

    pub fn client(&self) -> String {
        self.ns("c")
    }

    pub fn server(&self) -> String {
        self.ns("s")
    }

    fn add_netns(&mut self, names: &[String]) -> Result<()> {
        // Registered before creation: a batch that fails halfway still gets cleaned up.
        self.netns.extend(names.iter().cloned());
        let lines: Vec<String> = names.iter().map(|n| format!("netns add {n}")).collect();
        sys::ip_batch(None, &lines)
    }

    /// `n` pods `tag0..` on the node, one namespace each, host veths `ntb{tag}{i}`. Like a real
    /// pod's, each eth0 has an address (10.200.0.0/16, no route anywhere) and both ends are up,
    /// so the agent labels and rescans them as it would on a node. Returns the host-side veth
    /// names.
    pub fn add_pods(&mut self, tag: &str, n: usize) -> Result<Vec<String>> {
        let names: Vec<String> = (0..n).map(|i| self.ns(&format!("{tag}{i}"))).collect();
        self.add_netns(&names)?;
        let veths: Vec<String> = (0..n).map(|i| format!("ntb{tag}{i}")).collect();
        let mut lines: Vec<String> = veths
            .iter()
            .zip(&names)
            .map(|(v, ns)| format!("link add {v} type veth peer name eth0 netns {ns}"))
            .collect();
        lines.extend(veths.iter().map(|v| format!("link set {v} up")));
        sys::ip_batch(Some(&self.node()), &lines)?;
        for (i, ns) in names.iter().enumerate() {
            sys::ip_batch(
                Some(ns),
                &[
                    format!("addr add 10.200.{}.{}/16 dev eth0", i / 250, i % 250 + 1),
                    "link set eth0 up".into(),
                ],
            )?;
        }
        Ok(veths)
    }

    /// Namespaces for pods the caller will create itself (the attach-latency test).
    pub fn add_empty_pods(&mut self, tag: &str, n: usize) -> Result<Vec<String>> {
        let names: Vec<String> = (0..n).map(|i| self.ns(&format!("{tag}{i}"))).collect();
        self.add_netns(&names)?;
        Ok(names)
    }

    /// iperf3 server in the server pod, pinned to CPU 1, for the whole run.
    pub fn start_iperf_server(&mut self) -> Result<()> {
        let mut p = Proc::spawn(
            "iperf3 server",
            Command::new("ip")
                .args(["netns", "exec", &self.server()])
                .args(["taskset", "-c", "1", "iperf3", "-s", "-B", SERVER_IP])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let server = self.server();
        sys::wait_for(
            "the iperf3 server",
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(50),
            || {
                p.check_running()?;
                Ok(
                    sys::sh(&format!("ip netns exec {server} ss -Hltn sport = :5201"))
                        .is_ok_and(|o| !o.trim().is_empty()),
                )
            },
        )?;
        self.procs.push(p);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stop();
        }
        // Pods first, then the node: deleting the node namespace takes its veths (and so the
        // pods' ends) with it.
        let mut lines: Vec<String> = self
            .netns
            .iter()
            .rev()
            .map(|n| format!("netns del {n}"))
            .collect();
        // `ip -batch` stops at the first error; `-force` goes on past a name already gone.
        lines.push(String::new());
        let _ = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                if let Some(mut i) = c.stdin.take() {
                    use std::io::Write as _;
                    let _ = i.write_all(lines.join("\n").as_bytes());
                }
                c.wait()
            });
    }
}
