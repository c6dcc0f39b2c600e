//! How the agent streams traced packets to `trace icmp --connect` (`GET /trace/icmp`): one JSON
//! object per line. A packet line carries the program's event as hex, its timestamp already
//! turned into wall-clock nanoseconds (the two ends need not share a monotonic clock: the
//! client may reach the agent through a port-forward); a heartbeat line, sent every second,
//! carries only the loss count. `lost` counts the events this stream missed since it started:
//! those the programs could not write (ring buffer full) and those a slow reader fell behind on.
//!
//! ```text
//! {"lost":0,"event":"9a4c…"}
//! {"lost":0}
//! ```

use node_tracer_common::IcmpEvent;

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A traced packet (its `ts_ns` is wall-clock nanoseconds since the Unix epoch).
    Event(Box<IcmpEvent>, u64),
    Heartbeat(u64),
}

impl Line {
    pub fn lost(&self) -> u64 {
        match self {
            Line::Event(_, lost) | Line::Heartbeat(lost) => *lost,
        }
    }
}

fn bytes_of(ev: &IcmpEvent) -> &[u8] {
    // SAFETY: IcmpEvent is repr(C), made of integers with no padding (its size is asserted in
    // node-tracer-common), so all its bytes are initialised.
    unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(ev).cast::<u8>(), size_of::<IcmpEvent>())
    }
}

/// A packet line, with its newline.
pub fn event_line(ev: &IcmpEvent, lost: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = bytes_of(ev);
    let mut s = String::with_capacity(32 + 2 * bytes.len());
    s.push_str("{\"lost\":");
    s.push_str(&lost.to_string());
    s.push_str(",\"event\":\"");
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s.push_str("\"}\n");
    s
}

/// A heartbeat line, with its newline.
pub fn heartbeat_line(lost: u64) -> String {
    format!("{{\"lost\":{lost}}}\n")
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Line, &'static str> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        lost: u64,
        #[serde(borrow)]
        event: Option<&'a str>,
    }
    let raw: Raw = serde_json::from_str(line).map_err(|_| "not a trace stream line")?;
    let Some(hex) = raw.event else {
        return Ok(Line::Heartbeat(raw.lost));
    };
    if hex.len() != 2 * size_of::<IcmpEvent>() {
        return Err("an event of the wrong size (agent and client of different versions?)");
    }
    let mut bytes = [0u8; size_of::<IcmpEvent>()];
    for (b, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16).ok_or("an event that is not hex");
        *b = u8::try_from(digit(pair[0])? << 4 | digit(pair[1])?).map_err(|_| "bad hex")?;
    }
    // SAFETY: `bytes` holds exactly one IcmpEvent, a plain-integer repr(C) type valid for any
    // bytes; read_unaligned makes no alignment assumption.
    let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<IcmpEvent>()) };
    Ok(Line::Event(Box::new(ev), raw.lost))
}

#[cfg(test)]
mod tests {
    use node_tracer_common::SNAP_LEN;

    use super::*;

    fn event() -> IcmpEvent {
        let mut data = [0u8; SNAP_LEN];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 7 % 256) as u8;
        }
        IcmpEvent {
            ts_ns: 1_763_800_000_123_456_789,
            ifindex: 42,
            len: 98,
            dir: 1,
            family: 6,
            icmp_type: 128,
            icmp_code: 0,
            cap_len: 98,
            l4_off: 54,
            data,
        }
    }

    #[test]
    fn events_and_heartbeats_round_trip() {
        let ev = event();
        let line = event_line(&ev, 3);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert_eq!(
            parse_line(line.trim_end()),
            Ok(Line::Event(Box::new(ev), 3))
        );
        assert_eq!(
            parse_line(heartbeat_line(7).trim_end()),
            Ok(Line::Heartbeat(7))
        );
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(parse_line("").is_err());
        assert!(parse_line("HTTP/1.1 200 OK").is_err());
        assert!(parse_line(r#"{"lost":1,"event":"00ff"}"#).is_err());
        let zs = "zz".repeat(size_of::<IcmpEvent>());
        assert!(parse_line(&format!(r#"{{"lost":1,"event":"{zs}"}}"#)).is_err());
        assert!(parse_line(r#"{"event":"00"}"#).is_err());
    }
}
