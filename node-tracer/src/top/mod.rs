//! `node-tracer top`: the live view.
