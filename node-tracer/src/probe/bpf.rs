//! The bpf(2) calls aya does not make the way we need them: a tcx link made without `&mut` on
//! the program (the fast-start upgrade runs without the probe), a program's run statistics read
//! through a descriptor of its own (the read path holds no `Ebpf`), and `BPF_PROG_TEST_RUN`.

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
pub(super) const BPF_TCX_INGRESS: u32 = 46;
pub(super) const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_BEFORE: u32 = 1 << 3;

/// bpf(2): `cmd` with `attr`, its part of `union bpf_attr` (the kernel takes a prefix of the
/// union, sized by the last argument). Returns what the call returns (an fd for commands that
/// make one).
///
/// # Safety
/// `T` must be the `#[repr(C)]` layout `cmd` expects, fully initialised, and every pointer in it
/// valid for what the kernel reads or writes through it during the call.
pub(super) unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller's contract; `attr` outlives the call and its size is passed along.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn fd_u32(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

/// `BPF_LINK_CREATE` of a tcx link putting `prog` first on `ifindex` (what aya's
/// `LinkOrder::first()` does, but callable without `&mut` on the program).
pub(super) fn tcx_link(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    attach_type: u32,
) -> std::io::Result<OwnedFd> {
    /// The `link_create` member of `union bpf_attr` (linux/bpf.h), up to its `tcx` part.
    #[repr(C)]
    struct LinkCreateAttr {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        relative_fd: u32,
        pad: u32,
        expected_revision: u64,
    }
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog)?,
        target_ifindex: ifindex,
        attach_type,
        // Before everything, with no relative program: first in the chain.
        flags: BPF_F_BEFORE,
        relative_fd: 0,
        pad: 0,
        expected_revision: 0,
    };
    // SAFETY: `attr` is a fully initialised `LinkCreateAttr` and holds no pointers.
    let fd = unsafe { sys_bpf(BPF_LINK_CREATE, &mut attr) }?;
    let fd = i32::try_from(fd).map_err(|_| std::io::ErrorKind::InvalidData)?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A program's id, total run time and run count (`struct bpf_prog_info`; time and count stay 0
/// unless `kernel.bpf_stats_enabled`).
pub(super) fn prog_run_stats(
    prog: BorrowedFd<'_>,
) -> std::io::Result<(u32, std::time::Duration, u64)> {
    /// `struct bpf_prog_info` up to `run_cnt` (bytes 0..208); the kernel fills the prefix we
    /// give it room for.
    const INFO_WORDS: usize = 26;
    const ID: usize = 4;
    const RUN_TIME_NS: usize = 192;
    const RUN_CNT: usize = 200;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u64; INFO_WORDS];
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(prog)?,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the `info` member of `union bpf_attr`; `info` points at `info_len`
    // writable bytes that outlive the call.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    Ok((
        u32_at(ID),
        std::time::Duration::from_nanos(u64_at(RUN_TIME_NS)),
        u64_at(RUN_CNT),
    ))
}

/// `BPF_PROG_TEST_RUN` of `prog` on `frame`, `repeat` times: (return value, mean run time in
/// nanoseconds).
pub(super) fn prog_test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
) -> std::io::Result<(u32, u32)> {
    /// The `test` member of `union bpf_attr` (linux/bpf.h), up to `batch_size`.
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        pad: u32,
    }
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog)?,
        data_size_in: u32::try_from(frame.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a fully initialised `TestRunAttr`; `data_in` points at `frame`, which
    // outlives the call and which the kernel only reads; no output buffers are given.
    unsafe { sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok((attr.retval, attr.duration))
}
