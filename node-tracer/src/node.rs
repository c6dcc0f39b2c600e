//! The node as node-tracer sees it: our programs attached to its veths, following veth churn
//! from netlink events, with topology and pods kept current. `run`, `trace` and a standalone
//! `top` each start one.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, sync::Notify, task::JoinHandle};

use crate::{
    error::{Error, Result},
    metrics::Health,
    model::{Port, Snapshot},
    pods::{self, PodConfig, PodIndex},
    probe::{Probe, ProbeOptions},
    snapshot,
    topology::{self, LinkEvent, ScanOptions, Topology},
};

/// What to attach to and where to look for pods.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Attach only to these interfaces (any kind); empty: every veth, following churn.
    pub interfaces: Vec<String>,
    pub probe: ProbeOptions,
    pub pods: PodConfig,
    pub scan: ScanOptions,
}

/// Shared state: the probe (maps and attachments) and the latest topology and pods.
pub struct State {
    pub probe: Probe,
    pub topology: Topology,
    pub pods: PodIndex,
    pub health: Health,
    /// Interfaces the user named with --interface (empty: all veths).
    pub only: HashSet<String>,
}

impl State {
    /// Reads the maps and joins everything into a snapshot.
    pub fn snapshot(&mut self) -> Snapshot {
        let readings = match self.probe.read() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("reading counters: {e}");
                std::collections::HashMap::default()
            }
        };
        let probe = &self.probe;
        let mut snap = snapshot::build(&self.topology, &self.pods, &readings, |i| {
            probe.is_attached(i)
        });
        if !self.only.is_empty() {
            snap.ports.retain(|p| self.only.contains(&p.name));
        }
        snap
    }

    /// One port with its peer and pod, without reading counters (cheap: for per-event labels).
    pub fn port(&self, ifindex: u32) -> Option<Port> {
        let p = self.topology.ports.iter().find(|p| p.ifindex == ifindex)?;
        let mut port = p.clone();
        port.pod = p
            .peer
            .as_ref()
            .and_then(|x| x.netns_inode)
            .and_then(|i| self.pods.lookup(i))
            .cloned();
        Some(port)
    }

    pub fn health(&mut self) -> Health {
        self.health.mode = self.probe.mode().as_str();
        self.health.attached = self.probe.attached().count();
        if let Ok(s) = self.probe.program_stats() {
            self.health.program_stats = s;
        }
        self.health.program_runs = self.probe.program_run_stats();
        self.health.clone()
    }

    /// Makes attachments match the topology: attach new veths, detach vanished ones.
    pub fn reconcile(&mut self) {
        let wanted: Vec<(u32, String)> = if self.only.is_empty() {
            self.topology
                .ports
                .iter()
                .map(|p| (p.ifindex, p.name.clone()))
                .collect()
        } else {
            self.only
                .iter()
                .filter_map(|n| ifindex_of(n).map(|i| (i, n.clone())))
                .collect()
        };
        let keep: HashSet<u32> = wanted.iter().map(|(i, _)| *i).collect();
        // A veth created while the rescan ran is missing from its topology but was already
        // attached from its netlink event: detach only what the kernel no longer has here, or
        // its counters would restart from zero at the next pass.
        let gone: Vec<u32> = self
            .probe
            .attached()
            .map(|(i, _)| i)
            .filter(|i| !keep.contains(i) && (!self.only.is_empty() || !link_exists(*i)))
            .collect();
        for i in gone {
            self.probe.detach(i);
        }
        // A tcx attach waits for an RCU grace period while holding rtnl (about 14 ms idle, far
        // more on a busy node), twice per veth, and threads cannot overlap them: a first pass
        // over 1,000 veths takes tens of seconds. Attach the veths that carry traffic first, so
        // the counts that matter start early; already attached ones only follow renames.
        let (mut fresh, known): (Vec<_>, Vec<_>) = wanted
            .into_iter()
            .partition(|(i, _)| !self.probe.is_attached(*i));
        if fresh.len() > 1 {
            fresh.sort_by_cached_key(|(_, name)| std::cmp::Reverse(packets_so_far(name)));
        }
        for (i, name) in known.into_iter().chain(fresh) {
            if let Err(e) = self.probe.attach(i, &name) {
                self.health.attach_errors += 1;
                // A veth deleted between the event and the attach is not worth a warning.
                if ifindex_of(&name) == Some(i) {
                    log::warn!("{e}");
                } else {
                    log::debug!("{e}");
                }
            }
        }
        self.probe.collect_garbage();
    }
}

