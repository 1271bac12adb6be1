//! The event loops the bench's requests run on: `--threads` single-threaded
//! tokio runtimes, each on a thread of its own with its own connections and
//! its share of the workers, as wrk's threads are.
//!
//! Not the CLI's work-stealing runtime: there every answer can wake a
//! worker thread on the other CPU, and on a host the bench shares with the
//! server those wakes and the tasks moving between threads cost more than
//! the requests themselves. Measured on 2 CPUs (`hello`, 256 requests at
//! once, closed loop): 21.0k req/s with 34 µs of the bench's CPU and 61 µs
//! of the server's per request on the two-thread runtime, against 33.2k
//! req/s, 15 µs and 45 µs on one loop.

use std::future::Future;
use std::pin::Pin;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Running loops; dropping them ends each one (and the tasks still on it,
/// such as idle connections) and waits for its thread.
pub struct Loops {
    jobs: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Loops {
    /// Starts `n` loops (at least one).
    pub fn start(n: usize) -> anyhow::Result<Loops> {
        let mut loops = Loops {
            jobs: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("starting the bench's event loop: {e}"))?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("bench-loop-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job);
                        }
                    });
                })
                .map_err(|e| anyhow::anyhow!("starting the bench's event loop thread: {e}"))?;
            loops.jobs.push(tx);
            loops.threads.push(thread);
        }
        Ok(loops)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Runs `task` on loop `i` (modulo their number); its output comes
    /// back through the receiver, which fails if the task panicked.
    pub fn spawn<T, F>(&self, i: usize, task: F) -> oneshot::Receiver<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::pin(async move {
            let _ = tx.send(task.await);
        });
        // A loop ends only when `Loops` is dropped; a send that fails drops
        // the job, and with it `tx`: the receiver reports it.
        let _ = self.jobs[i % self.jobs.len()].send(job);
        rx
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.jobs.clear();
        for thread in self.threads.drain(..) {
            // The last holder may be a task on a loop (a worker still
            // running when the bench gave up): that loop ends on its own.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// The default number of loops: half the host's CPUs, at least one, so that
/// a bench run on the server's own host leaves it the other half.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_loops_and_answer() {
        let loops = Loops::start(2).unwrap();
        let names: Vec<_> = (0..4)
            .map(|i| {
                loops.spawn(i, async move {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    (i, std::thread::current().name().map(str::to_owned))
                })
            })
            .collect();
        for (i, rx) in names.into_iter().enumerate() {
            let (n, thread) = rx.await.unwrap();
            assert_eq!(n, i);
            assert_eq!(thread.as_deref(), Some(&*format!("bench-loop-{}", i % 2)));
        }
    }

    #[tokio::test]
    async fn a_task_that_panics_fails_its_receiver_only() {
        let loops = Loops::start(1).unwrap();
        let failed = loops.spawn(0, async { panic!("boom") });
        let fine = loops.spawn(0, async { 7 });
        assert!(failed.await.is_err());
        assert_eq!(fine.await.unwrap(), 7);
    }
}
