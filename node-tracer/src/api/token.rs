//! The bearer token: read from a file (a Kubernetes Secret's mount), re-read when the file
//! changes (a rotated Secret is a new file behind the same path), compared in constant time.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use sha2::{Digest as _, Sha256};

/// What identifies one version of the file: a Secret update swaps a symlink (new inode), an
/// edit in place changes the modification time or the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        len: m.len(),
    })
}

/// A token file that cannot be read or holds nothing: the clients' error, since both ends read
/// the file the same way.
pub use node_tracer_client::TokenFileError as TokenError;

/// The token file and the digest of what it held when last read. Only the digest is kept: the
/// token itself is in memory just while it is read and hashed.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    current: Mutex<(Option<Stamp>, Option<[u8; 32]>)>,
}

impl TokenFile {
    /// Reads the file now: a missing or empty token fails the start, not the first request.
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        let s = stamp(path).ok();
        let digest = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: Mutex::new((s, Some(digest))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `given` is the file's token as of now. A file that became unreadable or empty
    /// matches nothing (fails closed) until it holds a token again.
    pub fn matches(&self, given: &[u8]) -> bool {
        let now = stamp(&self.path).ok();
        let mut cur = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now != cur.0 || now.is_none() {
            let digest = match read(&self.path) {
                Ok(d) => Some(d),
                Err(e) => {
                    log::warn!(
                        "{}: refusing every token until it is readable again",
                        crate::api::chain(&e)
                    );
                    None
                }
            };
            if digest.is_some() && cur.1.is_some() && digest != cur.1 {
                log::info!(
                    "API token file {} changed: using the new token",
                    self.path.display()
                );
            }
            *cur = (now, digest);
        }
        let Some(want) = cur.1 else {
            return false;
        };
        drop(cur);
        constant_time_eq(&Sha256::digest(given).into(), &want)
    }
}

fn read(path: &Path) -> Result<[u8; 32], TokenError> {
    let token = node_tracer_client::read_token_file(path)?;
    Ok(Sha256::digest(token).into())
}

/// Equal digests, taking the same time whatever the first difference: both sides are
/// fixed-length digests, so neither the token's length nor a prefix match shows in the timing.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_read_again_when_it_changes_and_fails_closed() {
        let dir = std::env::temp_dir().join(format!("ntt-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let t = TokenFile::open(&path).unwrap();
        assert!(t.matches(b"first"));
        assert!(!t.matches(b"firs"));
        assert!(!t.matches(b"first\n"));
        assert!(!t.matches(b""));
        // Replaced the way a Secret update does it: a new file renamed over the old.
        let next = dir.join("token.new");
        std::fs::write(&next, "second-token").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(t.matches(b"second-token"));
        assert!(!t.matches(b"first"));
        std::fs::write(&path, "  \n").unwrap();
        assert!(
            !t.matches(b"second-token"),
            "an emptied file matches nothing"
        );
        assert!(!t.matches(b""));
        std::fs::remove_file(&path).unwrap();
        assert!(
            !t.matches(b"second-token"),
            "a removed file matches nothing"
        );
        std::fs::write(&path, "third").unwrap();
        assert!(t.matches(b"third"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            TokenFile::open(&path),
            Err(TokenError::Read { .. })
        ));
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a: [u8; 32] = Sha256::digest(b"x").into();
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}
