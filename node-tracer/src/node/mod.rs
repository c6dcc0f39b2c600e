//! The node as node-tracer sees it: our programs attached to its veths, following veth churn
//! from netlink events, with topology and pods kept current. `run`, `trace` and a standalone
//! `top` each start one.
//!
//! Two sides: the attach side ([`State`], behind one lock that attach, churn and relabel take)
//! and the read side ([`ReadPath`], which scrapes read without that lock). The attach side
//! publishes what readers need, topology and pods, and which ports are attached, as immutable
//! values; readers join the latest of them with counters read from the maps at that moment.

mod follow;
mod read_path;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use node_tracer_client::one_line;
use node_tracer_sys::netdev::{ifindex_of, link_exists};
use tokio::{sync::Notify, task::JoinHandle};

use crate::{
    error::{Error, Result},
    model::{Port, PortKind, Snapshot},
    pods::{self, PodConfig},
    probe::{AttachMode, Probe, ProbeOptions, rcu},
    shutdown,
    topology::{self, ScanOptions, fdb::LiveFdb},
};
pub use read_path::{Model, ReadPath, WorkCounters};

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
    /// The node's name in snapshots (the agent's `--node-name`); `None` for a standalone view.
    pub node_name: Option<String>,
}

/// Both sides of a node: the attach side behind its lock ([`lock`]), and the read side.
pub struct Shared {
    state: Mutex<State>,
    pub read: Arc<ReadPath>,
}

/// The attach side: the probe (maps and attachments) and what it attaches by.
pub struct State {
    pub probe: Probe,
    /// The model as last published (the read side holds the same value).
    model: Arc<Model>,
    read: Arc<ReadPath>,
    /// Interfaces the user named with --interface (empty: all veths).
    pub only: HashSet<String>,
    pub filter: Option<PortFilter>,
    /// `--attach-uplinks`: uplinks are attached like veths (else only listed).
    pub attach_uplinks: bool,
    /// Set when netlink events may have been lost: the next rescan enters every namespace
    /// instead of only the changed ones.
    pub rescan_all: bool,
    /// `--expedite-rcu`: held around every tcx attach and detach.
    pub expediter: Option<Arc<rcu::Expediter>>,
    /// Packets each interface had carried when the agent started, for the order of the first
    /// attach pass (see [`State::plan`]); taken by it.
    packets_at_start: Option<HashMap<String, u64>>,
}

/// Veths the first attach pass has attached, of how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

impl State {
    /// One port with its peer and pod, without reading counters (cheap: for per-event labels).
    pub fn port(&self, ifindex: u32) -> Option<Port> {
        if self.read.gone.load().contains(&ifindex) {
            return None;
        }
        self.model.port(ifindex)
    }

    /// Replaces the model and hands it to readers. A veth whose removal came after the scan
    /// stays left out.
    fn publish(&mut self, model: Model) {
        self.model = Arc::new(model);
        self.read.model.store_arc(self.model.clone());
        let gone: HashSet<u32> = self
            .read
            .gone
            .load()
            .iter()
            .copied()
            // Still gone: the new model was read before the removal (it still has the veth)
            // and the link really is no more. A veth whose "removal" was a port leaving its
            // bridge (the kernel's RTM_DELLINK of family AF_BRIDGE) still exists: it is back in
            // every view, and the next plan attaches it again.
            .filter(|i| {
                self.model.topology.ports.iter().any(|p| p.ifindex == *i) && !link_exists(*i)
            })
            .collect();
        self.read.gone.store(gone);
    }

    /// A veth left: detached, and left out of every view from now on.
    fn remove_port(&mut self, ifindex: u32) {
        self.probe.detach(ifindex);
        let mut gone = (*self.read.gone.load()).clone();
        gone.insert(ifindex);
        self.read.gone.store(gone);
    }

    /// Detaches from vanished veths and returns the ones still to attach. Detaching is quick;
    /// attaching is not (a tcx attach waits for an RCU grace period, ~14 ms), so the caller
    /// attaches one at a time without holding the lock throughout: see [`reconcile`].
    fn plan(&mut self) -> Vec<(u32, String)> {
        let gone = self.read.gone.load();
        let wanted: Vec<(u32, String)> = if self.only.is_empty() {
            self.model
                .topology
                .ports
                .iter()
                .filter(|p| !gone.contains(&p.ifindex))
                .filter(|p| self.attach_uplinks || p.kind != PortKind::Uplink)
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
            WorkCounters::bump(&self.read.counters.attach_errors);
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

/// Our programs on the node, and the tasks that keep them matched to its veths.
pub struct Node {
    pub state: Arc<Shared>,
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
    /// `/healthz` the pass's progress ([`ReadPath::starting`]).
    pub async fn start_with(
        opts: &NodeOptions,
        before_attach: impl FnOnce(&Arc<Shared>) -> Result<()>,
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
        let fdb = LiveFdb::start().await?;
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
        let only: HashSet<String> = opts.interfaces.iter().cloned().collect();
        let model = Arc::new(Model { topology, pods });
        let read = Arc::new(
            ReadPath::new(probe.reader(), model.clone(), fdb.clone(), only.clone())
                .with_node_name(opts.node_name.clone()),
        );
        read.counters
            .netns_visits
            .store(scanner.visits(), std::sync::atomic::Ordering::Relaxed);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                probe,
                model,
                read: read.clone(),
                only,
                filter: opts.attach_filter.clone(),
                attach_uplinks: opts.probe.attach_uplinks,
                rescan_all: false,
                expediter,
                packets_at_start,
            }),
            read,
        });
        let mut tasks = vec![tokio::spawn(fdb.follow())];
        if let Err(e) = before_attach(&shared) {
            for t in &tasks {
                t.abort();
            }
            return Err(e);
        }
        reconcile(&shared);
        shared.read.starting.store(None);
        let relabel = Arc::new(Notify::new());
        tasks.push(tokio::spawn(follow::relabel_loop(
            shared.clone(),
            relabel.clone(),
            opts.clone(),
            scanner,
        )));
        if lock(&shared).probe.mode() == AttachMode::FastStart {
            tasks.push(tokio::spawn(follow::upgrade_loop(shared.clone())));
        }
        if let Some(l) = logger {
            tasks.push(tokio::spawn(follow::forward_logs(l)));
        }
        tasks.push(tokio::spawn(follow::follow_links(
            watcher,
            shared.clone(),
            relabel,
        )));
        Ok(Self {
            state: shared,
            tasks,
        })
    }

    /// Counters read now, joined with the latest topology, pods and FDB; takes no lock the
    /// attach side holds.
    pub fn snapshot(&self) -> Snapshot {
        self.state.read.snapshot()
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
    pub state: Arc<Shared>,
}

/// Makes attachments match the topology: detach vanished veths, attach new ones. The lock is
/// taken per attach, so new veths' events and relabels get in between even when hundreds of
/// veths appear at once (scrapes take no lock at all).
pub fn reconcile(shared: &Shared) {
    let todo = {
        let mut s = lock(shared);
        let todo = s.plan();
        if shared.read.starting().is_some() {
            shared.read.starting.store(Some(Progress {
                done: 0,
                total: todo.len(),
            }));
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
        lock(shared).attach_one(ifindex, &name);
        if shared.read.starting().is_some() {
            shared.read.starting.store(Some(Progress {
                done: done + 1,
                total,
            }));
        }
    }
}

/// The attach side, for attaching, detaching, tracing on and off.
pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves the data usable: counters are read fresh each time.
    shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
