//! The pool of one function's instances: the policy every request goes
//! through, written once for every backend (it sees only [`Backend`] and
//! [`Instance`]).
//!
//! - A request takes a free slot of a running instance (the busiest one
//!   that still has room, so the others can idle out). Failing that it
//!   waits in a FIFO queue, and the pool starts as many instances as the
//!   queue needs (a cold start), counting the capacity of the instances
//!   already starting, up to `max_instances`: a burst of N first requests
//!   starts ⌈N / concurrency⌉ instances and shares them.
//! - With instances running, the pool grows at most twofold per round of
//!   starts, and not at all while the host's CPUs are saturated
//!   ([`Backend::saturated`]): an instance the host cannot feed adds the
//!   cost of its start and no throughput. Held there, or at
//!   `max_instances`, requests queue. Once the queue has not emptied for
//!   250 ms (a burst drains within that, overload does not) requests
//!   beyond `queue_size` (past the capacity already starting) are
//!   answered 429 with `Retry-After` at once (with `queue_size` 0, from
//!   the start); a wait past `queue_timeout` gets 503.
//! - One deadline per request (`limits.timeout`) covers queueing, cold
//!   start and handling, response body included: past it before the
//!   response head, 504; past it mid-body, the body is cut with an error
//!   ([`exchange`]). Backends get it in the request's extensions
//!   ([`Deadline`]) and interrupt or kill the handler.
//! - A request holds its slot until its response body is done, so an
//!   instance streaming a response counts as busy.
//! - Instances idle past `idle_timeout` stop, down to `min_instances`;
//!   `min_instances` are started at once and replaced when they die. The
//!   pool counts each instance's requests itself: a busy instance is never
//!   stopped for idleness.
//! - An instance that is no longer healthy after a request (crash, OOM,
//!   timeout) is removed; cold starts that keep failing back off
//!   exponentially (100 ms doubling to 30 s) and requests meanwhile get the
//!   last start error.
//! - `retire` drains: requests in flight and queued finish on this pool,
//!   then every instance stops.
//!
//! The state is one `std::sync::Mutex`, never held across an `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use http_body_util::BodyExt;

use crate::backend::{Backend, Body, Instance, InvokeError, StartError};
use exchange::Exchange;
pub use exchange::ExchangeTimedOut;

mod exchange;
use crate::spec::{FunctionSpec, Scaling};

/// The instant a request must be answered by; in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

/// Why an instance stopped (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    Idle,
    Crash,
    Timeout,
    Oom,
    Deleted,
    Shutdown,
}

impl StopReason {
    pub const ALL: [StopReason; 6] = [
        StopReason::Idle,
        StopReason::Crash,
        StopReason::Timeout,
        StopReason::Oom,
        StopReason::Deleted,
        StopReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Idle => "idle",
            StopReason::Crash => "crash",
            StopReason::Timeout => "timeout",
            StopReason::Oom => "oom",
            StopReason::Deleted => "deleted",
            StopReason::Shutdown => "shutdown",
        }
    }
}

/// What the pool reports as it works (the gateway turns it into metrics).
pub trait PoolEvents: Send + Sync {
    /// Instances by state, after every change.
    fn instances(&self, _starting: usize, _idle: usize, _busy: usize) {}
    /// Requests waiting for an instance, after every change.
    fn queue_depth(&self, _depth: usize) {}
    fn stopped(&self, _reason: StopReason) {}
}

/// Reports nothing.
pub struct NoEvents;
impl PoolEvents for NoEvents {}

/// How a cold start went, for the request that waited for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColdStart {
    pub total: Duration,
    /// The backend's own phases (e.g. `rootfs`, `exec`, `ready`).
    pub phases: Vec<(&'static str, Duration)>,
}

/// A response and how it was served.
pub struct Served {
    pub response: Response<Body>,
    /// Set when this request waited for an instance to start.
    pub cold_start: Option<ColdStart>,
}

pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    spec: Arc<FunctionSpec>,
    backend: Arc<dyn Backend>,
    events: Arc<dyn PoolEvents>,
    state: Mutex<State>,
    /// Wakes `retire` when the last request leaves.
    changed: Notify,
    /// Wakes the reaper early: the scaling changed, or the pool retired.
    reaper_wake: Arc<Notify>,
}

