//! Named network namespaces (`ip netns add NAME`, and the runtime's own `cni-…` mounts).
//!
//! A name is all there is: no pod namespace or uid. Still better than nothing for namespaces no
//! runtime knows (hand-made labs, other tools), and it gives the topology a path to open.

use std::path::Path;

use super::Found;
use crate::model::{Pod, PodSource};

/// Says once, at start, when pods created from now on will never show up in `dir`: the agent
/// runs in a mount namespace of its own (a container) and `dir` is a mount there that receives no
/// propagation from the host (a plain `docker run -v /run/netns:/run/netns`, or a host mount
/// that is private, which containerd and Docker refuse for `HostToContainer`/`rslave`).
pub fn warn_if_not_propagated(dir: &Path) {
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => {
            if let Some(w) = propagation_warning(dir, &text) {
                log::warn!("{w}");
            }
        }
        Err(e) => log::debug!("pods: /proc/self/mountinfo: {e}"),
    }
}

/// The warning, if `dir` is a mount point of its own whose optional fields carry neither
/// `shared:` nor `master:` (private: mounts made on the host after ours never appear in it).
/// A directory that is no mount point of its own (the agent on the host, beside the runtime)
/// sees new namespaces directly.
pub fn propagation_warning(dir: &Path, mountinfo: &str) -> Option<String> {
    let want = dir.to_str()?.trim_end_matches('/');
    // The last mount on that point is the one visible (mounts stack).
    let line = mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some(want))?;
    // Fields 7.. up to the separator "-" are the optional propagation tags.
    let tags: Vec<&str> = line
        .split_whitespace()
        .skip(6)
        .take_while(|f| *f != "-")
        .collect();
    let receives = tags
        .iter()
        .any(|t| t.starts_with("shared:") || t.starts_with("master:"));
    (!receives).then(|| {
        format!(
            "{want} is a private mount here: pod namespaces the runtime mounts after this start \
             will not appear in it, so pods created from now on are named only through CRI or \
             the CNI cache, if at all. Mount it with propagation from the host \
             (Kubernetes: `mountPropagation: HostToContainer`; docker: `-v {want}:{want}:rslave`), \
             and make the host's mount shared first where no systemd did \
             (`mount --bind {want} {want}; mount --make-shared {want}`; deploy/README.md)"
        )
    })
}

pub(super) fn discover(dir: &Path) -> Vec<Found> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            log::debug!("pods: no named namespaces at {}: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        match super::netns_inode(&path) {
            Ok(inode) => out.push(Found {
                inode,
                path,
                pod: Pod {
                    namespace: String::new(),
                    name,
                    uid: String::new(),
                    source: PodSource::Netns,
                    container: None,
                },
            }),
            // A leftover file whose mount is gone, or one deleted meanwhile.
            Err(e) => log::debug!("pods: {}: {e}", path.display()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_netns_mount_is_warned_about_and_a_slave_or_shared_one_is_not() {
        let dir = Path::new("/run/netns");
        let line = |tags: &str| {
            format!(
                "22 1 0:5 / / rw - overlay overlay rw\n\
                 1491 1486 0:26 /netns /run/netns ro,nosuid,nodev {tags} - tmpfs tmpfs rw\n"
            )
        };
        // docker run -v /run/netns:/run/netns (rprivate): no tag.
        let w = propagation_warning(dir, &line("")).expect("private is warned about");
        assert!(
            w.contains("HostToContainer") && w.contains(":rslave"),
            "{w}"
        );
        // mountPropagation: HostToContainer on a shared host mount: a slave of it.
        assert!(propagation_warning(dir, &line("master:316")).is_none());
        assert!(propagation_warning(dir, &line("shared:9 master:2")).is_none());
        assert!(propagation_warning(Path::new("/run/netns/"), &line("shared:9")).is_none());
        // Not a mount point of its own (the agent on the host): nothing to say.
        assert!(propagation_warning(dir, "22 1 0:5 / / rw - overlay overlay rw\n").is_none());
    }

    #[test]
    fn plain_files_are_not_namespaces() {
        let dir = std::env::temp_dir().join(format!("nt-netns-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("unmounted"), "").unwrap();
        let found = discover(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found.is_empty());
        assert!(discover(Path::new("/nonexistent/netns")).is_empty());
    }
}
