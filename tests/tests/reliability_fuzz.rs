//! Fuzzing through `BPF_PROG_TEST_RUN`: random frames, biased towards the headers the programs
//! parse, never make them return anything but `TCX_NEXT`, and every run is counted exactly once.

use node_tracer::probe::{Probe, ProbeOptions};
use node_tracer_tests::require_root;

const PROG_INGRESS: &str = "nt_ingress";
const PROG_EGRESS: &str = "nt_egress";
const TCX_NEXT: u32 = 0xffff_ffff;
/// Random frames fuzzed through each program.
const RUNS: u64 = 20_000;

/// A tiny xorshift: reproducible frames without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// A random frame biased towards the headers the programs parse, so the fuzz reaches deep paths.
fn fuzz_frame(rng: &mut Rng) -> Vec<u8> {
    let len = 14 + rng.below(1500);
    let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    let types: [u16; 6] = [0x0800, 0x86dd, 0x0806, 0x8100, 0x88a8, 0x1234];
    let mut off = 12;
    for _ in 0..rng.below(4) {
        if off + 6 > f.len() {
            break;
        }
        let t = if rng.below(2) == 0 { 0x8100u16 } else { 0x88a8 };
        f[off..off + 2].copy_from_slice(&t.to_be_bytes());
        off += 4;
    }
    let t = types[rng.below(types.len() as u64)];
    f[off..off + 2].copy_from_slice(&t.to_be_bytes());
    let l3 = off + 2;
    if t == 0x0800 && l3 < f.len() {
        f[l3] = 0x40 | (rng.next() as u8 & 0x0f);
        if l3 + 9 < f.len() {
            f[l3 + 9] = [1u8, 6, 17, 50][rng.below(4)];
        }
    }
    if t == 0x86dd && l3 + 6 < f.len() {
        f[l3] = 0x60;
        f[l3 + 6] = [0u8, 43, 44, 51, 58, 60, 6, 17][rng.below(8)];
        // A chain of extension headers of random lengths.
        let mut p = l3 + 40;
        while p + 2 <= f.len() && rng.below(8) != 0 {
            f[p] = [0u8, 43, 44, 51, 58, 60][rng.below(6)];
            f[p + 1] = rng.next() as u8 & 3;
            p += 8;
        }
    }
    f
}

#[test]
fn fuzzed_frames_always_return_tcx_next_and_are_all_counted() {
    require_root();
    let probe = Probe::load(&ProbeOptions {
        max_macs: 4096,
        ..ProbeOptions::default()
    })
    .expect("load programs");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ran = [0u64; 2];
    let mut refused = 0u64;
    for _ in 0..RUNS {
        let frame = fuzz_frame(&mut rng);
        for (n, prog) in [PROG_INGRESS, PROG_EGRESS].into_iter().enumerate() {
            match probe.test_run(prog, &frame, 1) {
                Ok((ret, _)) => {
                    assert_eq!(ret, TCX_NEXT, "{prog} returned {ret:#x} for {frame:02x?}");
                    ran[n] += 1;
                }
                // The kernel itself refuses some frames before running anything (an IPv4
                // ethertype with less than an IPv4 header, for one); the counts below prove
                // that no program ran for them.
                // The cause is the error's source: the whole chain is what says EINVAL.
                Err(e) if node_tracer_client::one_line(&e).contains("Invalid argument") => {
                    refused += 1;
                }
                Err(e) => panic!("{prog}: {}", node_tracer_client::one_line(&e)),
            }
        }
    }
    assert!(
        ran[0] > RUNS * 9 / 10,
        "most frames run: {ran:?}, {refused} refused"
    );
    // Repeat counts too: one call, 1000 runs.
    let frame = fuzz_frame(&mut rng);
    let (ret, _) = probe.test_run(PROG_INGRESS, &frame, 1000).unwrap();
    assert_eq!(ret, TCX_NEXT);
    // The kernel gives test-run skbs the loopback device (ifindex 1 here): every run counted once.
    let readings = probe.read().expect("read maps");
    let lo = readings.get(&1).expect("PORT_STATS entry for ifindex 1");
    let tx: u64 = lo.counters.tx_packets.iter().sum();
    let rx: u64 = lo.counters.rx_packets.iter().sum();
    assert_eq!(tx, ran[0] + 1000, "nt_ingress runs counted");
    assert_eq!(rx, ran[1], "nt_egress runs counted");
    assert_eq!(
        readings.len(),
        1,
        "no other port appeared: {:?}",
        readings.keys()
    );
    // Frames too short for Ethernet are refused by the kernel, not crashed on.
    assert!(probe.test_run(PROG_INGRESS, &[0u8; 10], 1).is_err());
}
