//! The sandbox ("pause") image, built here because there is no registry: a static binary that
//! sleeps until SIGTERM/SIGINT, packed as an OCI image layout tar that `ctr images import`
//! takes, named by the `io.containerd.image.name` annotation.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use sha2::{Digest as _, Sha256};

use crate::{
    error::{Error, io},
    process::run,
};

/// The name the CRI plugin is told to use as `sandbox_image`.
pub const PAUSE_IMAGE: &str = "node-tracer.local/pause:1";

/// As PID 1 of its pid namespace the process ignores signals it has no handler for, so it needs
/// handlers to stop; it also reaps children, as the real pause does.
const PAUSE_C: &str = r"#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGTERM, quit);
    signal(SIGINT, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
";

fn sha256(path: &Path) -> Result<String, Error> {
    let bytes = std::fs::read(path).map_err(io(path.display().to_string()))?;
    Ok(format!("{:x}", Sha256::digest(bytes)))
}

/// Stores `path` as a blob; returns (digest, size).
fn blob(layout: &Path, path: &Path) -> Result<(String, u64), Error> {
    let hash = sha256(path)?;
    let size = std::fs::metadata(path)
        .map_err(io(path.display().to_string()))?
        .len();
    let dst = layout.join("blobs/sha256").join(&hash);
    std::fs::rename(path, &dst).map_err(io(dst.display().to_string()))?;
    Ok((format!("sha256:{hash}"), size))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), Error> {
    std::fs::write(path, v.to_string()).map_err(io(path.display().to_string()))
}

static BUILDS: AtomicU32 = AtomicU32::new(0);

/// Returns the path of `pause.tar` in `cache_dir`, building it first if it is not there.
pub fn pause_tar(cache_dir: &Path) -> Result<PathBuf, Error> {
    let tar = cache_dir.join("pause.tar");
    if tar.is_file() {
        return Ok(tar);
    }
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir.display().to_string()))?;
    // Built aside and renamed into place, so runtimes started in parallel never read half a tar.
    let n = BUILDS.fetch_add(1, Ordering::Relaxed);
    let work = cache_dir.join(format!("build-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = build(&work, &tar);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| tar)
}

fn build(work: &Path, tar: &Path) -> Result<(), Error> {
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    std::fs::create_dir_all(&rootfs).map_err(io(rootfs.display().to_string()))?;
    std::fs::create_dir_all(layout.join("blobs/sha256"))
        .map_err(io(layout.display().to_string()))?;
    let src = work.join("pause.c");
    std::fs::write(&src, PAUSE_C).map_err(io(src.display().to_string()))?;
    run(Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(rootfs.join("pause"))
        .arg(&src))?;

    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
        .arg(&layer)
        .arg("-C")
        .arg(&rootfs)
        .arg("pause"))?;
    let (layer_digest, layer_size) = blob(&layout, &layer)?;

    let config = work.join("config.json");
    write_json(
        &config,
        &serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Entrypoint": ["/pause"] },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] }
        }),
    )?;
    let (config_digest, config_size) = blob(&layout, &config)?;

    let manifest = work.join("manifest.json");
    write_json(
        &manifest,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest, "size": config_size
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest, "size": layer_size
            }]
        }),
    )?;
    let (manifest_digest, manifest_size) = blob(&layout, &manifest)?;

    write_json(
        &layout.join("oci-layout"),
        &serde_json::json!({ "imageLayoutVersion": "1.0.0" }),
    )?;
    let ref_name = PAUSE_IMAGE.rsplit(':').next().unwrap_or("latest");
    write_json(
        &layout.join("index.json"),
        &serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "platform": { "architecture": "amd64", "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": PAUSE_IMAGE,
                    "org.opencontainers.image.ref.name": ref_name
                }
            }]
        }),
    )?;
    let part = work.join("pause.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&part)
        .arg("-C")
        .arg(&layout)
        .args(["oci-layout", "index.json", "blobs"]))?;
    std::fs::rename(&part, tar).map_err(io(tar.display().to_string()))
}

/// Imports the pause image into the daemon at `socket` unless it has it already.
pub fn ensure_imported(socket: &Path, cache_dir: &Path) -> Result<(), Error> {
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(socket).args(["-n", "k8s.io"]).args(args);
        c
    };
    let have = run(&mut ctr(&["images", "ls", "-q"]))?;
    if have.lines().any(|l| l.trim() == PAUSE_IMAGE) {
        return Ok(());
    }
    let tar = pause_tar(cache_dir)?;
    let tar = tar.to_string_lossy();
    run(&mut ctr(&[
        "images",
        "import",
        "--platform",
        "linux/amd64",
        &tar,
    ]))?;
    Ok(())
}
