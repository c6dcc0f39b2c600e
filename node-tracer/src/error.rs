//! The library's error type. `anyhow` and its `.context(..)` live only in `main` and xtask.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF map {0} is missing from the object file")]
    MapMissing(&'static str),
    #[error("attach {direction} on {interface}: {source}")]
    Attach {
        interface: String,
        direction: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("no such interface: {0}")]
    NoSuchInterface(String),
    #[error("{0} is not a veth")]
    NotVeth(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0}")]
    Privilege(String),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
