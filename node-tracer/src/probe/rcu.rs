//! `--expedite-rcu`: the kernel's RCU grace periods expedited while our tcx attaches and
//! detaches run.
//!
//! A tcx attach or detach swaps the hook's program array and then waits for an RCU grace period
//! (`synchronize_rcu()`), under rtnl, so nothing overlaps: two per veth, about 25 ms a veth, 25 s
//! for 1,000. With `/sys/kernel/rcu_expedited` at 1 the kernel expedites every such wait (it
//! interrupts each busy CPU instead of waiting for it to pass a quiescent state), and the same
//! 1,000 veths attach in about a second, and a new veth in a few milliseconds. The setting is
//! host-wide, so it is held only while one of our attaches or detaches runs, and it is always put
//! back: by the last [`Hold`] to end, or, when this process dies first (even by SIGKILL), by a
//! watchdog process that waits for our end of a pipe to close.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use crate::error::{Error, Result};

/// The kernel's switch: 1 expedites every normal grace period.
pub const KNOB: &str = "/sys/kernel/rcu_expedited";

/// The hidden subcommand the watchdog runs as (see [`watchdog`]).
pub const WATCHDOG_COMMAND: &str = "restore-rcu-expedited";

/// Expedites grace periods on demand for as long as it lives: each [`Expediter::hold`] sets the
/// knob to 1 (the first of several concurrent holds does), and the last one to end sets it back
/// to 0. A watchdog process started with it writes 0 when our end of its pipe closes, that is
/// when this is dropped or the agent dies, so the knob never stays at 1 after us.
#[derive(Debug)]
pub struct Expediter {
    knob: Mutex<(File, usize)>,
    watchdog: Mutex<Child>,
}

/// Grace periods stay expedited while this lives.
#[derive(Debug)]
pub struct Hold(Arc<Expediter>);

impl Expediter {
    /// Opens the knob and starts the watchdog. `None` when the knob is already 1: whoever set it
    /// keeps it, there is nothing to speed up and nothing of ours to put back.
    pub fn start() -> Result<Option<Arc<Self>>> {
        let before = std::fs::read_to_string(KNOB)
            .map_err(|e| Error::io(format!("read {KNOB}"), e))?
            .trim()
            .to_string();
        if before != "0" {
            return Ok(None);
        }
        // A read-only /sys (an unprivileged container) fails here, before any watchdog.
        let knob = std::fs::OpenOptions::new()
            .write(true)
            .open(KNOB)
            .map_err(|e| Error::io(format!("open {KNOB} for writing"), e))?;
        // /proc/self/exe, not current_exe(): it still starts our binary after an upgrade
        // replaced or deleted the file.
        let mut watchdog = Command::new("/proc/self/exe")
            .args(["--log-level", "warn", WATCHDOG_COMMAND, &before])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::io("start the rcu_expedited watchdog", e))?;
        // Wait until it ignores the signals a Ctrl-C or a `kill` of our process group sends, so
        // it cannot die before us.
        let mut ready = String::new();
        let stdout = watchdog.stdout.take().expect("piped");
        if BufReader::new(stdout).read_line(&mut ready).is_err() || ready.trim() != "ready" {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            return Err(Error::io(
                "start the rcu_expedited watchdog",
                std::io::Error::other("it did not report ready"),
            ));
        }
        Ok(Some(Arc::new(Self {
            knob: Mutex::new((knob, 0)),
            watchdog: Mutex::new(watchdog),
        })))
    }

    /// Expedites grace periods until the returned hold is dropped.
    pub fn hold(self: &Arc<Self>) -> Hold {
        self.add(1);
        Hold(self.clone())
    }

    fn add(&self, delta: isize) {
        let mut k = self
            .knob
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was = k.1;
        k.1 = was.saturating_add_signed(delta);
        let value: &[u8] = match (was, k.1) {
            (0, 1..) => b"1",
            (1.., 0) => b"0",
            _ => return,
        };
        // A failed write only costs speed; the watchdog puts 0 back in the end regardless.
        if let Err(e) = k.0.write_all(value) {
            log::debug!("write to {KNOB}: {e}");
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

impl Drop for Expediter {
    fn drop(&mut self) {
        // EOF on its stdin: the watchdog writes 0 and exits.
        let w = self
            .watchdog
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(w.stdin.take());
        let _ = w.wait();
    }
}

/// The watchdog: ignores SIGINT, SIGTERM and SIGHUP (the agent's own stop signals must not take
/// it along), says it is ready, waits for EOF on stdin (the agent dropped its [`Expediter`] or
/// died), then writes `value` back.
pub fn watchdog(value: &str) -> Result<()> {
    if value != "0" && value != "1" {
        return Err(Error::io(
            format!("restore {KNOB}"),
            std::io::Error::other(format!("{value:?} is not 0 or 1")),
        ));
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to SIG_IGN; no handler code runs.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("report ready", e))?;
    let mut sink = Vec::new();
    // Returns at EOF, or with an error once the agent's end is gone: restore either way.
    let _ = std::io::stdin().read_to_end(&mut sink);
    std::fs::write(KNOB, value).map_err(|e| Error::io(format!("write {value} to {KNOB}"), e))
}
