// The real code is the `node-tracer` binary target (src/main.rs), built for bpfel-unknown-none.
// This empty library lets the userspace crate name this one as a build-dependency, so cargo
// rebuilds the loader when the programs change.
#![no_std]
