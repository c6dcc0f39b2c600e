//! The bounded parse of a frame: what the counters need from its Ethernet, VLAN, IP and IPv6
//! headers, read in place where the frame allows.

use aya_ebpf::programs::TcContext;
use node_tracer_common::{
    PROTO_ARP, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPV4_OTHER, PROTO_IPV6_OTHER, PROTO_OTHER,
    PROTO_TCP, PROTO_UDP,
};

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// In-band VLAN tags walked (QinQ is two).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up and counting the packet as `ipv6_other`.
const MAX_IPV6_EXT: usize = 8;

/// What the parse learned about one packet.
pub(crate) struct Parsed {
    pub(crate) proto: usize,
    /// 4 or 6 when the packet is an ICMP/ICMPv6 first fragment whose header we can read.
    pub(crate) icmp_family: u8,
    pub(crate) l4_off: usize,
    /// 4 or 6 for an IP packet (where `ip_off` points at its header).
    pub(crate) family: u8,
    pub(crate) ip_off: usize,
    /// Offset of the TCP header of a TCP first fragment, else 0.
    pub(crate) tcp_off: usize,
    /// Source MAC in the low 48 bits (its first byte lowest, as it lies in memory), when the
    /// frame holds a whole Ethernet header.
    pub(crate) src: Option<u64>,
}

/// `N` bytes at the constant offset `off`: straight from the packet when the linear data holds
/// them (no helper call), else through `bpf_skb_load_bytes` (a non-linear skb). Only for
/// constant offsets: the verifier bounds a packet pointer by a constant.
#[inline(always)]
pub(crate) fn read_fixed<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    if start + off + N <= ctx.data_end() {
        // SAFETY: the range [start + off, start + off + N) lies inside the packet's linear data,
        // checked just above; the read is unaligned-safe.
        return Some(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) });
    }
    ctx.load::<[u8; N]>(off).ok()
}

/// Bytes every untagged IPv4 packet holds, and enough of an IPv6 header to reach its next
/// header: within them the parse reads the packet directly.
const FAST_LEN: usize = ETH_HLEN + 20;

/// Bounded parse: Ethernet, up to two in-band VLAN tags (a tag carried in skb metadata is already
/// stripped from the frame), then ARP, IPv4 or IPv6 with a bounded extension-header walk.
///
/// An untagged frame of `FAST_LEN` bytes or more, nearly every frame, is read in place with one
/// bounds check and only the bytes the counters need (source MAC, ethertype, version, fragment
/// offset, protocol): reading whole headers as byte arrays made the compiler assemble and
/// shuffle them through the stack, some 80 instructions before the first decision.
#[inline(always)]
pub(crate) fn parse(ctx: &TcContext) -> Parsed {
    let mut out = Parsed {
        proto: PROTO_OTHER,
        icmp_family: 0,
        l4_off: 0,
        family: 0,
        ip_off: 0,
        tcp_off: 0,
        src: None,
    };
    let start = ctx.data();
    if start + FAST_LEN <= ctx.data_end() {
        // SAFETY: every offset read is below FAST_LEN, inside the linear data checked above.
        let b = |off: usize| unsafe { *((start + off) as *const u8) };
        out.src = Some(mac_word([b(6), b(7), b(8), b(9), b(10), b(11)]));
        match u16::from_be_bytes([b(12), b(13)]) {
            ETH_P_IP => {
                let frag = u16::from_be_bytes([b(ETH_HLEN + 6), b(ETH_HLEN + 7)]);
                parse_ipv4(b(ETH_HLEN), frag, b(ETH_HLEN + 9), ETH_HLEN, &mut out);
                return out;
            }
            ETH_P_IPV6 => {
                parse_ipv6(ctx, b(ETH_HLEN), b(ETH_HLEN + 6), ETH_HLEN, &mut out);
                return out;
            }
            ETH_P_ARP => {
                out.proto = PROTO_ARP;
                return out;
            }
            // Tagged or another ethertype: the general path below.
            _ => {}
        }
    }

    let Some(eth) = read_fixed::<ETH_HLEN>(ctx, 0) else {
        return out;
    };
    out.src = Some(mac_word([eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]));
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // TCI (2 bytes) then the encapsulated ethertype.
        let Ok(inner) = ctx.load::<[u8; 4]>(off) else {
            return out;
        };
        ethertype = u16::from_be_bytes([inner[2], inner[3]]);
        off += 4;
    }

    match ethertype {
        ETH_P_ARP => out.proto = PROTO_ARP,
        ETH_P_IP => match ctx.load::<[u8; 10]>(off) {
            Ok(h) => parse_ipv4(h[0], u16::from_be_bytes([h[6], h[7]]), h[9], off, &mut out),
            Err(_) => out.proto = PROTO_IPV4_OTHER,
        },
        ETH_P_IPV6 => match ctx.load::<[u8; 8]>(off) {
            Ok(h) => parse_ipv6(ctx, h[0], h[6], off, &mut out),
            Err(_) => out.proto = PROTO_IPV6_OTHER,
        },
        _ => {}
    }
    out
}

