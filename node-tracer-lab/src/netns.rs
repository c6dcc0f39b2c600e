//! The lab in plain network namespaces (`ip netns`), no container runtime needed.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result, io},
    process,
};

/// What to build. Names and subnets are parameters so parallel tests never collide.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Lab name: keys the state file and prefixes namespaces and host veths (keep it short).
    pub name: String,
    pub bridge: String,
    pub docker_bridge: String,
    /// First three octets of the bridge subnet, e.g. "10.244.1" (gateway .1, pods .2, .3).
    pub bridge_net: String,
    /// First three octets of the routed pods, e.g. "10.188.2" (gateway .1 on every host veth).
    pub routed_net: String,
    /// IPv6 /64 prefix for the bridge pods, e.g. "fd00:244:1".
    pub bridge_net6: String,
    /// Start pings between the pods.
    pub traffic: bool,
    pub state_dir: PathBuf,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            name: "lab".into(),
            bridge: "cni0".into(),
            docker_bridge: "docker0".into(),
            bridge_net: "10.244.1".into(),
            routed_net: "10.188.2".into(),
            bridge_net6: "fd00:244:1".into(),
            traffic: true,
            state_dir: PathBuf::from("/run/node-tracer"),
        }
    }
}

impl LabSpec {
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!("lab-{}.json", self.name))
    }
}

/// A pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabPod {
    /// The network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// Host-side veth.
    pub veth: String,
    pub ip: String,
    pub ip6: Option<String>,
    pub routed: bool,
}

/// What `up` made, persisted so `down` removes exactly that.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    pub pods: Vec<LabPod>,
    pub links: Vec<String>,
    pub pids: Vec<u32>,
    /// `net.ipv4.ip_forward` before the lab changed it.
    pub ip_forward_before: Option<String>,
}

fn ip(args: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args.split_whitespace()).stdin(Stdio::null());
    process::run(&mut cmd).map(drop)
}

fn exists(link: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(link).exists()
}

/// Builds the lab (no-op when its state file says it is up and its objects still exist).
pub fn up(spec: &LabSpec) -> Result<LabState> {
    if let Ok(text) = fs::read_to_string(spec.state_file())
        && let Ok(state) = serde_json::from_str::<LabState>(&text)
        && state.pods.iter().all(|p| exists(&p.veth))
    {
        return Ok(state);
    }
    // A half-built or stale lab: start clean.
    down(spec)?;
    let mut state = LabState::default();
    let result = build(spec, &mut state);
    // Record what exists even when building failed half-way, so `down` can remove it.
    save(spec, &state)?;
    if let Err(e) = result {
        let _ = down(spec);
        return Err(e);
    }
    Ok(state)
}

fn save(spec: &LabSpec, state: &LabState) -> Result<()> {
    fs::create_dir_all(&spec.state_dir)
        .map_err(io(format_args!("create {}", spec.state_dir.display())))?;
    let text =
        serde_json::to_string_pretty(state).map_err(|e| Error::State(spec.state_file(), e))?;
    fs::write(spec.state_file(), text)
        .map_err(io(format_args!("write {}", spec.state_file().display())))
}

fn build(spec: &LabSpec, state: &mut LabState) -> Result<()> {
    let n = &spec.name;
    // flannel-style bridge with the gateway on it.
    ip(&format!("link add {} type bridge", spec.bridge))?;
    state.links.push(spec.bridge.clone());
    ip(&format!(
        "addr add {}.1/24 dev {}",
        spec.bridge_net, spec.bridge
    ))?;
    ip(&format!(
        "addr add {}::1/64 dev {} nodad",
        spec.bridge_net6, spec.bridge
    ))?;
    ip(&format!("link set {} up", spec.bridge))?;
    // docker0 as on GKE: there, addressed, no ports.
    ip(&format!("link add {} type bridge", spec.docker_bridge))?;
    state.links.push(spec.docker_bridge.clone());

    for (i, host) in [2u8, 3].into_iter().enumerate() {
        let netns = format!("{n}-web-{}", i + 1);
        let veth = format!("{n}b{i}{}", short_hash(&netns));
        let ip4 = format!("{}.{host}", spec.bridge_net);
        let ip6 = format!("{}::{host}", spec.bridge_net6);
        add_pod(&netns, &veth, state)?;
        state.pods.push(LabPod {
            netns: netns.clone(),
            veth: veth.clone(),
            ip: ip4.clone(),
            ip6: Some(ip6.clone()),
            routed: false,
        });
        ip(&format!("link set {veth} master {} up", spec.bridge))?;
        ip(&format!("-n {netns} addr add {ip4}/24 dev eth0"))?;
        ip(&format!("-n {netns} addr add {ip6}/64 dev eth0 nodad"))?;
        ip(&format!("-n {netns} link set eth0 up"))?;
        // Only the lab's own subnets: no default route out of the lab.
        ip(&format!(
            "-n {netns} route add {}.0/24 via {}.1",
            spec.routed_net, spec.bridge_net
        ))?;
    }
    for (i, host) in [5u8, 6].into_iter().enumerate() {
        let netns = format!("{n}-gke-{}", i + 1);
        let veth = format!("{n}r{i}{}", short_hash(&netns));
        let ip4 = format!("{}.{host}", spec.routed_net);
        add_pod(&netns, &veth, state)?;
        state.pods.push(LabPod {
            netns: netns.clone(),
            veth: veth.clone(),
            ip: ip4.clone(),
            ip6: None,
            routed: true,
        });
        // GKE/ptp: every host veth carries the same gateway /32, a host route per pod.
        ip(&format!("addr add {}.1/32 dev {veth}", spec.routed_net))?;
        ip(&format!("link set {veth} up"))?;
        ip(&format!("route add {ip4}/32 dev {veth}"))?;
        ip(&format!("-n {netns} addr add {ip4}/32 dev eth0"))?;
        ip(&format!("-n {netns} link set eth0 up"))?;
        ip(&format!(
            "-n {netns} route add {}.1/32 dev eth0",
            spec.routed_net
        ))?;
        ip(&format!(
            "-n {netns} route add {}.0/24 via {}.1 dev eth0",
            spec.bridge_net, spec.routed_net
        ))?;
    }
    if spec.traffic {
        start_traffic(spec, state)?;
    }
    Ok(())
}

