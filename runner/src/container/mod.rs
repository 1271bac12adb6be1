//! The container backend (microcontainers), in progress: sandboxes built
//! from Linux namespaces, overlayfs and cgroups. What exists so far is the
//! cgroup layer ([`cgroup`]); the image store it will run is
//! [`crate::image`]. Nothing here is reachable from the API yet.

pub mod cgroup;
