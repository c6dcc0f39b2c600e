//! What a runtime changes on the host outside its own state dir, and putting it back.
//!
//! containerd, runc and the CNI plugins leave behind: `net.ipv4.ip_forward=1`, a mount on
//! `/run/netns`, cgroup dirs `k8s.io` and `kubepods` in every hierarchy, `/run/containerd` (shim
//! sockets) and `/var/lib/cni`. Those are shared by every runtime of the process, so the first
//! runtime to start records how the host was and the last one to stop restores it.

use std::{
    ffi::CString,
    fmt::Write as _,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const NETNS_DIR: &str = "/run/netns";
const SHARED_DIRS: [&str; 2] = ["/run/containerd", "/var/lib/cni"];
/// Cgroup dirs the CRI plugin creates at the top of each hierarchy (cgroupfs driver).
const CGROUP_TOPS: [&str; 2] = ["k8s.io", "kubepods"];

#[derive(Debug)]
struct Before {
    ip_forward: Option<String>,
    netns_dir: bool,
    netns_mounted: bool,
    /// Of `SHARED_DIRS` and every `/sys/fs/cgroup/*/{k8s.io,kubepods}`: those that existed.
    existing: Vec<PathBuf>,
    /// Everything we would remove if it was not there before.
    watched: Vec<PathBuf>,
}

static HOST: Mutex<Option<(usize, Before)>> = Mutex::new(None);

fn cgroup_tops() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            for top in CGROUP_TOPS {
                out.push(h.path().join(top));
            }
        }
    }
    out
}

/// Registers one more runtime; the first records the host's state.
pub fn acquire() {
    let mut host = HOST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((n, _)) = host.as_mut() {
        *n += 1;
        return;
    }
    let watched: Vec<PathBuf> = SHARED_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(cgroup_tops())
        .collect();
    let before = Before {
        ip_forward: std::fs::read_to_string(IP_FORWARD).ok(),
        netns_dir: Path::new(NETNS_DIR).exists(),
        netns_mounted: is_mountpoint(Path::new(NETNS_DIR)),
        existing: watched.iter().filter(|p| p.exists()).cloned().collect(),
        watched,
    };
    *host = Some((1, before));
}

/// The host as this process's first runtime found it, as text for a runtime's state dir.
pub fn recorded() -> Option<String> {
    let host = HOST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    host.as_ref().map(|(_, before)| before.to_text())
}

/// Takes over what a killed process had [`recorded`], when no runtime of this process holds the
/// host yet: the last runtime to stop then puts the host back as it was before that process's
/// runtimes, not as they left it.
pub fn adopt(text: &str) {
    let mut host = HOST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if host.is_none()
        && let Some(before) = Before::from_text(text)
    {
        *host = Some((0, before));
    }
}

impl Before {
    /// One `key value` per line; paths hold no newline (they are ours or cgroupfs').
    fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(v) = &self.ip_forward {
            let _ = writeln!(out, "ip_forward {}", v.trim());
        }
        let _ = writeln!(out, "netns_dir {}", self.netns_dir);
        let _ = writeln!(out, "netns_mounted {}", self.netns_mounted);
        for p in &self.existing {
            let _ = writeln!(out, "existing {}", p.display());
        }
        for p in &self.watched {
            let _ = writeln!(out, "watched {}", p.display());
        }
        out
    }

    fn from_text(text: &str) -> Option<Self> {
        let mut b = Before {
            ip_forward: None,
            netns_dir: false,
            netns_mounted: false,
            existing: Vec::new(),
            watched: Vec::new(),
        };
        for line in text.lines() {
            let (key, value) = line.split_once(' ')?;
            match key {
                "ip_forward" => b.ip_forward = Some(format!("{value}\n")),
                "netns_dir" => b.netns_dir = value.parse().ok()?,
                "netns_mounted" => b.netns_mounted = value.parse().ok()?,
                "existing" => b.existing.push(value.into()),
                "watched" => b.watched.push(value.into()),
                _ => return None,
            }
        }
        // A record without the paths it watched is not one of ours.
        (!b.watched.is_empty()).then_some(b)
    }
}

/// Unregisters a runtime; the last puts the host back as it was.
pub fn release() {
    let mut host = HOST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let last = match host.as_mut() {
        Some((n, _)) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => true,
        None => false,
    };
    if !last {
        return;
    }
    let Some((_, before)) = host.take() else {
        return;
    };
    if let Some(v) = &before.ip_forward
        && let Err(e) = std::fs::write(IP_FORWARD, v)
    {
        log::warn!("lab: restore {IP_FORWARD}: {e}");
    }
    if !before.netns_mounted && is_mountpoint(Path::new(NETNS_DIR)) {
        // Not lazy: with namespaces still mounted below (someone else's) it fails EBUSY, which is
        // what we want.
        if let Err(e) = umount(Path::new(NETNS_DIR), 0) {
            log::debug!("lab: umount {NETNS_DIR}: {e}");
        }
    }
    if !before.netns_dir {
        let _ = std::fs::remove_dir(NETNS_DIR);
    }
    // Cgroups of runtimes started after the first are new too: watch them as well.
    for p in before.watched.iter().cloned().chain(cgroup_tops()) {
        if !before.existing.contains(&p) {
            remove_empty_tree(&p);
        }
    }
}

/// Removes `dir` and every directory below it that is empty (cgroupfs dirs count as empty when
/// they have no child cgroups and no tasks); keeps anything that still holds files.
pub fn remove_empty_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&oct, 8) {
                out.push(char::from(b));
                continue;
            }
            out.push(c);
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// Mount points of this process's mount namespace, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

pub fn is_mountpoint(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

pub fn umount(path: &Path, flags: libc::c_int) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid C string; umount2 has no other preconditions.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first (rootfs overlays or
/// netns files a crashed daemon left), so the dir can be removed.
pub fn umount_below(dir: &Path) {
    let mut mounts: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.reverse();
    for m in mounts {
        if let Err(e) = umount(&m, libc::MNT_DETACH) {
            log::debug!("lab: umount {}: {e}", m.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_host_reads_back_the_same() {
        let before = Before {
            ip_forward: Some("0\n".into()),
            netns_dir: true,
            netns_mounted: false,
            existing: vec!["/var/lib/cni".into()],
            watched: vec![
                "/run/containerd".into(),
                "/var/lib/cni".into(),
                "/sys/fs/cgroup/cpu/k8s.io".into(),
            ],
        };
        let again = Before::from_text(&before.to_text()).expect("parses");
        assert_eq!(again.to_text(), before.to_text());
        assert_eq!(again.ip_forward.as_deref(), Some("0\n"));
        assert!(again.netns_dir && !again.netns_mounted);
        assert_eq!(again.existing, before.existing);
        assert_eq!(again.watched, before.watched);
        // Not a record of ours: refused, never half-read.
        assert!(Before::from_text("").is_none());
        assert!(Before::from_text("ip_forward 1\nwatched /x\nsurprise 1\n").is_none());
        assert!(Before::from_text("netns_dir maybe\nwatched /x\n").is_none());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn proc_is_a_mountpoint() {
        assert!(is_mountpoint(Path::new("/proc")));
        assert!(!is_mountpoint(Path::new("/proc/self")));
    }
}
