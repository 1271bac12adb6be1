//! wisp's sandboxes, laid out along the data path of a request and, beside
//! it, the stores:
//!
//! - [`spec`]: what a function is (serde types shared with the control API);
//! - [`backend`]: the seam every sandbox sits behind, and its errors;
//! - [`router`]: which backend runs an artifact;
//! - [`pool`]: the instances serving one function's requests (policy; it
//!   knows no backend);
//! - [`protocol`]: how a request reaches a handler (HTTP, CGI), shared by
//!   the executors;
//! - the executors: [`wasm`] (wasmtime) and [`container`] (namespaces,
//!   overlayfs, cgroups, seccomp, its own init);
//! - [`body`]: streamed, capped bodies;
//! - [`quiet`]: polling a future without it waking its own task;
//! - [`host`]: how busy the host's CPUs are (a pool's scale-up signal);
//! - the stores: [`store`] (artifacts, handlers' logs) and [`image`] (OCI
//!   images and their unpacked layers).

pub mod backend;
pub mod body;
pub mod container;
pub mod host;
pub mod image;
pub mod pool;
pub mod protocol;
pub mod quiet;
pub mod router;
pub mod spec;
pub mod store;
pub mod wasm;
