//! The open-loop schedule of `--mode rate`: request i is due at
//! `start + i / rate`, whatever happened to the requests before it, and its
//! latency is measured from that due time — so a stall shows up in every
//! request it delayed instead of hiding (coordinated omission).
//!
//! Workers wait for due times on a [`Pacer`]. By default (`--pacing
//! group`) one `timerfd` per event loop ([`LoopTimer`]) fires at the first
//! due time and sends with it every request due within the next 0.5 ms;
//! those count their latency from when they went, so no request's latency
//! includes a wait of the bench's own. `exact` is the same timer with no
//! window (a timer interrupt per request: two to three times the bench's
//! CPU); `tick` is tokio's timer, which fires on 1-ms ticks and counts the
//! wait for the tick in every latency (`ping` at 1,000 req/s, one request
//! a millisecond: p50 1.19–1.34 ms, against 0.112 ms in a closed loop on
//! one connection), as wrk2 does.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How a worker waits for a due time.
pub enum Pacer {
    /// Its event loop's [`LoopTimer`].
    Precise(Arc<LoopTimer>),
    /// tokio's timer (1-ms ticks; the only one that follows a paused test
    /// clock).
    Coarse,
}

impl Pacer {
    /// Returns when the request due at `due` may go, and the instant its
    /// latency counts from: `due`, or the moment it went if that was
    /// earlier (a [`LoopTimer`] with a window sends ahead of time).
    pub async fn until(&self, due: Instant) -> std::io::Result<Instant> {
        match self {
            Pacer::Coarse => {
                tokio::time::sleep_until(due).await;
                Ok(due)
            }
            Pacer::Precise(timer) => timer.until(due).await,
        }
    }
}

/// One `timerfd` for every worker of an event loop. A wait is an entry in
/// `waiting`; the timer is armed for the earliest, and a driver task on the
/// loop, once it fires, releases every wait whose time has come (and,
/// with a `window`, those due soon after). The first version armed a
/// `timerfd` per worker: 29.5 µs of the bench's CPU per request at 25k
/// req/s against tokio's timer's 10.4. Sharing the timer alone did not
/// help (34.5 µs): each expiry is a timer interrupt, dear in a VM; the
/// window, which lets the timer fire less often, did (12.3 µs at 0.5 ms).
pub struct LoopTimer {
    timer: TimerFd,
    /// When the timer fires, the waits due within this much longer go too.
    window: Duration,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// By due time, then arrival (two workers may wait for the same time).
    /// Whenever it is not empty the timer is set for its first entry.
    due: BTreeMap<(Instant, u64), oneshot::Sender<()>>,
    next: u64,
}

