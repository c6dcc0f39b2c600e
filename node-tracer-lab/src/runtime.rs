//! A real pod runtime for the lab and the tests: its own containerd (1.6, CRI plugin, runc,
//! CNI), started as a child process, driven over CRI exactly as a kubelet drives it.
//!
//! Two runtime handlers share one daemon: `runc` puts pods on a Linux bridge (CNI `bridge`, like
//! flannel's `cni0`), `ptp` routes to them with no bridge (CNI `ptp`, like GKE: every host veth
//! carries the same gateway /32). Everything a runtime owns — state dir, socket, bridge, subnets,
//! CNI network names — comes from [`RuntimeOptions`], so several run side by side. Pod traffic
//! cannot leave the machine: no masquerade and no default route in the pods.

mod config;
pub mod container;
mod host;
mod image;
mod options;
mod teardown;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

pub use crate::subnet::Subnet;
pub use image::PAUSE_IMAGE;
pub use options::RuntimeOptions;
use teardown::Teardown;

use node_tracer_cri::{CriClient, CriError, netns_inode, parse_sandbox_info};

use crate::{
    cri,
    error::{Error, io},
};

/// Parent of every runtime's state dir and of the pause image cache.
pub const LAB_ROOT: &str = "/run/node-tracer-lab";

/// The file in a state dir that holds [`host::recorded`]: how the host was before this
/// process's runtimes, for whoever removes them should the process be killed.
const HOST_BEFORE: &str = "host-before";

/// A pod sandbox the runtime started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodHandle {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `runc` (bridge) or `ptp` (routed).
    pub handler: String,
    /// The pod's network namespace as the runtime reports it (`/var/run/netns/cni-…`).
    pub netns: PathBuf,
    pub netns_inode: u64,
    /// The pause process.
    pub pid: Option<u32>,
}

/// What teardown needs to know about a sandbox, recorded before anything can fail.
#[derive(Debug, Clone, Default)]
struct Created {
    id: String,
    uid: String,
    netns: Option<PathBuf>,
}

/// A running containerd with the CRI plugin; stop it with [`Runtime::stop`] (dropping it cleans
/// up too, blocking).
#[derive(Debug)]
pub struct Runtime {
    opts: RuntimeOptions,
    child: Option<Child>,
    client: Option<CriClient>,
    created: Mutex<Vec<Created>>,
    /// `host::acquire` was called and `host::release` is still owed.
    holds_host: bool,
}

