//! End-to-end tests: each starts the real `wisp` binary and talks HTTP to it.

mod cgi;
mod cli;
mod control;
mod faults;
mod lifecycle;
mod wasm_http;
