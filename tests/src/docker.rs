//! A real Docker Engine (Debian's `docker.io`) of the test's own: its socket, data root, exec
//! root, pidfile and bridge all under names no one else uses, `--iptables=false`, and an image
//! made from a static busybox (no registry). Everything it made is removed on drop, also when the
//! test fails: containers, networks (their `br-<id>` bridges), the daemon (stopped by its PID),
//! its mounts and directories, and its bridge.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Link, TempDir,
    host_dirs::{self, HostDirs},
    quiet_ipv6, require_tool, sh, sh_output,
};

/// The image every container runs: busybox with a few applets linked.
pub const IMAGE: &str = "nttbox:1";

#[derive(Debug)]
pub struct Engine {
    /// The daemon's Engine API socket.
    pub socket: PathBuf,
    /// Its default bridge (`--bridge`), with `{net}.1/24`.
    pub bridge: Link,
    /// First three octets of the default bridge's subnet.
    pub net: String,
    daemon: Child,
    /// Bridges of user-defined networks (`br-<id>`), deleted if the daemon left them.
    networks: Vec<String>,
    /// Removed last (the daemon's state lives here).
    root: TempDir,
}

impl Engine {
    /// Starts a daemon of the test's own and imports [`IMAGE`] into it.
    pub fn start(tag: &str) -> Self {
        require_tool("dockerd");
        require_tool("docker");
        require_tool("busybox");
        HOST_DIRS.enter();
        let root = TempDir::new(tag);
        let net = crate::unique_net();
        let bridge = Link::bridge(&format!("{tag}b"));
        sh(&format!("ip addr add {net}.1/24 dev {}", bridge.name));
        let socket = root.0.join("docker.sock");
        let log = std::fs::File::create(root.0.join("dockerd.log")).expect("dockerd log");
        let daemon = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(root.0.join("data"))
            .arg("--exec-root")
            .arg(root.0.join("exec"))
            .arg("--pidfile")
            .arg(root.0.join("dockerd.pid"))
            .args(["--bridge", &bridge.name])
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
            ])
            .args(["--ip-masq=false", "--userland-proxy=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dockerd log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let mut engine = Self {
            socket,
            bridge,
            net,
            daemon,
            networks: Vec::new(),
            root,
        };
        engine.wait_ready();
        engine.import_image();
        engine
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.daemon.try_wait() {
                panic!("dockerd exited early ({status}): {}", self.log());
            }
            if sh_output(&format!("{} version", self.cli()))
                .status
                .success()
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_mins(2),
                "dockerd not ready after 2 minutes: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
            "tar -C {} -cf {} . && {} import {} {IMAGE}",
            rootfs.display(),
            tar.display(),
            self.cli(),
            tar.display()
        ));
    }

    /// The CLI aimed at this daemon.
    pub fn cli(&self) -> String {
        format!("docker -H unix://{}", self.socket.display())
    }

    /// Runs `docker ARGS` against this daemon; its stdout.
    pub fn docker(&self, args: &str) -> String {
        sh(&format!("{} {args}", self.cli()))
    }

    /// `docker run -d` of [`IMAGE`] running `sleep`; `opts` go before the image. Its id.
    pub fn run(&self, name: &str, opts: &str) -> String {
        self.docker(&format!("run -d --name {name} {opts} {IMAGE} sleep 3600"))
            .trim()
            .to_owned()
    }

    /// Starts a container of [`IMAGE`] running `sleep` under each name: created a few at a time,
    /// then started in batches of many ids per `docker start` (one `docker run` after another
    /// would cost a CLI process and a round trip per step per container).
    pub fn run_many(&self, names: &[String]) {
        let cli = self.cli();
        let names = names.join(" ");
        sh(&format!(
            "printf '%s\\n' {names} | xargs -P 4 -I NAME {cli} create --name NAME {IMAGE} sleep 3600 >/dev/null"
        ));
        sh(&format!(
            "printf '%s\\n' {names} | xargs -n 25 -P 4 {cli} start >/dev/null"
        ));
    }

    /// `docker inspect` of many containers at once, parsed, in the order asked.
    pub fn inspect_many(&self, names: &[String]) -> Vec<serde_json::Value> {
        let out = self.docker(&format!("inspect {}", names.join(" ")));
        let all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("inspect JSON");
        assert_eq!(all.len(), names.len(), "{out}");
        all
    }

    /// `docker inspect` of one container, parsed.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.docker(&format!("inspect {name}"));
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("inspect JSON");
        assert_eq!(all.len(), 1, "{out}");
        all.remove(0)
    }

    /// A user-defined bridge network on subnet `{net}.0/24`; its bridge (`br-<first 12 of id>`).
    pub fn network(&mut self, name: &str, net: &str) -> String {
        let id = self
            .docker(&format!("network create --subnet {net}.0/24 {name}"))
            .trim()
            .to_owned();
        let bridge = format!("br-{}", &id[..12]);
        quiet_ipv6(None, &bridge);
        self.networks.push(bridge.clone());
        bridge
    }

    /// The host-side veth of a container's `eth0` (its `iflink` names the host end's ifindex).
    pub fn host_veth(&self, container: &str) -> String {
        let iflink = self.docker(&format!("exec {container} cat /sys/class/net/eth0/iflink"));
        crate::link_by_ifindex(iflink.trim())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.0.join("dockerd.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if crate::stop_child(&mut self.daemon, Duration::from_mins(1)) {
            return;
        }
        // It would not stop: its containerd (our grandchild, by its pidfile) goes with it.
        if let Ok(pid) = std::fs::read_to_string(self.root.0.join("exec/containerd/containerd.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: the containerd our dockerd started, named by its own pidfile.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Containers and networks first, while the daemon can still tear down their veths,
        // namespaces and bridges.
        if self.daemon.try_wait().is_ok_and(|s| s.is_none()) {
            let cli = self.cli();
            let _ = sh_output(&format!(
                "ids=$(timeout 60 {cli} ps -aq); [ -z \"$ids\" ] || timeout 120 {cli} rm -f $ids"
            ));
            for bridge in &self.networks {
                let id = bridge.trim_start_matches("br-");
                let _ = sh_output(&format!("timeout 60 {cli} network rm {id}"));
            }
        }
        self.stop();
        for bridge in &self.networks {
            if Path::new("/sys/class/net").join(bridge).exists() {
                let _ = sh_output(&format!("ip link del {bridge}"));
            }
        }
        unmount_under(&self.root.0);
        HOST_DIRS.leave();
        // `bridge` and `root` are dropped after this: the link deleted, the directory removed.
    }
}

/// Pod-source flags that reach nothing but the engines at `sockets` (other tests may run a CRI
/// runtime or a lab at the same time).
pub fn only_docker(tmp: &TempDir, sockets: &[&Path]) -> Vec<String> {
    let mut args = vec![
        "--cri-socket".to_owned(),
        tmp.0.join("absent-cri.sock").display().to_string(),
        "--cni-results-dir".to_owned(),
        tmp.0.join("no-cni").display().to_string(),
    ];
    for s in sockets {
        args.extend(["--docker-socket".to_owned(), s.display().to_string()]);
    }
    args
}

/// `node-tracer peers --json ARGS`: its rows and its stderr (it must succeed and never panic).
pub fn peers(args: &[String]) -> (Vec<serde_json::Value>, String) {
    let mut cmd = vec!["peers", "--json"];
    cmd.extend(args.iter().map(String::as_str));
    let out = crate::node_tracer(&cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "peers failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
    (rows.as_array().expect("an array").clone(), stderr)
}

/// What every dockerd makes on the host whatever its own directories: a `docker` cgroup in each
/// hierarchy, `/run/containerd/s` for its shims' sockets and `/run/docker/plugins`. Only empty
/// ones go (rmdir): a cgroup with a process in it, or a socket another runtime still uses, stays.
static HOST_DIRS: HostDirs = HostDirs::new(
    || {
        let mut dirs = host_dirs::cgroups("docker");
        // dockerd makes its plugin directory under /run/docker whatever its --exec-root.
        dirs.extend(
            [
                "/run/containerd/s",
                "/run/containerd",
                "/run/docker/plugins",
                "/run/docker",
            ]
            .map(PathBuf::from),
        );
        dirs
    },
    |d| {
        let _ = std::fs::remove_dir(d);
    },
);

/// Unmounts everything mounted under `dir` (namespace bind mounts, overlays), deepest first.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_unstable_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = sh_output(&format!("umount -l '{p}'"));
    }
}
