//! The bytes of the image: the gzipped layer, the config, the manifest, the OCI index, and the
//! outer tar that carries them. Everything is built in memory and written once.

use std::{collections::BTreeSet, io::Write as _, path::Path};

use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{BINARY_PATH, Error, ImageSpec, files::File, io, normalized};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// One fixed time for every entry and for `created`: the same binary gives the same digests.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// A content-addressed blob.
struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            digest: sha256(&bytes),
            bytes,
        }
    }

    fn json(v: &Value) -> Self {
        Self::new(v.to_string().into_bytes())
    }

    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.trim_start_matches("sha256:"))
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

pub struct Image {
    layer: Blob,
    config: Blob,
    manifest: Blob,
    index: Value,
    docker_manifest: Value,
}

impl Image {
    pub fn new(spec: &ImageSpec, files: &[File]) -> Result<Self, Error> {
        let tar = layer_tar(files).map_err(io("layer tar"))?;
        let diff_id = sha256(&tar);
        let mut gz = GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), Compression::best());
        gz.write_all(&tar).map_err(io("gzip layer"))?;
        let layer = Blob::new(gz.finish().map_err(io("gzip layer"))?);

        let mut labels = json!({
            "org.opencontainers.image.title": "node-tracer",
            "org.opencontainers.image.description":
                "eBPF traffic observer for container nodes: per-veth, per-pod counters, peers, MACs and ICMP traces",
            "org.opencontainers.image.version": spec.version,
            "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
            "org.opencontainers.image.created": EPOCH,
        });
        if let Some(rev) = &spec.revision {
            labels["org.opencontainers.image.revision"] = json!(rev);
        }
        let config = Blob::json(&json!({
            "created": EPOCH,
            "architecture": architecture(),
            "os": "linux",
            "config": {
                "Entrypoint": [format!("/{BINARY_PATH}")],
                "Cmd": ["run"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": labels,
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": EPOCH, "created_by": "cargo xtask image" }],
        }));
        let manifest = Blob::json(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.descriptor(CONFIG),
            "layers": [layer.descriptor(LAYER)],
        }));
        let tags = spec.tags();
        // One entry per tag: containerd names each image from its entry's annotation.
        let entries: Vec<Value> = tags
            .iter()
            .map(|t| {
                let mut d = manifest.descriptor(MANIFEST);
                d["platform"] = json!({ "architecture": architecture(), "os": "linux" });
                d["annotations"] = json!({
                    "io.containerd.image.name": normalized(t),
                    "org.opencontainers.image.ref.name": t.rsplit_once(':').map_or("latest", |(_, tag)| tag),
                });
                d
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries });
        let docker_manifest = json!([{
            "Config": config.path(),
            "RepoTags": tags,
            "Layers": [layer.path()],
        }]);
        Ok(Self {
            layer,
            config,
            manifest,
            index,
            docker_manifest,
        })
    }

    pub fn manifest_digest(&self) -> String {
        self.manifest.digest.clone()
    }

    /// The outer tar: `oci-layout`, `index.json`, `manifest.json`, then the blobs.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let file = std::fs::File::create(path).map_err(io(path.display()))?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(file));
        let mut entries: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                json!({ "imageLayoutVersion": "1.0.0" })
                    .to_string()
                    .into_bytes(),
            ),
            ("index.json".into(), self.index.to_string().into_bytes()),
            (
                "manifest.json".into(),
                self.docker_manifest.to_string().into_bytes(),
            ),
        ];
        let mut blobs: Vec<&Blob> = vec![&self.layer, &self.config, &self.manifest];
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        let write = |b: &mut tar::Builder<_>, name: &str, bytes: &[u8], mode: u32| {
            append(b, name, bytes, mode, tar::EntryType::Regular)
        };
        for dir in ["blobs/", "blobs/sha256/"] {
            append(&mut b, dir, &[], 0o755, tar::EntryType::Directory)
                .map_err(io(path.display()))?;
        }
        for (name, bytes) in entries.drain(..) {
            write(&mut b, &name, &bytes, 0o644).map_err(io(path.display()))?;
        }
        for blob in blobs {
            write(&mut b, &blob.path(), &blob.bytes, 0o644).map_err(io(path.display()))?;
        }
        let mut w = b.into_inner().map_err(io(path.display()))?;
        w.flush().map_err(io(path.display()))?;
        w.get_ref().sync_all().map_err(io(path.display()))
    }
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// One header, owner 0, mtime 0, for a file or a directory.
fn append<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    mode: u32,
    kind: tar::EntryType,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(bytes.len() as u64);
    b.append_data(&mut h, name, bytes)
}

/// The layer: every parent directory (0755), then the files, in path order.
fn layer_tar(files: &[File]) -> std::io::Result<Vec<u8>> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let mut p = f.image_path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            dirs.insert(format!("{parent}/"));
            p = parent;
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    for d in &dirs {
        append(&mut b, d, &[], 0o755, tar::EntryType::Directory)?;
    }
    let mut sorted: Vec<&File> = files.iter().collect();
    sorted.sort_by(|a, b| a.image_path.cmp(&b.image_path));
    for f in sorted {
        append(
            &mut b,
            &f.image_path,
            &f.bytes,
            f.mode,
            tar::EntryType::Regular,
        )?;
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            binary: "/nowhere".into(),
            version: "9.9.9".into(),
            revision: Some("abc".into()),
            name: "node-tracer".into(),
        }
    }

    fn files() -> Vec<File> {
        vec![
            File {
                image_path: "lib64/ld.so".into(),
                bytes: b"loader".to_vec(),
                mode: 0o755,
            },
            File {
                image_path: BINARY_PATH.into(),
                bytes: b"agent".to_vec(),
                mode: 0o755,
            },
        ]
    }

    #[test]
    fn same_input_same_digests() {
        let a = Image::new(&spec(), &files()).unwrap();
        let b = Image::new(&spec(), &files()).unwrap();
        assert_eq!(a.manifest_digest(), b.manifest_digest());
        assert_eq!(a.layer.digest, b.layer.digest);
    }

    #[test]
    fn layer_lists_parents_before_children_sorted() {
        let tar = layer_tar(&files()).unwrap();
        let mut a = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "lib64/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "lib64/ld.so",
                "usr/local/bin/node-tracer"
            ]
        );
    }

    #[test]
    fn index_and_docker_manifest_name_both_tags() {
        let img = Image::new(&spec(), &files()).unwrap();
        let names: Vec<&str> = img.index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["annotations"]["io.containerd.image.name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [
                "docker.io/library/node-tracer:9.9.9",
                "docker.io/library/node-tracer:latest"
            ]
        );
        assert_eq!(
            img.docker_manifest[0]["RepoTags"],
            json!(["node-tracer:9.9.9", "node-tracer:latest"])
        );
        let config: Value = serde_json::from_slice(&img.config.bytes).unwrap();
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "9.9.9"
        );
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            sha256(&layer_tar(&files()).unwrap())
        );
    }
}
