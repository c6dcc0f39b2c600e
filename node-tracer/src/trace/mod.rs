//! `node-tracer trace icmp`: one line per ICMP/ICMPv6 packet per veth and direction — which veth
//! sees my ping — from the events the tc programs write while a tracer runs.
//!
//! The tracing itself is pure: events come in through [`EventSource`], veths are looked up
//! through a function, output goes to a writer. The caller owns the event source, the model and
//! Ctrl-C. Two sources are real: the programs' ring buffer ([`RingBufSource`], a standalone
//! trace) and a running agent's stream ([`RemoteEvents`], `--connect`), which the agent serves
//! from its own ring through a [`Hub`].

mod decode;
mod filter;
mod format;
mod hub;
mod nodes;
mod pcapng;
mod remote;
mod ringbuf;
mod summary;
pub mod wire;

use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use node_tracer_common::IcmpEvent;
use tokio::time::Instant;

pub use crate::icmp::{icmp_code_name, icmp_type_name};
pub use decode::{Packet, decode};
pub use filter::{AddressMatch, Filter, TypeMatch};
pub use format::{format_line, rfc3339_micros, to_json};
pub use hub::{Hub, Subscription, TICK};
pub use nodes::NodesTrace;
pub use pcapng::PcapngWriter;
pub use remote::{AgentTrace, RemoteEvents};
pub use ringbuf::RingBufSource;
pub use summary::Summary;

use crate::error::Error;
use crate::model::Port;

/// Where events come from: the lead's ring-buffer reader in the agent, a `Vec` in tests.
pub trait EventSource {
    /// The next event, or `None` when the source has ended. Must be cancel-safe: a future dropped
    /// before it completes must not lose an event (true of `AsyncFd` readiness + `RingBuf::next`).
    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = Option<IcmpEvent>> + Send + '_>>;
    /// An event already waiting, without waiting for one: how a stopping trace drains what the
    /// programs wrote before the stop.
    fn try_next(&mut self) -> Option<IcmpEvent>;
    /// Events the programs could not deliver (`AGENT_STATS[STAT_EVENTS_LOST]`). May be a counter
    /// that predates the trace: only its increase during the trace is reported.
    fn lost(&self) -> u64;
}

#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// One JSON object per line instead of aligned text.
    pub json: bool,
    /// Stop after this many matched packets.
    pub count: Option<u64>,
    /// Stop this long after the start.
    pub timeout: Option<Duration>,
    pub filter: Filter,
    /// Also write the matched packets as pcapng here.
    pub write: Option<PathBuf>,
    /// List each ping's path at the end (the totals line is always written).
    pub summary: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Events read from the source.
    pub seen: u64,
    /// Decoded events that passed the filter (printed, written, summarised).
    pub matched: u64,
    /// Events the programs dropped during the trace (ring buffer full).
    pub lost: u64,
    /// Events whose frame was too short or inconsistent to decode.
    pub undecoded: u64,
}

/// Why [`Tracer::pump`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Count,
    Timeout,
    SourceEnded,
}

/// A trace in progress. Its state lives here, not in a future, so a caller that races Ctrl-C
/// against [`Tracer::pump`] and drops it still gets the summary and a complete pcapng file from
/// [`Tracer::finish`]:
///
/// ```text
/// let mut tracer = Tracer::new(&opts, &events)?;
/// tokio::select! {
///     r = tracer.pump(&mut events, &ports, &mut out) => { r?; }
///     _ = tokio::signal::ctrl_c() => {}
/// }
/// // (stop the programs writing events here)
/// tracer.drain(&mut events, &ports, &mut out)?;
/// let stats = tracer.finish(&events, &mut out)?;
/// ```
pub struct Tracer<'o> {
    opts: &'o TraceOptions,
    mono_to_wall: Box<dyn Fn(u64) -> SystemTime + Send + Sync>,
    pcapng: Option<PcapngWriter<BufWriter<File>>>,
    summary: Summary,
    stats: TraceStats,
    deadline: Option<Instant>,
    lost_at_start: u64,
    lost_reported: u64,
}

impl<'o> Tracer<'o> {
    /// Opens the pcapng file (if any) and starts the `--timeout` clock.
    pub fn new(opts: &'o TraceOptions, events: &dyn EventSource) -> Result<Self, Error> {
        let pcapng = match &opts.write {
            Some(path) => {
                let err = |source| Error::Pcapng {
                    path: path.clone(),
                    source,
                };
                let file = File::create(path).map_err(err)?;
                Some(PcapngWriter::new(BufWriter::new(file)).map_err(err)?)
            }
            None => None,
        };
        let lost_at_start = events.lost();
        Ok(Self {
            opts,
            mono_to_wall: Box::new(mono_to_wall_fn()),
            pcapng,
            summary: Summary::new(),
            stats: TraceStats::default(),
            deadline: opts.timeout.map(|t| Instant::now() + t),
            lost_at_start,
            lost_reported: lost_at_start,
        })
    }

    /// Replaces the clock conversion (tests use a fixed one).
    #[must_use]
    pub fn with_clock(
        mut self,
        mono_to_wall: impl Fn(u64) -> SystemTime + Send + Sync + 'static,
    ) -> Self {
        self.mono_to_wall = Box::new(mono_to_wall);
        self
    }

