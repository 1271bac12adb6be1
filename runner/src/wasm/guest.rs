//! What every guest store gets, whatever its ABI: the memory cap, the
//! deadline, the capture of stdout/stderr, the WASI context without network
//! or files, and the one place that turns a wasmtime error into an
//! [`InvokeError`].

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::time::Instant;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::backend::{InvokeError, StartError};
use crate::spec::FunctionSpec;

/// Bytes of a guest's stderr (and, for wasi:http, stdout) kept for the log.
pub const LOG_TAIL_BYTES: usize = 16 * 1024;
/// Most table elements a guest's store may hold, across all its tables.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The memory cap of one store, over all its linear memories together (a
/// component may carry several, one per core instance: issue 11, finding
/// 17 was each memory getting the whole cap). Wasmtime asks the limiter
/// before a memory is created (from size 0) and before each growth, so the
/// sum of what it allowed is the store's total. Growth past the cap fails
/// inside the guest (as `memory.grow` returning -1, which WASI programs may
/// handle); if the guest then dies, the flag lets us say "out of memory"
/// instead of a bare trap. A growth the cap allowed that then fails anyway
/// (the host could not map it) stays counted: the cap errs on the safe
/// side. Tables are capped the same way, in elements.
pub struct MemoryCap {
    limit: usize,
    /// Bytes of all the store's memories.
    memory: usize,
    /// Elements of all the store's tables.
    table_elements: usize,
    hit: Arc<AtomicBool>,
}

impl MemoryCap {
    pub fn new(limit_bytes: u64) -> (Self, Arc<AtomicBool>) {
        let hit = Arc::new(AtomicBool::new(false));
        let cap = MemoryCap {
            limit: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            memory: 0,
            table_elements: 0,
            hit: hit.clone(),
        };
        (cap, hit)
    }
}

/// The store's new total if one of its parts goes from `current` to
/// `desired`, when that stays within `limit`.
fn grown(total: usize, current: usize, desired: usize, limit: usize) -> Option<usize> {
    let total = total.saturating_sub(current).checked_add(desired)?;
    (total <= limit).then_some(total)
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past the memory's own declared maximum: wasmtime refuses it
            // whatever we say; not the cap's doing.
            return Ok(false);
        }
        match grown(self.memory, current, desired, self.limit) {
            Some(total) => {
                self.memory = total;
                Ok(true)
            }
            None => {
                self.hit.store(true, Ordering::Relaxed);
                Ok(false)
            }
        }
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        match grown(self.table_elements, current, desired, MAX_TABLE_ELEMENTS) {
            Some(total) => {
                self.table_elements = total;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Arms the store's deadline: the guest yields to tokio at every epoch tick
/// and is interrupted (`Trap::Interrupt`) once `deadline` has passed.
pub fn arm_deadline<T: Send>(store: &mut Store<T>, deadline: Instant) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

/// A WASI context with the function's environment and nothing else: no
/// sockets, no name lookups, no inherited stdio, and no preopened
/// directory but the function's secrets, read-only at
/// [`SECRETS_PATH`](crate::spec::SECRETS_PATH), when it has some.
pub fn wasi_builder(spec: &FunctionSpec) -> Result<WasiCtxBuilder, StartError> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&[spec.name.as_str()])
        .envs(&spec.env.iter().collect::<Vec<_>>())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if let Some(dir) = &spec.secrets_dir {
        builder
            .preopened_dir(
                dir,
                crate::spec::SECRETS_PATH,
                wasmtime_wasi::FsPerms::ReadOnly,
            )
            .map_err(|e| StartError::Instantiate {
                function: spec.name.clone(),
                detail: format!("opening its secrets: {e:#}"),
            })?;
    }
    Ok(builder)
}

/// Turns the error a guest call ended with into what the caller is told.
pub fn classify(
    spec: &FunctionSpec,
    error: &wasmtime::Error,
    memory_hit: &AtomicBool,
) -> InvokeError {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return InvokeError::Timeout {
            function: spec.name.clone(),
            timeout: spec.limits.timeout(),
        };
    }
    if memory_hit.load(Ordering::Relaxed) {
        return InvokeError::OutOfMemory {
            function: spec.name.clone(),
            limit_bytes: spec.limits.memory_bytes,
        };
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return InvokeError::Trap {
            function: spec.name.clone(),
            detail: format!("exited with status {}", exit.0),
        };
    }
    if error.is::<wasmtime::PoolConcurrencyLimitError>() {
        return InvokeError::Capacity {
            function: spec.name.clone(),
            detail: format!("{error:#}"),
        };
    }
    InvokeError::Trap {
        function: spec.name.clone(),
        detail: format!("{error:?}"),
    }
}

/// Keeps the last [`LOG_TAIL_BYTES`] a guest wrote to a stream; older bytes
/// are dropped, so a chatty guest can neither fill memory nor trap on it.
#[derive(Clone, Default)]
pub struct TailPipe(Arc<Mutex<VecDeque<u8>>>);

