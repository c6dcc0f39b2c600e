//! The CNI network configuration (`/etc/cni/net.d`): which bridges their network asks to run in
//! hairpin mode. A hairpin port there is the configuration working (a pod reaching itself
//! through its Service), not an anomaly.
//!
//! Two shapes ask for it: the `bridge` plugin's own `"hairpinMode": true` (its bridge is
//! `"bridge"`, `cni0` when unnamed), and a plugin that delegates to `bridge` (flannel:
//! `"delegate": {"hairpinMode": true}`, bridge `cni0` unless the delegate names one). A file is
//! a `.conflist` (its `plugins`) or a single `.conf` / `.json` plugin.

use std::{collections::BTreeSet, path::Path};

use serde_json::Value;

/// The CNI bridge plugin's default bridge name.
const DEFAULT_BRIDGE: &str = "cni0";

/// Bridges whose CNI configuration under `dir` asks for hairpin mode. An absent directory is
/// none; a file that is not JSON is skipped with a debug line (the runtime itself ignores it).
pub fn hairpin_bridges(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let is_conf = path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| matches!(x, "conflist" | "conf" | "json"));
        if !is_conf {
            continue;
        }
        match std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        {
            Some(v) => out.extend(from_config(&v)),
            None => log::debug!("pods: {}: not a CNI configuration", path.display()),
        }
    }
    out
}

/// The hairpin bridges one configuration (a list or a single plugin) names.
fn from_config(v: &Value) -> Vec<String> {
    let plugins: Vec<&Value> = match v.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![v],
    };
    plugins.into_iter().filter_map(hairpin_bridge).collect()
}

fn hairpin_bridge(plugin: &Value) -> Option<String> {
    let asks = |p: &Value| p.get("hairpinMode").and_then(Value::as_bool) == Some(true);
    let bridge = |p: &Value| {
        p.get("bridge")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_BRIDGE)
            .to_owned()
    };
    if plugin.get("type").and_then(Value::as_str) == Some("bridge") && asks(plugin) {
        return Some(bridge(plugin));
    }
    let delegate = plugin.get("delegate")?;
    let delegates_to_bridge = delegate
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(|t| t == "bridge");
    (delegates_to_bridge && asks(delegate)).then(|| bridge(delegate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Vec<String> {
        from_config(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn bridge_plugins_and_flannels_delegate_ask_for_hairpin() {
        // Podman's default network, abridged.
        let podman = r#"{"cniVersion":"0.4.0","name":"podman","plugins":[
            {"type":"bridge","bridge":"cni-podman0","hairpinMode":true},{"type":"portmap"}]}"#;
        assert_eq!(parse(podman), ["cni-podman0"]);
        // flannel's default: the bridge is cni0 unless the delegate names one.
        let flannel = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel",
            "delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap"}]}"#;
        assert_eq!(parse(flannel), ["cni0"]);
        let single = r#"{"type":"bridge","hairpinMode":true}"#;
        assert_eq!(parse(single), ["cni0"]);
    }

    #[test]
    fn no_hairpin_unless_asked() {
        assert!(parse(r#"{"plugins":[{"type":"bridge","bridge":"br0"}]}"#).is_empty());
        assert!(parse(r#"{"type":"bridge","bridge":"br0","hairpinMode":false}"#).is_empty());
        assert!(parse(r#"{"type":"ptp","hairpinMode":true}"#).is_empty());
        assert!(
            parse(r#"{"type":"flannel","delegate":{"type":"ipvlan","hairpinMode":true}}"#)
                .is_empty()
        );
        assert!(parse(r#"{"plugins":"nonsense"}"#).is_empty());
    }

    #[test]
    fn a_directory_of_files_some_broken() {
        let dir = std::env::temp_dir().join(format!("nt-cniconf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("10-a.conflist"),
            r#"{"plugins":[{"type":"bridge","bridge":"bra","hairpinMode":true}]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("20-b.conf"), "not json").unwrap();
        std::fs::write(
            dir.join("30-c.txt"),
            r#"{"type":"bridge","bridge":"brc","hairpinMode":true}"#,
        )
        .unwrap();
        let found = hairpin_bridges(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.into_iter().collect::<Vec<_>>(), ["bra"]);
        assert!(hairpin_bridges(Path::new("/nonexistent/cni")).is_empty());
    }
}
