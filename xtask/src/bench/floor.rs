//! The agent's programs against the empty program, on the real packet path, under one unbroken
//! load. The two configurations alternate in short slices (order swapped pair by pair, so a
//! drift hits both alike), and each pair gives one ratio; the figure is the geometric mean of
//! the pairs with a 95 % confidence interval (paired t on the log-ratios). Then, with
//! BPF_ENABLE_STATS held, the same alternation gives the live run time per program run.
//!
//! The agent's own programs, with its maps, are attached by the bench: the agent loads them,
//! the bench takes a handle on each, stops the agent and puts back the two counter-slot
//! entries the agent's exit removed. So a packet takes exactly the path it takes under the
//! agent, and switching is one tcx attach, not an agent start. "The agent's programs" are all
//! of them: its drop and retransmit programs are on their tracepoints during its slices too
//! (and off during the empty program's), so the ratios compare everything the agent runs with
//! the floor. Under the UDP load the receiving socket overflows, and every datagram it drops
//! runs the drop program: the live figures show what that costs per datagram.

use std::{
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use super::{
    Settings,
    agent::{self, Agent},
    bpf::{self, RunStats},
    lab::{self, Lab},
    stream::{Kind, Stream},
    sys,
    tracepoints::Tracepoints,
};

#[derive(Debug, Default)]
pub struct Results {
    /// Per pair, agent's programs / empty program: UDP datagrams and TCP bytes received per s.
    pub udp_ratios: Vec<f64>,
    pub tcp_ratios: Vec<f64>,
    /// Per pair, what the load received per CPU-second of its two threads, agent's programs /
    /// empty program: blind to time the load spent preempted.
    pub udp_cpu_ratios: Vec<f64>,
    pub tcp_cpu_ratios: Vec<f64>,
    /// Live ns per program run, per slice, under the UDP load.
    pub live_ns: Vec<f64>,
    pub live_empty_ns: Vec<f64>,
    /// The same under the TCP load.
    pub live_tcp_ns: Vec<f64>,
    pub live_empty_tcp_ns: Vec<f64>,
    /// Program runs per received UDP datagram (4 hooks: expect about 2).
    pub runs_per_packet: Vec<f64>,
    /// The drop program under the UDP load, per slice: ns per run, runs per received datagram,
    /// and its run time per received datagram.
    pub live_drop_ns: Vec<f64>,
    pub live_drop_runs_per_packet: Vec<f64>,
    pub live_drop_ns_per_packet: Vec<f64>,
    /// The agent's tracepoint programs ran in its slices (false: its tc programs only).
    pub everything_on: bool,
}

/// Geometric mean of `ratios` and its 95 % interval: paired t on the log-ratios.
pub fn ratio_ci(ratios: &[f64]) -> Option<(f64, f64, f64)> {
    let logs: Vec<f64> = ratios
        .iter()
        .filter(|r| **r > 0.0)
        .map(|r| r.ln())
        .collect();
    let n = logs.len();
    if n < 2 {
        return None;
    }
    let (mean, sd) = mean_sd(&logs);
    let half = t975(n - 1) * sd / (n as f64).sqrt();
    Some((mean.exp(), (mean - half).exp(), (mean + half).exp()))
}

/// Pairs needed for a 95 % interval of ±1 % at the spread of these `ratios`.
pub fn pairs_for_one_percent(ratios: &[f64]) -> Option<f64> {
    let logs: Vec<f64> = ratios
        .iter()
        .filter(|r| **r > 0.0)
        .map(|r| r.ln())
        .collect();
    (logs.len() >= 2).then(|| {
        let (_, sd) = mean_sd(&logs);
        (1.96 * sd / 1.01f64.ln()).powi(2).ceil()
    })
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Two-sided 95 % quantile of Student's t with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= 30 => T[d - 1],
        d if d <= 60 => 2.00,
        _ => 1.96,
    }
}

/// The two program sets compared, each attached to both hooks of both traffic veths (ours with
/// the tracepoint programs).
struct Progs {
    ingress: OwnedFd,
    egress: OwnedFd,
    /// None when the agent ran without them (its log says why): the tc programs alone.
    tracepoints: Option<Tracepoints>,
    empty: OwnedFd,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Ours,
    Empty,
}

impl Progs {
    fn attach(&self, lab: &Lab, which: Which) -> Result<Vec<OwnedFd>> {
        sys::in_netns(&lab.node(), || {
            let mut links = match (&self.tracepoints, which) {
                (Some(t), Which::Ours) => t.attach()?,
                _ => Vec::new(),
            };
            for v in [lab::CLIENT_VETH, lab::SERVER_VETH] {
                let i = sys::ifindex(v).with_context(|| format!("{v} missing"))?;
                for (t, ours) in [
                    (bpf::BPF_TCX_INGRESS, &self.ingress),
                    (bpf::BPF_TCX_EGRESS, &self.egress),
                ] {
                    let p = if which == Which::Ours {
                        ours
                    } else {
                        &self.empty
                    };
                    links.push(bpf::tcx_link(p, i, t)?);
                }
            }
            Ok(links)
        })
    }