struct State {
    scaling: Scaling,
    slots: Vec<Slot>,
    starting: usize,
    queue: VecDeque<Waiter>,
    next_id: u64,
    /// Requests holding a lease.
    leased: usize,
    failures: u32,
    backoff_until: Option<Instant>,
    last_error: Option<StartError>,
    retired: bool,
    /// The reaper runs: only while there are instances beyond
    /// `min_instances`, so an idle function has no task and no timer.
    reaping: bool,
    /// Since when the queue has not been empty.
    queued_since: Option<Instant>,
    /// How long a cold start takes (a moving average).
    start_estimate: Duration,
    /// A timer will look at the queue again.
    rechecking: bool,
}

/// The cold-start estimate before the first start.
const FIRST_START_ESTIMATE: Duration = Duration::from_millis(5);

/// A queue that has not emptied for this long is overload, not a burst.
const STANDING: Duration = Duration::from_millis(250);

impl State {
    /// Whether the queue has stood for [`STANDING`].
    fn queue_standing(&self, now: Instant) -> bool {
        self.queued_since
            .is_some_and(|since| now.duration_since(since) >= STANDING)
    }
}

struct Slot {
    id: u64,
    instance: Arc<Box<dyn Instance>>,
    busy: usize,
    capacity: usize,
    idle_since: Instant,
    /// The cold start, handed to the requests that waited for it.
    cold: Option<ColdStart>,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Result<Lease, InvokeError>>,
}

/// A queued request's place in the queue. A request that stops waiting
/// without a lease (its deadline, the queue timeout, its client gone)
/// takes its waiter out when this drops, so the queue's length is always
/// the number of requests waiting: the pool sheds and scales by it, and
/// never walks the queue to find who left.
struct Place<'a> {
    inner: &'a Inner,
    id: u64,
    /// Still in the queue as far as the request knows.
    waiting: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.waiting {
            return;
        }
        let mut state = lock(&self.inner.state);
        // Gone already if a lease or an error was sent to it just now.
        if let Some(at) = state.queue.iter().position(|w| w.id == self.id) {
            state.queue.remove(at);
            if state.queue.is_empty() {
                state.queued_since = None;
            }
            self.inner.report(&state);
        }
    }
}

