//! Types shared by the tc programs and the loader. Every type is `#[repr(C)]` with fixed-width
//! integers and explicit padding, so both sides agree on the layout byte for byte; the `const`
//! assertions below fail the build if they ever drift.
#![no_std]

/// Program names (at most 15 bytes: the kernel truncates longer names). Netlink-mode filters carry
/// these names, which is how a restarted agent recognises its own stale filters.
pub const PROG_INGRESS: &str = "nt_ingress";
pub const PROG_EGRESS: &str = "nt_egress";
/// The same programs for clsact filters (netlink): they step aside for a packet our tcx program
/// already counted, which makes a lossless move from netlink to tcx possible.
pub const PROG_INGRESS_NL: &str = "nt_ingress_nl";
pub const PROG_EGRESS_NL: &str = "nt_egress_nl";

/// Direction at the host-side veth. Ingress on the host veth is what the pod transmits.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Protocol buckets, indexes into [`PortStats`] arrays. The order is the metric contract's.
pub const PROTO_ARP: usize = 0;
pub const PROTO_ICMP: usize = 1;
pub const PROTO_ICMPV6: usize = 2;
pub const PROTO_TCP: usize = 3;
pub const PROTO_UDP: usize = 4;
pub const PROTO_IPV4_OTHER: usize = 5;
pub const PROTO_IPV6_OTHER: usize = 6;
pub const PROTO_OTHER: usize = 7;
pub const PROTO_COUNT: usize = 8;

/// Per-CPU counters of one port (value of `PORT_COUNTERS` and `PORT_STATS`), per direction
/// (`DIR_INGRESS`, `DIR_EGRESS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub dirs: [PortDir; 2],
}
const _: () = assert!(core::mem::size_of::<PortStats>() == 2 * 176);

/// One direction of a port on one CPU, laid out in the order a packet touches it. Between two
/// packets the whole network stack runs and evicts what the program used, so the live cost of a
/// run is mostly its cache misses. Every packet reads and writes the first 32 bytes (the MAC
/// cache and the tcx mark) and one 16-byte pair of `counts`; TCP's and UDP's pairs come right
/// after (see [`count_slot`]), so a TCP or UDP packet touches one 64-byte span of the entry,
/// where the packet and byte counters, the mark and the cache used to lie in four lines.
///
/// The MAC cache is the source MAC the port saw last (on this CPU and direction) and its packets
/// not yet added to its `MAC_SEEN` entry. A pod's port sees the same MAC packet after packet;
/// counting it here spares the `MAC_SEEN` lookup on that path. When a different MAC arrives the
/// pending counts are added to the old MAC's entry. Readers add `mac_packets`/`mac_bytes` to the
/// entry of `mac`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortDir {
    pub mac: [u8; 6],
    /// 1 once `mac` holds a MAC seen on the port.
    pub mac_valid: u8,
    /// 1 when our tcx program counted the packet this CPU handles now, so that our clsact
    /// program, which runs next for the same packet while a port moves from netlink to tcx,
    /// steps aside (it clears the mark). Never read outside the programs.
    pub tcx_seen: u8,
    pub mac_packets: u64,
    pub mac_bytes: u64,
    /// `jiffies` when `mac_last_ns` was taken: the clock is read once per tick, not per packet.
    pub mac_last_tick: u64,
    /// Per protocol, at [`count_slot`]`(PROTO_*)`.
    pub counts: [Count; PROTO_COUNT],
    /// When this CPU last saw `mac` (written once per tick), and started seeing it (since the
    /// last switch): after the counters, out of the packet's way.
    pub mac_last_ns: u64,
    pub mac_first_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PortDir>() == 32 + 16 * PROTO_COUNT + 16);

