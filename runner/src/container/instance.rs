//! One running container as the pool sees it: a [`ContainerInstance`]
//! forwards each request to its handler within the request's deadline —
//! over kept-alive HTTP/1.1 connections made inside the sandbox's network
//! namespace for `http`, or as one process per request for `cgi` (the CGI
//! mapping itself is [`crate::protocol::cgi`]) — and replaces the sandbox
//! when it times out, runs out of memory or loses its handler.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;

use crate::backend::{Body, Instance, InvokeError, RequestInfo};
use crate::container::handler_conns::HandlerConns;
use crate::container::init_link::{InitLink, log_output};
use crate::container::lambda::{Invocation, Outcome, RuntimeApi};
use crate::container::proto::{ExitStatus, Stream, ToInit};
use crate::container::sandbox::Sandbox;
use crate::pool::Deadline;
use crate::protocol::{cgi, lambda};
use crate::spec::{FunctionName, Limits};
use crate::store::logs::escape_controls;

/// How a stopping handler gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Bytes of a CGI process's stderr kept per request.
const MAX_CGI_STDERR_BYTES: u64 = 64 * 1024;
/// Bytes read from a CGI process's stdout at a time.
const CGI_CHUNK_BYTES: usize = 16 * 1024;

/// How requests reach the handler.
pub(crate) enum Transport {
    /// HTTP over connections init makes to the handler's port.
    Http(HandlerConns),
    /// One process per request; `env` is the plan's environment.
    Cgi { env: Vec<String> },
    /// A Lambda runtime, fed through the Runtime API served on `server`.
    Lambda {
        api: Arc<RuntimeApi>,
        server: tokio::task::JoinHandle<()>,
        /// Invocations at once: 1, as on Lambda, unless the function sets
        /// `AWS_LAMBDA_MAX_CONCURRENCY` for a runtime that takes more.
        concurrency: usize,
    },
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let Transport::Lambda { server, .. } = self {
            server.abort();
        }
    }
}

/// One running container.
pub struct ContainerInstance {
    pub(crate) function: FunctionName,
    pub(crate) limits: Limits,
    /// How its start went, by phase.
    pub(crate) phases: Vec<(&'static str, Duration)>,
    pub(crate) link: Arc<InitLink>,
    pub(crate) transport: Transport,
    pub(crate) sandbox: Option<Sandbox>,
    pub(crate) cgi_seq: AtomicU64,
}

impl ContainerInstance {
    /// The OOM killer struck: whatever else the sandbox holds may be what
    /// filled it, so it is replaced rather than trusted with the next request.
    fn out_of_memory(&self) -> InvokeError {
        self.link
            .mark_dead("the sandbox ran out of memory and was replaced");
        if let Some(sandbox) = &self.sandbox {
            sandbox.kill();
        }
        InvokeError::OutOfMemory {
            function: self.function.clone(),
            limit_bytes: self.limits.memory_bytes,
        }
    }

    /// The error for a request that failed because the sandbox did.
    fn failure(&self, detail: impl std::fmt::Display) -> InvokeError {
        if self.sandbox.as_ref().is_some_and(Sandbox::oom_killed) {
            return self.out_of_memory();
        }
        let detail = self
            .link
            .dead_reason()
            .unwrap_or_else(|| detail.to_string());
        InvokeError::BadResponse {
            function: self.function.clone(),
            detail,
        }
    }

    async fn invoke_http(
        &self,
        conns: &HandlerConns,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        conns
            .send(req)
            .await
            .map_err(|e| self.failure(format!("forwarding to the handler: {e}")))
    }

