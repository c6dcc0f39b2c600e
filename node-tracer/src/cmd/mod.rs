//! What each command does with its flags: one module per command, over the library (and the
//! lab crate for `lab`, `run --lab` and `top --lab`).

pub mod lab;
pub mod macs;
pub mod peers;
pub mod run;
pub mod top;
pub mod trace;
