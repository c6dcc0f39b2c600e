//! The files a lab runtime is started from: containerd's config and two CNI conflists.

use std::path::Path;

use crate::subnet::Subnet;

fn q(p: &Path) -> String {
    // TOML basic strings: our paths never hold quotes or backslashes (checked by the caller),
    // but escape anyway rather than write a broken config.
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

pub struct ContainerdPaths<'a> {
    pub root: &'a Path,
    pub state: &'a Path,
    pub socket: &'a Path,
    pub opt: &'a Path,
    pub runc_root: &'a Path,
    pub cni_bin_dir: &'a Path,
    pub bridge_conf_dir: &'a Path,
    pub ptp_conf_dir: &'a Path,
}

/// containerd 1.6 config (version 2): own root, state and socket so several daemons coexist;
/// the CRI plugin with two runtime handlers, `runc` (bridge) and `ptp` (routed), each with its
/// own `cni_conf_dir`.
pub fn containerd_toml(p: &ContainerdPaths<'_>, sandbox_image: &str) -> String {
    const CRI: &str = "plugins.\"io.containerd.grpc.v1.cri\"";
    let runtime = |name: &str, conf_dir: &Path| {
        format!(
            "[{CRI}.containerd.runtimes.{name}]\n\
             runtime_type = \"io.containerd.runc.v2\"\n\
             cni_conf_dir = {conf}\n\
             cni_max_conf_num = 1\n\
             [{CRI}.containerd.runtimes.{name}.options]\n\
             SystemdCgroup = false\n\
             Root = {runc_root}\n",
            conf = q(conf_dir),
            runc_root = q(p.runc_root),
        )
    };
    format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         [grpc]\n\
         address = {socket}\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n\
         path = {opt}\n\
         [{CRI}]\n\
         sandbox_image = \"{sandbox_image}\"\n\
         # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj: \"can't get final child's PID from pipe\".\n\
         restrict_oom_score_adj = true\n\
         disable_apparmor = true\n\
         stream_server_address = \"127.0.0.1\"\n\
         stream_server_port = \"0\"\n\
         [{CRI}.cni]\n\
         bin_dir = {bin}\n\
         conf_dir = {bridge}\n\
         max_conf_num = 1\n\
         [{CRI}.containerd]\n\
         default_runtime_name = \"runc\"\n\
         snapshotter = \"overlayfs\"\n\
         {runc}{ptp}",
        root = q(p.root),
        state = q(p.state),
        socket = q(p.socket),
        opt = q(p.opt),
        bin = q(p.cni_bin_dir),
        bridge = q(p.bridge_conf_dir),
        runc = runtime("runc", p.bridge_conf_dir),
        ptp = runtime("ptp", p.ptp_conf_dir),
    )
}

/// CNI `bridge` like flannel's `cni0`: the bridge holds the gateway address, no masquerade and
/// no default route in the pod (host-local gets no `routes`), so pod traffic cannot leave.
pub fn bridge_conflist(network: &str, bridge: &str, subnet: Subnet) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "isDefaultGateway": false,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": subnet.to_string() }]] }
        }]
    })
    .to_string()
}

/// CNI `ptp` routed like GKE: no bridge, every host veth carries the same gateway /32 and a
/// host route to its pod. No default route in the pod, no masquerade.
pub fn ptp_conflist(network: &str, subnet: Subnet) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "ptp",
            "ipMasq": false,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": subnet.to_string() }]] }
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_both_runtimes_with_their_cni_dirs() {
        let p = |s: &'static str| Path::new(s);
        let toml = containerd_toml(
            &ContainerdPaths {
                root: p("/s/root"),
                state: p("/s/state"),
                socket: p("/s/c.sock"),
                opt: p("/s/opt"),
                runc_root: p("/s/runc"),
                cni_bin_dir: p("/usr/lib/cni"),
                bridge_conf_dir: p("/s/cni/bridge"),
                ptp_conf_dir: p("/s/cni/ptp"),
            },
            "x/pause:1",
        );
        assert!(toml.contains("containerd.runtimes.ptp]\nruntime_type = \"io.containerd.runc.v2\"\ncni_conf_dir = \"/s/cni/ptp\""));
        assert!(toml.contains("containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\ncni_conf_dir = \"/s/cni/bridge\""));
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains("SystemdCgroup = false"));
        let bridge: serde_json::Value =
            serde_json::from_str(&bridge_conflist("n", "br", "10.1.0.0/24".parse().unwrap()))
                .unwrap();
        assert_eq!(bridge["plugins"][0]["ipMasq"], false);
        assert!(bridge["plugins"][0]["ipam"].get("routes").is_none());
    }
}
