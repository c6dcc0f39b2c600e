//! Undoing a runtime: pods first (through CRI, so CNI DEL releases veths and addresses), then
//! the daemon, then whatever a crash could have left (shims, runc containers, netns mounts,
//! the bridge, CNI state, cgroups), then the state dir and the host's shared state.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use sha2::{Digest as _, Sha256};

use node_tracer_cri::CriClient;

use super::{Created, RuntimeOptions, host, remove_pod_cgroups};
use crate::{cri, error::Error, process::terminate};

#[derive(Debug)]
pub(super) struct Teardown {
    pub opts: RuntimeOptions,
    pub child: Option<Child>,
    /// The containerd of a killed run (not our child): see [`leftover_daemon`].
    pub leftover: Option<libc::pid_t>,
    pub created: Vec<Created>,
    pub holds_host: bool,
}

impl Teardown {
    pub async fn run(mut self) -> Result<(), Error> {
        let mut first_err: Option<Error> = None;
        let mut note = |r: Result<(), Error>| {
            if let Err(e) = r {
                log::warn!("lab {}: teardown: {e}", self.opts.name);
                first_err.get_or_insert(e);
            }
        };
        let daemon_alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            || self.leftover.is_some_and(|pid| started_at(pid).is_some());
        if daemon_alive {
            note(remove_all_pods(&self.opts, &mut self.created).await);
        }
        if let Some(child) = self.child.take() {
            note(stop_child(child));
        }
        if let Some(pid) = self.leftover.take() {
            note(stop_leftover(pid));
        }
        self.sweep();
        note(remove_state_dir(&self.opts.state_dir));
        if self.holds_host {
            host::release();
        }
        first_err.map_or(Ok(()), Err)
    }

    /// What CRI should have removed, removed by hand in case it did not (daemon crashed, pod
    /// stuck). Each step is a no-op after a clean stop.
    fn sweep(&self) {
        let o = &self.opts;
        // Containers before shims: a live shim reaps its pause process; an orphaned one would
        // wait for PID 1 to reap it.
        let runc_root = o.state_dir.join("runc/k8s.io");
        if let Ok(containers) = std::fs::read_dir(&runc_root) {
            for c in containers.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force"])
                    .arg(c.file_name())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        kill_shims(&o.socket);
        for netns in self.created.iter().filter_map(|c| c.netns.as_ref()) {
            if netns.exists() {
                let _ = host::umount(netns, libc::MNT_DETACH);
                let _ = std::fs::remove_file(netns);
            }
        }
        if Path::new("/sys/class/net").join(&o.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &o.bridge])
                .stderr(Stdio::null())
                .status();
        }
        let cni = Path::new("/var/lib/cni");
        for id in self.created.iter().map(|c| &c.id) {
            // containerd sets up `lo` through CNI too, outside our networks.
            let _ = std::fs::remove_file(cni.join(format!("results/cni-loopback-{id}-lo")));
            // A shim killed above never removed its socket: containerd names it
            // sha256("<grpc address>/<namespace>/<id>") under the fixed /run/containerd/s.
            let hash = Sha256::digest(format!("{}/k8s.io/{id}", o.socket.display()));
            let _ = std::fs::remove_file(format!("/run/containerd/s/{hash:x}"));
        }
        for net in [o.bridge_network(), o.ptp_network()] {
            let _ = std::fs::remove_dir_all(cni.join("networks").join(&net));
            if let Ok(results) = std::fs::read_dir(cni.join("results")) {
                let prefix = format!("{net}-");
                for r in results.flatten() {
                    if r.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_file(r.path());
                    }
                }
            }
        }
        for c in &self.created {
            remove_pod_cgroups(&c.id, &c.uid);
        }
    }
}

/// Stops and removes every sandbox of this daemon (it is ours alone), ready or not; those not
/// in `created` (a killed owner's) are added, so the sweep after also covers them.
async fn remove_all_pods(opts: &RuntimeOptions, created: &mut Vec<Created>) -> Result<(), Error> {
    let cri = CriClient::connect(&opts.socket, opts.cri_timeout).await?;
    for sandbox in cri.list_all_pod_sandboxes().await? {
        if !created.iter().any(|c| c.id == sandbox.id) {
            created.push(Created {
                uid: sandbox.metadata.map(|m| m.uid).unwrap_or_default(),
                id: sandbox.id,
                netns: None,
            });
        }
    }
    let mut result = Ok(());
    for id in created.iter().map(|c| &c.id) {
        let r = async {
            cri::stop_pod_sandbox(&cri, id).await?;
            cri::remove_pod_sandbox(&cri, id).await
        };
        if let Err(e) = r.await {
            result = Err(e.into());
        }
    }
    result
}

