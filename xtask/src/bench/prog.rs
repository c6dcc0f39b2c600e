//! Per-packet cost of our ingress program, from BPF_PROG_TEST_RUN on the program the agent
//! loaded (its real maps, its counter entry for the veth), against an empty program that only
//! returns `TCX_NEXT`. Also checks the program is transparent: `TCX_NEXT` and the frame unchanged.

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
}

pub fn run(lab: &Lab, s: &Settings) -> Result<Results> {
    let node = lab.node();
    let agent = Agent::start(&node, &[], &s.out_dir.join("agent-prog.log"))?;
    agent::wait_attached(&node, &[lab::CLIENT_VETH.to_string()], 1)?;
    let frames = bpf::frames();
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
        Ok(r)
    });
    drop(agent);
    res
}
