//! Polling a future without it waking its own task.
//!
//! hyper's dispatchers, channels and wasmtime's host calls often wake the
//! future that is being polled from inside that very poll (a response
//! handed over, a request taken, a body frame written). tokio treats a task
//! woken while it runs as one that yielded: it goes to the back of the run
//! queue and tokio wakes another worker thread to look for work — a futex
//! call and a context switch or two per wake, for nothing, since the task
//! is about to be polled again anyway. Counted on a warm request over one
//! connection: 3.94 futex calls a request on the container hop and 1.5–2.4
//! on the wasm path (`perf stat -e syscalls:sys_enter_futex`, `perf record
//! --call-graph dwarf` puts them all in tokio's `yield_now` →
//! `notify_parked`).
//!
//! [`QuietWaker`] is a waker that, while its [`QuietWaker::poll`] runs,
//! only notes a wake, and then polls again itself; outside it, it wakes the
//! task that polled last. [`Quietly`] polls a whole future that way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// How often a poll is repeated for wakes raised inside it. A future that
/// keeps waking itself is yielding on purpose (hyper's and tokio's
/// budgets): after this many rounds its task is woken and yields.
const ROUNDS: usize = 4;

/// A waker that holds back wakes raised while its owner polls.
pub struct QuietWaker {
    quiet: Arc<Quiet>,
    waker: Waker,
}

#[derive(Default)]
struct Quiet {
    task: AtomicWaker,
    polling: AtomicBool,
    woken: AtomicBool,
}

impl Wake for Quiet {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.woken.store(true, Ordering::SeqCst);
        } else {
            self.task.wake();
        }
    }
}

impl Default for QuietWaker {
    fn default() -> Self {
        let quiet = Arc::new(Quiet::default());
        let waker = Waker::from(quiet.clone());
        QuietWaker { quiet, waker }
    }
}

impl QuietWaker {
    /// Runs `section` with wakes of this waker held back: for work whose
    /// wakes the caller's next [`QuietWaker::poll`] sees anyway (sending a
    /// request wakes the dispatcher that waits for one).
    pub fn hold<R>(&self, section: impl FnOnce() -> R) -> R {
        self.quiet.polling.store(true, Ordering::SeqCst);
        let result = section();
        self.quiet.polling.store(false, Ordering::SeqCst);
        result
    }

    /// Runs `step` with this waker in place of `cx`'s: a wake raised while
    /// `step` runs polls it again here rather than rescheduling the task.
    /// Wakes from elsewhere, later, wake `cx`'s task.
    pub fn poll<R>(
        &self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        self.quiet.task.register(cx.waker());
        let mut own = Context::from_waker(&self.waker);
        for _ in 0..ROUNDS {
            self.quiet.polling.store(true, Ordering::SeqCst);
            self.quiet.woken.store(false, Ordering::SeqCst);
            let result = step(&mut own);
            self.quiet.polling.store(false, Ordering::SeqCst);
            if result.is_ready() {
                return result;
            }
            if !self.quiet.woken.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A future polled with a [`QuietWaker`]: for the top of a task, so that
/// nothing inside it reschedules the task by waking it mid-poll.
pub struct Quietly<F> {
    inner: Pin<Box<F>>,
    waker: QuietWaker,
}

impl<F: Future> Quietly<F> {
    pub fn new(inner: F) -> Self {
        Quietly {
            inner: Box::pin(inner),
            waker: QuietWaker::default(),
        }
    }
}

impl<F: Future> Future for Quietly<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        this.waker.poll(cx, |cx| inner.as_mut().poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts wakes of the task.
    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_inside_the_poll_polls_again_without_waking_the_task() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let mut polls = 0;
        let mut fut = Quietly::new(std::future::poll_fn(|cx| {
            polls += 1;
            if polls < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        }));
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(3));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_later_wake_reaches_the_task_and_a_busy_loop_yields() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let mut kept = None;
        let mut once = Quietly::new(std::future::poll_fn(|cx| {
            kept = Some(cx.waker().clone());
            Poll::<()>::Pending
        }));
        assert!(Pin::new(&mut once).poll(&mut cx).is_pending());
        drop(once);
        kept.expect("polled").wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);

        // Always waking itself: polled ROUNDS times, then the task is woken.
        let mut polls = 0;
        let mut busy = Quietly::new(std::future::poll_fn(|cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        assert!(Pin::new(&mut busy).poll(&mut cx).is_pending());
        drop(busy);
        assert_eq!(polls, ROUNDS);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
