//! The container runtime's own view of its pods, over the kubelet's CRI API: every ready
//! sandbox of every runtime socket that answers, with the network namespace its verbose status
//! names. The client and the messages are in `node-tracer-cri`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use node_tracer_cri::{CriClient, CriError, parse_sandbox_info};

use super::Found;
use crate::model::{Pod, PodSource};

/// Every ready sandbox of every runtime socket that answers, and the sockets that answered.
pub(super) async fn discover(sockets: &[PathBuf], timeout: Duration) -> (Vec<Found>, Vec<PathBuf>) {
    let mut out = Vec::new();
    let mut answered = Vec::new();
    for socket in sockets {
        if !socket.exists() {
            log::debug!("pods: no CRI socket at {}", socket.display());
            continue;
        }
        match from_socket(socket, timeout).await {
            Ok(found) => {
                out.extend(found);
                answered.push(socket.clone());
            }
            Err(e) if e.is_absent() => log::debug!("pods: {e}"),
            Err(e) => {
                crate::failures::count("pods_cri");
                log::warn!("pods: CRI at {} skipped: {e}", socket.display());
            }
        }
    }
    (out, answered)
}

async fn from_socket(socket: &Path, timeout: Duration) -> Result<Vec<Found>, CriError> {
    let client = CriClient::connect(socket, timeout).await?;
    // Version first: a socket that is not a CRI runtime fails here, once, not per pod.
    let version = client.version().await?;
    log::debug!(
        "pods: CRI {} {} at {}",
        version.runtime_name,
        version.runtime_version,
        socket.display()
    );
    let mut out = Vec::new();
    for sandbox in client.list_pod_sandboxes().await? {
        match sandbox_found(&client, &sandbox.id).await {
            Ok(Some(found)) => out.push(found),
            Ok(None) => {}
            // A runtime that stopped answering would cost a timeout per sandbox: give up on it.
            Err(e @ CriError::Timeout { .. }) => {
                log::warn!(
                    "pods: CRI at {}: {e}; skipping its other sandboxes",
                    socket.display()
                );
                break;
            }
            // One sandbox going away mid-scan must not cost the others.
            Err(e) => log::warn!("pods: {e}"),
        }
    }
    Ok(out)
}

async fn sandbox_found(client: &CriClient, id: &str) -> Result<Option<Found>, CriError> {
    let resp = client.pod_sandbox_status(id).await?;
    let Some(meta) = resp.status.and_then(|s| s.metadata) else {
        return Ok(None);
    };
    let Some(info) = resp.info.get("info") else {
        log::debug!("pods: sandbox {id}: runtime gave no verbose info");
        return Ok(None);
    };
    let info = parse_sandbox_info(info).map_err(|reason| CriError::BadInfo {
        id: id.into(),
        reason,
    })?;
    // Host-network pods have no network entry; the pause process still leads to the
    // namespace (the host's, which the index then ignores).
    let candidates = info
        .netns_path
        .into_iter()
        .chain(info.pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))));
    for path in candidates {
        match super::netns_inode(&path) {
            Ok(inode) => {
                return Ok(Some(Found {
                    inode,
                    path,
                    pod: Pod {
                        namespace: meta.namespace,
                        name: meta.name,
                        uid: meta.uid,
                        source: PodSource::Cri,
                        container: None,
                    },
                }));
            }
            Err(e) => log::debug!("pods: sandbox {id}: {}: {e}", path.display()),
        }
    }
    Ok(None)
}
