//! `wasi:http/proxy` components, the world `wasmtime serve`, Spin and Fastly
//! host. Besides `wasi:http`, the whole of WASI 0.2 is linked (cli,
//! filesystem without preopens, random, clocks, sockets that may reach
//! nothing), as `wasmtime serve -S cli=y` does, so that components built by
//! cargo, componentize-py or componentize-js run unchanged.
//!
//! Request and response bodies stream in both directions: the guest runs in
//! the request's task until it answers, then inside the response body (which
//! runs it before each frame), and keeps writing the body after its headers
//! have gone out, bounded by the request's deadline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use async_trait::async_trait;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::backend::{Epochs, Ticking};
use super::guest::{MemoryCap, TailPipe, arm_deadline, classify, wasi_builder};
use crate::backend::{Body, BodyError, Instance, InvokeError, StartError};
use crate::spec::{FunctionSpec, OutboundGrant};

pub type HttpLinker = Linker<HttpState>;

/// The data of one request's store.
pub struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    memory: MemoryCap,
    /// Keeps the epoch clock ticking while the store exists.
    _ticking: Ticking,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Links every WASI 0.2 interface and `wasi:http`.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<HttpLinker> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// Outbound HTTP is denied unless the function's spec names the host.
struct OutboundPolicy {
    spec: Arc<FunctionSpec>,
}