/// A MAC as the low 48 bits of a word, its first byte lowest: how it lies in memory, so one
/// load of a `PortDir`'s first 8 bytes compares it.
#[inline(always)]
fn mac_word(m: [u8; 6]) -> u64 {
    u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0])
}

/// An IPv4 header at `off`: its first byte (version, IHL), flags and fragment offset, protocol.
#[inline(always)]
fn parse_ipv4(vihl: u8, frag: u16, protocol: u8, off: usize, out: &mut Parsed) {
    out.proto = PROTO_IPV4_OTHER;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return;
    }
    let first_fragment = frag & 0x1fff == 0;
    out.proto = match protocol {
        IPPROTO_ICMP => {
            if first_fragment {
                out.icmp_family = 4;
                out.l4_off = off + ihl;
            }
            PROTO_ICMP
        }
        IPPROTO_TCP => {
            if first_fragment {
                out.family = 4;
                out.ip_off = off;
                out.tcp_off = off + ihl;
            }
            PROTO_TCP
        }
        IPPROTO_UDP => PROTO_UDP,
        _ => PROTO_IPV4_OTHER,
    };
}

/// An IPv6 header at `off`: its first byte (version) and next header.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, version: u8, next_header: u8, off: usize, out: &mut Parsed) {
    out.proto = PROTO_IPV6_OTHER;
    if version >> 4 != 6 {
        return;
    }
    let mut next = next_header;
    let mut l4 = off + 40;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_ICMPV6 => {
                if first_fragment {
                    out.icmp_family = 6;
                    out.l4_off = l4;
                }
                out.proto = PROTO_ICMPV6;
                return;
            }
            IPPROTO_TCP => {
                if first_fragment {
                    out.family = 6;
                    out.ip_off = off;
                    out.tcp_off = l4;
                }
                out.proto = PROTO_TCP;
                return;
            }
            IPPROTO_UDP => {
                out.proto = PROTO_UDP;
                return;
            }
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting
            // the first 8.
            0 | 43 | 60 => {
                let Ok(h) = ctx.load::<[u8; 2]>(l4) else {
                    return;
                };
                next = h[0];
                l4 += (usize::from(h[1]) + 1) * 8;
            }
            // Fragment header: fixed 8 bytes; only the first fragment carries the upper header.
            44 => {
                let Ok(h) = ctx.load::<[u8; 4]>(l4) else {
                    return;
                };
                next = h[0];
                first_fragment = u16::from_be_bytes([h[2], h[3]]) & 0xfff8 == 0;
                l4 += 8;
            }
            // Authentication header: length in 4-octet units, not counting the first 8.
            51 => {
                let Ok(h) = ctx.load::<[u8; 2]>(l4) else {
                    return;
                };
                next = h[0];
                l4 += (usize::from(h[1]) + 2) * 4;
            }
            _ => return,
        }
    }
}
