//! The gateway's client connections: how many may be open, how long one may
//! sit without a request, and which one gives way when the cap is reached.
//!
//! Every accepted connection is [admitted](Connections::admit) or refused.
//! An admitted one is watched by [`Admitted::close_requested`], which
//! resolves when the connection should end:
//!
//! - it has had no request in flight for longer than its limit: the
//!   header-read timeout before its first request (a silent socket, a
//!   half-sent h2 preface or request head), the idle timeout after it
//!   (keep-alive and h2 connections with no open stream);
//! - the cap was reached and a newer connection took its place: when the
//!   cap is full, an idle connection is evicted (one that never made a
//!   request first, then the one idle the longest), so that a client
//!   holding hundreds of silent sockets cannot lock others out;
//! - the server is shutting down.
//!
//! A request is "in flight" from the moment hyper hands it to the service
//! until its response body is dropped (sent or abandoned), so a streaming
//! response is never mistaken for an idle connection.
//!
//! The cap defaults to half of the file descriptors the process may open
//! (its soft `RLIMIT_NOFILE`, raised to the hard limit at start): the other
//! half is left for sandboxes, their connections and the stores, so that
//! `accept` never starves the rest of the server.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::metrics::ConnectionMetrics;

/// How long a closing connection may take to finish what it has in flight
/// before it is checked again (and dropped if nothing is in flight).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Connections above the cap that may exist while evicted ones close.
const EVICTION_SLACK: usize = 64;

/// The limits of `wisp serve --max-connections`, `--header-read-timeout`
/// and `--idle-timeout`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max: usize,
    /// Time a new connection has to deliver its first request.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight after its
    /// first.
    pub idle_timeout: Duration,
}

