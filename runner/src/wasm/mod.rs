//! The WebAssembly backend (wasmtime).
//!
//! One [`Engine`] per process, with the pooling instance allocator,
//! copy-on-write memory images and epoch interruption. Artifacts are compiled
//! once at deploy time and the machine code is kept in the artifact store;
//! [`WasmBackend::start`] maps it back in with `deserialize_file` and
//! pre-links it, so a restart recompiles nothing. A warm "instance" is an
//! `InstancePre`: every request gets a fresh `Store`, so no state leaks from
//! one request to the next.
//!
//! Two ABIs: `wasi:http/proxy` components ([`http`]) and WASI preview1
//! command modules run CGI-style ([`cgi`]). Limits: a per-store memory cap
//! (a [`wasmtime::ResourceLimiter`]), a deadline enforced with epochs (a
//! guest spinning in a loop is interrupted), and no network: no sockets, no
//! name lookups, outbound HTTP only to hosts the function's spec allows.

//!
//! - `backend`: [`WasmBackend`], the engine, compiling and linking;
//! - `http`, `cgi`: the executors of the two ABIs (the CGI mapping is
//!   [`crate::protocol::cgi`]);
//! - `guest`: what both give a guest: WASI context, memory cap, deadline,
//!   captured output;
//! - `outbound`: the addresses a wildcard outbound grant does not reach.

mod backend;
pub(crate) mod cgi;
mod guest;
mod http;
mod outbound;

pub use backend::{EPOCH_TICK, WasmBackend, WasmConfig};
