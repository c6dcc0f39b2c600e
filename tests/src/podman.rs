//! A real rootful Podman (Debian's `podman` 4.3) of the test's own: storage root, run root, temp
//! dir (its file locks and events), CNI network config dir and IPAM state all in a temporary
//! directory; one CNI `bridge` network on a bridge and subnet of the test's own, with no gateway,
//! no masquerade and no firewall plugin (nothing reaches the host's forwarding or firewall); an
//! image made from a static busybox (no registry). Podman has no daemon: every command is a
//! `podman` process with the same flags, and each container runs under its own `conmon`.
//! Everything is removed on drop, also when the test fails.

use std::path::{Path, PathBuf};

use crate::{
    Link, TempDir,
    host_dirs::{self, HostDirs},
    require_tool, sh, sh_output,
};

/// The image every container runs: busybox with a few applets linked.
pub const IMAGE: &str = "localhost/nttbox:1";

#[derive(Debug)]
pub struct Podman {
    /// The CNI network every container joins (`--network`), also the default one.
    pub network: String,
    /// Its bridge, made by the test (the CNI plugin finds it there).
    pub bridge: Link,
    /// First three octets of the network's /24.
    pub net: String,
    /// Removed last (Podman's state lives here).
    root: TempDir,
}

impl Podman {
    /// Writes the configuration and imports [`IMAGE`].
    pub fn start(tag: &str) -> Self {
        require_tool("podman");
        require_tool("conmon");
        require_tool("busybox");
        HOST_DIRS.enter();
        let root = TempDir::new(tag);
        let net = crate::unique_net();
        let bridge = Link::bridge(&format!("{tag}b"));
        let network = crate::unique(&format!("{tag}n"));
        let dir = |d: &str| root.0.join(d).display().to_string();
        // No CAP_SYS_RESOURCE here: runc cannot raise rlimits, so set none. File locks instead of
        // the host-wide /dev/shm/libpod_lock, and no systemd (cgroupfs, events to a file).
        let conf = format!(
            "[containers]\ndefault_ulimits = []\n\
             [engine]\nlock_type = \"file\"\ntmp_dir = \"{tmp}\"\nevents_logger = \"file\"\n\
             cgroup_manager = \"cgroupfs\"\nvolume_path = \"{vol}\"\n\
             [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{netdir}\"\n\
             default_network = \"{network}\"\n",
            tmp = dir("tmp"),
            vol = dir("volumes"),
            netdir = dir("net"),
        );
        std::fs::write(root.0.join("containers.conf"), conf).expect("containers.conf");
        std::fs::create_dir_all(root.0.join("net")).expect("network config dir");
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": network,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge.name,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir("ipam"),
                    "ranges": [[{"subnet": format!("{net}.0/24"), "gateway": format!("{net}.1")}]]
                }
            }]
        });
        std::fs::write(
            root.0.join("net").join(format!("{network}.conflist")),
            conflist.to_string(),
        )
        .expect("conflist");
        let podman = Self {
            network,
            bridge,
            net,
            root,
        };
        podman.import_image();
        podman
    }

    fn import_image(&self) {
        let rootfs = self.root.0.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        let busybox = sh("command -v busybox");
        std::fs::copy(busybox.trim(), rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "sleep", "ping", "cat", "ip", "true"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = self.root.0.join("rootfs.tar");
        sh(&format!(
            "tar -C {} -cf {} . && {} import -q {} {IMAGE}",
            rootfs.display(),
            tar.display(),
            self.cli(),
            tar.display()
        ));
        std::fs::remove_dir_all(&rootfs).expect("remove rootfs");
        std::fs::remove_file(&tar).expect("remove rootfs.tar");
    }

    /// The CLI with this instance's configuration and storage (through `env`, so that
    /// `timeout` can run it too).
    pub fn cli(&self) -> String {
        format!(
            "env CONTAINERS_CONF={} podman --root {} --runroot {}",
            self.root.0.join("containers.conf").display(),
            self.root.0.join("root").display(),
            self.root.0.join("runroot").display()
        )
    }

    /// Runs `podman ARGS`; its stdout.
    pub fn podman(&self, args: &str) -> String {
        sh(&format!("{} {args}", self.cli()))
    }

    /// `podman run -d` of [`IMAGE`] running `sleep` on the test's network unless `opts` say
    /// otherwise (they go before the image). Its id.
    pub fn run(&self, name: &str, opts: &str) -> String {
        let opts = if opts.contains("--network") {
            opts.to_owned()
        } else {
            format!("--network {} {opts}", self.network)
        };
        self.podman(&format!("run -d --name {name} {opts} {IMAGE} sleep 3600"))
            .trim()
            .to_owned()
    }

    /// `podman inspect` of one container, parsed.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.podman(&format!("container inspect {name}"));
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("inspect JSON");
        assert_eq!(all.len(), 1, "{out}");
        all.remove(0)
    }

    /// The container's address on the test's network.
    pub fn ip(&self, name: &str) -> String {
        self.inspect(name)["NetworkSettings"]["Networks"][&self.network]["IPAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("no address for {name} on {}", self.network))
            .to_owned()
    }

    /// The host-side veth of a container's `eth0` (its `iflink` names the host end's ifindex).
    pub fn host_veth(&self, container: &str) -> String {
        let iflink = self.podman(&format!("exec {container} cat /sys/class/net/eth0/iflink"));
        crate::link_by_ifindex(iflink.trim())
    }
}