/// Where protocol `proto` (`PROTO_*`) is counted in [`PortDir::counts`]: a rotation that puts
/// TCP and UDP first, next to the MAC cache, so the commonest packets touch one span of 64 bytes.
// Always inlined: in the programs a call that is not inlined becomes a BPF subprogram call,
// which costs more than the rotation itself.
#[allow(clippy::inline_always)]
#[inline(always)]
pub const fn count_slot(proto: usize) -> usize {
    (proto + PROTO_COUNT - PROTO_TCP) % PROTO_COUNT
}
const _: () = assert!(count_slot(PROTO_TCP) == 0 && count_slot(PROTO_UDP) == 1);
const _: () = assert!(count_slot(PROTO_OTHER) == PROTO_COUNT - 1 - PROTO_TCP);

/// Packets and bytes of one protocol, side by side: counting a packet writes one 16-byte pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// Entry of `PORT_SLOTS`, a direct-mapped table indexed by `ifindex & SLOT_MASK`: the port's
/// counters are `PORT_COUNTERS[slot]` when `ifindex` matches (two array lookups, which the
/// verifier inlines); a port whose index is taken by another uses the `PORT_STATS` hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSlot {
    /// 0: free.
    pub ifindex: u32,
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<PortSlot>() == 8);

/// Key of `ICMP_STATS`: one ICMP/ICMPv6 message type on one port and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IcmpKey {
    pub ifindex: u32,
    pub dir: u8,
    /// 4 or 6.
    pub family: u8,
    pub icmp_type: u8,
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<IcmpKey>() == 8);

/// Key of `MAC_SEEN`: a source MAC on one port and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dir: u8,
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<MacKey>() == 12);

/// Value of `MAC_SEEN` (per CPU). Times are `CLOCK_MONOTONIC` nanoseconds (coarse).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacStats {
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<MacStats>() == 32);

/// TCP flags counted per port and direction (`flag` of [`TcpFlagKey`]). A SYN with ACK is a
/// `synack`, not a `syn`; a packet carrying several (FIN with RST) counts for each.
pub const TCP_SYN: u8 = 0;
pub const TCP_SYNACK: u8 = 1;
pub const TCP_RST: u8 = 2;
pub const TCP_FIN: u8 = 3;
pub const TCP_FLAG_COUNT: usize = 4;

/// Key of `TCP_FLAGS` (per-CPU `u64` counts): one flag on one port and direction. Entries exist
/// only for flags a port has seen, so a port without TCP costs nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlagKey {
    pub ifindex: u32,
    pub dir: u8,
    pub flag: u8,
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<TcpFlagKey>() == 8);

/// Key of `SYN_PENDING` (a shared LRU: the SYN-ACK may be handled by another CPU than the SYN):
/// a connection's 4-tuple as the SYN carried it, on one port. IPv4 addresses fill the first 4
/// bytes of each address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Value of `SYN_PENDING`: when the port saw the SYN, and in which direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSyn {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ts_ns: u64,
    pub dir: u8,
    pub pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<PendingSyn>() == 16);

/// Upper bounds (nanoseconds, inclusive) of the handshake histogram's buckets; a last bucket
/// holds the rest (+Inf). In-cluster handshakes take tens of microseconds to a millisecond, a
/// remote peer tens to hundreds of milliseconds, a lost SYN a second or more (its retransmit).
pub const HANDSHAKE_BOUNDS_NS: [u64; 7] = [
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    25_000_000,
    100_000_000,
    1_000_000_000,
];
pub const HANDSHAKE_BUCKETS: usize = HANDSHAKE_BOUNDS_NS.len() + 1;

/// Key of `HANDSHAKES`: one port, and the direction of the SYN (host ingress: the pod connects
/// out; host egress: a connection into the pod).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortDirKey {
    pub ifindex: u32,
    pub dir: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<PortDirKey>() == 8);

/// Value of `HANDSHAKES` (per CPU): SYN to SYN-ACK times seen at the port. `buckets` are not
/// cumulative (the reader sums them into Prometheus' cumulative form).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; HANDSHAKE_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<HandshakeStats>() == 16 + 8 * HANDSHAKE_BUCKETS);

