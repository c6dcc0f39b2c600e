//! `node-tracer top`: the live view, over a running agent (`--connect`) or programs of its own
//! (after a lab node on a host without pods).

use std::{io::IsTerminal as _, time::Duration};

use anyhow::Context as _;
use node_tracer::{
    agent::AgentOptions,
    node::{self, Node},
    top,
};

use super::lab::{host_has_pods, start_lab};
use crate::cli::{TopArgs, TopLab, node_options};

pub fn top(args: &TopArgs, log_level: log::LevelFilter) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.interval.is_finite() && args.interval > 0.0,
        "--interval must be a positive number of seconds"
    );
    let opts = top::TopOptions {
        interval: Duration::from_secs_f64(args.interval),
        filter: args.filter.clone(),
        sort: args.sort.clone(),
    };
    // Before any work: a standalone top would otherwise load and attach programs on every veth
    // of the node only to say it has nowhere to draw.
    if !std::io::stdout().is_terminal() {
        return Err(node_tracer::error::Error::NotATerminal.into());
    }
    if !args.connect.is_empty() {
        let mut agents = node_tracer::agents::agents(
            &args.connect,
            &args.credentials.credentials(),
            &node_tracer::agents::SystemResolver,
        )?;
        if agents.len() == 1 {
            let source = top::HttpSource::from(agents.remove(0));
            return Ok(top::run(opts, source)?);
        }
        return Ok(top::run(opts, top::NodesSource::new(agents))?);
    }
    // The view owns this thread; the node's tasks (churn, relabel) need workers of their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Say so before attaching anything or starting a lab.
    top::require_terminal()?;
    let mut agent = AgentOptions {
        listen: ([127, 0, 0, 1], 0).into(),
        node: node_options(&[], &args.probe, &args.sources, log_level),
        api: node_tracer::api::ApiOptions::default(),
    };
    let lab = match args.lab {
        TopLab::Always => true,
        TopLab::Auto => !rt.block_on(host_has_pods(&args.sources)),
        TopLab::Never => false,
    };
    let (node, lab) = rt.block_on(async {
        let lab = if lab {
            eprintln!(
                "node-tracer: no pods on this host: starting a lab node (--lab never: without one)"
            );
            Some(start_lab(&mut agent).await?)
        } else {
            None
        };
        match Node::start(&agent.node).await {
            Ok(n) => anyhow::Ok((n, lab)),
            Err(e) => {
                if let Some(l) = lab {
                    l.stop().await;
                }
                Err(anyhow::Error::new(e).context("attaching to the node's veths"))
            }
        }
    })?;
    let source = node::LocalSource {
        state: node.state.clone(),
    };
    let result = top::run(opts, source);
    rt.block_on(async {
        node.stop();
        if let Some(l) = lab {
            l.stop().await;
        }
    });
    Ok(result?)
}
