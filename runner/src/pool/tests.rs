//! Policy tests of the pool against a fake backend whose starts and
//! requests take controlled (paused-clock) time, fail or hang.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::{Request, Response, StatusCode};
use proptest::prelude::*;

use super::*;
use crate::backend::{
    Backend, Body, Cause, Instance, InvokeError, PrepareError, Prepared, StartError, empty_body,
};
use crate::spec::{Digest, FunctionKind, FunctionName, FunctionSpec, Limits, ScalingSpec};

/// A backend whose instances answer after `x-sleep-ms` milliseconds.
#[derive(Default)]
struct Fake {
    start_delay: Mutex<Duration>,
    /// Starts that fail before one succeeds again.
    failing_starts: AtomicUsize,
    starts: AtomicUsize,
    live: Arc<AtomicUsize>,
    /// Most requests ever in flight on one instance.
    max_busy: Arc<AtomicUsize>,
    /// What `saturated` answers: the host's CPUs are all busy.
    saturated: AtomicBool,
}

struct FakeInstance {
    healthy: AtomicBool,
    busy: AtomicUsize,
    live: Arc<AtomicUsize>,
    max_busy: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

#[async_trait]
impl Backend for Fake {
    async fn prepare(&self, _: &Digest) -> Result<Prepared, PrepareError> {
        Ok(Prepared {
            kind: FunctionKind::Container,
            image: None,
            lambda_bootstrap: None,
        })
    }

