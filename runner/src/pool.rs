//! The pool of one function's instances. It knows no backend: it asks the
//! [`Backend`] for a sandbox on the first request (a cold start), hands
//! requests to it, counts what is in flight, and on retirement (a redeploy
//! or a delete) waits for those requests before stopping its instance.
//!
//! Limits of this first version: one instance per function, which is right
//! for wasm (every request gets its own store inside it) but not yet for
//! containers; no queue, no idle teardown, no pre-warming.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::sync::{Mutex, Notify};

use crate::backend::{Backend, Body, Instance, InvokeError};
use crate::spec::FunctionSpec;

type Shared = Arc<Box<dyn Instance>>;

pub struct Pool {
    spec: Arc<FunctionSpec>,
    backend: Arc<dyn Backend>,
    instance: Mutex<Option<Shared>>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Started instances, readable without waiting for a cold start.
    started: AtomicUsize,
}

/// A response and how it was served.
pub struct Served {
    pub response: Response<Body>,
    /// Time spent starting an instance, when this request had to.
    pub cold_start: Option<Duration>,
}

impl Pool {
    pub fn new(spec: FunctionSpec, backend: Arc<dyn Backend>) -> Self {
        Pool {
            spec: Arc::new(spec),
            backend,
            instance: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            started: AtomicUsize::new(0),
        }
    }

    pub fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    /// Number of started instances (for status reports).
    pub fn instances(&self) -> usize {
        self.started.load(Ordering::Acquire)
    }

    /// Serves one request, starting an instance first if there is none.
    pub async fn invoke(&self, req: Request<Body>) -> Result<Served, InvokeError> {
        let _guard = InFlight::enter(self);
        let (instance, cold_start) = self.acquire().await?;
        let response = instance.invoke(req).await?;
        Ok(Served {
            response,
            cold_start,
        })
    }

    async fn acquire(&self) -> Result<(Shared, Option<Duration>), InvokeError> {
        let mut slot = self.instance.lock().await;
        if let Some(instance) = slot.as_ref() {
            if instance.is_healthy() {
                return Ok((instance.clone(), None));
            }
            // Its handler died: the last request holding it releases it
            // (a sandbox cleans up when dropped); start a replacement.
            tracing::info!(function = %self.spec.name, "replacing an instance whose handler is gone");
            *slot = None;
        }
        let started = Instant::now();
        let instance: Shared = Arc::new(self.backend.start(&self.spec).await?);
        let cold = started.elapsed();
        tracing::info!(function = %self.spec.name, cold_start_ms = cold.as_secs_f64() * 1e3, "instance started");
        *slot = Some(instance.clone());
        self.started.store(1, Ordering::Release);
        Ok((instance, Some(cold)))
    }

    /// Stops taking part: waits until no request is in flight, then stops
    /// the instance. Callers remove the pool from routing first.
    pub async fn retire(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
        if let Some(instance) = self.instance.lock().await.take() {
            self.started.store(0, Ordering::Release);
            match Arc::try_unwrap(instance) {
                Ok(instance) => instance.stop().await,
                Err(_) => {
                    tracing::warn!(function = %self.spec.name, "instance still shared at retirement")
                }
            }
        }
    }
}

struct InFlight<'a>(&'a Pool);

impl<'a> InFlight<'a> {
    fn enter(pool: &'a Pool) -> Self {
        pool.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(pool)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
