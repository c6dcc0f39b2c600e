//! `node-tracer peers`: one scan of the node, or one snapshot of a running agent, printed.

use anyhow::Context as _;
use node_tracer::{peers, pods, snapshot, topology};

use crate::cli::{ConnectArgs, SourceArgs};

pub async fn peers(
    json: bool,
    connect: Option<&str>,
    credentials: &ConnectArgs,
    sources: &SourceArgs,
) -> anyhow::Result<()> {
    if let Some(url) = connect {
        return from_agent(json, url, credentials).await;
    }
    let pods = pods::discover(&sources.pods()).await;
    let mut scan = sources.scan();
    scan.extra_netns_paths.extend(pods.netns_paths());
    let topo = topology::scan(&scan)
        .await
        .context("reading the host's links")?;
    let snap = snapshot::build(&topo, &pods, &std::collections::HashMap::new(), |_| false);
    if json {
        println!("{}", peers::to_json(&snap)?);
    } else {
        print!("{}", peers::to_table(&snap));
        print!("{}", peers::sources_line(pods.answered(), &snap));
    }
    Ok(())
}

/// The agent's own snapshot: its ports carry its counters, so the veths whose kernel counters
/// exceed what its hooks saw are flagged.
async fn from_agent(json: bool, url: &str, credentials: &ConnectArgs) -> anyhow::Result<()> {
    let agent = node_tracer_client::Agent::new(url, &credentials.credentials())
        .with_context(|| format!("--connect {url}"))?;
    let body = agent
        .get("/snapshot")
        .await
        .with_context(|| format!("reading the agent at {url}"))?;
    let snap: node_tracer::model::Snapshot =
        serde_json::from_slice(&body).with_context(|| format!("the snapshot of {url}"))?;
    if json {
        println!("{}", peers::to_json(&snap)?);
    } else {
        print!("{}", peers::to_table(&snap));
        print!("{}", peers::agent_line(url, &snap));
    }
    Ok(())
}
