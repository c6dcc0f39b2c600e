//! What the drop and retransmit programs cost per event (issue #19). With BPF_ENABLE_STATS held,
//! the bench makes a known number of drops and of retransmits in its own pods while the agent
//! runs, and reads the run time and run count of the agent's two tracepoint programs.
//!
//! - Drops: UDP datagrams from the client pod to a port nothing listens on in the server pod.
//!   Each one dies in the server's namespace with reason `no_socket`, and the server's
//!   `UdpNoPorts` counts it: that counter is the number of events made.
//! - Retransmits: the floor's TCP load with a `statistic` DROP rule on 1 % of what arrives in
//!   the server pod (its own INPUT chain; a drop in the sender's OUTPUT is re-sent as new data,
//!   not retransmitted). The client's `TcpRetransSegs` counts the segments sent again.
//!
//! Both tracepoints are host-wide: drops and retransmits elsewhere on this machine during a
//! sample run the programs too, so runs per event made carry that noise. What the programs
//! counted for the bench's own namespace is exact, and is shown as counted per event made.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    Settings,
    agent::{self, Agent},
    bpf::{self, RunStats},
    lab::{self, Lab},
    stream::{self, Kind, Stream},
    sys,
    tracepoints::{Tracepoints, netns_inode},
};

/// Nothing listens here in the server pod (iperf3 has 5201, the floor's load 5301).
const CLOSED_PORT: u16 = 5399;
/// Share of the TCP load's packets the server's INPUT chain drops.
const LOSS: &str = "0.01";

#[derive(Debug, Default)]
pub struct Results {
    /// Per sample: ns per run of the drop program, its runs per drop made, what it counted in
    /// the server's namespace per drop made, and what it counted anywhere per run (the share of
    /// runs that were drops by its filter, not consumed packets).
    pub drop_ns: Vec<f64>,
    pub drop_runs_per_event: Vec<f64>,
    pub drop_counted_per_event: Vec<f64>,
    pub drop_counted_per_run: Vec<f64>,
    /// Per sample: ns per run of the retransmit program, its runs per segment retransmitted
    /// (a run sees one skb, which may carry several segments), and the segments it counted in
    /// the client's namespace per segment the kernel counted.
    pub retx_ns: Vec<f64>,
    pub retx_runs_per_segment: Vec<f64>,
    pub retx_counted_per_segment: Vec<f64>,
}

/// A counter of `/proc/net/snmp` (`Udp` `NoPorts`, `Tcp` `RetransSegs`) of namespace `netns`.
fn snmp(netns: &str, group: &str, field: &str) -> Result<u64> {
    sys::in_netns(netns, || {
        // thread-self: /proc/self/net would be the namespace of the process's first thread.
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp")
            .context("read /proc/thread-self/net/snmp")?;
        snmp_field(&text, group, field)
            .with_context(|| format!("no {group} {field} in /proc/net/snmp of {netns}"))
    })
}

