//! The drops part of a snapshot: dropped packets per pod and reason, TCP retransmits per pod.
//! Plain data, below the model that holds it; `drops` fills it from what the programs counted.

use serde::{Deserialize, Serialize};

/// Dropped packets of one pod (or the host) for one reason.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropCount {
    pub namespace: String,
    pub pod: String,
    /// The container's name as Docker or Podman gives it (the `name` label), empty for a pod no
    /// container engine named and for the host. Absent in JSON when empty, and from older agents.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The pod's host-side veth; empty for the host.
    pub interface: String,
    /// `enum skb_drop_reason` in lower case without its prefix: `netfilter_drop`.
    pub reason: String,
    pub count: u64,
}

/// Retransmitted TCP segments of one pod's namespace (or of the host and unnamed namespaces).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetransmitCount {
    pub namespace: String,
    pub pod: String,
    /// As [`DropCount::name`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub count: u64,
}

/// The drops part of a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropReport {
    /// Whether each part runs (off: turned off, or the kernel lacks what it needs).
    pub drops_on: bool,
    pub retransmits_on: bool,
    pub drops: Vec<DropCount>,
    pub retransmits: Vec<RetransmitCount>,
}

impl DropReport {
    /// Drops of the pod behind host veth `interface`, all reasons.
    pub fn drops_of(&self, interface: &str) -> u64 {
        self.drops
            .iter()
            .filter(|d| d.interface == interface)
            .map(|d| d.count)
            .sum()
    }

    /// Retransmitted segments of pod `namespace/pod`.
    pub fn retransmits_of(&self, namespace: &str, pod: &str) -> u64 {
        self.retransmits
            .iter()
            .filter(|r| r.namespace == namespace && r.pod == pod)
            .map(|r| r.count)
            .sum()
    }

    /// The reasons of `interface`'s drops, most first.
    pub fn reasons_of(&self, interface: &str) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .drops
            .iter()
            .filter(|d| d.interface == interface && d.count > 0)
            .map(|d| (d.reason.as_str(), d.count))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}