    async fn start(&self, spec: &FunctionSpec) -> Result<Box<dyn Instance>, StartError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        let delay = *self.start_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if self
            .failing_starts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StartError::Sandbox {
                function: spec.name.clone(),
                cause: Cause::new(std::io::Error::other("the fake refuses")),
            });
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeInstance {
            healthy: AtomicBool::new(true),
            busy: AtomicUsize::new(0),
            live: self.live.clone(),
            max_busy: self.max_busy.clone(),
            stopped: Arc::new(AtomicBool::new(false)),
        }))
    }

    fn saturated(&self) -> bool {
        self.saturated.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Instance for FakeInstance {
    async fn invoke(&self, req: Request<Body>) -> Result<Response<Body>, InvokeError> {
        assert!(
            !self.stopped.load(Ordering::SeqCst),
            "a stopped instance got a request"
        );
        let busy = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_busy.fetch_max(busy, Ordering::SeqCst);
        let ms: u64 = req
            .headers()
            .get("x-sleep-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(10);
        let crash = req.headers().contains_key("x-crash");
        let deadline = req.extensions().get::<Deadline>().map(|d| d.0);
        let sleep = tokio::time::sleep(Duration::from_millis(ms));
        let timed_out = match deadline {
            Some(d) => tokio::time::timeout_at(d, sleep).await.is_err(),
            None => {
                sleep.await;
                false
            }
        };
        self.busy.fetch_sub(1, Ordering::SeqCst);
        if timed_out {
            self.healthy.store(false, Ordering::SeqCst);
            return Err(InvokeError::Timeout {
                function: FunctionName::new("f").unwrap(),
                timeout: Duration::ZERO,
            });
        }
        if crash {
            self.healthy.store(false, Ordering::SeqCst);
            return Err(InvokeError::BadResponse {
                function: FunctionName::new("f").unwrap(),
                detail: "crashed".into(),
            });
        }
        Ok(Response::new(empty_body()))
    }

    fn concurrency(&self) -> usize {
        usize::MAX
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    async fn stop(self: Box<Self>) {
        assert_eq!(self.busy.load(Ordering::SeqCst), 0, "stopped while busy");
        self.stopped.store(true, Ordering::SeqCst);
    }
}

impl Drop for FakeInstance {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spec(scaling: ScalingSpec) -> FunctionSpec {
    FunctionSpec {
        name: FunctionName::new("f").unwrap(),
        artifact: Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap(),
        kind: FunctionKind::Container,
        env: Default::default(),
        labels: Default::default(),
        annotations: Default::default(),
        limits: Limits {
            timeout_ms: 5_000,
            ..Limits::default()
        },
        allow_outbound: vec![],
        container: None,
        scaling,
        source: None,
        namespace: None,
        secrets: vec![],
        secrets_dir: None,
    }
}

#[derive(Default)]
struct Counting {
    stops: Mutex<Vec<StopReason>>,
    max_queue: AtomicUsize,
    queue: AtomicUsize,
}

impl PoolEvents for Counting {
    fn queue_depth(&self, depth: usize) {
        self.max_queue.fetch_max(depth, Ordering::SeqCst);
        self.queue.store(depth, Ordering::SeqCst);
    }
    fn stopped(&self, reason: StopReason) {
        self.stops.lock().unwrap().push(reason);
    }
}

fn pool(fake: &Arc<Fake>, scaling: ScalingSpec) -> (Arc<Pool>, Arc<Counting>) {
    let events = Arc::new(Counting::default());
    let pool = Pool::new(spec(scaling), fake.clone(), events.clone());
    (Arc::new(pool), events)
}

fn request(sleep_ms: u64) -> Request<Body> {
    Request::builder()
        .header("x-sleep-ms", sleep_ms.to_string())
        .body(empty_body())
        .unwrap()
}

async fn call(pool: &Arc<Pool>, sleep_ms: u64) -> Result<Served, InvokeError> {
    let mut served = pool.invoke(request(sleep_ms)).await?;
    // Read the body, as a client does: the request holds its slot until then.
    let body = std::mem::replace(served.response.body_mut(), crate::backend::empty_body());
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .expect("a body")
        .to_bytes();
    *served.response.body_mut() = crate::backend::full_body(bytes);
    Ok(served)
}

fn fake(start_ms: u64) -> Arc<Fake> {
    let fake = Fake::default();
    *fake.start_delay.lock().unwrap() = Duration::from_millis(start_ms);
    Arc::new(fake)
}

#[tokio::test(start_paused = true)]
async fn scales_from_zero_and_the_first_request_is_cold() {
    let fake = fake(50);
    let (pool, _) = pool(&fake, ScalingSpec::default());
    assert_eq!(pool.instances(), 0);
    let first = call(&pool, 10).await.unwrap();
    assert_eq!(first.response.status(), StatusCode::OK);
    let cold = first.cold_start.expect("cold");
    assert_eq!(cold.total, Duration::from_millis(50));
    let second = call(&pool, 10).await.unwrap();
    assert!(second.cold_start.is_none(), "the second request is warm");
    assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_burst_starts_only_the_instances_it_needs_and_shares_them() {
    let fake = fake(100);
    let (pool, _) = pool(
        &fake,
        ScalingSpec {
            concurrency: Some(4),
            max_instances: Some(10),
            ..Default::default()
        },
    );
    let calls = spawn_calls(&pool, 10, 20);
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().response.status(), StatusCode::OK);
    }
    assert_eq!(fake.starts.load(Ordering::SeqCst), 3, "⌈10 / 4⌉ instances");
    assert!(fake.max_busy.load(Ordering::SeqCst) <= 4);
}

#[tokio::test(start_paused = true)]
async fn past_max_requests_queue_then_429_when_the_queue_is_full() {
    let fake = fake(10);
    let (pool, events) = pool(
        &fake,
        ScalingSpec {
            concurrency: Some(1),
            max_instances: Some(2),
            queue_size: Some(3),
            ..Default::default()
        },
    );
    let calls = spawn_calls(&pool, 5, 400);
    tokio::time::sleep(Duration::from_millis(1)).await;
    // 2 starting + 3 queued, the queue full: a burst still queues...
    let burst = spawn_calls(&pool, 1, 1);
    // ...but once the queue has stood 250 ms, the excess is refused.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let refused = call(&pool, 1).await;
    assert!(
        matches!(refused, Err(InvokeError::QueueFull { .. })),
        "{:?}",
        refused.err()
    );
    for c in calls.into_iter().chain(burst) {
        assert!(c.await.unwrap().is_ok());
    }
    assert_eq!(fake.starts.load(Ordering::SeqCst), 2);
    assert_eq!(events.max_queue.load(Ordering::SeqCst), 6);
}

/// Starts `n` requests of `sleep_ms` each, in tasks.
fn spawn_calls(
    pool: &Arc<Pool>,
    n: usize,
    sleep_ms: u64,
) -> Vec<tokio::task::JoinHandle<Result<Served, InvokeError>>> {
    (0..n)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { call(&pool, sleep_ms).await })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_saturated_host_holds_a_running_pool_and_sheds_only_a_standing_queue() {
    let fake = fake(10);
    let (pool, _) = pool(
        &fake,
        ScalingSpec {
            concurrency: Some(1),
            max_instances: Some(100),
            queue_size: Some(3),
            ..Default::default()
        },
    );
    call(&pool, 1).await.unwrap();
    fake.saturated.store(true, Ordering::SeqCst);
    // A burst on the one instance: it queues, however long, and starts
    // nothing the host could not feed.
    let burst = spawn_calls(&pool, 6, 100);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
    // The queue has stood for 250 ms: past its size, the excess is shed.
    tokio::time::sleep(Duration::from_millis(260)).await;
    let shed = call(&pool, 1).await;
    assert!(
        matches!(&shed, Err(InvokeError::QueueFull { detail, .. }) if detail.contains("saturated")),
        "{:?}",
        shed.err()
    );
    for c in burst {
        assert!(c.await.unwrap().is_ok(), "the burst is served");
    }
    // Unsaturated again, a queue starts instances once more.
    fake.saturated.store(false, Ordering::SeqCst);
    for c in spawn_calls(&pool, 4, 100) {
        assert!(c.await.unwrap().is_ok());
    }
    assert!(fake.starts.load(Ordering::SeqCst) > 1);
}

#[tokio::test(start_paused = true)]
async fn from_zero_a_burst_starts_what_it_needs_even_on_a_saturated_host() {
    let fake = fake(10);
    let (pool, _) = pool(
        &fake,
        ScalingSpec {
            concurrency: Some(2),
            max_instances: Some(100),
            ..Default::default()
        },
    );
    fake.saturated.store(true, Ordering::SeqCst);
    for c in spawn_calls(&pool, 10, 20) {
        assert!(c.await.unwrap().is_ok());
    }
    assert_eq!(fake.starts.load(Ordering::SeqCst), 5, "⌈10 / 2⌉ instances");
}

#[tokio::test(start_paused = true)]
async fn with_instances_running_a_queue_starts_instances_once_it_stands_and_at_most_doubling() {
    let fake = fake(10);
    let (pool, _) = pool(
        &fake,
        ScalingSpec {
            concurrency: Some(1),
            max_instances: Some(100),
            ..Default::default()
        },
    );
    call(&pool, 1).await.unwrap();
    // A queue that would drain before an instance started starts none.
    for c in spawn_calls(&pool, 2, 2) {
        assert!(c.await.unwrap().is_ok());
    }
    assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
    // A queue that stands as long as a cold start (the estimate is now
    // 6.25 ms) does, doubling the instances per round of 10 ms starts.
    let calls = spawn_calls(&pool, 20, 1_000);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(fake.starts.load(Ordering::SeqCst), 1, "the queue is young");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        fake.starts.load(Ordering::SeqCst),
        2,
        "1 running, 1 starting"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        fake.starts.load(Ordering::SeqCst),
        4,
        "2 running, 2 starting"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        fake.starts.load(Ordering::SeqCst),
        20,
        "one per queued request"
    );
    for c in calls {
        assert!(c.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_gives_up_after_the_queue_timeout_with_503() {
    let fake = fake(10);
    let (pool, _) = pool(
        &fake,
        ScalingSpec {
            concurrency: Some(1),
            max_instances: Some(1),
            queue_timeout_ms: Some(200),
            ..Default::default()
        },
    );
    let busy = {
        let pool = pool.clone();
        tokio::spawn(async move { call(&pool, 1_000).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waited = call(&pool, 1).await;
    assert!(
        matches!(waited, Err(InvokeError::Capacity { .. })),
        "{:?}",
        waited.err()
    );
    assert!(busy.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_request_that_stops_waiting_leaves_the_queue_at_once() {
    let fake = fake(10);
    let (pool, events) = pool(
        &fake,
        ScalingSpec {
            concurrency: Some(1),
            max_instances: Some(1),
            queue_size: Some(2),
            ..Default::default()
        },
    );
    let busy = spawn_calls(&pool, 1, 1_000);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Two requests fill the queue and it stands; then their clients go.
    let gone = spawn_calls(&pool, 2, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events.queue.load(Ordering::SeqCst), 2);
    for call in gone {
        call.abort();
        assert!(call.await.is_err_and(|e| e.is_cancelled()));
    }
    assert_eq!(events.queue.load(Ordering::SeqCst), 0);
    // Their places are free: the next request waits its turn, no 429.
    let next = call(&pool, 1).await;
    assert!(next.is_ok(), "{:?}", next.err());
    for call in busy {
        assert!(call.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_queueing_and_handling() {
    let fake = fake(10);
    let (pool, _) = pool(&fake, ScalingSpec::default());
    // The fake's handler outlives the 5 s deadline.
    let late = call(&pool, 10_000).await;
    assert!(
        matches!(late, Err(InvokeError::Timeout { .. })),
        "{:?}",
        late.err()
    );
    // Its instance timed out: it is replaced by the next request.
    assert!(call(&pool, 1).await.unwrap().cold_start.is_some());
}

#[tokio::test(start_paused = true)]
async fn idle_instances_stop_but_never_during_a_request() {
    let fake = fake(10);
    let (pool, events) = pool(
        &fake,
        ScalingSpec {
            idle_timeout_ms: Some(1_000),
            ..Default::default()
        },
    );
    // A request much longer than the idle timeout keeps its instance.
    call(&pool, 3_000).await.unwrap();
    assert_eq!(pool.instances(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.instances(), 1, "not idle long enough yet");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(pool.instances(), 0, "scaled to zero");
    assert_eq!(*events.stops.lock().unwrap(), [StopReason::Idle]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_pool_has_no_task_and_no_timer() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let fake = fake(10);
    let scaling = ScalingSpec {
        idle_timeout_ms: Some(1_000),
        ..Default::default()
    };
    let pools: Vec<_> = (0..100).map(|_| pool(&fake, scaling).0).collect();
    assert_eq!(metrics.num_alive_tasks(), 0, "a pool at zero runs nothing");
    // An instance brings its reaper, which ends when the instance does.
    call(&pools[0], 10).await.unwrap();
    assert_eq!(metrics.num_alive_tasks(), 1, "one reaper");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(pools[0].instances(), 0, "scaled to zero");
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), 0, "the reaper ended");
}

#[tokio::test(start_paused = true)]
async fn min_instances_are_pre_warmed_and_replaced() {
    let fake = fake(10);
    let (pool, _) = pool(
        &fake,
        ScalingSpec {
            min_instances: Some(2),
            idle_timeout_ms: Some(100),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.instances(), 2, "started at creation");
    assert!(
        call(&pool, 1).await.unwrap().cold_start.is_none(),
        "warm from the first request"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pool.instances(), 2, "never below the minimum");
    // A crash takes one out; it is replaced.
    let crashed = pool
        .invoke(
            Request::builder()
                .header("x-crash", "1")
                .body(empty_body())
                .unwrap(),
        )
        .await;
    assert!(crashed.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.instances(), 2);
    assert_eq!(fake.starts.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn failing_cold_starts_back_off_and_say_why() {
    let fake = fake(10);
    fake.failing_starts.store(3, Ordering::SeqCst);
    let (pool, _) = pool(&fake, ScalingSpec::default());
    let first = call(&pool, 1).await;
    assert!(
        matches!(&first, Err(InvokeError::Start(e)) if e.to_string().contains("the fake refuses")),
        "{:?}",
        first.err()
    );
    // Within the back-off, no new start: the reason comes back at once.
    let second = call(&pool, 1).await;
    let text = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains("keep failing") && text.contains("the fake refuses"),
        "{text}"
    );
    assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
    // Later tries back off longer: 100 ms, 200 ms, then success.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(call(&pool, 1).await.is_err());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(call(&pool, 1).await.is_err());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(call(&pool, 1).await.is_ok());
    assert_eq!(fake.starts.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn retire_drains_requests_then_stops_every_instance() {
    let fake = fake(10);
    let (pool, events) = pool(&fake, ScalingSpec::default());
    let long = {
        let pool = pool.clone();
        tokio::spawn(async move { call(&pool, 2_000).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retiring = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.retire(StopReason::Deleted).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!retiring.is_finished(), "waits for the request in flight");
    assert!(
        long.await.unwrap().is_ok(),
        "the request finishes on the old version"
    );
    retiring.await.unwrap();
    assert_eq!(pool.instances(), 0);
    assert_eq!(fake.live.load(Ordering::SeqCst), 0);
    assert_eq!(*events.stops.lock().unwrap(), [StopReason::Deleted]);
}

#[tokio::test(start_paused = true)]
async fn scaling_changes_apply_live() {
    let fake = fake(10);
    let (pool, _) = pool(&fake, ScalingSpec::default());
    let mut scaling = pool.scaling();
    scaling.min_instances = 3;
    pool.set_scaling(scaling);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.instances(), 3);
    scaling.min_instances = 0;
    scaling.idle_timeout = Duration::from_millis(100);
    pool.set_scaling(scaling);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pool.instances(), 0);
}

#[derive(Debug, Clone)]
enum Step {
    /// Send a request that takes this many ms.
    Request(u64),
    /// Let this many ms pass.
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u64..400).prop_map(Step::Request),
        (1u64..800).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// For random interleavings of requests, completions and idle time: no
    /// instance is stopped while busy (the fake asserts it), the instance
    /// count stays within [min, max], no instance takes more than its
    /// concurrency, and every request gets exactly one answer.
    #[test]
    fn the_pool_keeps_its_invariants(
        steps in proptest::collection::vec(step(), 1..40),
        min in 0u32..3,
        extra in 0u32..3,
        concurrency in 1u32..4,
        start_ms in 0u64..200,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let max = min.max(1) + extra;
            let fake = fake(start_ms);
            let (pool, _) = pool(&fake, ScalingSpec {
                min_instances: Some(min),
                max_instances: Some(max),
                concurrency: Some(concurrency),
                idle_timeout_ms: Some(300),
                queue_size: Some(1_000),
                ..Default::default()
            });
            let mut calls = Vec::new();
            for step in steps {
                match step {
                    Step::Request(ms) => {
                        let pool = pool.clone();
                        calls.push(tokio::spawn(async move { call(&pool, ms).await }));
                    }
                    Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                }
                let live = fake.live.load(Ordering::SeqCst);
                prop_assert!(live <= max as usize, "{live} instances, max {max}");
            }
            let n = calls.len();
            let mut answered = 0;
            for c in calls {
                let result = c.await.unwrap();
                prop_assert!(result.is_ok(), "{:?}", result.err());
                answered += 1;
            }
            prop_assert_eq!(answered, n);
            prop_assert!(fake.max_busy.load(Ordering::SeqCst) <= concurrency as usize);
            tokio::time::sleep(Duration::from_secs(5)).await;
            let live = fake.live.load(Ordering::SeqCst);
            prop_assert_eq!(live, min as usize, "back to the minimum when idle");
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_holds_its_slot_until_its_body_is_done() {
    let fake = fake(10);
    let (pool, _) = pool(
        &fake,
        ScalingSpec {
            max_instances: Some(1),
            concurrency: Some(1),
            ..Default::default()
        },
    );
    let unread = pool.invoke(request(10)).await.unwrap();
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move { call(&pool, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the slot is still held by the unread body"
    );
    drop(unread);
    assert!(second.await.unwrap().is_ok());
    assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
}
