//! `node-tracer peers`: one scan of the node, printed.

use anyhow::Context as _;
use node_tracer::{peers, pods, snapshot, topology};

use crate::cli::SourceArgs;

pub async fn peers(json: bool, sources: &SourceArgs) -> anyhow::Result<()> {
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
