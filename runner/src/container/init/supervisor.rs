//! The container's PID 1 once it is set up: starts the handler (the
//! zygote's exec for `http` and `lambda`; one process per request for
//! `cgi`), probes an `http` handler's port until it accepts, makes a
//! `lambda` runtime's Runtime API socket, answers the gateway's requests (connections,
//! CGI runs, stop), forwards the handler's output, reaps every process
//! reparented to it, and returns when the handler exits, when asked to
//! stop, or when the gateway goes away.

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::zygote::{Command, Zygote, spawn_cgi};
use super::{SetupError, at};
use crate::container::plan::SandboxPlan;
use crate::container::proto::{
    self, ExitReport, ExitStatus, FromInit, Stage, Stream, Timings, ToInit, monotonic_ns,
};
use crate::container::seccomp::Filters;
use crate::container::sys::{self, Priority};
use crate::protocol::Protocol;

/// The first readiness probe's delay after the exec, and the gap between
/// probes for the first [`PROBE_FINE_FOR`].
const PROBE_FIRST: Duration = Duration::from_micros(50);
/// Most handlers listen within a few hundred microseconds of their exec
/// (`ping`: ~0.09 ms): probes stay [`PROBE_FIRST`] apart that long, so
/// that one finds the listener at most 50 µs after it appears (doubling
/// from the start, probes at 0.05, 0.15, 0.35 ms found a listener of
/// 0.09 ms at 0.15).
const PROBE_FINE_FOR: Duration = Duration::from_micros(500);
/// While a handler has been starting for less than [`PROBE_FAST_FOR`],
/// probes are at most this far apart: most handlers listen within a few
/// milliseconds, and a probe that just missed must not add milliseconds to
/// the cold start (doubling up to 5 ms, a handler that listens at 1.6 ms
/// is found at 3.15 ms).
const PROBE_FAST_GAP: Duration = Duration::from_micros(250);
const PROBE_FAST_FOR: Duration = Duration::from_millis(25);
/// After that, slow starters (an interpreter loading its modules) are
/// probed at most every 5 ms.
const PROBE_SLOW_GAP: Duration = Duration::from_millis(5);

/// The back-off after `backoff`, for a handler exec'd `elapsed` ago.
fn next_backoff(backoff: Duration, elapsed: Duration) -> Duration {
    if elapsed < PROBE_FINE_FOR {
        return PROBE_FIRST;
    }
    let cap = if elapsed < PROBE_FAST_FOR {
        PROBE_FAST_GAP
    } else {
        PROBE_SLOW_GAP
    };
    (backoff * 2).min(cap)
}

/// The handler's port on the sandbox's loopback (an address, not text to
/// parse and resolve on every probe).
fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
}

/// Bytes of the handler's stderr kept for its exit report.
const STDERR_TAIL: usize = 4096;

/// The container's PID 1 after set-up.
pub(super) struct Supervisor<'a> {
    plan: &'a SandboxPlan,
    control: BorrowedFd<'a>,
    filters: &'a Filters,
    timings: Timings,
    /// The forked process that becomes the `http` handler.
    zygote: Option<Zygote>,
    /// The `http` handler and its stdout/stderr pipes.
    handler: Option<RunningHandler>,
    /// Running CGI processes, by pid.
    cgi: HashMap<Pid, u64>,
    stderr_tail: Vec<u8>,
    stop_deadline: Option<Instant>,
}

/// The `http` handler's process.
struct RunningHandler {
    pid: Pid,
    port: u16,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    ready: bool,
    /// When it was exec'd, the next readiness probe and the current
    /// back-off.
    started: Instant,
    next_probe: Instant,
    backoff: Duration,
}

