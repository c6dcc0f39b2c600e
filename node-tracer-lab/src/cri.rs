//! The CRI calls only the lab makes, as a kubelet makes them: creating, stopping and removing
//! pod sandboxes. The messages follow k8s.io/cri-api's `api.proto` field numbers (only the
//! fields we set; see `node_tracer_cri::api` for the ones the agent reads), and the calls go
//! through the shared client's generic [`CriClient::unary`].

use std::collections::HashMap;

use node_tracer_cri::{CriClient, CriError, api::PodSandboxMetadata};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum NamespaceMode {
    Pod = 0,
    Container = 1,
    Node = 2,
    Target = 3,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceOption {
    #[prost(enumeration = "NamespaceMode", tag = "1")]
    pub network: i32,
    #[prost(enumeration = "NamespaceMode", tag = "2")]
    pub pid: i32,
    #[prost(enumeration = "NamespaceMode", tag = "3")]
    pub ipc: i32,
    #[prost(string, tag = "4")]
    pub target_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
    #[prost(bool, tag = "4")]
    pub readonly_rootfs: bool,
    #[prost(bool, tag = "6")]
    pub privileged: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
    #[prost(map = "string, string", tag = "3")]
    pub sysctls: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
    #[prost(string, tag = "2")]
    pub runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// Stop and Remove requests carry only the sandbox id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxIdRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// `StopPodSandboxResponse` and `RemovePodSandboxResponse` are empty.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// Returns the new sandbox's id.
pub async fn run_pod_sandbox(
    cri: &CriClient,
    config: PodSandboxConfig,
    runtime_handler: &str,
) -> Result<String, CriError> {
    let req = RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: runtime_handler.into(),
    };
    let resp: RunPodSandboxResponse = cri.unary("RunPodSandbox", req).await?;
    Ok(resp.pod_sandbox_id)
}

pub async fn stop_pod_sandbox(cri: &CriClient, id: &str) -> Result<(), CriError> {
    let req = PodSandboxIdRequest {
        pod_sandbox_id: id.into(),
    };
    let _: Empty = cri.unary("StopPodSandbox", req).await?;
    Ok(())
}

pub async fn remove_pod_sandbox(cri: &CriClient, id: &str) -> Result<(), CriError> {
    let req = PodSandboxIdRequest {
        pod_sandbox_id: id.into(),
    };
    let _: Empty = cri.unary("RemovePodSandbox", req).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn run_request_uses_the_cri_field_numbers() {
        // config=1, runtime_handler=2: a wrong tag would change the first byte.
        let req = RunPodSandboxRequest {
            config: None,
            runtime_handler: "ptp".into(),
        };
        assert_eq!(req.encode_to_vec(), [0x12, 3, b'p', b't', b'p']);
    }
}
