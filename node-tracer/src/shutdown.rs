//! Stopping cleanly on SIGINT, SIGTERM or SIGHUP at any moment, start-up included.
//!
//! A signal's default action ends the process at once. Arriving while the first pass attaches
//! (half a minute at 1,000 veths: every tcx attach waits for RCU grace periods) or while a lab
//! is built, it would leave netlink filters, lab namespaces or containerd behind, and a
//! DaemonSet's rolling update would see the agent die of SIGTERM. [`install`] replaces the
//! default action by a flag before any of that work starts; long work polls [`requested`] and
//! stops early, and [`wait`] returns at once for a signal that came before it was called.

use std::{
    io,
    sync::atomic::{AtomicI32, Ordering},
};

use tokio::signal::unix::{SignalKind, signal};

/// The last stop signal received, 0 for none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// From now on SIGINT, SIGTERM and SIGHUP only ask this process to stop. Call it first thing,
/// once, in a command that must undo what it set up; the signals then no longer end it, so that
/// command must poll [`requested`] or await [`wait`].
pub fn install() -> io::Result<()> {
    for sig in SIGNALS {
        // SAFETY: the action only stores to an atomic, which is async-signal-safe. It runs
        // alongside tokio's own actions for the same signal (both go through the registry).
        unsafe {
            signal_hook_registry::register(sig, move || RECEIVED.store(sig, Ordering::SeqCst))
        }?;
    }
    Ok(())
}

/// Whether a stop signal has arrived since [`install`].
pub fn requested() -> bool {
    RECEIVED.load(Ordering::SeqCst) != 0
}

/// The stop signal that arrived since [`install`], if one did.
pub fn received() -> Option<&'static str> {
    requested().then(|| name(RECEIVED.load(Ordering::SeqCst)))
}

/// Waits for a stop signal, or returns at once when one came already; returns its name.
pub async fn wait() -> io::Result<&'static str> {
    let mut streams = Vec::with_capacity(SIGNALS.len());
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        streams.push(signal(kind)?);
    }
    // Checked after the streams exist: a signal from now on wakes one of them.
    if !requested() {
        let [int, term, hup] = &mut streams[..] else {
            unreachable!("three streams")
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
    Ok(name(RECEIVED.load(Ordering::SeqCst)))
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        // Only without install(): tokio woke us for a signal our action did not see.
        _ => "a stop signal",
    }
}
