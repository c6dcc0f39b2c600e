//! Where packets die and which TCP segments are sent again: programs on the `kfree_skb` and
//! `tcp_retransmit_skb` tracepoints. They run only when the kernel frees a packet it did not
//! deliver, or retransmits, never per delivered packet.
//!
//! aya-ebpf has no CO-RE field relocations, so the loader reads the offsets of the few kernel
//! fields we follow from the running kernel's BTF and sets them in `DROP_CFG` before load;
//! every read goes through `bpf_probe_read_kernel` (a bad offset reads an error, never a crash).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, map},
    maps::PerCpuHashMap,
    programs::BtfTracePointContext,
};
use node_tracer_common::{DropConfig, DropKey, STAT_DROP_INSERT_FAILED, STAT_RETX_INSERT_FAILED};

use crate::bump_stat;

/// Dropped packets per (device, namespace, reason). Sizes are set by the loader.
#[map]
static DROP_STATS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);
/// Retransmitted TCP segments per network namespace inode.
#[map]
static RETX_STATS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Field offsets, set by the loader from the kernel's BTF (zeros here: never run unset, the
/// loader does not load these programs without them).
#[unsafe(no_mangle)]
static DROP_CFG: DropConfig = DropConfig {
    skb_dev: 0,
    skb_sk: 0,
    skb_cb: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    sk_net: 0,
    net_inum: 0,
    cb_gso_segs: 0,
    reason_consumed: 1,
    reason_not_dropped: 0,
    retx_has_err: 0,
    reason_no_socket: 0,
    skb_head: 0,
    skb_protocol: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
};

#[inline(always)]
fn cfg() -> DropConfig {
    // SAFETY: a plain read of a constant the loader rewrote before load.
    unsafe { core::ptr::read_volatile(&raw const DROP_CFG) }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T).ok() }
}

/// Inode of the namespace `struct net *net`, or 0.
#[inline(always)]
fn net_inode(c: &DropConfig, net: u64) -> u32 {
    read::<u32>(net, c.net_inum).unwrap_or(0)
}

/// `kfree_skb(skb, location, reason, rx_sk)`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn nt_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let c = cfg();
    let skb: u64 = ctx.arg(0);
    // An enum argument fills its 64-bit slot; the values fit in 32 bits.
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if reason == c.reason_consumed || reason == c.reason_not_dropped {
        return 0;
    }
    if reason == c.reason_no_socket && is_echo_reply(&c, skb) {
        return 0;
    }
    let dev = read::<u64>(skb, c.skb_dev).unwrap_or(0);
    let mut key = DropKey {
        ifindex: 0,
        netns: 0,
        reason,
        pad: 0,
    };
    if dev != 0 {
        key.ifindex = read::<u32>(dev, c.dev_ifindex).unwrap_or(0);
        key.netns = net_inode(&c, read::<u64>(dev, c.dev_nd_net).unwrap_or(0));
    }
    if key.netns == 0 {
        let sk = read::<u64>(skb, c.skb_sk).unwrap_or(0);
        if sk != 0 {
            key.netns = net_inode(&c, read::<u64>(sk, c.sk_net).unwrap_or(0));
        }
    }
    add(&DROP_STATS, &key, 1, STAT_DROP_INSERT_FAILED);
    0
}

/// Whether `skb` is an ICMP or ICMPv6 echo reply. `icmp_rcv` / `icmpv6_rcv` free every echo
/// reply no *ping* socket took with `no_socket`, also when a raw socket (iputils `ping` as root)
/// received its copy: counted, every ping would read as a drop. Only the IP and ICMP headers the
/// kernel already parsed are read, and only for `no_socket` drops.
#[inline(always)]
fn is_echo_reply(c: &DropConfig, skb: u64) -> bool {
    /// `ETH_P_IP`, `ETH_P_IPV6` as `skb->protocol` holds them (big endian), read little endian.
    const IP: u16 = 0x0800_u16.to_be();
    const IPV6: u16 = 0x86dd_u16.to_be();
    /// `skb->transport_header` not set.
    const UNSET: u16 = 0xffff;
    let (Some(head), Some(proto), Some(nh), Some(th)) = (
        read::<u64>(skb, c.skb_head),
        read::<u16>(skb, c.skb_protocol),
        read::<u16>(skb, c.skb_network_header),
        read::<u16>(skb, c.skb_transport_header),
    ) else {
        return false;
    };
    if head == 0 || th == UNSET || nh == UNSET {
        return false;
    }
    // (offset of the next-protocol byte in the IP header, ICMP protocol, echo reply type)
    let (next_at, icmp, echo_reply) = match proto {
        IP => (9, 1, 0),
        IPV6 => (6, 58, 129),
        _ => return false,
    };
    // An IPv6 reply behind extension headers does not match: counted, never hidden wrongly.
    read::<u8>(head, u32::from(nh) + next_at) == Some(icmp)
        && read::<u8>(head, u32::from(th)) == Some(echo_reply)
}

/// `tcp_retransmit_skb(sk, skb[, err])`: counted like the kernel's `TcpRetransSegs`, in
/// segments (a GSO skb carries several).
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn nt_tcp_retx(ctx: BtfTracePointContext) -> i32 {
    let c = cfg();
    if c.retx_has_err != 0 {
        let err: i64 = ctx.arg(2);
        // Since 6.15 the tracepoint also fires for retransmits that were never sent.
        if err as i32 != 0 {
            return 0;
        }
    }
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let netns = net_inode(&c, read::<u64>(sk, c.sk_net).unwrap_or(0));
    let segs = read::<u16>(skb, c.skb_cb + c.cb_gso_segs)
        .unwrap_or(1)
        .max(1);
    add(
        &RETX_STATS,
        &netns,
        u64::from(segs),
        STAT_RETX_INSERT_FAILED,
    );
    0
}

#[inline(always)]
fn add<K>(map: &PerCpuHashMap<K, u64>, key: &K, n: u64, full_stat: u32) {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's value; the kernel does not nest a tracing program on one CPU.
        unsafe { *v += n };
    } else if map.insert(key, &n, u64::from(BPF_NOEXIST)).is_err() {
        // Another program on this CPU cannot have inserted it meanwhile (no nesting), so an
        // error is a full map.
        bump_stat(full_stat);
    }
}
