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
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;

use crate::backend::{Body, Instance, InvokeError, RequestInfo};
use crate::container::init_link::{InitLink, NsConnector, log_output};
use crate::container::proto::{ExitStatus, Stream, ToInit};
use crate::container::sandbox::Sandbox;
use crate::pool::Deadline;
use crate::protocol::cgi;
use crate::spec::{FunctionName, Limits};
use crate::store::logs::escape_controls;

/// How a stopping handler gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Bytes of a CGI process's stderr kept per request.
const MAX_CGI_STDERR_BYTES: u64 = 64 * 1024;

/// How requests reach the handler.
pub(crate) enum Transport {
    /// HTTP over connections init makes to the handler's port.
    Http(Box<Client<NsConnector, Body>>),
    /// One process per request; `env` is the plan's environment.
    Cgi { env: Vec<String> },
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
        client: &Client<NsConnector, Body>,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        parts.uri = Uri::try_from(format!("http://localhost{path}")).map_err(|e| {
            InvokeError::BadRequest {
                function: self.function.clone(),
                detail: e.to_string(),
            }
        })?;
        parts.version = http::Version::HTTP_11;
        let response = client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| self.failure(format!("forwarding to the handler: {e}")))?;
        Ok(response.map(|body| {
            body.map_err(|e| -> crate::backend::BodyError { Box::new(e) })
                .boxed_unsync()
        }))
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
        let write = async move {
            use tokio::io::AsyncWriteExt;
            // A program that does not read its input is fine: EPIPE ends it.
            let _ = stdin.write_all(&input).await;
        };
        let read = |pipe: tokio::net::unix::pipe::Receiver, max: u64| async move {
            use tokio::io::AsyncReadExt;
            let mut out = Vec::new();
            let result = pipe.take(max).read_to_end(&mut out).await;
            result.map(|_| out)
        };
        // One byte past the cap tells an over-long output from one that
        // fits exactly; `cgi::response` refuses it.
        let max_out = cgi::MAX_OUTPUT_BYTES as u64 + 1;
        let (_, out, err, status) = tokio::join!(
            write,
            read(stdout, max_out),
            read(stderr, MAX_CGI_STDERR_BYTES),
            async {
                exited.await.unwrap_or_else(|_| {
                    Err(crate::container::init_link::LinkError::Dead(
                        "the sandbox is gone".into(),
                    ))
                })
            }
        );
        let out = out.map_err(io_err)?;
        let err = err.unwrap_or_default();
        let err_text = String::from_utf8_lossy(&err);
        if !err_text.trim().is_empty() {
            log_output(function, self.link.pid, Stream::Stderr, &err_text);
        }
        let status = status.map_err(|e| self.failure(e))?;
        let killed = matches!(status, ExitStatus::Signal(_));
        let oom =
            status != ExitStatus::Code(0) && self.sandbox.as_ref().is_some_and(Sandbox::oom_killed);
        if oom {
            return Err(self.out_of_memory());
        }
        if status != ExitStatus::Code(0) && (out.is_empty() || killed) {
            // Its stderr went to the function's logs above and goes to the
            // server log here; the caller is told only that it failed.
            tracing::warn!(function = %function, %status, stderr = %escape_controls(err_text.trim()), "CGI process failed");
            return Err(self.failure(format!("the CGI process failed ({status})")));
        }
        cgi::response(function, Bytes::from(out))
    }
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
                Transport::Http(client) => self.invoke_http(client, req).await,
                Transport::Cgi { env } => self.invoke_cgi(env, req).await,
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
        usize::MAX
    }

    fn is_healthy(&self) -> bool {
        self.link.dead_reason().is_none()
    }

    fn start_phases(&self) -> Vec<(&'static str, Duration)> {
        self.phases.clone()
    }

    async fn stop(mut self: Box<Self>) {
        let grace = STOP_GRACE;
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
