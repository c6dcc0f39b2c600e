//! `/metrics` while veths churn: the latency of scrapes made during a burst of attaches, next to
//! the quiet latency just before it on the same node. A scrape reads the maps and the published
//! topology without the attach side's lock, so the burst may slow it only by the CPU it takes.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{agent, sys};

#[derive(Debug, Default)]
pub struct Results {
    /// Scrapes back to back on a quiet node.
    pub quiet_ms: Vec<f64>,
    /// Scrapes back to back while the burst's veths are created and attached.
    pub churn_ms: Vec<f64>,
    /// Veths in the burst.
    pub burst: usize,
}

/// Quiet scrapes, then scrapes during a burst: one veth into each of `pods` (empty pod
/// namespaces), all created at once, scraped until every one is attached. The burst's veths are
/// deleted again at the end.
pub fn run(node: &str, pods: &[String], quiet: usize) -> Result<Results> {
    let addr = agent::LISTEN.parse().context("listen address")?;
    let scrape = || -> Result<f64> {
        let (status, _, took) = sys::http_get(addr, "/metrics")?;
        anyhow::ensure!(status == 200, "GET /metrics: HTTP {status}");
        Ok(took.as_secs_f64() * 1e3)
    };
    let quiet_ms = sys::in_netns(node, || (0..quiet).map(|_| scrape()).collect())?;
    let veths: Vec<String> = (0..pods.len()).map(|i| format!("ntbb{i}")).collect();
    let done = AtomicBool::new(false);
    let (churn_ms, burst) = std::thread::scope(|sc| {
        let scraper = sc.spawn(|| {
            sys::in_netns(node, || {
                let mut out = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    out.push(scrape()?);
                }
                Ok(out)
            })
        });
        let burst = (|| {
            let lines: Vec<String> = veths
                .iter()
                .zip(pods)
                .map(|(v, ns)| format!("link add {v} type veth peer name eth0 netns {ns}"))
                .collect();
            sys::ip_batch(Some(node), &lines)?;
            agent::wait_hooked(node, &veths)
        })();
        done.store(true, Ordering::Relaxed);
        let churn = scraper
            .join()
            .map_err(|_| anyhow::anyhow!("the scraper thread panicked"))?;
        anyhow::Ok((churn, burst))
    })?;
    let del: Vec<String> = veths.iter().map(|v| format!("link del {v}")).collect();
    let deleted = sys::ip_batch(Some(node), &del);
    let took: Duration = burst.context("the burst of veths")?;
    deleted.context("deleting the burst's veths")?;
    let r = Results {
        quiet_ms,
        churn_ms: churn_ms.context("scraping during the burst")?,
        burst: pods.len(),
    };
    eprintln!(
        "    /metrics p99: {:.1} ms quiet, {:.1} ms while {} veths attached ({} scrapes in {:.2} s)",
        super::report::percentile(&r.quiet_ms, 99.0),
        super::report::percentile(&r.churn_ms, 99.0),
        r.burst,
        r.churn_ms.len(),
        took.as_secs_f64()
    );
    Ok(r)
}
