//! The attach side's background work: attaching and detaching as veths come and go, relabelling
//! after rescans, fast-start's moves to tcx, and the programs' own log lines.

use std::{sync::Arc, time::Duration};

use tokio::{io::unix::AsyncFd, sync::Notify};

use super::{Model, NodeOptions, Shared, WorkCounters, lock, reconcile};
use crate::{
    pods,
    probe::AttachMode,
    topology::{self, LinkEvent},
};

/// Attaches and detaches as veths come and go; every change also schedules a relabel.
pub(super) async fn follow_links(
    mut watcher: topology::LinkWatcher,
    state: Arc<Shared>,
    relabel: Arc<Notify>,
) {
    while let Some(ev) = watcher.next().await {
        if let LinkEvent::Added { ifindex, name } = &ev {
            // Attach at once (counting must not wait for the slower pod lookup), on a blocking
            // thread: a tcx attach waits for an RCU grace period.
            let (st, ifindex, name) = (state.clone(), *ifindex, name.clone());
            let rescan = tokio::task::spawn_blocking(move || {
                WorkCounters::bump(&st.read.counters.link_events);
                let mut s = lock(&st);
                // With a filter, the port is judged once labelled, by the relabel pass.
                let wanted = (s.only.is_empty() && s.filter.is_none()) || s.only.contains(&name);
                if wanted {
                    s.attach_one(ifindex, &name);
                    log::debug!("attached to new veth {name} ({ifindex})");
                }
                // With --interface, other veths' churn is none of our business.
                s.only.is_empty() || s.only.contains(&name)
            })
            .await
            .unwrap_or(true);
            if rescan {
                relabel.notify_one();
            }
            continue;
        }
        WorkCounters::bump(&state.read.counters.link_events);
        {
            let mut s = lock(&state);
            match ev {
                LinkEvent::Added { .. } => {}
                LinkEvent::Removed { ifindex, name } => {
                    // Its series go at the next scrape, not at the next rescan.
                    s.remove_port(ifindex);
                    log::debug!("veth {name} ({ifindex}) removed");
                }
                LinkEvent::PortChanged { ifindex, name } => {
                    // The rescan below lists it (and attaches it, with --attach-uplinks).
                    log::debug!("uplink {name} ({ifindex}) joined or left a bridge");
                }
                LinkEvent::Resync => {
                    WorkCounters::bump(&state.read.counters.netlink_resyncs);
                    s.rescan_all = true;
                    log::warn!("netlink socket overran; rescanning all links");
                }
            }
        }
        relabel.notify_one();
        // std's mutex is not fair: without a pause, a burst of hundreds of events would take
        // the lock back-to-back and starve the attaches waiting for it.
        tokio::task::yield_now().await;
    }
}

/// Rescans topology and pods after link changes (debounced), and retries a few times for veths
/// whose pod is not known yet (CNI creates the veth before the runtime records the pod) or whose
/// peer has no address yet (CNI adds it after the veth). A rescan enters only the namespaces
/// whose veths changed: see [`topology::Scanner`].
pub(super) async fn relabel_loop(
    state: Arc<Shared>,
    relabel: Arc<Notify>,
    opts: NodeOptions,
    mut scanner: topology::Scanner,
) {
    const RETRIES: [u64; 4] = [250, 1000, 3000, 10_000];
    let mut retry = 0usize;
    loop {
        let wait = if retry < RETRIES.len() {
            Duration::from_millis(RETRIES[retry])
        } else {
            Duration::from_hours(1)
        };
        tokio::select! {
            () = relabel.notified() => { retry = 0; settle(&relabel).await; }
            () = tokio::time::sleep(wait) => {
                if retry >= RETRIES.len() { continue; }
                retry += 1;
            }
        }
        if std::mem::take(&mut lock(&state).rescan_all) {
            scanner.forget();
        }
        let pods = pods::discover(&opts.pods).await;
        let mut scan = opts.scan.clone();
        scan.extra_netns_paths.extend(pods.netns_paths());
        let topology = match scanner.scan(&scan).await {
            Ok(t) => t,
            Err(e) => {
                crate::failures::count("rescan");
                log::warn!("rescan: {}", node_tracer_client::one_line(&e));
                continue;
            }
        };
        let unlabelled = topology.ports.iter().any(|p| {
            p.peer
                .as_ref()
                .and_then(|x| x.netns_inode)
                .is_some_and(|i| pods.lookup(i).is_none())
        });
        state
            .read
            .counters
            .netns_visits
            .store(scanner.visits(), std::sync::atomic::Ordering::Relaxed);
        lock(&state).publish(Model { topology, pods });
        // Attaching blocks (~14 ms per tcx attach): off the async thread that serves HTTP.
        let st = state.clone();
        if tokio::task::spawn_blocking(move || reconcile(&st))
            .await
            .is_err()
        {
            log::warn!("reconcile panicked");
        }
        if !unlabelled && scanner.settled() {
            retry = RETRIES.len();
        }
    }
}

/// Waits until link events have paused for a moment (at most a second): a rescan of a node with
/// 1,000 pods enters every pod's namespace, and doing one per veth of a burst would compete for
/// the CPUs with the attaches themselves (RCU grace periods stretch on busy CPUs).
async fn settle(events: &Notify) {
    const QUIET: Duration = Duration::from_millis(150);
    const MAX: Duration = Duration::from_secs(1);
    let deadline = tokio::time::Instant::now() + MAX;
    loop {
        tokio::select! {
            () = events.notified() => {}
            () = tokio::time::sleep(QUIET) => return,
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Fast-start mode: moves netlink-attached ports to tcx one at a time, in the background. The
/// attach itself (two RCU grace periods under rtnl) runs without our lock, so scrapes and new
/// veths are not held up; after each port we pause as long as it took, which leaves rtnl free
/// at least half the time for the node's own work (CNI, kubelet) and for our netlink attaches.
pub(super) async fn upgrade_loop(state: Arc<Shared>) {
    loop {
        let Some(up) = lock(&state).probe.next_upgrade() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let st = state.clone();
        let started = std::time::Instant::now();
        let expedited = lock(&state).expedite(AttachMode::FastStart);
        let done = tokio::task::spawn_blocking(move || {
            let links = up.attach();
            drop(expedited);
            lock(&st).probe.finish_upgrade(&up, links);
        })
        .await;
        if done.is_err() {
            log::warn!("upgrade to tcx panicked");
        }
        tokio::time::sleep(started.elapsed().max(Duration::from_millis(5))).await;
    }
}

pub(super) async fn forward_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd and keeps it open for as long as it lives,
    // which is as long as the AsyncFd that owns the logger.
    let Ok(mut fd) =
        (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
