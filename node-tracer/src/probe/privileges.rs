//! The capability check: fail at start, naming the missing capability, instead of a cryptic
//! EPERM from bpf(2) or a silently unresolved peer.

use super::AttachMode;
use crate::error::{Error, MissingCapability, Result};

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// The rules are the kernel's (6.x), verified one capability at a time under `capsh`
/// (tests/tests/deploy.rs, deploy/README.md "Least privilege"):
/// - `setns` into a pod's network namespace (peer name, MAC, addresses) needs CAP_SYS_ADMIN, and
///   nothing else would do. CAP_SYS_ADMIN also satisfies every bpf(2) check we hit:
///   `bpf_capable()` (CAP_BPF), `perfmon_capable()` (CAP_PERFMON: the verifier rejects our map
///   pointer arithmetic without it) and `bpf_net_capable()` (CAP_NET_ADMIN: tc program load and
///   tcx attach). So CAP_BPF and CAP_PERFMON are never needed on top.
/// - netlink attach mode adds a clsact qdisc over rtnetlink, which checks CAP_NET_ADMIN itself.
/// - CAP_SYS_PTRACE only widens the /proc pod source (see [`capability_warnings`]).
pub(super) fn check_privileges(mode: AttachMode) -> Result<()> {
    let eff = effective_capabilities()?;
    let missing = missing_capabilities(eff, mode);
    if missing.is_empty() {
        for w in capability_warnings(eff) {
            log::warn!("{w}");
        }
        return Ok(());
    }
    Err(Error::MissingCapabilities(
        missing
            .into_iter()
            .map(|(name, needed_for)| MissingCapability { name, needed_for })
            .collect(),
    ))
}

fn effective_capabilities() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("read /proc/self/status", e))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0))
}

/// Capabilities `mode` cannot run without, given the effective set `eff`: (name, what for).
fn missing_capabilities(eff: u64, mode: AttachMode) -> Vec<(&'static str, &'static str)> {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        missing.push((
            "CAP_SYS_ADMIN",
            "setns into pod network namespaces, and bpf(2) without CAP_BPF and CAP_PERFMON",
        ));
    }
    if mode != AttachMode::Tcx && !has(CAP_NET_ADMIN) {
        missing.push((
            "CAP_NET_ADMIN",
            "netlink attach mode adds a clsact qdisc; tcx (kernel >= 6.6) does not need it",
        ));
    }
    missing
}

/// What works less well without an optional capability.
fn capability_warnings(eff: u64) -> Vec<&'static str> {
    let mut out = Vec::new();
    if eff & (1u64 << CAP_SYS_PTRACE) == 0 {
        // The kernel lets us open /proc/PID/ns/net only of processes of our uid whose
        // capabilities are a subset of ours; CRI and /run/netns need no such access.
        out.push(
            "no CAP_SYS_PTRACE: namespaces held only by processes of another user or with more \
             capabilities (docker without CRI, unshare) are not resolved from /proc",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_kernel_rules() {
        let bit = |b: u32| 1u64 << b;
        // CAP_BPF (39), CAP_PERFMON (38) and CAP_NET_ADMIN without CAP_SYS_ADMIN: no setns.
        let no_sys_admin = bit(39) | bit(38) | bit(CAP_NET_ADMIN);
        assert_eq!(
            missing_capabilities(no_sys_admin, AttachMode::Tcx)
                .iter()
                .map(|m| m.0)
                .collect::<Vec<_>>(),
            ["CAP_SYS_ADMIN"]
        );
        assert!(missing_capabilities(bit(CAP_SYS_ADMIN), AttachMode::Tcx).is_empty());
        assert_eq!(
            missing_capabilities(bit(CAP_SYS_ADMIN), AttachMode::Netlink)[0].0,
            "CAP_NET_ADMIN"
        );
        assert_eq!(missing_capabilities(0, AttachMode::Netlink).len(), 2);
        assert!(
            missing_capabilities(bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN), AttachMode::Netlink)
                .is_empty()
        );
        assert_eq!(capability_warnings(0).len(), 1);
        assert!(capability_warnings(bit(CAP_SYS_PTRACE)).is_empty());
    }
}
