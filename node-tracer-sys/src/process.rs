//! Stopping a child process we started: SIGTERM, a grace period, then SIGKILL; always reaped.

use std::{
    process::Child,
    time::{Duration, Instant},
};

/// Stops `child` (our own, not yet reaped, so its PID is still its own): SIGTERM, up to `grace`
/// for it to exit, then SIGKILL. Returns whether SIGTERM was enough (or it had already exited).
pub fn stop_child(child: &mut Child, grace: Duration) -> bool {
    if !matches!(child.try_wait(), Ok(None)) {
        return true;
    }
    // SAFETY: signalling our own unreaped child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // A process that ignores SIGTERM: kill and reap it; a failure here leaves nothing to do.
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        process::{Command, Stdio},
    };

    use super::*;

    #[test]
    fn sigterm_is_enough_for_most_and_sigkill_ends_the_rest() {
        let mut polite = Command::new("sleep").arg("600").spawn().unwrap();
        assert!(stop_child(&mut polite, Duration::from_mins(1)));
        assert!(polite.try_wait().unwrap().is_some(), "reaped");
        // A shell that ignores SIGTERM, and says so once the trap is in place (so the test
        // never races the trap), then waits on a pipe we never write: no child to leave behind.
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(stubborn.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        assert!(!stop_child(&mut stubborn, Duration::from_millis(200)));
        assert!(stubborn.try_wait().unwrap().is_some(), "reaped");
    }
}
