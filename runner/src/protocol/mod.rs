//! How a request reaches a handler, apart from the executor that runs the
//! handler: a [`Protocol`] names the mapping, and each protocol's module
//! turns an HTTP request into what the handler speaks and its answer back
//! into an HTTP response. The wasm and the container executors both use
//! them, so a protocol behaves the same whatever runs the handler.
//!
//! - `http`: the handler speaks HTTP itself (a wasi:http component, or a
//!   server on `$PORT` in a container); there is nothing to map beyond
//!   the request's target, which each executor sets.
//! - [`cgi`]: RFC 3875: the request's meta-variables in the environment,
//!   its body on stdin, a header block and the body on stdout.

pub mod cgi;

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// How wisp talks to a container's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The handler serves HTTP on `$PORT` inside its network namespace.
    Http,
    /// One process per request: request on stdin, response on stdout.
    Cgi,
}

impl Protocol {
    /// Parses the name the control API and the CLI use (`http`, `cgi`).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "http" => Ok(Protocol::Http),
            "cgi" => Ok(Protocol::Cgi),
            other => Err(SpecError::OutOfRange {
                what: "protocol",
                value: other.chars().take(40).collect(),
                range: "http or cgi",
            }),
        }
    }

    /// The name [`Protocol::parse`] takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Cgi => "cgi",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for protocol in [Protocol::Http, Protocol::Cgi] {
            assert_eq!(Protocol::parse(protocol.as_str()), Ok(protocol));
            let json = serde_json::to_string(&protocol).unwrap();
            assert_eq!(json, format!("\"{}\"", protocol.as_str()));
        }
        assert!(Protocol::parse("lambda").is_err());
    }
}
