//! The node as node-tracer sees it: our programs attached to its veths, following veth churn
//! from netlink events, with topology and pods kept current. `run`, `trace` and a standalone
//! `top` each start one.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use node_tracer_client::one_line;
use tokio::{io::unix::AsyncFd, sync::Notify, task::JoinHandle};

use crate::{
    error::{Error, Result},
    model::{Health, Port, Snapshot},
    pods::{self, PodConfig, PodIndex},
    probe::{AttachMode, Probe, ProbeOptions, rcu},
    shutdown, snapshot,
    topology::{self, LinkEvent, ScanOptions, Topology},
};

/// Which veths to attach to, judged on the labelled port (a trace filtered by pod attaches only
/// to that pod's veth instead of paying a ~14 ms tcx attach on every veth of the node).
#[derive(Clone)]
pub struct PortFilter(pub Arc<dyn Fn(&Port) -> bool + Send + Sync>);

impl std::fmt::Debug for PortFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortFilter")
    }
}

/// What to attach to and where to look for pods.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Attach only to these interfaces (any kind); empty: every veth, following churn.
    pub interfaces: Vec<String>,
    /// With `interfaces` empty: attach only to veths this accepts (once their pod is known).
    pub attach_filter: Option<PortFilter>,
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
    pub filter: Option<PortFilter>,
    /// Set when netlink events may have been lost: the next rescan enters every namespace
    /// instead of only the changed ones.
    pub rescan_all: bool,
    /// `--expedite-rcu`: held around every tcx attach and detach.
    pub expediter: Option<Arc<rcu::Expediter>>,
    /// Packets each interface had carried when the agent started, for the order of the first
    /// attach pass (see [`State::plan`]); taken by it.
    packets_at_start: Option<HashMap<String, u64>>,
    /// While the first attach pass runs: how far it is (`/healthz` answers 503 with it).
    pub starting: Option<Progress>,
}

/// Veths the first attach pass has attached, of how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

impl State {
    /// Reads the maps and joins everything into a snapshot.
    pub fn snapshot(&mut self) -> Snapshot {
        let readings = match self.probe.read() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("reading counters: {}", one_line(&e));
                std::collections::HashMap::default()
            }
        };
        let probe = &self.probe;
        let mut snap = snapshot::build(&self.topology, &self.pods, &readings, |i| {
            probe.is_attached(i)
        });
        match topology::fdb::read_blocking() {
            Ok(fdb) => fdb.apply(&mut snap),
            Err(e) => log::warn!("reading the bridges' FDB: {}", one_line(&e)),
        }
        if !self.only.is_empty() {
            snap.ports.retain(|p| self.only.contains(&p.name));
            // The databases of the bridges the named ports belong to, and no others.
            let bridges: HashSet<String> =
                snap.ports.iter().filter_map(|p| p.master.clone()).collect();
            snap.fdb.retain(|e| bridges.contains(&e.bridge));
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
        self.health.attached = self.probe.attached_by_mode();
        // Read per scrape: a failure would repeat at every scrape, so debug level, last sums kept.
        match self.probe.program_stats() {
            Ok(s) => self.health.program_stats = s,
            Err(e) => log::debug!("reading AGENT_STATS: {}", one_line(&e)),
        }
        self.health.program_runs = self.probe.program_run_stats();
        self.health.map_entries = self.probe.map_entries();
        self.health.clone()
    }

    /// Detaches from vanished veths and returns the ones still to attach. Detaching is quick;
    /// attaching is not (a tcx attach waits for an RCU grace period, ~14 ms), so the caller
    /// attaches one at a time without holding the lock throughout: see [`reconcile`].
    fn plan(&mut self) -> Vec<(u32, String)> {
        let wanted: Vec<(u32, String)> = if self.only.is_empty() {
            self.topology
                .ports
                .iter()
                .filter(|p| {
                    self.filter.as_ref().is_none_or(|f| {
                        self.port(p.ifindex)
                            .is_some_and(|labelled| (f.0)(&labelled))
                    })
                })
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
        self.probe.collect_garbage();
        // A tcx attach waits for an RCU grace period while holding rtnl (about 14 ms idle, far
        // more on a busy node), twice per veth, and threads cannot overlap them: a first pass
        // over 1,000 veths takes tens of seconds. Attach the veths that carry traffic first, so
        // the counts that matter start early; already attached ones only follow renames.
        let attached: HashMap<u32, &str> = self.probe.attached().collect();
        let mut todo: Vec<(u32, String)> = wanted
            .into_iter()
            .filter(|(i, name)| attached.get(i) != Some(&name.as_str()))
            .collect();
        if todo.len() > 1 {
            // Busy now (packets since the agent started) first, then busy over its lifetime:
            // a restarted agent should not favour pods that were busy long ago.
            let before = self.packets_at_start.take().unwrap_or_default();
            todo.sort_by_cached_key(|(_, name)| {
                let now = packets_so_far(name);
                let recent = now.saturating_sub(before.get(name).copied().unwrap_or(0));
                std::cmp::Reverse(((recent >= LIVE_PACKETS).then_some(recent), now))
            });
        }
        todo
    }

    /// `--expedite-rcu`: grace periods expedited while the returned hold lives, when the probe
    /// attaches in `mode` (the waits are tcx's).
    fn expedite(&self, mode: AttachMode) -> Option<rcu::Hold> {
        (self.probe.mode() == mode)
            .then(|| self.expediter.as_ref().map(rcu::Expediter::hold))
            .flatten()
    }

    fn attach_one(&mut self, ifindex: u32, name: &str) {
        let _expedited = self.expedite(AttachMode::Tcx);
        if let Err(e) = self.probe.attach(ifindex, name) {
            self.health.attach_errors += 1;
            // A veth deleted between the event and the attach is not worth a warning.
            if ifindex_of(name) == Some(ifindex) {
                log::warn!("{}", one_line(&e));
            } else {
                log::debug!("{}", one_line(&e));
            }
        }
    }
}