fn add_pod(netns: &str, veth: &str, state: &mut LabState) -> Result<()> {
    ip(&format!("netns add {netns}"))?;
    state.pods.push(LabPod {
        netns: netns.to_string(),
        veth: String::new(),
        ip: String::new(),
        ip6: None,
        routed: false,
    });
    ip(&format!("-n {netns} link set lo up"))?;
    ip(&format!(
        "link add {veth} type veth peer name eth0 netns {netns}"
    ))?;
    // The placeholder above only made sure `down` removes the namespace if the next steps fail.
    state
        .pods
        .retain(|p| !(p.netns == netns && p.veth.is_empty()));
    state.links.push(veth.to_string());
    Ok(())
}

/// Steady, gentle traffic: across the bridge (v4 and v6), to the bridge gateway, and from the
/// routed pods to their gateway. Everything stays inside the lab's namespaces.
fn start_traffic(spec: &LabSpec, state: &mut LabState) -> Result<()> {
    let bridged: Vec<LabPod> = state.pods.iter().filter(|p| !p.routed).cloned().collect();
    let routed: Vec<LabPod> = state.pods.iter().filter(|p| p.routed).cloned().collect();
    // Routing between the bridge and routed pods goes through the host.
    state.ip_forward_before = fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .ok()
        .map(|s| s.trim().to_string());
    let mut pings: Vec<(String, String)> = Vec::new();
    if let [a, b] = bridged.as_slice() {
        pings.push((a.netns.clone(), b.ip.clone()));
        if let Some(v6) = &b.ip6 {
            pings.push((a.netns.clone(), v6.clone()));
        }
        pings.push((b.netns.clone(), format!("{}.1", spec.bridge_net)));
    }
    for r in &routed {
        pings.push((r.netns.clone(), format!("{}.1", spec.routed_net)));
    }
    for (netns, target) in pings {
        let child = Command::new("ip")
            .args(["netns", "exec", &netns, "ping", "-q", "-i", "1", &target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("start ping"))?;
        state.pids.push(child.id());
    }
    Ok(())
}

/// Removes everything the lab recorded; fine to call when it is not up.
pub fn down(spec: &LabSpec) -> Result<()> {
    let state: LabState = fs::read_to_string(spec.state_file())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    for pid in &state.pids {
        // Only our own pings: the PID may have been reused since.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == b"ping") {
            // SAFETY: signalling a process we started, checked by its command line.
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
    }
    for l in state.links.iter().rev() {
        if exists(l) {
            let _ = ip(&format!("link del {l}"));
        }
    }
    for p in &state.pods {
        if std::path::Path::new("/run/netns").join(&p.netns).exists() {
            let _ = ip(&format!("netns del {}", p.netns));
        }
    }
    if let Some(v) = &state.ip_forward_before {
        let _ = fs::write("/proc/sys/net/ipv4/ip_forward", v);
    }
    match fs::remove_file(spec.state_file()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format_args!("remove {}", spec.state_file().display()))(
            e,
        )),
    }
}

/// Four hex digits derived from a name, like the random suffix of CNI's `vethXXXXXXXX`.
fn short_hash(s: &str) -> String {
    let h = s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{:04x}", h & 0xffff)
}
