//! Turns one [`IcmpEvent`] from the ring buffer into a [`Packet`]: addresses from the captured
//! frame, type and code from the event. The bytes come from the kernel but describe whatever the
//! pod sent, so every read is bounds-checked and a short or odd frame yields `None`, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use node_tracer_common::{DIR_EGRESS, DIR_INGRESS, IcmpEvent, SNAP_LEN};

use crate::icmp::{has_id_seq, icmp_type_name};
use crate::model::{Direction, format_mac};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// In-band VLAN tags walked, as in the programs (`QinQ` is two).
const MAX_VLAN_TAGS: usize = 2;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// Type, code, checksum, then id and sequence.
const ICMP_ECHO_HLEN: usize = 8;

/// One traced ICMP/ICMPv6 packet, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Wall-clock time the program saw it.
    pub ts: SystemTime,
    /// The host-side veth it crossed.
    pub ifindex: u32,
    /// From the pod's point of view: host veth ingress is the pod's transmit.
    pub direction: Direction,
    /// 4 or 6.
    pub family: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub type_name: &'static str,
    pub src_mac: String,
    pub dst_mac: String,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// Echo (and `ICMPv4` timestamp/information/mask) identifier, when the type has one and the
    /// capture reaches it.
    pub id: Option<u16>,
    pub seq: Option<u16>,
    /// Length of the whole frame on the wire.
    pub len: u32,
}

/// Decodes one event. `mono_to_wall` converts the event's `CLOCK_MONOTONIC` nanoseconds to wall
/// clock (see [`super::mono_to_wall_fn`]). `None` when the frame is too short for the addresses,
/// is not the IP family the program reported, or the direction is not one the programs write.
pub fn decode(ev: &IcmpEvent, mono_to_wall: impl Fn(u64) -> SystemTime) -> Option<Packet> {
    let direction = match ev.dir {
        DIR_INGRESS => Direction::Transmit,
        DIR_EGRESS => Direction::Receive,
        _ => return None,
    };
    // cap_len is the program's word; never trust it past the array.
    let data = &ev.data[..usize::from(ev.cap_len).min(SNAP_LEN)];
    if data.len() < ETH_HLEN {
        return None;
    }
    let dst_mac = format_mac(&data[0..6]);
    let src_mac = format_mac(&data[6..12]);

    let mut ethertype = be16(data, 12)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16(data, off + 2)?;
        off += 4;
    }

    let (family, src_ip, dst_ip, min_l4) = match ethertype {
        ETH_P_IP => {
            let ip = data.get(off..off + IPV4_MIN_HLEN)?;
            if ip[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (
                4,
                IpAddr::V4(src),
                IpAddr::V4(dst),
                off + ihl.max(IPV4_MIN_HLEN),
            )
        }
        ETH_P_IPV6 => {
            let ip = data.get(off..off + IPV6_HLEN)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            (
                6,
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                off + IPV6_HLEN,
            )
        }
        _ => return None,
    };
    if family != ev.family {
        return None;
    }

    // The program found the ICMP header (past IPv4 options / IPv6 extension headers); trust its
    // offset only where it lies past the IP header we just read.
    let l4 = usize::from(ev.l4_off);
    let (id, seq) = if has_id_seq(family, ev.icmp_type) && l4 >= min_l4 {
        match data.get(l4..l4 + ICMP_ECHO_HLEN) {
            Some(h) => (
                Some(u16::from_be_bytes([h[4], h[5]])),
                Some(u16::from_be_bytes([h[6], h[7]])),
            ),
            None => (None, None),
        }
    } else {
        (None, None)
    };

    Some(Packet {
        ts: mono_to_wall(ev.ts_ns),
        ifindex: ev.ifindex,
        direction,
        family,
        icmp_type: ev.icmp_type,
        icmp_code: ev.icmp_code,
        type_name: icmp_type_name(family, ev.icmp_type, ev.icmp_code),
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        id,
        seq,
        len: ev.len,
    })
}

