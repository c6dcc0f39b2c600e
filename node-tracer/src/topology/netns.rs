//! Finding and entering the namespaces that hold veth peers.
//!
//! The host knows a peer only as (ifindex, nsid); every pod's eth0 is ifindex 2 in its own
//! namespace, so the nsid is the real key. The kernel has no "open namespace by nsid" call: we
//! list every namespace file we can reach (`/run/netns/*`, extra paths, `/proc/PID/ns/net`), ask
//! the kernel which nsid each one has from the host's point of view (`RTM_GETNSID` with
//! `NETNSA_FD`), and enter only the ones that hold peers.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use futures::StreamExt as _;
use log::debug;
use netlink_packet_route::{
    RouteNetlinkMessage,
    nsid::{NsidAttribute, NsidMessage},
};
use rtnetlink::Handle;
use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};

use super::{
    ScanOptions, TopologyError,
    dump::{self, NsView},
};

/// How many `RTM_GETNSID` requests are in flight at once: enough to hide the round trips, few
/// enough to keep the open file descriptors bounded.
const NSID_QUERIES_IN_FLIGHT: usize = 64;
/// Threads entering peer namespaces in parallel; the work is syscalls, not CPU.
const VISIT_THREADS: usize = 4;

/// Identity of a namespace file: every nsfs file has the same device, and the inode names the
/// namespace (`net:[INODE]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NsId {
    pub dev: u64,
    pub inode: u64,
}

/// A file that opens a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub path: PathBuf,
    pub inode: u64,
}

/// The calling thread's own namespace, which is never a peer namespace to look up.
///
/// The thread's, not the process's: netlink sockets live in the namespace of the thread that
/// opens them, and a caller may have entered another one (`setns` is per thread). A host `/proc`
/// mounted elsewhere may belong to another PID namespace where `thread-self` does not exist;
/// our own `/proc/thread-self` always names the namespace our sockets live in.
pub(crate) fn host_identity(proc_root: &Path) -> Result<NsId, TopologyError> {
    let path = proc_root.join("thread-self/ns/net");
    let meta = std::fs::metadata(&path)
        .or_else(|_| std::fs::metadata("/proc/thread-self/ns/net"))
        .map_err(|source| TopologyError::Io { path, source })?;
    Ok(NsId {
        dev: meta.dev(),
        inode: meta.ino(),
    })
}

/// Every reachable namespace file other than the host's, one per namespace, named paths first
/// (`/run/netns/NAME` outlives any process and is what `ip netns` users know), then the extra
/// paths, then `/proc/PID/ns/net` for namespaces held only by a process.
pub(crate) fn candidates(opts: &ScanOptions, host: NsId) -> Vec<Candidate> {
    let mut paths = sorted_entries(&opts.netns_dir);
    for extra in &opts.extra_netns_paths {
        // A directory of bind mounts (`/var/run/docker/netns`) is as good as its files.
        if extra.is_dir() {
            paths.extend(sorted_entries(extra));
        } else {
            paths.push(extra.clone());
        }
    }
    let mut pids: Vec<u32> = std::fs::read_dir(&opts.proc_root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    paths.extend(
        pids.iter()
            .map(|pid| opts.proc_root.join(format!("{pid}/ns/net"))),
    );

    let mut seen = HashSet::from([host.inode]);
    let mut out = Vec::new();
    for path in paths {
        // Processes exit and namespaces are deleted while we list them: skip what is gone.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        // A file left in /run/netns after its namespace died is a plain tmpfs file.
        if meta.dev() != host.dev || !seen.insert(meta.ino()) {
            continue;
        }
        out.push(Candidate {
            path,
            inode: meta.ino(),
        });
    }
    out
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    entries.sort();
    entries
}

/// Maps each nsid in `wanted` to a candidate, asking the kernel for every candidate's nsid.
/// Namespaces without an nsid (`NETNSA_NSID_NOT_ASSIGNED`) hold no peer of ours and drop out.
pub(crate) async fn resolve_nsids(
    handle: &Handle,
    candidates: Vec<Candidate>,
    wanted: &BTreeSet<i32>,
) -> HashMap<i32, Candidate> {
    let mut answers = futures::stream::iter(candidates)
        .map(|c| {
            let handle = handle.clone();
            async move { (query_nsid(handle, &c.path).await, c) }
        })
        .buffer_unordered(NSID_QUERIES_IN_FLIGHT);
    let mut found = HashMap::new();
    while let Some((nsid, candidate)) = answers.next().await {
        // No early exit once every nsid is found: answers to abandoned requests would each log
        // a warning in netlink-proto, and the remaining queries cost little.
        if let Some(nsid) = nsid.filter(|id| wanted.contains(id)) {
            found.insert(nsid, candidate);
        }
    }
    found
}

async fn query_nsid(mut handle: Handle, path: &Path) -> Option<i32> {
    let file = File::open(path)
        .inspect_err(|e| debug!("open {}: {e}", path.display()))
        .ok()?;
    let mut msg = NsidMessage::default();
    // The kernel reads the fd while handling the request, so `file` stays open until the
    // answer is in.
    msg.attributes = vec![NsidAttribute::Fd(file.as_raw_fd() as u32)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut responses = handle
        .request(req)
        .inspect_err(|e| debug!("RTM_GETNSID {}: {e}", path.display()))
        .ok()?;
    let mut nsid = None;
    while let Some(resp) = responses.next().await {
        match resp.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                nsid = m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                });
            }
            NetlinkPayload::Error(e) => debug!("RTM_GETNSID {}: {e}", path.display()),
            _ => {}
        }
    }
    drop(file);
    nsid
}

