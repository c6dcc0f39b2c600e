//! The lab with real pods: its own containerd, pods created over CRI the way a kubelet creates
//! them, on a `cni0` bridge (CNI `bridge`, flannel-style) and routed (CNI `ptp`, GKE-style:
//! every host veth carries the same gateway /32), an empty `docker0`, and steady pings — so a
//! newcomer's `node-tracer run --lab` shows exactly what a Kubernetes node shows, pod names
//! included.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{
    error::Error,
    runtime::{PodHandle, Runtime, RuntimeOptions},
};

/// (namespace, name, runtime handler) of the lab's pods.
const PODS: [(&str, &str, &str); 4] = [
    ("default", "web-1", "runc"),
    ("default", "web-2", "runc"),
    ("shop", "api-1", "ptp"),
    ("shop", "api-2", "ptp"),
];

/// A running pod lab; [`PodLab::stop`] (or drop) removes all of it.
pub struct PodLab {
    runtime: Option<Runtime>,
    pub pods: Vec<PodHandle>,
    pings: Vec<Child>,
    docker0: Option<String>,
}

impl PodLab {
    /// Starts containerd, the four pods, `docker0` (if absent) and the pings.
    pub async fn start(name: &str) -> Result<Self, Error> {
        let runtime = Runtime::start(RuntimeOptions::new(name)).await?;
        let mut lab = Self {
            runtime: Some(runtime),
            pods: Vec::new(),
            pings: Vec::new(),
            docker0: None,
        };
        let rt = lab.runtime.as_ref().expect("just set");
        for (i, (ns, pod, handler)) in PODS.iter().enumerate() {
            let uid = format!("00000000-0000-4000-8000-{:012}", i + 1);
            lab.pods.push(rt.run_pod(pod, ns, &uid, handler).await?);
        }
        if !Path::new("/sys/class/net/docker0").exists() {
            // docker0 as on GKE: a bridge with an address and no ports.
            let ok = Command::new("ip")
                .args(["link", "add", "docker0", "type", "bridge"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                lab.docker0 = Some("docker0".into());
            }
        }
        lab.start_pings();
        Ok(lab)
    }

    /// The CRI socket of the lab's containerd, for the agent's pod sources.
    pub fn cri_socket(&self) -> Option<PathBuf> {
        self.runtime.as_ref().map(|r| r.socket().to_path_buf())
    }

    /// web-1 pings web-2 (across the bridge) and the bridge gateway; each routed pod pings its
    /// gateway. All of it stays inside the lab.
    fn start_pings(&mut self) {
        let ip_of = |p: &PodHandle| pod_ipv4(&p.netns);
        let mut pings: Vec<(PathBuf, IpAddr)> = Vec::new();
        if let [web1, web2, api1, api2] = self.pods.as_slice() {
            if let Some(ip) = ip_of(web2) {
                pings.push((web1.netns.clone(), ip));
            }
            for p in [web2, api1, api2] {
                if let Some(gw) = gateway_of(&p.netns).or_else(|| bridge_gateway(p)) {
                    pings.push((p.netns.clone(), gw));
                }
            }
        }
        for (netns, target) in pings {
            let child = Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["ping", "-q", "-i", "1"])
                .arg(target.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            match child {
                Ok(c) => self.pings.push(c),
                Err(e) => log::warn!("lab: starting ping in {}: {e}", netns.display()),
            }
        }
    }

    /// Stops the pings, removes the pods and containerd, and `docker0` if the lab made it.
    pub async fn stop(mut self) -> Result<(), Error> {
        self.stop_local();
        match self.runtime.take() {
            Some(rt) => rt.stop().await,
            None => Ok(()),
        }
    }

    fn stop_local(&mut self) {
        for mut c in self.pings.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(name) = self.docker0.take() {
            let _ = Command::new("ip").args(["link", "del", &name]).status();
        }
    }
}

impl Drop for PodLab {
    fn drop(&mut self) {
        // The runtime's own Drop tears containerd and the pods down.
        self.stop_local();
    }
}

/// Bridge pods have no route via a gateway (CNI `bridge` without isDefaultGateway); their
/// gateway is the bridge, the first address of the subnet.
fn bridge_gateway(p: &PodHandle) -> Option<IpAddr> {
    match pod_ipv4(&p.netns)? {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Some(IpAddr::V4([a, b, c, 1].into()))
        }
        IpAddr::V6(_) => None,
    }
}

/// The pod's IPv4 address on eth0, read inside its namespace.
fn pod_ipv4(netns: &Path) -> Option<IpAddr> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    cidr.split('/').next()?.parse().ok()
}

/// The pod's default gateway or, for ptp pods, the first hop of its routes.
fn gateway_of(netns: &Path) -> Option<IpAddr> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-4", "route", "show"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            while let Some(t) = w.next() {
                if t == "via" {
                    return w.next().map(str::to_string);
                }
            }
            None
        })
        .and_then(|s| s.parse().ok())
}
