//! A lab of real pods on this machine.

pub mod runtime;
