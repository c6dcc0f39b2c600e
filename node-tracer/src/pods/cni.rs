//! libcni's result cache: `/var/lib/cni/results/<network>-<sandboxID>-<ifname>`.
//!
//! It outlives a dead runtime socket (and is what the runtime itself reads back on teardown), so
//! it names pods even when CRI cannot be asked. The pod's identity is in `cniArgs` (the
//! kubelet's `K8S_POD_*` args, in no fixed order); its namespace is the interface entry that has
//! a `sandbox` key (the host veth and the bridge have none).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Found;
use crate::model::{Pod, PodSource};

/// One cache entry, as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEntry {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod-side namespace path (`result.interfaces[].sandbox`).
    pub netns: PathBuf,
}

/// Why one cache file names no pod: logged and skipped, never an error of discovery.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CniCacheError {
    #[error("not JSON")]
    Json(#[source] serde_json::Error),
    #[error("no K8S_POD_NAME in cniArgs (not a pod)")]
    NotAPod,
    #[error("no interface with a sandbox in result")]
    NoSandbox,
}

/// Parses one cache file's contents.
pub(crate) fn parse_result(json: &str) -> Result<CniEntry, CniCacheError> {
    let v: Value = serde_json::from_str(json).map_err(CniCacheError::Json)?;
    let arg = |key: &str| -> Option<String> {
        v.get("cniArgs")?
            .as_array()?
            .iter()
            .filter_map(Value::as_array)
            .filter(|pair| pair.first().and_then(Value::as_str) == Some(key))
            .find_map(|pair| pair.get(1)?.as_str().map(str::to_owned))
    };
    let name = arg("K8S_POD_NAME")
        .filter(|n| !n.is_empty())
        .ok_or(CniCacheError::NotAPod)?;
    let netns = v
        .pointer("/result/interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("sandbox").and_then(Value::as_str))
        .find(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or(CniCacheError::NoSandbox)?;
    Ok(CniEntry {
        namespace: arg("K8S_POD_NAMESPACE").unwrap_or_default(),
        name,
        uid: arg("K8S_POD_UID").unwrap_or_default(),
        netns,
    })
}

pub(super) fn discover(dir: &Path) -> Vec<Found> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            log::debug!("pods: no CNI cache at {}: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // A file removed between readdir and read is a pod torn down meanwhile: not news.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::debug!("pods: CNI cache {} vanished", path.display());
                continue;
            }
            // Not UTF-8, unreadable: a corrupt entry someone should look at.
            Err(e) => {
                crate::failures::count("pods_cni_cache");
                log::warn!("pods: CNI cache {} skipped: {e}", path.display());
                continue;
            }
        };
        let parsed = match parse_result(&text) {
            Ok(p) => p,
            Err(CniCacheError::NotAPod) => {
                log::debug!("pods: CNI cache {}: not a pod", path.display());
                continue;
            }
            Err(e) => {
                log::warn!(
                    "pods: CNI cache {} skipped: {}",
                    path.display(),
                    node_tracer_client::one_line(&e)
                );
                continue;
            }
        };
        // A cache entry of a pod whose namespace is gone is stale, not a pod.
        match super::netns_inode(&parsed.netns) {
            Ok(inode) => out.push(Found {
                inode,
                path: parsed.netns,
                pod: Pod {
                    namespace: parsed.namespace,
                    name: parsed.name,
                    uid: parsed.uid,
                    source: PodSource::CniCache,
                    container: None,
                },
            }),
            Err(e) => log::debug!(
                "pods: CNI cache {}: {}: {e}",
                path.display(),
                parsed.netns.display()
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of a real containerd 1.6 / libcni `cniCacheV1` file (bridge plugin).
    const FIXTURE: &str = r#"{"kind":"cniCacheV1","containerId":"7f3c","config":"eyJ9",
        "ifName":"eth0","networkName":"lab-bridge",
        "cniArgs":[["K8S_POD_INFRA_CONTAINER_ID","7f3c"],["K8S_POD_UID","u-1"],
                   ["IgnoreUnknown","1"],["K8S_POD_NAMESPACE","shop"],["K8S_POD_NAME","web-0"]],
        "capabilityArgs":{"io.kubernetes.cri.pod-annotations":{}},
        "result":{"cniVersion":"1.0.0","interfaces":[
            {"name":"cni0","mac":"aa:bb:cc:dd:ee:01"},
            {"name":"veth1234","mac":"aa:bb:cc:dd:ee:02"},
            {"name":"eth0","mac":"aa:bb:cc:dd:ee:03","sandbox":"/var/run/netns/cni-9a"}],
          "ips":[{"interface":2,"address":"10.1.0.5/24","gateway":"10.1.0.1"}]}}"#;

    #[test]
    fn parses_pod_identity_and_sandbox() {
        let e = parse_result(FIXTURE).unwrap();
        assert_eq!(
            e,
            CniEntry {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: "u-1".into(),
                netns: "/var/run/netns/cni-9a".into(),
            }
        );
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(matches!(parse_result(""), Err(CniCacheError::Json(_))));
        assert!(matches!(
            parse_result("{\"cniArgs\":"),
            Err(CniCacheError::Json(_))
        ));
        assert!(matches!(parse_result("[]"), Err(CniCacheError::NotAPod)));
        assert!(matches!(
            parse_result(r#"{"cniArgs":"K8S_POD_NAME=x","result":{}}"#),
            Err(CniCacheError::NotAPod)
        ));
        assert!(matches!(
            parse_result(
                r#"{"cniArgs":[["K8S_POD_NAME"],[1,2],["K8S_POD_NAME","x"]],"result":{"interfaces":[{"name":"veth0"}]}}"#
            ),
            Err(CniCacheError::NoSandbox)
        ));
        assert!(matches!(
            parse_result(
                r#"{"cniArgs":[["K8S_POD_NAME","x"]],"result":{"interfaces":{"sandbox":"/x"}}}"#
            ),
            Err(CniCacheError::NoSandbox)
        ));
    }

    #[test]
    fn discover_skips_junk_and_stale_entries() {
        let dir = std::env::temp_dir().join(format!("nt-cni-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad-1-eth0"), "{garbage").unwrap();
        std::fs::write(dir.join("stale-2-eth0"), FIXTURE).unwrap();
        let found = discover(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found.is_empty(), "{found:?}");
        assert!(discover(Path::new("/nonexistent/cni/results")).is_empty());
    }
}