/// One peer namespace to enter.
#[derive(Debug, Clone)]
pub(crate) struct Visit {
    pub nsid: i32,
    pub path: PathBuf,
    pub inode: u64,
}

/// Enters each namespace once and dumps its links and addresses, on threads of its own.
///
/// `setns` changes only the calling thread, and a thread that has entered a pod's namespace must
/// never run anything else: these threads are created here and exit here, never a tokio worker
/// or a blocking-pool thread. Namespaces that cannot be read are logged and left out.
pub(crate) fn visit_all(visits: &[Visit]) -> HashMap<i32, NsView> {
    if visits.is_empty() {
        return HashMap::new();
    }
    let per_thread = visits.len().div_ceil(VISIT_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = visits
            .chunks(per_thread)
            .filter_map(|chunk| {
                std::thread::Builder::new()
                    .name("netns-visit".into())
                    .spawn_scoped(scope, move || visit_chunk(chunk))
                    .inspect_err(|e| debug!("spawn a namespace visit thread: {e}"))
                    .ok()
            })
            .collect();
        let mut views = HashMap::new();
        for worker in workers {
            match worker.join() {
                Ok(found) => views.extend(found),
                Err(_) => debug!("a namespace visit thread panicked"),
            }
        }
        views
    })
}

fn visit_chunk(chunk: &[Visit]) -> Vec<(i32, NsView)> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            debug!("namespace visit runtime: {e}");
            return Vec::new();
        }
    };
    chunk
        .iter()
        .filter_map(|visit| match enter_and_read(&rt, visit) {
            Ok(view) => Some((visit.nsid, view)),
            Err(e) => {
                debug!(
                    "peer namespace nsid {} ({}): {}",
                    visit.nsid,
                    visit.path.display(),
                    node_tracer_client::one_line(&e)
                );
                None
            }
        })
        .collect()
}

fn enter_and_read(rt: &tokio::runtime::Runtime, visit: &Visit) -> Result<NsView, TopologyError> {
    let io_err = |source| TopologyError::Io {
        path: visit.path.clone(),
        source,
    };
    let file = File::open(&visit.path).map_err(io_err)?;
    // A /proc/PID path may now belong to a new process in another namespace.
    if file.metadata().map_err(io_err)?.ino() != visit.inode {
        return Err(io_err(std::io::Error::other(
            "the path now opens another namespace",
        )));
    }
    // SAFETY: `file` is an open namespace fd for the whole call; setns only affects this
    // thread, which was spawned for namespace visits and exits after them.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io_err(std::io::Error::last_os_error()));
    }
    // The socket is created after setns, so it talks to the peer's namespace.
    rt.block_on(dump::with_connection(|handle| async move {
        dump::read_namespace(&handle, false).await
    }))
}
