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