    /// The tc programs' run stats, and the drop program's (none for the empty program).
    fn stats(&self, which: Which) -> Result<(RunStats, RunStats)> {
        Ok(match which {
            Which::Ours => (
                bpf::run_stats(&self.ingress)? + bpf::run_stats(&self.egress)?,
                match &self.tracepoints {
                    Some(t) => t.stats()?.0,
                    None => RunStats::default(),
                },
            ),
            Which::Empty => (bpf::run_stats(&self.empty)?, RunStats::default()),
        })
    }
}

/// Takes the agent's programs (see the module comment).
fn take_programs(lab: &Lab, s: &Settings) -> Result<Progs> {
    let node = lab.node();
    let veths = [lab::CLIENT_VETH.to_string(), lab::SERVER_VETH.to_string()];
    let agent = Agent::start(&node, &[], &s.out_dir.join("agent-floor.log"))?;
    agent::wait_attached(&node, &veths, 1)?;
    let tracepoints = match Tracepoints::of_agent(agent.pid()) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("    warning: the tc programs only, not everything on: {e:#}");
            None
        }
    };
    let (ingress, egress, slots, saved) = sys::in_netns(&node, || {
        let c = sys::ifindex(lab::CLIENT_VETH).context("client veth")?;
        let first = |t| -> Result<OwnedFd> {
            let ids = bpf::tcx_programs(c, t)?;
            bpf::prog_fd_by_id(*ids.first().context("no program on the client veth")?)
        };
        let ingress = first(bpf::BPF_TCX_INGRESS)?;
        let egress = first(bpf::BPF_TCX_EGRESS)?;
        let (slots, len) = bpf::prog_map(&ingress, "PORT_SLOTS")?;
        let mut saved = Vec::new();
        for v in &veths {
            let i = sys::ifindex(v).with_context(|| format!("{v} missing"))?;
            let key = (i & len.saturating_sub(1)).to_ne_bytes();
            let mut value = [0u8; 8];
            // A port in the hash fallback has no entry to keep: it stays in the hash.
            if bpf::map_lookup(&slots, &key, &mut value)? && value[..4] == i.to_ne_bytes() {
                saved.push((key, value));
            }
        }
        Ok((ingress, egress, slots, saved))
    })?;
    drop(agent);
    sys::in_netns(&node, || {
        for v in &veths {
            let i = sys::ifindex(v).with_context(|| format!("{v} missing"))?;
            ensure!(bpf::tcx_counts(i) == (0, 0), "{v} still has programs");
        }
        Ok(())
    })?;
    for (key, value) in &saved {
        bpf::map_update(&slots, key, value)?;
    }
    Ok(Progs {
        ingress,
        egress,
        tracepoints,
        empty: bpf::load_empty()?,
    })
}

/// What one slice saw.
#[derive(Clone, Copy)]
struct Slice {
    /// Received per second (datagrams or bytes).
    rate: f64,
    received: u64,
    /// Of the configuration's tc programs.
    runs: RunStats,
    /// Of the drop program (ours only).
    drop_runs: RunStats,
    /// The load's two threads.
    cpu_ns: u64,
}

