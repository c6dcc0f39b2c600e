//! A container runtime's pod sandboxes, over the kubelet's CRI API (`runtime.v1`): the client
//! (a channel over the runtime's unix socket and one generic unary call), the read calls the
//! agent's pod source makes, and what a sandbox's status says about its network namespace.
//!
//! A crate of its own because two crates talk CRI and neither may depend on the other: the agent
//! (`node-tracer`, which reads sandboxes to label veths) and the lab (`node-tracer-lab`, which
//! also creates and removes them, with write calls and messages of its own built on
//! [`CriClient::unary`]). The agent's binary runs the lab (`run --lab`), so the lab cannot depend
//! on the agent's package.
//!
//! The messages are written by hand with the field numbers of k8s.io/cri-api's `api.proto`
//! (only the fields we read or set; prost skips the rest), so the build needs no protoc step.
//! The netns path is not a typed field of any CRI message: containerd only exposes it in the
//! verbose `info["info"]` JSON of `PodSandboxStatus`.

use std::{
    ffi::CString,
    future::Future,
    io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{
    client::Grpc,
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};

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

    /// Calls `runtime.v1.RuntimeService/{method}`, bounded by the client's timeout. Public so
    /// the lab adds the write calls it alone makes without this crate knowing them.
    pub async fn unary<Req, Resp>(&self, method: &'static str, req: Req) -> Result<Resp, CriError>
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

/// `nsfs`'s `f_type` (linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Inode of the network namespace that `path` opens: what a sandbox's netns path (or any other
/// namespace path) is compared by.
///
/// Checks that `path` really is a namespace (on nsfs): a file in `/run/netns` whose bind mount
/// went away is a plain tmpfs file, and its inode would silently match nothing (or worse,
/// something else).
pub fn netns_inode(path: &Path) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statfs only writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    if i64::from(st.f_type) != NSFS_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a namespace (not on nsfs)", path.display()),
        ));
    }
    Ok(meta.ino())
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
    }

    #[test]
    fn own_namespace_has_an_nsfs_inode_and_a_plain_file_does_not() {
        let ino = netns_inode(Path::new("/proc/self/ns/net")).unwrap();
        assert!(ino > 0);
        assert!(netns_inode(Path::new("/proc/self/status")).is_err());
        assert!(netns_inode(Path::new("/nonexistent/ns")).is_err());
    }
}
