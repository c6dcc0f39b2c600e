//! The lab's child processes and tools: running a tool to completion, and stopping a process
//! that must go (SIGTERM, a grace period, SIGKILL).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

/// Runs `cmd` to completion: its stdout, or an error naming the command with its status and
/// stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| Error::Command(what.clone(), e.to_string()))?;
    if !out.status.success() {
        return Err(Error::Command(
            what,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SIGTERM to `pid`, up to `term_grace` for `gone` to say it went, then SIGKILL and up to
/// `kill_grace` more. Whether it went.
///
/// The caller vouches that `pid` is its own to signal: its unreaped child, or a process it has
/// just identified and watches by start time (`gone` then says when that process is no longer
/// the one at `pid`).
pub(crate) fn terminate(
    pid: libc::pid_t,
    term_grace: Duration,
    kill_grace: Duration,
    mut gone: impl FnMut() -> bool,
) -> bool {
    for (sig, within) in [(libc::SIGTERM, term_grace), (libc::SIGKILL, kill_grace)] {
        // SAFETY: kill has no memory-safety preconditions; the PID is the caller's (see above).
        unsafe { libc::kill(pid, sig) };
        let start = Instant::now();
        while start.elapsed() < within {
            if gone() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    false
}