impl Runtime {
    pub async fn start(opts: RuntimeOptions) -> Result<Runtime, Error> {
        // Same name as a lab that is still up: starting would pull its state dir from under it.
        // Unless the process that started it is gone (SIGKILL, OOM): then its containerd and
        // pods are a leftover nobody else will remove, and we do.
        if opts.socket.exists()
            && let Ok(c) = CriClient::connect(&opts.socket, Duration::from_secs(2)).await
            && c.version().await.is_ok()
        {
            let Some(daemon) = teardown::leftover_daemon(&opts) else {
                return Err(Error::AlreadyRunning(opts.socket.clone()));
            };
            log::warn!(
                "lab {}: the process that started it is gone; removing its containerd \
                 (PID {daemon}) and pods first",
                opts.name
            );
            let host_before = std::fs::read_to_string(opts.state_dir.join(HOST_BEFORE)).ok();
            Teardown {
                opts: opts.clone(),
                child: None,
                leftover: Some(daemon),
                created: Vec::new(),
                holds_host: false,
            }
            .run()
            .await?;
            // What the killed process changed on the host is put back when this one stops.
            if let Some(text) = host_before {
                host::adopt(&text);
            }
        }
        opts.validate()?;
        host::acquire();
        // From here on, an error drops `rt`, whose Drop undoes what was done so far.
        let mut rt = Runtime {
            opts,
            child: None,
            client: None,
            created: Mutex::new(Vec::new()),
            holds_host: true,
        };
        let o = &rt.opts;
        if o.state_dir.exists() {
            // A leftover of a killed run under the same name: its mounts would block removal.
            host::umount_below(&o.state_dir);
            std::fs::remove_dir_all(&o.state_dir).map_err(io(o.state_dir.display()))?;
        }
        let d = |sub: &str| o.state_dir.join(sub);
        for dir in [
            "root",
            "state",
            "opt",
            "runc",
            "cni/bridge",
            "cni/ptp",
            "pods",
        ] {
            std::fs::create_dir_all(d(dir)).map_err(io(d(dir).display()))?;
        }
        // Before the daemon exists: a daemon without a live owner is always a leftover.
        teardown::record_owner(&o.state_dir)?;
        let write =
            |path: PathBuf, text: String| std::fs::write(&path, text).map_err(io(path.display()));
        if let Some(text) = host::recorded() {
            write(d(HOST_BEFORE), text)?;
        }
        write(
            d("cni/bridge/10-bridge.conflist"),
            config::bridge_conflist(&o.bridge_network(), &o.bridge, o.bridge_subnet),
        )?;
        write(
            d("cni/ptp/10-ptp.conflist"),
            config::ptp_conflist(&o.ptp_network(), o.ptp_subnet),
        )?;
        let toml = config::containerd_toml(
            &config::ContainerdPaths {
                root: &d("root"),
                state: &d("state"),
                socket: &o.socket,
                opt: &d("opt"),
                runc_root: &d("runc"),
                cni_bin_dir: &o.cni_bin_dir,
                bridge_conf_dir: &d("cni/bridge"),
                ptp_conf_dir: &d("cni/ptp"),
            },
            PAUSE_IMAGE,
        );
        write(d("config.toml"), toml)?;
        let log = std::fs::File::create(d("containerd.log")).map_err(io("containerd.log"))?;
        let log2 = log.try_clone().map_err(io("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d("config.toml"))
            // A process group of its own: a terminal's Ctrl-C reaches our process, which then
            // removes the pods over CRI (CNI DEL included) before it stops containerd. In our
            // group containerd would die at once and leave the pods to the sweep.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io("spawn containerd"))?;
        rt.child = Some(child);
        rt.client = Some(rt.wait_ready().await?);

        let (socket, cache) = (rt.opts.socket.clone(), rt.opts.cache_dir.clone());
        tokio::task::spawn_blocking(move || image::ensure_imported(&socket, &cache))
            .await
            .map_err(|e| Error::Command("import pause image".into(), e.to_string()))??;
        Ok(rt)
    }

    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.opts.state_dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn wait_ready(&mut self) -> Result<CriClient, Error> {
        let start = Instant::now();
        let mut last = String::from("socket never appeared");
        while start.elapsed() < self.opts.start_timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(Error::Start {
                    reason: format!("containerd exited: {status}"),
                    log: self.log_tail(),
                });
            }
            if self.opts.socket.exists() {
                let answer = async {
                    let c = CriClient::connect(&self.opts.socket, Duration::from_secs(2)).await?;
                    c.version().await?;
                    Ok::<_, CriError>(())
                };
                match answer.await {
                    // The short-timeout probe said yes: now the client for real work.
                    Ok(()) => {
                        return Ok(
                            CriClient::connect(&self.opts.socket, self.opts.cri_timeout).await?
                        );
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Start {
            reason: format!("no CRI answer after {:?}: {last}", self.opts.start_timeout),
            log: self.log_tail(),
        })
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.opts
    }

    /// PID of the containerd child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn socket(&self) -> &Path {
        &self.opts.socket
    }

    /// The CRI client the runtime uses (for callers that want to ask it more).
    pub fn client(&self) -> Option<&CriClient> {
        self.client.as_ref()
    }

    fn cri(&self) -> Result<&CriClient, Error> {
        self.client
            .as_ref()
            .ok_or_else(|| Error::Options("runtime is stopped".into()))
    }

    /// Starts a pod sandbox as the kubelet would, with runtime handler `runc` (bridge) or `ptp`
    /// (routed).
    pub async fn run_pod(
        &self,
        name: &str,
        namespace: &str,
        uid: &str,
        handler: &str,
    ) -> Result<PodHandle, Error> {
        if handler != "runc" && handler != "ptp" {
            return Err(Error::Handler(handler.to_owned()));
        }
        if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::Options(format!("uid {uid:?}: use [A-Za-z0-9-]")));
        }
        let logs = self
            .opts
            .state_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&logs).map_err(io(logs.display()))?;
        let labels = [
            ("io.kubernetes.pod.name", name),
            ("io.kubernetes.pod.namespace", namespace),
            ("io.kubernetes.pod.uid", uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = cri::PodSandboxConfig {
            metadata: Some(node_tracer_cri::api::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.to_string_lossy().into_owned(),
            labels,
            linux: Some(cri::LinuxPodSandboxConfig {
                // Where the kubelet's cgroupfs driver puts a best-effort pod.
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod.into(),
                        pid: cri::NamespaceMode::Container.into(),
                        ipc: cri::NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cri = self.cri()?;
        let id = cri::run_pod_sandbox(cri, config, handler).await?;
        self.lock_created().push(Created {
            id: id.clone(),
            uid: uid.into(),
            netns: None,
        });
        let status = cri.pod_sandbox_status(&id).await?;
        let info = status
            .info
            .get("info")
            .map(|i| parse_sandbox_info(i))
            .transpose()
            .map_err(|reason| CriError::BadInfo {
                id: id.clone(),
                reason,
            })?
            .unwrap_or_default();
        let netns = info.netns_path.ok_or_else(|| Error::NoNetns(id.clone()))?;
        if let Some(c) = self.lock_created().iter_mut().find(|c| c.id == id) {
            c.netns = Some(netns.clone());
        }
        let netns_inode = netns_inode(&netns).map_err(io(netns.display()))?;
        Ok(PodHandle {
            id,
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            handler: handler.into(),
            netns,
            netns_inode,
            pid: info.pid,
        })
    }

    /// Stops and removes a pod (CNI DEL runs inside `StopPodSandbox`).
    pub async fn remove_pod(&self, pod: &PodHandle) -> Result<(), Error> {
        let cri = self.cri()?;
        cri::stop_pod_sandbox(cri, &pod.id).await?;
        cri::remove_pod_sandbox(cri, &pod.id).await?;
        self.lock_created().retain(|c| c.id != pod.id);
        remove_pod_cgroups(&pod.id, &pod.uid);
        Ok(())
    }

    /// Removes every pod, stops containerd and puts the host back as it was.
    pub async fn stop(mut self) -> Result<(), Error> {
        let teardown = self.take_teardown();
        teardown.run().await
    }

    fn lock_created(&self) -> std::sync::MutexGuard<'_, Vec<Created>> {
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_teardown(&mut self) -> Teardown {
        let holds_host = std::mem::replace(&mut self.holds_host, false);
        self.client = None;
        Teardown {
            opts: self.opts.clone(),
            child: self.child.take(),
            leftover: None,
            created: std::mem::take(&mut *self.lock_created()),
            holds_host,
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.holds_host {
            return;
        }
        let teardown = self.take_teardown();
        // Teardown talks CRI, which is async; Drop may run inside (and block) a tokio runtime,
        // so it gets a runtime of its own on a thread of its own.
        let joined =
            std::thread::spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(teardown.run()),
                    Err(e) => Err(Error::Io("tokio runtime for teardown".into(), e)),
                }
            })
            .join();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("lab: teardown on drop: {e}"),
            Err(_) => log::warn!("lab: teardown on drop panicked"),
        }
    }
}

fn remove_pod_cgroups(id: &str, uid: &str) {
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            host::remove_empty_tree(&h.path().join(format!("kubepods/besteffort/pod{uid}")));
            host::remove_empty_tree(&h.path().join("k8s.io").join(id));
        }
    }
}
