//! wisp's gateway: the HTTP server and its routing ([`server`], [`route`]),
//! the OpenFaaS-shaped control API ([`control`], [`api`], [`auth`]), the
//! function registry ([`registry`]), the mapping of every error to a status
//! ([`rescue`]), Prometheus metrics ([`metrics`]), and the command line
//! ([`cli`], [`client`]). It reaches the
//! sandboxes only through `wisp_runner`'s `Pool` and `Backend`.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
mod control;
pub mod metrics;
pub mod pack;
pub mod registry;
pub mod rescue;
pub mod route;
pub mod server;
