//! Loading the drop and retransmit programs (tracepoints `kfree_skb` and `tcp_retransmit_skb`):
//! the kernel field offsets and reason names they need come from the running kernel's BTF.
//!
//! Each part is optional: a BTF without what a part needs, or a tracepoint that does not attach,
//! turns that part off with one warning, and the health metric
//! `node_tracer_tracking_enabled{part}` says so; the rest of the agent runs as before.

use std::{
    collections::BTreeMap,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuHashMap},
    programs::BtfTracePoint,
};
use node_tracer_common::{DropConfig, DropKey, PROG_KFREE_SKB, PROG_TCP_RETX};

use super::kernel_btf::{Btf, BtfError, drop_reason_names};
use crate::error::{Error, Result};

/// Which parts run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracking {
    pub drops: bool,
    pub retransmits: bool,
}

/// What the loader learned from BTF before loading the object.
pub struct Prepared {
    pub config: DropConfig,
    /// `enum skb_drop_reason` label by value; `None` turns drops off.
    pub reasons: Option<BTreeMap<u32, String>>,
    /// The offsets were all found (both parts need them).
    pub offsets: bool,
}

impl Prepared {
    /// Nothing to load (tracking turned off by the user).
    pub fn off() -> Self {
        Self {
            config: DropConfig::default(),
            reasons: None,
            offsets: false,
        }
    }

    /// Reads the kernel's BTF; whatever is missing is warned about once, here.
    pub fn from_kernel() -> Self {
        match Btf::from_sys() {
            Ok(btf) => Self::from_btf(&btf),
            Err(e) => {
                warn_off("drops and retransmits", &e);
                Self::off()
            }
        }
    }

    pub fn from_btf(btf: &Btf) -> Self {
        let config = match offsets(btf) {
            Ok(c) => c,
            Err(e) => {
                warn_off("drops and retransmits", &e);
                return Self::off();
            }
        };
        let reasons = match drop_reason_names(btf) {
            Ok(r) => Some(r),
            Err(e) => {
                warn_off("drops", &e);
                None
            }
        };
        Self {
            config,
            reasons,
            offsets: true,
        }
    }
}

fn warn_off(part: &str, e: &(dyn std::error::Error + 'static)) {
    log::warn!(
        "{part} tracking is off: {}",
        node_tracer_client::one_line(e)
    );
}

/// Field offsets and enum values the programs use.
fn offsets(btf: &Btf) -> Result<DropConfig, BtfError> {
    let value = |name: &str| -> Result<u32, BtfError> {
        btf.enum_values("skb_drop_reason")?
            .into_iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| u32::try_from(v).ok())
            .ok_or_else(|| BtfError::Missing(format!("skb_drop_reason {name}")))
    };
    Ok(DropConfig {
        skb_dev: btf.member_offset("sk_buff", &["dev"])?,
        skb_sk: btf.member_offset("sk_buff", &["sk"])?,
        skb_cb: btf.member_offset("sk_buff", &["cb"])?,
        dev_ifindex: btf.member_offset("net_device", &["ifindex"])?,
        dev_nd_net: btf.member_offset("net_device", &["nd_net", "net"])?,
        sk_net: btf.member_offset("sock_common", &["skc_net", "net"])?,
        net_inum: btf.member_offset("net", &["ns", "inum"])?,
        cb_gso_segs: btf.member_offset("tcp_skb_cb", &["tcp_gso_segs"])?,
        // Without the enum, drops stay off; these only matter when it is there.
        reason_consumed: value("SKB_CONSUMED").unwrap_or(1),
        reason_not_dropped: value("SKB_NOT_DROPPED_YET").unwrap_or(0),
        retx_has_err: u32::from(btf.tracepoint_args("tcp_retransmit_skb").unwrap_or(2) >= 3),
        // No such value: every echo reply check is skipped (the reasons are small numbers).
        reason_no_socket: value("SKB_DROP_REASON_NO_SOCKET").unwrap_or(u32::MAX),
        skb_head: btf.member_offset("sk_buff", &["head"])?,
        skb_protocol: btf.member_offset("sk_buff", &["protocol"])?,
        skb_network_header: btf.member_offset("sk_buff", &["network_header"])?,
        skb_transport_header: btf.member_offset("sk_buff", &["transport_header"])?,
    })
}

