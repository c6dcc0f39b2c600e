//! tc programs of node-tracer: attached to both directions of every host-side veth, they count
//! packets and bytes per port, direction and protocol, track source MACs, count ICMP types and
//! TCP flags, time TCP handshakes (`tcp.rs`), and,
//! only while a tracer is attached, emit one event per ICMP packet.
//!
//! Rules: never modify, drop or redirect a packet; return `TCX_NEXT` on every path so programs
//! after ours still run; do a bounded amount of work per packet.
#![no_std]
#![no_main]

mod drops;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::warn;

mod parse;
mod tcp;
use node_tracer_common::{
    Count, DIR_EGRESS, DIR_INGRESS, IcmpEvent, IcmpKey, MacKey, MacStats, PROTO_COUNT, PortDir,
    PortSlot, PortStats, SNAP_LEN, STAT_COUNT, STAT_EVENTS_LOST, STAT_EVENTS_SENT,
    STAT_ICMP_INSERT_FAILED, STAT_MAC_INSERT_FAILED, STAT_MAC_NEW, STAT_PORT_INSERT_FAILED,
    count_slot,
};
use parse::{ETH_HLEN, Parsed, parse};

/// `TCX_NEXT`: let the next program (or the stack) decide. Same value as `TC_ACT_UNSPEC`, which
/// cls_bpf treats as "continue with the next filter", so it is right in netlink mode too.
const TCX_NEXT: i32 = -1;

// Sizes are the defaults; the loader sets them at load time from its flags.
/// Per port (ifindex & `SLOT_MASK`): where its counters are (see `PortSlot`).
#[map]
static PORT_SLOTS: Array<PortSlot> = Array::with_max_entries(4096, 0);
#[map]
static PORT_COUNTERS: PerCpuArray<PortStats> = PerCpuArray::with_max_entries(2048, 0);
/// Counters of ports without a slot (their `PORT_SLOTS` entry belongs to another port), and of
/// packets racing a detach. Allocated as used: it is rarely more than empty.
#[map]
static PORT_STATS: PerCpuHashMap<u32, PortStats> =
    PerCpuHashMap::with_max_entries(2048, BPF_F_NO_PREALLOC);
#[map]
static ICMP_STATS: PerCpuHashMap<IcmpKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);
#[map]
static MAC_SEEN: LruPerCpuHashMap<MacKey, MacStats> = LruPerCpuHashMap::with_max_entries(16384, 0);
#[map]
static AGENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);
/// `TRACE_ON[0] != 0` while a tracer reads `EVENTS`; nothing is written otherwise.
#[map]
static TRACE_ON: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// `PORT_SLOTS` size - 1 (a power of two), set by the loader.
#[unsafe(no_mangle)]
static SLOT_MASK: u32 = 4095;

/// Initial value of a `PORT_STATS` entry, kept in read-only data: a `PortStats` on the stack
/// would take most of the program's 512-byte stack.
static ZERO_PORT: PortStats = PortStats {
    dirs: [ZERO_DIR; 2],
};
const ZERO_DIR: PortDir = PortDir {
    mac: [0; 6],
    mac_valid: 0,
    tcx_seen: 0,
    mac_packets: 0,
    mac_bytes: 0,
    mac_last_tick: 0,
    counts: [Count {
        packets: 0,
        bytes: 0,
    }; PROTO_COUNT],
    mac_last_ns: 0,
    mac_first_ns: 0,
};

/// tcx programs.
#[classifier]
pub fn nt_ingress(ctx: TcContext) -> i32 {
    observe::<true>(&ctx, DIR_INGRESS);
    TCX_NEXT
}

#[classifier]
pub fn nt_egress(ctx: TcContext) -> i32 {
    observe::<true>(&ctx, DIR_EGRESS);
    TCX_NEXT
}

/// clsact (netlink) programs: the same, unless our tcx program already counted the packet.
#[classifier]
pub fn nt_ingress_nl(ctx: TcContext) -> i32 {
    observe::<false>(&ctx, DIR_INGRESS);
    TCX_NEXT
}

#[classifier]
pub fn nt_egress_nl(ctx: TcContext) -> i32 {
    observe::<false>(&ctx, DIR_EGRESS);
    TCX_NEXT
}

