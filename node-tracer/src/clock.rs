//! The programs' clock (`CLOCK_MONOTONIC`, what `bpf_ktime_get_ns` reads) on the wall.
//!
//! One anchor, taken once: every time converted through it lands on one consistent timeline,
//! and a wall-clock step in between shifts nothing.

use std::time::{Duration, SystemTime};

/// A moment read on both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mono_ns: u64,
    wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            mono_ns: monotonic_ns(),
            wall: SystemTime::now(),
        }
    }

    /// Wall-clock time of a `CLOCK_MONOTONIC` instant (the Unix epoch at the earliest).
    pub fn to_wall(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        } else {
            self.wall
                .checked_sub(Duration::from_nanos(self.mono_ns - mono_ns))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    /// Milliseconds since the epoch of a past `CLOCK_MONOTONIC` instant (one in the future is
    /// now); 0 stays 0 (never seen).
    pub fn mono_to_unix_ms(&self, mono_ns: u64) -> u64 {
        if mono_ns == 0 {
            return 0;
        }
        let unix_ns = self
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        unix_ns.saturating_sub(self.mono_ns.saturating_sub(mono_ns)) / 1_000_000
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, so the
    // call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_times_map_to_wall_clock() {
        let c = Clock {
            mono_ns: 10_000_000_000,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        assert_eq!(c.mono_to_unix_ms(0), 0);
        assert_eq!(c.mono_to_unix_ms(9_000_000_000), 1_699_999_999_000);
        assert_eq!(c.mono_to_unix_ms(10_000_000_000), 1_700_000_000_000);
        assert_eq!(
            c.to_wall(11_000_000_000),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001)
        );
        assert_eq!(
            c.to_wall(1),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_699_999_990_000_000_001)
        );
    }
}
