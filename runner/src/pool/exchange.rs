//! The response body of one exchange: it holds the request's lease until
//! the body is done (so an instance streaming a response is busy, not
//! idle) and ends the exchange at its deadline.
//!
//! The deadline covers the whole exchange, body included. When it passes
//! before the body ends, the instance is told it [overran]
//! (`Instance::overran`: a container's sandbox is killed, a wasm guest
//! stopped) and taken out of service if that left it unhealthy, and the
//! body ends with [`ExchangeTimedOut`] — never with a clean end: hyper then
//! closes an h1 connection without the final chunk and resets an h2
//! stream, so the client cannot mistake a truncated body for a whole one.
//!
//! Bodies that end without ever waiting (most responses: the whole body is
//! at hand) cost no timer; the first time the body has to wait, a watchdog
//! task is started that fires at the deadline even if the client stops
//! reading (and hyper stops polling the body).
//!
//! [overran]: crate::backend::Instance::overran

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Lease, StopReason};
use crate::backend::{Body, BodyError};

/// The error a response body ends with when its deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the response was not finished within the function's timeout of {timeout:?}")]
pub struct ExchangeTimedOut {
    pub timeout: Duration,
}

/// What the body and its watchdog share.
struct Shared {
    expired: AtomicBool,
    waker: AtomicWaker,
}

pub(super) struct Exchange {
    inner: Body,
    deadline: Instant,
    timeout: Duration,
    lease: Option<Lease>,
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
    done: bool,
}

impl Exchange {
    pub(super) fn new(inner: Body, lease: Lease, deadline: Instant, timeout: Duration) -> Self {
        Exchange {
            inner,
            deadline,
            timeout,
            lease: Some(lease),
            shared: Arc::new(Shared {
                expired: AtomicBool::new(false),
                waker: AtomicWaker::new(),
            }),
            watchdog: None,
            done: false,
        }
    }

    /// Starts the watchdog (once): at the deadline it stops the work
    /// behind the body and wakes the body.
    fn watch(&mut self) {
        if self.watchdog.is_some() {
            return;
        }
        let Some(lease) = &self.lease else { return };
        let (pool, slot, instance) = (lease.pool.clone(), lease.slot, lease.instance.clone());
        let (shared, deadline) = (self.shared.clone(), self.deadline);
        self.watchdog = Some(tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            shared.expired.store(true, Ordering::Release);
            instance.overran();
            if !instance.is_healthy()
                && let Some(pool) = pool.upgrade()
            {
                pool.remove(slot, StopReason::Timeout);
            }
            shared.waker.wake();
        }));
    }

    /// Ends the exchange: the lease goes back, the watchdog stops.
    fn finish(&mut self) {
        self.done = true;
        self.lease = None;
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
    }

    fn timed_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.finish();
        Poll::Ready(Some(Err(Box::new(ExchangeTimedOut {
            timeout: self.timeout,
        }))))
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for Exchange {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.shared.expired.load(Ordering::Acquire) {
            return self.timed_out();
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                // Ended because the watchdog stopped the work behind it:
                // truncated, not whole.
                if self.shared.expired.load(Ordering::Acquire) {
                    return self.timed_out();
                }
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => {
                self.shared.waker.register(cx.waker());
                self.watch();
                // The deadline may have passed before the waker was in place.
                if self.shared.expired.load(Ordering::Acquire) {
                    return self.timed_out();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
