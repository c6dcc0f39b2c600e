//! Processes in a network namespace other than the agent's: containers of runtimes we cannot
//! ask (docker without CRI, `unshare`, systemd services with `PrivateNetwork=`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::Found;
use crate::model::{Pod, PodSource};

pub(super) fn discover(proc_root: &Path, host_inode: Option<u64>) -> Vec<Found> {
    let entries = match std::fs::read_dir(proc_root) {
        Ok(e) => e,
        Err(e) => {
            log::debug!("pods: cannot read {}: {e}", proc_root.display());
            return Vec::new();
        }
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // The lowest pid is the namespace's oldest process: the container's init, not a child.
    pids.sort_unstable();
    let mut by_inode: BTreeMap<u64, Found> = BTreeMap::new();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let path = dir.join("ns/net");
        // A pid that exits while we read is simply skipped.
        let Ok(inode) = super::netns_inode(&path) else {
            continue;
        };
        if Some(inode) == host_inode || by_inode.contains_key(&inode) {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let uid = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| container_id(&c))
            .unwrap_or_default();
        by_inode.insert(
            inode,
            Found {
                inode,
                path: PathBuf::from(format!("/proc/{pid}/ns/net")),
                pod: Pod {
                    namespace: String::new(),
                    name: format!("{}[{pid}]", comm.trim_end()),
                    uid,
                    source: PodSource::Proc,
                    container: None,
                },
            },
        );
    }
    // Paths are given under /proc even when proc_root differs: only the real /proc opens them.
    if proc_root != Path::new("/proc") {
        for f in by_inode.values_mut() {
            f.path = proc_root.join(f.path.strip_prefix("/proc").unwrap_or(&f.path));
        }
    }
    by_inode.into_values().collect()
}

/// The 64-hex container id in a `/proc/PID/cgroup` file, if the process is in a container's
/// cgroup (`…/cri-containerd-<id>.scope`, `…/docker-<id>.scope`, `/kubepods/…/<id>`,
/// `/k8s.io/<id>`).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split(['/', '-', '.', ':', '_'])
            .rev()
            .find(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2a9e0b7d6c5a4f1c2a9e0b7d6c5a4f1c2a9e0b7d6c5a4f1c2a9e0b7d6c5a";

    #[test]
    fn finds_container_ids_in_the_common_layouts() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id(&systemd).as_deref(), Some(ID));
        let cgroupfs = format!(
            "12:pids:/kubepods/burstable/pod0f7e-11aa-22bb/{ID}\n11:cpu:/kubepods/x/{ID}\n"
        );
        assert_eq!(container_id(&cgroupfs).as_deref(), Some(ID));
        let docker = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id(&docker).as_deref(), Some(ID));
        let containerd = format!("4:memory:/k8s.io/{ID}\n");
        assert_eq!(container_id(&containerd).as_deref(), Some(ID));
    }

    #[test]
    fn no_id_outside_containers() {
        assert_eq!(container_id("0::/\n"), None);
        assert_eq!(
            container_id("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
        // 63 hex digits, and 64 characters that are not all hex.
        assert_eq!(container_id(&format!("0::/k8s.io/{}\n", &ID[1..])), None);
        assert_eq!(container_id(&format!("0::/k8s.io/{}z\n", &ID[1..])), None);
        assert_eq!(container_id("garbage without colons"), None);
    }

    #[test]
    fn own_process_is_in_the_host_namespace() {
        let host = super::super::netns_inode(Path::new("/proc/self/ns/net")).ok();
        let found = discover(Path::new("/proc"), host);
        let me = std::process::id();
        assert!(
            found
                .iter()
                .all(|f| !f.pod.name.ends_with(&format!("[{me}]")))
        );
        assert!(found.iter().all(|f| Some(f.inode) != host));
    }
}
