//! The wasm backend itself: [`WasmBackend`] owns the process's one
//! wasmtime [`Engine`] (pooling allocator, copy-on-write memory images,
//! epoch interruption), compiles an artifact once at deploy time into the
//! artifact store and, at a start, maps the machine code back in with
//! `deserialize_file` and links it into an instance of the function's ABI
//! ([`super::http`] or [`super::cgi`]). Linked code is shared by every
//! instance of every function that runs the same artifact, and dropped
//! with the last of them (the backend keeps only a weak reference): ten
//! thousand functions of one component map its code once.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use wasmtime::component::Component;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig,
};

use super::{cgi, http};
use crate::backend::{Backend, Cause, Instance, PrepareError, Prepared, StartError};
use crate::spec::{Digest, FunctionKind, FunctionSpec, MAX_MEMORY_BYTES};
use crate::store::artifact::ArtifactStore;

/// How often the epoch ticks; a guest's deadline is checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each linear memory kept resident (reset in place) between requests.
const LINEAR_MEMORY_KEEP_RESIDENT: usize = 4 << 20;
/// Bytes of each table kept resident between requests.
const TABLE_KEEP_RESIDENT: usize = 1 << 20;
/// Freed slots decommitted at once (see `engine_config`).
const DECOMMIT_BATCH_SIZE: usize = 1;

/// Operator settings of the wasm backend.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Instances (stores) that may exist at once across all functions.
    pub max_instances: u32,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig { max_instances: 256 }
    }
}

/// Runs WebAssembly functions. Cloning is cheap: clones share the engine.
#[derive(Clone)]
pub struct WasmBackend {
    engine: Engine,
    artifacts: ArtifactStore,
    http_linker: Arc<http::HttpLinker>,
    cgi_linker: Arc<cgi::CgiLinker>,
    /// File-name suffix of precompiled code: changes when the engine does.
    compiled_suffix: Arc<str>,
    /// Stores alive, for the epoch clock.
    epochs: Arc<Epochs>,
    /// Linked code in use, by artifact.
    linked_http: Arc<Mutex<HashMap<Digest, Weak<http::HttpPre>>>>,
    linked_cgi: Arc<Mutex<HashMap<Digest, Weak<cgi::CgiPre>>>>,
}

/// How many stores exist: the epoch clock ticks only while one does, and
/// for [`EPOCH_LINGER`] after the last one went.
#[derive(Default)]
pub(crate) struct Epochs {
    state: Mutex<EpochState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct EpochState {
    stores: usize,
    /// The clock waits on `wake`.
    parked: bool,
}

/// How long the clock keeps ticking with no store. A function served a
/// store per request would otherwise park and wake it on every request: a
/// futex call and a wake-up of the clock's thread each time (counted on
/// `hello`, one connection: one futex call a request).
const EPOCH_LINGER: Duration = Duration::from_secs(1);
const LINGER_TICKS: u32 = (EPOCH_LINGER.as_millis() / EPOCH_TICK.as_millis()) as u32;

impl Epochs {
    /// Counts a store while the result lives; keep it in the store's data.
    pub(crate) fn ticking(self: &Arc<Self>) -> Ticking {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.stores += 1;
        if state.parked {
            self.wake.notify_one();
        }
        Ticking(self.clone())
    }

    /// Returns at once while a store exists or one existed within
    /// [`EPOCH_LINGER`] (`idle_ticks` counts the ticks since); else blocks
    /// until one does, asking `alive` once a second whether the engine is
    /// still there. False once it is not.
    fn wait_for_a_store(&self, idle_ticks: &mut u32, alive: impl Fn() -> bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.stores > 0 {
            *idle_ticks = 0;
            return true;
        }
        *idle_ticks = idle_ticks.saturating_add(1);
        if *idle_ticks <= LINGER_TICKS {
            return true;
        }
        while state.stores == 0 {
            if !alive() {
                return false;
            }
            state.parked = true;
            state = self
                .wake
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.parked = false;
        }
        *idle_ticks = 0;
        true
    }
}

/// One store, counted by [`Epochs`] until it is dropped.
pub(crate) struct Ticking(Arc<Epochs>);

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.stores = state.stores.saturating_sub(1);
    }
}

