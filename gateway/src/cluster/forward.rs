//! Warm-aware routing: a node that gets an invocation of a function whose
//! home ([`super::ring`]) is another node forwards it there, so every
//! request for a function meets the same warm instances whichever node the
//! load balancer picked.
//!
//! - A forwarded request carries `X-Wisp-Forwarded: <node>` and always runs
//!   where it lands: no loops, whatever the two nodes think of the ring.
//! - The next candidates are tried when the home cannot be reached
//!   (connect failures) or answers that it did not run the request (a 429
//!   or 503 marked `X-Wisp-Shed`: queue full, no capacity, shutting down)
//!   — but only with a body that can be sent again: none, or one declared
//!   at most [`REPLAYABLE_BYTES`], held until the answer. A larger or
//!   streamed body goes to the home alone, once: a body already sent is
//!   never sent to a second node. A 429 or 5xx from the function itself is
//!   its answer and is never retried.
//! - When this node comes up in the order, it serves the request itself.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::NodeRecord;
use crate::rescue::{GatewayError, rescue};
use crate::server::{App, Client};
use wisp_runner::backend::{Body, BodyError};

/// Marks a request one node forwarded to another.
pub const FORWARDED_HEADER: &str = "x-wisp-forwarded";
/// Marks an answer given without running the request (429/503 from the
/// pool or the server): another node may take it.
pub const SHED_HEADER: &str = "x-wisp-shed";
/// Largest declared body held to be sent again to the next candidate.
pub const REPLAYABLE_BYTES: u64 = 1024 * 1024;

/// The HTTP client nodes forward requests with. Its body's error is a
/// concrete type: with the boxed trait object the client's futures are not
/// provably `Send` for every lifetime (a known limit of the compiler).
pub type Forwarder = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::combinators::UnsyncBoxBody<Bytes, BodyFailure>,
>;

/// A request body's error, on its way to another node.
#[derive(Debug)]
pub struct BodyFailure(BodyError);

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyFailure {}

pub fn forwarder() -> Forwarder {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(1)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

impl App {
    /// The nodes to try for an invocation of `key`, home first, when its
    /// home is another node; `None` to serve it here.
    pub(crate) fn elsewhere(
        &self,
        key: &str,
        headers: &http::HeaderMap,
    ) -> Option<Vec<NodeRecord>> {
        let cluster = self.cluster.get()?;
        if headers.contains_key(FORWARDED_HEADER) {
            return None;
        }
        let order = cluster.rank(key);
        if order.first().is_none_or(|home| home.name == cluster.node()) {
            return None;
        }
        Some(order)
    }

    /// Sends an invocation of `key` to the first of `order` that takes it.
    pub(crate) async fn forward(
        &self,
        key: &str,
        rest: &str,
        order: Vec<NodeRecord>,
        req: Request<Body>,
        remote: &Client,
    ) -> Response<Body> {
        let Some(cluster) = self.cluster.get() else {
            return rescue(&GatewayError::NotReady("not in a cluster".into()));
        };
        let (mut parts, body) = req.into_parts();
        crate::server::strip_hop_by_hop(&mut parts.headers);
        if let Ok(me) = HeaderValue::from_str(cluster.node()) {
            parts.headers.insert(FORWARDED_HEADER, me);
        }
        let prior = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let client_ip = remote.addr.ip().to_string();
        let chain = match prior {
            Some(prior) => format!("{prior}, {client_ip}"),
            None => client_ip,
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            parts.headers.insert("x-forwarded-for", value);
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let chunked = parts.headers.contains_key(http::header::TRANSFER_ENCODING);
        // A body that can be sent again, held; or the body, sent once.
        let (mut once, replay) = match (declared, chunked) {
            (Some(n), false) if n <= REPLAYABLE_BYTES => {
                // hyper holds a body to its declared length.
                match body.collect().await {
                    Ok(collected) => (None, Some(collected.to_bytes())),
                    Err(e) => {
                        return rescue(&GatewayError::BadRequest(format!(
                            "reading the request body: {e}"
                        )));
                    }
                }
            }
            (None, false) => (None, Some(Bytes::new())),
            _ => (Some(body), None),
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .to_owned();
        let mut last: Option<Response<Body>> = None;
        let mut reasons = Vec::new();
        let candidates = order.len();
        for (i, node) in order.into_iter().enumerate() {
            let more = i + 1 < candidates;
            let body = match (&replay, once.take()) {
                (Some(bytes), _) => Full::new(bytes.clone()).map_err(never).boxed_unsync(),
                (None, Some(body)) => body,
                // Sent once already: no second node gets it.
                (None, None) => break,
            };
            if node.name == cluster.node() {
                let mut here = Request::from_parts(parts.clone(), body);
                here.headers_mut().remove(FORWARDED_HEADER);
                return self
                    .invoke(key, rest, here, remote)
                    .await
                    .unwrap_or_else(|e| rescue(&e));
            }
            let uri = match format!("{}{path}", node.address).parse::<http::Uri>() {
                Ok(uri) => uri,
                Err(e) => {
                    reasons.push(format!("{}: bad address: {e}", node.name));
                    continue;
                }
            };
            let mut request =
                Request::from_parts(parts.clone(), body.map_err(BodyFailure).boxed_unsync());
            *request.uri_mut() = uri;
            match self.forwarder.request(request).await {
                Ok(response) => {
                    let shed = response.headers().contains_key(SHED_HEADER)
                        && matches!(
                            response.status(),
                            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                        );
                    let response = response.map(|b| b.map_err(boxed).boxed_unsync());
                    if shed && more && replay.is_some() {
                        tracing::debug!(function = %key, node = %node.name, status = response.status().as_u16(), "the home did not take it; trying the next node");
                        last = Some(response);
                        continue;
                    }
                    return response;
                }
                Err(e) if e.is_connect() && replay.is_some() => {
                    tracing::debug!(function = %key, node = %node.name, error = %e, "cannot reach the node; trying the next");
                    reasons.push(format!("{}: {e}", node.name));
                }
                Err(e) => {
                    tracing::warn!(function = %key, node = %node.name, error = %e, "forwarding failed");
                    return rescue(&GatewayError::BadGateway(format!(
                        "forwarding to node {} failed: {e}",
                        node.name
                    )));
                }
            }
        }
        last.unwrap_or_else(|| {
            rescue(&GatewayError::NotReady(format!(
                "no node could take the request for {key}: {}",
                reasons.join("; ")
            )))
        })
    }
}

fn never(e: std::convert::Infallible) -> BodyError {
    match e {}
}

fn boxed(e: hyper::Error) -> BodyError {
    Box::new(e)
}
