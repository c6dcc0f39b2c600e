//! The container runtime's own view of its pods, over the kubelet's CRI API (`runtime.v1`).
//!
//! The messages are written by hand with the field numbers of k8s.io/cri-api's `api.proto`
//! (only the fields we read or set; prost skips the rest), so the build needs no protoc step.
//! The netns path is not a typed field of any CRI message: containerd only exposes it in the
//! verbose `info["info"]` JSON of `PodSandboxStatus`.

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{
    client::Grpc,
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};

use super::Found;
use crate::model::{Pod, PodSource};

pub mod api;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket is missing or nobody listens on it: "no runtime here", not a fault.
    #[error("connect to CRI socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {method}: no answer within {timeout:?}")]
    Timeout {
        method: &'static str,
        timeout: Duration,
    },
    #[error("CRI {method}: {status}")]
    Status {
        method: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("CRI {method}: channel not ready: {source}")]
    Transport {
        method: &'static str,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI sandbox {id}: bad verbose info: {reason}")]
    BadInfo { id: String, reason: String },
}

impl CriError {
    /// Nobody listens (stale socket) or we may not connect: the runtime is absent, which is
    /// normal on a node without it. Anything else is a runtime misbehaving.
    pub fn is_absent(&self) -> bool {
        let CriError::Connect { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::PermissionDenied
                );
            }
            cause = e.source();
        }
        false
    }
}

/// A minimal CRI `RuntimeService` client over a unix socket.
#[derive(Debug, Clone)]
pub struct CriClient {
    grpc: Grpc<Channel>,
    timeout: Duration,
}

impl CriClient {
    /// Connects to the runtime at `path`; every later call is bounded by `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, CriError> {
        let socket = path.to_path_buf();
        // The URI is a placeholder that tonic requires; the connector ignores it.
        let endpoint = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(timeout)
            .timeout(timeout);
        let connect = endpoint.connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }));
        let channel = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| CriError::Timeout {
                method: "connect",
                timeout,
            })?
            .map_err(|source| CriError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            grpc: Grpc::new(channel),
            timeout,
        })
    }

    async fn unary<Req, Resp>(&self, method: &'static str, req: Req) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let call = async {
            let mut grpc = self.grpc.clone();
            grpc.ready()
                .await
                .map_err(|source| CriError::Transport { method, source })?;
            let path =
                PathAndQuery::from_maybe_shared(format!("/runtime.v1.RuntimeService/{method}"))
                    .map_err(|e| CriError::Status {
                        method,
                        status: Box::new(tonic::Status::internal(e.to_string())),
                    })?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(tonic::Request::new(req), path, codec)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| CriError::Status {
                    method,
                    status: Box::new(status),
                })
        };
        bounded(method, self.timeout, call).await
    }

    pub async fn version(&self) -> Result<api::VersionResponse, CriError> {
        let req = api::VersionRequest {
            version: "v1".into(),
        };
        self.unary("Version", req).await
    }

    /// Ready sandboxes only: a stopped one has already lost its network namespace.
    pub async fn list_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>, CriError> {
        let req = api::ListPodSandboxRequest {
            filter: Some(api::PodSandboxFilter {
                state: Some(api::PodSandboxStateValue {
                    state: api::PodSandboxState::SandboxReady.into(),
                }),
                ..Default::default()
            }),
        };
        let resp: api::ListPodSandboxResponse = self.unary("ListPodSandbox", req).await?;
        Ok(resp.items)
    }

    /// Every sandbox, ready or not (teardown must remove the stopped ones too).
    pub async fn list_all_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>, CriError> {
        let req = api::ListPodSandboxRequest { filter: None };
        let resp: api::ListPodSandboxResponse = self.unary("ListPodSandbox", req).await?;
        Ok(resp.items)
    }

    /// Verbose status: the runtime's `info` map is where the netns path lives.
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> Result<api::PodSandboxStatusResponse, CriError> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        self.unary("PodSandboxStatus", req).await
    }

    /// Returns the new sandbox's id.
    pub async fn run_pod_sandbox(
        &self,
        config: api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, CriError> {
        let req = api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.into(),
        };
        let resp: api::RunPodSandboxResponse = self.unary("RunPodSandbox", req).await?;
        Ok(resp.pod_sandbox_id)
    }

    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let req = api::PodSandboxIdRequest {
            pod_sandbox_id: id.into(),
        };
        let _: api::Empty = self.unary("StopPodSandbox", req).await?;
        Ok(())
    }

    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let req = api::PodSandboxIdRequest {
            pod_sandbox_id: id.into(),
        };
        let _: api::Empty = self.unary("RemovePodSandbox", req).await?;
        Ok(())
    }
}

