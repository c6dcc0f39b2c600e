//! Podman's containers, read from the processes that watch them: every running Podman container
//! has a `conmon` whose arguments carry the container's id (`-c`) and name (`-n`), and whose
//! child is the container's first process.
//!
//! Podman has no daemon: its API service (`podman system service`) runs only where someone
//! started it, and the CLI reads a database under a root we may not know. `conmon` is there in
//! every case (rootful, with or without the service, any `--root`), so this source needs no
//! socket and cannot hang.
//!
//! The namespace is the one the runtime was told to join (the bundle's `config.json`,
//! `/run/netns/netns-<uuid>`), or else the container process's own. The image is the
//! containers/storage record beside the bundle (`<root>/overlay-containers/containers.json`),
//! which is what `podman ps` shows; empty where the agent cannot see the storage root.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Found;
use crate::model::{Container, Pod, PodSource};

/// What one `conmon` command line says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conmon {
    id: String,
    name: String,
    /// The OCI bundle (`-b`): `<root>/overlay-containers/<id>/userdata`.
    bundle: Option<PathBuf>,
}

impl Conmon {
    /// Parses a NUL-separated `/proc/PID/cmdline`; `None` unless it is a Podman container's
    /// conmon: Podman always names the container (`-n`) and has conmon run `podman … container
    /// cleanup` when it exits (`--exit-command`); CRI-O's conmons (whose pods CRI names) do not.
    fn parse(cmdline: &[u8]) -> Option<Self> {
        let args: Vec<&str> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(std::str::from_utf8)
            .collect::<Result<_, _>>()
            .ok()?;
        let (prog, rest) = args.split_first()?;
        if Path::new(prog).file_name()? != "conmon" {
            return None;
        }
        let mut id = None;
        let mut name = None;
        let mut bundle = None;
        let mut exit_command = None;
        let mut it = rest.iter();
        while let Some(arg) = it.next() {
            // Both `-c ID` and `--cid=ID` spellings exist across conmon versions.
            let arg: &str = arg;
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v)),
                _ => (arg, None),
            };
            let slot = match flag {
                "-c" | "--cid" => &mut id,
                "-n" | "--name" => &mut name,
                "-b" | "--bundle" => &mut bundle,
                "--exit-command" => &mut exit_command,
                // Their values are another program's arguments (Podman's cleanup command, the
                // OCI runtime's): a `-n` there is not the container's name.
                "--exit-command-arg" | "--runtime-arg" if inline.is_none() => {
                    it.next();
                    continue;
                }
                _ => continue,
            };
            let value = match inline {
                Some(v) => v,
                None => *it.next()?,
            };
            *slot = Some(value.to_owned());
        }
        let by_podman = exit_command
            .as_deref()
            .and_then(|c| Path::new(c).file_name())
            .is_some_and(|n| n == "podman");
        if !by_podman {
            return None;
        }
        let id = id.filter(|i| !i.is_empty())?;
        Some(Self {
            name: name.filter(|n| !n.is_empty())?,
            id,
            bundle: bundle.map(PathBuf::from),
        })
    }
}

/// The parts of the OCI runtime spec we read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec {
    linux: Linux,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Linux {
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    path: String,
}

/// The network namespace path the runtime was given, if any (none: a fresh one, or the host's).
fn spec_netns(config_json: &str) -> Option<PathBuf> {
    let spec: Spec = serde_json::from_str(config_json).ok()?;
    spec.linux
        .namespaces
        .into_iter()
        .find(|n| n.kind == "network" && !n.path.is_empty())
        .map(|n| PathBuf::from(n.path))
}

/// One record of containers/storage's `containers.json`.
#[derive(Debug, Deserialize)]
struct Stored {
    id: String,
    /// A JSON document in a string: `{"image-name": "localhost/nttbox:1", …}`.
    #[serde(default)]
    metadata: String,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(rename = "image-name", default)]
    image_name: String,
}

