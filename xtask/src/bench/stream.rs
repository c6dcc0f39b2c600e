//! A steady load between the lab's two pods that runs across many measurement slices: a sender
//! thread in the client pod (pinned to CPU 0) and a receiver thread in the server pod (pinned to
//! CPU 1), like the iperf3 runs, counting what the receiving socket got. iperf3 cannot be read
//! mid-run at chosen instants; this can, so configurations can alternate under one unbroken load.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    os::unix::thread::JoinHandleExt as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::lab::{self, Lab};

/// Only the lab's namespaces listen here; iperf3's server has 5201.
pub const PORT: u16 = 5301;
/// UDP payload, as the iperf3 runs (18 B).
const UDP_LEN: usize = 18;
/// TCP writes, as iperf3's default.
const TCP_WRITE: usize = 128 * 1024;
/// How often a blocked thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Udp,
    Tcp,
}

/// A running load; stopped (both threads joined) on drop.
pub struct Stream {
    /// UDP datagrams or TCP bytes received so far.
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    /// CPU-time clocks of the two threads.
    clocks: Vec<libc::clockid_t>,
}

impl Stream {
    pub fn start(lab: &Lab, kind: Kind) -> Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = Self {
            received: received.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
            clocks: Vec::new(),
        };
        let addr: SocketAddr = format!("{}:{PORT}", lab::SERVER_IP).parse()?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let st = stop.clone();
        s.threads.push(spawn_in(&lab.server(), 1, move || {
            receive(kind, addr, &received, &st, &ready_tx)
        })?);
        // The receiver's socket exists before the first datagram or connect.
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the load's receiver did not start")??;
        s.threads
            .push(spawn_in(&lab.client(), 0, move || send(kind, addr, &stop))?);
        for t in &s.threads {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: a running thread's handle (joined only in `stop_threads`), and a valid
            // out-pointer.
            let r = unsafe { libc::pthread_getcpuclockid(t.as_pthread_t(), &raw mut clock) };
            anyhow::ensure!(r == 0, "pthread_getcpuclockid: {r}");
            s.clocks.push(clock);
        }
        Ok(s)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// CPU time of the sender and the receiver so far, in ns. Without IRQ time accounting (this
    /// kernel) that includes the softirq work done on their CPUs while they run, which is where
    /// a veth's packets, and our programs, are handled. Time spent preempted by other work of a
    /// shared machine does not count, unlike in a rate.
    pub fn cpu_ns(&self) -> Result<u64> {
        let mut sum = 0;
        for c in &self.clocks {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a CPU-time clock of a thread that is still running; valid out-pointer.
            if unsafe { libc::clock_gettime(*c, &raw mut ts) } != 0 {
                bail!("clock_gettime: {}", std::io::Error::last_os_error());
            }
            sum += ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        }
        Ok(sum)
    }

    /// Stops the load; fails if a thread failed (a dead load would read as zero throughput).
    pub fn finish(mut self) -> Result<()> {
        self.stop_threads()
    }

    fn stop_threads(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))
                .and_then(|r| r);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Fails if a thread already ended (an error before the stop flag).
    pub fn check(&self) -> Result<()> {
        if self.threads.iter().any(JoinHandle::is_finished) {
            bail!("the load stopped by itself");
        }
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.stop_threads();
    }
}

/// A thread in network namespace `netns`, pinned to `cpu` (modulo the CPUs there are).
fn spawn_in(
    netns: &str,
    cpu: usize,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<JoinHandle<Result<()>>> {
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Ok(std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; one thread of a multi-threaded process may enter a
        // network namespace. The thread never leaves it and ends with the load.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu % cpus, &mut set);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
                bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
            }
        }
        f()
    }))
}

fn receive(
    kind: Kind,
    addr: SocketAddr,
    received: &AtomicU64,
    stop: &AtomicBool,
    ready: &mpsc::Sender<Result<()>>,
) -> Result<()> {
    match kind {
        Kind::Udp => {
            let sock = match UdpSocket::bind(addr).context("bind the UDP receiver") {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            sock.set_read_timeout(Some(POLL))?;
            let _ = ready.send(Ok(()));
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Kind::Tcp => {
            let listener = match TcpListener::bind(addr).context("bind the TCP receiver") {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let _ = ready.send(Ok(()));
            let (mut conn, _) = listener.accept().context("accept the load's connection")?;
            conn.set_read_timeout(Some(POLL))?;
            let mut buf = vec![0u8; TCP_WRITE];
            while !stop.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e).context("read the load"),
                }
            }
        }
    }
    Ok(())
}

fn send(kind: Kind, addr: SocketAddr, stop: &AtomicBool) -> Result<()> {
    match kind {
        Kind::Udp => {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.connect(addr)?;
            let payload = [0x5au8; UDP_LEN];
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..256 {
                    // A full socket buffer (ENOBUFS) is the sender running ahead: drop and go on.
                    let _ = sock.send(&payload);
                }
            }
        }
        Kind::Tcp => {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .context("connect the load")?;
            conn.set_write_timeout(Some(POLL))?;
            let buf = vec![0x5au8; TCP_WRITE];
            while !stop.load(Ordering::Relaxed) {
                match conn.write(&buf) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e).context("write the load"),
                }
            }
        }
    }
    Ok(())
}
