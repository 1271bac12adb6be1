//! End-to-end tests: each starts the real `wisp` binary and talks HTTP to it.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure by design"
)]

mod calls;
mod cgi;
mod cli;
mod cluster;
mod connections;
mod container;
mod control;
mod faults;
mod lambda;
mod lifecycle;
mod logs;
mod metrics;
mod namespaces;
mod python;
mod registry;
mod revisions;
mod scaling;
mod secrets;
mod spec;
mod wasm_http;
