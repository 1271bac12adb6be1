//! The gateway's side of one container's control socket. During a start,
//! [`wait_ready`] reads init's reports until the sandbox is ready (and
//! [`why_gone`] reads the one init left if a message to it cannot be
//! sent); after
//! it, an [`InitLink`] task reads init's messages and hands each to
//! whoever waits for it (a new connection to the handler, a CGI process's
//! end, the handler's output for the logs, the handler's exit).
//! [`InitLink::connect`] gives the handler's connections (see
//! `handler_conns`): each is a socket init made inside the sandbox's
//! network namespace.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};

use crate::container::error::SandboxError;
use crate::container::proto::{self, ExitReport, ExitStatus, FromInit, Stream, Timings, ToInit};
use crate::container::spawner::{recv_async, send_async};
use crate::spec::FunctionName;
use crate::store::logs::escape_controls;

/// Why a request could not be passed to the handler through init.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The sandbox is gone, or going: why.
    #[error("{0}")]
    Dead(String),
    #[error("the sandbox is gone: {0}")]
    Send(#[source] std::io::Error),
    /// Init could not do what was asked (its own report).
    #[error("{0}")]
    Refused(String),
    #[error("init's answer came without its descriptor")]
    NoDescriptor,
}

/// One container's control socket, after its start.
pub(crate) struct InitLink {
    function: FunctionName,
    /// Host pid of the sandbox's init (names the instance in logs).
    pub(crate) pid: i32,
    fd: AsyncFd<OwnedFd>,
    /// Serialises `Connect` requests with their FIFO of waiters.
    connect: tokio::sync::Mutex<()>,
    connects: Mutex<VecDeque<oneshot::Sender<Result<OwnedFd, LinkError>>>>,
    spare: Mutex<Option<OwnedFd>>,
    cgi: Mutex<HashMap<u64, oneshot::Sender<Result<ExitStatus, LinkError>>>>,
    /// Why the sandbox is gone, once it is.
    dead: watch::Sender<Option<String>>,
    /// The pool asked it to stop: its handler's exit is expected.
    stopping: std::sync::atomic::AtomicBool,
}

impl InitLink {
    /// Takes over the socket and starts reading it; `first_conn` is the
    /// connection init made when the handler became ready.
    pub(crate) fn start(
        function: FunctionName,
        pid: i32,
        fd: AsyncFd<OwnedFd>,
        first_conn: Option<OwnedFd>,
    ) -> Arc<InitLink> {
        let link = Arc::new(InitLink {
            function,
            pid,
            fd,
            connect: tokio::sync::Mutex::new(()),
            connects: Mutex::new(VecDeque::new()),
            spare: Mutex::new(first_conn),
            stopping: std::sync::atomic::AtomicBool::new(false),
            cgi: Mutex::new(HashMap::new()),
            dead: watch::channel(None).0,
        });
        tokio::spawn(link.clone().read_loop());
        link
    }

    async fn read_loop(self: Arc<Self>) {
        let mut buf = Vec::new();
        let reason = loop {
            let (msg, fds) = match recv_async::<FromInit>(&self.fd, &mut buf).await {
                Ok(m) => m,
                Err(e) => break format!("the sandbox ended ({e})"),
            };
            match msg {
                FromInit::Connection => {
                    let waiter = lock(&self.connects).pop_front();
                    let fd = fds.into_iter().next().ok_or(LinkError::NoDescriptor);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(fd);
                    }
                }
                FromInit::ConnectFailed { error } => {
                    if let Some(waiter) = lock(&self.connects).pop_front() {
                        let _ = waiter.send(Err(LinkError::Refused(error)));
                    }
                }
                FromInit::CgiDone { id, status } => {
                    if let Some(waiter) = lock(&self.cgi).remove(&id) {
                        let _ = waiter.send(Ok(status));
                    }
                }
                FromInit::CgiFailed { id, error } => {
                    if let Some(waiter) = lock(&self.cgi).remove(&id) {
                        let _ = waiter.send(Err(LinkError::Refused(error)));
                    }
                }
                FromInit::Output { stream, text } => {
                    log_output(&self.function, self.pid, stream, &text)
                }
                FromInit::Exited(report) => {
                    // Its stderr is for the operator (this log, the
                    // function's logs), never in what a caller is told.
                    if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        tracing::debug!(function = %self.function, status = %report.status, "handler stopped");
                    } else {
                        tracing::warn!(function = %self.function, status = %report.status, stderr = %escape_controls(&report.stderr_tail), "handler exited");
                    }
                    break format!("the handler exited ({})", report.status);
                }
                FromInit::Ready { .. } | FromInit::SetupFailed { .. } | FromInit::Mounted => {}
            }
        };
        self.dead.send_replace(Some(reason.clone()));
        for waiter in lock(&self.connects).drain(..) {
            let _ = waiter.send(Err(LinkError::Dead(reason.clone())));
        }
        for (_, waiter) in lock(&self.cgi).drain() {
            let _ = waiter.send(Err(LinkError::Dead(reason.clone())));
        }
    }

    /// Why the sandbox is gone, if it is.
    pub(crate) fn dead_reason(&self) -> Option<String> {
        self.dead.borrow().clone()
    }

    /// Waits until the sandbox is gone.
    pub(crate) async fn wait_dead(&self) {
        let mut dead = self.dead.subscribe();
        let _ = dead.wait_for(Option::is_some).await;
    }

    /// Records that the sandbox is being killed, before init's socket
    /// closes, so that no new request is sent its way.
    pub(crate) fn mark_dead(&self, reason: &str) {
        self.dead.send_if_modified(|dead| {
            let fresh = dead.is_none();
            if fresh {
                *dead = Some(reason.to_owned());
            }
            fresh
        });
    }

    /// Marks the handler's coming exit as asked for (logged quietly).
    pub(crate) fn stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) async fn send(&self, msg: &ToInit, fds: &[BorrowedFd<'_>]) -> Result<(), LinkError> {
        send_async(&self.fd, msg, fds)
            .await
            .map_err(LinkError::Send)
    }

    /// Runs one CGI process with `env`, its stdin, stdout and stderr in
    /// `fds`; resolves to its exit status.
    pub(crate) async fn run_cgi(
        &self,
        id: u64,
        env: Vec<String>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<oneshot::Receiver<Result<ExitStatus, LinkError>>, LinkError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.cgi).insert(id, tx);
        self.send(&ToInit::Cgi { id, env }, fds).await?;
        Ok(rx)
    }

    /// A new connection to the handler's port, made inside the sandbox.
    pub(crate) async fn connect(&self) -> Result<OwnedFd, LinkError> {
        if let Some(fd) = lock(&self.spare).take() {
            return Ok(fd);
        }
        if let Some(reason) = self.dead_reason() {
            return Err(LinkError::Dead(reason));
        }
        let (tx, rx) = oneshot::channel();
        {
            let _serial = self.connect.lock().await;
            lock(&self.connects).push_back(tx);
            self.send(&ToInit::Connect, &[]).await?;
        }
        rx.await
            .unwrap_or_else(|_| Err(LinkError::Dead("the sandbox is gone".to_owned())))
    }
}

