//! `node-tracer macs`: MACs per bridge port, from a running agent or programs of our own.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use node_tracer::macs;

use crate::cli::{MacsArgs, node_options};

pub async fn macs(args: &MacsArgs, log_level: log::LevelFilter) -> anyhow::Result<()> {
    let source = if let Some(url) = &args.connect {
        macs::Source::Connect {
            url: url.clone(),
            creds: args.credentials.credentials(),
        }
    } else {
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
