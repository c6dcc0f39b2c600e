//! Containers in a sandbox, as the kubelet runs them: a host-network pod sandbox (a DaemonSet
//! with `hostNetwork: true`), `CreateContainer` with the pod spec translated to CRI, start,
//! `ExecSync` (what `kubectl exec` does without a terminal), stop with a grace period. Message
//! field numbers are k8s.io/cri-api's `api.proto`, only the fields we set or read.

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use node_tracer_cri::api::PodSandboxMetadata;

use super::Runtime;
use crate::{
    cri::{self, NamespaceMode},
    error::{Error, io},
    process::run,
};

pub use cri::PodSandboxConfig;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    #[prost(string, tag = "1")]
    pub image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `MountPropagation`: private, `HostToContainer` (rslave), `Bidirectional` (rshared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Propagation {
    Private = 0,
    HostToContainer = 1,
    Bidirectional = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub container_path: String,
    #[prost(string, tag = "2")]
    pub host_path: String,
    #[prost(bool, tag = "3")]
    pub readonly: bool,
    #[prost(enumeration = "Propagation", tag = "5")]
    pub propagation: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resources {
    #[prost(int64, tag = "1")]
    pub cpu_period: i64,
    #[prost(int64, tag = "2")]
    pub cpu_quota: i64,
    #[prost(int64, tag = "3")]
    pub cpu_shares: i64,
    #[prost(int64, tag = "4")]
    pub memory_limit_in_bytes: i64,
    #[prost(int64, tag = "5")]
    pub oom_score_adj: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Capability {
    #[prost(string, repeated, tag = "1")]
    pub add_capabilities: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub drop_capabilities: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Int64Value {
    #[prost(int64, tag = "1")]
    pub value: i64,
}

/// `SecurityProfile.ProfileType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ProfileType {
    RuntimeDefault = 0,
    Unconfined = 1,
    Localhost = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SecurityProfile {
    #[prost(enumeration = "ProfileType", tag = "1")]
    pub profile_type: i32,
    #[prost(string, tag = "2")]
    pub localhost_ref: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SecurityContext {
    #[prost(message, optional, tag = "1")]
    pub capabilities: Option<Capability>,
    #[prost(bool, tag = "2")]
    pub privileged: bool,
    #[prost(message, optional, tag = "5")]
    pub run_as_user: Option<Int64Value>,
    #[prost(bool, tag = "7")]
    pub readonly_rootfs: bool,
    #[prost(bool, tag = "11")]
    pub no_new_privs: bool,
    #[prost(string, repeated, tag = "13")]
    pub masked_paths: Vec<String>,
    #[prost(string, repeated, tag = "14")]
    pub readonly_paths: Vec<String>,
    #[prost(message, optional, tag = "15")]
    pub seccomp: Option<SecurityProfile>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub resources: Option<Resources>,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<SecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub args: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub envs: Vec<KeyValue>,
    #[prost(message, repeated, tag = "7")]
    pub mounts: Vec<Mount>,
    #[prost(map = "string, string", tag = "9")]
    pub labels: HashMap<String, String>,
    #[prost(string, tag = "11")]
    pub log_path: String,
    #[prost(message, optional, tag = "15")]
    pub linux: Option<LinuxContainerConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    config: Option<ContainerConfig>,
    #[prost(message, optional, tag = "3")]
    sandbox_config: Option<PodSandboxConfig>,
}

/// Create's response, and the request of Start and Remove: a container id alone.
#[derive(Clone, PartialEq, prost::Message)]
struct ContainerId {
    #[prost(string, tag = "1")]
    container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StopContainerRequest {
    #[prost(string, tag = "1")]
    container_id: String,
    #[prost(int64, tag = "2")]
    timeout: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExecSyncRequest {
    #[prost(string, tag = "1")]
    container_id: String,
    #[prost(string, repeated, tag = "2")]
    cmd: Vec<String>,
    #[prost(int64, tag = "3")]
    timeout: i64,
}

/// What a command run in a container answered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecSyncResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub stdout: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub stderr: Vec<u8>,
    #[prost(int32, tag = "3")]
    pub exit_code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerStatusRequest {
    #[prost(string, tag = "1")]
    container_id: String,
    #[prost(bool, tag = "2")]
    verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerStatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<ContainerStatus>,
    /// Verbose only: containerd's `info` JSON (with the init process's host `pid`).
    #[prost(map = "string, string", tag = "2")]
    info: HashMap<String, String>,
}

/// `ContainerStatus`: its state (0 created, 1 running, 2 exited, 3 unknown) and exit code.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(int32, tag = "7")]
    pub exit_code: i32,
    #[prost(string, tag = "10")]
    pub reason: String,
    #[prost(string, tag = "11")]
    pub message: String,
}

/// `ContainerState::CONTAINER_EXITED`.
pub const EXITED: i32 = 2;

/// A host-network pod sandbox and the config it was made with (CreateContainer wants it back).
#[derive(Debug, Clone)]
pub struct HostPod {
    pub id: String,
    pub config: PodSandboxConfig,
}

impl Runtime {
    /// A sandbox in the host's network namespace (`hostNetwork: true`): no CNI, no netns of its
    /// own, the host's UTS namespace; PID namespace of its own (`hostPID: false`).
    pub async fn run_host_pod(
        &self,
        name: &str,
        namespace: &str,
        uid: &str,
    ) -> Result<HostPod, Error> {
        let logs = self
            .opts
            .state_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&logs).map_err(io(logs.display()))?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            // The host's UTS namespace comes with its network: the kubelet sets no hostname.
            hostname: String::new(),
            log_directory: logs.to_string_lossy().into_owned(),
            labels: [
                ("io.kubernetes.pod.name", name),
                ("io.kubernetes.pod.namespace", namespace),
                ("io.kubernetes.pod.uid", uid),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: NamespaceMode::Node.into(),
                        pid: NamespaceMode::Container.into(),
                        ipc: NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = cri::run_pod_sandbox(self.cri()?, config.clone(), "runc").await?;
        self.lock_created().push(super::Created {
            id: id.clone(),
            uid: uid.into(),
            netns: None,
        });
        Ok(HostPod { id, config })
    }

    /// Imports an OCI image-layout (or `docker save`) tar, as `ctr images import` does.
    pub fn import_image(&self, tar: &Path) -> Result<(), Error> {
        run(Command::new("ctr")
            .arg("-a")
            .arg(&self.opts.socket)
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--platform",
                "linux/amd64",
            ])
            .arg(tar))?;
        Ok(())
    }

    /// Creates and starts a container in `pod`; returns its id.
    pub async fn start_container(
        &self,
        pod: &HostPod,
        config: ContainerConfig,
    ) -> Result<String, Error> {
        let cri = self.cri()?;
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let created: ContainerId = cri.unary("CreateContainer", req).await?;
        let _: cri::Empty = cri.unary("StartContainer", created.clone()).await?;
        Ok(created.container_id)
    }

    /// SIGTERM, then SIGKILL after `grace` (the pod's `terminationGracePeriodSeconds`).
    /// containerd answers when the container has exited.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), Error> {
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout: grace.as_secs() as i64,
        };
        let _: cri::Empty = self.cri()?.unary("StopContainer", req).await?;
        Ok(())
    }

    /// The container's state, and the host PID of its process while it runs.
    pub async fn container_status(
        &self,
        id: &str,
    ) -> Result<(ContainerStatus, Option<u32>), Error> {
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let resp: ContainerStatusResponse = self.cri()?.unary("ContainerStatus", req).await?;
        let pid = resp
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| v["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        Ok((resp.status.unwrap_or_default(), pid))
    }

    /// Runs `cmd` in the container and waits for it (`timeout` bounds it in the runtime).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecSyncResponse, Error> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        Ok(self.cri()?.unary("ExecSync", req).await?)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn mount_propagation_uses_the_cri_field_number() {
        let m = Mount {
            container_path: "/c".into(),
            host_path: String::new(),
            readonly: true,
            propagation: Propagation::HostToContainer.into(),
        };
        // container_path=1, readonly=3, propagation=5.
        assert_eq!(m.encode_to_vec(), [0x0a, 2, b'/', b'c', 0x18, 1, 0x28, 1]);
    }

    #[test]
    fn runtime_default_seccomp_is_sent_even_though_it_is_all_defaults() {
        let sc = SecurityContext {
            seccomp: Some(SecurityProfile::default()),
            ..Default::default()
        };
        // seccomp=15: an empty message, present (RuntimeDefault is 0).
        assert_eq!(sc.encode_to_vec(), [0x7a, 0]);
    }
}
