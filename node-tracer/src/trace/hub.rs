//! The agent's side of `trace icmp --connect`: one reader of the programs' event ring, shared by
//! every connected tracer. A tracer that connects to the agent adds no programs of its own, so
//! tracing costs the node's other traffic nothing, and it starts at once on a node whose veths
//! would take the standalone trace tens of seconds to attach. The programs write events only
//! while at least one tracer is connected.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use node_tracer_common::{IcmpEvent, STAT_EVENTS_LOST};
use tokio::sync::{Notify, mpsc};

use super::{EventSource, RingBufSource, mono_to_wall_fn};
use crate::node::{Shared, lock};

/// Events a tracer may fall behind by before it misses some (and is told so).
const BACKLOG: usize = 4096;

/// How often the hub looks for tracers that went away and re-reads the programs' loss count.
pub const TICK: Duration = Duration::from_secs(1);

struct Client {
    tx: mpsc::Sender<IcmpEvent>,
    dropped: Arc<AtomicU64>,
}

#[derive(Default)]
pub struct Hub {
    clients: Mutex<Vec<Client>>,
    joined: Notify,
    /// Events the programs could not write (`AGENT_STATS`), as last read.
    program_lost: AtomicU64,
}

/// One connected tracer's events, their timestamps in wall-clock nanoseconds.
pub struct Subscription {
    rx: mpsc::Receiver<IcmpEvent>,
    dropped: Arc<AtomicU64>,
    lost_at_start: u64,
    hub: Arc<Hub>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Option<IcmpEvent> {
        self.rx.recv().await
    }

    /// Events this tracer missed since it connected: not written by the programs (ring buffer
    /// full) or not taken in time.
    pub fn lost(&self) -> u64 {
        self.hub
            .program_lost
            .load(Ordering::Relaxed)
            .saturating_sub(self.lost_at_start)
            + self.dropped.load(Ordering::Relaxed)
    }
}

impl Hub {
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let dropped = Arc::new(AtomicU64::new(0));
        self.lock().push(Client {
            tx,
            dropped: dropped.clone(),
        });
        self.joined.notify_one();
        Subscription {
            rx,
            dropped,
            lost_at_start: self.program_lost.load(Ordering::Relaxed),
            hub: self.clone(),
        }
    }

    /// Tracers connected now.
    pub fn streams(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refresh_lost(&self, state: &Shared) {
        // Read every tick: a failure would repeat each time, so it is logged at debug level and
        // the last count kept.
        match state.read.maps().program_stats() {
            Ok(s) => self
                .program_lost
                .store(s[STAT_EVENTS_LOST as usize], Ordering::Relaxed),
            Err(e) => log::debug!("reading AGENT_STATS: {}", node_tracer_client::one_line(&e)),
        }
    }

    fn broadcast(&self, ev: IcmpEvent) {
        self.lock().retain(|c| match c.tx.try_send(ev) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn set_tracing(state: &Shared, on: bool) {
        if let Err(e) = lock(state).probe.set_tracing(on) {
            let on = if on { "on" } else { "off" };
            crate::failures::count("set_tracing");
            log::warn!("turning tracing {on}: {}", node_tracer_client::one_line(&e));
        }
    }

    /// Reads the programs' ring for as long as the agent runs: while a tracer is connected, the
    /// programs write events and every tracer gets each of them; while none is, they write none.
    pub async fn run(self: Arc<Self>, mut ring: RingBufSource, state: Arc<Shared>) {
        loop {
            loop {
                let joined = self.joined.notified();
                if self.streams() > 0 {
                    break;
                }
                joined.await;
            }
            self.refresh_lost(&state);
            // Anchored anew for every tracing period: the two clocks drift apart over days.
            let to_wall = mono_to_wall_fn();
            Self::set_tracing(&state, true);
            log::info!("tracing ICMP for {} connected tracer(s)", self.streams());
            let mut tick = tokio::time::interval(TICK);
            while self.streams() > 0 {
                tokio::select! {
                    ev = ring.next_event() => {
                        let Some(mut ev) = ev else {
                            crate::failures::count("event_ring");
                            log::warn!("the event ring buffer closed: no more traces");
                            return;
                        };
                        ev.ts_ns = to_wall(ev.ts_ns)
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                        self.broadcast(ev);
                    }
                    _ = tick.tick() => {
                        self.refresh_lost(&state);
                        self.lock().retain(|c| !c.tx.is_closed());
                    }
                }
            }
            Self::set_tracing(&state, false);
            // What the programs wrote before the switch went off has no reader left.
            while ring.try_next().is_some() {}
            log::info!("tracing stopped: no tracer connected");
        }
    }
}
