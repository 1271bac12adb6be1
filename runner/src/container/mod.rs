//! The container backend (microcontainers): OCI images run in sandboxes
//! that wisp builds itself from Linux namespaces, overlayfs and cgroups.
//!
//! Policy, on the gateway's side of the process boundary:
//! - [`backend`]: [`ContainerBackend`], the `Backend` the router calls
//!   (image import at deploy, the steps of a cold start);
//! - `premade`: the pool of sandboxes made ahead of demand;
//! - `instance`: [`ContainerInstance`], one running container, forwarding
//!   requests by its protocol;
//! - `init_link`: the gateway's end of a container's control socket;
//! - `lambda`: the Lambda Runtime API a `lambda` sandbox's runtime calls;
//! - `sandbox`: what a container holds on the host, and its release;
//! - [`users`]: an image's user and group names.
//!
//! Mechanism:
//! - [`plan`]: the set-up of one sandbox as a value (pure, unit-tested);
//! - [`cgroup`]: memory, CPU and pids limits on cgroup v1 and v2;
//! - [`spawner`]: the single-threaded process that clones containers;
//! - `host_view`: the spawner's mount namespace, what sandboxes see of
//!   the host before their `pivot_root`;
//! - `init`: what runs inside: set-up, then PID 1;
//! - [`seccomp`], `sys`, [`proto`]: the filter, raw calls, messages.

pub mod backend;
pub mod cgroup;
pub mod cgroup_tuning;
mod error;
mod handler_conns;
mod host_view;
mod init;
mod init_link;
mod instance;
mod lambda;
mod netns;
pub mod plan;
mod premade;
mod procs;
pub mod proto;
mod sandbox;
pub mod seccomp;
pub mod spawner;
mod sys;
pub mod users;

pub use backend::{ContainerBackend, DEFAULT_PREMADE, SandboxOptions};
pub use error::{SandboxError, UnavailableError};
pub use instance::ContainerInstance;
/// Registers an owned descriptor with tokio's reactor (the gateway, which
/// has no `unsafe`, registers its bench's timers with it).
pub use sys::async_fd;
