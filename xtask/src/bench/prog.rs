//! Per-packet cost of our ingress program, from BPF_PROG_TEST_RUN on the program the agent
//! loaded (its real maps, its counter entry for the veth), against an empty program that only
//! returns `TCX_NEXT`. Also checks the program is transparent: `TCX_NEXT` and the frame unchanged.
//!
//! Two ways: hot, 10^6 runs in the kernel's loop (everything the program touches stays in L1),
//! and cold, one run at a time with the CPU's caches flushed by the bench before each. On the
//! live path the whole network stack runs between two packets and evicts most of what a program
//! touched, so the cold figure is the one the live run time resembles; unlike the live figure it
//! does not move with the machine's other load, which makes it the one to compare builds by.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};

use super::{
    Settings,
    agent::{self, Agent},
    bpf,
    lab::{self, Lab},
    sys,
};

/// Per frame kind: ns per run of (ours, empty), one sample per round.
#[derive(Debug, Default)]
pub struct Results {
    pub ours: BTreeMap<&'static str, Vec<f64>>,
    pub empty: BTreeMap<&'static str, Vec<f64>>,
    /// ns of single runs on the UDP frame with the caches flushed first: (ours, empty).
    pub cold_ours: Vec<f64>,
    pub cold_empty: Vec<f64>,
}

/// Larger than this VM's L2 and most L3s: writing one byte a line evicts what a run left.
const FLUSH_BYTES: usize = 16 << 20;

/// Single runs per program in the cold measurement (alternated, flushed before each).
fn cold_samples(s: &Settings) -> usize {
    if s.quick { 200 } else { 2000 }
}

/// Evicts the CPU's data caches (and with them the L2's copy of code): one write per line.
fn flush(buf: &mut [u8], round: u8) {
    for b in buf.iter_mut().step_by(64) {
        *b = b.wrapping_add(round);
    }
    std::hint::black_box(&buf);
}

pub fn run(lab: &Lab, s: &Settings) -> Result<Results> {
    let node = lab.node();
    let agent = Agent::start(&node, &[], &s.out_dir.join("agent-prog.log"))?;
    agent::wait_attached(&node, &[lab::CLIENT_VETH.to_string()], 1)?;
    let frames = frames();
    let res = sys::in_netns(&node, || {
        let ifindex = sys::ifindex(lab::CLIENT_VETH).context("client veth")?;
        let ids = bpf::tcx_programs(ifindex, bpf::BPF_TCX_INGRESS)?;
        // Only the agent is attached in this phase: its program is the one on the hook.
        let id = *ids.first().context("no program on the client veth")?;
        let ours = bpf::prog_fd_by_id(id)?;
        let empty = bpf::load_empty()?;
        let mut r = Results::default();
        for _ in 0..s.rounds {
            for (name, frame) in &frames {
                sys::check_interrupted()?;
                // Alternate the two programs frame by frame: same cache and frequency state.
                let a = bpf::test_run(&ours, frame, ifindex, s.repeat)?;
                let b = bpf::test_run(&empty, frame, ifindex, s.repeat)?;
                ensure!(
                    a.retval == bpf::TCX_NEXT && a.unchanged,
                    "our program is not transparent on a {name} frame: returned {} (want TCX_NEXT), frame unchanged: {}",
                    a.retval as i32,
                    a.unchanged
                );
                r.ours.entry(name).or_default().push(f64::from(a.ns));
                r.empty.entry(name).or_default().push(f64::from(b.ns));
            }
        }
        let udp = frames
            .iter()
            .find(|(name, _)| *name == "udp")
            .map(|(_, f)| f.clone())
            .context("no UDP frame")?;
        let mut buf = vec![0u8; FLUSH_BYTES];
        for i in 0..cold_samples(s) {
            if i % 100 == 0 {
                sys::check_interrupted()?;
            }
            // One run's time is a few hundred ns against a timer of 1 ns: the median of many
            // single runs is steady, and alternating keeps both programs under the same drift.
            flush(&mut buf, i as u8);
            r.cold_ours
                .push(f64::from(bpf::test_run(&ours, &udp, ifindex, 1)?.ns));
            flush(&mut buf, i as u8);
            r.cold_empty
                .push(f64::from(bpf::test_run(&empty, &udp, ifindex, 1)?.ns));
        }
        Ok(r)
    });
    drop(agent);
    res
}

/// 64-byte test frames (no FCS), one per parse path of the programs.
pub fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let eth = |ty: u16| {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        f.extend_from_slice(&ty.to_be_bytes());
        f
    };
    let ipv4 = |proto: u8, l4: &[u8]| {
        let mut f = eth(0x0800);
        let total = (20 + l4.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(l4);
        f
    };
    let udp = [0x9c, 0x40, 0x14, 0x51, 0, 8, 0, 0];
    let icmp = [8, 0, 0, 0, 0, 1, 0, 1];
    let mut tcp = vec![
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff,
    ];
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    let mut ipv6 = eth(0x86dd);
    ipv6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    ipv6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ipv6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ipv6.extend_from_slice(&udp);
    let mut out = vec![
        ("udp", ipv4(17, &udp)),
        ("icmp", ipv4(1, &icmp)),
        ("tcp", ipv4(6, &tcp)),
        ("arp", arp),
        ("ipv6_udp", ipv6),
    ];
    for (_, f) in &mut out {
        f.resize(64, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_64_bytes_with_the_right_ethertype() {
        for (name, f) in frames() {
            assert_eq!(f.len(), 64, "{name}");
            let ty = u16::from_be_bytes([f[12], f[13]]);
            assert!(matches!(ty, 0x0800 | 0x0806 | 0x86dd), "{name}");
        }
        let f = &frames()[0].1;
        assert_eq!((f[14], f[23]), (0x45, 17));
    }
}
