//! AWS Lambda's Invoke API, so that AWS's own clients (the AWS CLI, the
//! SDKs) call wisp's functions: `POST /2015-03-31/functions/{name}/invocations`
//! with `X-Amz-Invocation-Type` `RequestResponse` (the default: the event
//! in, the function's raw result out), `Event` (202; the call goes through
//! the asynchronous queue) or `DryRun` (204 if the function exists).
//!
//! A function's error comes back as Lambda reports it: a 200 with
//! `X-Amz-Function-Error: Unhandled` and `{"errorType","errorMessage"}`,
//! and so do a timeout (`Task timed out after N.NN seconds`) and a crash.
//! `X-Amz-Log-Type: Tail` adds `X-Amz-Log-Result`: the base64 of the last
//! 4 KiB the function wrote during the call.
//!
//! `{name}` is a function's name (`name.namespace` outside the default
//! namespace), an ARN or either with a `:qualifier`, which is ignored
//! (wisp runs `$LATEST`). Requests are accepted as `/function/*` ones are:
//! invocation is not authenticated in wisp (as in OpenFaaS), so the SigV4
//! signature AWS's clients add is not checked — there are no AWS keys to
//! check it against; put an authenticating proxy in front if invocations
//! must be. A function of any protocol may be invoked this way: for a
//! non-Lambda function, the event is POSTed to `/` and a response other
//! than 2xx is its error.

use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use wisp_runner::backend::{Body, full_body};
use wisp_runner::protocol::lambda::FUNCTION_ERROR_HEADER;

use crate::rescue::GatewayError;
use crate::server::{App, Client};

/// The header that makes an `/function/*` request a direct (Invoke API)
/// one: how an `Event` call, replayed from the asynchronous queue, stays
/// one.
pub const DIRECT_HEADER: &str = "x-wisp-lambda-direct";
/// Bytes of a call's log returned with `X-Amz-Log-Type: Tail`.
const LOG_TAIL_BYTES: usize = 4096;

/// The function name in an Invoke API path: a name, an ARN, either with a
/// `:qualifier`.
pub fn function_name(path_name: &str) -> &str {
    match path_name.strip_prefix("arn:") {
        // arn:aws:lambda:region:account:function:NAME[:qualifier]
        Some(_) => path_name.split(':').nth(6).unwrap_or(""),
        None => path_name.split(':').next().unwrap_or(""),
    }
}

/// An error as Lambda's API reports one.
fn api_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let mut response = Response::new(full_body(
        json!({"Type": "User", "Message": message, "message": message}).to_string(),
    ));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(kind) = HeaderValue::from_str(kind) {
        headers.insert("x-amzn-errortype", kind);
    }
    response
}

