//! Small facts about the host that the agent, the tests and xtask all need, written once:
//! interface names and indexes ([`netdev`]), which processes hold which BPF objects ([`held`]),
//! and stopping a child process ([`process`]). Only libc, so xtask can use it before the eBPF
//! build chain is installed.

pub mod held;
pub mod netdev;
pub mod process;