/// A request's hold on one slot of one instance.
struct Lease {
    pool: Weak<Inner>,
    slot: u64,
    instance: Arc<Box<dyn Instance>>,
    cold: Option<ColdStart>,
    armed: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(inner) = self.pool.upgrade() {
            inner.release(self.slot);
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// A pool for `spec`; starts its `min_instances` (needs a tokio
    /// runtime).
    pub fn new(spec: FunctionSpec, backend: Arc<dyn Backend>, events: Arc<dyn PoolEvents>) -> Self {
        let scaling = spec.scaling();
        let inner = Arc::new(Inner {
            spec: Arc::new(spec),
            backend,
            events,
            state: Mutex::new(State {
                scaling,
                slots: Vec::new(),
                starting: 0,
                queue: VecDeque::new(),
                next_id: 0,
                leased: 0,
                failures: 0,
                backoff_until: None,
                last_error: None,
                retired: false,
                reaping: false,
                queued_since: None,
                start_estimate: FIRST_START_ESTIMATE,
                rechecking: false,
            }),
            changed: Notify::new(),
            reaper_wake: Arc::new(Notify::new()),
        });
        inner.rebalance(lock(&inner.state));
        Pool { inner }
    }

    pub fn spec(&self) -> &FunctionSpec {
        &self.inner.spec
    }

    /// Running instances (for status reports).
    pub fn instances(&self) -> usize {
        lock(&self.inner.state).slots.len()
    }

    /// The scaling settings in effect.
    pub fn scaling(&self) -> Scaling {
        lock(&self.inner.state).scaling
    }

    /// Changes the scaling settings live: more `min_instances` start now,
    /// instances beyond a lower limit stop as they become idle.
    pub fn set_scaling(&self, scaling: Scaling) {
        let mut state = lock(&self.inner.state);
        state.scaling = scaling;
        self.inner.rebalance(state);
        self.inner.changed.notify_waiters();
        self.inner.reaper_wake.notify_one();
    }

    /// Serves one request within the function's deadline.
    pub async fn invoke(&self, mut req: Request<Body>) -> Result<Served, InvokeError> {
        let timeout = self.inner.spec.limits.timeout();
        let deadline = Instant::now() + timeout;
        let timed_out = || InvokeError::Timeout {
            function: self.inner.spec.name.clone(),
            timeout,
        };
        let lease = self.inner.acquire(deadline).await?;
        req.extensions_mut().insert(Deadline(deadline));
        // The backend enforces the deadline itself (and kills what overran);
        // this is the backstop.
        let backstop = deadline + Duration::from_millis(250);
        let result = match tokio::time::timeout_at(backstop, lease.instance.invoke(req)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        };
        if !lease.instance.is_healthy() {
            let reason = match &result {
                Err(InvokeError::OutOfMemory { .. }) => StopReason::Oom,
                Err(InvokeError::Timeout { .. }) => StopReason::Timeout,
                _ => StopReason::Crash,
            };
            self.inner.remove(lease.slot, reason);
        }
        let cold_start = lease.cold.clone();
        // The lease is held, and the deadline kept, until the body is done.
        let response =
            result?.map(|body| Exchange::new(body, lease, deadline, timeout).boxed_unsync());
        Ok(Served {
            response,
            cold_start,
        })
    }

    /// Drains: requests in flight and queued finish here, then every
    /// instance stops with `reason`. Callers remove the pool from routing
    /// first.
    pub async fn retire(&self, reason: StopReason) {
        loop {
            let changed = self.inner.changed.notified();
            {
                let mut state = lock(&self.inner.state);
                state.retired = true;
                if state.leased == 0 && state.queue.is_empty() && state.starting == 0 {
                    break;
                }
            }
            changed.await;
        }
        let slots: Vec<Slot> = std::mem::take(&mut lock(&self.inner.state).slots);
        self.inner.report(&lock(&self.inner.state));
        self.inner.reaper_wake.notify_one();
        for slot in slots {
            self.inner.stop(slot, reason).await;
        }
    }
}

impl Inner {
    /// A lease on a free slot, waiting (and starting instances) as needed,
    /// until `deadline`.
    async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, InvokeError> {
        let timed_out = || InvokeError::Timeout {
            function: self.spec.name.clone(),
            timeout: self.spec.limits.timeout(),
        };
        let (mut rx, mut place, queued_past_max, queue_timeout) = {
            let mut state = lock(&self.state);
            if let Some(lease) = self.lease_free(&mut state) {
                self.report(&state);
                return Ok(lease);
            }
            let now = Instant::now();
            let at_max = state.slots.len() + state.starting >= state.scaling.max_instances;
            // With instances running, a host whose CPUs are saturated caps
            // the pool where it stands: another instance would not be fed.
            let held = !at_max && !state.slots.is_empty() && self.backend.saturated();
            let coming = state.starting * state.scaling.concurrency;
            let full = state.queue.len() >= coming + state.scaling.queue_size;
            // A full queue sheds once it stands (a burst drains, overload
            // does not); a queue of size 0 absorbs no burst.
            let standing = state.scaling.queue_size == 0 || state.queue_standing(now);
            if full && (at_max || held) && standing {
                let detail = if at_max {
                    format!(
                        "all {} instances are busy and {} requests are queued",
                        state.scaling.max_instances,
                        state.queue.len()
                    )
                } else {
                    format!(
                        "the host's CPUs are saturated, its {} instances are busy and {} requests are queued",
                        state.slots.len(),
                        state.queue.len()
                    )
                };
                return Err(InvokeError::QueueFull {
                    function: self.spec.name.clone(),
                    detail,
                });
            }
            // Waiting for an instance that is starting (or about to) is a
            // cold start, bounded by the deadline; waiting because every
            // instance is busy is queueing, bounded by the queue timeout too.
            let queued_past_max = (at_max || held) && state.queue.len() >= coming;
            let (tx, rx) = oneshot::channel();
            if state.queue.is_empty() {
                state.queued_since = Some(now);
            }
            let id = state.next_id;
            state.next_id += 1;
            state.queue.push_back(Waiter { id, tx });
            let queue_timeout = state.scaling.queue_timeout;
            self.rebalance(state);
            let place = Place {
                inner: self,
                id,
                waiting: true,
            };
            (rx, place, queued_past_max, queue_timeout)
        };
        let until = if queued_past_max {
            deadline.min(Instant::now() + queue_timeout)
        } else {
            deadline
        };
        let gone = || InvokeError::Capacity {
            function: self.spec.name.clone(),
            detail: "the function was removed while the request waited".into(),
        };
        let waited = tokio::time::timeout_at(until, &mut rx).await;
        // An answer (or the pool dropping the sender) took it off the queue.
        place.waiting = waited.is_err();
        match waited {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone()),
            Err(_) if until < deadline => Err(InvokeError::Capacity {
                function: self.spec.name.clone(),
                detail: format!(
                    "no instance became free within the queue timeout of {queue_timeout:?}"
                ),
            }),
            // A cold start that overran the deadline usually fails at the
            // same moment, with a better reason than "timed out".
            Err(_) => match tokio::time::timeout(Duration::from_millis(100), rx).await {
                Ok(Ok(Err(start_error))) => Err(start_error),
                // A lease that arrives now is dropped: the deadline passed.
                _ => Err(timed_out()),
            },
        }
    }

