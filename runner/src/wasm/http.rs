//! `wasi:http/proxy` components, the world `wasmtime serve`, Spin and Fastly
//! host. Besides `wasi:http`, the whole of WASI 0.2 is linked (cli,
//! filesystem without preopens, random, clocks, sockets that may reach
//! nothing), as `wasmtime serve -S cli=y` does, so that components built by
//! cargo, componentize-py or componentize-js run unchanged.
//!
//! Request and response bodies stream in both directions: the guest runs in
//! its own task and keeps writing the response body after its headers have
//! gone out, bounded by the request's deadline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
use crate::backend::{Body, BodyError, Instance, InvokeError};
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
    fn store(
        &self,
    ) -> (
        Store<HttpState>,
        Option<Proxy>,
        u32,
        TailPipe,
        TailPipe,
        Arc<AtomicBool>,
    ) {
        if self.reuse > 1
            && let Some(warm) = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop()
        {
            return (
                warm.store,
                Some(warm.proxy),
                warm.uses,
                warm.stdout,
                warm.stderr,
                warm.memory_hit,
            );
        }
        let spec = &self.spec;
        let stdout = TailPipe::default();
        let stderr = TailPipe::default();
        let wasi = wasi_builder(spec)
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
        (store, None, 0, stdout, stderr, memory_hit)
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
        let (mut store, proxy, uses, stdout, stderr, memory_hit) = self.store();
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
        let responded = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let out = {
            let responded = responded.clone();
            store
                .data_mut()
                .http()
                .new_response_outparam_from_callback(move |response| {
                    responded.store(true, Ordering::Release);
                    let _ = tx.send(response);
                })
                .map_err(internal)?
        };

        let pre = self.pre.clone();
        let task_spec = spec.clone();
        let task_memory_hit = memory_hit.clone();
        let (reuse, idle) = (self.reuse, self.idle.clone());
        let failed = Arc::new(AtomicBool::new(false));
        let task_failed = failed.clone();
        let guest = tokio::spawn(async move {
            let run = async {
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
            let result = match tokio::time::timeout_at(deadline, run).await {
                Ok(result) => result,
                Err(_) => Err(wasmtime::Error::new(wasmtime::Trap::Interrupt)),
            };
            stdout.log(&task_spec, "stdout");
            stderr.log(&task_spec, "stderr");
            match result {
                Ok(proxy) => {
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
                }
                Err(e) if responded.load(Ordering::Acquire) => {
                    // The caller already has the status line; all we can do
                    // is cut the body short — with an error, never a clean
                    // end (the flag is set before the store, which holds the
                    // body's sender, is dropped) — and say why in the log.
                    task_failed.store(true, Ordering::Release);
                    let error = classify(&task_spec, &e, &task_memory_hit);
                    tracing::warn!(function = %task_spec.name, error = %error, detail = ?e, "guest failed after responding");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        });

        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(response))) => Ok(response.map(|body| {
                GuestBody {
                    inner: body.map_err(BodyError::from),
                    failed,
                }
                .boxed_unsync()
            })),
            Ok(Ok(Err(code))) => Err(InvokeError::BadResponse {
                function: spec.name.clone(),
                detail: format!("the guest answered with error code {code:?}"),
            }),
            Ok(Err(_)) => {
                // The guest returned (or died) without setting a response.
                match tokio::time::timeout_at(deadline, guest).await {
                    Ok(Ok(Ok(()))) => Err(InvokeError::BadResponse {
                        function: spec.name.clone(),
                        detail: "the guest returned without setting a response".into(),
                    }),
                    Ok(Ok(Err(e))) => Err(classify(spec, &e, &memory_hit)),
                    Ok(Err(join)) => Err(InvokeError::Trap {
                        function: spec.name.clone(),
                        detail: format!("guest task failed: {join}"),
                    }),
                    Err(_) => Err(timeout(spec)),
                }
            }
            Err(_) => {
                guest.abort();
                Err(timeout(spec))
            }
        }
    }

    fn concurrency(&self) -> usize {
        // Every request gets its own store; the engine's instance pool is the limit.
        usize::MAX
    }

    async fn stop(self: Box<Self>) {}
}

fn timeout(spec: &FunctionSpec) -> InvokeError {
    InvokeError::Timeout {
        function: spec.name.clone(),
        timeout: spec.limits.timeout(),
    }
}

fn body_error_to_wasi(e: BodyError) -> wasmtime_wasi_http::Error {
    match e.downcast_ref::<crate::body::BodyTooLarge>() {
        Some(too_large) => wasmtime_wasi_http::Error::HttpRequestBodySize(Some(too_large.limit)),
        None => wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
    }
}

/// A guest's response body: ends with an error, not cleanly, when the guest
/// failed (trapped, ran out of memory, overran its deadline) before it
/// finished the body.
struct GuestBody<B> {
    inner: B,
    failed: Arc<AtomicBool>,
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
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None | Some(Err(_))) if self.failed.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err(Box::new(CutShort))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
