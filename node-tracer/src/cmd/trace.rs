//! `node-tracer trace icmp`: which veth sees each ICMP packet, through a running agent or
//! programs of our own.

use std::time::Duration;

use anyhow::Context as _;
use node_tracer::{
    node::{self, Node, NodeOptions, lock},
    shutdown, trace,
};

use crate::cli::{TraceArgs, node_options};

pub async fn icmp(args: &TraceArgs, log_level: log::LevelFilter) -> anyhow::Result<()> {
    let filter = trace::Filter {
        pods: args.pod.clone(),
        veths: args.veth.clone(),
        addresses: args
            .address
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?,
        types: args
            .types
            .iter()
            .map(|t| t.parse())
            .collect::<Result<_, _>>()?,
    };
    let timeout = args
        .timeout
        .map(|t| {
            anyhow::ensure!(
                t.is_finite() && t > 0.0,
                "--timeout must be a positive number of seconds"
            );
            Ok(Duration::from_secs_f64(t))
        })
        .transpose()?;
    let opts = trace::TraceOptions {
        json: args.json,
        count: args.count,
        timeout,
        filter,
        write: args.write.clone(),
        summary: !args.no_summary,
    };
    if !args.connect.is_empty() {
        let mut agents = node_tracer::agents::agents(
            &args.connect,
            &args.credentials.credentials(),
            &node_tracer::agents::SystemResolver,
        )?;
        let stats = if agents.len() == 1 {
            trace_icmp_remote(agents.remove(0), &opts).await?
        } else {
            trace_icmp_nodes(agents, &opts).await?
        };
        if stats.lost > 0 {
            log::warn!("{} events were lost", stats.lost);
        }
        return Ok(());
    }
    // Attach only where the filter could match anything, when it names veths exactly.
    let exact: Vec<String> = args
        .veth
        .iter()
        .filter(|v| !v.contains('*') && v.parse::<u32>().is_err())
        .cloned()
        .collect();
    let only = if exact.len() == args.veth.len() {
        exact
    } else {
        Vec::new()
    };
    let mut node = node_options(&only, &args.probe, &args.sources, log_level);
    // A trace shows packets, not drops: no tracepoint programs for it.
    node.probe.track_drops = false;
    if only.is_empty() && !(args.pod.is_empty() && args.veth.is_empty()) {
        let f = opts.filter.clone();
        node.attach_filter = Some(node::PortFilter(std::sync::Arc::new(move |p| {
            f.could_match_port(p)
        })));
    }
    let stats = trace_icmp(&node, &opts).await?;
    if stats.lost > 0 {
        log::warn!("{} events were lost (ring buffer full)", stats.lost);
    }
    Ok(())
}

/// The filter's pod and veth part as the user wrote it (`--pod a/* --veth x`); None when it has
/// none, so every veth is traced.
fn port_filter(filter: &trace::Filter) -> Option<String> {
    let flags: Vec<String> = (filter.pods.iter().map(|p| format!("--pod {p}")))
        .chain(filter.veths.iter().map(|v| format!("--veth {v}")))
        .collect();
    (!flags.is_empty()).then(|| flags.join(" "))
}

