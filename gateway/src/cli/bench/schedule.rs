//! The open-loop schedule of `--mode rate`: request i is due at
//! `start + i / rate`, whatever happened to the requests before it, and its
//! latency is measured from that due time — so a stall shows up in every
//! request it delayed instead of hiding (coordinated omission).

use std::future::Future;
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

/// Runs the schedule until `end` (or `limit` requests): each request is
/// sent at its due time as its own task; `send` gets the due time and
/// returns what the caller records. Returns the results in order.
pub async fn run_open_loop<F, Fut, T>(
    schedule: Schedule,
    end: Instant,
    limit: Option<u64>,
    mut send: F,
) -> Vec<T>
where
    F: FnMut(Instant) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = Vec::new();
    for i in 0.. {
        if limit.is_some_and(|n| i >= n) {
            break;
        }
        let due = schedule.due(i);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        tasks.push(tokio::spawn(send(due)));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(result) = task.await {
            results.push(result);
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_go_out_on_time_and_latency_counts_from_the_due_time() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 100.0);
        assert_eq!(schedule.due(3) - start, Duration::from_millis(30));
        // Every answer takes 50 ms; the schedule does not wait for them.
        let results = run_open_loop(
            schedule,
            start + Duration::from_secs(1),
            None,
            |due| async move {
                let sent = Instant::now();
                tokio::time::sleep(Duration::from_millis(50)).await;
                (sent - due, Instant::now() - due)
            },
        )
        .await;
        assert_eq!(results.len(), 100);
        assert!(
            results
                .iter()
                .all(|(late, _)| *late < Duration::from_millis(1))
        );
        assert!(
            results
                .iter()
                .all(|(_, latency)| *latency >= Duration::from_millis(50))
        );
        let limited = run_open_loop(
            schedule,
            start + Duration::from_secs(100),
            Some(7),
            |_| async {},
        )
        .await;
        assert_eq!(limited.len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_sender_makes_the_delay_visible() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 10.0);
        // The caller blocks 300 ms once (a stall) before the schedule runs:
        // the first requests are late, and their latency says so.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let results = run_open_loop(
            schedule,
            start + Duration::from_millis(500),
            None,
            |due| async move { Instant::now() - due },
        )
        .await;
        assert_eq!(results.len(), 5);
        assert!(results[0] >= Duration::from_millis(300), "{:?}", results[0]);
    }
}
