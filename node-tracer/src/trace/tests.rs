//! The runner, driven by an in-memory event source.

use std::collections::VecDeque;
use std::net::Ipv6Addr;

use super::decode::testframes::*;
use super::*;
use crate::model::{Pod, PodSource};

/// Hands out queued events, then either ends or waits forever (like an idle ring buffer).
/// `lost_after[i]` is what `lost()` says once the i-th event has been handed out.
struct FakeSource {
    events: VecDeque<IcmpEvent>,
    handed: usize,
    lost_after: Vec<u64>,
    lost_at_start: u64,
    end: bool,
}

impl FakeSource {
    fn new(events: Vec<IcmpEvent>, end: bool) -> Self {
        Self {
            events: events.into(),
            handed: 0,
            lost_after: Vec::new(),
            lost_at_start: 0,
            end,
        }
    }
}

impl EventSource for FakeSource {
    fn next_event(&mut self) -> Pin<Box<dyn Future<Output = Option<IcmpEvent>> + Send + '_>> {
        Box::pin(async move {
            // Yield once, so a racing branch gets its chance between events as with a real fd.
            tokio::task::yield_now().await;
            match self.events.pop_front() {
                Some(ev) => {
                    self.handed += 1;
                    Some(ev)
                }
                None if self.end => None,
                None => std::future::pending().await,
            }
        })
    }

    fn try_next(&mut self) -> Option<IcmpEvent> {
        let ev = self.events.pop_front()?;
        self.handed += 1;
        Some(ev)
    }

    fn lost(&self) -> u64 {
        match self.handed.checked_sub(1) {
            Some(i) => self.lost_after.get(i).copied().unwrap_or_else(|| {
                self.lost_after
                    .last()
                    .copied()
                    .unwrap_or(self.lost_at_start)
            }),
            None => self.lost_at_start,
        }
    }
}

fn ports(ifindex: u32) -> Option<Port> {
    let (name, pod) = match ifindex {
        5 => ("vethA", "web-1"),
        6 => ("vethB", "web-2"),
        _ => return None,
    };
    Some(Port {
        ifindex,
        name: name.into(),
        pod: Some(Pod {
            namespace: "default".into(),
            name: pod.into(),
            uid: "u".into(),
            source: PodSource::Cri,
            container: None,
        }),
        ..Port::default()
    })
}

/// A ping from web-1 to web-2 and its reply, seen on both veths: four events per seq.
fn pings(n: u16) -> Vec<IcmpEvent> {
    let mut out = Vec::new();
    for seq in 1..=n {
        let t = u64::from(seq) * 1_000_000_000;
        let (req, l4) = icmp4([10, 0, 0, 2], [10, 0, 0, 3], 8, 0, 99, seq, &[]);
        let (rep, _) = icmp4([10, 0, 0, 3], [10, 0, 0, 2], 0, 0, 99, seq, &[]);
        out.push(event(5, 0, t, &req, 4, l4));
        out.push(event(6, 1, t + 10, &req, 4, l4));
        out.push(event(6, 0, t + 20, &rep, 4, l4));
        out.push(event(5, 1, t + 30, &rep, 4, l4));
    }
    out
}