    async fn invoke_cgi(
        &self,
        env: &[String],
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let function = &self.function;
        let info = req
            .extensions()
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_default();
        let (parts, body) = req.into_parts();
        let input = cgi::read_body(body, function, self.limits.max_body_bytes).await?;
        let mut vars: Vec<String> = env.to_vec();
        vars.extend(
            cgi::variables(&parts, &info, input.len())
                .into_iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| self.failure(format!("pipe: {e}")))
        };
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let id = self.cgi_seq.fetch_add(1, Ordering::Relaxed);
        let exited = self
            .link
            .run_cgi(
                id,
                vars,
                &[stdin_r.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()],
            )
            .await
            .map_err(|e| self.failure(e))?;
        drop((stdin_r, stdout_w, stderr_w));
        let io_err = |e: std::io::Error| self.failure(format!("talking to the CGI process: {e}"));
        let mut stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_w).map_err(io_err)?;
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout_r).map_err(io_err)?;
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_r).map_err(io_err)?;
        // Input, stderr and the exit status are seen to by a task of their
        // own, so that the response can stream while the program runs.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (name, pid) = (function.clone(), self.link.pid);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let write = async move {
                // A program that does not read its input is fine: EPIPE ends it.
                let _ = stdin.write_all(&input).await;
            };
            let read_stderr = async move {
                let mut err = Vec::new();
                let mut stderr = stderr;
                let _ = (&mut stderr)
                    .take(MAX_CGI_STDERR_BYTES)
                    .read_to_end(&mut err)
                    .await;
                // The rest is drained, not kept: a program must not block
                // on a full stderr pipe.
                let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
                String::from_utf8_lossy(&err).into_owned()
            };
            let exit = async {
                exited.await.unwrap_or_else(|_| {
                    Err(crate::container::init_link::LinkError::Dead(
                        "the sandbox is gone".into(),
                    ))
                })
            };
            let ((), err, status) = tokio::join!(write, read_stderr, exit);
            if !err.trim().is_empty() {
                log_output(&name, pid, Stream::Stderr, &err);
            }
            let _ = done_tx.send(CgiExit {
                status,
                stderr: err,
            });
        });

        let mut stdout = stdout;
        let mut head = bytes::BytesMut::new();
        let parsed = loop {
            use tokio::io::AsyncReadExt;
            head.reserve(CGI_CHUNK_BYTES);
            let read = stdout.read_buf(&mut head).await.map_err(io_err)?;
            match cgi::parse_response(&head) {
                Ok(parsed) => break Ok(parsed),
                // The header block is not complete yet.
                Err(cgi::ResponseError::Empty | cgi::ResponseError::NoBlankLine)
                    if read > 0 && head.len() < cgi::MAX_HEADER_BYTES => {}
                Err(e) => break Err(e),
            }
        };
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(invalid) => {
                // Ended (or went wrong) before a response head: the exit
                // status says which it was.
                drop(stdout);
                let exit = done_rx
                    .await
                    .map_err(|_| self.failure("the CGI task ended"))?;
                let status = exit.status.map_err(|e| self.failure(e))?;
                let killed = matches!(status, ExitStatus::Signal(_));
                if status != ExitStatus::Code(0)
                    && self.sandbox.as_ref().is_some_and(Sandbox::oom_killed)
                {
                    return Err(self.out_of_memory());
                }
                if status != ExitStatus::Code(0) && (head.is_empty() || killed) {
                    // Its stderr went to the function's logs and goes to the
                    // server log here; the caller is told only that it failed.
                    tracing::warn!(function = %function, %status, stderr = %escape_controls(exit.stderr.trim()), "CGI process failed");
                    return Err(self.failure(format!("the CGI process failed ({status})")));
                }
                return Err(InvokeError::BadResponse {
                    function: function.clone(),
                    detail: invalid.to_string(),
                });
            }
        };
        let first = head.freeze().slice(parsed.body_start..);
        let mut response = Response::new(cgi_body(first, stdout, done_rx));
        *response.status_mut() = parsed.status;
        *response.headers_mut() = parsed.headers;
        Ok(response)
    }
}