/// Counts one packet. `TCX`: whether this is the tcx program. While a port moves from netlink
/// to tcx both of ours run, tcx first, then clsact, back to back on the same CPU for the same
/// packet (softirq, or bottom halves disabled: no other packet runs in between). The tcx one
/// marks the port's per-CPU entry; the clsact one finds the mark, clears it and steps aside.
/// So the move neither loses nor double-counts a packet. A port without our tcx program is
/// never marked; a mark left by a packet another program dropped in between is overwritten by
/// the next packet's tcx run before any clsact run can see it.
#[inline(always)]
fn observe<const TCX: bool>(ctx: &TcContext, dir: u8) {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: `dir & 1` keeps the index in range of the port's two directions.
    let port =
        port_stats(ctx, ifindex).map(|p| unsafe { &raw mut (*p).dirs[usize::from(dir & 1)] });
    if let Some(port) = port {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe {
            if TCX {
                (*port).tcx_seen = 1;
            } else if (*port).tcx_seen != 0 {
                (*port).tcx_seen = 0;
                return;
            }
        }
    }
    let len = u64::from(ctx.len());
    let parsed = parse(ctx);
    if let Some(port) = port {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe {
            let count = &mut (*port).counts[count_slot(parsed.proto) & 7];
            count.packets += 1;
            count.bytes += len;
        }
        if let Some(src) = parsed.src {
            track_mac(ctx, port, ifindex, dir, src, len);
        }
    }
    if parsed.icmp_family != 0 {
        on_icmp(ctx, ifindex, dir, &parsed);
    }
    if parsed.tcp_off != 0 {
        tcp::on_tcp(ctx, ifindex, dir, &parsed);
    }
}

/// Counts one failure or event; returns this CPU's new count.
#[inline(always)]
pub(crate) fn bump_stat(index: u32) -> u64 {
    match AGENT_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        Some(v) => unsafe {
            *v += 1;
            *v
        },
        None => 0,
    }
}

/// Logs only the 1st, 2nd, 4th, 8th... failure per CPU: a full map under a flood must not turn
/// into a flood of log records.
#[inline(always)]
pub(crate) fn worth_logging(count: u64) -> bool {
    count & count.wrapping_sub(1) == 0
}

/// This CPU's counters of `ifindex`.
#[inline(always)]
fn port_stats(ctx: &TcContext, ifindex: u32) -> Option<*mut PortStats> {
    // SAFETY: a plain read of a constant the loader may have rewritten before load.
    let mask = unsafe { core::ptr::read_volatile(&raw const SLOT_MASK) };
    if let Some(e) = PORT_SLOTS.get(ifindex & mask)
        && e.ifindex == ifindex
        && let Some(p) = PORT_COUNTERS.get_ptr_mut(e.slot)
    {
        return Some(p);
    }
    if let Some(p) = PORT_STATS.get_ptr_mut(ifindex) {
        return Some(p);
    }
    // The loader creates the entry before attaching; this covers a race with its clean-up, so
    // no packet goes uncounted while we are attached. By reference: a copy would take most of
    // the 512-byte stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    if PORT_STATS
        .insert(ifindex, &ZERO_PORT, u64::from(BPF_NOEXIST))
        .is_err()
        && PORT_STATS.get_ptr_mut(ifindex).is_none()
    {
        let n = bump_stat(STAT_PORT_INSERT_FAILED);
        if worth_logging(n) {
            warn!(
                ctx,
                "PORT_STATS full: ifindex {} not counted ({} times)", ifindex, n
            );
        }
        return None;
    }
    PORT_STATS.get_ptr_mut(ifindex)
}

