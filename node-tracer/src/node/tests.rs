//! The read path against real programs (root, as the crate's map tests): a scrape completes, and
//! shows the kernel's counts of that moment, while the attach side's lock is held.

use std::{collections::HashSet, sync::mpsc, time::Duration};

use node_tracer_common::PROG_INGRESS;

use super::*;
use crate::{model::Port, topology::Topology};

/// A node with its programs loaded and nothing attached, whose model has one port: `lo`.
fn loopback_node(rt: &tokio::runtime::Runtime) -> Arc<Shared> {
    let probe = Probe::load(&ProbeOptions::default()).expect("load the programs (needs root)");
    let fdb = rt
        .block_on(LiveFdb::start())
        .expect("subscribe to FDB notifications");
    let model = Arc::new(Model {
        topology: Topology {
            ports: vec![Port {
                ifindex: 1,
                name: "lo".into(),
                ..Port::default()
            }],
            bridges: Vec::new(),
        },
        ..Model::default()
    });
    let read = Arc::new(ReadPath::new(
        probe.reader(),
        model.clone(),
        fdb,
        HashSet::new(),
    ));
    Arc::new(Shared {
        state: Mutex::new(State {
            probe,
            model,
            read: read.clone(),
            only: HashSet::new(),
            filter: None,
            attach_uplinks: false,
            rescan_all: false,
            expediter: None,
            packets_at_start: None,
        }),
        read,
    })
}

/// Packets the pod side of `lo` sent, as a scrape sees them.
fn scraped_tx(shared: &Shared) -> u64 {
    let (snap, _health) = shared.read.metrics();
    snap.ports
        .iter()
        .find(|p| p.ifindex == 1)
        .map_or(0, |p| p.counters.tx_packets.iter().sum())
}

#[test]
fn a_scrape_reads_the_kernel_while_an_attach_holds_the_lock() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = loopback_node(&rt);
    let before = scraped_tx(&shared);
    // The attach side is busy (as during an attach pass) for as long as `held` lives.
    let held = lock(&shared);
    // Counted by the programs now, while the lock is held: run on a frame without any interface,
    // the kernel counts it on ifindex 1.
    let frame = [
        [0xffu8; 6].as_slice(),
        &[2, 0, 0, 0, 0, 1],
        &[0x08, 0x06],
        &[0; 46],
    ]
    .concat();
    let (_, _) = held.probe.test_run(PROG_INGRESS, &frame, 3).unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = shared.clone();
    let scrape = std::thread::spawn(move || tx.send(scraped_tx(&reader)));
    // Generous: the scrape either completes (a few syscalls) or waits for the lock forever.
    let seen = rx.recv_timeout(Duration::from_mins(2));
    drop(held);
    scrape.join().unwrap().ok();
    assert_eq!(
        seen,
        Ok(before + 3),
        "the scrape did not complete, or missed what the kernel counted, while attach held the lock"
    );
}
