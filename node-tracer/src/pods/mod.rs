//! Which pod owns a network namespace.
//!
//! Six sources, best first (why in that order: [`crate::model::PodSource`]): the container
//! runtime over CRI ([`cri`]), the Docker Engine's API ([`docker`]), Podman's `conmon`
//! processes ([`podman`]), the CNI result cache ([`cni`]), named namespaces under `/run/netns` ([`netns`]) and processes ([`proc`]); taps,
//! which have no namespace behind them, by the process holding them ([`tap`]). Everything
//! is keyed by the namespace's inode (`stat(path).st_ino`): every pod's `eth0` is ifindex 2 in its
//! own namespace, so an ifindex never identifies a pod.
//!
//! A source that is absent (no runtime, no cache dir) is skipped quietly; one that answers
//! nonsense is skipped with a warning. Discovery never fails as a whole: a node with none of
//! them simply has no pods.

pub mod cni;
pub mod cni_conf;
pub mod cri;
pub mod docker;
pub mod netns;
pub mod podman;
pub mod proc;
mod tap;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

/// Every source keys on it; it lives beside the CRI client, whose sandboxes name namespaces by
/// path too.
pub use node_tracer_cri::netns_inode;

use crate::model::{Pod, PodSource, Port, PortKind};

/// Where to look for pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodConfig {
    /// CRI sockets tried in order; every one that answers contributes.
    pub cri_sockets: Vec<PathBuf>,
    /// libcni's result cache (`<network>-<sandboxID>-<ifname>` JSON files).
    pub cni_results_dir: PathBuf,
    /// The CNI network configuration (which bridges ask for hairpin mode).
    pub cni_conf_dir: PathBuf,
    /// Named namespaces (`ip netns add`, and where containerd mounts pod namespaces).
    pub netns_dir: PathBuf,
    pub proc_root: PathBuf,
    /// Bound on each CRI call: a runtime that hangs must not stall a scrape.
    pub cri_timeout: Duration,
    /// Docker Engine API sockets, each asked in turn; absent ones are skipped quietly.
    pub docker_sockets: Vec<PathBuf>,
    /// Bound on each Docker Engine call, for the same reason.
    pub docker_timeout: Duration,
}

/// Where the CRI runtimes of the common distributions listen: containerd, CRI-O, k3s and RKE2
/// (their own containerd), MicroK8s (a snap's), and cri-dockerd (Docker behind the CRI). Absent
/// ones are skipped quietly.
pub const DEFAULT_CRI_SOCKETS: [&str; 5] = [
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/snap/microk8s/common/run/containerd.sock",
    "/run/cri-dockerd.sock",
];

impl Default for PodConfig {
    fn default() -> Self {
        Self {
            cri_sockets: DEFAULT_CRI_SOCKETS.iter().map(PathBuf::from).collect(),
            cni_results_dir: PathBuf::from("/var/lib/cni/results"),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            netns_dir: PathBuf::from("/run/netns"),
            proc_root: PathBuf::from("/proc"),
            cri_timeout: Duration::from_secs(2),
            docker_sockets: vec![PathBuf::from(docker::DEFAULT_SOCKET)],
            docker_timeout: Duration::from_secs(2),
        }
    }
}

/// One source's claim: the namespace at `path` (inode `inode`) belongs to `pod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub inode: u64,
    pub path: PathBuf,
    pub pod: Pod,
}

/// A source that answered this discovery: where (a socket or a directory; none for `/proc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub source: PodSource,
    pub at: Option<PathBuf>,
}

/// Pods by network-namespace inode, best source kept.
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    by_inode: HashMap<u64, Pod>,
    paths: BTreeSet<PathBuf>,
    host_inode: Option<u64>,
    answered: Vec<Answered>,
    /// Bridges whose CNI configuration asks for hairpin mode.
    hairpin_bridges: BTreeSet<String>,
    /// Taps by interface name: named after the process (the VM) holding them.
    taps: HashMap<String, Pod>,
}

impl PodIndex {
    fn new(host_inode: Option<u64>) -> Self {
        Self {
            host_inode,
            ..Self::default()
        }
    }

    /// The sources that answered, best first (for `peers`' last line).
    pub fn answered(&self) -> &[Answered] {
        &self.answered
    }

    fn answered_by(&mut self, source: PodSource, at: Option<&Path>) {
        self.answered.push(Answered {
            source,
            at: at.map(Path::to_path_buf),
        });
    }

    pub fn lookup(&self, netns_inode: u64) -> Option<&Pod> {
        self.by_inode.get(&netns_inode)
    }

    /// Labels a topology port: the pod behind its peer, and whether its bridge's CNI
    /// configuration asks for hairpin mode (the port's own mode is read fresh elsewhere).
    pub fn label(&self, port: &mut Port) {
        port.pod = match port.kind {
            PortKind::Tap => self.taps.get(&port.name).cloned(),
            PortKind::Veth | PortKind::Uplink => port
                .peer
                .as_ref()
                .and_then(|peer| peer.netns_inode)
                .and_then(|ino| self.lookup(ino))
                .cloned(),
        };
        port.hairpin_expected = port
            .master
            .as_ref()
            .is_some_and(|b| self.hairpin_bridges.contains(b));
    }

    /// Every namespace path any source learned (several may open the same namespace), so the
    /// topology module can open the peers' namespaces.
    pub fn netns_paths(&self) -> Vec<PathBuf> {
        self.paths.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }

