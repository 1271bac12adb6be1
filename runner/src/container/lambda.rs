//! The Lambda Runtime API of one sandbox, served by the gateway on the
//! listening socket init made at `127.0.0.1:9001` in the sandbox's network
//! namespace (no host port; only the sandbox reaches it).
//!
//! A [`RuntimeApi`] holds at most one invocation at a time: the instance
//! hands it one ([`RuntimeApi::invoke`]), the runtime takes it with
//! `GET /2018-06-01/runtime/invocation/next` and answers with
//! `POST …/invocation/{id}/response` (whole, or streamed) or `…/error`.
//! The runtime's first `next` ends its init: that is when the sandbox is
//! ready. `POST …/runtime/init/error` fails the start with the runtime's
//! reason. The extensions and telemetry APIs are not served: they answer
//! 404 with an `errorType`, which runtimes (not extensions) never call.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{Body, BodyError, full_body};
use crate::protocol::lambda::FunctionError;
use crate::spec::FunctionName;

/// The Runtime API's version prefix.
const PREFIX: &str = "/2018-06-01/runtime/";
/// Largest error report read from a runtime.
const MAX_ERROR_BYTES: u64 = 1024 * 1024;
/// Frames of a streamed response buffered towards a slow client.
const STREAM_FRAMES: usize = 16;

/// One invocation for the runtime.
pub(crate) struct Invocation {
    pub id: String,
    pub event: Bytes,
    /// Wall-clock deadline, in milliseconds since the epoch.
    pub deadline_ms: u64,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub reply: oneshot::Sender<Outcome>,
}

/// What the runtime made of an invocation.
pub(crate) enum Outcome {
    /// A whole result.
    Result(Bytes),
    /// A streamed result, as it comes, with its content type.
    Stream {
        content_type: Option<String>,
        body: Body,
    },
    /// `…/error`, or a result past the limit.
    Error(FunctionError),
}

/// Where the runtime's init stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Init {
    Running,
    /// Its first `next`.
    Done,
    /// `…/runtime/init/error`.
    Failed(FunctionError),
}

/// One sandbox's Runtime API.
pub(crate) struct RuntimeApi {
    function: FunctionName,
    arn: String,
    /// Largest whole result.
    max_result_bytes: u64,
    submit: mpsc::Sender<Invocation>,
    work: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    /// Taken by the runtime and not answered yet, by request id.
    open: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init: watch::Sender<Init>,
}

