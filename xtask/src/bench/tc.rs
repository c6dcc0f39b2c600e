//! clsact filters over raw rtnetlink: whether a hook carries a filter (what the agent's netlink
//! attach leaves), the counterpart of `bpf::tcx_counts` for the kernel-side check of "attached".

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Result, bail};

const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const TCA_KIND: u16 = 1;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS)`.
const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
const CLSACT_EGRESS: u32 = 0xFFFF_FFF3;
/// `struct nlmsghdr` + `struct tcmsg`.
const HDR_LEN: usize = 16;
const TCMSG_LEN: usize = 20;

/// One rtnetlink socket, reused across queries (the bench polls hundreds of hooks).
pub struct Tc {
    fd: OwnedFd,
    seq: u32,
}

impl Tc {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
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
        // SAFETY: a new descriptor nothing else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    /// Filters with a kind (not chain heads) on both clsact hooks of `ifindex`: (ingress,
    /// egress). A device without clsact has none.
    pub fn filter_counts(&mut self, ifindex: u32) -> (usize, usize) {
        let n = |tc: &mut Self, parent| tc.filters(ifindex, parent).unwrap_or(0);
        (n(self, CLSACT_INGRESS), n(self, CLSACT_EGRESS))
    }

    fn filters(&mut self, ifindex: u32, parent: u32) -> Result<usize> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = [0u8; HDR_LEN + TCMSG_LEN];
        req[0..4].copy_from_slice(&((HDR_LEN + TCMSG_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETTFILTER.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // tcmsg: family 0 (AF_UNSPEC), ifindex, handle 0, parent, info 0.
        req[HDR_LEN + 4..HDR_LEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
        req[HDR_LEN + 12..HDR_LEN + 16].copy_from_slice(&parent.to_ne_bytes());
        // SAFETY: `req` is valid for its length; the kernel reads it once.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            bail!("netlink send: {}", std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        let mut count = 0;
        loop {
            // SAFETY: `buf` is valid and writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                bail!("netlink recv: {}", std::io::Error::last_os_error());
            }
            let mut off = 0;
            let n = n as usize;
            while off + HDR_LEN <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into()?) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into()?);
                let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into()?);
                if len < HDR_LEN || off + len > n {
                    bail!("truncated netlink message");
                }
                if seq == self.seq {
                    match ty {
                        NLMSG_DONE => return Ok(count),
                        // No clsact on the device (EINVAL) or no such device: no filters.
                        NLMSG_ERROR => return Ok(0),
                        RTM_NEWTFILTER
                            if has_kind(
                                buf.get(off + HDR_LEN + TCMSG_LEN..off + len)
                                    .unwrap_or_default(),
                            ) =>
                        {
                            count += 1;
                        }
                        _ => {}
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// Whether the attributes after a tcmsg carry `TCA_KIND` (chain heads do not).
fn has_kind(mut attrs: &[u8]) -> bool {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if ty == TCA_KIND {
            return true;
        }
        if len < 4 {
            return false;
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    false
}
