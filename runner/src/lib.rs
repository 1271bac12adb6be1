//! wisp's sandboxes: what a function is ([`spec`]), the seam every sandbox
//! sits behind ([`backend`]), the pool that serves a function's requests
//! ([`pool`]), the WebAssembly backend ([`wasm`]) and the content-addressed
//! artifact store ([`artifact`]).

pub mod artifact;
pub mod backend;
pub mod body;
pub mod image;
pub mod pool;
pub mod spec;
pub mod wasm;
