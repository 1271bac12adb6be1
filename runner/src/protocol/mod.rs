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
//! - [`lambda`]: AWS Lambda's: the request as a function URL event, which
//!   the runtime fetches from the Runtime API wisp serves in the sandbox,
//!   and the result it posts back as the response.

pub mod cgi;
pub mod lambda;

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
    /// An AWS Lambda runtime: it fetches events from the Lambda Runtime
    /// API on `127.0.0.1:9001` in its network namespace.
    Lambda,
}

impl Protocol {
    /// Parses the name the control API and the CLI use (`http`, `cgi`).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "http" => Ok(Protocol::Http),
            "cgi" => Ok(Protocol::Cgi),
            "lambda" => Ok(Protocol::Lambda),
            other => Err(SpecError::OutOfRange {
                what: "protocol",
                value: other.chars().take(40).collect(),
                range: "http, cgi or lambda",
            }),
        }
    }

    /// The name [`Protocol::parse`] takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Cgi => "cgi",
            Protocol::Lambda => "lambda",
        }
    }
}

/// A new random (version 4) UUID, as request and call ids are.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No randomness: unique enough from the clock and a counter.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = u128::from(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ (n << 64)).to_be_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for protocol in [Protocol::Http, Protocol::Cgi, Protocol::Lambda] {
            assert_eq!(Protocol::parse(protocol.as_str()), Ok(protocol));
            let json = serde_json::to_string(&protocol).unwrap();
            assert_eq!(json, format!("\"{}\"", protocol.as_str()));
        }
        assert!(Protocol::parse("grpc").is_err());
    }
}
