//! TCP flags and handshake times. The per-packet cost for TCP is reading one byte (the flags);
//! only SYN, SYN-ACK, RST and FIN packets touch a map, and only SYN / SYN-ACK / RST read the
//! addresses.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{LruHashMap, PerCpuHashMap},
    programs::TcContext,
};
use aya_log_ebpf::warn;
use node_tracer_common::{
    FlowKey, HANDSHAKE_BOUNDS_NS, HANDSHAKE_BUCKETS, HandshakeStats, PendingSyn, PortDirKey,
    STAT_TCP_INSERT_FAILED, TCP_FIN, TCP_RST, TCP_SYN, TCP_SYNACK, TcpFlagKey,
};

use crate::{
    bump_stat,
    parse::{ETH_HLEN, Parsed, read_fixed},
    worth_logging,
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
const FLAGS_OFF: usize = 13;
/// TCP header offsets of an untagged IPv4 packet without options and of an untagged IPv6 packet
/// without extension headers: nearly every packet, read without a helper call.
const TCP_OFF_V4: usize = ETH_HLEN + 20;
const TCP_OFF_V6: usize = ETH_HLEN + 40;

// Sizes are the defaults; the loader sets them from its flags.
/// Per port, direction and flag: packets seen (entries only for flags seen).
#[map]
static TCP_FLAGS: PerCpuHashMap<TcpFlagKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);
/// SYNs waiting for their SYN-ACK, by 4-tuple and port. Shared, not per CPU: the SYN-ACK may
/// be handled on another CPU. LRU: a SYN never answered ages out instead of filling the map.
#[map]
static SYN_PENDING: LruHashMap<FlowKey, PendingSyn> = LruHashMap::with_max_entries(16384, 0);
/// Per port and SYN direction: the handshake time histogram.
#[map]
static HANDSHAKES: PerCpuHashMap<PortDirKey, HandshakeStats> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// Looks at the flags of a TCP packet whose header starts at `parsed.tcp_off` (non-zero).
#[inline(always)]
pub fn on_tcp(ctx: &TcContext, ifindex: u32, dir: u8, parsed: &Parsed) {
    let off = parsed.tcp_off;
    // Constant offsets let the verifier accept a direct read from the packet.
    let flags = if off == TCP_OFF_V4 {
        read_fixed::<1>(ctx, TCP_OFF_V4 + FLAGS_OFF)
    } else if off == TCP_OFF_V6 {
        read_fixed::<1>(ctx, TCP_OFF_V6 + FLAGS_OFF)
    } else {
        ctx.load::<[u8; 1]>(off + FLAGS_OFF).ok()
    };
    let Some([flags]) = flags else {
        return;
    };
    if flags & (FIN | SYN | RST) == 0 {
        return;
    }
    on_flags(ctx, ifindex, dir, parsed, flags);
}

#[inline(always)]
fn on_flags(ctx: &TcContext, ifindex: u32, dir: u8, parsed: &Parsed, flags: u8) {
    if flags & SYN != 0 {
        if flags & ACK == 0 {
            count(ctx, ifindex, dir, TCP_SYN);
            if let Some(key) = flow(ctx, ifindex, parsed, false) {
                let v = PendingSyn {
                    // SAFETY: helper without arguments.
                    ts_ns: unsafe { bpf_ktime_get_ns() },
                    dir,
                    pad: [0; 7],
                };
                // A retransmitted SYN keeps the first one's time: the handshake then shows
                // what the client waited. LRU maps evict rather than fail when full.
                let _ = SYN_PENDING.insert(&key, &v, u64::from(BPF_NOEXIST));
            }
        } else {
            count(ctx, ifindex, dir, TCP_SYNACK);
            handshake_done(ctx, ifindex, dir, parsed);
        }
    }
    if flags & RST != 0 {
        count(ctx, ifindex, dir, TCP_RST);
        // A refused or aborted handshake: nothing will complete it.
        for reverse in [false, true] {
            if let Some(key) = flow(ctx, ifindex, parsed, reverse) {
                let _ = SYN_PENDING.remove(&key);
            }
        }
    }
    if flags & FIN != 0 {
        count(ctx, ifindex, dir, TCP_FIN);
    }
}

