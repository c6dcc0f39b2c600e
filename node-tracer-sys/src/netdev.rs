//! Interface names and indexes of the calling thread's network namespace.

/// The ifindex of interface `name`, if it exists here.
pub fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Whether `ifindex` is a link of this namespace (a veth moved away or deleted is not).
pub fn link_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_nonsense_is_not() {
        assert_eq!(ifindex_of("lo"), Some(1));
        assert!(link_exists(1));
        assert_eq!(ifindex_of("no such link"), None);
        assert_eq!(ifindex_of("a\0b"), None);
    }
}