/// Packets since the agent started that make a veth busy now: more than an idle pod's
/// neighbour-discovery and ARP chatter over the fraction of a second start-up takes.
const LIVE_PACKETS: u64 = 16;

/// [`packets_so_far`] of every interface.
fn packets_of_all() -> HashMap<String, u64> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| {
            let n = packets_so_far(&name);
            (name, n)
        })
        .collect()
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
        Self::start_with(opts, |_| Ok(())).await
    }

    /// [`Node::start`], calling `before_attach` once the programs are loaded and the node
    /// scanned, before the first attach pass: the agent starts serving there, so that a scrape
    /// during a long first pass (half a minute at 1,000 veths) gets what is counted so far, and
    /// `/healthz` the pass's progress ([`State::starting`]).
    pub async fn start_with(
        opts: &NodeOptions,
        before_attach: impl FnOnce(&Arc<Mutex<State>>) -> Result<()>,
    ) -> Result<Self> {
        for name in &opts.interfaces {
            if ifindex_of(name).is_none() {
                return Err(Error::NoSuchInterface(name.clone()));
            }
        }
        // Before the slow part (loading, pods, the scan), so the first pass can tell which veths
        // carry traffic meanwhile.
        let packets_at_start = opts.interfaces.is_empty().then(packets_of_all);
        let mut probe = Probe::load(&opts.probe)?;
        let logger = probe.take_logger();
        // Subscribe before the first scan, so no veth created in between is missed.
        // Also with --interface: a named veth that vanishes must take its series with it at
        // the next scrape, and only the Removed event says so promptly (added veths are
        // filtered by name in `follow_links`).
        let watcher = topology::watch()?;
        let pods = pods::discover(&opts.pods).await;
        let mut scan = opts.scan.clone();
        scan.extra_netns_paths.extend(pods.netns_paths());
        // Netlink attaches and detaches wait for no grace period of their own; fast-start's
        // first pass is netlink, but it moves every veth to tcx after.
        let expediter = (opts.probe.expedite_rcu && probe.mode() != AttachMode::Netlink)
            .then(|| {
                rcu::Expediter::start()
                    .inspect_err(|e| {
                        log::warn!(
                            "--expedite-rcu: {}; attaching and detaching at the normal pace",
                            one_line(e)
                        );
                    })
                    .ok()
                    .flatten()
            })
            .flatten();
        let mut scanner = topology::Scanner::default();
        let topology = scanner.scan(&scan).await?;
        let state = Arc::new(Mutex::new(State {
            probe,
            topology,
            pods,
            health: Health {
                netns_visits: scanner.visits(),
                ..Health::default()
            },
            only: opts.interfaces.iter().cloned().collect(),
            filter: opts.attach_filter.clone(),
            rescan_all: false,
            expediter,
            packets_at_start,
            starting: Some(Progress::default()),
        }));
        before_attach(&state)?;
        reconcile(&state);
        lock(&state).starting = None;
        let relabel = Arc::new(Notify::new());
        let mut tasks = vec![tokio::spawn(relabel_loop(
            state.clone(),
            relabel.clone(),
            opts.clone(),
            scanner,
        ))];
        if lock(&state).probe.mode() == AttachMode::FastStart {
            tasks.push(tokio::spawn(upgrade_loop(state.clone())));
        }
        if let Some(l) = logger {
            tasks.push(tokio::spawn(forward_logs(l)));
        }
        tasks.push(tokio::spawn(follow_links(watcher, state.clone(), relabel)));
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
        let mut s = lock(&self.state);
        {
            let _expedited = s.expediter.as_ref().map(rcu::Expediter::hold);
            s.probe.detach_all();
        }
        // The watchdog puts rcu_expedited back and exits before we do.
        s.expediter = None;
    }
}

