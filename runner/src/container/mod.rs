//! The container backend (microcontainers), in progress: sandboxes built
//! from Linux namespaces, overlayfs and cgroups. What exists so far: the
//! cgroup layer ([`cgroup`]) and the pure set-up plan of a sandbox
//! ([`plan`]); the image store it will run is [`crate::image`]. The executor
//! that carries a plan out (spawner process, clone, mounts, seccomp) is not
//! written yet, so nothing here is reachable from the API.

pub mod cgroup;
pub mod plan;
