//! The `wisp` command line: `serve` runs the gateway; `deploy`, `invoke`,
//! `ls` and `rm` talk to a running gateway over HTTP. Every flag can also be
//! set by an environment variable, shown in `--help` with its default.

pub mod args;
pub mod bench;
pub mod client;
mod commands;
pub mod pack;

pub use args::{Cli, Command};
pub use commands::{default_data_dir, init_logging, is_unreachable, run};