impl<'a> Supervisor<'a> {
    pub(super) fn new(
        plan: &'a SandboxPlan,
        control: BorrowedFd<'a>,
        filters: &'a Filters,
        timings: Timings,
        zygote: Zygote,
    ) -> Supervisor<'a> {
        Supervisor {
            plan,
            control,
            filters,
            timings,
            zygote: Some(zygote),
            handler: None,
            cgi: HashMap::new(),
            stderr_tail: Vec::new(),
            stop_deadline: None,
        }
    }

    /// Runs until the sandbox ends; an error is a failed start of the
    /// handler.
    pub(super) fn run(&mut self) -> Result<(), SetupError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(at(Stage::Signals))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(at(Stage::Signals))?;

        match self.plan.protocol {
            // Probed until its port accepts, on time: a timer's default
            // slack (50 µs) would double the first gaps.
            Protocol::Http => {
                let _ = nix::sys::prctl::set_timerslack(1);
                self.exec_handler(self.plan.port, false)?;
            }
            Protocol::Lambda => {
                // The Runtime API's socket, made here, in the sandbox's
                // network namespace, before the runtime runs: the gateway
                // serves it, and the runtime finds it already listening.
                let listener = std::net::TcpListener::bind((
                    std::net::Ipv4Addr::LOCALHOST,
                    crate::protocol::lambda::RUNTIME_API_PORT,
                ))
                .map_err(at(Stage::RuntimeApi))?;
                // Ready from init's side; the gateway waits for the
                // runtime's first `next`.
                self.exec_handler(0, true)?;
                self.timings.ready = self.timings.exec;
                let fd = OwnedFd::from(listener);
                let _ = proto::send(
                    self.control,
                    &FromInit::Ready {
                        timings: self.timings,
                    },
                    &[fd.as_fd()],
                );
            }
            Protocol::Cgi => {
                // One process per request: the zygote is not needed, and
                // each inherits init's bounding set.
                if let Some(zygote) = self.zygote.take() {
                    zygote.discard();
                }
                super::setup::drop_bounding_set()?;
                self.timings.exec = monotonic_ns();
                self.timings.ready = self.timings.exec;
                self.send(&FromInit::Ready {
                    timings: self.timings,
                });
            }
        }
        let mut buf = Vec::new();
        loop {
            self.probe_readiness();
            let timeout = self.poll_timeout();
            let (control_ev, signal_ev, out_ev, err_ev) = {
                let handler = self.handler.as_ref();
                let out = handler.and_then(|h| h.stdout.as_ref());
                let err = handler.and_then(|h| h.stderr.as_ref());
                let mut fds = vec![
                    PollFd::new(self.control, PollFlags::POLLIN),
                    PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(out) = out {
                    fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
                }
                if let Some(err) = err {
                    fds.push(PollFd::new(err.as_fd(), PollFlags::POLLIN));
                }
                match ppoll(&mut fds, timeout, None) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(at(Stage::Poll)(e)),
                }
                let ev = |i: usize| {
                    fds.get(i)
                        .and_then(PollFd::revents)
                        .is_some_and(|r| !r.is_empty())
                };
                let out_i = 2;
                let err_i = if out.is_some() { 3 } else { 2 };
                (
                    ev(0),
                    ev(1),
                    out.is_some() && ev(out_i),
                    err.is_some() && ev(err_i),
                )
            };
            if out_ev {
                self.drain(Stream::Stdout);
            }
            if err_ev {
                self.drain(Stream::Stderr);
            }
            if signal_ev {
                while let Ok(Some(info)) = signals.read_signal() {
                    let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                    if signo == Signal::SIGTERM as i32 || signo == Signal::SIGINT as i32 {
                        self.stop(Duration::from_secs(2));
                    }
                }
                if self.reap() {
                    return Ok(());
                }
            }
            if control_ev {
                match proto::recv::<ToInit>(self.control, &mut buf) {
                    Ok((msg, fds)) => self.handle(msg, fds),
                    // The gateway dropped the sandbox, or died: PID 1's exit
                    // takes every process of the container with it.
                    Err(_) => return Ok(()),
                }
            }
            if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
        }
    }

    /// Execs the handler in the zygote; an `http` one (`ready` false) is
    /// then probed on `port` until it accepts.
    fn exec_handler(&mut self, port: u16, ready: bool) -> Result<(), SetupError> {
        let zygote = self
            .zygote
            .take()
            .ok_or_else(|| SetupError::new(Stage::Exec, "the handler's process is gone"))?;
        let command = Command::of(self.plan, &[]).map_err(at(Stage::Exec))?;
        let (pid, stdout, stderr) = zygote.exec(&command).map_err(at(Stage::Exec))?;
        self.timings.exec = monotonic_ns();
        // While the handler starts up, before the first probe.
        super::setup::drop_bounding_set()?;
        self.handler = Some(RunningHandler {
            pid,
            port,
            stdout: Some(stdout),
            stderr: Some(stderr),
            ready,
            started: Instant::now(),
            next_probe: Instant::now(),
            backoff: PROBE_FIRST,
        });
        Ok(())
    }

    /// How long to wait for an event: until the next probe or the stop
    /// deadline, to the microsecond (`None`: no limit). `poll`'s
    /// milliseconds would round the probes' sub-millisecond gaps to 0 and
    /// spin, taking a CPU from the handler that is starting.
    fn poll_timeout(&self) -> Option<TimeSpec> {
        let mut until: Option<Instant> = self.stop_deadline;
        if let Some(h) = &self.handler
            && !h.ready
        {
            until = Some(until.map_or(h.next_probe, |u| u.min(h.next_probe)));
        }
        until.map(|t| TimeSpec::from_duration(t.saturating_duration_since(Instant::now())))
    }

    /// Tries the handler's port while it is not ready yet, at the gaps
    /// [`next_backoff`] gives.
    fn probe_readiness(&mut self) {
        let Some(h) = self.handler.as_mut() else {
            return;
        };
        if h.ready || Instant::now() < h.next_probe {
            return;
        }
        match TcpStream::connect(loopback(h.port)) {
            Ok(stream) => {
                h.ready = true;
                self.timings.ready = monotonic_ns();
                // Back to the default: nothing after needs the precision.
                let _ = nix::sys::prctl::set_timerslack(0);
                let fd = OwnedFd::from(stream);
                let _ = proto::send(
                    self.control,
                    &FromInit::Ready {
                        timings: self.timings,
                    },
                    &[fd.as_fd()],
                );
            }
            Err(_) => {
                h.next_probe = Instant::now() + h.backoff;
                h.backoff = next_backoff(h.backoff, h.started.elapsed());
            }
        }
    }

    fn handle(&mut self, msg: ToInit, fds: Vec<OwnedFd>) {
        match msg {
            ToInit::Connect => {
                let port = self.handler.as_ref().map_or(0, |h| h.port);
                match TcpStream::connect(loopback(port)) {
                    Ok(stream) => {
                        let fd = OwnedFd::from(stream);
                        let _ = proto::send(self.control, &FromInit::Connection, &[fd.as_fd()]);
                    }
                    Err(e) => self.send(&FromInit::ConnectFailed {
                        error: e.to_string(),
                    }),
                }
            }
            ToInit::Cgi { id, env } => {
                let mut fds = fds.into_iter();
                let (Some(stdin), Some(stdout), Some(stderr)) =
                    (fds.next(), fds.next(), fds.next())
                else {
                    self.send(&FromInit::CgiFailed {
                        id,
                        error: "CGI request without its three descriptors".into(),
                    });
                    return;
                };
                match spawn_cgi(self.plan, &env, stdin, stdout, stderr, self.filters) {
                    Ok(pid) => {
                        self.cgi.insert(pid, id);
                    }
                    Err(error) => self.send(&FromInit::CgiFailed {
                        id,
                        error: error.to_string(),
                    }),
                }
            }
            ToInit::Stop { grace_ms } => self.stop(Duration::from_millis(grace_ms)),
            ToInit::Mount { .. } | ToInit::Run { .. } | ToInit::Start => {}
        }
    }

    fn stop(&mut self, grace: Duration) {
        // What is left is teardown (init's exit unmounts the sandbox's
        // filesystems and frees its memory): background work, which must
        // not take a CPU from a start (docs/architecture.md, "Tearing down
        // is background work").
        let _ = sys::set_priority(None, Priority::Background);
        if let Some(h) = &self.handler {
            let _ = kill(h.pid, Signal::SIGTERM);
        }
        for pid in self.cgi.keys() {
            let _ = kill(*pid, Signal::SIGTERM);
        }
        if self.handler.is_none() && self.cgi.is_empty() {
            self.stop_deadline = Some(Instant::now());
        } else {
            self.stop_deadline.get_or_insert(Instant::now() + grace);
        }
    }

    /// Reaps every exited child; returns whether init should exit.
    fn reap(&mut self) -> bool {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, ExitStatus::Signal(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return false,
                Ok(_) => continue,
            };
            let (pid, status) = status;
            if let Some(id) = self.cgi.remove(&pid) {
                self.send(&FromInit::CgiDone { id, status });
                if self.stop_deadline.is_some() && self.cgi.is_empty() {
                    return true;
                }
            } else if self.handler.as_ref().is_some_and(|h| h.pid == pid) {
                // What it wrote last is still in the pipes.
                self.drain(Stream::Stdout);
                self.drain(Stream::Stderr);
                let before_ready = self.handler.as_ref().is_some_and(|h| !h.ready);
                let tail = String::from_utf8_lossy(&self.stderr_tail).into_owned();
                self.send(&FromInit::Exited(ExitReport {
                    status,
                    stderr_tail: tail,
                    before_ready,
                }));
                return true;
            }
        }
    }

    /// Forwards what the handler wrote on `stream`.
    fn drain(&mut self, stream: Stream) {
        let Some(h) = self.handler.as_mut() else {
            return;
        };
        let slot = match stream {
            Stream::Stdout => &mut h.stdout,
            Stream::Stderr => &mut h.stderr,
        };
        let Some(fd) = slot.as_ref() else { return };
        let mut chunk = [0u8; 8192];
        loop {
            match nix::unistd::read(fd.as_fd(), &mut chunk) {
                Ok(0) => {
                    *slot = None;
                    return;
                }
                Ok(n) => {
                    let bytes = &chunk[..n];
                    if stream == Stream::Stderr {
                        self.stderr_tail.extend_from_slice(bytes);
                        let excess = self.stderr_tail.len().saturating_sub(STDERR_TAIL);
                        self.stderr_tail.drain(..excess);
                    }
                    let text = String::from_utf8_lossy(bytes).into_owned();
                    let _ = proto::send(self.control, &FromInit::Output { stream, text }, &[]);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    fn send(&self, msg: &FromInit) {
        let _ = proto::send(self.control, msg, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_stay_close_while_a_handler_is_young_then_back_off() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        // Close together at first, then doubling, capped at the fast gap.
        assert_eq!(next_backoff(PROBE_FIRST, ms(0)), PROBE_FIRST);
        assert_eq!(next_backoff(PROBE_FIRST, us(450)), PROBE_FIRST);
        assert_eq!(next_backoff(PROBE_FIRST, us(500)), us(100));
        assert_eq!(
            next_backoff(Duration::from_micros(200), ms(1)),
            PROBE_FAST_GAP
        );
        assert_eq!(next_backoff(PROBE_FAST_GAP, ms(24)), PROBE_FAST_GAP);
        // A slow starter: the gap grows to the slow cap and stays there.
        assert_eq!(
            next_backoff(PROBE_FAST_GAP, ms(25)),
            Duration::from_micros(500)
        );
        assert_eq!(next_backoff(ms(4), ms(100)), PROBE_SLOW_GAP);
        assert_eq!(next_backoff(PROBE_SLOW_GAP, ms(1000)), PROBE_SLOW_GAP);
        // Probes over the first 25 ms of a handler that never listens:
        // about 100, not thousands.
        let (mut t, mut gap, mut probes) = (Duration::ZERO, PROBE_FIRST, 0);
        while t < PROBE_FAST_FOR {
            t += gap;
            gap = next_backoff(gap, t);
            probes += 1;
        }
        assert!((90..=110).contains(&probes), "{probes}");
    }
}
