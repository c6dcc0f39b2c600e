//! The agent's drop and retransmit programs (`tp_btf` on `kfree_skb` and `tcp_retransmit_skb`):
//! found among the descriptors a running agent holds, so they are exactly its programs and not
//! those of another agent on this machine; attached again by the bench once the agent is gone
//! (the floor part); and what they counted, read from their own maps.

use std::os::{fd::OwnedFd, unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result};

use super::bpf::{self, RunStats};

/// `node_tracer_common::PROG_KFREE_SKB` and `PROG_TCP_RETX` (xtask does not build the eBPF
/// side's crates).
const DROP_PROG: &str = "nt_kfree_skb";
const RETX_PROG: &str = "nt_tcp_retx";

pub struct Tracepoints {
    pub drops: OwnedFd,
    pub retransmits: OwnedFd,
    drop_stats: OwnedFd,
    retx_stats: OwnedFd,
}

impl Tracepoints {
    /// The two programs of the agent running as `pid`, from the program and link descriptors it
    /// holds (their `/proc` fdinfo names the program id).
    pub fn of_agent(pid: i32) -> Result<Self> {
        let dir = format!("/proc/{pid}/fd");
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
            let entry = entry?;
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            let t = target.to_string_lossy();
            if t != "anon_inode:bpf-prog" && t != "anon_inode:bpf-link" {
                continue;
            }
            let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            let Ok(text) = std::fs::read_to_string(&info) else {
                continue;
            };
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            if let Some(id) = id.filter(|i| !ids.contains(i)) {
                ids.push(id);
            }
        }
        let (mut drops, mut retransmits) = (None, None);
        for id in ids {
            let fd = bpf::prog_fd_by_id(id)?;
            match bpf::prog_name(&fd)?.as_str() {
                DROP_PROG => drops = Some(fd),
                RETX_PROG => retransmits = Some(fd),
                _ => {}
            }
        }
        let missing = |what: &str| {
            format!("the agent (pid {pid}) holds no {what} program: did it turn that part off?")
        };
        let drops = drops.with_context(|| missing(DROP_PROG))?;
        let retransmits = retransmits.with_context(|| missing(RETX_PROG))?;
        Ok(Self {
            drop_stats: bpf::prog_map(&drops, "DROP_STATS")?.0,
            retx_stats: bpf::prog_map(&retransmits, "RETX_STATS")?.0,
            drops,
            retransmits,
        })
    }

    /// Both programs on their tracepoints (host-wide) until the links are dropped.
    pub fn attach(&self) -> Result<Vec<OwnedFd>> {
        Ok(vec![
            bpf::tracepoint_link(&self.drops).context("attach the drop program")?,
            bpf::tracepoint_link(&self.retransmits).context("attach the retransmit program")?,
        ])
    }

    /// Run statistics of (drop program, retransmit program).
    pub fn stats(&self) -> Result<(RunStats, RunStats)> {
        Ok((
            bpf::run_stats(&self.drops)?,
            bpf::run_stats(&self.retransmits)?,
        ))
    }

    /// Drops counted so far: all of them, and those in network namespace `netns` (an inode).
    pub fn dropped(&self, netns: u32) -> Result<(u64, u64)> {
        // DropKey: ifindex, netns, reason, pad (u32 each).
        let all = bpf::percpu_sum(&self.drop_stats, |_| true)?;
        let ours = bpf::percpu_sum(&self.drop_stats, |k| {
            k.get(4..8) == Some(&netns.to_ne_bytes())
        })?;
        Ok((all, ours))
    }

    /// Retransmitted segments counted so far: all, and those of namespace `netns`.
    pub fn retransmitted(&self, netns: u32) -> Result<(u64, u64)> {
        let all = bpf::percpu_sum(&self.retx_stats, |_| true)?;
        let ours = bpf::percpu_sum(&self.retx_stats, |k| k == netns.to_ne_bytes())?;
        Ok((all, ours))
    }
}

/// Inode of the lab's named network namespace `name`, as the programs key it.
pub fn netns_inode(name: &str) -> Result<u32> {
    let path = format!("/run/netns/{name}");
    let ino = std::fs::metadata(&path)
        .with_context(|| format!("stat {path}"))?
        .ino();
    u32::try_from(ino).with_context(|| format!("{path}: inode {ino} does not fit 32 bits"))
}
