//! A tc program that drops every packet (returns `TC_ACT_SHOT`), attached with tcx to a device
//! of a test namespace: this kernel has no `gact` action module, so `tc … action drop` fails.
//! Two instructions loaded with the raw `bpf(2)` call; the attachment is a link that goes away
//! when [`TcShot`] is dropped.

use std::os::fd::{FromRawFd as _, OwnedFd};

use crate::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

/// A dropping program attached to ingress of a device; detached on drop.
#[derive(Debug)]
pub struct TcShot {
    _link: OwnedFd,
    _prog: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> OwnedFd {
    // SAFETY: attr is a zeroed `union bpf_attr` of the size we pass.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    assert!(fd >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor the kernel just gave us.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) }
}

impl TcShot {
    /// Drops everything arriving on `ifname` inside `ns`.
    pub fn ingress(ns: &Netns, ifname: &str) -> Self {
        // r0 = 2 (TC_ACT_SHOT); exit
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = c"GPL";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..56].copy_from_slice(b"ntt_shot");
        let prog = bpf(BPF_PROG_LOAD, &mut attr);
        let link = ns.in_thread(|| {
            // sysfs shows the namespace it was mounted in, not this thread's: ask a socket.
            let name = std::ffi::CString::new(ifname).unwrap();
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(ifindex, 0, "no {ifname} in {}", ns.name);
            let mut attr = [0u8; 128];
            let prog_fd = std::os::fd::AsRawFd::as_raw_fd(&prog);
            attr[0..4].copy_from_slice(&u32::try_from(prog_fd).unwrap().to_ne_bytes());
            attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            attr[8..12].copy_from_slice(&BPF_TCX_INGRESS.to_ne_bytes());
            bpf(BPF_LINK_CREATE, &mut attr)
        });
        Self {
            _link: link,
            _prog: prog,
        }
    }
}
