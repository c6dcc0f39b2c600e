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
    collections::{BTreeSet, HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

pub use error::TopologyError;
pub use watch::{LinkEvent, LinkWatcher, watch};

use dump::NsView;

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
/// veth's peer, once (see [`Scanner`] for repeated scans).
///
/// The host side costs one link dump, one address dump and one route dump per family; each peer
/// namespace is entered once, whatever number of veths point into it.
pub async fn scan(opts: &ScanOptions) -> Result<Topology, TopologyError> {
    Scanner::default().scan(opts).await
}

/// Scans again and again, entering only the peer namespaces that changed.
///
/// A full scan of a node with 1,000 pods enters 1,000 namespaces (about 0.2 s of CPU), and the
/// agent rescans after every burst of link events: per event, that is O(pods) work, and on a
/// busy node it competes with the attaches themselves (a tcx attach waits for an RCU grace
/// period, which stretches while the CPUs are busy). So what a namespace held is remembered, and
/// it is entered again only when the host's veths into it change.
#[derive(Debug)]
pub struct Scanner {
    known: HashMap<i32, Known>,
    /// See [`ADDRESS_GRACE`].
    address_grace: Duration,
    /// Namespaces whose view was not final at the last scan (see [`Scanner::settled`]).
    unsettled: usize,
    visits: u64,
}

/// A peer namespace as last visited.
#[derive(Debug)]
struct Known {
    file: netns::Candidate,
    /// The host veths (ifindexes) that pointed into it. Any change, a veth added, removed or a
    /// namespace gone with its veths and its nsid given to a new one, means a new visit. While
    /// a veth points into a namespace, that namespace lives, so its nsid and inode stay its own.
    veths: BTreeSet<u32>,
    view: NsView,
    /// Whether every peer had an address when visited.
    complete: bool,
    /// When these veths were first seen pointing here.
    since: Instant,
}

/// How long a namespace whose peer has no address is entered again at every scan. A runtime
/// adds the address right after the veth (within a second, or a few on a loaded node); a peer
/// that still has none after this is taken as it is (a pod without IP, an L2-only link), or a
/// node of such pods would be entered in full at every rescan.
const ADDRESS_GRACE: Duration = Duration::from_secs(20);

impl Default for Scanner {
    fn default() -> Self {
        Self::with_address_grace(ADDRESS_GRACE)
    }
}

impl Scanner {
    /// A scanner that enters a namespace whose peer has no address again for `grace` after it
    /// first saw it (default [`ADDRESS_GRACE`]).
    pub fn with_address_grace(grace: Duration) -> Self {
        Self {
            known: HashMap::new(),
            address_grace: grace,
            unsettled: 0,
            visits: 0,
        }
    }

    /// Forgets every namespace: the next scan enters all of them (after a netlink overrun,
    /// when events may have been lost).
    pub fn forget(&mut self) {
        self.known.clear();
    }

    /// Whether every peer namespace looked final at the last scan. A runtime creates the veth
    /// before it gives the pod its address, so a namespace visited in between is entered again
    /// at the next scan (for [`ADDRESS_GRACE`]), and the caller should scan again a little later.
    pub fn settled(&self) -> bool {
        self.unsettled == 0
    }

    /// Namespaces entered so far, over all scans.
    pub fn visits(&self) -> u64 {
        self.visits
    }

    /// Reads the host's veths and bridges (always in full: one dump each) and the peer
    /// namespaces that are new or changed since the last scan.
    pub async fn scan(&mut self, opts: &ScanOptions) -> Result<Topology, TopologyError> {
        let host_ns = netns::host_identity(&opts.proc_root)?;
        let host =
            dump::with_connection(
                |handle| async move { dump::read_namespace(&handle, true).await },
            )
            .await?;
        let mut veths_by_nsid: HashMap<i32, BTreeSet<u32>> = HashMap::new();
        for l in host.links.iter().filter(|l| l.kind == dump::Kind::Veth) {
            if let Some(nsid) = l.link_netnsid {
                veths_by_nsid.entry(nsid).or_default().insert(l.ifindex);
            }
        }
        // A `/proc/PID` path goes when its process exits (and may come back as another
        // process's): a remembered file must still open the same namespace.
        let now = Instant::now();
        let mut young: HashMap<i32, Instant> = HashMap::new();
        self.known.retain(|nsid, k| {
            let same = veths_by_nsid.get(nsid) == Some(&k.veths)
                && std::fs::metadata(&k.file.path).is_ok_and(|m| m.ino() == k.file.inode);
            if same && !k.complete && now.duration_since(k.since) < self.address_grace {
                young.insert(*nsid, k.since);
                return false;
            }
            same
        });
        let wanted: BTreeSet<i32> = veths_by_nsid
            .keys()
            .filter(|nsid| !self.known.contains_key(nsid))
            .copied()
            .collect();

        let (files, views) = if wanted.is_empty() {
            (HashMap::new(), HashMap::new())
        } else {
            // Namespaces still remembered need no nsid query: skip their files.
            let known_inodes: HashSet<u64> = self.known.values().map(|k| k.file.inode).collect();
            let owned = opts.clone();
            let files = dump::with_connection(|handle| async move {
                // Listing /proc is a few thousand stat calls: keep them off the async worker.
                let candidates = tokio::task::spawn_blocking(move || {
                    let mut c = netns::candidates(&owned, host_ns);
                    c.retain(|c| !known_inodes.contains(&c.inode));
                    c
                })
                .await
                .map_err(|source| TopologyError::Task {
                    what: "namespace listing",
                    source,
                })?;
                Ok(netns::resolve_nsids(&handle, candidates, &wanted).await)
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
            self.visits += visits.len() as u64;
            let views = if visits.is_empty() {
                HashMap::new()
            } else {
                tokio::task::spawn_blocking(move || netns::visit_all(&visits))
                    .await
                    .map_err(|source| TopologyError::Task {
                        what: "namespace visit",
                        source,
                    })?
            };
            (files, views)
        };

        // The remembered namespaces are lent to the assembly, not copied: a rescan of a node
        // with 1,000 pods would otherwise clone 1,000 views to change one.
        let topology = {
            let all_files = self
                .known
                .iter()
                .map(|(nsid, k)| (*nsid, &k.file))
                .chain(files.iter().map(|(nsid, c)| (*nsid, c)))
                .collect();
            let all_views = self
                .known
                .iter()
                .map(|(nsid, k)| (*nsid, &k.view))
                .chain(views.iter().map(|(nsid, v)| (*nsid, v)))
                .collect();
            assemble::build(
                &host,
                &assemble::PeerNamespaces {
                    host_inode: host_ns.inode,
                    files: all_files,
                    views: all_views,
                },
            )
        };

        // Remember what each newly entered namespace held, and whether its peers look final.
        self.unsettled = 0;
        let mut files = files;
        for (nsid, view) in views {
            let (Some(file), Some(veths)) = (files.remove(&nsid), veths_by_nsid.remove(&nsid))
            else {
                continue;
            };
            let complete = topology
                .ports
                .iter()
                .filter(|p| veths.contains(&p.ifindex))
                .all(|p| p.peer.as_ref().is_some_and(|x| !x.addresses.is_empty()));
            let since = young.get(&nsid).copied().unwrap_or(now);
            if !complete && now.duration_since(since) < self.address_grace {
                self.unsettled += 1;
            }
            self.known.insert(
                nsid,
                Known {
                    file,
                    veths,
                    view,
                    complete,
                    since,
                },
            );
        }
        Ok(topology)
    }
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