/// Loads and attaches what `prepared` allows. The links live in `ebpf` (the kernel detaches
/// them when the agent exits, even on SIGKILL).
pub fn attach(ebpf: &mut Ebpf, prepared: &Prepared) -> Tracking {
    if !prepared.offsets {
        return Tracking::default();
    }
    let btf = match aya::Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => {
            warn_off("drops and retransmits", &e);
            return Tracking::default();
        }
    };
    let mut one = |name: &'static str, tracepoint: &str, part: &str| -> bool {
        let result = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))
            .and_then(|p| {
                let p: &mut BtfTracePoint = p.try_into().map_err(|e| format!("{name}: {e}"))?;
                p.load(tracepoint, &btf)
                    .and_then(|()| p.attach().map(drop))
                    .map_err(|e| {
                        format!(
                            "attaching to tracepoint {tracepoint}: {}",
                            node_tracer_client::one_line(&e)
                        )
                    })
            });
        match result {
            Ok(()) => true,
            Err(e) => {
                log::warn!("{part} tracking is off: {e}");
                false
            }
        }
    };
    let drops = prepared.reasons.is_some() && one(PROG_KFREE_SKB, "kfree_skb", "drops");
    let retransmits = one(PROG_TCP_RETX, "tcp_retransmit_skb", "retransmits");
    Tracking { drops, retransmits }
}

/// The label of reason `value`: its BTF name, else `reason_N`, warned about once per agent.
fn reason_name(names: &BTreeMap<u32, String>, value: u32, warned: &AtomicBool) -> String {
    if let Some(n) = names.get(&value) {
        return n.clone();
    }
    if !warned.swap(true, Ordering::Relaxed) {
        log::warn!(
            "drop reason {value} is not in the kernel's enum skb_drop_reason; \
             shown as reason_{value}"
        );
    }
    format!("reason_{value}")
}

/// One `DROP_STATS` entry summed over CPUs, its reason named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropReading {
    pub ifindex: u32,
    pub netns: u64,
    pub reason: String,
    pub count: u64,
}

/// What the drop and retransmit programs counted, as read now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counted {
    pub drops: Vec<DropReading>,
    /// (network namespace inode, retransmitted segments).
    pub retransmits: Vec<(u64, u64)>,
    /// The agent's own namespace: a device there is a host device.
    pub host_netns: u64,
}

/// The drop and retransmit maps, read by every scrape.
pub struct DropMaps {
    pub tracking: Tracking,
    reasons: BTreeMap<u32, String>,
    drops: Map,
    retx: Map,
    host_netns: u64,
    /// A reason value the BTF did not name was warned about (once).
    warned: AtomicBool,
}

