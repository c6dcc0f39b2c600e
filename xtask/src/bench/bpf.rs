//! Raw bpf(2) for the bench: which programs are on a tcx hook, a handle on one of them, an empty
//! program to compare against, BPF_PROG_TEST_RUN, run statistics, tracepoint links and per-CPU
//! map sums. Raw syscalls keep xtask free of aya and of
//! the eBPF build: the bench measures the very programs the running agent loaded.

use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;
/// `TCX_NEXT` as the u32 the kernel reports in `retval`.
pub const TCX_NEXT: u32 = u32::MAX;

/// `union bpf_attr` is at most this big for the commands used here; the kernel accepts a larger
/// buffer as long as the tail is zero.
const ATTR_LEN: usize = 128;

#[repr(C, align(8))]
struct Attr([u8; ATTR_LEN]);

impl Attr {
    fn new() -> Self {
        Self([0; ATTR_LEN])
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised, 8-aligned buffer as large as the union the kernel
    // reads for `cmd`; every pointer written into it points at memory alive for this call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), ATTR_LEN as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn bpf(cmd: libc::c_long, attr: &mut Attr, what: &str) -> Result<libc::c_long> {
    sys_bpf(cmd, attr).map_err(|e| anyhow::anyhow!("bpf({what}): {e}"))
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// IDs of the programs on a tcx hook of `ifindex` (in the calling thread's namespace), first to
/// run first.
pub fn tcx_programs(ifindex: u32, attach_type: u32) -> Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut a = Attr::new();
    a.u32(0, ifindex);
    a.u32(4, attach_type);
    a.u64(16, ids.as_mut_ptr() as u64);
    a.u32(24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut a, "PROG_QUERY")?;
    let n = (a.get_u32(24) as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}

/// Programs on both tcx hooks of `ifindex`: (ingress, egress) counts. A vanished link counts as
/// nothing attached.
pub fn tcx_counts(ifindex: u32) -> (usize, usize) {
    let n = |t| tcx_programs(ifindex, t).map_or(0, |v| v.len());
    (n(BPF_TCX_INGRESS), n(BPF_TCX_EGRESS))
}

/// A tcx link running `prog` last on a hook of `ifindex` (in the calling thread's namespace);
/// closing the descriptor detaches it.
pub fn tcx_link(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32);
    a.u32(4, ifindex);
    a.u32(8, attach_type);
    Ok(owned(bpf(BPF_LINK_CREATE, &mut a, "LINK_CREATE tcx")?))
}

pub fn prog_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, id);
    Ok(owned(bpf(
        BPF_PROG_GET_FD_BY_ID,
        &mut a,
        "PROG_GET_FD_BY_ID",
    )?))
}

/// The cheapest tc program there is: `r0 = -1 (TCX_NEXT); exit`. The floor every observer pays.
pub fn load_empty() -> Result<OwnedFd> {
    // mov64 r0, -1 (opcode 0xb7, imm -1); exit (0x95).
    let insns: [u64; 2] = [0xb7 | (u64::from(u32::MAX) << 32), 0x95];
    let license = c"GPL";
    let mut a = Attr::new();
    a.u32(0, BPF_PROG_TYPE_SCHED_CLS);
    a.u32(4, insns.len() as u32);
    a.u64(8, insns.as_ptr() as u64);
    a.u64(16, license.as_ptr() as u64);
    a.0[48..57].copy_from_slice(b"ntb_empty");
    Ok(owned(bpf(BPF_PROG_LOAD, &mut a, "PROG_LOAD empty")?))
}

/// BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): while the returned descriptor is open, the kernel times
/// every run of every program on the host (`run_time_ns`, `run_cnt` in `bpf_prog_info`). That
/// is host-wide state and costs every program two clock reads: hold it only while measuring;
/// dropping the descriptor (also on an error or Ctrl-C unwinding) switches it off again.
pub fn enable_stats() -> Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, BPF_STATS_RUN_TIME);
    Ok(owned(bpf(BPF_ENABLE_STATS, &mut a, "ENABLE_STATS")?))
}