async fn trace(opts: &TraceOptions, src: &mut FakeSource) -> (TraceStats, String) {
    let mut out = Vec::new();
    let mut tracer = Tracer::new(opts, src).unwrap().with_clock(at_epoch);
    tracer.pump(src, &ports, &mut out).await.unwrap();
    let stats = tracer.finish(src, &mut out).unwrap();
    (stats, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn lines_then_summary_until_the_source_ends() {
    let opts = TraceOptions {
        summary: true,
        ..TraceOptions::default()
    };
    let mut src = FakeSource::new(pings(2), true);
    let (stats, text) = trace(&opts, &mut src).await;
    assert_eq!(
        stats,
        TraceStats {
            seen: 8,
            matched: 8,
            lost: 0,
            undecoded: 0
        }
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8 + 1 + 4 + 1, "{text}");
    assert!(
        lines[0].starts_with("00:00:01.000000  vethA            default/web-1 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("vethB ")
            && lines[1].contains("receive")
            && lines[1].contains("echo request id 99 seq 1")
    );
    assert!(
        lines[9].ends_with("request  vethA(default/web-1) tx -> vethB(default/web-2) rx"),
        "{}",
        lines[9]
    );
    assert!(lines[10].ends_with("reply    vethB(default/web-2) tx -> vethA(default/web-1) rx"));
    assert_eq!(lines[13], "8 packets seen, 8 matched, 0 events lost");
}

#[tokio::test]
async fn run_stops_at_count_of_matched_packets() {
    let opts = TraceOptions {
        count: Some(3),
        filter: Filter {
            types: vec!["echo-reply".parse().unwrap()],
            ..Filter::default()
        },
        ..TraceOptions::default()
    };
    // Never ends: only --count can stop it.
    let mut src = FakeSource::new(pings(5), false);
    let mut out = Vec::new();
    let stats = run(&opts, &mut src, &ports, &mut out).await.unwrap();
    assert_eq!(stats.matched, 3);
    // Events per ping: request (A, B), reply (B, A); so the third reply is the 7th event.
    assert_eq!(stats.seen, 7);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains("echo reply")).count(), 3);
}

#[tokio::test]
async fn run_stops_at_timeout() {
    let opts = TraceOptions {
        timeout: Some(Duration::from_millis(50)),
        ..TraceOptions::default()
    };
    let mut src = FakeSource::new(pings(1), false);
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    // The source never ends: without --timeout the run would not return (a minute catches it).
    let stats = tokio::time::timeout(
        Duration::from_mins(1),
        run(&opts, &mut src, &ports, &mut out),
    )
    .await
    .expect("the run ignored its timeout")
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(stats.seen, 4);
}

#[tokio::test]
async fn json_lines_and_final_summary_object() {
    let opts = TraceOptions {
        json: true,
        summary: true,
        filter: Filter {
            pods: vec!["web-2".into()],
            ..Filter::default()
        },
        ..TraceOptions::default()
    };
    let mut events = pings(1);
    // An ICMPv6 neighbour solicitation on an unknown veth, and a frame too short to decode.
    let (ns, l4) = icmp6(
        Ipv6Addr::LOCALHOST,
        "ff02::1:ff00:3".parse().unwrap(),
        135,
        0,
        [0; 4],
        &[0; 16],
    );
    events.push(event(9, 0, 5, &ns, 6, l4));
    let mut short = event(9, 0, 5, &ns, 6, l4);
    short.cap_len = 10;
    events.push(short);
    let mut src = FakeSource::new(events, true);
    let (stats, text) = trace(&opts, &mut src).await;
    assert_eq!(
        stats,
        TraceStats {
            seen: 6,
            matched: 2,
            lost: 0,
            undecoded: 1
        }
    );
    let values: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(values.len(), 3);
    assert_eq!(values[0]["pod"], "web-2");
    assert_eq!(values[0]["direction"], "receive");
    assert_eq!(values[1]["direction"], "transmit");
    assert_eq!(values[1]["type_name"], "echo reply");
    assert_eq!(values[2]["summary"], true);
    assert_eq!(values[2]["matched"], 2);
    assert_eq!(values[2]["undecoded"], 1);
    assert_eq!(values[2]["pings"][0]["request"][0]["interface"], "vethB");
}

#[tokio::test]
async fn lost_events_are_reported_in_the_stream_and_totals() {
    let mut src = FakeSource::new(pings(1), true);
    // The agent's counter already stood at 100 before this trace; 5 lost during it.
    src.lost_at_start = 100;
    src.lost_after = vec![100, 103, 103, 105];
    let opts = TraceOptions::default();
    let (stats, text) = trace(&opts, &mut src).await;
    assert_eq!(stats.lost, 5);
    let lines: Vec<&str> = text.lines().collect();
    // Reported as soon as noticed, before the event that revealed it.
    assert_eq!(
        lines[1],
        "!! 3 events lost (ring buffer full), 3 since the start"
    );
    assert_eq!(
        lines[4],
        "!! 2 events lost (ring buffer full), 5 since the start"
    );
    assert_eq!(
        *lines.last().unwrap(),
        "4 packets seen, 4 matched, 5 events lost (ring buffer full: the trace is incomplete)"
    );

    let mut src = FakeSource::new(pings(1), true);
    src.lost_after = vec![0, 2];
    let opts = TraceOptions {
        json: true,
        ..TraceOptions::default()
    };
    let (_, text) = trace(&opts, &mut src).await;
    let values: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(values[1]["events_lost"], 2);
    assert_eq!(values.last().unwrap()["lost"], 2);
}

#[tokio::test]
async fn cancelled_pump_still_finishes_with_summary_and_pcapng() {
    let dir = std::env::temp_dir().join(format!(
        "node-tracer-cancel-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.pcapng");
    let opts = TraceOptions {
        write: Some(path.clone()),
        summary: true,
        ..TraceOptions::default()
    };
    let mut src = FakeSource::new(pings(1), false);
    let mut out = Vec::new();
    let mut tracer = Tracer::new(&opts, &src).unwrap().with_clock(at_epoch);
    // Stands in for Ctrl-C: fires once the source has gone idle.
    tokio::select! {
        r = tracer.pump(&mut src, &ports, &mut out) => panic!("pump ended: {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    assert_eq!(tracer.stats().seen, 4);
    let stats = tracer.finish(&src, &mut out).unwrap();
    assert_eq!(stats.matched, 4);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("reply    vethB(default/web-2) tx -> vethA(default/web-1) rx"),
        "{text}"
    );

    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(&path)
        .args(["-T", "fields", "-e", "frame.interface_name"])
        .output()
        .expect("tshark is required: DEBIAN_FRONTEND=noninteractive apt-get install -y tshark");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vethA (default/web-1)\nvethB (default/web-2)\nvethB (default/web-2)\nvethA (default/web-1)\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unwritable_pcapng_is_an_error() {
    let opts = TraceOptions {
        write: Some("/nonexistent-dir/x.pcapng".into()),
        ..TraceOptions::default()
    };
    let src = FakeSource::new(Vec::new(), true);
    let err = Tracer::new(&opts, &src).err().unwrap();
    assert!(err.to_string().contains("/nonexistent-dir/x.pcapng"));
}

#[test]
fn monotonic_clock_maps_to_now() {
    let f = mono_to_wall_fn();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) },
        0
    );
    let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let wall = f(mono);
    let now = SystemTime::now();
    let skew = now.duration_since(wall).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(1), "{skew:?}");
    // A second later in monotonic time is a second later on the wall.
    assert_eq!(
        f(mono + 1_000_000_000).duration_since(wall).unwrap(),
        Duration::from_secs(1)
    );
    // Before boot: clamps instead of panicking.
    let _ = f(0);
}

#[tokio::test]
async fn a_stop_still_reports_the_events_already_queued() {
    let opts = TraceOptions {
        json: true,
        count: Some(7),
        ..TraceOptions::default()
    };
    // Eight events wait in the source when the stop comes, before the pump read any of them.
    let mut src = FakeSource::new(pings(2), false);
    let mut out = Vec::new();
    let mut tracer = Tracer::new(&opts, &src).unwrap().with_clock(at_epoch);
    tokio::select! {
        biased;
        () = std::future::ready(()) => {}
        r = tracer.pump(&mut src, &ports, &mut out) => panic!("pump ended first: {r:?}"),
    }
    assert_eq!(tracer.stats().seen, 0);
    tracer.drain(&mut src, &ports, &mut out).unwrap();
    // Up to --count, and no further.
    assert_eq!(tracer.stats().matched, 7);
    assert_eq!(src.events.len(), 1);
    let stats = tracer.finish(&src, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 7 + 1, "{text}");
    assert_eq!(stats.seen, 7);
}
