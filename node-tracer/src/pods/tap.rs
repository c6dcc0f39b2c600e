//! Taps (a VM's NIC) have no peer namespace to key a pod on: they are named after the process
//! holding them open, by the VM's name where QEMU was given one (`-name guest=web,…`, as libvirt
//! starts it, or `-name web`), else as the `proc` source names processes (`firecracker[812]`).

use std::{collections::HashMap, path::Path};

use crate::model::{Pod, PodSource};

/// Pods by tap interface name. Skips the `/proc` walk when the node has no tun/tap link at all
/// (only those have `/sys/class/net/<name>/tun_flags`), which is most container nodes.
pub(super) fn discover(proc_root: &Path, sys_class_net: &Path) -> HashMap<String, Pod> {
    let any_tun = std::fs::read_dir(sys_class_net)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("tun_flags").exists());
    if !any_tun {
        return HashMap::new();
    }
    let mut taps = HashMap::new();
    for held in node_tracer_sys::held::held_tun_interfaces(proc_root) {
        let dir = proc_root.join(held.pid.to_string());
        let vm = std::fs::read(dir.join("cmdline"))
            .ok()
            .and_then(|c| qemu_name(&c));
        let name = if let Some(vm) = vm {
            vm
        } else {
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            format!("{}[{}]", comm.trim_end(), held.pid)
        };
        let uid = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| super::proc::container_id(&c))
            .unwrap_or_default();
        // The lowest pid first (read_dir order is not sorted): the VM's main process.
        taps.entry(held.interface).or_insert(Pod {
            namespace: String::new(),
            name,
            uid,
            source: PodSource::Proc,
            container: None,
        });
    }
    taps
}

/// The VM's name from a QEMU command line (NUL-separated): `-name guest=NAME,debug-threads=on`
/// or `-name NAME[,…]`. A comma doubled inside the name is QEMU's escape for a literal comma.
fn qemu_name(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let value = args
        .windows(2)
        .find(|w| w[0] == b"-name")
        .map(|w| String::from_utf8_lossy(w[1]).into_owned())?;
    let mut name = String::new();
    let mut rest = value.as_str();
    let mut options = Vec::new();
    // Split on single commas, keeping ",," as a literal comma.
    while let Some(i) = rest.find(',') {
        if rest[i + 1..].starts_with(',') {
            name.push_str(&rest[..=i]);
            rest = &rest[i + 2..];
            continue;
        }
        name.push_str(&rest[..i]);
        options.push(std::mem::take(&mut name));
        rest = &rest[i + 1..];
    }
    name.push_str(rest);
    options.push(name);
    let guest = options
        .iter()
        .find_map(|o| o.strip_prefix("guest="))
        .or_else(|| {
            options
                .first()
                .map(String::as_str)
                .filter(|o| !o.contains('='))
        })?;
    (!guest.is_empty()).then(|| guest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Vec<u8> {
        args.join("\0").into_bytes()
    }

    #[test]
    fn libvirt_and_plain_qemu_names() {
        let libvirt = cmd(&[
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "guest=web-1,debug-threads=on",
            "-S",
        ]);
        assert_eq!(qemu_name(&libvirt).as_deref(), Some("web-1"));
        let plain = cmd(&[
            "qemu-system-x86_64",
            "-m",
            "512",
            "-name",
            "db,process=qemu-db",
        ]);
        assert_eq!(qemu_name(&plain).as_deref(), Some("db"));
        let comma = cmd(&["qemu", "-name", "guest=a,,b"]);
        assert_eq!(qemu_name(&comma).as_deref(), Some("a,b"));
    }

    #[test]
    fn no_name_without_one() {
        assert_eq!(qemu_name(&cmd(&["firecracker", "--api-sock", "/x"])), None);
        assert_eq!(qemu_name(&cmd(&["qemu", "-name"])), None);
        assert_eq!(qemu_name(&cmd(&["qemu", "-name", "process=x"])), None);
        assert_eq!(qemu_name(b""), None);
    }
}
