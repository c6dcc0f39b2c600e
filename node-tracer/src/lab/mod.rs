//! The lab node: the node of the seeds, built in network namespaces on this machine, so a
//! newcomer (and the tests) see real traffic at once. A bridge (`cni0`, flannel-style, gateway on
//! the bridge) with two pods, an empty `docker0`, and two GKE-style routed pods whose host veths
//! carry the same /32 and no bridge; plus steady pings.
//!
//! Everything the lab makes is recorded in a state file, so `down` removes exactly that (also
//! after a crash), and `up` twice is harmless.

mod netns;
pub mod pods;
pub mod runtime;

pub use netns::{LabPod, LabState};

use std::path::PathBuf;

use crate::error::{Error, Result};

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

/// Builds the lab (no-op when its state file says it is up and its objects still exist).
pub fn up(spec: &LabSpec) -> Result<LabState> {
    netns::up(spec)
}

/// Removes everything the lab recorded; fine to call when it is not up.
pub fn down(spec: &LabSpec) -> Result<()> {
    netns::down(spec)
}

/// Whether this host already runs pods (then the lab is not needed): any veth whose peer lives in
/// another namespace.
pub fn host_has_pods() -> bool {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        // A veth with a peer elsewhere has iflink != ifindex and no device link.
        let ifindex = read("ifindex");
        let iflink = read("iflink");
        !ifindex.is_empty()
            && ifindex != iflink
            && !p.join("device").exists()
            && !p.join("bridge").exists()
    })
}

pub(crate) fn cmd_err(what: impl Into<String>, e: std::io::Error) -> Error {
    Error::io(what, e)
}