fn be16(data: &[u8], off: usize) -> Option<u16> {
    let b = data.get(off..off + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Frame builders shared by the tests of every trace module: real frames, byte by byte.
#[cfg(test)]
pub(crate) mod testframes {
    use super::*;

    pub const MAC_A: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x02];
    pub const MAC_B: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x03];

    /// An event around `frame`, as the program writes it.
    pub fn event(
        ifindex: u32,
        dir: u8,
        ts_ns: u64,
        frame: &[u8],
        family: u8,
        l4: usize,
    ) -> IcmpEvent {
        let mut data = [0u8; SNAP_LEN];
        let cap = frame.len().min(SNAP_LEN);
        data[..cap].copy_from_slice(&frame[..cap]);
        IcmpEvent {
            ts_ns,
            ifindex,
            len: frame.len() as u32,
            dir,
            family,
            icmp_type: frame.get(l4).copied().unwrap_or(0),
            icmp_code: frame.get(l4 + 1).copied().unwrap_or(0),
            cap_len: cap as u16,
            l4_off: l4 as u16,
            data,
        }
    }

    pub fn eth(dst: [u8; 6], src: [u8; 6], vlans: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        for (i, vid) in vlans.iter().enumerate() {
            let tpid = if i == 0 && vlans.len() == 2 {
                ETH_P_8021AD
            } else {
                ETH_P_8021Q
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// An `ICMPv4` message `ty`/`code` with id/seq and 56 bytes of payload, like `ping`.
    /// Returns the frame and the ICMP offset.
    pub fn icmp4(
        src: [u8; 4],
        dst: [u8; 4],
        ty: u8,
        code: u8,
        id: u16,
        seq: u16,
        vlans: &[u16],
    ) -> (Vec<u8>, usize) {
        let mut f = eth(MAC_B, MAC_A, vlans, ETH_P_IP);
        let total = (20 + 8 + 56) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 1, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        let l4 = f.len();
        f.extend_from_slice(&[ty, code, 0, 0]);
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend(std::iter::repeat_n(0xa5, 56));
        (f, l4)
    }

    /// An `ICMPv6` message with a 4-byte body after type/code/checksum, then `rest`.
    pub fn icmp6(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ty: u8,
        code: u8,
        body: [u8; 4],
        rest: &[u8],
    ) -> (Vec<u8>, usize) {
        let mut f = eth(MAC_B, MAC_A, &[], ETH_P_IPV6);
        let plen = (8 + rest.len()) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[58, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        let l4 = f.len();
        f.extend_from_slice(&[ty, code, 0, 0]);
        f.extend_from_slice(&body);
        f.extend_from_slice(rest);
        (f, l4)
    }

    pub fn at_epoch(ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::testframes::*;
    use super::*;

    #[test]
    fn ipv4_echo_request_with_id_and_seq() {
        let (f, l4) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], 8, 0, 0x1c2d, 7, &[]);
        let ev = event(5, DIR_INGRESS, 1_000, &f, 4, l4);
        let p = decode(&ev, at_epoch).unwrap();
        assert_eq!(p.direction, Direction::Transmit);
        assert_eq!(p.family, 4);
        assert_eq!(p.type_name, "echo request");
        assert_eq!(p.src_mac, "02:42:0a:00:00:02");
        assert_eq!(p.dst_mac, "02:42:0a:00:00:03");
        assert_eq!(p.src_ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst_ip, "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!((p.id, p.seq), (Some(0x1c2d), Some(7)));
        assert_eq!(p.len, 98);
        assert_eq!(p.ts, at_epoch(1_000));
        assert_eq!(p.ifindex, 5);
    }

    #[test]
    fn ipv6_echo_reply() {
        let a: Ipv6Addr = "fd00::2".parse().unwrap();
        let b: Ipv6Addr = "fd00::3".parse().unwrap();
        let (f, l4) = icmp6(b, a, 129, 0, [0x00, 0x2a, 0x00, 0x03], &[0; 16]);
        let p = decode(&event(9, DIR_EGRESS, 0, &f, 6, l4), at_epoch).unwrap();
        assert_eq!(p.direction, Direction::Receive);
        assert_eq!(p.type_name, "echo reply");
        assert_eq!(p.src_ip, IpAddr::V6(b));
        assert_eq!(p.dst_ip, IpAddr::V6(a));
        assert_eq!((p.id, p.seq), (Some(42), Some(3)));
    }

    #[test]
    fn ipv6_neighbour_solicitation_has_no_id() {
        let src: Ipv6Addr = "fe80::42:aff:fe00:2".parse().unwrap();
        let dst: Ipv6Addr = "ff02::1:ff00:3".parse().unwrap();
        let target: Ipv6Addr = "fd00::3".parse().unwrap();
        let (f, l4) = icmp6(src, dst, 135, 0, [0; 4], &target.octets());
        let p = decode(&event(9, DIR_INGRESS, 0, &f, 6, l4), at_epoch).unwrap();
        assert_eq!(p.type_name, "neighbour solicitation");
        assert_eq!((p.id, p.seq), (None, None));
        assert_eq!(p.dst_ip, IpAddr::V6(dst));
    }

    #[test]
    fn vlan_tagged_single_and_qinq() {
        for vlans in [&[100u16][..], &[100, 200][..]] {
            let (f, l4) = icmp4([192, 168, 1, 1], [192, 168, 1, 2], 0, 0, 1, 2, vlans);
            assert_eq!(l4, 14 + 4 * vlans.len() + 20);
            let p = decode(&event(3, DIR_EGRESS, 0, &f, 4, l4), at_epoch).unwrap();
            assert_eq!(p.src_ip, "192.168.1.1".parse::<IpAddr>().unwrap());
            assert_eq!((p.type_name, p.id, p.seq), ("echo reply", Some(1), Some(2)));
        }
    }

    #[test]
    fn truncated_frames() {
        let (f, l4) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], 8, 0, 1, 1, &[]);
        // The program reports type and code from the skb even when the capture stops early.
        let mut ev = event(5, DIR_INGRESS, 0, &f, 4, l4);
        for cap in [0, 13, 14, 20, 33] {
            ev.cap_len = cap;
            assert_eq!(decode(&ev, at_epoch), None, "cap {cap}");
        }
        // Addresses present, id/seq cut off.
        ev.cap_len = (l4 + 4) as u16;
        let p = decode(&ev, at_epoch).unwrap();
        assert_eq!((p.type_name, p.id, p.seq), ("echo request", None, None));
        // cap_len past the array is clamped, not trusted.
        ev.cap_len = u16::MAX;
        assert!(decode(&ev, at_epoch).is_some());
    }

    #[test]
    fn inconsistent_events_are_rejected() {
        let (f, l4) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], 8, 0, 1, 1, &[]);
        assert_eq!(decode(&event(5, DIR_INGRESS, 0, &f, 6, l4), at_epoch), None);
        assert_eq!(decode(&event(5, 7, 0, &f, 4, l4), at_epoch), None);
        // An ICMP offset inside the IP header is not believed.
        let p = decode(&event(5, DIR_INGRESS, 0, &f, 4, 20), at_epoch);
        assert_eq!(p.map(|p| p.id), Some(None));
    }

    /// xorshift64*: enough randomness to shake the parser, no dependency.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn never_panics_on_random_events() {
        let mut s = 0x9e37_79b9_7f4a_7c15_u64;
        let (v4, _) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], 8, 0, 1, 1, &[100, 200]);
        let (v6, _) = icmp6(
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::LOCALHOST,
            128,
            0,
            [0; 4],
            &[0; 8],
        );
        let mut decoded = 0;
        for i in 0..200_000 {
            let mut data = [0u8; SNAP_LEN];
            // Start some from real frames so the deeper paths are reached, then flip bytes.
            match i % 3 {
                0 => data[..v4.len()].copy_from_slice(&v4),
                1 => data[..v6.len()].copy_from_slice(&v6),
                _ => {}
            }
            for _ in 0..(next(&mut s) % 8) {
                let r = next(&mut s);
                data[(r % SNAP_LEN as u64) as usize] = (r >> 32) as u8;
            }
            let r = next(&mut s);
            let ev = IcmpEvent {
                ts_ns: next(&mut s),
                ifindex: r as u32,
                len: (r >> 32) as u32,
                dir: (r >> 8) as u8 % 3,
                family: [4, 6, 0][(r >> 16) as usize % 3],
                icmp_type: [0, 8, 128, 129, (r >> 24) as u8][(r >> 40) as usize % 5],
                icmp_code: 0,
                cap_len: (next(&mut s) % 300) as u16,
                l4_off: (next(&mut s) % 300) as u16,
                data,
            };
            if decode(&ev, at_epoch).is_some() {
                decoded += 1;
            }
        }
        // The random walk must reach the successful paths too, or it tested little.
        assert!(decoded > 1000, "only {decoded} decoded");
    }
}