/// `top` without an agent: snapshots straight from our own programs' maps (`top` implements
/// its snapshot source for it: the view reads the model, not the other way round).
pub struct LocalSource {
    pub state: Arc<Mutex<State>>,
}

/// Makes attachments match the topology: detach vanished veths, attach new ones. The lock is
/// taken per attach, so scrapes and snapshots are served between attaches even when hundreds of
/// veths appear at once.
pub fn reconcile(state: &Mutex<State>) {
    let todo = {
        let mut s = lock(state);
        let todo = s.plan();
        if let Some(p) = &mut s.starting {
            p.total = todo.len();
        }
        todo
    };
    let total = todo.len();
    for (done, (ifindex, name)) in todo.into_iter().enumerate() {
        // A first pass can take half a minute: a stop signal must not wait for its end.
        if shutdown::requested() {
            log::info!(
                "stopping: {} of {total} veths left unattached",
                total - done
            );
            return;
        }
        let mut s = lock(state);
        s.attach_one(ifindex, &name);
        if let Some(p) = &mut s.starting {
            p.done = done + 1;
        }
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
        if let LinkEvent::Added { ifindex, name } = &ev {
            // Attach at once (counting must not wait for the slower pod lookup), on a blocking
            // thread: a tcx attach waits for an RCU grace period.
            let (st, ifindex, name) = (state.clone(), *ifindex, name.clone());
            let rescan = tokio::task::spawn_blocking(move || {
                let mut s = lock(&st);
                s.health.link_events += 1;
                // With a filter, the port is judged once labelled, by the relabel pass.
                let wanted = (s.only.is_empty() && s.filter.is_none()) || s.only.contains(&name);
                if wanted {
                    s.attach_one(ifindex, &name);
                    log::debug!("attached to new veth {name} ({ifindex})");
                }
                // With --interface, other veths' churn is none of our business.
                s.only.is_empty() || s.only.contains(&name)
            })
            .await
            .unwrap_or(true);
            if rescan {
                relabel.notify_one();
            }
            continue;
        }
        {
            let mut s = lock(&state);
            s.health.link_events += 1;
            match ev {
                LinkEvent::Added { .. } => {}
                LinkEvent::Removed { ifindex, name } => {
                    s.probe.detach(ifindex);
                    s.topology.ports.retain(|p| p.ifindex != ifindex);
                    log::debug!("veth {name} ({ifindex}) removed");
                }
                LinkEvent::Resync => {
                    s.health.netlink_resyncs += 1;
                    s.rescan_all = true;
                    log::warn!("netlink socket overran; rescanning all links");
                }
            }
        }
        relabel.notify_one();
        // std's mutex is not fair: without a pause, a burst of hundreds of events would take
        // the lock back-to-back and starve scrapes waiting for it.
        tokio::task::yield_now().await;
    }
}

