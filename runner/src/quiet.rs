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
use std::sync::atomic::{AtomicU8, Ordering};
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

/// Not polling: a wake wakes the task.
const IDLE: u8 = 0;
/// Polling, no wake yet.
const POLLING: u8 = 1;
/// Polling, and woken since the poll began: it runs again.
const WOKEN: u8 = 2;

/// One state for "polling" and "woken", changed only by compare-and-swap:
/// a wake from another thread either lands while the poll can still see it
/// (`POLLING` → `WOKEN`, and the poll runs again) or after the poll has
/// ended (`IDLE`, and the task is woken). With two flags, a wake could read
/// "polling", the poll then end and check "woken", and only then the wake
/// set it: nobody woke the task, and a connection slept until some other
/// timer fired (its 30 s header-read timeout: requests of ~29 s, a few in
/// 100,000 cold starts).
#[derive(Default)]
struct Quiet {
    task: AtomicWaker,
    state: AtomicU8,
}

impl Quiet {
    /// Ends a poll: `true` if it was woken meanwhile and must run again
    /// (the state stays "polling" for that).
    fn woken_during_poll(&self) -> bool {
        match self
            .state
            .compare_exchange(POLLING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => false,
            Err(_) => {
                self.state.store(POLLING, Ordering::SeqCst);
                true
            }
        }
    }
}

impl Wake for Quiet {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst)
        {
            // Noted: the poll in progress runs again.
            Ok(_) => {}
            // Already noted.
            Err(WOKEN) => {}
            Err(_) => self.task.wake(),
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
        self.quiet.state.store(POLLING, Ordering::SeqCst);
        let result = section();
        self.quiet.state.store(IDLE, Ordering::SeqCst);
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
        self.quiet.state.store(POLLING, Ordering::SeqCst);
        for _ in 0..ROUNDS {
            let result = step(&mut own);
            let again = self.quiet.woken_during_poll();
            if result.is_ready() {
                if again {
                    // The wake may be for something `step` polled that
                    // outlives this result (the connection a finished
                    // request drove): the task polls it again.
                    self.quiet.state.store(IDLE, Ordering::SeqCst);
                    cx.waker().wake_by_ref();
                }
                return result;
            }
            if !again {
                return Poll::Pending;
            }
        }
        self.quiet.state.store(IDLE, Ordering::SeqCst);
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
    use std::sync::atomic::{AtomicBool, AtomicUsize};

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

    /// A wake from another thread racing the end of a poll is never lost:
    /// it either makes the poll run again or wakes the task (see `Quiet`).
    #[test]
    fn a_wake_from_another_thread_during_the_poll_is_never_lost() {
        for _ in 0..20_000 {
            let count = Arc::new(Count::default());
            let task = Waker::from(count.clone());
            let ready = Arc::new(AtomicBool::new(false));
            let registered: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
            let (flag, slot) = (ready.clone(), registered.clone());
            let mut fut = Quietly::new(std::future::poll_fn(move |cx| {
                if flag.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                *slot.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }));
            let waker = std::thread::scope(|scope| {
                let waker = scope.spawn(|| {
                    // Once the future has registered its waker: the event,
                    // then its wake, racing the end of the poll.
                    let waker = loop {
                        if let Some(w) = registered.lock().unwrap().clone() {
                            break w;
                        }
                        std::hint::spin_loop();
                    };
                    ready.store(true, Ordering::SeqCst);
                    waker.wake();
                });
                let mut cx = Context::from_waker(&task);
                let polled = Pin::new(&mut fut).poll(&mut cx);
                waker.join().unwrap();
                polled
            });
            if waker.is_pending() {
                assert_eq!(
                    count.0.load(Ordering::SeqCst),
                    1,
                    "the poll returned Pending and the task was never woken"
                );
            }
        }
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