/// Counts the packet against its source MAC. The same MAC as last time on this port, CPU and
/// direction (a pod sending) costs a compare and two adds; only a change of MAC touches
/// `MAC_SEEN`, to hand over the previous MAC's pending counts.
#[inline(always)]
fn track_mac(ctx: &TcContext, port: *mut PortDir, ifindex: u32, dir: u8, mac: u64, len: u64) {
    // "First/last seen" needs the coarse clock (tick resolution), but a helper call costs more
    // than the rest of the program (~30 ns measured). The verifier inlines bpf_jiffies64 into
    // one load, so the clock is read at most once per tick and port; no precision is lost, as
    // the coarse clock only moves on ticks too.
    // SAFETY: helper without arguments.
    let tick = unsafe { bpf_jiffies64() };
    // The cached MAC and its valid flag are the first 7 bytes of the `PortDir`: one load and
    // one compare.
    // SAFETY: `PortDir` is 8-aligned and starts with `mac`, `mac_valid`, `tcx_seen` (integers).
    let head = unsafe { *port.cast::<u64>() };
    // SAFETY: per-CPU value of this CPU (see `observe`).
    let port = unsafe { &mut *port };
    if head & MAC_AND_VALID == mac | VALID {
        port.mac_packets += 1;
        port.mac_bytes += len;
        if port.mac_last_tick != tick {
            port.mac_last_tick = tick;
            // SAFETY: helper without arguments.
            port.mac_last_ns = unsafe { bpf_ktime_get_coarse_ns() };
        }
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if port.mac_valid != 0 && port.mac_packets != 0 {
        let key = MacKey {
            ifindex,
            mac: port.mac,
            dir,
            pad: 0,
        };
        flush_mac(ctx, &key, port);
    }
    let b = mac.to_le_bytes();
    port.mac = [b[0], b[1], b[2], b[3], b[4], b[5]];
    port.mac_valid = 1;
    port.mac_packets = 1;
    port.mac_bytes = len;
    port.mac_first_ns = now;
    port.mac_last_ns = now;
    port.mac_last_tick = tick;
}

/// The first 8 bytes of a `PortDir` read as one word: the MAC (6 bytes) and `mac_valid`, and
/// `mac_valid` alone.
const MAC_AND_VALID: u64 = 0x00ff_ffff_ffff_ffff;
const VALID: u64 = 1 << 48;

/// Adds a cached MAC's pending counts to its `MAC_SEEN` entry (creating it when new or evicted).
#[inline(always)]
fn flush_mac(ctx: &TcContext, key: &MacKey, port: &PortDir) {
    if let Some(v) = MAC_SEEN.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*v).packets += port.mac_packets;
            (*v).bytes += port.mac_bytes;
            // A key inserted on another CPU has zeroes in this CPU's slot.
            if (*v).first_ns == 0 {
                (*v).first_ns = port.mac_first_ns;
            }
            (*v).last_ns = port.mac_last_ns;
        }
        return;
    }
    let v = MacStats {
        packets: port.mac_packets,
        bytes: port.mac_bytes,
        first_ns: port.mac_first_ns,
        last_ns: port.mac_last_ns,
    };
    if MAC_SEEN.insert(key, v, 0).is_ok() {
        bump_stat(STAT_MAC_NEW);
    } else {
        let n = bump_stat(STAT_MAC_INSERT_FAILED);
        if worth_logging(n) {
            warn!(
                ctx,
                "MAC_SEEN insert failed on ifindex {} ({} times)", key.ifindex, n
            );
        }
    }
}

#[inline(always)]
fn on_icmp(ctx: &TcContext, ifindex: u32, dir: u8, parsed: &Parsed) {
    let Ok(tc) = ctx.load::<[u8; 2]>(parsed.l4_off) else {
        return;
    };
    let key = IcmpKey {
        ifindex,
        dir,
        family: parsed.icmp_family,
        icmp_type: tc[0],
        pad: 0,
    };
    match ICMP_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU.
        Some(c) => unsafe { *c += 1 },
        None => {
            if ICMP_STATS.insert(key, 1, 0).is_err() {
                let n = bump_stat(STAT_ICMP_INSERT_FAILED);
                if worth_logging(n) {
                    warn!(
                        ctx,
                        "ICMP_STATS full: type {} on ifindex {} not counted ({} times)",
                        tc[0],
                        ifindex,
                        n
                    );
                }
            }
        }
    }

    // Per-packet events exist only while someone traces.
    match TRACE_ON.get(0) {
        Some(on) if *on != 0 => {}
        _ => return,
    }
    let Some(mut entry) = EVENTS.reserve::<IcmpEvent>(0) else {
        bump_stat(STAT_EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    let len = ctx.len();
    let cap = if len < SNAP_LEN as u32 {
        len
    } else {
        SNAP_LEN as u32
    };
    // SAFETY: `ev` points at a reserved, writable IcmpEvent; every field is written before submit.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).ifindex = ifindex;
        (*ev).len = len;
        (*ev).dir = dir;
        (*ev).family = parsed.icmp_family;
        (*ev).icmp_type = tc[0];
        (*ev).icmp_code = tc[1];
        (*ev).l4_off = parsed.l4_off as u16;
        (*ev).cap_len = 0;
        if cap >= ETH_HLEN as u32
            && bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                0,
                (*ev).data.as_mut_ptr().cast(),
                cap,
            ) == 0
        {
            (*ev).cap_len = cap as u16;
        }
    }
    entry.submit(0);
    bump_stat(STAT_EVENTS_SENT);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
