//! The Docker Engine's own view of its containers, over its API on a unix socket
//! (`GET /containers/json`, then `GET /containers/{id}/json` for each running one, a few at a
//! time).
//!
//! A container's network namespace is `NetworkSettings.SandboxKey` (a bind mount under Docker's
//! exec root, `/var/run/docker/netns/…`, also tried as `/run/…`), or else its process's
//! (`/proc/<State.Pid>/ns/net`), which is also how an agent in a container that cannot see the
//! host's exec root finds it.
//!
//! A container that joined another's namespace (`--network container:X`: the pod pattern of
//! dockershim / cri-dockerd, where every app container joins the `k8s_POD_…` sandbox) is not
//! offered at all: the namespace is its owner's, and the owner is listed too. Host-network
//! containers are not behind any veth and are skipped here (the index would refuse them anyway).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt as _;
use node_tracer_client::{Agent, ClientError, Credentials, one_line};
use serde::Deserialize;

use super::Found;
use crate::model::{Container, Pod, PodSource};

/// Inspects asked at once: the engine answers each on its own, so a host with hundreds of
/// containers costs a few round trips' time per batch instead of one per container.
const IN_FLIGHT: usize = 8;

/// Where Docker Engine listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The labels dockershim and cri-dockerd put on a pod's sandbox container.
const K8S_NAME: &str = "io.kubernetes.pod.name";
const K8S_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const K8S_UID: &str = "io.kubernetes.pod.uid";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what}: not the Engine API's JSON")]
    BadJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl DockerError {
    /// The socket vanished between the check and the connect: no engine here, not a fault.
    fn is_absent(&self) -> bool {
        matches!(self, DockerError::Client(ClientError::Connect { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// A call that ran out of time: the engine hangs, and every later call would too.
    fn is_timeout(&self) -> bool {
        matches!(self, DockerError::Client(ClientError::Timeout { .. }))
    }
}

/// One entry of `GET /containers/json` (running containers only, the default).
#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
}

/// What `GET /containers/{id}/json` says that we use.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Inspect {
    id: String,
    name: String,
    config: Config,
    state: State,
    host_config: HostConfig,
    network_settings: NetworkSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Config {
    image: String,
    /// `null` for a container created without labels.
    labels: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct State {
    running: bool,
    pid: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfig {
    network_mode: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NetworkSettings {
    sandbox_key: String,
}

/// Why an inspected container names no namespace of its own.
#[derive(Debug, PartialEq, Eq)]
enum Skip {
    /// `--network container:<id>`: the owner names the namespace.
    Shares(String),
    Host,
    NotRunning,
}

impl Inspect {
    /// The container's identity and the paths that may open its namespace, best first.
    fn resolve(self, proc_root: &Path) -> Result<(Pod, Vec<PathBuf>), Skip> {
        if let Some(owner) = self.host_config.network_mode.strip_prefix("container:") {
            return Err(Skip::Shares(owner.to_owned()));
        }
        if self.host_config.network_mode == "host" {
            return Err(Skip::Host);
        }
        if !self.state.running {
            return Err(Skip::NotRunning);
        }
        let mut paths = Vec::new();
        let key = &self.network_settings.sandbox_key;
        if !key.is_empty() {
            paths.push(PathBuf::from(key));
            // The engine says /var/run, a symlink to /run on the host; an agent in a container
            // has the host's /run mounted at /run (deploy/daemonset.yaml) but no such symlink.
            if let Some(rest) = key.strip_prefix("/var/run/") {
                paths.push(Path::new("/run").join(rest));
            }
        }
        if self.state.pid > 0 {
            paths.push(proc_root.join(self.state.pid.to_string()).join("ns/net"));
        }
        let name = self.name.trim_start_matches('/').to_owned();
        let labels = self.config.labels.unwrap_or_default();
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        // A sandbox of dockershim / cri-dockerd: the Kubernetes pod, as the kubelet named it.
        let (namespace, pod_name, uid) = match (label(K8S_NAMESPACE), label(K8S_NAME)) {
            (Some(ns), Some(n)) => (ns, n, label(K8S_UID).unwrap_or_default()),
            // A plain Docker container: its own name, as `docker ps` shows it.
            _ => (String::new(), name.clone(), String::new()),
        };
        let pod = Pod {
            namespace,
            name: pod_name,
            uid,
            source: PodSource::Docker,
            container: Some(Container {
                runtime: "docker".into(),
                id: self.id,
                name,
                image: self.config.image,
            }),
        };
        Ok((pod, paths))
    }
}

/// Every running container of every engine socket that answers, and the sockets that answered.
pub(super) async fn discover(
    sockets: &[PathBuf],
    proc_root: &Path,
    timeout: Duration,
) -> (Vec<Found>, Vec<PathBuf>) {
    let mut out = Vec::new();
    let mut answered = Vec::new();
    for socket in sockets {
        if !socket.exists() {
            log::debug!("pods: no Docker Engine socket at {}", socket.display());
            continue;
        }
        match from_socket(socket, proc_root, timeout, &mut out).await {
            Ok(()) => answered.push(socket.clone()),
            Err(e) if e.is_absent() => log::debug!("pods: Docker Engine: {}", one_line(&e)),
            Err(e) => {
                crate::failures::count("pods_docker");
                log::warn!(
                    "pods: Docker Engine at {} skipped: {}",
                    socket.display(),
                    one_line(&e)
                );
            }
        }
    }
    (out, answered)
}

/// How many containers the engine at `socket` runs (`docker ps | wc -l`).
pub async fn running(socket: &Path, timeout: Duration) -> Result<usize, DockerError> {
    let engine = engine(socket, timeout)?;
    let listed: Vec<Listed> = get_json(&engine, "/containers/json").await?;
    Ok(listed.len())
}

fn engine(socket: &Path, timeout: Duration) -> Result<Agent, DockerError> {
    // `unix:` URLs take an absolute path; a relative --docker-socket means the working dir's.
    let socket = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    let mut engine = Agent::new(
        &format!("unix:{}", socket.display()),
        &Credentials::default(),
    )?;
    engine.timeout = timeout;
    Ok(engine)
}

async fn from_socket(
    socket: &Path,
    proc_root: &Path,
    timeout: Duration,
    out: &mut Vec<Found>,
) -> Result<(), DockerError> {
    let engine = engine(socket, timeout)?;
    let listed: Vec<Listed> = get_json(&engine, "/containers/json").await?;
    log::debug!(
        "pods: Docker Engine at {}: {} running containers",
        socket.display(),
        listed.len()
    );
    let engine = &engine;
    let mut inspected = futures::stream::iter(listed)
        .map(|c| async move {
            let inspect = get_json::<Inspect>(engine, &format!("/containers/{}/json", c.id)).await;
            (c, inspect)
        })
        .buffered(IN_FLIGHT);
    while let Some((c, inspect)) = inspected.next().await {
        let inspect = match inspect {
            Ok(i) => i,
            // An engine that stopped answering would cost a timeout per container.
            Err(e) if e.is_timeout() => return Err(e),
            // One container going away between the list and now must not cost the others.
            Err(e) => {
                log::warn!("pods: Docker container {}: {}", short(&c.id), one_line(&e));
                continue;
            }
        };
        let shown = format!(
            "{} ({})",
            inspect.name.trim_start_matches('/'),
            short(&c.id)
        );
        match inspect.resolve(proc_root) {
            Ok((pod, paths)) => match first_namespace(paths) {
                Some((inode, path)) => out.push(Found { inode, path, pod }),
                None => log::warn!("pods: Docker container {shown}: its network namespace is gone"),
            },
            Err(Skip::Shares(owner)) => {
                log::debug!("pods: Docker container {shown} uses {owner}'s namespace");
            }
            Err(Skip::Host) => log::debug!("pods: Docker container {shown} is on the host network"),
            Err(Skip::NotRunning) => {
                log::warn!("pods: Docker container {shown} stopped while being read");
            }
        }
    }
    Ok(())
}

async fn get_json<T: serde::de::DeserializeOwned>(
    engine: &Agent,
    path: &str,
) -> Result<T, DockerError> {
    let body = engine.get(path).await?;
    serde_json::from_slice(&body).map_err(|source| DockerError::BadJson {
        what: engine.url(path),
        source,
    })
}

/// The first path that opens a network namespace, with its inode.
fn first_namespace(paths: Vec<PathBuf>) -> Option<(u64, PathBuf)> {
    paths
        .into_iter()
        .find_map(|path| match super::netns_inode(&path) {
            Ok(inode) => Some((inode, path)),
            Err(e) => {
                log::debug!("pods: {}: {e}", path.display());
                None
            }
        })
}

/// A container id as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(json: &str) -> Inspect {
        serde_json::from_str(json).unwrap()
    }

    const PLAIN: &str = r#"{"Id":"3956c459e21361850e91b4b254af","Name":"/shop-web",
        "Config":{"Image":"nttbox:1","Labels":{}},"State":{"Running":true,"Pid":15698},
        "HostConfig":{"NetworkMode":"default"},
        "NetworkSettings":{"SandboxKey":"/var/run/docker/netns/3c3bd084a6c4","Networks":{}}}"#;

    #[test]
    fn a_plain_container_is_named_as_docker_ps_names_it() {
        let (pod, paths) = inspect(PLAIN).resolve(Path::new("/host/proc")).unwrap();
        assert_eq!(pod.qualified_name(), "shop-web");
        assert_eq!((pod.namespace.as_str(), pod.uid.as_str()), ("", ""));
        assert_eq!(pod.source, PodSource::Docker);
        let c = pod.container.unwrap();
        assert_eq!(
            (c.runtime.as_str(), c.name.as_str(), c.image.as_str()),
            ("docker", "shop-web", "nttbox:1")
        );
        assert_eq!(c.id, "3956c459e21361850e91b4b254af");
        assert_eq!(
            paths,
            [
                PathBuf::from("/var/run/docker/netns/3c3bd084a6c4"),
                PathBuf::from("/run/docker/netns/3c3bd084a6c4"),
                PathBuf::from("/host/proc/15698/ns/net")
            ]
        );
    }

    #[test]
    fn a_cri_dockerd_sandbox_names_the_kubernetes_pod() {
        let json = r#"{"Id":"aa","Name":"/k8s_POD_busybox_default_u-1_0",
            "Config":{"Image":"pause:3.9","Labels":{"io.kubernetes.pod.name":"busybox",
            "io.kubernetes.pod.namespace":"default","io.kubernetes.pod.uid":"u-1",
            "io.kubernetes.docker.type":"podsandbox"}},"State":{"Running":true,"Pid":7},
            "HostConfig":{"NetworkMode":"default"},"NetworkSettings":{"SandboxKey":""}}"#;
        let (pod, paths) = inspect(json).resolve(Path::new("/proc")).unwrap();
        assert_eq!(pod.qualified_name(), "default/busybox");
        assert_eq!(pod.uid, "u-1");
        assert_eq!(pod.container.unwrap().name, "k8s_POD_busybox_default_u-1_0");
        // No SandboxKey: the process leads to the namespace.
        assert_eq!(paths, [PathBuf::from("/proc/7/ns/net")]);
    }

    #[test]
    fn a_container_in_anothers_namespace_leaves_it_to_the_owner() {
        let json = r#"{"Id":"bb","Name":"/side","Config":{"Image":"x","Labels":null},
            "State":{"Running":true,"Pid":9},
            "HostConfig":{"NetworkMode":"container:3956c459e213"},
            "NetworkSettings":{"SandboxKey":""}}"#;
        assert_eq!(
            inspect(json).resolve(Path::new("/proc")).unwrap_err(),
            Skip::Shares("3956c459e213".into())
        );
    }

    #[test]
    fn host_network_and_stopped_containers_name_nothing() {
        let host = PLAIN.replace(r#""NetworkMode":"default""#, r#""NetworkMode":"host""#);
        assert_eq!(
            inspect(&host).resolve(Path::new("/proc")).unwrap_err(),
            Skip::Host
        );
        let stopped = PLAIN.replace(
            r#""Running":true,"Pid":15698"#,
            r#""Running":false,"Pid":0"#,
        );
        assert_eq!(
            inspect(&stopped).resolve(Path::new("/proc")).unwrap_err(),
            Skip::NotRunning
        );
    }

    #[test]
    fn odd_answers_parse_or_fail_never_panic() {
        // Missing sections default; a wrong type is an error the caller turns into a warning.
        let bare = inspect(r#"{"Id":"cc"}"#);
        assert_eq!(
            bare.resolve(Path::new("/proc")).unwrap_err(),
            Skip::NotRunning
        );
        assert!(serde_json::from_str::<Inspect>(r#"{"State":{"Pid":"x"}}"#).is_err());
        assert!(serde_json::from_str::<Vec<Listed>>(r#"{"message":"page not found"}"#).is_err());
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("ab"), "ab");
    }

    #[tokio::test]
    async fn an_absent_socket_is_quiet_and_a_dead_one_is_not_a_hang() {
        let dir = std::env::temp_dir().join(format!("nt-docker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let (found, answered) = discover(
            &[dir.join("absent.sock"), stale],
            Path::new("/proc"),
            Duration::from_secs(1),
        )
        .await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found.is_empty());
        assert!(answered.is_empty(), "{answered:?}");
    }
}