fn slice(lab: &Lab, p: &Progs, load: &Stream, which: Which, len: Duration) -> Result<Slice> {
    sys::check_interrupted()?;
    let links = p.attach(lab, which)?;
    // The first packets after an attach meet cold caches.
    std::thread::sleep(Duration::from_millis(50));
    let (n0, s0, c0, t0) = (
        load.received(),
        p.stats(which)?,
        load.cpu_ns()?,
        Instant::now(),
    );
    std::thread::sleep(len);
    let (n1, s1, c1, t1) = (
        load.received(),
        p.stats(which)?,
        load.cpu_ns()?,
        Instant::now(),
    );
    drop(links);
    load.check()?;
    Ok(Slice {
        rate: (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
        received: n1 - n0,
        runs: s1.0 - s0.0,
        drop_runs: s1.1 - s0.1,
        cpu_ns: c1 - c0,
    })
}

/// `pairs` pairs of slices under `kind`: per pair (ours / empty rate, ours, empty).
fn pairs(
    lab: &Lab,
    p: &Progs,
    kind: Kind,
    pairs: usize,
    len: Duration,
) -> Result<Vec<(f64, Slice, Slice)>> {
    let load = Stream::start(lab, kind)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut out = Vec::new();
    for i in 0..pairs {
        let (ours, empty) = if i % 2 == 0 {
            let a = slice(lab, p, &load, Which::Ours, len)?;
            (a, slice(lab, p, &load, Which::Empty, len)?)
        } else {
            let b = slice(lab, p, &load, Which::Empty, len)?;
            (slice(lab, p, &load, Which::Ours, len)?, b)
        };
        ensure!(
            ours.rate > 0.0 && empty.rate > 0.0,
            "no {kind:?} traffic arrived in a slice"
        );
        out.push((ours.rate / empty.rate, ours, empty));
    }
    load.finish()?;
    Ok(out)
}

fn ns_per_run(s: RunStats) -> Option<f64> {
    (s.cnt > 0).then(|| s.ns as f64 / s.cnt as f64)
}

pub fn run(lab: &Lab, s: &Settings) -> Result<Results> {
    let p = take_programs(lab, s)?;
    let (n_udp, n_tcp, n_live, len) = if s.quick {
        (6, 4, 2, Duration::from_millis(300))
    } else {
        (40, 20, 6, Duration::from_secs(1))
    };
    let mut r = Results {
        everything_on: p.tracepoints.is_some(),
        ..Results::default()
    };
    let show = |what: &str, v: &[f64]| {
        if let Some((g, lo, hi)) = ratio_ci(v) {
            eprintln!(
                "    {what}: agent's programs / empty {g:.4} (95 % CI {lo:.4}–{hi:.4}, {} pairs)",
                v.len()
            );
        }
    };
    for (kind, n, rate, cpu) in [
        (Kind::Udp, n_udp, &mut r.udp_ratios, &mut r.udp_cpu_ratios),
        (Kind::Tcp, n_tcp, &mut r.tcp_ratios, &mut r.tcp_cpu_ratios),
    ] {
        for (ratio, ours, empty) in pairs(lab, &p, kind, n, len)? {
            rate.push(ratio);
            // Received per CPU-second: ours / empty.
            let per_cpu = |x: Slice| x.received as f64 / x.cpu_ns.max(1) as f64;
            if ours.cpu_ns > 0 && empty.cpu_ns > 0 && empty.received > 0 {
                cpu.push(per_cpu(ours) / per_cpu(empty));
            }
        }
        show(&format!("{kind:?} per second"), rate);
        show(&format!("{kind:?} per CPU-second of the load"), cpu);
    }

    // Host-wide, so only for these slices; dropped on every way out of this block.
    let stats = bpf::enable_stats()?;
    let live = (|| -> Result<()> {
        for (kind, ours, empty) in [
            (Kind::Udp, &mut r.live_ns, &mut r.live_empty_ns),
            (Kind::Tcp, &mut r.live_tcp_ns, &mut r.live_empty_tcp_ns),
        ] {
            for (_, o, e) in pairs(lab, &p, kind, n_live, len)? {
                ours.extend(ns_per_run(o.runs));
                empty.extend(ns_per_run(e.runs));
                let n = o.received as f64;
                if kind == Kind::Udp && n > 0.0 {
                    r.runs_per_packet.push(o.runs.cnt as f64 / n);
                    if p.tracepoints.is_some() {
                        r.live_drop_ns.extend(ns_per_run(o.drop_runs));
                        r.live_drop_runs_per_packet.push(o.drop_runs.cnt as f64 / n);
                        r.live_drop_ns_per_packet.push(o.drop_runs.ns as f64 / n);
                    }
                }
            }
        }
        Ok(())
    })();
    drop(stats);
    live?;
    eprintln!(
        "    live ns per run: UDP {:.1} (empty {:.1}), TCP {:.1} (empty {:.1}); {:.2} runs per datagram",
        super::report::median(&r.live_ns),
        super::report::median(&r.live_empty_ns),
        super::report::median(&r.live_tcp_ns),
        super::report::median(&r.live_empty_tcp_ns),
        super::report::median(&r.runs_per_packet),
    );
    eprintln!(
        "    the drop program under UDP: {:.1} ns per run, {:.3} runs and {:.1} ns per datagram",
        super::report::median(&r.live_drop_ns),
        super::report::median(&r.live_drop_runs_per_packet),
        super::report::median(&r.live_drop_ns_per_packet),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_interval_brackets_the_geometric_mean_and_narrows_with_more_pairs() {
        let few = [0.98, 1.0, 0.99, 0.97];
        let (g, lo, hi) = ratio_ci(&few).unwrap();
        assert!(lo < g && g < hi);
        assert!((g - 0.9849).abs() < 1e-3, "{g}");
        let many: Vec<f64> = few.iter().cycle().take(40).copied().collect();
        let (_, lo2, hi2) = ratio_ci(&many).unwrap();
        assert!(hi2 - lo2 < (hi - lo) / 2.0);
        assert!(ratio_ci(&[1.0]).is_none());
        assert!((t975(1) - 12.706).abs() < 1e-9);
        assert!(pairs_for_one_percent(&few).unwrap() >= 1.0);
    }
}