impl RuntimeApi {
    /// Serves the Runtime API on `listener` (init's socket) until the
    /// returned task is aborted.
    pub(crate) fn serve(
        function: FunctionName,
        max_result_bytes: u64,
        listener: OwnedFd,
    ) -> std::io::Result<(Arc<RuntimeApi>, tokio::task::JoinHandle<()>)> {
        let listener = std::net::TcpListener::from(listener);
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (submit, work) = mpsc::channel(1);
        let arn = format!("arn:aws:lambda:wisp:000000000000:function:{function}");
        let api = Arc::new(RuntimeApi {
            function,
            arn,
            max_result_bytes,
            submit,
            work: tokio::sync::Mutex::new(work),
            open: Mutex::new(HashMap::new()),
            init: watch::channel(Init::Running).0,
        });
        let server = tokio::spawn({
            let api = api.clone();
            async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let api = api.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let api = api.clone();
                            async move { Ok::<_, std::convert::Infallible>(api.handle(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                    // Reap the connections that ended.
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Ok((api, server))
    }

    /// Waits until the runtime's init is done or failed.
    pub(crate) async fn init_done(&self) -> Init {
        let mut init = self.init.subscribe();
        let state = init
            .wait_for(|i| *i != Init::Running)
            .await
            .map(|i| i.clone());
        state.unwrap_or(Init::Running)
    }

    /// Hands the runtime an invocation.
    pub(crate) async fn invoke(&self, invocation: Invocation) -> Result<(), String> {
        self.submit
            .send(invocation)
            .await
            .map_err(|_| "the Runtime API is closed".to_owned())
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let Some(route) = path.strip_prefix(PREFIX) else {
            return answer(
                StatusCode::NOT_FOUND,
                "UnsupportedEndpoint",
                &format!("wisp serves the Lambda Runtime API only, not {path}"),
            );
        };
        let method = req.method().clone();
        match (method, route) {
            (Method::GET, "invocation/next") => self.next().await,
            (Method::POST, "init/error") => {
                let error = read_error(req).await;
                tracing::warn!(function = %self.function, error_type = %error.error_type, error = %error.error_message, "the Lambda runtime's init failed");
                self.init.send_replace(Init::Failed(error));
                accepted()
            }
            (Method::POST, rest) => match rest
                .strip_prefix("invocation/")
                .and_then(|r| r.split_once('/'))
            {
                Some((id, "response")) => self.respond(id.to_owned(), req).await,
                Some((id, "error")) => {
                    let Some(reply) = self.take(id) else {
                        return unknown_id(id);
                    };
                    let error = read_error(req).await;
                    let _ = reply.send(Outcome::Error(error));
                    accepted()
                }
                _ => answer(
                    StatusCode::NOT_FOUND,
                    "UnsupportedEndpoint",
                    &format!("no Runtime API route {path}"),
                ),
            },
            _ => answer(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("no Runtime API route {} {path}", req.method()),
            ),
        }
    }

    /// `GET …/invocation/next`: waits for work.
    async fn next(&self) -> Response<Body> {
        self.init.send_if_modified(|init| {
            let first = *init == Init::Running;
            if first {
                *init = Init::Done;
            }
            first
        });
        let invocation = {
            let mut work = self.work.lock().await;
            work.recv().await
        };
        let Some(invocation) = invocation else {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "the sandbox is stopping",
            );
        };
        let mut response = Response::new(full_body(invocation.event));
        let headers = response.headers_mut();
        let mut put = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        put("lambda-runtime-aws-request-id", &invocation.id);
        put(
            "lambda-runtime-deadline-ms",
            &invocation.deadline_ms.to_string(),
        );
        put("lambda-runtime-invoked-function-arn", &self.arn);
        put(
            "lambda-runtime-trace-id",
            invocation
                .trace_id
                .as_deref()
                .unwrap_or("Root=1-00000000-000000000000000000000000;Sampled=0"),
        );
        if let Some(context) = &invocation.client_context {
            put("lambda-runtime-client-context", context);
        }
        put("content-type", "application/json");
        self.lock_open().insert(invocation.id, invocation.reply);
        response
    }

    /// `POST …/invocation/{id}/response`, whole or streamed.
    async fn respond(&self, id: String, req: Request<Incoming>) -> Response<Body> {
        let Some(reply) = self.take(&id) else {
            return unknown_id(&id);
        };
        let streaming = req
            .headers()
            .get("lambda-runtime-function-response-mode")
            .is_some_and(|m| m.as_bytes().eq_ignore_ascii_case(b"streaming"));
        if streaming {
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BodyError>>(STREAM_FRAMES);
            let body = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
            let _ = reply.send(Outcome::Stream { content_type, body });
            let mut incoming = req.into_body();
            // The client may be gone: the rest is read and dropped, so that
            // the runtime finishes its invocation all the same.
            while let Some(frame) = incoming.frame().await {
                let item = match frame {
                    Ok(frame) => match frame.into_trailers() {
                        Ok(trailers) => match trailers.get("lambda-runtime-function-error-type") {
                            Some(kind) => {
                                let kind = String::from_utf8_lossy(kind.as_bytes()).into_owned();
                                let body = trailers
                                    .get("lambda-runtime-function-error-body")
                                    .map(|b| String::from_utf8_lossy(b.as_bytes()).into_owned())
                                    .unwrap_or_default();
                                Err(Box::new(StreamFailed(kind, body)) as BodyError)
                            }
                            None => continue,
                        },
                        Err(frame) => match frame.data_ref().and_then(written_error) {
                            Some(failed) => Err(Box::new(failed) as BodyError),
                            None => Ok(frame),
                        },
                    },
                    Err(e) => Err(Box::new(e) as BodyError),
                };
                let failed = item.is_err();
                let _ = tx.send(item).await;
                if failed {
                    break;
                }
            }
            return accepted();
        }
        match crate::body::collect(boxed(req.into_body()), self.max_result_bytes).await {
            Ok(result) => {
                let _ = reply.send(Outcome::Result(result));
                accepted()
            }
            Err(e) if e.downcast_ref::<crate::body::BodyTooLarge>().is_some() => {
                let _ = reply.send(Outcome::Error(FunctionError {
                    error_type: "Function.ResponseSizeTooLarge".into(),
                    error_message: format!(
                        "the response is larger than the limit of {} bytes",
                        self.max_result_bytes
                    ),
                }));
                answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Function.ResponseSizeTooLarge",
                    &format!(
                        "the response is larger than the limit of {} bytes",
                        self.max_result_bytes
                    ),
                )
            }
            Err(e) => {
                let _ = reply.send(Outcome::Error(FunctionError {
                    error_type: "Runtime.ResponseFailed".into(),
                    error_message: format!("reading the response: {e}"),
                }));
                accepted()
            }
        }
    }

    fn take(&self, id: &str) -> Option<oneshot::Sender<Outcome>> {
        self.lock_open().remove(id)
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Outcome>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What `lambda_runtime` writes into a streamed body when the stream
/// fails (it sends no real trailers): `Lambda-Runtime-Function-Error-Type:
/// T\r\nLambda-Runtime-Function-Error-Body: <base64>\r\n`, as one chunk.
fn written_error(data: &Bytes) -> Option<StreamFailed> {
    use base64::Engine as _;
    let text = std::str::from_utf8(data).ok()?;
    let rest = text.strip_prefix("Lambda-Runtime-Function-Error-Type: ")?;
    let (kind, rest) = rest.split_once("\r\n")?;
    let body = rest
        .strip_prefix("Lambda-Runtime-Function-Error-Body: ")
        .map(|b| b.trim_end())
        .map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_or_else(
                    |_| b.to_owned(),
                    |raw| String::from_utf8_lossy(&raw).into_owned(),
                )
        })
        .unwrap_or_default();
    Some(StreamFailed(kind.to_owned(), body))
}

/// A streamed response the runtime ended with an error (its trailers, or
/// their text in the body).
#[derive(Debug, thiserror::Error)]
#[error("the function failed while it streamed its response: {0}: {1}")]
struct StreamFailed(String, String);

fn tokio_stream_from(
    rx: mpsc::Receiver<Result<Frame<Bytes>, BodyError>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, BodyError>> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

async fn read_error(req: Request<Incoming>) -> FunctionError {
    let header_type = req
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = crate::body::collect(boxed(req.into_body()), MAX_ERROR_BYTES)
        .await
        .unwrap_or_default();
    FunctionError::parse(header_type.as_deref(), &body)
}

/// A request body as a [`Body`].
fn boxed(body: Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BodyError).boxed_unsync()
}

fn accepted() -> Response<Body> {
    json_response(StatusCode::ACCEPTED, &json!({"status": "OK"}))
}

fn unknown_id(id: &str) -> Response<Body> {
    answer(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!(
            "no invocation {} is waiting for an answer",
            id.chars().take(80).collect::<String>()
        ),
    )
}

fn answer(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"errorType": error_type, "errorMessage": message}),
    )
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full_body(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_written_into_a_stream_is_read_as_one() {
        // lambda_runtime's text for an error with message "boom".
        let text = Bytes::from_static(
            b"Lambda-Runtime-Function-Error-Type: Runtime.StreamError\r\nLambda-Runtime-Function-Error-Body: Ym9vbQ==\r\n",
        );
        let failed = written_error(&text).unwrap();
        assert_eq!(
            (failed.0.as_str(), failed.1.as_str()),
            ("Runtime.StreamError", "boom")
        );
        assert!(written_error(&Bytes::from_static(b"chunk 1\n")).is_none());
        assert!(written_error(&Bytes::from_static(&[0xff, 0xfe])).is_none());
    }
}