impl ContainerInstance {
    /// Hands the request to the Lambda runtime as a function URL event
    /// and maps its result back.
    async fn invoke_lambda(
        &self,
        api: &RuntimeApi,
        req: Request<Body>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Body>, InvokeError> {
        let function = &self.function;
        let info = req
            .extensions()
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_default();
        let (parts, body) = req.into_parts();
        let input = cgi::read_body(body, function, self.limits.max_body_bytes).await?;
        let direct = parts.extensions.get::<lambda::Direct>().is_some();
        if direct
            && !input.is_empty()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&input).is_err()
        {
            return Err(InvokeError::BadRequest {
                function: function.clone(),
                detail: "the payload is not JSON".into(),
            });
        }
        let id = crate::protocol::new_uuid();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = if direct {
            if input.is_empty() {
                Bytes::from_static(b"{}")
            } else {
                input.clone()
            }
        } else {
            Bytes::from(
                lambda::event(
                    &parts,
                    &input,
                    &lambda::EventContext {
                        path: parts.uri.path(),
                        request_id: &id,
                        source_ip: info
                            .remote_addr
                            .map_or_else(|| "127.0.0.1".to_owned(), |a| a.ip().to_string()),
                        epoch_ms: now_ms,
                    },
                )
                .to_string(),
            )
        };
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (reply, outcome) = tokio::sync::oneshot::channel();
        api.invoke(Invocation {
            id,
            event,
            deadline_ms: now_ms + u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            trace_id: header("x-amzn-trace-id"),
            client_context: header("x-amz-client-context"),
            reply,
        })
        .await
        .map_err(|e| self.failure(e))?;
        let outcome = tokio::select! {
            outcome = outcome => outcome.map_err(|_| self.failure("the Runtime API dropped the invocation"))?,
            () = self.link.wait_dead() => {
                return Err(self.failure("the runtime exited during the invocation"));
            }
        };
        let invalid = |e: lambda::ResultError| InvokeError::BadResponse {
            function: function.clone(),
            detail: e.to_string(),
        };
        if direct {
            // The Invoke API's answer: the result as it is.
            let mut response = match outcome {
                Outcome::Result(payload) => Response::new(crate::backend::full_body(payload)),
                Outcome::Stream { body, .. } => Response::new(body),
                Outcome::Error(error) => {
                    let mut response =
                        Response::new(crate::backend::full_body(error.to_json().to_string()));
                    response.headers_mut().insert(
                        lambda::FUNCTION_ERROR_HEADER,
                        http::HeaderValue::from_static("Unhandled"),
                    );
                    response
                }
            };
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        match outcome {
            Outcome::Result(payload) => {
                let (status, headers, body) = lambda::response(&payload).map_err(invalid)?;
                let mut response = Response::new(crate::backend::full_body(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                Ok(response)
            }
            Outcome::Stream { content_type, body } => {
                if content_type.as_deref() == Some(lambda::HTTP_INTEGRATION) {
                    return streamed_with_prelude(function, body).await;
                }
                let mut response = Response::new(body);
                if let Some(value) = content_type.and_then(|c| http::HeaderValue::from_str(&c).ok())
                {
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, value);
                }
                Ok(response)
            }
            Outcome::Error(error) => {
                tracing::info!(function = %function, error_type = %error.error_type, error = %escape_controls(&error.error_message), "the Lambda function reported an error");
                Err(InvokeError::Unhandled {
                    function: function.clone(),
                    error_type: error.error_type,
                    message: error.error_message,
                })
            }
        }
    }
}

/// A streamed response that starts with the HTTP integration prelude: the
/// prelude is read (up to [`lambda::MAX_PRELUDE_BYTES`]) for the head, the
/// rest streams on as the body.
async fn streamed_with_prelude(
    function: &FunctionName,
    mut body: Body,
) -> Result<Response<Body>, InvokeError> {
    let invalid = |detail: String| InvokeError::BadResponse {
        function: function.clone(),
        detail,
    };
    let mut sent = bytes::BytesMut::new();
    let (end, start) = loop {
        if let Some(split) = lambda::split_prelude(&sent) {
            break split;
        }
        if sent.len() > lambda::MAX_PRELUDE_BYTES {
            return Err(invalid(
                "the streamed response's prelude is too long".into(),
            ));
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    sent.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(invalid(e.to_string())),
            None => return Err(invalid("the streamed response ended in its prelude".into())),
        }
    };
    let sent = sent.freeze();
    let (status, headers) = lambda::prelude(&sent[..end]).map_err(|e| invalid(e.to_string()))?;
    let first = sent.slice(start..);
    let first = (!first.is_empty()).then(|| Ok(http_body::Frame::data(first)));
    let rest = http_body_util::BodyStream::new(body);
    use futures::StreamExt;
    let frames = futures::stream::iter(first).chain(rest);
    let mut response = Response::new(http_body_util::StreamBody::new(frames).boxed_unsync());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// How a CGI process ended.
struct CgiExit {
    status: Result<ExitStatus, crate::container::init_link::LinkError>,
    stderr: String,
}

/// The error a streamed CGI body ends with when its process was killed
/// (timeout, out of memory) or lost before it finished.
#[derive(Debug, thiserror::Error)]
#[error("the CGI process did not finish its response ({0})")]
struct CgiCutShort(String);

/// A CGI response body: what followed the header block in the first read,
/// then stdout as it comes. At the end of stdout the process's exit says
/// whether the body is whole: one killed by a signal, or lost, ends it
/// with an error rather than cleanly.
fn cgi_body(
    first: Bytes,
    stdout: tokio::net::unix::pipe::Receiver,
    done: tokio::sync::oneshot::Receiver<CgiExit>,
) -> Body {
    use futures::StreamExt;
    use http_body::Frame;
    type Item = Result<Frame<Bytes>, crate::backend::BodyError>;
    let rest = futures::stream::unfold(Some((stdout, done)), |state| async move {
        use tokio::io::AsyncReadExt;
        let (mut stdout, done) = state?;
        let mut chunk = bytes::BytesMut::with_capacity(CGI_CHUNK_BYTES);
        match stdout.read_buf(&mut chunk).await {
            Ok(0) => {
                drop(stdout);
                let verdict = match done.await {
                    Ok(CgiExit {
                        status: Ok(ExitStatus::Code(_)),
                        ..
                    }) => return None,
                    Ok(CgiExit {
                        status: Ok(status), ..
                    }) => status.to_string(),
                    Ok(CgiExit { status: Err(e), .. }) => e.to_string(),
                    Err(_) => "its task ended".to_owned(),
                };
                let item: Item = Err(Box::new(CgiCutShort(verdict)));
                Some((item, None))
            }
            Ok(_) => Some((Ok(Frame::data(chunk.freeze())), Some((stdout, done)))),
            Err(e) => Some((Err(Box::new(e) as crate::backend::BodyError), None)),
        }
    });
    let first = (!first.is_empty()).then(|| Ok(Frame::data(first)));
    let frames = futures::stream::iter(first).chain(rest);
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

#[async_trait]
impl Instance for ContainerInstance {
    async fn invoke(&self, req: Request<Body>) -> Result<Response<Body>, InvokeError> {
        if let Some(reason) = self.link.dead_reason() {
            return Err(self.failure(reason));
        }
        let deadline = req.extensions().get::<Deadline>().map_or_else(
            || tokio::time::Instant::now() + self.limits.timeout(),
            |d| d.0,
        );
        let work = async {
            match &self.transport {
                Transport::Http(conns) => self.invoke_http(conns, req).await,
                Transport::Cgi { env } => self.invoke_cgi(env, req).await,
                Transport::Lambda { api, .. } => self.invoke_lambda(api, req, deadline).await,
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(_) => {
                self.overran();
                Err(InvokeError::Timeout {
                    function: self.function.clone(),
                    timeout: self.limits.timeout(),
                })
            }
        }
    }

    fn overran(&self) {
        // The handler is stuck on this request: replace the sandbox.
        self.link
            .mark_dead("a request timed out and the sandbox was replaced");
        if let Some(sandbox) = &self.sandbox {
            sandbox.kill();
        }
    }

    fn concurrency(&self) -> usize {
        match self.transport {
            // The sandbox is Lambda's unit of concurrency.
            Transport::Lambda { concurrency, .. } => concurrency,
            _ => usize::MAX,
        }
    }

    fn is_healthy(&self) -> bool {
        self.link.dead_reason().is_none()
    }

    fn start_phases(&self) -> Vec<(&'static str, Duration)> {
        self.phases.clone()
    }

    async fn stop(mut self: Box<Self>) {
        let grace = STOP_GRACE;
        self.link.stopping();
        let asked = self
            .link
            .send(
                &ToInit::Stop {
                    grace_ms: grace.as_millis().try_into().unwrap_or(u64::MAX),
                },
                &[],
            )
            .await;
        if asked.is_ok() {
            let _ = tokio::time::timeout(grace + Duration::from_millis(500), self.link.wait_dead())
                .await;
        }
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.release().await;
        }
    }
}
