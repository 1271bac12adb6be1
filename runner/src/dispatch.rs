//! One [`Backend`] in front of the real ones: an artifact that starts with
//! WebAssembly's magic goes to the wasm backend, anything else is taken for
//! an OCI image; starts go by the function's kind.

use std::io::Read;
use std::sync::Arc;

use async_trait::async_trait;

use crate::artifact::ArtifactStore;
use crate::backend::{Backend, Instance, PrepareError, Prepared, StartError};
use crate::container::ContainerBackend;
use crate::spec::{Digest, FunctionKind, FunctionSpec};
use crate::wasm::WasmBackend;

pub struct Backends {
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
impl Backend for Backends {
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
                detail: e.to_string(),
            }),
        }
    }

    async fn start(&self, spec: &FunctionSpec) -> Result<Box<dyn Instance>, StartError> {
        match spec.kind {
            FunctionKind::WasmHttp | FunctionKind::WasmCgi => self.wasm.start(spec).await,
            FunctionKind::Container => self.container.start(spec).await,
        }
    }

    async fn shutdown(&self) {
        self.wasm.shutdown().await;
        self.container.shutdown().await;
    }
}
