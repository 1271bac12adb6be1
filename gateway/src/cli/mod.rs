//! The `wisp` command line. `serve` runs the gateway; every other
//! subcommand talks to a running gateway over HTTP through [`client`]:
//!
//! - `deploy`: upload an artifact and deploy it (a `--rootfs` directory or a
//!   `--binary` is first packed into an OCI image by [`pack`]);
//! - `invoke`: call a function and print its response body;
//! - `ls` and `rm`: list the functions, remove one;
//! - `logs`: print (and follow) a function's output;
//! - `scale`: change a function's scaling settings live;
//! - `bench`: load a function and measure it ([`bench`]);
//! - `images` and `prune`: list the container images, remove the unused ones;
//! - `pull`, `tag`, `rmi`, `login`: fetch images from registries (the
//!   server pulls; [`progress`] shows how far), name and remove them.
//!
//! [`args`] defines the flags (each can also be set by an environment
//! variable, shown in `--help` with its default); `commands` runs them.

pub mod args;
pub mod bench;
pub mod client;
mod commands;
pub mod pack;
pub mod progress;

pub use args::{Cli, Command};
pub use commands::{default_data_dir, init_logging, is_unreachable, run};