    /// Takes a slot of the busiest instance that still has room.
    fn lease_free(self: &Arc<Self>, state: &mut State) -> Option<Lease> {
        let slot = state
            .slots
            .iter_mut()
            .filter(|s| s.busy < s.capacity)
            .max_by_key(|s| (s.busy, s.idle_since))?;
        slot.busy += 1;
        let lease = Lease {
            pool: Arc::downgrade(self),
            slot: slot.id,
            instance: slot.instance.clone(),
            cold: None,
            armed: true,
        };
        state.leased += 1;
        Some(lease)
    }

    /// Hands free slots to queued requests, starts the instances the
    /// queue (or `min_instances`) needs, fails queued requests while cold
    /// starts back off, and reports.
    fn rebalance(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        // Free slots go to the front of the queue.
        loop {
            if state.queue.is_empty() {
                break;
            }
            let Some(slot_index) = state
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.busy < s.capacity)
                .max_by_key(|(_, s)| (s.busy, s.idle_since))
                .map(|(i, _)| i)
            else {
                break;
            };
            let Some(waiter) = state.queue.pop_front() else {
                break;
            };
            let slot = &mut state.slots[slot_index];
            slot.busy += 1;
            let lease = Lease {
                pool: Arc::downgrade(self),
                slot: slot.id,
                instance: slot.instance.clone(),
                cold: slot.cold.clone(),
                armed: true,
            };
            state.leased += 1;
            if let Err(Ok(mut lease)) = waiter.tx.send(Ok(lease)) {
                // It gave up just now: undo without re-entering the lock.
                lease.armed = false;
                state.leased -= 1;
                if let Some(slot) = state.slots.iter_mut().find(|s| s.id == lease.slot) {
                    slot.busy -= 1;
                }
            }
        }

