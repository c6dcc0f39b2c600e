//! `--expedite-rcu`: the kernel's RCU grace periods expedited while many veths are attached or
//! detached at once.
//!
//! A tcx attach or detach swaps the hook's program array and then waits for an RCU grace period
//! (`synchronize_rcu()`), under rtnl, so nothing overlaps: two per veth, about 25 ms a veth, 25 s
//! for 1,000. With `/sys/kernel/rcu_expedited` at 1 the kernel expedites every such wait (it
//! interrupts each busy CPU instead of waiting for it to pass a quiescent state), and the same
//! 1,000 veths attach in about a second. The setting is host-wide, so it is held only for the
//! initial attach pass and the final detach, and it is always put back: by [`Expedited`]'s drop,
//! or, when this process dies first (even by SIGKILL), by a watchdog process that waits for our
//! end of a pipe to close.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Child, Command, Stdio},
};

use crate::error::{Error, Result};

/// The kernel's switch: 1 expedites every normal grace period.
pub const KNOB: &str = "/sys/kernel/rcu_expedited";

/// The hidden subcommand the watchdog runs as (see [`watchdog`]).
pub const WATCHDOG_COMMAND: &str = "restore-rcu-expedited";

/// Grace periods are expedited while this lives.
#[derive(Debug)]
pub struct Expedited {
    watchdog: Child,
}

impl Expedited {
    /// Sets the knob to 1, after starting the watchdog that will set it back. `None` when it is
    /// already 1: whoever set it keeps it, and we have nothing to restore.
    pub fn engage() -> Result<Option<Self>> {
        let before = std::fs::read_to_string(KNOB)
            .map_err(|e| Error::io(format!("read {KNOB}"), e))?
            .trim()
            .to_string();
        if before != "0" {
            return Ok(None);
        }
        // A read-only /sys (an unprivileged container) fails here, before any watchdog.
        let mut knob = std::fs::OpenOptions::new()
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
        let this = Self { watchdog };
        knob.write_all(b"1")
            .map_err(|e| Error::io(format!("write 1 to {KNOB}"), e))?;
        log::info!("RCU grace periods expedited ({KNOB} = 1) while attaching or detaching");
        Ok(Some(this))
    }
}

impl Drop for Expedited {
    fn drop(&mut self) {
        // EOF on its stdin: the watchdog restores the knob and exits.
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// The watchdog: ignores SIGINT, SIGTERM and SIGHUP (the agent's own stop signals must not take
/// it along), says it is ready, waits for EOF on stdin (the agent dropped [`Expedited`] or
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