/// The default cap: half of the descriptors this process may open.
pub fn default_max_connections() -> usize {
    let soft = raise_fd_limit();
    usize::try_from(soft / 2).unwrap_or(usize::MAX).max(16)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as Go's runtime and
/// most servers do) and returns the soft limit in force.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No request in flight for longer than its limit.
    Idle,
    /// The cap was full and a newer connection took its place.
    Evicted,
    /// The server is stopping.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 3] = [
        CloseReason::Idle,
        CloseReason::Evicted,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The open connections of one server.
pub struct Connections {
    limits: ConnectionLimits,
    open: Mutex<HashMap<u64, Arc<State>>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// Signalled whenever a connection is removed.
    removed: Notify,
    shutdown: watch::Sender<bool>,
    metrics: ConnectionMetrics,
}

/// What the server knows of one connection.
struct State {
    in_flight: AtomicUsize,
    /// Whether a request has been received (the idle timeout applies
    /// from then on, the header-read timeout before).
    served: AtomicBool,
    /// Milliseconds since [`Connections::epoch`] at the last request start or end.
    last_active: AtomicU64,
    /// Set (and `evict` notified) when the connection must give way.
    evicting: AtomicBool,
    evict: Notify,
}

impl Connections {
    pub fn new(limits: ConnectionLimits, metrics: ConnectionMetrics) -> Self {
        Connections {
            limits,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            removed: Notify::new(),
            shutdown: watch::Sender::new(false),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits a new connection, evicting an idle one if the cap is full; `None` if every open connection is busy (the new one
    /// is then refused).
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        // Scanned only when the cap is reached: the common accept is O(1).
        if open.len() >= self.limits.max
            && open.len()
                - open
                    .values()
                    .filter(|s| s.evicting.load(Ordering::Relaxed))
                    .count()
                >= self.limits.max
        {
            let victim = open
                .values()
                .filter(|s| {
                    s.in_flight.load(Ordering::Acquire) == 0 && !s.evicting.load(Ordering::Relaxed)
                })
                // Connections that never made a request go first (the
                // silent sockets of an attack), then the longest idle.
                .min_by_key(|s| {
                    (
                        s.served.load(Ordering::Relaxed),
                        s.last_active.load(Ordering::Relaxed),
                    )
                });
            match victim {
                Some(victim) if open.len() < self.limits.max + EVICTION_SLACK => {
                    victim.evicting.store(true, Ordering::Relaxed);
                    victim.evict.notify_one();
                }
                _ => {
                    self.metrics.refused.inc();
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(State {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_active: AtomicU64::new(self.now_ms()),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
        });
        open.insert(id, state.clone());
        self.metrics
            .open
            .set(i64::try_from(open.len()).unwrap_or(i64::MAX));
        Some(Admitted {
            connections: self.clone(),
            id,
            state,
        })
    }

    /// Asks every connection to finish what it has in flight and close.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once no connection is open.
    pub async fn drained(&self) {
        loop {
            let removed = self.removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            if self
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
            {
                return;
            }
            removed.await;
        }
    }
}

/// An admitted connection; dropping it removes it from the open set.
pub struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    state: Arc<State>,
}

impl Admitted {
    /// Marks a request in flight until the returned guard is dropped
    /// (carry it in the response body: [`Tracked`]).
    pub fn request(&self) -> InFlight {
        self.state.served.store(true, Ordering::Relaxed);
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        self.state
            .last_active
            .store(self.connections.now_ms(), Ordering::Relaxed);
        InFlight {
            state: self.state.clone(),
            connections: self.connections.clone(),
        }
    }

    /// Resolves when the connection should be closed, and why.
    pub async fn close_requested(&self) -> CloseReason {
        let mut shutdown = self.connections.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            return CloseReason::Shutdown;
        }
        let limits = self.connections.limits;
        loop {
            let limit = if self.state.served.load(Ordering::Relaxed) {
                limits.idle_timeout
            } else {
                limits.header_read_timeout
            };
            let wait = if self.state.in_flight.load(Ordering::Acquire) == 0 {
                let idle_ms = self
                    .connections
                    .now_ms()
                    .saturating_sub(self.state.last_active.load(Ordering::Relaxed));
                let idle = Duration::from_millis(idle_ms);
                if idle >= limit {
                    return CloseReason::Idle;
                }
                limit - idle
            } else {
                limit
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.state.evict.notified() => return CloseReason::Evicted,
                _ = shutdown.changed() => return CloseReason::Shutdown,
            }
        }
    }

    /// Resolves once the connection has had nothing in flight for a
    /// moment: after a close was requested, what is left may be dropped.
    pub async fn quiet(&self) {
        loop {
            tokio::time::sleep(CLOSE_GRACE).await;
            if self.state.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
        }
    }

    /// Counts a server-side close.
    pub fn closing(&self, reason: CloseReason) {
        self.connections
            .metrics
            .closed
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.remove(&self.id);
        self.connections
            .metrics
            .open
            .set(i64::try_from(open.len()).unwrap_or(i64::MAX));
        drop(open);
        self.connections.removed.notify_waiters();
    }
}

/// A request in flight on a connection.
pub struct InFlight {
    state: Arc<State>,
    connections: Arc<Connections>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state
            .last_active
            .store(self.connections.now_ms(), Ordering::Relaxed);
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until the
/// body is done with.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(max: usize) -> Arc<Connections> {
        let limits = ConnectionLimits {
            max,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        };
        let metrics = crate::metrics::Metrics::new().expect("metrics");
        Arc::new(Connections::new(limits, metrics.connections()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cap_evicts_a_silent_connection_before_a_kept_alive_one() {
        let connections = connections(2);
        let kept_alive = connections.admit().expect("first");
        drop(kept_alive.request());
        let silent = connections.admit().expect("second");
        let _newcomer = connections.admit().expect("third evicts");
        assert_eq!(silent.close_requested().await, CloseReason::Evicted);
        assert!(!kept_alive.state.evicting.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cap_of_busy_connections_refuses_newcomers() {
        let connections = connections(1);
        let busy = connections.admit().expect("first");
        let _request = busy.request();
        assert!(connections.admit().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_and_idleness_have_their_own_timeouts() {
        let connections = connections(8);
        let silent = connections.admit().expect("admit");
        let started = tokio::time::Instant::now();
        assert_eq!(silent.close_requested().await, CloseReason::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let served = connections.admit().expect("admit");
        let request = served.request();
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(request);
        let idle_from = tokio::time::Instant::now();
        assert_eq!(served.close_requested().await, CloseReason::Idle);
        assert_eq!(idle_from.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_and_drains() {
        let connections = connections(8);
        let open = connections.admit().expect("admit");
        connections.shut_down();
        assert_eq!(open.close_requested().await, CloseReason::Shutdown);
        drop(open);
        connections.drained().await;
    }
}
