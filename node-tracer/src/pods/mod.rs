//! Which pod owns a network namespace: CRI, CNI result cache, /run/netns, /proc.

// TEMPORARY stand-in until the real sources land.
use std::{path::PathBuf, time::Duration};

#[derive(Debug, Clone, Default)]
pub struct PodConfig {
    pub cri_sockets: Vec<PathBuf>,
    pub cni_results_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub proc_root: PathBuf,
    pub cri_timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct PodIndex;

impl PodIndex {
    pub fn lookup(&self, _netns_inode: u64) -> Option<&crate::model::Pod> {
        None
    }
    pub fn netns_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

pub async fn discover(_cfg: &PodConfig) -> PodIndex {
    PodIndex
}