/// The image container `id` was created from, as `containers.json` records it.
fn stored_image(containers_json: &str, id: &str) -> Option<String> {
    let all: Vec<Stored> = serde_json::from_str(containers_json).ok()?;
    let rec = all.into_iter().find(|c| c.id == id)?;
    let meta: Metadata = serde_json::from_str(&rec.metadata).ok()?;
    Some(meta.image_name).filter(|i| !i.is_empty())
}

/// Every Podman container with a `conmon` under `proc_root`, and whether any was found (the
/// source "answered").
pub(super) fn discover(proc_root: &Path) -> (Vec<Found>, bool) {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return (Vec::new(), false);
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // Oldest first: of containers sharing a namespace (a pod's infra and its apps), the first
    // one made it, and the index keeps the first claim of a source.
    pids.sort_unstable();
    let mut out = Vec::new();
    let mut any = false;
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        // Cheap test first: most processes are not conmon.
        match std::fs::read_to_string(dir.join("comm")) {
            Ok(comm) if comm.trim_end() == "conmon" => {}
            _ => continue,
        }
        let Some(conmon) = std::fs::read(dir.join("cmdline"))
            .ok()
            .and_then(|c| Conmon::parse(&c))
        else {
            continue;
        };
        any = true;
        match found(proc_root, pid, conmon) {
            Ok(f) => out.push(f),
            Err(why) => log::debug!("pods: Podman container under conmon {pid}: {why}"),
        }
    }
    (out, any)
}

fn found(proc_root: &Path, conmon_pid: u32, c: Conmon) -> Result<Found, String> {
    let config = c
        .bundle
        .as_ref()
        .and_then(|b| std::fs::read_to_string(b.join("config.json")).ok());
    let mut paths: Vec<PathBuf> = config.as_deref().and_then(spec_netns).into_iter().collect();
    // The container's first process: conmon's only child once the runtime has exited.
    if let Ok(children) =
        std::fs::read_to_string(proc_root.join(format!("{conmon_pid}/task/{conmon_pid}/children")))
    {
        paths.extend(
            children
                .split_whitespace()
                .map(|child| proc_root.join(child).join("ns/net")),
        );
    }
    let (inode, path) = paths
        .into_iter()
        .find_map(|p| super::netns_inode(&p).ok().map(|i| (i, p)))
        .ok_or_else(|| format!("{} ({}): no network namespace", c.name, short(&c.id)))?;
    let image = c
        .bundle
        .as_ref()
        .and_then(|b| b.parent()?.parent().map(|d| d.join("containers.json")))
        .and_then(|j| std::fs::read_to_string(j).ok())
        .and_then(|j| stored_image(&j, &c.id))
        .unwrap_or_default();
    Ok(Found {
        inode,
        path,
        pod: Pod {
            namespace: String::new(),
            name: c.name.clone(),
            uid: String::new(),
            source: PodSource::Podman,
            container: Some(Container {
                runtime: "podman".into(),
                id: c.id,
                name: c.name,
                image,
            }),
        },
    })
}