/// A mutex's guard, whether or not another holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a start ended before the sandbox became ready.
pub(crate) enum NotReady {
    /// Setting up failed, or init went away.
    Sandbox(SandboxError),
    /// The handler exited.
    Exited(ExitReport),
}

/// Reads init's messages until it reports ready (or fails); returns the
/// start's timings and, for `http`, the connection init made.
pub(crate) async fn wait_ready(
    function: &FunctionName,
    pid: i32,
    control: &AsyncFd<OwnedFd>,
) -> Result<(Timings, Option<OwnedFd>), NotReady> {
    let mut buf = Vec::new();
    loop {
        let (msg, fds) = recv_async::<FromInit>(control, &mut buf)
            .await
            .map_err(|e| NotReady::Sandbox(SandboxError::InitGone(e)))?;
        match msg {
            FromInit::Ready { timings } => return Ok((timings, fds.into_iter().next())),
            FromInit::SetupFailed { stage, error } => {
                return Err(NotReady::Sandbox(SandboxError::Setup { stage, error }));
            }
            FromInit::Exited(report) => return Err(NotReady::Exited(report)),
            FromInit::Output { stream, text } => log_output(function, pid, stream, &text),
            _ => {}
        }
    }
}

/// Why a sandbox is gone when a message to its init could not be sent:
/// init's own report if it sent one before it exited (a step of its
/// set-up that failed, maybe while it was pre-made), else `error`.
pub(crate) fn why_gone(control: &AsyncFd<OwnedFd>, error: std::io::Error) -> SandboxError {
    let mut buf = Vec::new();
    // Non-blocking: nothing sent is EAGAIN.
    match proto::recv::<FromInit>(control.get_ref().as_fd(), &mut buf) {
        Ok((FromInit::SetupFailed { stage, error }, _)) => SandboxError::Setup { stage, error },
        _ => SandboxError::Gone(error),
    }
}

/// Records a handler's output in the function's logs.
pub(crate) fn log_output(function: &FunctionName, instance: i32, stream: Stream, text: &str) {
    crate::store::logs::record(
        function.as_str(),
        &format!("container-{instance}"),
        stream.as_str(),
        text,
    );
}

/// `; stderr: <the last 500 characters>`, or nothing for an empty tail.
pub(crate) fn stderr_suffix(tail: &str) -> String {
    let tail = tail.trim();
    if tail.is_empty() {
        String::new()
    } else {
        let start = tail.char_indices().rev().nth(499).map_or(0, |(i, _)| i);
        format!("; stderr: {}", &tail[start..])
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::socket::SockFlag;

    use super::*;
    use crate::container::proto::Stage;

    /// The gateway's end and init's of a control socket.
    fn pair() -> (OwnedFd, OwnedFd) {
        proto::tests::pair_with(SockFlag::SOCK_NONBLOCK)
    }

    /// A pre-made sandbox whose set-up failed reported why and exited; the
    /// gateway learns it when its `Run` cannot be sent.
    #[tokio::test]
    async fn a_sandbox_that_exited_after_its_report_is_gone_for_that_reason() {
        let (gateway, init) = pair();
        let report = FromInit::SetupFailed {
            stage: Stage::Cgroup,
            error: "joining /sys/fs/cgroup/pids/wisp/x: ENOENT".into(),
        };
        proto::send(init.as_fd(), &report, &[]).unwrap();
        drop(init);
        let control = crate::container::sys::async_fd(gateway).unwrap();
        let run = ToInit::Start;
        let sent = send_async(&control, &run, &[]).await.unwrap_err();
        match why_gone(&control, sent) {
            SandboxError::Setup { stage, error } => {
                assert_eq!(stage, Stage::Cgroup);
                assert!(error.contains("ENOENT"), "{error}");
            }
            other => panic!("{other}"),
        }
        // Nothing reported: the send's own error.
        let (gateway, init) = pair();
        drop(init);
        let control = crate::container::sys::async_fd(gateway).unwrap();
        let sent = send_async(&control, &run, &[]).await.unwrap_err();
        assert!(matches!(why_gone(&control, sent), SandboxError::Gone(_)));
    }
}
