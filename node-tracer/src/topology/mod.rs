//! The host's veths, bridges and the peers behind them, read over netlink (rtnetlink), never by
//! parsing `ip` output.
//!
//! A veth's `IFLA_LINK` is the peer's ifindex *inside the peer's namespace*: `veth591ea0bf@if3`
//! points at the pod's eth0-like link 3, not at the host's `docker0` that happens to be ifindex 3.
//! So a peer is resolved by (nsid, ifindex): the nsid is mapped to a namespace file, the
//! namespace is entered on a short-lived thread, and the peer is read there.
//!
//! [`scan`] reads the whole picture once; [`watch`] follows veth churn so the caller knows when
//! to scan again; [`fdb`] reads the bridges' forwarding databases, which change far more often.

mod assemble;
mod dump;
mod error;
pub mod fdb;
mod format;
mod netns;
mod watch;

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
};

pub use error::TopologyError;
pub use watch::{LinkEvent, LinkWatcher, watch};

use crate::model::{Bridge, Port};

/// The host namespace's veths and bridges at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// One per veth of the host namespace, sorted by ifindex. `counters`, `macs`, `pod` and
    /// `attached` are left default: other modules fill them.
    pub ports: Vec<Port>,
    /// Every bridge, with or without ports, sorted by ifindex.
    pub bridges: Vec<Bridge>,
}

/// Where to look for the namespaces that hold veth peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOptions {
    /// Namespace files outside the usual places, or directories of them (a runtime's own bind
    /// mounts, such as `/var/run/docker/netns`).
    pub extra_netns_paths: Vec<PathBuf>,
    /// `/proc`, or where the host's proc is mounted when running in a container.
    pub proc_root: PathBuf,
    /// `/run/netns`: where `ip netns` and CNI runtimes bind-mount named namespaces.
    pub netns_dir: PathBuf,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            extra_netns_paths: Vec::new(),
            proc_root: PathBuf::from("/proc"),
            netns_dir: PathBuf::from("/run/netns"),
        }
    }
}

/// Reads every veth and bridge of the calling process's network namespace and resolves each
/// veth's peer.
///
/// The host side costs one link dump, one address dump and one route dump per family; each peer
/// namespace is entered once, whatever number of veths point into it.
pub async fn scan(opts: &ScanOptions) -> Result<Topology, TopologyError> {
    let host_ns = netns::host_identity(&opts.proc_root)?;
    let (host, files) = dump::with_connection(|handle| async move {
        let view = dump::read_namespace(&handle, true).await?;
        let wanted: BTreeSet<i32> = view
            .links
            .iter()
            .filter(|l| l.kind == dump::Kind::Veth)
            .filter_map(|l| l.link_netnsid)
            .collect();
        if wanted.is_empty() {
            return Ok((view, HashMap::new()));
        }
        // Listing /proc is a few thousand stat calls: keep them off the async worker.
        let owned = opts.clone();
        let candidates = tokio::task::spawn_blocking(move || netns::candidates(&owned, host_ns))
            .await
            .map_err(|e| TopologyError::Visit(e.to_string()))?;
        let files = netns::resolve_nsids(&handle, candidates, &wanted).await;
        Ok((view, files))
    })
    .await?;

    let visits: Vec<netns::Visit> = files
        .iter()
        .map(|(nsid, c)| netns::Visit {
            nsid: *nsid,
            path: c.path.clone(),
            inode: c.inode,
        })
        .collect();
    let views = if visits.is_empty() {
        HashMap::new()
    } else {
        tokio::task::spawn_blocking(move || netns::visit_all(&visits))
            .await
            .map_err(|e| TopologyError::Visit(e.to_string()))?
    };
    Ok(assemble::build(
        &host,
        &assemble::PeerNamespaces {
            host_inode: host_ns.inode,
            files: &files,
            views: &views,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent runs both from spawned tasks, which need `Send`.
    #[test]
    fn scan_future_and_watcher_are_send() {
        fn send<T: Send>(_: &T) {}
        fn send_type<T: Send>() {}
        let opts = ScanOptions::default();
        send(&scan(&opts));
        send_type::<LinkWatcher>();
        send_type::<TopologyError>();
    }

    #[test]
    fn default_options_look_where_runtimes_put_namespaces() {
        let opts = ScanOptions::default();
        assert_eq!(opts.proc_root, PathBuf::from("/proc"));
        assert_eq!(opts.netns_dir, PathBuf::from("/run/netns"));
        assert!(opts.extra_netns_paths.is_empty());
    }
}
