//! One line per packet: aligned text for people, one JSON object for scripts. Both name the veth
//! and its pod, and give the direction from the pod's point of view, like the metrics do.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::decode::Packet;
use crate::icmp::icmp_code_name;
use crate::model::Port;

/// `HH:MM:SS.micros  veth  namespace/pod  direction  src-mac > dst-mac  src > dst  len  type …`:
/// the one variable-width field last, so the columns line up.
/// Times are UTC, the clock of nearly every node and the one `--json` uses.
pub fn format_line(p: &Packet, port: Option<&Port>) -> String {
    let (secs, micros) = split_time(p.ts);
    let tod = secs.rem_euclid(86_400);
    let mut what = p.type_name.to_owned();
    match icmp_code_name(p.family, p.icmp_type, p.icmp_code) {
        Some(code) => what = format!("{what} ({code})"),
        None if p.type_name == "unknown" => {
            what = format!("type {} code {}", p.icmp_type, p.icmp_code);
        }
        None => {}
    }
    if let Some(id) = p.id {
        let _ = write!(what, " id {id}");
    }
    if let Some(seq) = p.seq {
        let _ = write!(what, " seq {seq}");
    }
    // Over several agents, the node comes first: the veth's name is only unique on its node.
    let node = port
        .and_then(|p| p.node.as_deref())
        .map(|n| format!("{n:<12}  "))
        .unwrap_or_default();
    format!(
        "{:02}:{:02}:{:02}.{micros:06}  {node}{:<15}  {:<30}  {:<8}  {} > {}  {:>15} > {:<15}  len {:<5}  {}",
        tod / 3600,
        tod / 60 % 60,
        tod % 60,
        interface_name(p.ifindex, port),
        pod_label(port),
        p.direction.as_str(),
        p.src_mac,
        p.dst_mac,
        p.src_ip.to_string(),
        p.dst_ip.to_string(),
        p.len,
        what,
    )
}

/// The `--json` object of one packet. Unknown veth, pod, id or sequence are `null`, not absent,
/// so every line has the same keys.
pub fn to_json(p: &Packet, port: Option<&Port>) -> Value {
    let pod = port.and_then(|port| port.pod.as_ref());
    let mut v = json!({
        "time": rfc3339_micros(p.ts),
        "interface": port.map(|port| port.name.as_str()),
        "ifindex": p.ifindex,
        "namespace": pod.map(|pod| pod.namespace.as_str()),
        "pod": pod.map(|pod| pod.name.as_str()),
        "direction": p.direction.as_str(),
        "family": p.family,
        "src_mac": p.src_mac,
        "dst_mac": p.dst_mac,
        "src_ip": p.src_ip.to_string(),
        "dst_ip": p.dst_ip.to_string(),
        "type": p.icmp_type,
        "code": p.icmp_code,
        "type_name": p.type_name,
        "id": p.id,
        "seq": p.seq,
        "len": p.len,
    });
    // Only over several agents, where every line has it.
    if let (Some(node), Some(o)) = (port.and_then(|p| p.node.as_deref()), v.as_object_mut()) {
        o.insert("node".into(), node.into());
    }
    v
}

/// The veth's name, or `if<ifindex>` for one the model has not learned yet.
pub fn interface_name(ifindex: u32, port: Option<&Port>) -> String {
    port.map_or_else(|| format!("if{ifindex}"), |p| p.name.clone())
}

/// `namespace/name`, or `-` when no pod is known behind the veth.
pub fn pod_label(port: Option<&Port>) -> String {
    port.and_then(|p| p.pod.as_ref())
        .map_or_else(|| "-".to_owned(), crate::model::Pod::qualified_name)
}

/// `2026-11-22T21:10:37.123456Z`.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let (secs, micros) = split_time(t);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

/// Seconds since the epoch (negative before it) and the microseconds within that second.
fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_micros()),
        Err(e) => {
            let d = e.duration();
            let micros = d.subsec_micros();
            if micros == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000 - micros)
            }
        }
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm): saves a
/// date-time dependency for the one format we print.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::decode::{decode, testframes::*};
    use super::*;
    use crate::model::{Pod, PodSource};

    fn web1() -> Port {
        Port {
            ifindex: 5,
            name: "veth1234".into(),
            pod: Some(Pod {
                namespace: "default".into(),
                name: "web-1".into(),
                uid: "u".into(),
                source: PodSource::Cri,
                container: None,
            }),
            ..Port::default()
        }
    }

    // 2026-11-22T21:10:37.123456789Z
    const T: u64 = 1_795_381_837_123_456_789;

    fn ping() -> Packet {
        let (f, l4) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], 8, 0, 4660, 1, &[]);
        decode(&event(5, 0, T, &f, 4, l4), at_epoch).unwrap()
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_micros(at_epoch(T)), "2026-11-22T21:10:37.123456Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(at_epoch(951_782_400_000_000_000)),
            "2000-02-29T00:00:00.000000Z"
        );
        let before = UNIX_EPOCH - Duration::from_micros(1);
        assert_eq!(rfc3339_micros(before), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn human_line() {
        let line = format_line(&ping(), Some(&web1()));
        assert_eq!(
            line,
            "21:10:37.123456  veth1234         default/web-1                   transmit  \
             02:42:0a:00:00:02 > 02:42:0a:00:00:03         10.0.0.2 > 10.0.0.3         \
             len 98     echo request id 4660 seq 1"
        );
        let unknown = format_line(&ping(), None);
        assert!(unknown.contains("  if5              -     "), "{unknown}");
    }

    #[test]
    fn human_line_names_codes() {
        let (f, l4) = icmp4([10, 0, 0, 1], [10, 0, 0, 2], 3, 3, 0, 0, &[]);
        let p = decode(&event(5, 1, T, &f, 4, l4), at_epoch).unwrap();
        let line = format_line(&p, None);
        assert!(line.contains("receive"), "{line}");
        assert!(
            line.contains("len 98     destination unreachable (port unreachable)"),
            "{line}"
        );
        let (f, l4) = icmp4([10, 0, 0, 1], [10, 0, 0, 2], 99, 7, 0, 0, &[]);
        let p = decode(&event(5, 1, T, &f, 4, l4), at_epoch).unwrap();
        assert!(format_line(&p, None).contains("type 99 code 7"));
    }

    #[test]
    fn json_keys_and_values() {
        let v = to_json(&ping(), Some(&web1()));
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "time",
            "interface",
            "ifindex",
            "namespace",
            "pod",
            "direction",
            "family",
            "src_mac",
            "dst_mac",
            "src_ip",
            "dst_ip",
            "type",
            "code",
            "type_name",
            "id",
            "seq",
            "len",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["time"], "2026-11-22T21:10:37.123456Z");
        assert_eq!(v["interface"], "veth1234");
        assert_eq!(v["namespace"], "default");
        assert_eq!(v["pod"], "web-1");
        assert_eq!(v["direction"], "transmit");
        assert_eq!(v["type"], 8);
        assert_eq!(v["type_name"], "echo request");
        assert_eq!(v["id"], 4660);
        assert_eq!(v["seq"], 1);
        assert_eq!(v["len"], 98);
        let v = to_json(&ping(), None);
        assert!(v["interface"].is_null() && v["pod"].is_null() && v["namespace"].is_null());
        assert_eq!(v["ifindex"], 5);
    }
}
