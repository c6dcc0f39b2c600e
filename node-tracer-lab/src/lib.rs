//! The lab node: the node of the seeds, built on this machine, so a newcomer (and the tests)
//! see real traffic at once. Not part of the agent: `node-tracer run --lab`, `node-tracer lab`,
//! xtask (through the binary) and the tests use it; the agent's library only observes.
//!
//! Two builds of the same node:
//! - [`pods::PodLab`]: real pods, through a containerd of its own ([`runtime`]) driven over CRI
//!   as a kubelet drives it — a `cni0` bridge (flannel-style) with two pods, two GKE-style
//!   routed pods whose host veths carry the same /32 and no bridge, an empty `docker0`, and
//!   steady pings. Needs containerd, runc, the CNI plugins, gcc and tar (for the pause image).
//! - [`up`] / [`down`]: the same shape in plain network namespaces (`ip netns`), when
//!   containerd is missing. Everything it makes is recorded in a state file, so `down` removes
//!   exactly that (also after a crash), and `up` twice is harmless.

mod cri;
mod error;
mod netns;
pub mod pods;
mod process;
pub mod runtime;
mod subnet;

pub use error::{Error, Result};
pub use netns::{LabPod, LabSpec, LabState, down, up};

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
