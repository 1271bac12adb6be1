//! The open-loop schedule of `--mode rate`: request i is due at
//! `start + i / rate`, whatever happened to the requests before it, and its
//! latency is measured from that due time — so a stall shows up in every
//! request it delayed instead of hiding (coordinated omission).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

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
    mut send: F,
) -> Vec<T>
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
        tokio::time::sleep_until(due).await;
        results.push(send(due).await);
    }
    results
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
                    run_worker(schedule, end, limit, &next, |due| async move {
                        let sent = Instant::now();
                        tokio::time::sleep(answer_after).await;
                        (sent - due, Instant::now() - due)
                    })
                    .await
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
