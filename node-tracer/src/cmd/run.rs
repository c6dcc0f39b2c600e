//! `node-tracer run`: the agent, after a lab node when `--lab` asks for one.

use anyhow::Context as _;
use node_tracer::agent::{self, AgentOptions};

use super::lab::{host_has_pods, start_lab};
use crate::cli::{LabWhen, RunArgs, node_options};

pub fn run(args: &RunArgs, log_level: log::LevelFilter) -> anyhow::Result<()> {
    let mut opts = AgentOptions {
        listen: args.listen,
        node: node_options(&args.interfaces, &args.probe, &args.sources, log_level),
        api: args.api.options(),
    };
    opts.node.node_name = args.node_name.clone().or_else(host_name);
    // Two workers: following veth churn (an attach is two RCU grace periods) must not queue
    // behind a relabel rescan or a /metrics read running on the other one. A small blocking
    // pool: scrapes and attaches queue rather than spawning a thread (and a malloc arena) each
    // when hundreds arrive at once.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let lab = if args.lab == Some(LabWhen::Always)
            || (args.lab == Some(LabWhen::Auto) && !host_has_pods(&args.sources).await)
        {
            Some(start_lab(&mut opts).await?)
        } else {
            if args.lab.is_some() {
                log::info!("this host has pods of its own: no lab needed");
            }
            None
        };
        let result = agent::run(opts).await.context("node-tracer run");
        if let Some(lab) = lab {
            lab.stop().await;
        }
        result
    })
}

/// The kernel's host name (what `hostname` prints); `None` when it cannot be read or is empty,
/// and then views name this agent by its address.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