/// `field` of `group` in the text of `/proc/net/snmp`: a line of names, then one of values.
fn snmp_field(text: &str, group: &str, field: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|x| x == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// What one sample saw: the program's runs, the events the kernel counted, and what the
/// program counted (anywhere, and in the bench's namespace).
struct Sample {
    runs: RunStats,
    made: u64,
    counted_all: u64,
    counted_ours: u64,
}

impl Sample {
    fn ns_per_run(&self) -> Option<f64> {
        (self.runs.cnt > 0).then(|| self.runs.ns as f64 / self.runs.cnt as f64)
    }

    /// `x` per event made.
    fn per_event(&self, x: u64) -> Option<f64> {
        (self.made > 0).then(|| x as f64 / self.made as f64)
    }
}

/// `n` datagrams to the server's closed port, paced so that none is lost on the way (a veth's
/// backlog holds 1,000): each one is a `no_socket` drop in the server pod.
fn drop_sample(lab: &Lab, tp: &Tracepoints, server_ns: u32, n: u64) -> Result<Sample> {
    let server = lab.server();
    let no_ports = || snmp(&server, "Udp", "NoPorts");
    let (made0, stats0, counted0) = (no_ports()?, tp.stats()?.0, tp.dropped(server_ns)?);
    sys::in_netns(&lab.client(), || {
        let sock = UdpSocket::bind("0.0.0.0:0").context("bind the drop sender")?;
        let to = format!("{}:{CLOSED_PORT}", lab::SERVER_IP);
        for i in 0..n {
            // The socket is not connected: an ICMP error coming back never fails a send.
            let _ = sock.send_to(&[0x5a; 18], &to);
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })?;
    // Until the server counted them all, or nothing moved for a second (a datagram lost on the
    // way is not an event to wait for: it is simply not counted as made).
    let (mut made, mut moved) = (no_ports()?, Instant::now());
    while made - made0 < n && moved.elapsed() < Duration::from_secs(1) {
        sys::sleep(Duration::from_millis(20))?;
        let now = no_ports()?;
        if now != made {
            (made, moved) = (now, Instant::now());
        }
    }
    let (stats1, counted1) = (tp.stats()?.0, tp.dropped(server_ns)?);
    Ok(Sample {
        runs: stats1 - stats0,
        made: made - made0,
        counted_all: counted1.0 - counted0.0,
        counted_ours: counted1.1 - counted0.1,
    })
}

/// The server pod's INPUT chain drops a share of the TCP load's packets while this lives.
struct Loss {
    netns: String,
    rule: String,
}

impl Loss {
    fn add(netns: &str) -> Result<Self> {
        let rule = format!(
            "INPUT -p tcp --dport {} -m statistic --mode random --probability {LOSS} -j DROP",
            stream::PORT
        );
        sys::sh(&format!("ip netns exec {netns} iptables -w -A {rule}"))
            .context("iptables in the server pod (is iptables installed? cargo xtask setup)")?;
        Ok(Self {
            netns: netns.to_string(),
            rule,
        })
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        // The namespace goes with the lab anyway; this keeps the floor part's later loads clean.
        let _ = sys::sh(&format!(
            "ip netns exec {} iptables -w -D {}",
            self.netns, self.rule
        ));
    }
}

/// The TCP load for `len` under the loss rule: retransmits by the client.
fn retx_sample(lab: &Lab, tp: &Tracepoints, client_ns: u32, len: Duration) -> Result<Sample> {
    let client = lab.client();
    let retrans = || snmp(&client, "Tcp", "RetransSegs");
    let _loss = Loss::add(&lab.server())?;
    let load = Stream::start(lab, Kind::Tcp)?;
    // Read inside the running load: a closing connection retransmits on after the last read.
    sys::sleep(Duration::from_millis(200))?;
    let (made0, stats0, counted0) = (retrans()?, tp.stats()?.1, tp.retransmitted(client_ns)?);
    sys::sleep(len)?;
    let (made1, stats1, counted1) = (retrans()?, tp.stats()?.1, tp.retransmitted(client_ns)?);
    load.check()?;
    load.finish()?;
    Ok(Sample {
        runs: stats1 - stats0,
        made: made1 - made0,
        counted_all: counted1.0 - counted0.0,
        counted_ours: counted1.1 - counted0.1,
    })
}

pub fn run(lab: &Lab, s: &Settings) -> Result<Results> {
    let (samples, drops, len) = if s.quick {
        (2, 5_000, Duration::from_secs(1))
    } else {
        (5, 50_000, Duration::from_secs(3))
    };
    let node = lab.node();
    let agent = Agent::start(&node, &[], &s.out_dir.join("agent-events.log"))?;
    agent::wait_attached(&node, &[lab::CLIENT_VETH.to_string()], 1)?;
    let tp = Tracepoints::of_agent(agent.pid())?;
    let (server_ns, client_ns) = (netns_inode(&lab.server())?, netns_inode(&lab.client())?);
    let mut r = Results::default();
    // Host-wide, so only for these samples; dropped on every way out of this function.
    let _stats = bpf::enable_stats()?;
    for _ in 0..samples {
        sys::check_interrupted()?;
        let d = drop_sample(lab, &tp, server_ns, drops)?;
        r.drop_ns.extend(d.ns_per_run());
        r.drop_runs_per_event.extend(d.per_event(d.runs.cnt));
        r.drop_counted_per_event.extend(d.per_event(d.counted_ours));
        if d.runs.cnt > 0 {
            r.drop_counted_per_run
                .push(d.counted_all as f64 / d.runs.cnt as f64);
        }
        eprintln!(
            "    {} drops made: the drop program ran {} times, {:.0} ns a run; it counted {} in the server pod",
            d.made,
            d.runs.cnt,
            d.ns_per_run().unwrap_or(f64::NAN),
            d.counted_ours
        );
        let t = retx_sample(lab, &tp, client_ns, len)?;
        r.retx_ns.extend(t.ns_per_run());
        r.retx_runs_per_segment.extend(t.per_event(t.runs.cnt));
        r.retx_counted_per_segment
            .extend(t.per_event(t.counted_ours));
        eprintln!(
            "    {} segments retransmitted: the retransmit program ran {} times, {:.0} ns a run; it counted {} in the client pod ({} anywhere)",
            t.made,
            t.runs.cnt,
            t.ns_per_run().unwrap_or(f64::NAN),
            t.counted_ours,
            t.counted_all
        );
    }
    drop(agent);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_fields_are_read_by_name() {
        let text = "Tcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 42 0\n\
                    Udp: InDatagrams NoPorts\nUdp: 7 1000\nUdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        assert_eq!(snmp_field(text, "Tcp", "RetransSegs"), Some(42));
        assert_eq!(snmp_field(text, "Udp", "NoPorts"), Some(1000));
        assert_eq!(snmp_field(text, "Udp", "Nope"), None);
        assert_eq!(snmp_field("", "Udp", "NoPorts"), None);
    }
}