/// SIGTERM, then SIGKILL after 10 s; only ever our own child, by its PID.
fn stop_child(mut child: Child) -> Result<(), Error> {
    let pid = libc::pid_t::try_from(child.id()).map_err(|e| Error::Options(format!("pid: {e}")))?;
    // Our own child, not reaped until `try_wait` says it exited: the PID stays ours.
    let gone = terminate(pid, Duration::from_secs(10), Duration::from_secs(5), || {
        !matches!(child.try_wait(), Ok(None))
    });
    if !gone {
        // Reaped here whatever it takes: a child left unreaped would stay a zombie.
        child
            .wait()
            .map_err(|e| Error::Io("wait containerd".into(), e))?;
    }
    Ok(())
}

/// The file in a runtime's state dir that names the process that started it.
const OWNER: &str = "owner";

/// Records this process (PID and start time, which a reused PID does not share) as the owner of
/// the runtime in `state_dir`.
pub(super) fn record_owner(state_dir: &Path) -> Result<(), Error> {
    let pid = std::process::id();
    let since = started_at(pid as libc::pid_t).unwrap_or(0);
    let path = state_dir.join(OWNER);
    std::fs::write(&path, format!("{pid} {since}\n"))
        .map_err(|e| Error::Io(path.display().to_string(), e))
}

/// The PID of the runtime's containerd when the process that started it no longer runs (killed
/// before it could tear the lab down); None while the owner runs, or when no containerd of this
/// state dir is found (then the socket belongs to someone else, who is left alone).
pub(super) fn leftover_daemon(opts: &RuntimeOptions) -> Option<libc::pid_t> {
    let owner_runs = std::fs::read_to_string(opts.state_dir.join(OWNER))
        .ok()
        .and_then(|text| {
            let (pid, since) = text.trim().split_once(' ')?;
            let (pid, since) = (pid.parse().ok()?, since.parse::<u64>().ok()?);
            Some(started_at(pid) == Some(since))
        })
        // No owner file: a runtime of a version that wrote none, whose owner cannot be told.
        .unwrap_or(false);
    if owner_runs {
        return None;
    }
    let config = opts.state_dir.join("config.toml");
    let config = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid = p.file_name().to_str()?.parse::<libc::pid_t>().ok()?;
        let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let ours = args.first().is_some_and(|a| a.ends_with(b"containerd"))
            && args
                .windows(2)
                .any(|w| w[0] == b"--config" && w[1] == config);
        ours.then_some(pid)
    })
}

/// When `pid` started (clock ticks since boot, `/proc/PID/stat` field 22); None when it does
/// not run (a zombie included: it has exited, only its parent has not reaped it).
fn started_at(pid: libc::pid_t) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// SIGTERM, then SIGKILL after 10 s, to the containerd of a killed run: not our child, so it is
/// watched by PID and start time (a reused PID is left alone).
fn stop_leftover(pid: libc::pid_t) -> Result<(), Error> {
    let Some(since) = started_at(pid) else {
        return Ok(());
    };
    // The PID was found to be this runtime's containerd; `gone` notices when it no longer is.
    if terminate(pid, Duration::from_secs(10), Duration::from_secs(5), || {
        started_at(pid) != Some(since)
    }) {
        return Ok(());
    }
    Err(Error::Command(
        format!("stopping the leftover containerd {pid}"),
        "it is still running after SIGKILL".into(),
    ))
}

/// Shims outlive the daemon by design. Ours are the ones started with `-address <our socket>`;
/// they are killed by PID, nothing else is touched.
fn kill_shims(socket: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let socket = socket.as_os_str().as_encoded_bytes();
    for p in procs.flatten() {
        let Some(pid) = p
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"-address" && w[1] == socket);
        if is_shim && ours {
            // SAFETY: kill has no memory-safety preconditions; the PID was just checked to be a
            // shim of our own daemon.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn remove_state_dir(dir: &PathBuf) -> Result<(), Error> {
    if !dir.exists() {
        return Ok(());
    }
    host::umount_below(dir);
    std::fs::remove_dir_all(dir).map_err(|e| Error::Io(dir.display().to_string(), e))
}
