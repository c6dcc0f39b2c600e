//! The lab's one error type, for the namespace lab and the pod runtime alike.

use std::path::PathBuf;

use node_tracer_cri::CriError;

use crate::subnet::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad runtime options: {0}")]
    Options(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0} failed: {1}")]
    Command(String, String),
    #[error("lab state {0}: {1}")]
    State(PathBuf, #[source] serde_json::Error),
    #[error("subnet {subnet} overlaps the host's route to {route}")]
    SubnetInUse { subnet: Subnet, route: Subnet },
    #[error("link {0} already exists (another lab, or a leftover: `ip link del {0}`)")]
    BridgeExists(String),
    #[error("a runtime already answers on {0}")]
    AlreadyRunning(PathBuf),
    #[error("containerd did not come up: {reason}; log tail:\n{log}")]
    Start { reason: String, log: String },
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("unknown runtime handler {0:?} (runc or ptp)")]
    Handler(String),
    #[error("sandbox {0}: its status names no network namespace")]
    NoNetns(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `map_err(io(what))`: an I/O error with what was being done.
pub(crate) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |e| Error::Io(what, e)
}
