//! wisp's gateway: the HTTP server, its client connections and its routing
//! ([`server`], [`connections`], [`route`]),
//! the OpenFaaS-shaped control API ([`control`], [`api`], [`auth`]),
//! namespaces and the tokens scoped to them ([`namespaces`]),
//! asynchronous invocations ([`calls`]), AWS Lambda's Invoke API
//! ([`lambda_api`]), the
//! credentials of the registries it pulls from ([`credentials`]), pulls and
//! deploys in flight ([`pending`]), the
//! function registry ([`registry`]), secrets ([`secrets`]), revisions and rollback ([`revisions`]), the mapping of every error to a status
//! ([`rescue`]), Prometheus metrics ([`metrics`]), garbage collection of the
//! data dir ([`prune`]), cluster membership on etcd ([`cluster`]); and, apart from the
//! server, the `wisp` command line with its client tools ([`cli`]). It
//! reaches the sandboxes only through `wisp_runner`'s `Pool` and `Backend`.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod calls;
pub mod cli;
pub mod cluster;
pub mod connections;
mod control;
pub mod credentials;
pub mod lambda_api;
mod linger;
pub mod metrics;
pub mod namespaces;
mod pending;
pub mod prune;
pub mod registry;
pub mod rescue;
mod revisions;
pub mod route;
pub mod secrets;
pub mod server;
