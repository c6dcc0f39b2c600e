//! Fast-start mode's second half: moving ports from netlink to tcx in the background, one at a
//! time, the slow attach made without holding the probe.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
};

use super::{Hooks, Probe, bpf};
use crate::error::{Error, Result};

/// A port to move from netlink to tcx: [`Upgrade::attach`] (slow, no lock needed), then
/// [`Probe::finish_upgrade`].
pub struct Upgrade {
    pub ifindex: u32,
    pub name: String,
    pub(super) programs: Arc<(OwnedFd, OwnedFd)>,
}

/// The tcx links an upgrade made: (ingress, egress).
pub type TcxLinks = (OwnedFd, OwnedFd);

impl Upgrade {
    /// Attaches the tcx programs first in the chain of both hooks: the slow part (two RCU grace
    /// periods), done without the probe. The netlink programs stay until `finish_upgrade`.
    pub fn attach(&self) -> Result<TcxLinks> {
        let ingress = bpf::tcx_link(self.programs.0.as_fd(), self.ifindex, bpf::BPF_TCX_INGRESS)
            .map_err(|e| self.error("ingress", e))?;
        let egress = bpf::tcx_link(self.programs.1.as_fd(), self.ifindex, bpf::BPF_TCX_EGRESS)
            .map_err(|e| self.error("egress", e))?;
        Ok((ingress, egress))
    }

    fn error(&self, direction: &'static str, e: std::io::Error) -> Error {
        Error::io(
            format!("moving {} {direction} from netlink to tcx", self.name),
            e,
        )
    }
}

impl Probe {
    /// Fast-start mode: the next port due to move from netlink to tcx, if any.
    pub fn next_upgrade(&self) -> Option<Upgrade> {
        let programs = self.tcx_programs.as_ref()?;
        let (ifindex, a) = self.attached.iter().find(|(i, a)| {
            matches!(a.hooks, Hooks::Netlink { .. })
                && a.since.elapsed() >= self.tcx_after
                && !self.no_upgrade.contains(i)
        })?;
        Some(Upgrade {
            ifindex: *ifindex,
            name: a.name.clone(),
            programs: programs.clone(),
        })
    }

    /// Completes an upgrade: with the tcx programs in place, removes the netlink ones. Until
    /// then both ran and the netlink ones stepped aside (`tcx_seen`), so no packet was counted
    /// twice or missed. On failure the port stays on netlink for good.
    pub fn finish_upgrade(&mut self, up: &Upgrade, links: Result<TcxLinks>) {
        let links = match links {
            Ok(l) => l,
            Err(e) => {
                log::warn!(
                    "{}; {} stays attached with netlink",
                    node_tracer_client::one_line(&e),
                    up.name
                );
                self.no_upgrade.insert(up.ifindex);
                return;
            }
        };
        // Detached (veth gone) while we attached: dropping the links undoes the attach.
        let Some(a) = self.attached.get_mut(&up.ifindex) else {
            return;
        };
        if !matches!(a.hooks, Hooks::Netlink { .. }) {
            return;
        }
        let old = std::mem::replace(
            &mut a.hooks,
            Hooks::Links {
                _ingress: links.0,
                _egress: links.1,
            },
        );
        let name = a.name.clone();
        self.detach_hooks(&name, old);
        self.publish();
    }
}
