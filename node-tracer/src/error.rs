//! The library's error type. `anyhow` and its `.context(..)` live only in `main` and xtask.
//!
//! A variant's message says what was being done; the failure beneath it is its typed
//! `#[source]`, never pasted into the message as well (`main` prints the whole chain on one line,
//! `a: b: c`, so a cause in both would be printed twice). Logs print the chain with
//! [`node_tracer_client::one_line`].

use std::{io, path::PathBuf, time::Duration};

use crate::topology::TopologyError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF programs")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF map {0} is missing from the object file")]
    MapMissing(&'static str),
    #[error("attach {direction} on {interface}")]
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
    #[error("no bridge named {0}")]
    NoSuchBridge(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Reading the node's links, addresses, namespaces or bridges.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A running agent's `/snapshot` (`macs --connect`).
    #[error("reading the agent's snapshot")]
    AgentSnapshot(#[source] node_tracer_client::ClientError),
    #[error("the agent's snapshot is not the JSON this version reads")]
    SnapshotJson(#[source] serde_json::Error),

    // `top`
    #[error(
        "node-tracer top draws a full-screen view and needs a terminal on stdout; \
         for scripts use `node-tracer peers --json` or the agent's /metrics"
    )]
    NotATerminal,
    #[error("unknown sort column {given:?}; one of: {valid}")]
    BadSort { given: String, valid: String },
    #[error("refresh interval must be at least 100ms, got {0:?}")]
    BadInterval(Duration),
    #[error("terminal")]
    Terminal(#[source] io::Error),
    #[error("starting the snapshot thread")]
    SourceThread(#[source] io::Error),
    #[error("the snapshot source panicked")]
    SourcePanicked,
    #[error("the snapshot thread ended")]
    SourceEnded,

    // `trace`
    #[error("bad address filter {0:?}: expected an IP, a CIDR (10.0.0.0/24) or a MAC")]
    BadAddressFilter(String),
    #[error(
        "bad ICMP type {0:?}: expected a number (8, 128) or a name (echo-request, neighbour-solicitation)"
    )]
    BadIcmpType(String),
    #[error("writing the trace output")]
    TraceOutput(#[source] io::Error),
    #[error("writing {}", path.display())]
    Pcapng {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("encoding a JSON line")]
    JsonLine(#[source] serde_json::Error),

    /// A qdisc or filter request of the netlink attach mode (`probe/qdisc.rs`).
    #[error("{what} on {interface}")]
    Tc {
        what: &'static str,
        interface: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// The kernel refused to delete a stale filter of ours.
    #[error("delete stale {program} filter on {interface}")]
    TcRefused {
        program: String,
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("the netlink thread panicked")]
    NetlinkThreadPanicked,
    #[error("not attaching {interface}: --max-ports {max} reached")]
    MaxPorts { interface: String, max: u32 },
    /// The capability check of `probe`: what is missing, each with what it is needed for.
    #[error(
        "missing capability {} ({}); grant it or run as root (deploy/README.md, \"Least privilege\")",
        names(.0),
        reasons(.0)
    )]
    MissingCapabilities(Vec<MissingCapability>),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

/// A capability the agent cannot run without, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingCapability {
    pub name: &'static str,
    pub needed_for: &'static str,
}

fn names(m: &[MissingCapability]) -> String {
    m.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

fn reasons(m: &[MissingCapability]) -> String {
    m.iter()
        .map(|c| c.needed_for)
        .collect::<Vec<_>>()
        .join("; ")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_printed_once() {
        let e = Error::io(
            "listen on 127.0.0.1:1",
            io::Error::from(io::ErrorKind::AddrInUse),
        );
        assert_eq!(e.to_string(), "listen on 127.0.0.1:1");
        assert_eq!(
            node_tracer_client::one_line(&e),
            "listen on 127.0.0.1:1: address in use"
        );
    }
}