    /// Keeps `found` unless a better (or equal, earlier) source already claimed its namespace.
    fn offer(&mut self, found: Found) {
        // A host-network pod or a process in the host namespace is not "behind" any veth;
        // labelling the host namespace with it would mislabel every host-side peer.
        if Some(found.inode) == self.host_inode {
            log::debug!(
                "pods: {} is the host namespace, not a pod's",
                found.path.display()
            );
            return;
        }
        self.paths.insert(found.path);
        let mut pod = found.pod;
        match self.by_inode.get_mut(&found.inode) {
            Some(have) if have.source <= pod.source => {
                // The better source names the pod; an engine's container record (cri-dockerd's
                // sandbox seen by both CRI and Docker) still says which container it is.
                if have.container.is_none() {
                    have.container = pod.container;
                }
            }
            Some(have) => {
                if pod.container.is_none() {
                    pod.container = have.container.take();
                }
                *have = pod;
            }
            None => {
                self.by_inode.insert(found.inode, pod);
            }
        }
    }
}

/// Runs every source and keeps, per namespace inode, the best one (Cri > Docker > Podman >
/// `CniCache` > Netns > Proc).
pub async fn discover(cfg: &PodConfig) -> PodIndex {
    let host_inode = netns_inode(&cfg.proc_root.join("self/ns/net"))
        .inspect_err(|e| {
            log::warn!(
                "pods: cannot tell the host's network namespace ({e}); \
                 a process in it may be taken for a pod"
            );
        })
        .ok();
    let mut index = PodIndex::new(host_inode);
    index.hairpin_bridges = cni_conf::hairpin_bridges(&cfg.cni_conf_dir);
    let (found, answered) = cri::discover(&cfg.cri_sockets, cfg.cri_timeout).await;
    for socket in &answered {
        index.answered_by(PodSource::Cri, Some(socket));
    }
    for found in found {
        index.offer(found);
    }
    let (found, answered) =
        docker::discover(&cfg.docker_sockets, &cfg.proc_root, cfg.docker_timeout).await;
    for socket in &answered {
        index.answered_by(PodSource::Docker, Some(socket));
    }
    for found in found {
        index.offer(found);
    }
    // Podman answered where any of its containers runs (it has no daemon to ask).
    let (found, answered) = podman::discover(&cfg.proc_root);
    if answered {
        index.answered_by(PodSource::Podman, None);
    }
    for found in found {
        index.offer(found);
    }
    // The file sources are small and local; reading them inline keeps discovery simple. A
    // directory that exists answered, even when it names nothing.
    for (source, dir) in [
        (PodSource::CniCache, &cfg.cni_results_dir),
        (PodSource::Netns, &cfg.netns_dir),
    ] {
        if dir.is_dir() {
            index.answered_by(source, Some(dir));
        }
    }
    for found in cni::discover(&cfg.cni_results_dir) {
        index.offer(found);
    }
    for found in netns::discover(&cfg.netns_dir) {
        index.offer(found);
    }
    index.answered_by(PodSource::Proc, None);
    for found in proc::discover(&cfg.proc_root, host_inode) {
        index.offer(found);
    }
    index.taps = tap::discover(&cfg.proc_root, Path::new("/sys/class/net"));
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Container, PodSource};

    fn found(inode: u64, path: &str, name: &str, source: PodSource) -> Found {
        Found {
            inode,
            path: PathBuf::from(path),
            pod: Pod {
                namespace: String::new(),
                name: name.into(),
                uid: String::new(),
                source,
                container: None,
            },
        }
    }

    #[test]
    fn best_source_wins_whatever_the_order() {
        let mut idx = PodIndex::new(Some(1));
        idx.offer(found(7, "/proc/9/ns/net", "sleep[9]", PodSource::Proc));
        idx.offer(found(7, "/run/netns/cni-a", "web", PodSource::Cri));
        idx.offer(found(7, "/run/netns/cni-a", "cni-a", PodSource::Netns));
        idx.offer(found(8, "/run/netns/x", "x", PodSource::Netns));
        idx.offer(found(8, "/proc/3/ns/net", "x[3]", PodSource::Proc));
        assert_eq!(idx.lookup(7).map(|p| p.name.as_str()), Some("web"));
        assert_eq!(idx.lookup(8).map(|p| p.source), Some(PodSource::Netns));
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.netns_paths().len(), 4);
    }

    #[test]
    fn a_better_source_names_the_pod_and_the_engine_still_names_its_container() {
        let sandbox = Container {
            runtime: "docker".into(),
            id: "abc".into(),
            name: "k8s_POD_web_default_u1_0".into(),
            image: "pause:3".into(),
        };
        let mut docker = found(7, "/run/docker/netns/x", "web", PodSource::Docker);
        docker.pod.container = Some(sandbox.clone());
        for order in [[0, 1], [1, 0]] {
            let offers = [
                found(7, "/proc/9/ns/net", "web", PodSource::Cri),
                docker.clone(),
            ];
            let mut idx = PodIndex::new(Some(1));
            for i in order {
                idx.offer(offers[i].clone());
            }
            let pod = idx.lookup(7).unwrap();
            assert_eq!(pod.source, PodSource::Cri);
            assert_eq!(pod.container.as_ref(), Some(&sandbox));
        }
    }

    #[test]
    fn host_namespace_is_never_a_pod() {
        let mut idx = PodIndex::new(Some(1));
        idx.offer(found(1, "/proc/5/ns/net", "x", PodSource::Cri));
        assert!(idx.is_empty());
        assert!(idx.netns_paths().is_empty());
    }
}
