//! Named network namespaces (`ip netns add NAME`, and the runtime's own `cni-…` mounts).
//!
//! A name is all there is: no pod namespace or uid. Still better than nothing for namespaces no
//! runtime knows (hand-made labs, other tools), and it gives the topology a path to open.

use std::path::Path;

use super::Found;
use crate::model::{Pod, PodSource};

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
