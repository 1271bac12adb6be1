//! Every error the gateway can answer with, and the one function that turns
//! each into an HTTP status and a plain-text body. Host-side details (a
//! guest's trap, a storage fault) go to the server log; the client gets a
//! message that names the function and says what happened, without them.

use http::{HeaderValue, Response, StatusCode};
use wisp_runner::backend::{Body, InvokeError, PrepareError, PullFailure, StartError, full_body};
use wisp_runner::image::StoreError;
use wisp_runner::store::artifact::{PruneError, UploadError};

use crate::api::DeploymentError;
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("function {0:?} not found")]
    UnknownFunction(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error(
        "missing or invalid token: send Authorization: Bearer <token> (the token is in the server's data dir)"
    )]
    Unauthorized,
    /// A namespace token asked for what is not its namespace's.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// Something the request names (an image, a login) is not there.
    #[error("{0}")]
    Missing(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    Deployment(#[from] DeploymentError),
    #[error("{0}")]
    Prepare(#[from] PrepareError),
    #[error("{0}")]
    Upload(#[from] UploadError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Invoke(#[from] InvokeError),
    #[error("server is shutting down")]
    ShuttingDown,
    /// The function's deploy is still pulling its image, or failed to.
    #[error("{0}")]
    NotReady(String),
    /// Another node of the cluster failed the forwarded request.
    #[error("{0}")]
    BadGateway(String),
    #[error("image store: {0}")]
    Images(#[from] StoreError),
    #[error("{0}")]
    Artifacts(#[from] PruneError),
    #[error("saving registry logins: {0}")]
    Logins(#[source] std::io::Error),
    /// A blocking task on the stores panicked or was cancelled.
    #[error("storage task: {0}")]
    StoreTask(#[source] tokio::task::JoinError),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError as E;
        match self {
            E::UnknownFunction(_) | E::NotFound(_) => StatusCode::NOT_FOUND,
            E::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            E::Unauthorized => StatusCode::UNAUTHORIZED,
            E::Forbidden(_) => StatusCode::FORBIDDEN,
            E::BadRequest(_) | E::Deployment(_) => StatusCode::BAD_REQUEST,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::Missing(_) => StatusCode::NOT_FOUND,
            E::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // The image is past the server's import limits.
            E::Prepare(PrepareError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            E::Prepare(PrepareError::Pull { failure, .. }) => match failure {
                PullFailure::NotFound => StatusCode::NOT_FOUND,
                PullFailure::Unauthorized => StatusCode::UNAUTHORIZED,
                PullFailure::Unreachable => StatusCode::GATEWAY_TIMEOUT,
                PullFailure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                PullFailure::Invalid => StatusCode::BAD_REQUEST,
                PullFailure::Storage | PullFailure::Unsupported => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            E::Prepare(e) if e.is_user_error() => StatusCode::BAD_REQUEST,
            E::Prepare(PrepareError::ContainersUnavailable { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            E::Prepare(_)
            | E::Registry(_)
            | E::Images(_)
            | E::Artifacts(_)
            | E::StoreTask(_)
            | E::Logins(_) => StatusCode::INTERNAL_SERVER_ERROR,
            E::Upload(UploadError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            E::Upload(
                UploadError::Empty | UploadError::Body(_) | UploadError::DigestMismatch { .. },
            ) => StatusCode::BAD_REQUEST,
            E::Upload(UploadError::Io { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            E::ShuttingDown | E::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::BadGateway(_) => StatusCode::BAD_GATEWAY,
            E::Invoke(e) => match e {
                InvokeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                InvokeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                InvokeError::BadRequest { .. } => StatusCode::BAD_REQUEST,
                InvokeError::Trap { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                // As a Lambda function URL answers a function's error.
                InvokeError::OutOfMemory { .. }
                | InvokeError::BadResponse { .. }
                | InvokeError::Unhandled { .. } => StatusCode::BAD_GATEWAY,
                InvokeError::Capacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
                InvokeError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
                InvokeError::Start(StartError::NotReady { .. }) => StatusCode::GATEWAY_TIMEOUT,
                InvokeError::Start(_) => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// What the client is told: the message, minus host-side details.
    pub(crate) fn public_message(&self) -> String {
        match self {
            GatewayError::Invoke(InvokeError::Trap { function, .. }) => {
                format!(
                    "function {function} failed: its handler crashed (details are in the server log)"
                )
            }
            // Its message may hold what the caller should not see; its type
            // names what went wrong.
            GatewayError::Invoke(InvokeError::Unhandled {
                function,
                error_type,
                ..
            }) => format!(
                "function {function} returned an error ({}); the message is in the server log",
                error_type.chars().take(120).collect::<String>()
            ),
            GatewayError::Invoke(InvokeError::Start(e)) => match e {
                // What the function's own handler did is the caller's business.
                StartError::Exited {
                    function, status, ..
                } => format!(
                    "function {function} could not be started: its handler exited before it was ready ({status}); its stderr is in the server log"
                ),
                StartError::NotReady { .. } => e.to_string(),
                _ => format!(
                    "function {} could not be started (details are in the server log)",
                    e.function()
                ),
            },
            GatewayError::Registry(_)
            | GatewayError::Logins(_)
            | GatewayError::Artifacts(_)
            | GatewayError::Upload(UploadError::Io { .. }) => {
                "internal storage error (details are in the server log)".into()
            }
            GatewayError::Prepare(e @ PrepareError::ContainersUnavailable { .. }) => e.to_string(),
            // Says which registry and reference; never credentials.
            GatewayError::Prepare(
                e @ PrepareError::Pull {
                    failure: PullFailure::Unreachable,
                    ..
                },
            ) => e.to_string(),
            GatewayError::Prepare(e) if !e.is_user_error() => {
                "internal error while preparing the artifact (details are in the server log)".into()
            }
            other => other.to_string(),
        }
    }
}

/// Turns an error into the response the client gets, logging the details.
pub fn rescue(error: &GatewayError) -> Response<Body> {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), error = %error, detail = ?error, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), error = %error, "request refused");
    }
    let mut response = Response::new(full_body(format!("{}\n", error.public_message())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match error {
        GatewayError::MethodNotAllowed { allow } => {
            headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        GatewayError::Unauthorized => {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wisp\", Basic realm=\"wisp\""),
            );
        }
        GatewayError::ShuttingDown
        | GatewayError::NotReady(_)
        | GatewayError::Invoke(InvokeError::Capacity { .. } | InvokeError::QueueFull { .. }) => {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            // Not run: another node of a cluster may take it.
            headers.insert(
                crate::cluster::forward::SHED_HEADER,
                HeaderValue::from_static("1"),
            );
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wisp_runner::spec::FunctionName;

    #[test]
    fn traps_do_not_leak_details() {
        let e = GatewayError::Invoke(InvokeError::Trap {
            function: FunctionName::new("f").unwrap(),
            detail: "wasm backtrace: secret host path".into(),
        });
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.public_message().contains("secret"));
        assert!(e.public_message().contains("function f"));
    }

    #[test]
    fn image_store_errors_keep_their_cause() {
        let store = StoreError::Io {
            path: "/data/images".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let text = format!("image store: {store}");
        let e = GatewayError::from(store);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.public_message(), text);
        let source = std::error::Error::source(&e).expect("the store error is the source");
        assert!(source.is::<StoreError>(), "{source:?}");
    }

    #[test]
    fn an_image_past_the_limits_is_too_large_and_says_which_limit() {
        use wisp_runner::backend::Cause;
        use wisp_runner::image::{ImportError, OverLimit};
        let e = GatewayError::Prepare(PrepareError::TooLarge {
            digest: "sha256:abc".into(),
            cause: Cause::new(ImportError::OverLimit {
                name: "archive entry \"junk\"".into(),
                limit: OverLimit::Bytes { limit: 64 << 20 },
            }),
        });
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let text = e.public_message();
        assert!(
            text.contains("sha256:abc") && text.contains("junk"),
            "{text}"
        );
        assert!(
            text.contains("67108864 bytes (wisp serve --max-image-size)"),
            "{text}"
        );
    }

    #[test]
    fn statuses() {
        let f = FunctionName::new("f").unwrap();
        let timeout = GatewayError::Invoke(InvokeError::Timeout {
            function: f.clone(),
            timeout: Duration::from_secs(1),
        });
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let oom = GatewayError::Invoke(InvokeError::OutOfMemory {
            function: f,
            limit_bytes: 1,
        });
        assert_eq!(oom.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            GatewayError::Unauthorized.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            GatewayError::UnknownFunction("x".into()).status(),
            StatusCode::NOT_FOUND
        );
        let resp = rescue(&GatewayError::MethodNotAllowed { allow: "GET" });
        assert_eq!(resp.headers()["allow"], "GET");
    }
}
