//! The executor of WASI preview1 command modules, which speak CGI as WAGI
//! runs them ([`crate::protocol::cgi`] maps the request and the response):
//! each request runs `_start` in a fresh store, with the request body as
//! stdin and the meta-variables in the environment. stdout is buffered up
//! to [`cgi::MAX_OUTPUT_BYTES`]; stderr keeps its tail for the log.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;
use wasmtime::{Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use super::backend::{Epochs, Ticking};
use super::guest::{MemoryCap, TailPipe, arm_deadline, classify, wasi_builder};
use crate::backend::{Body, Instance, InvokeError, RequestInfo};
use crate::protocol::cgi;
use crate::spec::FunctionSpec;

pub type CgiLinker = Linker<CgiState>;

pub struct CgiState {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
    /// Keeps the epoch clock ticking while the store exists.
    _ticking: Ticking,
}

pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<CgiLinker> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut CgiState| &mut state.wasi)?;
    Ok(linker)
}

/// A pre-linked preview1 command module; each request runs `_start` in a
/// fresh store.
pub struct CgiInstance {
    /// Shared by every instance of the same code (see `WasmBackend::link`).
    pre: Arc<CgiPre>,
    spec: Arc<FunctionSpec>,
    epochs: Arc<Epochs>,
}

pub type CgiPre = wasmtime::InstancePre<CgiState>;

/// Links a module; fails unless it is a WASI command (exports `_start`) and
/// imports nothing beyond `wasi_snapshot_preview1`.
pub fn pre(linker: &CgiLinker, module: &Module) -> wasmtime::Result<CgiPre> {
    if module.get_export("_start").is_none() {
        wasmtime::bail!("the module exports no `_start` function (it is not a WASI command)");
    }
    linker.instantiate_pre(module)
}

impl CgiInstance {
    pub(crate) fn new(pre: Arc<CgiPre>, spec: Arc<FunctionSpec>, epochs: Arc<Epochs>) -> Self {
        CgiInstance { pre, spec, epochs }
    }

    async fn run(&self, req: Request<Body>, deadline: Instant) -> Result<Bytes, InvokeError> {
        let spec = &self.spec;
        let (parts, body) = req.into_parts();
        let body = cgi::read_body(body, &spec.name, spec.limits.max_body_bytes).await?;
        let info = parts
            .extensions
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_default();
        let vars = cgi::variables(&parts, &info, body.len());
        let stdout = MemoryOutputPipe::new(cgi::MAX_OUTPUT_BYTES);
        let stderr = TailPipe::default();
        let mut builder = wasi_builder(spec)?;
        builder
            .envs(&vars)
            .stdin(MemoryInputPipe::new(body))
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        let (memory, memory_hit) = MemoryCap::new(spec.limits.memory_bytes);
        let mut store = Store::new(
            self.pre.module().engine(),
            CgiState {
                wasi: builder.build_p1(),
                memory,
                _ticking: self.epochs.ticking(),
            },
        );
        store.limiter(|state| &mut state.memory);
        arm_deadline(&mut store, deadline);
        let result = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        };
        let result = tokio::time::timeout_at(deadline, result).await;
        stderr.log(spec, "stderr");
        match result {
            Err(_) => Err(InvokeError::Timeout {
                function: spec.name.clone(),
                timeout: spec.limits.timeout(),
            }),
            Ok(Ok(())) => Ok(stdout.contents()),
            Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(wasmtime_wasi::I32Exit(0)) => Ok(stdout.contents()),
                _ => Err(classify(spec, &e, &memory_hit)),
            },
        }
    }
}

#[async_trait]
impl Instance for CgiInstance {
    async fn invoke(&self, req: Request<Body>) -> Result<Response<Body>, InvokeError> {
        let deadline = req
            .extensions()
            .get::<crate::pool::Deadline>()
            .map_or_else(|| Instant::now() + self.spec.limits.timeout(), |d| d.0);
        let out = self.run(req, deadline).await?;
        cgi::response(&self.spec.name, out)
    }

    fn concurrency(&self) -> usize {
        usize::MAX
    }

    async fn stop(self: Box<Self>) {}
}