impl LoopTimer {
    /// A timer for the current event loop, its driver spawned there (needs
    /// a tokio runtime with I/O, and two descriptors). When it fires it
    /// releases the waits due within `window` as well (zero: each at its
    /// due time, never before).
    pub fn start(window: Duration) -> std::io::Result<Arc<LoopTimer>> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let watched = wisp_runner::container::async_fd(timer.as_fd().try_clone_to_owned()?)?;
        let shared = Arc::new(LoopTimer {
            timer,
            window,
            waiting: Mutex::default(),
        });
        tokio::spawn(drive(Arc::downgrade(&shared), watched));
        Ok(shared)
    }

    /// Returns at `due` (at once if it has passed), or up to `window`
    /// before it, with the instant the request's latency counts from:
    /// `due`, or now if that is earlier.
    pub async fn until(&self, due: Instant) -> std::io::Result<Instant> {
        let now = Instant::now();
        if due <= now + self.window {
            return Ok(due.min(now));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.lock();
            // A due time that has not passed is never before one that has
            // fired: re-arming only ever brings the timer forward.
            if waiting
                .due
                .keys()
                .next()
                .is_none_or(|&(first, _)| due < first)
            {
                self.arm(due, now)?;
            }
            let key = (due, waiting.next);
            waiting.next += 1;
            waiting.due.insert(key, tx);
        }
        rx.await
            .map_err(|_| std::io::Error::other("the bench's loop timer stopped"))?;
        Ok(due.min(Instant::now()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the timer to fire at `at`, which is after `now`.
    fn arm(&self, at: Instant, now: Instant) -> std::io::Result<()> {
        let wait = TimeSpec::from_duration(
            at.saturating_duration_since(now)
                .max(Duration::from_nanos(1)),
        );
        self.timer
            .set(Expiration::OneShot(wait), TimerSetTimeFlags::empty())?;
        Ok(())
    }

    /// Releases every wait due by now and arms the timer for the next.
    fn fire(&self) {
        let now = Instant::now();
        let released = {
            let mut waiting = self.lock();
            let later = waiting.due.split_off(&(now + self.window, u64::MAX));
            let released = std::mem::replace(&mut waiting.due, later);
            if let Some(&(at, _)) = waiting.due.keys().next() {
                // Should the timer fail, the waits it leaves fail with it.
                if self.arm(at, now).is_err() {
                    waiting.due.clear();
                }
            }
            released
        };
        for tx in released.into_values() {
            let _ = tx.send(());
        }
    }
}

/// The loop's side of a [`LoopTimer`]: waits for it to fire, until the
/// timer is gone (or the loop ends).
async fn drive(timer: Weak<LoopTimer>, watched: AsyncFd<OwnedFd>) {
    loop {
        let Ok(mut ready) = watched.readable().await else {
            return;
        };
        let Some(timer) = timer.upgrade() else {
            return;
        };
        // Read the expiry count; not expired (re-armed since) reads
        // EAGAIN, which clears the readiness until it does.
        match ready.try_io(|_| timer.timer.wait().map_err(std::io::Error::from)) {
            Ok(_) => timer.fire(),
            Err(_would_block) => continue,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
}

impl Schedule {
    /// `rate` requests per second from `start`; `rate` must be positive.
    pub fn new(start: Instant, rate: f64) -> Schedule {
        Schedule {
            start,
            interval: Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE)),
        }
    }

    /// When request `i` is due.
    pub fn due(&self, i: u64) -> Instant {
        let offset = self.interval.as_secs_f64() * i as f64;
        self.start + Duration::from_secs_f64(offset)
    }
}

/// One worker of the open loop: it takes the next request number from
/// `next`, waits for its due time, sends it and waits for the answer, until
/// `end` (or `limit` requests); `send` gets the due time and returns what
/// the caller records. Workers share `next`, so at most one request per
/// worker is in flight; a request due while every worker is busy goes out
/// late, and its latency, counted from the due time, shows the wait.
pub async fn run_worker<F, Fut, T>(
    schedule: Schedule,
    end: Instant,
    limit: Option<u64>,
    next: &AtomicU64,
    pacer: &Pacer,
    mut send: F,
) -> std::io::Result<Vec<T>>
where
    F: FnMut(Instant) -> Fut,
    Fut: Future<Output = T>,
{
    let mut results = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if limit.is_some_and(|n| i >= n) {
            break;
        }
        let due = schedule.due(i);
        if due >= end {
            break;
        }
        let since = pacer.until(due).await?;
        results.push(send(since).await);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `workers` workers of the schedule; returns (sent late by,
    /// latency) per request, in no particular order.
    async fn run(
        schedule: Schedule,
        end: Instant,
        limit: Option<u64>,
        workers: usize,
        answer_after: Duration,
    ) -> Vec<(Duration, Duration)> {
        let next = std::sync::Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let next = next.clone();
                tokio::spawn(async move {
                    run_worker(
                        schedule,
                        end,
                        limit,
                        &next,
                        &Pacer::Coarse,
                        |due| async move {
                            let sent = Instant::now();
                            tokio::time::sleep(answer_after).await;
                            (sent - due, Instant::now() - due)
                        },
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.extend(task.await.unwrap());
        }
        results
    }

    #[tokio::test(start_paused = true)]
    async fn requests_go_out_on_time_and_latency_counts_from_the_due_time() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 100.0);
        assert_eq!(schedule.due(3) - start, Duration::from_millis(30));
        // Every answer takes 50 ms: 5 in flight at a time, 8 workers.
        let ms = Duration::from_millis;
        let results = run(schedule, start + ms(1_000), None, 8, ms(50)).await;
        assert_eq!(results.len(), 100);
        assert!(results.iter().all(|(late, _)| *late < ms(1)));
        assert!(results.iter().all(|(_, latency)| *latency >= ms(50)));
        let limited = run(schedule, start + ms(100_000), Some(7), 8, ms(1)).await;
        assert_eq!(limited.len(), 7);
    }

    #[tokio::test]
    async fn the_loop_timer_releases_each_wait_at_its_due_time_never_before() {
        let timer = LoopTimer::start(Duration::ZERO).unwrap();
        // Waits in and out of order, some due together, some passed.
        let offsets = [300, 0, 2_500, 50, 50, 1_200, 700, 5, 3_000, 10];
        let waits: Vec<_> = offsets
            .iter()
            .map(|&micros| {
                let timer = timer.clone();
                let due = Instant::now() + Duration::from_micros(micros);
                tokio::spawn(async move {
                    let since = timer.until(due).await.unwrap();
                    let now = Instant::now();
                    (now >= due && since == due, now - due)
                })
            })
            .collect();
        for wait in waits {
            // Not before its due time; released within a generous bound
            // on a loaded host.
            let (not_early, late) = wait.await.unwrap();
            assert!(not_early);
            assert!(late < Duration::from_millis(500), "{late:?}");
        }
        // A due time that has passed returns at once.
        timer
            .until(Instant::now() - Duration::from_millis(5))
            .await
            .unwrap();
        // And the timer keeps working after it went quiet.
        let due = Instant::now() + Duration::from_micros(200);
        timer.until(due).await.unwrap();
        assert!(Instant::now() >= due);
    }

    #[tokio::test]
    async fn with_a_window_the_loop_timer_sends_what_is_due_soon_with_the_first() {
        let window = Duration::from_millis(50);
        let timer = LoopTimer::start(window).unwrap();
        let first = Instant::now() + Duration::from_millis(100);
        let soon = first + Duration::from_millis(30);
        let later = first + Duration::from_millis(200);
        let wait = |due: Instant| {
            let timer = timer.clone();
            tokio::spawn(async move {
                let since = timer.until(due).await.unwrap();
                (since, Instant::now())
            })
        };
        let (first_wait, soon_wait, later_wait) = (wait(first), wait(soon), wait(later));
        let (since, went) = first_wait.await.unwrap();
        assert_eq!(since, first);
        assert!(went >= first);
        // Due 30 ms after the first: it went early, with the first, and
        // its latency counts from then, not from its due time.
        let (since, went) = soon_wait.await.unwrap();
        assert!(went < soon, "{:?} late", went - soon);
        assert!(since <= went && since >= first);
        // 200 ms after it, beyond the window: a wake of its own.
        let (since, went) = later_wait.await.unwrap();
        assert!(went >= later - window);
        assert!(since <= later && since >= later - window);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_due_while_every_worker_is_busy_count_their_wait() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        // 50 requests due in 500 ms, one worker, 50 ms each: the last goes
        // out 2 s late, and its latency says so.
        let schedule = Schedule::new(start, 100.0);
        let results = run(schedule, start + ms(500), None, 1, ms(50)).await;
        assert_eq!(results.len(), 50);
        let (late, latency) = results[49];
        assert!(late >= ms(1_900), "{late:?}");
        assert_eq!(latency, late + ms(50));
    }
}
