//! wisp's sandboxes: what a function is ([`spec`]), the seam every sandbox
//! sits behind ([`backend`]), the pool that serves a function's requests
//! ([`pool`]), the WebAssembly backend ([`wasm`]), the content-addressed
//! artifact store ([`artifact`]), and the parts of the container backend
//! built so far: the OCI image store ([`image`]) and cgroups ([`container`]).

pub mod artifact;
pub mod backend;
pub mod body;
pub mod container;
pub mod image;
pub mod pool;
pub mod spec;
pub mod wasm;