/// `bpf_prog_info` up to `run_cnt` and `recursion_misses` (offsets from linux/bpf.h, 6.x).
const PROG_INFO_LEN: usize = 216;
const INFO_NR_MAP_IDS: usize = 52;
const INFO_MAP_IDS: usize = 56;
const INFO_NAME: usize = 64;
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;

fn obj_info(fd: &OwnedFd, info: &mut [u8], what: &str) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut a = Attr::new();
    a.u32(0, fd.as_raw_fd() as u32);
    a.u32(4, info.len() as u32);
    a.u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a, what).map(|_| ())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(v)
}

/// Time spent in and number of runs of a program, since it was loaded, while stats were on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    pub ns: u64,
    pub cnt: u64,
}

impl std::ops::Sub for RunStats {
    type Output = RunStats;
    fn sub(self, o: RunStats) -> RunStats {
        RunStats {
            ns: self.ns.saturating_sub(o.ns),
            cnt: self.cnt.saturating_sub(o.cnt),
        }
    }
}

impl std::ops::Add for RunStats {
    type Output = RunStats;
    fn add(self, o: RunStats) -> RunStats {
        RunStats {
            ns: self.ns + o.ns,
            cnt: self.cnt + o.cnt,
        }
    }
}

pub fn run_stats(prog: &OwnedFd) -> Result<RunStats> {
    let mut info = [0u8; PROG_INFO_LEN];
    obj_info(prog, &mut info, "OBJ_GET_INFO_BY_FD prog")?;
    Ok(RunStats {
        ns: u64_at(&info, INFO_RUN_TIME_NS),
        cnt: u64_at(&info, INFO_RUN_CNT),
    })
}

/// The kernel's name of a program (at most 15 bytes).
pub fn prog_name(prog: &OwnedFd) -> Result<String> {
    let mut info = [0u8; PROG_INFO_LEN];
    obj_info(prog, &mut info, "OBJ_GET_INFO_BY_FD prog name")?;
    let name = &info[INFO_NAME..INFO_NAME + 16];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// A link running the `tp_btf` program `prog` on the tracepoint it was loaded for (the target
/// is part of the program, so no name is given); closing the descriptor detaches it. The
/// tracepoint is host-wide: the program then runs for every event on the machine.
pub fn tracepoint_link(prog: &OwnedFd) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut a = Attr::new();
    a.u32(8, prog.as_raw_fd() as u32);
    Ok(owned(bpf(
        BPF_RAW_TRACEPOINT_OPEN,
        &mut a,
        "RAW_TRACEPOINT_OPEN",
    )?))
}

/// CPUs a per-CPU map holds a value for: the kernel's "possible" set.
fn possible_cpus() -> Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| anyhow::anyhow!("read /sys/devices/system/cpu/possible: {e}"))?;
    cpu_count(&text)
}

/// How many CPU numbers a kernel CPU list ("0-1", "0,2-3") spans: the highest one plus one.
fn cpu_count(list: &str) -> Result<usize> {
    let mut n = 0;
    for part in list.trim().split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (usize, usize) = (lo.parse()?, hi.parse()?);
        n = n.max(hi.max(lo) + 1);
    }
    Ok(n)
}

/// Sum over every CPU of a per-CPU map's `u64` values, for the entries whose key `keep`
/// accepts. Entries are read one by one: the bench reads a few hundred at most.
pub fn percpu_sum(map: &OwnedFd, keep: impl Fn(&[u8]) -> bool) -> Result<u64> {
    use std::os::fd::AsRawFd as _;
    // bpf_map_info: key_size at 8, value_size at 12.
    let mut m = [0u8; 88];
    obj_info(map, &mut m, "OBJ_GET_INFO_BY_FD map")?;
    let key_size = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]) as usize;
    let value_size = u32::from_ne_bytes([m[12], m[13], m[14], m[15]]) as usize;
    if value_size != 8 {
        bail!("a map of {value_size}-byte values is not a map of u64 counters");
    }
    let mut values = vec![0u8; 8 * possible_cpus()?];
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut first = true;
    let mut sum = 0u64;
    loop {
        let mut a = Attr::new();
        a.u32(0, map.as_raw_fd() as u32);
        if !first {
            a.u64(8, key.as_ptr() as u64);
        }
        a.u64(16, next.as_mut_ptr() as u64);
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(sum),
            Err(e) => bail!("bpf(MAP_GET_NEXT_KEY): {e}"),
        }
        first = false;
        key.copy_from_slice(&next);
        // An entry deleted since: nothing to add.
        if keep(&key) && map_lookup(map, &key, &mut values)? {
            sum += values.chunks_exact(8).map(|c| u64_at(c, 0)).sum::<u64>();
        }
    }
}

