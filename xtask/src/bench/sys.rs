//! Process, namespace and /proc helpers for the bench.

use std::{
    io::Write as _,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag instead of killing us, so the lab guard still runs: the bench
/// checks the flag between steps and unwinds through its guards.
pub fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
    check_interrupted()
}

/// Runs `f` on a thread that entered the named network namespace, so sockets, bpf(2) queries by
/// ifindex and children it spawns all live there. Our own threads never change namespace.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: a valid namespace fd; CLONE_NEWNET may be entered by one thread of a
            // multi-threaded process.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("bench thread in {netns} panicked"))?
    })
}

/// Ifindex of `name` in the calling thread's namespace.
pub use node_tracer_sys::netdev::ifindex_of as ifindex;

/// Runs a shell command line; fails with its stderr.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn `{cmd}`"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Feeds lines to `ip -batch -` (hundreds of links or namespaces in one process).
pub fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn ip -batch")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.join("\n").as_bytes())
            .context("write to ip -batch")?;
    }
    let out = child.wait_with_output().context("wait for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -batch failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A child process we started, stopped by its PID (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Fails if the process already exited (it was meant to keep running).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait().context("wait")? {
            bail!("{} exited early ({st})", self.name);
        }
        Ok(())
    }

    /// SIGTERM, wait up to 20 s, then SIGKILL.
    pub fn stop(&mut self) {
        node_tracer_sys::process::stop_child(&mut self.child, Duration::from_secs(20));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `pred` holds, polling every `every`; fails after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut pred: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if pred()? {
            return Ok(start.elapsed());
        }
        check_interrupted()?;
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// One HTTP/1.1 GET: (status, body length, time to the last byte). Call from inside the
/// agent's namespace.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, usize, Duration)> {
    let (status, body, took) = http_fetch(addr, path)?;
    Ok((status, body.len(), took))
}

/// GET `path` through the project's one API client: (status, body, time to the last byte).
pub fn http_fetch(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>, Duration)> {
    let mut agent = node_tracer_client::Agent::plain(addr);
    agent.timeout = Duration::from_secs(30);
    let start = Instant::now();
    let (status, body) = node_tracer_client::blocking::fetch(&agent, path)
        .map_err(|e| anyhow::anyhow!(node_tracer_client::one_line(&e)))?;
    Ok((status, body.to_vec(), start.elapsed()))
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("field {i} of /proc/{pid}/stat"))
    };
    // utime and stime are fields 14 and 15; after ')' field 3 (state) is index 0.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((num(11)? + num(12)?) / hz)
}

/// CPU use of `pid` over `interval`, in percent of one core.
pub fn cpu_pct_over(pid: i32, interval: Duration) -> Result<f64> {
    let a = cpu_seconds(pid)?;
    let t = Instant::now();
    sleep(interval)?;
    let b = cpu_seconds(pid)?;
    Ok((b - a) / t.elapsed().as_secs_f64() * 100.0)
}

/// Resident memory in MiB.
pub fn rss_mib(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS missing")?;
    Ok(kb / 1024.0)
}
