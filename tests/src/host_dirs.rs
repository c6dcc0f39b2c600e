//! Directories a container engine makes on the host whatever the directories it is given (its
//! cgroups, a runtime's socket dir): one guard per engine kind, shared by the engines of one test
//! binary (they run in parallel). Those missing before the first engine of the kind started are
//! pruned when the last one stops; anything another runtime or test still uses stays.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

pub(crate) struct HostDirs {
    /// The directories to watch, deepest first (a parent's turn comes once it is empty).
    watched: fn() -> Vec<PathBuf>,
    /// Removes one watched directory if nothing uses it.
    prune: fn(&Path),
    /// Engines running, and the watched directories that did not exist before the first.
    inner: Mutex<(usize, Option<Vec<PathBuf>>)>,
}

impl HostDirs {
    pub(crate) const fn new(watched: fn() -> Vec<PathBuf>, prune: fn(&Path)) -> Self {
        Self {
            watched,
            prune,
            inner: Mutex::new((0, None)),
        }
    }

    /// An engine of this kind starts.
    pub(crate) fn enter(&self) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.1.is_none() {
            g.1 = Some(
                (self.watched)()
                    .into_iter()
                    .filter(|d| !d.exists())
                    .collect(),
            );
        }
        g.0 += 1;
    }

    /// An engine of this kind stopped: the last one prunes what the first found missing.
    pub(crate) fn leave(&self) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0 -= 1;
        if g.0 > 0 {
            return;
        }
        for d in g.1.take().unwrap_or_default() {
            (self.prune)(&d);
        }
    }
}

/// In each cgroup hierarchy, the directory `name` (where an engine puts its containers' cgroups).
pub(crate) fn cgroups(name: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path().join(name))
        .collect()
}
