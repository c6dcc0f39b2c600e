//! What every scrape reads: the slow-changing part of the model (topology and pods) as one
//! published value, the bridges' FDB as netlink notifications keep it, and the counters read
//! from the maps at that moment. Nothing here takes the lock that attach, churn and relabel
//! hold, so a scrape never waits behind an attach pass, and a pass never waits for scrapes.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    coverage::Coverage,
    drop_report::DropReport,
    model::{Health, Port, Snapshot},
    pods::PodIndex,
    probe::{MapReader, Readings, drops::Counted},
    published::Published,
    snapshot,
    topology::{Topology, fdb::LiveFdb},
};

use super::Progress;

/// Topology and pods, replaced whole by every rescan (and by a veth's removal).
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub topology: Topology,
    pub pods: PodIndex,
}

impl Model {
    /// One port with its peer and pod, without counters.
    pub fn port(&self, ifindex: u32) -> Option<Port> {
        let p = self.topology.ports.iter().find(|p| p.ifindex == ifindex)?;
        let mut port = p.clone();
        self.pods.label(&mut port);
        Some(port)
    }
}

/// Counts of the agent's own work, bumped by the attach side and read by scrapes, lock-free.
#[derive(Debug, Default)]
pub struct WorkCounters {
    pub attach_errors: AtomicU64,
    pub netlink_resyncs: AtomicU64,
    pub link_events: AtomicU64,
    pub netns_visits: AtomicU64,
}

impl WorkCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The read side of a node.
pub struct ReadPath {
    maps: Arc<MapReader>,
    pub(super) model: Published<Model>,
    /// Veths removed since the model was read (their removal events came after): left out of
    /// every view until a rescan no longer has them. Cheaper than a new model per removal, which
    /// a burst of hundreds of deletions would copy hundreds of times.
    pub(super) gone: Published<HashSet<u32>>,
    fdb: Arc<LiveFdb>,
    /// Interfaces the user named with --interface (empty: all veths).
    only: HashSet<String>,
    /// This node's name, carried in every snapshot (see [`Snapshot::node`]).
    node_name: Option<String>,
    pub counters: WorkCounters,
    /// While the first attach pass runs: how far it is (`/healthz` answers 503 with it).
    pub(super) starting: Published<Option<Progress>>,
    /// Packets the kernel counted and our programs did not, per port.
    coverage: Coverage,
}

impl ReadPath {
    pub(super) fn new(
        maps: Arc<MapReader>,
        model: Arc<Model>,
        fdb: Arc<LiveFdb>,
        only: HashSet<String>,
    ) -> Self {
        Self {
            maps,
            model: Published::new(model),
            gone: Published::default(),
            fdb,
            only,
            node_name: None,
            counters: WorkCounters::default(),
            starting: Published::new(Arc::new(Some(Progress::default()))),
            coverage: Coverage::default(),
        }
    }

    /// Names the node in every snapshot.
    #[must_use]
    pub(super) fn with_node_name(mut self, name: Option<String>) -> Self {
        self.node_name = name;
        self
    }

    /// How far the first attach pass is; `None` once it is done.
    pub fn starting(&self) -> Option<Progress> {
        *self.starting.load()
    }

    /// The latest topology and pods.
    pub fn model(&self) -> Arc<Model> {
        self.model.load()
    }

    /// The maps' reader (program statistics for the trace hub, counters).
    pub fn maps(&self) -> &MapReader {
        &self.maps
    }

    /// Reads the maps and joins them with the latest model and FDB.
    pub fn snapshot(&self) -> Snapshot {
        self.join().0
    }

    /// A snapshot and the agent's health, read together (what `/metrics` serves).
    pub fn metrics(&self) -> (Snapshot, Health) {
        let (snap, icmp_entries) = self.join();
        (snap, self.health(icmp_entries))
    }

    /// The agent's view of itself; `icmp_entries` as a map read just before counted them.
    pub fn health(&self, icmp_entries: Option<usize>) -> Health {
        let c = &self.counters;
        Health {
            attached: self.maps.attached().by_mode,
            attach_errors: c.attach_errors.load(Ordering::Relaxed),
            // Read per scrape: a failure would repeat at every scrape, so debug level.
            program_stats: self.maps.program_stats().unwrap_or_else(|e| {
                log::debug!("reading AGENT_STATS: {}", node_tracer_client::one_line(&e));
                [0; node_tracer_common::STAT_COUNT as usize]
            }),
            netlink_resyncs: c.netlink_resyncs.load(Ordering::Relaxed),
            link_events: c.link_events.load(Ordering::Relaxed),
            netns_visits: c.netns_visits.load(Ordering::Relaxed),
            program_runs: self.maps.program_run_stats(),
            map_entries: self.maps.map_entries(icmp_entries),
            map_errors: self.maps.map_errors(),
            errors: crate::failures::counts(),
            ..Health::default()
        }
    }

    /// Drops and retransmits read now, attributed to the pods of `ports`.
    fn drops(&self, ports: &[Port]) -> DropReport {
        let maps = &self.maps.drops;
        let counted = maps.read().unwrap_or_else(|e| {
            crate::failures::count("read_drops");
            log::warn!(
                "reading drop counters: {}",
                node_tracer_client::one_line(&e)
            );
            Counted::default()
        });
        let (drops, retransmits) = crate::drops::attribute(ports, &counted);
        DropReport {
            drops_on: maps.tracking.drops,
            retransmits_on: maps.tracking.retransmits,
            drops,
            retransmits,
        }
    }

    /// The snapshot, and how many `ICMP_STATS` entries its read saw.
    fn join(&self) -> (Snapshot, Option<usize>) {
        let (readings, icmp_entries) = match self.maps.read() {
            Ok(r) => {
                let n = r.icmp_entries;
                (r, Some(n))
            }
            Err(e) => {
                crate::failures::count("read_counters");
                log::warn!("reading counters: {}", node_tracer_client::one_line(&e));
                (Readings::default(), None)
            }
        };
        let model = self.model.load();
        let gone = self.gone.load();
        let attached = self.maps.attached();
        let mut snap = snapshot::build(&model.topology, &model.pods, &readings.ports, |i| {
            attached.attached.contains(&i)
        });
        snap.ports.retain(|p| !gone.contains(&p.ifindex));
        self.coverage.update(&mut snap);
        self.fdb.read().apply(&mut snap);
        snap.drops = self.drops(&snap.ports);
        snap.node.clone_from(&self.node_name);
        if !self.only.is_empty() {
            snap.ports.retain(|p| self.only.contains(&p.name));
            snap.drops
                .drops
                .retain(|d| self.only.contains(&d.interface));
            // The databases of the bridges the named ports belong to, and no others.
            let bridges: HashSet<String> =
                snap.ports.iter().filter_map(|p| p.master.clone()).collect();
            snap.fdb.retain(|e| bridges.contains(&e.bridge));
        }
        (snap, icmp_entries)
    }
}