impl Podman {
    /// Whether a process still names this instance's storage in its arguments (a conmon, or
    /// the `podman container cleanup` it runs).
    fn conmons_alive(&self) -> bool {
        let root = self.root.0.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| String::from_utf8_lossy(&c).contains(&root))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first: Podman tears down their veths, namespaces, CNI cache entries and
        // overlay mounts itself.
        // Podman 4.3's `rm -a` refuses a container that others share before it removes them
        // ("has dependent containers"): each pass removes at least the dependents.
        for _ in 0..3 {
            let rm = sh_output(&format!("timeout 120 {} rm -a -f -t 0", self.cli()));
            if rm.status.success() {
                break;
            }
            eprintln!(
                "podman rm -a: {}",
                String::from_utf8_lossy(&rm.stderr).trim()
            );
        }
        // What `rm` would have removed had it failed: the CNI cache entries of our network.
        let prefix = format!("{}-", self.network);
        for e in std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // Each conmon outlives its container's removal for a moment: it runs Podman's cleanup
        // (which mounts the storage again), and its cgroup can go only once it has exited.
        let start = std::time::Instant::now();
        while self.conmons_alive() && start.elapsed() < std::time::Duration::from_mins(1) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        crate::docker::unmount_under(&self.root.0);
        HOST_DIRS.leave();
        // `bridge` and `root` are dropped after this: the link deleted, the directory removed.
    }
}

/// What rootful Podman makes on the host whatever its own directories: a `libpod_parent` cgroup
/// tree in each hierarchy, the CNI result cache (`/var/lib/cni/results`) and `/run/netns` (a
/// shared mount).
static HOST_DIRS: HostDirs = HostDirs::new(
    || {
        let mut dirs = host_dirs::cgroups("libpod_parent");
        dirs.extend(["/var/lib/cni/results", "/var/lib/cni", "/run/netns"].map(PathBuf::from));
        dirs
    },
    remove_empty_tree,
);

/// Removes `dir` and the empty directories under it, deepest first; anything in use (a cgroup
/// with a process, a namespace another test mounted there) stays. `/run/netns` is a mount point
/// of its own: a plain (not lazy) unmount fails while another test's namespace is bound in it.
fn remove_empty_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&e.path());
            }
        }
    }
    if dir == Path::new("/run/netns")
        && std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_none())
    {
        let _ = sh_output("umount /run/netns");
    }
    let _ = std::fs::remove_dir(dir);
}