/// The map of `prog` called `name` (as the kernel keeps it: at most 15 bytes), with its
/// `max_entries`.
pub fn prog_map(prog: &OwnedFd, name: &str) -> Result<(OwnedFd, u32)> {
    let mut ids = [0u32; 32];
    let mut info = [0u8; PROG_INFO_LEN];
    info[INFO_NR_MAP_IDS..INFO_NR_MAP_IDS + 4].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    info[INFO_MAP_IDS..INFO_MAP_IDS + 8].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    obj_info(prog, &mut info, "OBJ_GET_INFO_BY_FD prog maps")?;
    let n = u32::from_ne_bytes([info[52], info[53], info[54], info[55]]) as usize;
    for &id in &ids[..n.min(ids.len())] {
        let mut a = Attr::new();
        a.u32(0, id);
        let fd = owned(bpf(BPF_MAP_GET_FD_BY_ID, &mut a, "MAP_GET_FD_BY_ID")?);
        // bpf_map_info: max_entries at 16, name[16] at 24.
        let mut m = [0u8; 88];
        obj_info(&fd, &mut m, "OBJ_GET_INFO_BY_FD map")?;
        let end = m[24..40].iter().position(|&b| b == 0).unwrap_or(16);
        if &m[24..24 + end] == name.as_bytes() {
            return Ok((fd, u32::from_ne_bytes([m[16], m[17], m[18], m[19]])));
        }
    }
    bail!("the program has no map called {name}")
}

/// Looks `key` up in `map` into `value` (its exact size); false when absent.
pub fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> Result<bool> {
    use std::os::fd::AsRawFd as _;
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32);
    a.u64(8, key.as_ptr() as u64);
    a.u64(16, value.as_mut_ptr() as u64);
    match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => bail!("bpf(MAP_LOOKUP_ELEM): {e}"),
    }
}

pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32);
    a.u64(8, key.as_ptr() as u64);
    a.u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a, "MAP_UPDATE_ELEM").map(|_| ())
}

/// What one BPF_PROG_TEST_RUN reported.
pub struct TestRun {
    /// Average nanoseconds per run.
    pub ns: u32,
    pub retval: u32,
    /// The frame came back byte for byte as it went in.
    pub unchanged: bool,
}

/// Runs `prog` `repeat` times on `frame`, as if it arrived on `ifindex` (in the calling thread's
/// namespace; 0 lets the kernel use loopback).
pub fn test_run(prog: &OwnedFd, frame: &[u8], ifindex: u32, repeat: u32) -> Result<TestRun> {
    use std::os::fd::AsRawFd as _;
    // struct __sk_buff up to and including `ifindex` (offset 40); the kernel zero-fills the rest
    // and uses ifindex > 1 as the skb's device.
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32);
    a.u32(8, frame.len() as u32);
    a.u32(12, out.len() as u32);
    a.u64(16, frame.as_ptr() as u64);
    a.u64(24, out.as_mut_ptr() as u64);
    a.u32(32, repeat);
    if ifindex > 1 {
        a.u32(40, ctx.len() as u32);
        a.u64(48, ctx.as_ptr() as u64);
    }
    bpf(BPF_PROG_TEST_RUN, &mut a, "PROG_TEST_RUN")?;
    let out_len = a.get_u32(12) as usize;
    Ok(TestRun {
        ns: a.get_u32(36),
        retval: a.get_u32(4),
        unchanged: out.get(..out_len) == Some(frame),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count_up_to_the_highest_cpu() {
        assert_eq!(cpu_count("0-1\n").unwrap(), 2);
        assert_eq!(cpu_count("0").unwrap(), 1);
        assert_eq!(cpu_count("0,2-3").unwrap(), 4);
        assert!(cpu_count("x").is_err());
    }
}