impl TailPipe {
    /// What the guest wrote (its tail), lossily as text.
    pub fn contents(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = buf.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Logs what the guest wrote, one event per line, and forgets it (a
    /// reused instance logs each request's output once).
    pub fn log(&self, spec: &FunctionSpec, stream: &'static str) {
        crate::store::logs::record(spec.name.as_str(), "wasm", stream, &self.contents());
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl AsyncWrite for TailPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let data_tail = &data[data.len().saturating_sub(LOG_TAIL_BYTES)..];
        let overflow = (buf.len() + data_tail.len()).saturating_sub(LOG_TAIL_BYTES);
        let drop_front = overflow.min(buf.len());
        buf.drain(..drop_front);
        buf.extend(data_tail);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A store running `wat` under a [`MemoryCap`] of `limit` bytes, with
    /// its exports `name` taking and returning an i32.
    fn capped(wat: &str, limit: u64) -> (Store<MemoryCap>, wasmtime::Instance, Arc<AtomicBool>) {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, wat).unwrap();
        let (cap, hit) = MemoryCap::new(limit);
        let mut store = Store::new(&engine, cap);
        store.limiter(|cap| cap);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        (store, instance, hit)
    }

    fn call(
        store: &mut Store<MemoryCap>,
        instance: &wasmtime::Instance,
        name: &str,
        arg: i32,
    ) -> i32 {
        instance
            .get_typed_func::<i32, i32>(&mut *store, name)
            .unwrap()
            .call(&mut *store, arg)
            .unwrap()
    }

    /// Issue 11, finding 17: the cap applied to each linear memory, so a
    /// module with two memories could hold twice the function's limit.
    #[test]
    fn the_memory_cap_covers_all_memories_of_a_store() {
        const PAGE: u64 = 64 * 1024;
        let wat = r#"(module
            (memory $a 1)
            (memory $b 1)
            (func (export "grow_a") (param i32) (result i32) (memory.grow $a (local.get 0)))
            (func (export "grow_b") (param i32) (result i32) (memory.grow $b (local.get 0))))"#;
        // 64 pages in all; each memory starts with one.
        let (mut store, instance, hit) = capped(wat, 64 * PAGE);
        assert_eq!(
            call(&mut store, &instance, "grow_a", 40),
            1,
            "41 of 64 pages"
        );
        assert!(!hit.load(Ordering::Relaxed));
        assert_eq!(
            call(&mut store, &instance, "grow_b", 40),
            -1,
            "82 pages in all is past the cap, though each memory is below it"
        );
        assert!(hit.load(Ordering::Relaxed));
        assert_eq!(
            call(&mut store, &instance, "grow_b", 22),
            1,
            "64 pages: at the cap"
        );
        assert_eq!(call(&mut store, &instance, "grow_a", 1), -1);
        assert_eq!(store.data().memory as u64, 64 * PAGE);
    }

    #[test]
    fn a_memorys_declared_maximum_is_not_counted_as_the_cap() {
        let wat = r#"(module
            (memory $a 1 2)
            (func (export "grow_a") (param i32) (result i32) (memory.grow $a (local.get 0))))"#;
        let (mut store, instance, hit) = capped(wat, 1 << 30);
        assert_eq!(call(&mut store, &instance, "grow_a", 5), -1);
        assert!(
            !hit.load(Ordering::Relaxed),
            "refused by its type, not the cap"
        );
        assert_eq!(call(&mut store, &instance, "grow_a", 1), 1);
    }

    #[test]
    fn the_table_cap_covers_all_tables_of_a_store() {
        let half = (MAX_TABLE_ELEMENTS / 2 + 1) as i32;
        let wat = r#"(module
            (table $a 0 funcref)
            (table $b 0 funcref)
            (func (export "grow_a") (param i32) (result i32)
                (table.grow $a (ref.null func) (local.get 0)))
            (func (export "grow_b") (param i32) (result i32)
                (table.grow $b (ref.null func) (local.get 0))))"#;
        let (mut store, instance, _) = capped(wat, 1 << 30);
        assert_eq!(call(&mut store, &instance, "grow_a", half), 0);
        assert_eq!(call(&mut store, &instance, "grow_b", half), -1);
        assert_eq!(call(&mut store, &instance, "grow_b", half - 2), 0);
    }

    #[tokio::test]
    async fn tail_pipe_keeps_only_the_tail() {
        let pipe = TailPipe::default();
        let mut w = pipe.clone();
        w.write_all(b"first line\n").await.unwrap();
        w.write_all(&vec![b'x'; LOG_TAIL_BYTES]).await.unwrap();
        w.write_all(b"\nlast").await.unwrap();
        let text = pipe.contents();
        assert_eq!(text.len(), LOG_TAIL_BYTES);
        assert!(text.ends_with("\nlast"));
        assert!(!text.contains("first"));
    }
}