        // Start what the queue needs beyond the capacity already coming.
        let scaling = state.scaling;
        let mut starts = 0;
        let now = Instant::now();
        let backing_off = state.backoff_until.is_some_and(|t| now < t);
        let mut recheck_at = None;
        let wanted = |state: &State| {
            state.queue.len() > state.starting * scaling.concurrency
                && state.slots.len() + state.starting < scaling.max_instances
        };
        if (!state.retired || !state.queue.is_empty()) && !backing_off && wanted(&state) {
            // From zero the pool starts all the queue needs at once (a
            // burst of first requests). With instances running, a queue
            // that drains sooner than an instance starts is no reason to
            // start one: the pool waits until the queue has stood as long as
            // its cold starts take, starts none while the host's CPUs are
            // saturated, and at most doubles per round of starts.
            // How many may be starting at once; zero holds the pool.
            let growth = if state.slots.is_empty() {
                usize::MAX
            } else {
                match state.queued_since.map(|since| since + state.start_estimate) {
                    Some(due) if now < due => {
                        recheck_at = Some(due);
                        0
                    }
                    _ if self.backend.saturated() => 0,
                    _ => state.slots.len(),
                }
            };
            while wanted(&state) && state.starting < growth {
                state.starting += 1;
                starts += 1;
            }
        }
        if !state.retired {
            while !backing_off && state.slots.len() + state.starting < scaling.min_instances {
                state.starting += 1;
                starts += 1;
            }
        }
        // While backing off, requests that no coming instance will serve
        // get the reason now rather than at their deadline.
        if backing_off && state.slots.is_empty() {
            let coming = state.starting * scaling.concurrency;
            while state.queue.len() > coming {
                let Some(waiter) = state.queue.pop_back() else {
                    break;
                };
                let _ = waiter.tx.send(Err(self.backoff_error(&state, now)));
            }
        }
        if state.queue.is_empty() {
            state.queued_since = None;
        }
        self.report(&state);
        // Instances beyond the minimum may idle out: the reaper watches.
        let reap = !state.retired && !state.reaping && state.slots.len() > scaling.min_instances;
        if reap {
            state.reaping = true;
        }
        let recheck = recheck_at.filter(|_| !state.rechecking);
        if recheck.is_some() {
            state.rechecking = true;
        }
        drop(state);
        if reap {
            tokio::spawn(reaper(Arc::downgrade(self), self.reaper_wake.clone()));
        }
        if let Some(at) = recheck {
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                if let Some(inner) = pool.upgrade() {
                    let mut state = lock(&inner.state);
                    state.rechecking = false;
                    inner.rebalance(state);
                }
            });
        }
        for _ in 0..starts {
            tokio::spawn(self.clone().start_one());
        }
        if starts == 0 {
            self.changed.notify_waiters();
        }
    }

    fn backoff_error(&self, state: &State, now: Instant) -> InvokeError {
        let retry_in = state
            .backoff_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let last = state
            .last_error
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        InvokeError::Capacity {
            function: self.spec.name.clone(),
            detail: format!(
                "its cold starts keep failing (next try in {retry_in:?}); last error: {last}"
            ),
        }
    }

    /// One cold start, outside any request (a request that gives up does
    /// not cancel an instance others may need).
    async fn start_one(self: Arc<Self>) {
        let started = Instant::now();
        let result = self.backend.start(&self.spec).await;
        let total = started.elapsed();
        let unwanted = match result {
            Ok(instance) => self.started(Arc::new(instance), total),
            Err(error) => {
                self.failed(error);
                None
            }
        };
        if let Some(instance) = unwanted {
            self.stop_instance(instance, StopReason::Deleted).await;
            self.changed.notify_waiters();
        }
    }

    /// A cold start succeeded; returns the instance if nobody wants it
    /// any more (the pool was retired meanwhile).
    fn started(
        self: &Arc<Self>,
        instance: Arc<Box<dyn Instance>>,
        total: Duration,
    ) -> Option<Arc<Box<dyn Instance>>> {
        let mut state = lock(&self.state);
        state.starting -= 1;
        state.failures = 0;
        state.backoff_until = None;
        state.start_estimate = (state.start_estimate * 3 + total) / 4;
        let cold = ColdStart {
            total,
            phases: instance.start_phases(),
        };
        tracing::info!(function = %self.spec.name, cold_start_ms = total.as_secs_f64() * 1e3, "instance started");
        if state.retired && state.queue.is_empty() {
            return Some(instance);
        }
        let id = state.next_id;
        state.next_id += 1;
        let capacity = state.scaling.concurrency.min(instance.concurrency()).max(1);
        state.slots.push(Slot {
            id,
            instance,
            busy: 0,
            capacity,
            idle_since: Instant::now(),
            cold: Some(cold),
        });
        self.rebalance(state);
        // Later requests to this instance are warm.
        if let Some(slot) = lock(&self.state).slots.iter_mut().find(|s| s.id == id) {
            slot.cold = None;
        }
        None
    }

    /// A cold start failed: back off, and fail the requests it was for.
    fn failed(self: &Arc<Self>, error: StartError) {
        let mut state = lock(&self.state);
        state.starting -= 1;
        state.failures += 1;
        let exp = state.failures.saturating_sub(1).min(9);
        let backoff = (Duration::from_millis(100) * 2u32.pow(exp)).min(Duration::from_secs(30));
        state.backoff_until = Some(Instant::now() + backoff);
        tracing::warn!(function = %self.spec.name, %error, ?backoff, "cold start failed");
        let coming = state.starting * state.scaling.concurrency;
        let free: usize = state.slots.iter().map(|s| s.capacity - s.busy).sum();
        while state.queue.len() > coming + free {
            let Some(waiter) = state.queue.pop_front() else {
                break;
            };
            let _ = waiter.tx.send(Err(InvokeError::Start(error.clone())));
        }
        state.last_error = Some(error);
        self.rebalance(state);
    }

    /// A lease ends.
    fn release(self: &Arc<Self>, slot_id: u64) {
        let mut state = lock(&self.state);
        state.leased -= 1;
        if let Some(slot) = state.slots.iter_mut().find(|s| s.id == slot_id) {
            slot.busy -= 1;
            if slot.busy == 0 {
                slot.idle_since = Instant::now();
            }
        }
        self.rebalance(state);
    }

    /// Takes an instance out of service (its handler died); it is freed
    /// when its last request lets go of it.
    fn remove(self: &Arc<Self>, slot_id: u64, reason: StopReason) {
        let mut state = lock(&self.state);
        let Some(i) = state.slots.iter().position(|s| s.id == slot_id) else {
            return;
        };
        state.slots.remove(i);
        tracing::info!(function = %self.spec.name, reason = reason.as_str(), "instance removed");
        self.events.stopped(reason);
        self.rebalance(state);
    }

    async fn stop(&self, slot: Slot, reason: StopReason) {
        self.stop_instance(slot.instance, reason).await;
    }

    async fn stop_instance(&self, instance: Arc<Box<dyn Instance>>, reason: StopReason) {
        self.events.stopped(reason);
        // Still referenced by a request that is finishing, it is dropped
        // (and its sandbox released) with that request instead.
        if let Ok(instance) = Arc::try_unwrap(instance) {
            instance.stop().await;
        }
    }

    fn report(&self, state: &State) {
        let busy = state.slots.iter().filter(|s| s.busy > 0).count();
        self.events
            .instances(state.starting, state.slots.len() - busy, busy);
        self.events.queue_depth(state.queue.len());
    }
}