#[inline(always)]
fn count(ctx: &TcContext, ifindex: u32, dir: u8, flag: u8) {
    let key = TcpFlagKey {
        ifindex,
        dir,
        flag,
        pad: 0,
    };
    match TCP_FLAGS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value of this CPU.
        Some(c) => unsafe { *c += 1 },
        None => {
            if TCP_FLAGS.insert(&key, &1, 0).is_err() {
                insert_failed(ctx, ifindex);
            }
        }
    }
}

/// A SYN-ACK: completes the handshake of the SYN it answers, if this port saw that SYN going
/// the other way.
#[inline(always)]
fn handshake_done(ctx: &TcContext, ifindex: u32, dir: u8, parsed: &Parsed) {
    let Some(key) = flow(ctx, ifindex, parsed, true) else {
        return;
    };
    // SAFETY: the value is copied out at once.
    let Some(syn) = (unsafe { SYN_PENDING.get(&key) }).copied() else {
        return;
    };
    // Whoever removes the entry counts it: a SYN-ACK retransmitted onto another CPU at the same
    // moment is not counted twice.
    if syn.dir == dir || SYN_PENDING.remove(&key).is_err() {
        return;
    }
    // SAFETY: helper without arguments.
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(syn.ts_ns);
    let mut bucket = HANDSHAKE_BUCKETS - 1;
    for (i, bound) in HANDSHAKE_BOUNDS_NS.iter().enumerate() {
        if took <= *bound {
            bucket = i;
            break;
        }
    }
    let key = PortDirKey {
        ifindex,
        dir: syn.dir,
        pad: [0; 3],
    };
    if let Some(h) = HANDSHAKES.get_ptr_mut(&key) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*h).count += 1;
            (*h).sum_ns += took;
            if let Some(b) = (*h).buckets.get_mut(bucket) {
                *b += 1;
            }
        }
        return;
    }
    let mut v = HandshakeStats {
        count: 1,
        sum_ns: took,
        buckets: [0; HANDSHAKE_BUCKETS],
    };
    if let Some(b) = v.buckets.get_mut(bucket) {
        *b = 1;
    }
    if HANDSHAKES.insert(&key, &v, 0).is_err() {
        insert_failed(ctx, ifindex);
    }
}

/// The connection's key on this port: as the packet carries it, or `reverse`d (the key of the
/// packet's answer).
#[inline(always)]
fn flow(ctx: &TcContext, ifindex: u32, parsed: &Parsed, reverse: bool) -> Option<FlowKey> {
    let ports = ctx.load::<[u8; 4]>(parsed.tcp_off).ok()?;
    let mut key = FlowKey {
        ifindex,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        saddr: [0; 16],
        daddr: [0; 16],
    };
    if parsed.family == 4 {
        let a = ctx.load::<[u8; 8]>(parsed.ip_off + 12).ok()?;
        key.saddr[..4].copy_from_slice(&a[..4]);
        key.daddr[..4].copy_from_slice(&a[4..]);
    } else {
        key.saddr = ctx.load::<[u8; 16]>(parsed.ip_off + 8).ok()?;
        key.daddr = ctx.load::<[u8; 16]>(parsed.ip_off + 24).ok()?;
    }
    if reverse {
        core::mem::swap(&mut key.sport, &mut key.dport);
        core::mem::swap(&mut key.saddr, &mut key.daddr);
    }
    Some(key)
}

#[inline(always)]
fn insert_failed(ctx: &TcContext, ifindex: u32) {
    let n = bump_stat(STAT_TCP_INSERT_FAILED);
    if worth_logging(n) {
        warn!(
            ctx,
            "TCP_FLAGS/HANDSHAKES full: ifindex {} not counted ({} times)", ifindex, n
        );
    }
}