/// A container id as `podman ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3cf6c00b8ea009bc60036a0ffa8c9f2551b9ff0ba2620064d205d4f34da375e3";

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn podmans_conmon_names_the_container() {
        // As Podman 4.3 starts it (abridged).
        let bundle = format!("/var/lib/containers/storage/overlay-containers/{ID}/userdata");
        let line = cmdline(&[
            "/usr/bin/conmon",
            "--api-version",
            "1",
            "-c",
            ID,
            "-u",
            ID,
            "-r",
            "/usr/bin/runc",
            "-b",
            &bundle,
            "-n",
            "shop-web",
            "--exit-command",
            "/usr/bin/podman",
            "--exit-command-arg",
            "-n",
        ]);
        let c = Conmon::parse(&line).unwrap();
        assert_eq!((c.id.as_str(), c.name.as_str()), (ID, "shop-web"));
        assert_eq!(c.bundle, Some(PathBuf::from(bundle)));
        let long = cmdline(&["conmon", "--cid=abc", "--name=db", "--exit-command=podman"]);
        let c = Conmon::parse(&long).unwrap();
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.bundle),
            ("abc", "db", None)
        );
    }

    #[test]
    fn other_processes_and_cri_o_conmons_are_not_podman_containers() {
        let podman = ["--exit-command", "/usr/bin/podman"];
        let with = |args: &[&str]| cmdline(&[args, &podman[..]].concat());
        assert_eq!(Conmon::parse(&with(&["sleep", "-c", "x", "-n", "y"])), None);
        // CRI-O's conmon: no Podman cleanup command (its pods come from CRI).
        let crio = cmdline(&["/usr/bin/conmon", "-c", ID, "-n", "k8s_x"]);
        assert_eq!(Conmon::parse(&crio), None);
        assert_eq!(Conmon::parse(&with(&["conmon", "-c", ID])), None);
        assert_eq!(Conmon::parse(&cmdline(&["conmon", "-c", ID, "-n"])), None);
        assert_eq!(Conmon::parse(b""), None);
        assert_eq!(Conmon::parse(b"conmon\0-c\0\xff\0-n\0x\0"), None);
    }

    #[test]
    fn the_spec_names_the_namespace_and_storage_the_image() {
        let spec = r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},
            {"type":"network","path":"/run/netns/netns-e5c600b9"},{"type":"mount"}]}}"#;
        assert_eq!(
            spec_netns(spec),
            Some(PathBuf::from("/run/netns/netns-e5c600b9"))
        );
        assert_eq!(
            spec_netns(r#"{"linux":{"namespaces":[{"type":"network"}]}}"#),
            None
        );
        assert_eq!(spec_netns("not json"), None);
        let stored = format!(
            r#"[{{"id":"other","metadata":"{{}}"}},{{"id":"{ID}","names":["shop-web"],
            "metadata":"{{\"image-name\":\"localhost/nttbox:1\",\"name\":\"shop-web\"}}"}}]"#
        );
        assert_eq!(
            stored_image(&stored, ID).as_deref(),
            Some("localhost/nttbox:1")
        );
        assert_eq!(stored_image(&stored, "other"), None);
        assert_eq!(stored_image("{}", ID), None);
    }

    /// A `/proc` of two conmons: one whose container runs (its `ns/net` opens this process's
    /// namespace), one whose container died after conmon was listed. Plus a process that only
    /// calls itself conmon.
    #[test]
    fn a_container_that_died_is_skipped_and_the_others_still_named() {
        let root = std::env::temp_dir().join(format!("nt-podman-{}", std::process::id()));
        let proc_dir = |pid: u32| root.join(pid.to_string());
        let conmon = |pid: u32, child: u32, name: &str| {
            let dir = proc_dir(pid);
            std::fs::create_dir_all(dir.join(format!("task/{pid}"))).unwrap();
            std::fs::write(dir.join("comm"), "conmon\n").unwrap();
            std::fs::write(
                dir.join("cmdline"),
                cmdline(&["conmon", "-c", ID, "-n", name, "--exit-command", "podman"]),
            )
            .unwrap();
            std::fs::write(
                dir.join(format!("task/{pid}/children")),
                format!("{child} "),
            )
            .unwrap();
        };
        conmon(10, 11, "alive");
        std::fs::create_dir_all(proc_dir(11).join("ns")).unwrap();
        std::os::unix::fs::symlink("/proc/self/ns/net", proc_dir(11).join("ns/net")).unwrap();
        conmon(20, 21, "gone");
        std::fs::create_dir_all(proc_dir(30)).unwrap();
        std::fs::write(proc_dir(30).join("comm"), "conmon\n").unwrap();
        std::fs::write(
            proc_dir(30).join("cmdline"),
            cmdline(&["conmon", "--version"]),
        )
        .unwrap();

        let (found, answered) = discover(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(answered);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.pod.name, "alive");
        assert_eq!(f.pod.source, PodSource::Podman);
        assert_eq!(f.path, root.join("11/ns/net"));
        let c = f.pod.container.as_ref().unwrap();
        assert_eq!(
            (c.runtime.as_str(), c.id.as_str(), c.image.as_str()),
            ("podman", ID, "")
        );
        assert_eq!(discover(&root.join("absent")), (Vec::new(), false));
    }
}
