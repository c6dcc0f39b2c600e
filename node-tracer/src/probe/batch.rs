//! A whole per-CPU map in a few `bpf(2)` calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6) instead of
//! one per entry (aya's walk: `get_next_key`, then a lookup, for every key). A scrape of a
//! 1,000-pod node reads thousands of ICMP entries and a thousand counter slots; one call per
//! entry was about a third of the scrape's CPU time.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use super::bpf::sys_bpf;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr` (linux/bpf.h).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries of a per-CPU map (hash or array) as (key, one value per possible CPU), at most
/// `limit` of them (an array's first `limit` slots). `max_entries` is the map's size and `cpus`
/// the number of possible CPUs, which sets the kernel's value layout. An error means the kernel
/// cannot batch this map: the caller walks it instead.
pub fn per_cpu_entries<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    max_entries: u32,
    cpus: usize,
    limit: u32,
) -> std::io::Result<Vec<(K, Vec<V>)>> {
    let want = limit.min(max_entries) as usize;
    let mut out = Vec::with_capacity(want);
    if want == 0 {
        return Ok(out);
    }
    // Per-CPU values come rounded up to 8 bytes each, one per possible CPU.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut keys = vec![0u8; want * size_of::<K>()];
    let mut values = vec![0u8; want * stride * cpus];
    // Where the next call resumes: a bucket index (hash maps, 4 bytes) or the last key read
    // (other maps, a key's size).
    let token_len = size_of::<K>().max(8);
    let mut token = vec![0u8; token_len];
    let mut next = vec![0u8; token_len];
    let fd = u32::try_from(fd.as_raw_fd()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut first = true;
    while out.len() < want {
        let room = want - out.len();
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(room).map_err(|_| std::io::ErrorKind::InvalidInput)?,
            map_fd: fd,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is the layout BPF_MAP_LOOKUP_BATCH expects; `keys` and `values` hold
        // `room` entries of the map's key and per-CPU value sizes, and the tokens 8 bytes, all
        // alive across the call.
        let done = match unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => false,
            // The end of the map; `count` still says how many entries this call filled.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A hash bucket with more entries than `limit` leaves room for: stop at the limit.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && !out.is_empty() => break,
            Err(e) => return Err(e),
        };
        let got = (attr.count as usize).min(room);
        for i in 0..got {
            // SAFETY: entry `i` lies inside the buffers (i < room), and `K` and `V` are plain
            // data, valid for any bytes; the reads are unaligned-safe.
            let key = unsafe {
                std::ptr::read_unaligned(keys.as_ptr().add(i * size_of::<K>()).cast::<K>())
            };
            let per_cpu = (0..cpus)
                .map(|c| {
                    // SAFETY: as above, CPU `c`'s value of entry `i`.
                    unsafe {
                        std::ptr::read_unaligned(
                            values.as_ptr().add((i * cpus + c) * stride).cast::<V>(),
                        )
                    }
                })
                .collect();
            out.push((key, per_cpu));
        }
        if done || got == 0 {
            break;
        }
        token.copy_from_slice(&next);
        first = false;
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

    /// A kernel map of `ty` with u32 keys and u64 values (needs root, as the tests run in CI).
    pub(in crate::probe) fn map(ty: u32, max_entries: u32) -> OwnedFd {
        #[repr(C)]
        struct Create {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        }
        let mut attr = Create {
            map_type: ty,
            key_size: 4,
            value_size: 8,
            max_entries,
        };
        // SAFETY: the map_create prefix of bpf_attr, no pointers.
        let fd = unsafe { sys_bpf(BPF_MAP_CREATE, &mut attr) }
            .unwrap_or_else(|e| panic!("BPF_MAP_CREATE (needs root): {e}"));
        // SAFETY: a new descriptor the kernel just returned.
        unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) }
    }

    /// Sets `key` to `key * 1000 + cpu` on every CPU.
    fn put(fd: &OwnedFd, key: u32, cpus: usize) {
        #[repr(C)]
        struct Update {
            map_fd: u32,
            pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let values: Vec<u64> = (0..cpus)
            .map(|c| u64::from(key) * 1000 + c as u64)
            .collect();
        let mut attr = Update {
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap(),
            pad: 0,
            key: (&raw const key) as u64,
            value: values.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: key and one u64 per possible CPU live across the call.
        unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.expect("BPF_MAP_UPDATE_ELEM");
    }

    fn check(got: &[(u32, Vec<u64>)], cpus: usize) {
        for (k, per_cpu) in got {
            let want: Vec<u64> = (0..cpus).map(|c| u64::from(*k) * 1000 + c as u64).collect();
            assert_eq!(per_cpu, &want, "key {k}");
        }
    }

    #[test]
    fn reads_every_entry_of_a_per_cpu_hash_with_each_cpus_value() {
        let cpus = aya::util::nr_cpus().unwrap();
        let fd = map(BPF_MAP_TYPE_PERCPU_HASH, 256);
        let keys: Vec<u32> = (0..200).map(|i| i * 7 + 3).collect();
        for &k in &keys {
            put(&fd, k, cpus);
        }
        let got = per_cpu_entries::<u32, u64>(fd.as_fd(), 256, cpus, u32::MAX).unwrap();
        let mut seen: Vec<u32> = got.iter().map(|(k, _)| *k).collect();
        seen.sort_unstable();
        assert_eq!(seen, keys);
        check(&got, cpus);
        // A limit stops early with whole entries only.
        let some = per_cpu_entries::<u32, u64>(fd.as_fd(), 256, cpus, 50).unwrap();
        assert!((1..=50).contains(&some.len()), "{}", some.len());
        check(&some, cpus);
        // An empty map is no error.
        let empty = map(BPF_MAP_TYPE_PERCPU_HASH, 8);
        assert!(
            per_cpu_entries::<u32, u64>(empty.as_fd(), 8, cpus, u32::MAX)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn reads_the_first_slots_of_a_per_cpu_array() {
        let cpus = aya::util::nr_cpus().unwrap();
        let fd = map(BPF_MAP_TYPE_PERCPU_ARRAY, 64);
        for k in 0..64 {
            put(&fd, k, cpus);
        }
        let got = per_cpu_entries::<u32, u64>(fd.as_fd(), 64, cpus, 10).unwrap();
        assert_eq!(
            got.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        check(&got, cpus);
        let all = per_cpu_entries::<u32, u64>(fd.as_fd(), 64, cpus, u32::MAX).unwrap();
        assert_eq!(all.len(), 64);
        check(&all, cpus);
    }
}
