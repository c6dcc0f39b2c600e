//! Which live processes hold which BPF objects, from `/proc/*/fdinfo`: how a program of ours
//! that a killed agent left attached is told from one a running agent holds.

/// One BPF program or map a process holds through one of its descriptors (a link's fdinfo
/// names its program).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub pid: u32,
    pub prog_id: Option<u32>,
    pub map_id: Option<u32>,
}

/// What process `pid` holds, or every process when `None`. Processes that exit meanwhile, or
/// whose descriptors we may not read, are skipped.
pub fn held_bpf_objects(pid: Option<u32>) -> Vec<Held> {
    let pids: Vec<u32> = match pid {
        Some(p) => vec![p],
        None => std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
    };
    let mut out = Vec::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
            };
            let held = Held {
                pid,
                prog_id: field("prog_id:"),
                map_id: field("map_id:"),
            };
            if held.prog_id.is_some() || held.map_id.is_some() {
                out.push(held);
            }
        }
    }
    out
}

/// A tap or tun interface and a process holding it open (a VM's QEMU, Firecracker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldTun {
    pub pid: u32,
    pub interface: String,
}

/// Which processes under `proc_root` hold which tun/tap interfaces: a descriptor open on
/// `/dev/net/tun` names its interface in its fdinfo (`iff:\tvnet0`). Only descriptors that
/// point at `/dev/net/tun` are read (a readlink each; reading every fdinfo of the node would
/// cost far more). Processes that exit meanwhile, or may not be read, are skipped.
pub fn held_tun_interfaces(proc_root: &std::path::Path) -> Vec<HeldTun> {
    let mut out = Vec::new();
    let mut pids: Vec<u32> = std::fs::read_dir(proc_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // Lowest first: a VM's main process before the threads or helpers it passed the fd to.
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_tun = std::fs::read_link(fd.path())
                .is_ok_and(|target| target == std::path::Path::new("/dev/net/tun"));
            if !is_tun {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name())) else {
                continue;
            };
            if let Some(name) = info.lines().find_map(|l| l.strip_prefix("iff:")) {
                let interface = name.trim().to_string();
                let seen = out
                    .iter()
                    .any(|h: &HeldTun| h.pid == pid && h.interface == interface);
                // A multi-queue tap is one descriptor per queue: one entry is enough.
                if !interface.is_empty() && !seen {
                    out.push(HeldTun { pid, interface });
                }
            }
        }
    }
    out
}
