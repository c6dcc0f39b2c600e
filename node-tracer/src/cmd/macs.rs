//! `node-tracer macs`: MACs per bridge port, from a running agent or programs of our own.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use futures::future::join_all;
use node_tracer::{agents, macs};
use node_tracer_client::Agent;

use crate::cli::{MacsArgs, node_options};

pub async fn macs(args: &MacsArgs, log_level: log::LevelFilter) -> anyhow::Result<()> {
    let source = if args.connect.is_empty() {
        anyhow::ensure!(
            args.duration.is_finite() && args.duration >= 0.0,
            "--duration must be a number of seconds"
        );
        // Said at once: watching for --duration first would only delay the same answer.
        if let Some(bridge) = &args.bridge
            && !is_bridge(bridge)
        {
            return Err(node_tracer::error::Error::NoSuchBridge(bridge.clone()).into());
        }
        let mut node = node_options(&args.interfaces, &args.probe, &args.sources, log_level);
        // MACs only: no tracepoint programs for them.
        node.probe.track_drops = false;
        macs::Source::Attach {
            node: Box::new(node),
            duration: Duration::from_secs_f64(args.duration),
        }
    } else {
        let mut agents = node_tracer::agents::agents(
            &args.connect,
            &args.credentials.credentials(),
            &node_tracer::agents::SystemResolver,
        )?;
        if agents.len() > 1 {
            return macs_nodes(args, agents).await;
        }
        macs::Source::Connect(agents.remove(0))
    };
    let snap = macs::collect(source).await.context("node-tracer macs")?;
    let report = macs::report(&snap, args.bridge.as_deref())?;
    if args.json {
        println!("{}", macs::to_json(&report)?);
    } else {
        print!("{}", macs::to_table(&report));
    }
    Ok(())
}

/// `macs` over several agents: one report per node (a MAC on two nodes is no duplicate), in
/// the order given; `--json` prints them as an array. An agent that does not answer, or lacks
/// `--bridge`, is named in a warning and left out; it fails only when every one is.
async fn macs_nodes(args: &MacsArgs, agents: Vec<Agent>) -> anyhow::Result<()> {
    let addresses: Vec<String> = agents.iter().map(agents::address).collect();
    let got = join_all(
        agents
            .into_iter()
            .map(|a| macs::collect(macs::Source::Connect(a))),
    )
    .await;
    let mut snaps = Vec::new();
    let mut failed = Vec::new();
    for (addr, r) in addresses.into_iter().zip(got) {
        match r {
            Ok(s) => snaps.push((addr, s)),
            Err(e) => {
                let e = node_tracer_client::one_line(&e);
                log::warn!("the agent at {addr} is left out: {e}");
                failed.push(format!("{addr}: {e}"));
            }
        }
    }
    anyhow::ensure!(
        !snaps.is_empty(),
        "no agent answered: {}",
        failed.join("; ")
    );
    let labels = agents::node_labels(
        &snaps
            .iter()
            .map(|(addr, s)| (s.node.clone(), addr.clone()))
            .collect::<Vec<_>>(),
    );
    let mut reports = Vec::new();
    for ((_, snap), label) in snaps.iter().zip(labels) {
        match macs::report(snap, args.bridge.as_deref()) {
            Ok(mut r) => {
                r.node = Some(label);
                reports.push(r);
            }
            Err(e) => log::warn!("node {label} is left out: {e}"),
        }
    }
    if reports.is_empty()
        && let Some(bridge) = &args.bridge
    {
        return Err(node_tracer::error::Error::NoSuchBridge(bridge.clone()).into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        let tables: Vec<String> = reports.iter().map(macs::to_table).collect();
        print!("{}", tables.join("\n"));
    }
    Ok(())
}

/// Whether this host (our network namespace, the one the programs would watch) has a bridge
/// named `name`: the kernel gives every bridge a `bridge/` directory in sysfs.
fn is_bridge(name: &str) -> bool {
    // Never a path: an interface name holds no '/' and is never "." or "..".
    let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    plain
        && Path::new("/sys/class/net")
            .join(name)
            .join("bridge")
            .is_dir()
}
