//! The agent's OCI image, built without a registry and without a container build (`cargo xtask
//! image`, and the tests that run the DaemonSet's pod spec under containerd).
//!
//! One layer: the `node-tracer` binary and exactly what the dynamic loader needs to start it (the
//! shared libraries `ldd` names, and the loader itself, at the paths the binary asks for). No
//! shell, no package manager: the agent runs nothing but itself. The layer is reproducible
//! (entries sorted, owner 0, one fixed mtime, gzip without a timestamp), so the same binary
//! gives the same digests.
//!
//! The tar holds an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) for
//! `ctr images import` and Docker ≥ 25, and the `manifest.json` of `docker save` for older
//! Docker engines (Debian 12's 20.10 loads only that), both naming the same blobs.

mod files;
mod layout;

use std::path::{Path, PathBuf};

pub use files::runtime_files;

/// Where the binary lives in the image; `PATH` includes its directory, so `kubectl exec … --
/// node-tracer trace icmp` works too.
pub const BINARY_PATH: &str = "usr/local/bin/node-tracer";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("ldd {binary}: {reason}")]
    Ldd { binary: PathBuf, reason: String },
    #[error(
        "image reference {0:?}: use NAME:TAG with [a-z0-9._/-] in NAME and [A-Za-z0-9._-] in TAG"
    )]
    Reference(String),
}

pub(crate) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Io(what.to_string(), e)
}

/// What goes into the image and what it is called.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The `node-tracer` binary (release for `cargo xtask image`, the tests' build in tests).
    pub binary: PathBuf,
    /// `org.opencontainers.image.version`, and the tag besides `latest`.
    pub version: String,
    /// `org.opencontainers.image.revision` (the git commit), if known.
    pub revision: Option<String>,
    /// Repository names to tag, e.g. `node-tracer`: each gets `:<version>` and `:latest`.
    pub name: String,
}

/// What [`build`] wrote.
#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    /// Size of the tar written.
    pub size: u64,
    /// `sha256:…` of the image manifest (what a registry calls the image's digest).
    pub manifest_digest: String,
    /// The references the tar carries, e.g. `node-tracer:0.1.0`, `node-tracer:latest`.
    pub tags: Vec<String>,
    /// The files in the layer (image paths) and their sizes.
    pub files: Vec<(String, u64)>,
}

impl ImageSpec {
    pub fn tags(&self) -> Vec<String> {
        vec![
            format!("{}:{}", self.name, self.version),
            format!("{}:latest", self.name),
        ]
    }

    fn check(&self) -> Result<(), Error> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b));
        let tag_ok = !self.version.is_empty()
            && self.version.len() <= 128
            && self
                .version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if name_ok && tag_ok {
            Ok(())
        } else {
            Err(Error::Reference(format!("{}:{}", self.name, self.version)))
        }
    }
}

/// Builds the image tar at `out` (written aside and renamed, so a reader never sees half).
pub fn build(spec: &ImageSpec, out: &Path) -> Result<Built, Error> {
    spec.check()?;
    let files = runtime_files(&spec.binary)?;
    let image = layout::Image::new(spec, &files)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
    }
    let part = out.with_extension("tar.part");
    let written = image.write(&part).and_then(|()| {
        std::fs::rename(&part, out).map_err(io(out.display()))?;
        std::fs::metadata(out)
            .map(|m| m.len())
            .map_err(io(out.display()))
    });
    let size = match written {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    Ok(Built {
        path: out.to_path_buf(),
        size,
        manifest_digest: image.manifest_digest(),
        tags: spec.tags(),
        files: files
            .iter()
            .map(|f| (f.image_path.clone(), f.bytes.len() as u64))
            .collect(),
    })
}

/// The fully qualified name a CRI runtime resolves a short reference to (`node-tracer:0.1.0` is
/// `docker.io/library/node-tracer:0.1.0` to the kubelet and containerd).
pub fn normalized(reference: &str) -> String {
    let (name, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
    let first = name.split('/').next().unwrap_or(name);
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_registry, name.contains('/')) {
        (true, _) => format!("{name}:{tag}"),
        (false, true) => format!("docker.io/{name}:{tag}"),
        (false, false) => format!("docker.io/library/{name}:{tag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_references_normalize_as_the_cri_does() {
        assert_eq!(
            normalized("node-tracer:0.1.0"),
            "docker.io/library/node-tracer:0.1.0"
        );
        assert_eq!(normalized("me/nt:1"), "docker.io/me/nt:1");
        assert_eq!(normalized("ghcr.io/me/nt:1"), "ghcr.io/me/nt:1");
        assert_eq!(normalized("localhost/nt:1"), "localhost/nt:1");
    }

    #[test]
    fn bad_references_are_refused() {
        let spec = |name: &str, version: &str| ImageSpec {
            binary: PathBuf::new(),
            version: version.into(),
            revision: None,
            name: name.into(),
        };
        assert!(spec("node-tracer", "0.1.0").check().is_ok());
        assert!(spec("Node", "1").check().is_err());
        assert!(spec("nt", "a b").check().is_err());
        assert!(spec("nt", "").check().is_err());
    }
}