/// Rescans topology and pods after link changes (debounced), and retries a few times for veths
/// whose pod is not known yet (CNI creates the veth before the runtime records the pod) or whose
/// peer has no address yet (CNI adds it after the veth). A rescan enters only the namespaces
/// whose veths changed: see [`topology::Scanner`].
async fn relabel_loop(
    state: Arc<Mutex<State>>,
    relabel: Arc<Notify>,
    opts: NodeOptions,
    mut scanner: topology::Scanner,
) {
    const RETRIES: [u64; 4] = [250, 1000, 3000, 10_000];
    let mut retry = 0usize;
    loop {
        let wait = if retry < RETRIES.len() {
            Duration::from_millis(RETRIES[retry])
        } else {
            Duration::from_hours(1)
        };
        tokio::select! {
            () = relabel.notified() => { retry = 0; settle(&relabel).await; }
            () = tokio::time::sleep(wait) => {
                if retry >= RETRIES.len() { continue; }
                retry += 1;
            }
        }
        if std::mem::take(&mut lock(&state).rescan_all) {
            scanner.forget();
        }
        let pods = pods::discover(&opts.pods).await;
        let mut scan = opts.scan.clone();
        scan.extra_netns_paths.extend(pods.netns_paths());
        let topology = match scanner.scan(&scan).await {
            Ok(t) => t,
            Err(e) => {
                log::warn!("rescan: {}", one_line(&e));
                continue;
            }
        };
        let unlabelled = topology.ports.iter().any(|p| {
            p.peer
                .as_ref()
                .and_then(|x| x.netns_inode)
                .is_some_and(|i| pods.lookup(i).is_none())
        });
        {
            let mut s = lock(&state);
            s.topology = topology;
            s.pods = pods;
            s.health.netns_visits = scanner.visits();
        }
        // Attaching blocks (~14 ms per tcx attach): off the async thread that serves HTTP.
        let st = state.clone();
        if tokio::task::spawn_blocking(move || reconcile(&st))
            .await
            .is_err()
        {
            log::warn!("reconcile panicked");
        }
        if !unlabelled && scanner.settled() {
            retry = RETRIES.len();
        }
    }
}

/// Waits until link events have paused for a moment (at most a second): a rescan of a node with
/// 1,000 pods enters every pod's namespace, and doing one per veth of a burst would compete for
/// the CPUs with the attaches themselves (RCU grace periods stretch on busy CPUs).
async fn settle(events: &Notify) {
    const QUIET: Duration = Duration::from_millis(150);
    const MAX: Duration = Duration::from_secs(1);
    let deadline = tokio::time::Instant::now() + MAX;
    loop {
        tokio::select! {
            () = events.notified() => {}
            () = tokio::time::sleep(QUIET) => return,
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Fast-start mode: moves netlink-attached ports to tcx one at a time, in the background. The
/// attach itself (two RCU grace periods under rtnl) runs without our lock, so scrapes and new
/// veths are not held up; after each port we pause as long as it took, which leaves rtnl free
/// at least half the time for the node's own work (CNI, kubelet) and for our netlink attaches.
async fn upgrade_loop(state: Arc<Mutex<State>>) {
    loop {
        let Some(up) = lock(&state).probe.next_upgrade() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let st = state.clone();
        let started = std::time::Instant::now();
        let expedited = lock(&state).expedite(AttachMode::FastStart);
        let done = tokio::task::spawn_blocking(move || {
            let links = up.attach();
            drop(expedited);
            lock(&st).probe.finish_upgrade(&up, links);
        })
        .await;
        if done.is_err() {
            log::warn!("upgrade to tcx panicked");
        }
        tokio::time::sleep(started.elapsed().max(Duration::from_millis(5))).await;
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
