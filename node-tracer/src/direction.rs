//! Which way a packet went, from the pod's point of view. Its own module, at the bottom: the
//! model and the TCP counters it holds both speak of it.

use serde::{Deserialize, Serialize};

/// Direction from the pod's point of view.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The pod received it (host veth egress).
    Receive,
    /// The pod sent it (host veth ingress).
    Transmit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Receive => "receive",
            Direction::Transmit => "transmit",
        }
    }
}
