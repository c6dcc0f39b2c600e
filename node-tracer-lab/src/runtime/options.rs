//! Everything that makes one lab runtime distinct from another running beside it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{LAB_ROOT, Subnet};
use crate::{error::Error, subnet::host_route_subnets};

/// Where a runtime lives and how its pods are networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Names the CNI networks (`<name>-bridge`, `<name>-ptp`); `[a-z0-9-]`, at most 32.
    pub name: String,
    /// Config, root, state, runc root, CNI configs, pod logs. Removed on stop.
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The bridge the `runc` handler's pods are plugged into.
    pub bridge: String,
    pub bridge_subnet: Subnet,
    pub ptp_subnet: Subnet,
    pub cni_bin_dir: PathBuf,
    /// Where the pause image tar is cached between runtimes (kept on stop).
    pub cache_dir: PathBuf,
    pub start_timeout: Duration,
    /// Bound on each CRI call the runtime makes (`RunPodSandbox` takes ~0.3 s).
    pub cri_timeout: Duration,
}

impl RuntimeOptions {
    pub fn new(name: &str) -> Self {
        let state_dir = Path::new(LAB_ROOT).join(name);
        Self {
            name: name.to_owned(),
            socket: state_dir.join("containerd.sock"),
            state_dir,
            bridge: "cni0".into(),
            // Private, apart from each other and from the usual docker/k8s/flannel ranges.
            bridge_subnet: Subnet::new([10, 199, 0, 0].into(), 24),
            ptp_subnet: Subnet::new([10, 198, 0, 0].into(), 24),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            cache_dir: Path::new(LAB_ROOT).join("cache"),
            start_timeout: Duration::from_secs(30),
            cri_timeout: Duration::from_secs(30),
        }
    }

    pub fn bridge_network(&self) -> String {
        format!("{}-bridge", self.name)
    }

    pub fn ptp_network(&self) -> String {
        format!("{}-ptp", self.name)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Options(m));
        if self.name.is_empty()
            || self.name.len() > 32
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad(format!("name {:?}: use 1..=32 of [a-z0-9-]", self.name));
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 || self.bridge.contains(['/', ' ']) {
            return bad(format!("bridge {:?}: not an interface name", self.bridge));
        }
        // sun_path is 108 bytes; containerd adds ".ttrpc".
        if self.socket.as_os_str().len() > 100 {
            return bad(format!("socket path {} is too long", self.socket.display()));
        }
        for p in [
            &self.state_dir,
            &self.socket,
            &self.cni_bin_dir,
            &self.cache_dir,
        ] {
            if p.to_string_lossy().contains(['"', '\\', '\n']) || !p.is_absolute() {
                return bad(format!("path {}: absolute, no quotes", p.display()));
            }
        }
        if self.bridge_subnet.overlaps(&self.ptp_subnet) {
            return bad(format!(
                "{} overlaps {}",
                self.bridge_subnet, self.ptp_subnet
            ));
        }
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        for route in host_route_subnets(&routes) {
            for subnet in [self.bridge_subnet, self.ptp_subnet] {
                if subnet.overlaps(&route) {
                    return Err(Error::SubnetInUse { subnet, route });
                }
            }
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            return Err(Error::BridgeExists(self.bridge.clone()));
        }
        Ok(())
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self::new("lab")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_do_not_collide() {
        let o = RuntimeOptions::default();
        assert!(!o.bridge_subnet.overlaps(&o.ptp_subnet));
        assert_ne!(o.bridge_network(), o.ptp_network());
        assert!(o.socket.starts_with(&o.state_dir));
    }

    #[test]
    fn bad_options_are_refused_before_anything_starts() {
        let bad = |f: fn(&mut RuntimeOptions)| {
            let mut o = RuntimeOptions::new("unit");
            o.bridge = "ntunitnone0".into();
            f(&mut o);
            o.validate().is_err()
        };
        assert!(bad(|o| o.name = "Has Space".into()));
        assert!(bad(|o| o.name = String::new()));
        assert!(bad(|o| o.bridge = "a-name-too-long-for-ifnamsiz".into()));
        assert!(bad(|o| o.ptp_subnet = o.bridge_subnet));
        assert!(bad(
            |o| o.socket = PathBuf::from(format!("/run/{}", "x".repeat(120)))
        ));
        assert!(bad(|o| o.state_dir = PathBuf::from("relative/dir")));
        // A subnet the host already routes: a lab there would shadow real traffic.
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        if let Some(route) = host_route_subnets(&routes).first() {
            let mut o = RuntimeOptions::new("unit");
            o.bridge = "ntunitnone0".into();
            o.bridge_subnet = *route;
            assert!(matches!(o.validate(), Err(Error::SubnetInUse { .. })));
        }
        assert!(!bad(|_| {}));
    }
}