impl App {
    /// `POST /2015-03-31/functions/{name}/invocations`.
    pub(crate) async fn lambda_invoke(
        self: &Arc<Self>,
        path_name: &str,
        req: Request<Body>,
        remote: &Client,
    ) -> Result<Response<Body>, GatewayError> {
        if req.method() != http::Method::POST {
            return Err(GatewayError::MethodNotAllowed { allow: "POST" });
        }
        let name = self.qualified(function_name(path_name)).to_owned();
        if self.function(&name).is_err() && !self.pending.contains_key(&name) {
            return Ok(api_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                &format!(
                    "Function not found: {}",
                    path_name.chars().take(140).collect::<String>()
                ),
            ));
        }
        // In a cluster the function's home answers it whole, as the Invoke
        // API does: its warm instances, its queue, its logs for a tail.
        if let Some(order) = self.elsewhere(&name, req.headers()) {
            return Ok(self.forward(&name, "/", order, req, remote).await);
        }
        let kind = req
            .headers()
            .get("x-amz-invocation-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("RequestResponse")
            .to_owned();
        let tail = req
            .headers()
            .get("x-amz-log-type")
            .is_some_and(|v| v.as_bytes() == b"Tail");
        let (mut parts, body) = req.into_parts();
        parts.method = http::Method::POST;
        parts
            .headers
            .insert(DIRECT_HEADER, HeaderValue::from_static("1"));
        // AWS sends the client context base64; runtimes get its JSON.
        if let Some(decoded) = parts
            .headers
            .get("x-amz-client-context")
            .and_then(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .ok()
            })
            .and_then(|raw| HeaderValue::from_bytes(&raw).ok())
        {
            parts.headers.insert("x-amz-client-context", decoded);
        }
        let req = Request::from_parts(parts, body);
        match kind.as_str() {
            "DryRun" => {
                let mut response = Response::new(wisp_runner::backend::empty_body());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            "Event" => {
                let queued = self.invoke_async(&name, "/", req, remote).await;
                let response = match queued {
                    Ok(response) => response,
                    Err(e) => return Ok(self.as_lambda_error(&e)),
                };
                let mut accepted = Response::new(wisp_runner::backend::empty_body());
                *accepted.status_mut() = StatusCode::ACCEPTED;
                if let Some(id) = response.headers().get("x-call-id") {
                    accepted
                        .headers_mut()
                        .insert("x-amzn-requestid", id.clone());
                }
                Ok(accepted)
            }
            "RequestResponse" => {
                let started_ms = now_ms();
                let response = match self.invoke(&name, "/", req, remote).await {
                    Ok(response) => response,
                    Err(e) => return Ok(self.as_lambda_error(&e)),
                };
                let mut response = self.as_lambda_result(&name, response).await;
                let headers = response.headers_mut();
                headers.insert(
                    "x-amz-executed-version",
                    HeaderValue::from_static("$LATEST"),
                );
                if tail && let Ok(value) = HeaderValue::from_str(&self.log_tail(&name, started_ms))
                {
                    headers.insert("x-amz-log-result", value);
                }
                Ok(response)
            }
            other => Ok(api_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!(
                    "X-Amz-Invocation-Type {:?} is not RequestResponse, Event or DryRun",
                    other.chars().take(40).collect::<String>()
                ),
            )),
        }
    }

    /// A function's answer as the Invoke API's: a Lambda function's is
    /// already one; another function's body is the result, and an answer
    /// other than 2xx (the function's, or wisp's: a timeout, a crash) is
    /// an unhandled error.
    async fn as_lambda_result(&self, name: &str, response: Response<Body>) -> Response<Body> {
        let status = response.status();
        if status.is_success() {
            let mut response = response;
            *response.status_mut() = StatusCode::OK;
            return response;
        }
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                return api_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequestsException",
                    &format!("function {name} has no capacity for the call now"),
                );
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                return api_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    &format!("the payload is larger than function {name}'s limit"),
                );
            }
            StatusCode::BAD_REQUEST => {
                let text = body_text(response).await;
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    &text,
                );
            }
            _ => {}
        }
        let timeout = self
            .function(name)
            .map(|f| f.stored.spec.limits.timeout_ms)
            .unwrap_or_default();
        let text = body_text(response).await;
        let (kind, message) = if status == StatusCode::GATEWAY_TIMEOUT {
            (
                "Sandbox.Timedout",
                format!(
                    "Task timed out after {:.2} seconds",
                    timeout as f64 / 1000.0
                ),
            )
        } else if status.is_server_error() {
            ("Runtime.ExitError", text)
        } else {
            (
                "Function.Error",
                format!("the function answered {status}: {text}"),
            )
        };
        let mut error = Response::new(full_body(
            json!({"errorType": kind, "errorMessage": message}).to_string(),
        ));
        let headers = error.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(FUNCTION_ERROR_HEADER, HeaderValue::from_static("Unhandled"));
        error
    }

    /// An error before the function ran, as Lambda's API reports one.
    fn as_lambda_error(&self, e: &GatewayError) -> Response<Body> {
        let status = e.status();
        let kind = match status {
            StatusCode::NOT_FOUND => "ResourceNotFoundException",
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                "TooManyRequestsException"
            }
            StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeException",
            s if s.is_client_error() => "InvalidRequestContentException",
            _ => "ServiceException",
        };
        api_error(status, kind, &e.public_message())
    }

    /// The base64 of the last bytes function `name` wrote since `since_ms`.
    fn log_tail(&self, name: &str, since_ms: u64) -> String {
        let lines = self.logs.tail(name, None).unwrap_or_default();
        let mut text = String::new();
        for line in lines.iter().filter(|l| {
            wisp_runner::store::logs::parse_rfc3339(&l.timestamp)
                .is_some_and(|at| at >= i64::try_from(since_ms).unwrap_or(i64::MAX))
        }) {
            text.push_str(&line.text);
            text.push('\n');
        }
        let bytes = text.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(LOG_TAIL_BYTES)..];
        base64::engine::general_purpose::STANDARD.encode(tail)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn body_text(response: Response<Body>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes[..bytes.len().min(4096)])
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_arns_and_qualifiers() {
        assert_eq!(function_name("hello"), "hello");
        assert_eq!(function_name("hello:$LATEST"), "hello");
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:123456789012:function:hello"),
            "hello"
        );
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:123456789012:function:hello:7"),
            "hello"
        );
        assert_eq!(function_name("arn:aws"), "");
    }
}
