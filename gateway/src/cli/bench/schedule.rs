//! The open-loop schedule of `--mode rate`: request i is due at
//! `start + i / rate`, whatever happened to the requests before it, and its
//! latency is measured from that due time — so a stall shows up in every
//! request it delayed instead of hiding (coordinated omission).
//!
//! Workers wait for due times on a [`Pacer`]: tokio's timer by default
//! (`--pacing tick`), which fires on 1-ms ticks and so adds its wait to
//! every latency (`ping` at 1,000 req/s, one request a millisecond: p50
//! 1.19–1.34 ms, against 0.112 ms in a closed loop on one connection), or a
//! `timerfd` per worker (`--pacing exact`: p50 0.135–0.138 ms), which wakes
//! the bench, and the server, once per request (at 10k req/s on this
//! host: the bench's CPU per request 40 µs against 19, the server's 48–52
//! against 34).

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// How a worker waits for a due time.
pub enum Pacer {
    /// A `timerfd` of its own, armed for each wait; `watched` is the same
    /// timer, registered with tokio's reactor.
    Precise {
        timer: TimerFd,
        watched: AsyncFd<OwnedFd>,
    },
    /// tokio's timer (1-ms ticks; the only one that follows a paused test
    /// clock).
    Coarse,
}

impl Pacer {
    /// A precise pacer; needs a tokio runtime with I/O, and two descriptors.
    pub fn precise() -> std::io::Result<Pacer> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let watched = wisp_runner::container::async_fd(timer.as_fd().try_clone_to_owned()?)?;
        Ok(Pacer::Precise { timer, watched })
    }

    /// Returns at `due` (at once if it has passed), never before it.
    pub async fn until(&mut self, due: Instant) -> std::io::Result<()> {
        let (timer, watched) = match self {
            Pacer::Coarse => {
                tokio::time::sleep_until(due).await;
                return Ok(());
            }
            Pacer::Precise { timer, watched } => (timer, watched),
        };
        loop {
            let now = Instant::now();
            if due <= now {
                return Ok(());
            }
            let wait = TimeSpec::from_duration(due - now);
            timer.set(Expiration::OneShot(wait), TimerSetTimeFlags::empty())?;
            let mut ready = watched.readable().await?;
            // Read the expiry count; not expired yet reads EAGAIN, which
            // clears the readiness, and the timer is armed again.
            if let Ok(read) = ready.try_io(|_| timer.wait().map_err(std::io::Error::from)) {
                read?;
            }
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
    pacer: &mut Pacer,
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
        pacer.until(due).await?;
        results.push(send(due).await);
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
                        &mut Pacer::Coarse,
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
    async fn the_exact_pacer_returns_at_the_due_time_never_before() {
        let mut pacer = Pacer::precise().unwrap();
        for micros in [0, 300, 2_500, 50] {
            let due = Instant::now() + Duration::from_micros(micros);
            pacer.until(due).await.unwrap();
            assert!(Instant::now() >= due);
        }
        // A due time that has passed returns at once.
        let past = Instant::now() - Duration::from_millis(5);
        pacer.until(past).await.unwrap();
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
