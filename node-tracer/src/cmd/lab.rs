//! `node-tracer lab up|down`, and the lab that `run --lab` and `top --lab` start first: real
//! pods when containerd is here, plain namespaces otherwise. The lab itself is the
//! `node-tracer-lab` crate.

use std::time::Duration;

use anyhow::Context as _;
use node_tracer::{agent::AgentOptions, pods::docker};
use node_tracer_lab as lab;

use crate::cli::{LabAction, SourceArgs};

/// Whether this host has pods of its own, so `run --lab` and `top` need no lab: a veth whose
/// peer lives in another namespace, or a Docker Engine that runs containers (a host-network one
/// has no veth, and a Docker host's own containers are what its user came to see).
pub async fn host_has_pods(sources: &SourceArgs) -> bool {
    if lab::host_has_pods() {
        return true;
    }
    for socket in sources.docker_sockets.iter().filter(|s| s.exists()) {
        match docker::running(socket, Duration::from_secs(2)).await {
            Ok(n) if n > 0 => return true,
            Ok(_) => {}
            Err(e) => log::warn!(
                "Docker Engine at {}: {}",
                socket.display(),
                node_tracer_client::one_line(&e)
            ),
        }
    }
    false
}

pub fn lab(
    action: LabAction,
    name: String,
    bridge: String,
    docker_bridge: String,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 8 && name.chars().all(|c| c.is_ascii_alphanumeric()),
        "--name must be 1 to 8 letters or digits (it prefixes interface names)"
    );
    for b in [&bridge, &docker_bridge] {
        anyhow::ensure!(
            !b.is_empty() && b.len() <= 15 && !b.contains(['/', ' ']),
            "bridge name {b:?}: 1 to 15 characters, no '/' or spaces"
        );
    }
    let mut spec = lab::LabSpec {
        name,
        bridge,
        docker_bridge,
        ..lab::LabSpec::default()
    };
    match action {
        LabAction::Up { no_traffic } => {
            spec.traffic = !no_traffic;
            let state = lab::up(&spec).context("lab up")?;
            for p in &state.pods {
                println!(
                    "pod {:<12} veth {:<14} {:<12} {}",
                    p.netns,
                    p.veth,
                    p.ip,
                    if p.routed { "routed" } else { "bridged" }
                );
            }
        }
        LabAction::Down => lab::down(&spec).context("lab down")?,
    }
    Ok(())
}

/// The lab behind `run --lab`: real pods when containerd is here, plain namespaces otherwise.
pub enum RunningLab {
    Pods(Box<lab::pods::PodLab>),
    Netns(lab::LabSpec),
}

impl RunningLab {
    pub async fn stop(self) {
        log::info!("removing the lab");
        match self {
            RunningLab::Pods(l) => {
                if let Err(e) = l.stop().await {
                    log::warn!("lab teardown: {e}");
                }
            }
            RunningLab::Netns(spec) => {
                if let Err(e) = lab::down(&spec) {
                    log::warn!("lab teardown: {e}");
                }
            }
        }
    }
}

pub async fn start_lab(opts: &mut AgentOptions) -> anyhow::Result<RunningLab> {
    let have_containerd = std::process::Command::new("containerd")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have_containerd {
        log::info!("no pods on this host: starting a lab node with real pods (containerd + CNI)");
        match lab::pods::PodLab::start("lab").await {
            Ok(l) => {
                for p in &l.pods {
                    log::info!(
                        "lab pod {}/{} ({})",
                        p.namespace,
                        p.name,
                        if p.handler == "ptp" {
                            "routed"
                        } else {
                            "bridged"
                        }
                    );
                }
                if let Some(sock) = l.cri_socket() {
                    opts.node.pods.cri_sockets.insert(0, sock);
                }
                return Ok(RunningLab::Pods(Box::new(l)));
            }
            Err(e) => log::warn!("the pod lab did not start ({e}); using plain namespaces"),
        }
    } else {
        log::info!("containerd is not installed: the lab uses plain network namespaces");
    }
    let spec = lab::LabSpec::default();
    lab::up(&spec).context("lab up")?;
    Ok(RunningLab::Netns(spec))
}
