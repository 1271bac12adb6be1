//! The router: one [`Backend`] in front of the real ones. An artifact that
//! starts with WebAssembly's magic is prepared by the wasm backend, anything
//! else is taken for an OCI image; starts go by the function's kind. A
//! pull goes to the container backend, which owns the image store, and a
//! wasm component it finds to the wasm backend. It holds no state of its
//! own.

use std::io::Read;
use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{
    Backend, Cause, Instance, PrepareError, Prepared, PulledArtifact, StartError,
};
use crate::container::ContainerBackend;
use crate::image::pull::{PullOptions, Reference};
use crate::spec::{Digest, FunctionKind, FunctionSpec};
use crate::store::artifact::ArtifactStore;
use crate::wasm::WasmBackend;

/// Routes each call to the backend that runs the artifact.
pub struct Router {
    pub artifacts: ArtifactStore,
    pub wasm: Arc<WasmBackend>,
    pub container: Arc<ContainerBackend>,
}

fn is_wasm(path: &std::path::Path) -> std::io::Result<bool> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path)?;
    match file.read_exact(&mut head) {
        Ok(()) => Ok(&head == b"\0asm"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Backend for Router {
    async fn prepare(&self, artifact: &Digest) -> Result<Prepared, PrepareError> {
        match is_wasm(&self.artifacts.blob_path(artifact)) {
            Ok(true) => self.wasm.prepare(artifact).await,
            Ok(false) => self.container.prepare(artifact).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(PrepareError::MissingArtifact {
                    digest: artifact.to_string(),
                })
            }
            Err(e) => Err(PrepareError::Storage {
                digest: artifact.to_string(),
                cause: Cause::new(e),
            }),
        }
    }

    /// The container backend pulls (it owns the image store); a wasm
    /// component it finds is prepared by the wasm backend.
    async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<PulledArtifact, PrepareError> {
        let mut pulled = self.container.pull(reference, options).await?;
        if pulled.prepared.image.is_none() {
            pulled.prepared = self.wasm.prepare(&pulled.artifact).await?;
        }
        Ok(pulled)
    }

    async fn start(&self, spec: &FunctionSpec) -> Result<Box<dyn Instance>, StartError> {
        match spec.kind {
            FunctionKind::WasmHttp | FunctionKind::WasmCgi => self.wasm.start(spec).await,
            FunctionKind::Container => self.container.start(spec).await,
        }
    }

    /// The CPUs are nearly all busy ([`crate::host::CpuLoad`]).
    fn saturated(&self) -> bool {
        crate::host::CpuLoad::host().saturated()
    }

    async fn shutdown(&self) {
        self.wasm.shutdown().await;
        self.container.shutdown().await;
    }
}