async fn trace_icmp(
    node: &NodeOptions,
    opts: &trace::TraceOptions,
) -> anyhow::Result<trace::TraceStats> {
    let node = Node::start(node)
        .await
        .context("attaching to the node's veths")?;
    // A pod or veth filter that matches no veth now would trace "on 0 veths" until --timeout
    // and say nothing; a pod that starts later is only a reason to start the trace later. (An
    // interface named exactly is attached whatever it is, and traced.)
    if let Some(what) = port_filter(&opts.filter)
        && lock(&node.state).probe.attached().next().is_none()
        && !node
            .snapshot()
            .ports
            .iter()
            .any(|p| opts.filter.could_match_port(p))
    {
        node.stop();
        anyhow::bail!("nothing to trace: no veth on this node matches {what}");
    }
    let result = async {
        let ring = lock(&node.state).probe.take_events()?;
        let state = node.state.clone();
        let lost = Box::new(move || {
            lock(&state)
                .probe
                .program_stats()
                .map_or(0, |s| s[node_tracer_common::STAT_EVENTS_LOST as usize])
        });
        let mut events = trace::RingBufSource::new(ring, lost)?;
        lock(&node.state).probe.set_tracing(true)?;
        log::info!(
            "tracing ICMP on {} veths; Ctrl-C to stop",
            lock(&node.state).probe.attached().count()
        );
        let state = node.state.clone();
        let ports = move |ifindex: u32| lock(&state).port(ifindex);
        let mut stdout = std::io::stdout().lock();
        let mut tracer = trace::Tracer::new(opts, &events)?;
        // Ctrl-C or SIGTERM end the trace the same way: summary written, pcapng complete.
        tokio::select! {
            r = tracer.pump(&mut events, &ports, &mut stdout) => { r?; }
            r = shutdown::wait() => { r.context("waiting for a stop signal")?; }
        }
        // Stop the programs writing, then report what they wrote before the stop and the pump
        // had not read yet (Ctrl-C or --timeout can come while the ring holds events).
        lock(&node.state).probe.set_tracing(false)?;
        tracer.drain(&mut events, &ports, &mut stdout)?;
        let stats = tracer.finish(&events, &mut stdout)?;
        anyhow::Ok(stats)
    }
    .await;
    // Per-packet events exist only while someone traces (detaching next ends them anyway,
    // so a failure here is only worth a line).
    if let Err(e) = lock(&node.state).probe.set_tracing(false) {
        log::warn!(
            "turning trace events off: {}",
            node_tracer_client::one_line(&e)
        );
    }
    node.stop();
    result
}

/// `trace icmp --connect URL`: the events of a running agent's programs, labelled with its
/// snapshot (see [`trace::AgentTrace`]).
async fn trace_icmp_remote(
    agent: node_tracer_client::Agent,
    opts: &trace::TraceOptions,
) -> anyhow::Result<trace::TraceStats> {
    let url = agent.url("");
    // The client's errors name the agent already.
    let mut events = trace::AgentTrace::from_agent(agent).await?;
    let ports = events.ports();
    log::info!(
        "tracing ICMP on {} veths through the agent at {url}; Ctrl-C to stop",
        events.attached
    );
    let mut stdout = std::io::stdout().lock();
    // The agent sends wall-clock timestamps: its monotonic clock may not be ours.
    let mut tracer = trace::Tracer::new(opts, &events)?
        .with_clock(|ns| std::time::SystemTime::UNIX_EPOCH + Duration::from_nanos(ns));
    let ended = tokio::select! {
        r = tracer.pump(&mut events, &ports, &mut stdout) => r? == trace::Stop::SourceEnded,
        r = shutdown::wait() => { r.context("waiting for a stop signal")?; false }
    };
    tracer.drain(&mut events, &ports, &mut stdout)?;
    let stats = tracer.finish(&events, &mut stdout)?;
    if ended {
        anyhow::bail!(
            "the agent at {url} ended the trace stream{}",
            events.error().map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(stats)
}

/// `trace icmp` with several agents: their streams merged, each line and hop with its node. An
/// agent that goes away is named in a warning (see [`trace::NodesTrace`]) and the others go on;
/// the trace fails only when none is left.
async fn trace_icmp_nodes(
    agents: Vec<node_tracer_client::Agent>,
    opts: &trace::TraceOptions,
) -> anyhow::Result<trace::TraceStats> {
    let mut events = trace::NodesTrace::connect(agents)
        .await
        .map_err(anyhow::Error::msg)?;
    let ports = events.ports();
    log::info!(
        "tracing ICMP on {} veths through the agents of {}; Ctrl-C to stop",
        events.attached,
        events.labels().join(", ")
    );
    let mut stdout = std::io::stdout().lock();
    let mut tracer = trace::Tracer::new(opts, &events)?
        .with_clock(|ns| std::time::SystemTime::UNIX_EPOCH + Duration::from_nanos(ns));
    let ended = tokio::select! {
        r = tracer.pump(&mut events, &ports, &mut stdout) => r? == trace::Stop::SourceEnded,
        r = shutdown::wait() => { r.context("waiting for a stop signal")?; false }
    };
    tracer.drain(&mut events, &ports, &mut stdout)?;
    let stats = tracer.finish(&events, &mut stdout)?;
    anyhow::ensure!(!ended, "every agent ended its trace stream");
    Ok(stats)
}