/// The live entry of `cache` for `digest`, or a new one from `link`
/// (linked outside the lock: two starts may race, and one copy wins).
fn shared<T>(
    cache: &Mutex<HashMap<Digest, Weak<T>>>,
    digest: &Digest,
    link: impl FnOnce() -> wasmtime::Result<T>,
) -> wasmtime::Result<Arc<T>> {
    let lock = || cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(live) = lock().get(digest).and_then(Weak::upgrade) {
        return Ok(live);
    }
    let fresh = Arc::new(link()?);
    let mut map = lock();
    if let Some(live) = map.get(digest).and_then(Weak::upgrade) {
        return Ok(live);
    }
    map.retain(|_, entry| entry.strong_count() > 0);
    map.insert(digest.clone(), Arc::downgrade(&fresh));
    Ok(fresh)
}

impl WasmBackend {
    pub fn new(artifacts: ArtifactStore, config: &WasmConfig) -> wasmtime::Result<Self> {
        let engine = Engine::new(&engine_config(config))?;
        let ticker = engine.weak();
        let epochs = Arc::new(Epochs::default());
        let parked = epochs.clone();
        // The epoch clock. A plain thread: it must keep ticking even when
        // every tokio worker is busy running guests. It ticks only while a
        // store exists (a guest may run) and for a second after; otherwise
        // it waits, waking once a second only to see whether the engine is
        // gone.
        std::thread::Builder::new()
            .name("wisp-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0;
                loop {
                    if !parked.wait_for_a_store(&mut idle_ticks, || ticker.upgrade().is_some()) {
                        return;
                    }
                    let Some(engine) = ticker.upgrade() else {
                        return;
                    };
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compiled_suffix: Arc<str> = format!("{:016x}.cwasm", hasher.finish()).into();
        Ok(WasmBackend {
            http_linker: Arc::new(http::linker(&engine)?),
            cgi_linker: Arc::new(cgi::linker(&engine)?),
            engine,
            artifacts,
            compiled_suffix,
            epochs,
            linked_http: Arc::default(),
            linked_cgi: Arc::default(),
        })
    }

    /// Compiles the artifact if its machine code is not on disk yet.
    fn compile(&self, artifact: &Digest, kind: FunctionKind) -> Result<(), PrepareError> {
        let digest = artifact.as_str().to_owned();
        let out = self
            .artifacts
            .compiled_path(artifact, &self.compiled_suffix);
        if out.is_file() {
            return Ok(());
        }
        let storage = |e: std::io::Error| PrepareError::Storage {
            digest: digest.clone(),
            cause: Cause::new(e),
        };
        let bytes = std::fs::read(self.artifacts.blob_path(artifact)).map_err(storage)?;
        let compiled = match kind {
            FunctionKind::WasmHttp => self.engine.precompile_component(&bytes),
            FunctionKind::WasmCgi => self.engine.precompile_module(&bytes),
            FunctionKind::Container => return Err(PrepareError::NotWasm { digest }),
        }
        .map_err(|e| PrepareError::Compile {
            digest: digest.clone(),
            detail: format!("{e:#}"),
        })?;
        self.artifacts
            .write_compiled(&out, &compiled)
            .map_err(storage)
    }

    /// Maps precompiled code in and links it against the host's imports;
    /// this is where a component of the wrong world is refused.
    fn link(&self, artifact: &Digest, kind: FunctionKind) -> wasmtime::Result<Linked> {
        let path = self
            .artifacts
            .compiled_path(artifact, &self.compiled_suffix);
        Ok(match kind {
            FunctionKind::WasmHttp => Linked::Http(shared(&self.linked_http, artifact, || {
                http::pre(&self.http_linker, &load_component(&self.engine, &path)?)
            })?),
            FunctionKind::WasmCgi => Linked::Cgi(shared(&self.linked_cgi, artifact, || {
                cgi::pre(&self.cgi_linker, &load_module(&self.engine, &path)?)
            })?),
            FunctionKind::Container => {
                return Err(wasmtime::Error::msg("a container function is not wasm"));
            }
        })
    }
}

/// A function's code, compiled and linked, ready to instantiate per request.
enum Linked {
    Http(Arc<http::HttpPre>),
    Cgi(Arc<cgi::CgiPre>),
}

#[async_trait]
impl Backend for WasmBackend {
    async fn prepare(&self, artifact: &Digest) -> Result<Prepared, PrepareError> {
        let digest = artifact.as_str().to_owned();
        let blob = self.artifacts.blob_path(artifact);
        let kind = match detect_kind(&blob) {
            Ok(Some(kind)) => kind,
            Ok(None) => return Err(PrepareError::NotWasm { digest }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PrepareError::MissingArtifact { digest });
            }
            Err(e) => {
                return Err(PrepareError::Storage {
                    digest,
                    cause: Cause::new(e),
                });
            }
        };
        let backend = self.clone();
        let artifact = artifact.clone();
        tokio::task::spawn_blocking(move || {
            backend.compile(&artifact, kind)?;
            backend
                .link(&artifact, kind)
                .map_err(|e| PrepareError::WrongWorld {
                    digest: artifact.as_str().to_owned(),
                    detail: format!("{e:#}"),
                })?;
            Ok(Prepared {
                kind,
                image: None,
                lambda_bootstrap: None,
            })
        })
        .await
        .map_err(|e| PrepareError::Storage {
            digest,
            cause: Cause::new(e),
        })?
    }

    async fn start(&self, spec: &FunctionSpec) -> Result<Box<dyn Instance>, StartError> {
        let backend = self.clone();
        let spec = Arc::new(spec.clone());
        let function = spec.name.clone();
        tokio::task::spawn_blocking(move || {
            // Precompiled code can be missing after a wasmtime upgrade or a
            // wiped cache: compile again from the stored artifact.
            backend
                .compile(&spec.artifact, spec.kind)
                .map_err(|e| StartError::Artifact {
                    function: spec.name.clone(),
                    detail: e.to_string(),
                })?;
            let linked =
                backend
                    .link(&spec.artifact, spec.kind)
                    .map_err(|e| StartError::Instantiate {
                        function: spec.name.clone(),
                        detail: format!("{e:#}"),
                    })?;
            Ok(match linked {
                Linked::Http(pre) => {
                    Box::new(http::HttpInstance::new(pre, spec, backend.epochs.clone()))
                        as Box<dyn Instance>
                }
                Linked::Cgi(pre) => {
                    Box::new(cgi::CgiInstance::new(pre, spec, backend.epochs.clone()))
                }
            })
        })
        .await
        .map_err(|e| StartError::Instantiate {
            function,
            detail: format!("start task failed: {e}"),
        })?
    }
}

fn engine_config(config: &WasmConfig) -> Config {
    let n = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        // Components made by real toolchains (the preview1 adapter, Python
        // and JS runtimes) carry several core instances, memories and tables.
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        .max_core_instance_size(4 << 20)
        .max_component_instance_size(4 << 20)
        // Reset a freed slot without madvise where possible: madvise makes
        // the kernel shoot down TLBs on every core, and measured as the top
        // cost of a request (a third of all CPU time) before these settings.
        // PAGEMAP_SCAN (Linux 6.7+) finds the dirty pages and resets only
        // those, keeping the memory resident for the next request.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        // One at a time, not batched: a slot waiting in a decommit batch
        // is not free yet, so a module dropped meanwhile cannot purge it,
        // and the slot kept the dead module's memory image — its code
        // mapped and its file open — until another instance took that
        // slot. Batching measured no faster here (hello, 64 connections:
        // 9.9k req/s batched by 16, 10.5k unbatched, medians of 3).
        .decommit_batch_size(DECOMMIT_BATCH_SIZE);
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    cfg
}

/// Reads the 8-byte preamble: `\0asm` then the version/layer word, which
/// tells a core module (version 1) from a component (layer 1).
fn detect_kind(path: &Path) -> std::io::Result<Option<FunctionKind>> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path)?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..])? {
            0 => return Ok(None),
            n => got += n,
        }
    }
    Ok(match head {
        [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(FunctionKind::WasmCgi),
        [0, b'a', b's', b'm', _, _, 1, 0] => Some(FunctionKind::WasmHttp),
        _ => None,
    })
}

fn load_component(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `Engine::precompile_component` of an
    // engine with the same compatibility hash (it is in the file name), into
    // wisp's own data directory, through a temporary file and an atomic
    // rename; nothing else writes there, and it is never modified in place
    // while mapped.
    unsafe { Component::deserialize_file(engine, path) }
}

fn load_module(engine: &Engine, path: &Path) -> wasmtime::Result<Module> {
    // SAFETY: as for `load_component`: written by `Engine::precompile_module`
    // of a compatible engine, atomically, and never modified in place.
    unsafe { Module::deserialize_file(engine, path) }
}