/// Packets the kernel counted on `name` since it was created (0 when unknown): how busy it is.
fn packets_so_far(name: &str) -> u64 {
    ["rx_packets", "tx_packets"]
        .iter()
        .filter_map(|f| {
            std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/{f}"))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Whether `ifindex` is a link of this namespace (a veth moved away or deleted is not).
fn link_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
}

fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Our programs on the node, and the tasks that keep them matched to its veths.
pub struct Node {
    pub state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Loads the programs, attaches to every veth (or to `interfaces`), and follows churn.
    pub async fn start(opts: &NodeOptions) -> Result<Self> {
        for name in &opts.interfaces {
            if ifindex_of(name).is_none() {
                return Err(Error::NoSuchInterface(name.clone()));
            }
        }
        let mut probe = Probe::load(&opts.probe)?;
        let logger = probe.take_logger();
        // Subscribe before the first scan, so no veth created in between is missed.
        let watcher = if opts.interfaces.is_empty() {
            Some(topology::watch().map_err(|e| Error::Netlink(e.to_string()))?)
        } else {
            None
        };
        let pods = pods::discover(&opts.pods).await;
        let mut scan = opts.scan.clone();
        scan.extra_netns_paths.extend(pods.netns_paths());
        let topology = topology::scan(&scan)
            .await
            .map_err(|e| Error::Netlink(e.to_string()))?;
        let state = Arc::new(Mutex::new(State {
            probe,
            topology,
            pods,
            health: Health::default(),
            only: opts.interfaces.iter().cloned().collect(),
        }));
        lock(&state).reconcile();
        let relabel = Arc::new(Notify::new());
        let mut tasks = vec![tokio::spawn(relabel_loop(
            state.clone(),
            relabel.clone(),
            opts.clone(),
        ))];
        if let Some(l) = logger {
            tasks.push(tokio::spawn(forward_logs(l)));
        }
        if let Some(w) = watcher {
            tasks.push(tokio::spawn(follow_links(w, state.clone(), relabel)));
        }
        Ok(Self { state, tasks })
    }

    pub fn snapshot(&self) -> Snapshot {
        lock(&self.state).snapshot()
    }

    /// Stops following churn and detaches everything we attached.
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        lock(&self.state).probe.detach_all();
    }
}

/// `top` without an agent: snapshots straight from our own programs' maps.
pub struct LocalSource {
    pub state: Arc<Mutex<State>>,
}

impl crate::top::SnapshotSource for LocalSource {
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Snapshot, crate::top::SourceError>> {
        let snap = lock(&self.state).snapshot();
        std::future::ready(Ok(snap))
    }
}

pub fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves the data usable: counters are read fresh each time.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Attaches and detaches as veths come and go; every change also schedules a relabel.
async fn follow_links(
    mut watcher: topology::LinkWatcher,
    state: Arc<Mutex<State>>,
    relabel: Arc<Notify>,
) {
    while let Some(ev) = watcher.next().await {
        let mut s = lock(&state);
        s.health.link_events += 1;
        match ev {
            LinkEvent::Added { ifindex, name } => {
                // Attach at once: counting must not wait for the (slower) pod lookup.
                if let Err(e) = s.probe.attach(ifindex, &name) {
                    s.health.attach_errors += 1;
                    log::debug!("{e}");
                } else {
                    log::debug!("attached to new veth {name} ({ifindex})");
                }
            }
            LinkEvent::Removed { ifindex, name } => {
                s.probe.detach(ifindex);
                s.topology.ports.retain(|p| p.ifindex != ifindex);
                log::debug!("veth {name} ({ifindex}) removed");
            }
            LinkEvent::Resync => {
                s.health.netlink_resyncs += 1;
                log::warn!("netlink socket overran; rescanning all links");
            }
        }
        drop(s);
        relabel.notify_one();
    }
}

/// Rescans topology and pods after link changes (debounced), and retries a few times for veths
/// whose pod is not known yet: CNI creates the veth before the runtime records the pod.
async fn relabel_loop(state: Arc<Mutex<State>>, relabel: Arc<Notify>, opts: NodeOptions) {
    const RETRIES: [u64; 4] = [250, 1000, 3000, 10_000];
    let mut retry = 0usize;
    loop {
        let wait = if retry < RETRIES.len() {
            Duration::from_millis(RETRIES[retry])
        } else {
            Duration::from_hours(1)
        };
        tokio::select! {
            () = relabel.notified() => { retry = 0; tokio::time::sleep(Duration::from_millis(50)).await; }
            () = tokio::time::sleep(wait) => {
                if retry >= RETRIES.len() { continue; }
                retry += 1;
            }
        }
        let pods = pods::discover(&opts.pods).await;
        let mut scan = opts.scan.clone();
        scan.extra_netns_paths.extend(pods.netns_paths());
        let topology = match topology::scan(&scan).await {
            Ok(t) => t,
            Err(e) => {
                log::warn!("rescan: {e}");
                continue;
            }
        };
        let unlabelled = topology.ports.iter().any(|p| {
            p.peer
                .as_ref()
                .and_then(|x| x.netns_inode)
                .is_some_and(|i| pods.lookup(i).is_none())
        });
        let mut s = lock(&state);
        s.topology = topology;
        s.pods = pods;
        s.reconcile();
        if !unlabelled {
            retry = RETRIES.len();
        }
    }
}

async fn forward_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd and keeps it open for as long as it lives,
    // which is as long as the AsyncFd that owns the logger.
    let Ok(mut fd) =
        (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