/// Indexes into the per-CPU `AGENT_STATS` array: what the programs could not do.
pub const STAT_PORT_INSERT_FAILED: u32 = 0;
pub const STAT_ICMP_INSERT_FAILED: u32 = 1;
pub const STAT_MAC_INSERT_FAILED: u32 = 2;
pub const STAT_MAC_NEW: u32 = 3;
pub const STAT_EVENTS_LOST: u32 = 4;
pub const STAT_EVENTS_SENT: u32 = 5;
/// `DROP_STATS` / `RETX_STATS` full: a drop or retransmit that could not be counted.
pub const STAT_DROP_INSERT_FAILED: u32 = 6;
pub const STAT_RETX_INSERT_FAILED: u32 = 7;
/// `TCP_FLAGS` or `HANDSHAKES` full.
pub const STAT_TCP_INSERT_FAILED: u32 = 8;
pub const STAT_COUNT: u32 = 9;

/// Tracepoint program names (drops and TCP retransmits).
pub const PROG_KFREE_SKB: &str = "nt_kfree_skb";
pub const PROG_TCP_RETX: &str = "nt_tcp_retx";

/// Key of `DROP_STATS`: where a packet died and why. The loader attributes it to a pod: by
/// `ifindex` when that is a pod's host veth, else by `netns` when that is a pod's namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// `skb->dev->ifindex`; 0 when the packet had no device (a socket's queue).
    pub ifindex: u32,
    /// Inode of the network namespace of the device, else of the socket; 0 when neither.
    pub netns: u32,
    /// `enum skb_drop_reason` value; names come from the kernel's BTF.
    pub reason: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<DropKey>() == 16);

/// Byte offsets of the kernel fields the tracepoint programs read, from the running kernel's BTF
/// (aya-ebpf has no CO-RE field relocations), set by the loader as the global `DROP_CFG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub skb_cb: u32,
    pub dev_ifindex: u32,
    pub dev_nd_net: u32,
    pub sk_net: u32,
    pub net_inum: u32,
    /// `tcp_skb_cb.tcp_gso_segs` inside `skb->cb`: segments in a retransmitted skb.
    pub cb_gso_segs: u32,
    /// Reasons that are not drops (`SKB_CONSUMED`, `SKB_NOT_DROPPED_YET`).
    pub reason_consumed: u32,
    pub reason_not_dropped: u32,
    /// 1 when `tcp_retransmit_skb` carries `err` (Linux 6.15+, fired on failures too).
    pub retx_has_err: u32,
    /// `SKB_DROP_REASON_NO_SOCKET`: an ICMP echo reply freed with it is no drop (see
    /// `nt_kfree_skb`).
    pub reason_no_socket: u32,
    /// `sk_buff.head`, `.protocol`, `.network_header`, `.transport_header`: where the IP and
    /// ICMP headers of a `no_socket` packet are.
    pub skb_head: u32,
    pub skb_protocol: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
}
const _: () = assert!(core::mem::size_of::<DropConfig>() == 64);

/// Bytes of each traced packet copied into its event (enough for every ICMP header we decode).
pub const SNAP_LEN: usize = 128;

/// One traced ICMP/ICMPv6 packet (ring buffer `EVENTS`), written only while `TRACE_ON[0] != 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpEvent {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Length of the whole frame (`skb->len`).
    pub len: u32,
    pub dir: u8,
    /// 4 or 6.
    pub family: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Bytes of `data` filled.
    pub cap_len: u16,
    /// Offset of the ICMP header inside `data`.
    pub l4_off: u16,
    /// The frame from its Ethernet header, as the program saw it.
    pub data: [u8; SNAP_LEN],
}
const _: () = assert!(core::mem::size_of::<IcmpEvent>() == 24 + SNAP_LEN);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `repr(C)`, made only of integers with explicit padding fields.
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::PortSlot {}
    unsafe impl aya::Pod for super::IcmpKey {}
    unsafe impl aya::Pod for super::MacKey {}
    unsafe impl aya::Pod for super::MacStats {}
    unsafe impl aya::Pod for super::IcmpEvent {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::DropConfig {}
    unsafe impl aya::Pod for super::TcpFlagKey {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::PendingSyn {}
    unsafe impl aya::Pod for super::PortDirKey {}
    unsafe impl aya::Pod for super::HandshakeStats {}
}
