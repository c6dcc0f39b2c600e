//! The one error type of the topology module.

use std::{io, path::PathBuf};

/// Why a scan or a watch could not start or finish.
///
/// Problems with a single peer namespace (it vanished, it cannot be entered) are not errors:
/// they are logged at debug level and leave that peer's fields empty, because namespaces come
/// and go while we look at them and one dying pod must not hide the other thousand.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("open a netlink route socket")]
    Socket(#[source] io::Error),
    #[error("netlink {what}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("the netlink connection closed during the {0}")]
    ConnectionClosed(&'static str),
    #[error("read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A blocking task of a scan (listing namespaces, visiting them) panicked or was cancelled.
    #[error("the {what} task failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A worker thread of ours (with its own runtime) could not start.
    #[error("start the {what} thread")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("topology::watch needs a tokio runtime (call it from async code)")]
    NoRuntime,
}