type SendResult = wasmtime_wasi_http::Result<(
    Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let Some(grant) = self.spec.outbound_grant(&authority) else {
            tracing::warn!(function = %self.spec.name, %authority, "outbound HTTP request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let spec = self.spec.clone();
        drop(fut);
        Box::new(async move {
            if grant == OutboundGrant::Wildcard
                && let Some(local) = super::outbound::local_address(&authority, https).await
            {
                tracing::warn!(function = %spec.name, %authority, %local, "outbound HTTP request denied: the host resolves to this machine, and `*` does not reach it (name the host in allow-outbound to)");
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// A pre-linked `wasi:http/proxy` component; each request instantiates it
/// into a fresh store, unless the function opted in to reusing instances
/// (`instance_reuse` = N): then a store whose handler returned cleanly goes
/// back to an idle list and serves up to N requests, as
/// `wasmtime serve --max-instance-reuse-count` does. A store that trapped,
/// timed out or hit its memory cap is never reused.
pub struct HttpInstance {
    /// Shared by every instance of the same code (see `WasmBackend::link`).
    pre: Arc<HttpPre>,
    spec: Arc<FunctionSpec>,
    reuse: u32,
    idle: Arc<std::sync::Mutex<Vec<Warm>>>,
    epochs: Arc<Epochs>,
}

/// An instantiated store waiting for its next request.
struct Warm {
    store: Store<HttpState>,
    proxy: Proxy,
    uses: u32,
    stdout: TailPipe,
    stderr: TailPipe,
    memory_hit: Arc<AtomicBool>,
}

pub type HttpPre = ProxyPre<HttpState>;

/// Links a component; fails unless it exports `wasi:http/incoming-handler`
/// and imports nothing beyond WASI 0.2 and `wasi:http`.
pub fn pre(linker: &HttpLinker, component: &Component) -> wasmtime::Result<HttpPre> {
    ProxyPre::new(linker.instantiate_pre(component)?)
}

impl HttpInstance {
    pub(crate) fn new(pre: Arc<HttpPre>, spec: Arc<FunctionSpec>, epochs: Arc<Epochs>) -> Self {
        let reuse = spec.scaling.instance_reuse.unwrap_or(1).max(1);
        HttpInstance {
            pre,
            spec,
            reuse,
            idle: Arc::new(std::sync::Mutex::new(Vec::new())),
            epochs,
        }
    }

    /// A store with a reused instance if one is idle, else a fresh store.
    #[expect(
        clippy::type_complexity,
        reason = "the parts of one store, taken apart at once"
    )]
    fn store(
        &self,
    ) -> Result<
        (
            Store<HttpState>,
            Option<Proxy>,
            u32,
            TailPipe,
            TailPipe,
            Arc<AtomicBool>,
        ),
        StartError,
    > {
        if self.reuse > 1
            && let Some(warm) = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop()
        {
            return Ok((
                warm.store,
                Some(warm.proxy),
                warm.uses,
                warm.stdout,
                warm.stderr,
                warm.memory_hit,
            ));
        }
        let spec = &self.spec;
        let stdout = TailPipe::default();
        let stderr = TailPipe::default();
        let wasi = wasi_builder(spec)?
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let (memory, memory_hit) = MemoryCap::new(spec.limits.memory_bytes);
        let mut store = Store::new(
            self.pre.engine(),
            HttpState {
                wasi,
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                outbound: OutboundPolicy { spec: spec.clone() },
                memory,
                _ticking: self.epochs.ticking(),
            },
        );
        store.limiter(|state| &mut state.memory);
        Ok((store, None, 0, stdout, stderr, memory_hit))
    }
}

#[async_trait]
impl Instance for HttpInstance {
    async fn invoke(&self, req: Request<Body>) -> Result<Response<Body>, InvokeError> {
        let spec = &self.spec;
        let deadline = req
            .extensions()
            .get::<crate::pool::Deadline>()
            .map_or_else(|| Instant::now() + spec.limits.timeout(), |d| d.0);
        let (mut store, proxy, uses, stdout, stderr, memory_hit) = self.store()?;
        arm_deadline(&mut store, deadline);

        let req = req.map(|body| body.map_err(body_error_to_wasi));
        let internal = |e: wasmtime::Error| InvokeError::BadRequest {
            function: spec.name.clone(),
            detail: format!("{e:#}"),
        };
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(internal)?;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let out = store
            .data_mut()
            .http()
            .new_response_outparam_from_callback(move |response| {
                let _ = tx.send(response);
            })
            .map_err(internal)?;

        let pre = self.pre.clone();
        let task_spec = spec.clone();
        let task_memory_hit = memory_hit.clone();
        let (reuse, idle) = (self.reuse, self.idle.clone());
        let run = async move {
            let call = async {
                let proxy = match proxy {
                    Some(proxy) => proxy,
                    None => pre.instantiate_async(&mut store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await?;
                Ok::<_, wasmtime::Error>(proxy)
            };
            // The deadline covers the body too: epochs stop a guest that
            // computes; this stops one that waits (in a host call, on a
            // timer, on a client that does not read).
            let result = match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => Err(wasmtime::Error::new(wasmtime::Trap::Interrupt)),
            };
            stdout.log(&task_spec, "stdout");
            stderr.log(&task_spec, "stderr");
            let proxy = result?;
            if uses + 1 < reuse && !task_memory_hit.load(Ordering::Acquire) {
                idle.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Warm {
                        store,
                        proxy,
                        uses: uses + 1,
                        stdout,
                        stderr,
                        memory_hit: task_memory_hit,
                    });
            }
            Ok(())
        };
        let mut guest = Guest {
            run: Some(Box::pin(run)),
            spec: spec.clone(),
            memory_hit,
        };

        // The guest runs in this task until it has answered (or ended), and
        // then in the response body's, which it feeds: no task of its own,
        // and no wake-up of another thread per request.
        let (answer, ended) = std::future::poll_fn(|cx| {
            let ended = guest.poll(cx);
            match std::pin::Pin::new(&mut rx).poll(cx) {
                Poll::Ready(answer) => Poll::Ready((answer.ok(), ended)),
                Poll::Pending if ended.is_ready() => Poll::Ready((None, ended)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match (answer, ended) {
            (Some(Ok(response)), ended) => {
                let mut failed = false;
                if let Poll::Ready(Err(e)) = &ended {
                    guest.failed_after_responding(e);
                    failed = true;
                }
                Ok(response.map(|body| {
                    GuestBody {
                        inner: body.map_err(BodyError::from),
                        guest,
                        failed,
                    }
                    .boxed_unsync()
                }))
            }
            (Some(Err(code)), _) => Err(InvokeError::BadResponse {
                function: spec.name.clone(),
                detail: format!("the guest answered with error code {code:?}"),
            }),
            (None, Poll::Ready(Err(e))) => Err(guest.classify(&e)),
            (None, Poll::Ready(Ok(()))) => Err(InvokeError::BadResponse {
                function: spec.name.clone(),
                detail: "the guest returned without setting a response".into(),
            }),
            // The guest dropped its response unset and runs on (dropping
            // `guest` hands it to a task of its own).
            (None, Poll::Pending) => Err(InvokeError::BadResponse {
                function: spec.name.clone(),
                detail: "the guest dropped its response without setting it".into(),
            }),
        }
    }

    fn concurrency(&self) -> usize {
        // Every request gets its own store; the engine's instance pool is the limit.
        usize::MAX
    }

    async fn stop(self: Box<Self>) {}
}

/// One request's run of the guest: instantiation (unless reused), the
/// handler call, its logs, and the store's return to the idle list, bounded
/// by the request's deadline. Polled by the request and then by the
/// response body; whoever drops it before it ends hands it to a task of its
/// own, so the guest always runs to its end (or its deadline), as it would
/// have in a task of its own from the start.
struct Guest {
    run: Option<std::pin::Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>>>,
    spec: Arc<FunctionSpec>,
    memory_hit: Arc<AtomicBool>,
}

impl Guest {
    /// Runs the guest on; `Ready` once, with how it ended, and `Pending`
    /// ever after.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<wasmtime::Result<()>> {
        let Some(run) = self.run.as_mut() else {
            return Poll::Pending;
        };
        let ended = run.as_mut().poll(cx);
        if ended.is_ready() {
            self.run = None;
        }
        ended
    }

    fn classify(&self, error: &wasmtime::Error) -> InvokeError {
        classify(&self.spec, error, &self.memory_hit)
    }

    /// Says in the log why a guest that had already answered failed.
    fn failed_after_responding(&self, error: &wasmtime::Error) {
        let reason = self.classify(error);
        tracing::warn!(function = %self.spec.name, error = %reason, detail = ?error, "guest failed after responding");
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let Some(run) = self.run.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rest = Guest {
            run: None,
            spec: self.spec.clone(),
            memory_hit: self.memory_hit.clone(),
        };
        runtime.spawn(async move {
            if let Err(e) = run.await {
                rest.failed_after_responding(&e);
            }
        });
    }
}

fn body_error_to_wasi(e: BodyError) -> wasmtime_wasi_http::Error {
    match e.downcast_ref::<crate::body::BodyTooLarge>() {
        Some(too_large) => wasmtime_wasi_http::Error::HttpRequestBodySize(Some(too_large.limit)),
        None => wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
    }
}

/// A guest's response body, which runs the guest on as it is read: ends
/// with an error, not cleanly, when the guest failed (trapped, ran out of
/// memory, overran its deadline) before it finished the body.
struct GuestBody<B> {
    inner: B,
    guest: Guest,
    failed: bool,
}

/// The error a [`GuestBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the guest failed before it finished the response body (details in the server log)")]
struct CutShort;

impl<B> http_body::Body for GuestBody<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = BodyError> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Poll::Ready(Err(e)) = this.guest.poll(cx) {
            this.guest.failed_after_responding(&e);
            this.failed = true;
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            // The guest's end is told by the flag: the store, which holds
            // the body's sender, is dropped only after it is set.
            Poll::Ready(None | Some(Err(_))) if this.failed => {
                Poll::Ready(Some(Err(Box::new(CutShort))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not while the guest runs: the body's reader is what runs it.
        self.guest.run.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