async fn bounded<T>(
    method: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, CriError>>,
) -> Result<T, CriError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| CriError::Timeout { method, timeout })?
}

/// What the verbose sandbox info tells about the sandbox's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxInfo {
    /// `.runtimeSpec.linux.namespaces[type=network].path`
    pub netns_path: Option<PathBuf>,
    /// `.pid` of the pause process.
    pub pid: Option<u32>,
}

/// Parses containerd's `info["info"]` JSON string.
pub fn parse_sandbox_info(json: &str) -> Result<SandboxInfo, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let netns_path = v
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .find(|ns| ns.get("type").and_then(serde_json::Value::as_str) == Some("network"))
        .and_then(|ns| ns.get("path"))
        .and_then(serde_json::Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let pid = v
        .get("pid")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0);
    Ok(SandboxInfo { netns_path, pid })
}

/// Every ready sandbox of every runtime socket that answers.
pub(super) async fn discover(sockets: &[PathBuf], timeout: Duration) -> Vec<Found> {
    let mut out = Vec::new();
    for socket in sockets {
        if !socket.exists() {
            log::debug!("pods: no CRI socket at {}", socket.display());
            continue;
        }
        match from_socket(socket, timeout).await {
            Ok(found) => out.extend(found),
            Err(e) if e.is_absent() => log::debug!("pods: {e}"),
            Err(e) => log::warn!("pods: CRI at {} skipped: {e}", socket.display()),
        }
    }
    out
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
                    },
                }));
            }
            Err(e) => log::debug!("pods: sandbox {id}: {}: {e}", path.display()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[tokio::test]
    async fn a_socket_nobody_listens_on_means_absent() {
        let path = std::env::temp_dir().join(format!("nt-cri-stale-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = CriClient::connect(&path, Duration::from_secs(1))
            .await
            .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.is_absent(), "{err:?}");
        let missing = CriClient::connect(Path::new("/nonexistent.sock"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(missing.is_absent(), "{missing:?}");
    }

    #[test]
    fn parses_containerd_verbose_info() {
        let json = r#"{"pid":4242,"processStatus":"running","netNamespaceClosed":false,
            "runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},
            {"type":"network","path":"/var/run/netns/cni-1a2b"}]}}}"#;
        let info = parse_sandbox_info(json).unwrap();
        assert_eq!(
            info.netns_path,
            Some(PathBuf::from("/var/run/netns/cni-1a2b"))
        );
        assert_eq!(info.pid, Some(4242));
    }

    #[test]
    fn host_network_sandbox_has_only_a_pid() {
        let json = r#"{"pid":7,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"}]}}}"#;
        let info = parse_sandbox_info(json).unwrap();
        assert_eq!(info.netns_path, None);
        assert_eq!(info.pid, Some(7));
    }

    #[test]
    fn malformed_info_is_an_error_or_empty_never_a_panic() {
        assert!(parse_sandbox_info("{not json").is_err());
        assert!(parse_sandbox_info("[1,2]").is_err());
        let odd = r#"{"pid":-3,"runtimeSpec":{"linux":{"namespaces":"network"}}}"#;
        assert_eq!(parse_sandbox_info(odd).unwrap(), SandboxInfo::default());
    }

    #[test]
    fn metadata_uses_the_cri_field_numbers() {
        // name=1, uid=2, namespace=3, attempt=4: a wrong tag would reorder these bytes.
        let meta = api::PodSandboxMetadata {
            name: "a".into(),
            uid: "b".into(),
            namespace: "c".into(),
            attempt: 1,
        };
        assert_eq!(
            meta.encode_to_vec(),
            [0x0a, 1, b'a', 0x12, 1, b'b', 0x1a, 1, b'c', 0x20, 1]
        );
        let req = api::RunPodSandboxRequest {
            config: None,
            runtime_handler: "ptp".into(),
        };
        assert_eq!(req.encode_to_vec(), [0x12, 3, b'p', b't', b'p']);
    }
}
