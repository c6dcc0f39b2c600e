//! The one error type of the topology module.

use std::{io, path::PathBuf};

/// Why a scan or a watch could not start or finish.
///
/// Problems with a single peer namespace (it vanished, it cannot be entered) are not errors:
/// they are logged at debug level and leave that peer's fields empty, because namespaces come
/// and go while we look at them and one dying pod must not hide the other thousand.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("open a netlink route socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink {what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("the netlink connection closed during the {0}")]
    ConnectionClosed(&'static str),
    #[error("read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the namespace visit task failed: {0}")]
    Visit(String),
    #[error("topology::watch needs a tokio runtime (call it from async code)")]
    NoRuntime,
}