    /// Reads, filters and writes events until `--count`, `--timeout` or the end of the source.
    /// Cancel-safe: the only await is the source's, and each event is fully handled before the
    /// next is awaited.
    pub async fn pump(
        &mut self,
        events: &mut dyn EventSource,
        ports: &dyn Fn(u32) -> Option<Port>,
        out: &mut dyn Write,
    ) -> Result<Stop, Error> {
        loop {
            if self.opts.count.is_some_and(|n| self.stats.matched >= n) {
                return Ok(Stop::Count);
            }
            let next = events.next_event();
            let ev = match self.deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, next).await {
                    Ok(ev) => ev,
                    Err(_) => return Ok(Stop::Timeout),
                },
                None => next.await,
            };
            let Some(ev) = ev else {
                return Ok(Stop::SourceEnded);
            };
            self.report_loss(events.lost(), out)?;
            self.handle(&ev, ports, out)?;
        }
    }

    /// Handles the events already waiting in the source, without waiting for more (and not
    /// past `--count`). After Ctrl-C or `--timeout` the programs may have written events the
    /// pump had not read yet: packets that crossed a veth while we traced, so they are reported.
    /// Call it after stopping the programs' writes, so it ends.
    pub fn drain(
        &mut self,
        events: &mut dyn EventSource,
        ports: &dyn Fn(u32) -> Option<Port>,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        while self.opts.count.is_none_or(|n| self.stats.matched < n) {
            let Some(ev) = events.try_next() else {
                break;
            };
            self.report_loss(events.lost(), out)?;
            self.handle(&ev, ports, out)?;
        }
        Ok(())
    }

    fn handle(
        &mut self,
        ev: &IcmpEvent,
        ports: &dyn Fn(u32) -> Option<Port>,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        self.stats.seen += 1;
        let Some(mut p) = decode(ev, &*self.mono_to_wall) else {
            self.stats.undecoded += 1;
            return Ok(());
        };
        let port = ports(p.ifindex);
        // A trace over several agents hands out ids of its own for (node, ifindex): the veth
        // knows its real one.
        if let Some(port) = &port {
            p.ifindex = port.ifindex;
        }
        if !self.opts.filter.matches(&p, port.as_ref()) {
            return Ok(());
        }
        self.stats.matched += 1;
        if self.opts.json {
            serde_json::to_writer(&mut *out, &to_json(&p, port.as_ref()))
                .map_err(Error::JsonLine)?;
            out.write_all(b"\n").map_err(Error::TraceOutput)?;
        } else {
            writeln!(out, "{}", format_line(&p, port.as_ref())).map_err(Error::TraceOutput)?;
        }
        // Per packet, so `trace icmp | grep` and `--json | jq` see lines as they happen.
        out.flush().map_err(Error::TraceOutput)?;
        if let Some(w) = &mut self.pcapng {
            w.write_event(ev, p.ts, port.as_ref())
                .map_err(|source| Error::Pcapng {
                    path: self.opts.write.clone().unwrap_or_default(),
                    source,
                })?;
        }
        if self.opts.summary {
            self.summary.add(&p, port.as_ref());
        }
        Ok(())
    }

    /// Says so, in the stream, as soon as the programs start dropping events: a gap in a trace
    /// must be visible where it happened, not only in the totals.
    fn report_loss(&mut self, lost_now: u64, out: &mut dyn Write) -> Result<(), Error> {
        if lost_now <= self.lost_reported {
            return Ok(());
        }
        let delta = lost_now - self.lost_reported;
        self.lost_reported = lost_now;
        let total = lost_now.saturating_sub(self.lost_at_start);
        if self.opts.json {
            let v = serde_json::json!({ "events_lost": delta, "events_lost_total": total });
            serde_json::to_writer(&mut *out, &v).map_err(Error::JsonLine)?;
            out.write_all(b"\n").map_err(Error::TraceOutput)
        } else {
            writeln!(
                out,
                "!! {delta} events lost (ring buffer full), {total} since the start"
            )
            .map_err(Error::TraceOutput)
        }
    }

    /// Closes the pcapng file and writes the summary (a last JSON object with `"summary": true`
    /// in `--json` mode).
    pub fn finish(
        mut self,
        events: &dyn EventSource,
        out: &mut dyn Write,
    ) -> Result<TraceStats, Error> {
        self.stats.lost = events.lost().saturating_sub(self.lost_at_start);
        if let Some(mut w) = self.pcapng.take() {
            w.flush().map_err(|source| Error::Pcapng {
                path: self.opts.write.clone().unwrap_or_default(),
                source,
            })?;
        }
        if self.opts.json {
            serde_json::to_writer(&mut *out, &self.summary.to_json(&self.stats))
                .map_err(Error::JsonLine)?;
            out.write_all(b"\n").map_err(Error::TraceOutput)?;
        } else {
            out.write_all(self.summary.render(&self.stats).as_bytes())
                .map_err(Error::TraceOutput)?;
        }
        out.flush().map_err(Error::TraceOutput)?;
        Ok(self.stats)
    }

    pub fn stats(&self) -> TraceStats {
        self.stats
    }
}

/// Runs a whole trace: until `--count`, `--timeout` or the end of the source, then what is left
/// in the source, then the summary.
/// To stop on Ctrl-C and still get the summary, either end the source (`next_event` returns
/// `None` on the signal) or drive a [`Tracer`] directly.
pub async fn run(
    opts: &TraceOptions,
    events: &mut dyn EventSource,
    ports: &dyn Fn(u32) -> Option<Port>,
    out: &mut dyn Write,
) -> Result<TraceStats, Error> {
    let mut tracer = Tracer::new(opts, events)?;
    tracer.pump(events, ports, out).await?;
    tracer.drain(events, ports, out)?;
    tracer.finish(events, out)
}

/// Converts the programs' `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`) to wall-clock time,
/// anchored once at the call: a wall-clock step during the trace then shifts nothing, and every
/// event of one trace is on one consistent timeline.
pub fn mono_to_wall_fn() -> impl Fn(u64) -> SystemTime + Send + Sync + 'static {
    let clock = crate::clock::Clock::now();
    move |mono_ns| clock.to_wall(mono_ns)
}

#[cfg(test)]
mod tests;
