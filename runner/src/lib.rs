//! wisp's sandboxes: what a function is ([`spec`]), the seam every sandbox
//! sits behind ([`backend`]), the pool that serves a function's requests
//! ([`pool`]), the WebAssembly backend ([`wasm`]), the content-addressed
//! artifact store ([`artifact`]), the OCI image store ([`image`]), the
//! container backend ([`container`]), the dispatch between the two
//! backends ([`dispatch`]) and handlers' output ([`logs`]).

pub mod artifact;
pub mod backend;
pub mod body;
pub mod container;
pub mod dispatch;
pub mod image;
pub mod logs;
pub mod pool;
pub mod spec;
pub mod wasm;
