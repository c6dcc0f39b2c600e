//! `cargo xtask image`: the agent's OCI image as `target/image/node-tracer.tar`, from the release
//! binary, without a registry or a container build (the packing is `node_tracer_image`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use node_tracer_image::{Built, ImageSpec};

use crate::{status, step, workspace_root};

/// Where `cargo xtask image` writes the image.
pub fn tar_path() -> PathBuf {
    workspace_root().join("target/image/node-tracer.tar")
}

/// Builds the release binary (unless `binary` names one) and packs it.
pub fn run(binary: Option<&Path>) -> Result<()> {
    let binary = if let Some(b) = binary {
        b.to_path_buf()
    } else {
        step("image: release build of node-tracer");
        status(
            Command::new("cargo").args(["build", "--release", "-p", "node-tracer"]),
            "cargo build --release -p node-tracer",
        )?;
        workspace_root().join("target/release/node-tracer")
    };
    step("image: packing the binary and its shared libraries");
    let built = pack(&binary)?;
    for (path, size) in &built.files {
        eprintln!("  /{path:<45} {:>8.1} KiB", *size as f64 / 1024.0);
    }
    println!(
        "{} ({:.1} MiB), manifest {}, tags {}",
        built.path.display(),
        built.size as f64 / (1024.0 * 1024.0),
        built.manifest_digest,
        built.tags.join(", ")
    );
    eprintln!(
        "load it with `docker load -i {0}` or `ctr -n k8s.io images import {0}`; \
         push it and set `images:` in deploy/kustomization.yaml (deploy/README.md)",
        built.path.display()
    );
    Ok(())
}

/// Packs `binary` into [`tar_path`], tagged `node-tracer:<workspace version>` and `:latest`.
pub fn pack(binary: &Path) -> Result<Built> {
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let spec = ImageSpec {
        binary: binary.to_path_buf(),
        version: env!("CARGO_PKG_VERSION").into(),
        revision,
        name: "node-tracer".into(),
    };
    node_tracer_image::build(&spec, &tar_path())
        .with_context(|| format!("building the image from {}", binary.display()))
}