/// Stops instances idle past `idle_timeout` (down to `min_instances`).
/// It runs while the pool has instances beyond its minimum, and sleeps
/// until the next one is due (or the scaling changes); then it ends, and
/// `rebalance` starts it again when there are.
async fn reaper(pool: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let (next, idle) = {
            let Some(inner) = pool.upgrade() else { return };
            let mut state = lock(&inner.state);
            if state.retired {
                state.reaping = false;
                return;
            }
            let scaling = state.scaling;
            let now = Instant::now();
            let mut idle = Vec::new();
            // Oldest idle first; never one with a request.
            state.slots.sort_by_key(|s| (s.busy, s.idle_since));
            while state.slots.len() > scaling.min_instances {
                let Some(first) = state.slots.first() else {
                    break;
                };
                let over_max = state.slots.len() > scaling.max_instances;
                if first.busy > 0
                    || (!over_max && now.duration_since(first.idle_since) < scaling.idle_timeout)
                {
                    break;
                }
                idle.push(state.slots.remove(0));
            }
            // The next instance due, or (all busy) one that goes idle now.
            let next = if state.slots.len() > scaling.min_instances {
                let due = state
                    .slots
                    .iter()
                    .filter(|s| s.busy == 0)
                    .map(|s| s.idle_since + scaling.idle_timeout)
                    .min()
                    .unwrap_or(now + scaling.idle_timeout);
                Some(due.max(now + REAPER_MIN_SLEEP))
            } else {
                state.reaping = false;
                None
            };
            inner.rebalance(state);
            (next, idle)
        };
        if let Some(inner) = pool.upgrade() {
            for slot in idle {
                tracing::info!(function = %inner.spec.name, "instance idle: stopping");
                inner.stop(slot, StopReason::Idle).await;
            }
        }
        let Some(next) = next else { return };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = wake.notified() => {}
        }
    }
}

/// Shortest sleep of the reaper, so that it never spins.
const REAPER_MIN_SLEEP: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests;
