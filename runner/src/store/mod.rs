//! What wisp keeps on disk beside the request path: uploaded artifacts by
//! content address ([`artifact`]) and handlers' output per function
//! ([`logs`]); [`durable`] puts a file in place so that it survives a
//! crash whole or not at all. The OCI image store, which the container
//! backend reads from, is [`crate::image`].

pub mod artifact;
pub mod durable;
pub mod logs;