impl DropMaps {
    pub(super) fn open(
        ebpf: &Ebpf,
        tracking: Tracking,
        reasons: BTreeMap<u32, String>,
    ) -> Result<Self> {
        let dup = |name: &'static str| -> Result<Map> {
            let map = ebpf.map(name).ok_or(Error::MapMissing(name))?;
            let fd = match map {
                Map::PerCpuHashMap(d) => d.fd().as_fd().try_clone_to_owned(),
                _ => return Err(Error::MapMissing(name)),
            }
            .map_err(|e| Error::io(format!("dup the fd of map {name}"), e))?;
            MapData::from_fd(fd)
                .and_then(Map::from_map_data)
                .map_err(|source| Error::Map { name, source })
        };
        let host_netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        Ok(Self {
            tracking,
            reasons,
            drops: dup("DROP_STATS")?,
            retx: dup("RETX_STATS")?,
            host_netns,
            warned: AtomicBool::new(false),
        })
    }

    /// Sums both maps over CPUs.
    pub fn read(&self) -> Result<Counted> {
        let mut out = Counted {
            host_netns: self.host_netns,
            ..Counted::default()
        };
        if self.tracking.drops {
            let map =
                PerCpuHashMap::<_, DropKey, u64>::try_from(&self.drops).map_err(|source| {
                    Error::Map {
                        name: "DROP_STATS",
                        source,
                    }
                })?;
            for entry in &map {
                let (k, v) = entry.map_err(|source| Error::Map {
                    name: "DROP_STATS",
                    source,
                })?;
                out.drops.push(DropReading {
                    ifindex: k.ifindex,
                    netns: u64::from(k.netns),
                    reason: self.reason(k.reason),
                    count: v.iter().sum(),
                });
            }
        }
        if self.tracking.retransmits {
            let map = PerCpuHashMap::<_, u32, u64>::try_from(&self.retx).map_err(|source| {
                Error::Map {
                    name: "RETX_STATS",
                    source,
                }
            })?;
            for entry in &map {
                let (k, v) = entry.map_err(|source| Error::Map {
                    name: "RETX_STATS",
                    source,
                })?;
                out.retransmits.push((u64::from(k), v.iter().sum()));
            }
        }
        Ok(out)
    }

    /// The label of a reason value: its BTF name, else `reason_N` (warned about once: a value
    /// the kernel's own enum does not name, such as a subsystem's reason).
    fn reason(&self, value: u32) -> String {
        reason_name(&self.reasons, value, &self.warned)
    }

    /// Entries in each map, for `node_tracer_map_entries`.
    pub fn entries(&self) -> Vec<(&'static str, usize)> {
        let mut out = Vec::new();
        if let Ok(m) = PerCpuHashMap::<_, DropKey, u64>::try_from(&self.drops) {
            out.push(("DROP_STATS", m.keys().count()));
        }
        if let Ok(m) = PerCpuHashMap::<_, u32, u64>::try_from(&self.retx) {
            out.push(("RETX_STATS", m.keys().count()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_gives_every_offset_and_the_reasons() {
        let btf = Btf::from_sys().expect("/sys/kernel/btf/vmlinux");
        let p = Prepared::from_btf(&btf);
        assert!(p.offsets);
        let c = p.config;
        assert!(c.skb_dev > 0 && c.skb_cb > 0 && c.dev_ifindex > 0 && c.net_inum > 0);
        // skb->cb is 48 bytes; tcp_gso_segs follows seq and end_seq.
        assert_eq!(c.cb_gso_segs, 8);
        assert_eq!((c.reason_not_dropped, c.reason_consumed), (0, 1));
        // 6.15+: tcp_retransmit_skb(sk, skb, err).
        assert_eq!(c.retx_has_err, 1);
        assert!(c.reason_no_socket > 1 && c.reason_no_socket < 1000);
        assert!(c.skb_head > 0 && c.skb_protocol > 0);
        assert_eq!(
            c.skb_transport_header + 2,
            c.skb_network_header,
            "adjacent u16s"
        );
        assert!(p.reasons.is_some_and(|r| r.len() > 50));
    }

    #[test]
    fn a_btf_without_the_fields_turns_both_parts_off_without_a_panic() {
        // A valid BTF holding one int: nothing the programs need.
        let mut blob = Vec::new();
        blob.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, 16, 16, 5] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        for w in [1u32, 1 << 24, 4, 32] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(b"\0int\0");
        let p = Prepared::from_btf(&Btf::parse(&blob).unwrap());
        assert!(!p.offsets && p.reasons.is_none());
    }

    #[test]
    fn an_unnamed_reason_is_labelled_by_value_and_warned_about_once() {
        let names = BTreeMap::from([(12, "netfilter_drop".to_string())]);
        let warned = AtomicBool::new(false);
        assert_eq!(reason_name(&names, 12, &warned), "netfilter_drop");
        assert!(!warned.load(Ordering::Relaxed));
        assert_eq!(reason_name(&names, 0x1_0003, &warned), "reason_65539");
        assert!(warned.load(Ordering::Relaxed));
        assert_eq!(reason_name(&names, 7, &warned), "reason_7");
    }
}
