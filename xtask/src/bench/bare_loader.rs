//! The attach floor: the least any tcx observer can do for a new veth. One thread listens for
//! RTM_NEWLINK on a netlink socket and, for every ifindex it has not seen, tcx-attaches the
//! empty program to both hooks, nothing else (no pod lookup, no maps, no logging). What it
//! takes from the netlink event to both hooks is what the kernel costs (each attach waits for
//! an RCU grace period); the agent's new-veth latency is judged against it.

use std::{
    collections::HashSet,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, bail};

use super::bpf;

const RTMGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;
const NLMSG_HDRLEN: usize = 16;

/// Runs until dropped; its links (and so its attachments) go with it.
pub struct BareLoader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<usize>>>,
}

impl BareLoader {
    /// Starts listening in network namespace `netns`; returns once the socket is subscribed, so
    /// no link created after this call is missed.
    pub fn start(netns: &str) -> Result<Self> {
        let path = format!("/run/netns/{netns}");
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: a valid namespace fd; this thread alone enters it and ends with the loader.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                let _ = tx.send(Err(anyhow::anyhow!("setns {path}: {e}")));
                bail!("setns {path}: {e}");
            }
            let setup = (|| Ok((link_events()?, bpf::load_empty()?)))();
            let (sock, prog) = match setup {
                Ok(v) => {
                    let _ = tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            Ok(serve(&sock, &prog, &flag))
        });
        rx.recv()
            .context("the bare loader did not start")?
            .context("bare loader")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops it; how many veths it attached.
    pub fn finish(mut self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("already stopped")?
            .join()
            .map_err(|_| anyhow::anyhow!("the bare loader panicked"))?
    }
}

impl Drop for BareLoader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A NETLINK_ROUTE socket subscribed to link events, waking every 100 ms to look at the stop flag.
fn link_events() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        bail!("netlink socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just created and nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid; the pointers and lengths describe live values.
    unsafe {
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = RTMGRP_LINK;
        if libc::bind(
            fd,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        ) != 0
        {
            bail!("bind netlink: {}", std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        ) != 0
        {
            bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        }
    }
    Ok(sock)
}

fn serve(sock: &OwnedFd, prog: &OwnedFd, stop: &AtomicBool) -> usize {
    let mut seen = HashSet::new();
    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            // Timeout (look at the flag) or ENOBUFS (events lost: later ones still come).
            continue;
        }
        for ifindex in new_links(&buf[..n as usize]) {
            if seen.insert(ifindex) {
                for t in [bpf::BPF_TCX_INGRESS, bpf::BPF_TCX_EGRESS] {
                    // A link gone again before its attach is not the floor's business.
                    if let Ok(l) = bpf::tcx_link(prog, ifindex, t) {
                        links.push(l);
                    }
                }
            }
        }
    }
    links.len() / 2
}

/// Interface indexes of the RTM_NEWLINK messages in one netlink datagram.
fn new_links(mut b: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN + 8 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        if u16::from_ne_bytes([b[4], b[5]]) == RTM_NEWLINK {
            // struct ifinfomsg: family, pad, type (u16), index (i32) at 4.
            let i = NLMSG_HDRLEN + 4;
            out.push(u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
        }
        b = b.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_links_reads_the_index_of_each_newlink_message() {
        let msg = |ty: u16, index: u32| {
            let mut m = vec![0u8; 32];
            m[0..4].copy_from_slice(&32u32.to_ne_bytes());
            m[4..6].copy_from_slice(&ty.to_ne_bytes());
            m[20..24].copy_from_slice(&index.to_ne_bytes());
            m
        };
        let mut b = msg(RTM_NEWLINK, 7);
        b.extend(msg(17, 8));
        b.extend(msg(RTM_NEWLINK, 9));
        assert_eq!(new_links(&b), vec![7, 9]);
        assert!(new_links(&[0u8; 10]).is_empty());
    }
}
