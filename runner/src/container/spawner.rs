//! The spawner: a small single-threaded process that `wisp serve` forks
//! before its async runtime exists, and the only place containers are
//! `clone`d from. Forking a multi-threaded process is unsafe (another
//! thread may hold the allocator's lock at the instant of the fork), so the
//! gateway never forks; it sends a [`SpawnRequest`] over a `SOCK_SEQPACKET`
//! socket and gets back the new container's control socket and pidfd.
//!
//! At start the spawner compiles the seccomp filter once and makes the one
//! user namespace every container enters (container root = host uid
//! `IdMap::host_uid`, as with Docker's `userns-remap`): each container has
//! its own mount, PID, network, UTS, IPC and cgroup namespaces, all owned
//! by the host's user namespace, so sharing the user namespace gives one
//! container no power over another's. The spawner dies with the gateway
//! (`PR_SET_PDEATHSIG`), and every container's init with the spawner.
//!
//! Each request costs the spawner one `clone` (the namespaces are made
//! there, except a network namespace kept from an exited sandbox, which
//! the container enters: [`crate::container::netns`]) and one
//! `pidfd_open`; everything else happens in the new container, in
//! parallel with the next request. A sandbox made ahead of demand is
//! cloned at `SCHED_IDLE`, one a request waits on at `SCHED_OTHER` (the
//! gateway raises the spawner before it asks for one). Between requests the spawner reaps the
//! init of each container the gateway reports ended
//! ([`ToSpawner::Ended`], by its pid), looks into the network namespace
//! handed back with it, and once a second sweeps for any other exited
//! child. It holds no descriptor per running container (each new one
//! starts with a copy of its table). With its
//! first request it leaves the host's mount table for one holding only
//! what sandboxes use ([`crate::container::host_view`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use tokio::io::unix::AsyncFd;

use crate::container::host_view;
use crate::container::netns::{self, NetnsPool};
use crate::container::plan::IdMap;
use crate::container::proto::{self, ProtoError, SpawnReply, SpawnRequest, ToSpawner};
use crate::container::seccomp::Filters;
use crate::container::sys::Priority;
use crate::container::{init, sys};

/// Stack of a container's first process until it forks the handler.
const CHILD_STACK: usize = 1 << 20;

/// The gateway's end of a running spawner, before the async runtime starts.
#[derive(Debug)]
pub struct SpawnerHandle {
    sock: OwnedFd,
    pid: Pid,
}

/// Why the gateway got no container from the spawner.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the spawner is gone: {0}")]
    Gone(#[source] std::io::Error),
    /// The spawner's own report (another process: its text).
    #[error("{0}")]
    Refused(String),
    #[error("the spawner's reply lacks its descriptors")]
    NoDescriptors,
    #[error("the container's control socket: {0}")]
    Socket(#[source] std::io::Error),
}

/// Why the spawner could not make a container or the user namespace (in
/// the spawner; sent to the gateway as text).
#[derive(Debug, thiserror::Error)]
enum CloneError {
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn sys_at(what: &'static str) -> impl FnOnce(nix::Error) -> CloneError {
    move |source| CloneError::Sys { what, source }
}

fn io_at(what: &'static str) -> impl FnOnce(std::io::Error) -> CloneError {
    move |source| CloneError::Io { what, source }
}

/// Why the spawner could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("containers need wisp serve to run as root (euid is {0})")]
    NotRoot(u32),
    #[error("the spawner must be started while the process has one thread (it has {0})")]
    Threads(usize),
    #[error("starting the spawner: {0}")]
    Sys(#[from] nix::Error),
    /// `wisp serve` was run without launching one (a caller's mistake).
    #[error("the spawner was not started")]
    NotStarted,
}

impl SpawnerHandle {
    /// Forks the spawner. Call it first thing in `main`, before any thread
    /// (the async runtime above all) exists; it refuses otherwise.
    /// `reuse_netns`: sandboxes get the network namespaces of exited
    /// ones, once found clean (see [`crate::container::netns`]).
    pub fn launch(id_map: IdMap, reuse_netns: bool) -> Result<SpawnerHandle, LaunchError> {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(LaunchError::NotRoot(euid.as_raw()));
        }
        let threads = thread_count();
        if threads != 1 {
            return Err(LaunchError::Threads(threads));
        }
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let parent = nix::unistd::getpid();
        #[expect(
            clippy::disallowed_methods,
            reason = "the one fork outside a container: before any thread exists"
        )]
        // SAFETY: the process has exactly one thread (checked above), so the
        // child inherits no lock held by another thread.
        let forked = unsafe { nix::unistd::fork() }?;
        match forked {
            ForkResult::Child => {
                drop(ours);
                let code = spawner_main(theirs, parent, id_map, reuse_netns);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(theirs);
                Ok(SpawnerHandle {
                    sock: ours,
                    pid: child,
                })
            }
        }
    }

    /// The spawner's process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The spawner's life. Returns its exit code.
fn spawner_main(sock: OwnedFd, parent: Pid, id_map: IdMap, reuse_netns: bool) -> i32 {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent
    {
        return 1;
    }
    let _ = nix::sys::prctl::set_name(c"wisp-spawner");
    let refuse_all = |error: String| -> i32 {
        // Answer every request with the reason, so deploys say it.
        let mut buf = Vec::new();
        while let Ok((msg, _)) = proto::recv::<ToSpawner>(sock.as_fd(), &mut buf) {
            if !matches!(msg, ToSpawner::Spawn(_)) {
                continue;
            }
            let _ = proto::send(
                sock.as_fd(),
                &SpawnReply::Failed {
                    error: error.clone(),
                },
                &[],
            );
        }
        0
    };
    let filters = match Filters::compile() {
        Ok(f) => f,
        Err(e) => return refuse_all(e.to_string()),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    let userns = match make_userns(id_map, &mut stack) {
        Ok(fd) => fd,
        Err(e) => return refuse_all(format!("making the containers' user namespace: {e}")),
    };
    let mut netns = match NetnsPool::new(if reuse_netns { netns::KEPT } else { 0 }) {
        Ok(pool) => pool,
        Err(e) => return refuse_all(format!("opening the spawner's network namespace: {e}")),
    };
    let mut buf = Vec::new();
    let mut view_made = false;
    let mut swept = Instant::now();
    loop {
        if swept.elapsed() >= SWEEP {
            sweep();
            swept = Instant::now();
        }
        netns.settle();
        // Exited sandboxes' namespaces are looked at again soon, until
        // the gateway has closed its connections into them.
        let wait = if netns.settling() { 10u16 } else { 1000 };
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(wait)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return 1,
        }
        let req = match proto::recv::<ToSpawner>(sock.as_fd(), &mut buf) {
            Ok((ToSpawner::Spawn(req), _)) => req,
            Ok((ToSpawner::Ended { pid }, fds)) => {
                netns.ended(Pid::from_raw(pid), fds.into_iter().next());
                continue;
            }
            Err(ProtoError::Closed) => return 0,
            Err(ProtoError::Json(e)) => {
                let _ = proto::send(
                    sock.as_fd(),
                    &SpawnReply::Failed {
                        error: format!("bad request: {e}"),
                    },
                    &[],
                );
                continue;
            }
            Err(_) => return 1,
        };
        if !view_made && !req.host_dirs.is_empty() {
            view_made = true;
            if let Err(error) = host_view::isolate(&req.host_dirs, &req.scratch) {
                tracing::warn!(%error, "sandboxes start from a copy of the host's whole mount table");
            }
        }
        // A sandbox made ahead of demand is made at idle priority, as it
        // then sets itself up: the `clone` (its namespaces) takes no CPU
        // from a start or a request. One a request waits on is not (the
        // gateway may have raised the spawner already: set every time).
        let _ = sys::set_priority(
            None,
            if req.background {
                Priority::Background
            } else {
                Priority::Normal
            },
        );
        let reply = spawn_one(&req, userns.as_fd(), &filters, &mut stack, &mut netns);
        let sent = match reply {
            Ok((spawned, control, pidfd, ns)) => {
                let mut fds = vec![control.as_fd(), pidfd.as_fd()];
                fds.extend(ns.as_ref().map(AsFd::as_fd));
                proto::send(sock.as_fd(), &spawned, &fds)
            }
            Err(error) => proto::send(
                sock.as_fd(),
                &SpawnReply::Failed {
                    error: error.to_string(),
                },
                &[],
            ),
        };
        if sent.is_err() {
            return 1;
        }
    }
}

/// Clones one container, into a kept network namespace if there is one;
/// returns the reply for the gateway, its end of the container's control
/// socket, a pidfd and, when namespaces are kept, the container's network
/// namespace (for the gateway to hold).
fn spawn_one(
    req: &SpawnRequest,
    userns: BorrowedFd<'_>,
    filters: &Filters,
    stack: &mut [u8],
    netns: &mut NetnsPool,
) -> Result<(SpawnReply, OwnedFd, OwnedFd, Option<OwnedFd>), CloneError> {
    let (gateway_end, container_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys_at("socketpair"))?;
    let reused = netns.take();
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if reused.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let reused_fd = reused.as_ref().map(AsRawFd::as_raw_fd);
    let control = container_end.as_fd();
    let keep: Vec<i32> = [
        Some(control.as_raw_fd()),
        Some(userns.as_raw_fd()),
        reused_fd,
    ]
    .into_iter()
    .flatten()
    .collect();
    let child = Box::new(|| {
        init::close_inherited(&keep);
        init::container_main(req, control, userns, reused_fd, filters)
    });
    #[expect(
        clippy::disallowed_methods,
        reason = "the spawner is where containers are cloned"
    )]
    // SAFETY: the spawner is single-threaded; without CLONE_VM the child
    // runs on its own copy of `stack` and of the whole address space.
    let pid = unsafe { nix::sched::clone(child, stack, flags, Some(Signal::SIGCHLD as i32)) }
        .map_err(sys_at("clone"))?;
    let netns_reused = reused.is_some();
    let ns = netns.hand_over(pid, reused);
    let pidfd = sys::pidfd_open(pid.as_raw()).map_err(sys_at("pidfd_open"))?;
    let reply = SpawnReply::Spawned {
        pid: pid.as_raw(),
        netns_reused,
    };
    Ok((reply, gateway_end, pidfd, ns))
}

/// Makes the user namespace containers enter: a child is cloned into a new
/// one, its maps are written from here (host root), and a descriptor of the
/// namespace outlives the child.
fn make_userns(id_map: IdMap, stack: &mut [u8]) -> Result<OwnedFd, CloneError> {
    let (wait_r, wait_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_at("pipe"))?;
    let (wait_fd, write_fd) = (wait_r.as_raw_fd(), wait_w.as_raw_fd());
    let child = Box::new(move || {
        sys::close_raw(write_fd);
        // Block until the parent closes its end.
        let mut byte = [0u8; 1];
        // SAFETY: the descriptor is valid in the child's copy of the table.
        let fd = unsafe { BorrowedFd::borrow_raw(wait_fd) };
        let _ = nix::unistd::read(fd, &mut byte);
        0
    });
    #[expect(
        clippy::disallowed_methods,
        reason = "the spawner is where containers are cloned"
    )]
    // SAFETY: single-threaded; the child runs on its own copy of `stack`.
    let pid = unsafe {
        nix::sched::clone(
            child,
            stack,
            CloneFlags::CLONE_NEWUSER,
            Some(Signal::SIGCHLD as i32),
        )
    }
    .map_err(sys_at("clone"))?;
    let result = (|| {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let map = |host: u32| format!("0 {host} {}\n", id_map.size);
        std::fs::write(proc.join("uid_map"), map(id_map.host_uid)).map_err(io_at("uid_map"))?;
        std::fs::write(proc.join("gid_map"), map(id_map.host_gid)).map_err(io_at("gid_map"))?;
        std::fs::File::open(proc.join("ns/user"))
            .map(OwnedFd::from)
            .map_err(io_at("ns/user"))
    })();
    drop(wait_w);
    drop(wait_r);
    let _ = waitpid(pid, None);
    result
}

/// How often the spawner reaps whatever children have exited.
const SWEEP: Duration = Duration::from_secs(1);

/// Reaps every exited child. An ended sandbox's init is reaped by its pid
/// when the gateway reports the end ([`ToSpawner::Ended`]); this catches
/// those never reported (a gateway that lost track). It runs once a
/// second, not per request: a wait for any child walks the list of them
/// all, as many as sandboxes run.
fn sweep() {
    while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// The gateway's client of the spawner.
pub struct Spawner {
    sock: tokio::sync::Mutex<(AsyncFd<OwnedFd>, Vec<u8>)>,
    /// The same socket, for messages without an answer.
    ends: Ender,
    /// The spawner's pid: raised to `SCHED_OTHER` when a request waits on
    /// a spawn (see [`Spawner::spawn`]).
    pid: Pid,
}

/// A freshly cloned container.
pub struct Spawned {
    pub pid: i32,
    pub control: OwnedFd,
    pub pidfd: OwnedFd,
    /// It runs in a kept network namespace, not a new one.
    pub netns_reused: bool,
    /// Its network namespace, when the spawner keeps them for reuse: held
    /// while it runs, handed back with [`Ender::ended`].
    pub netns: Option<OwnedFd>,
}

/// Tells the spawner that sandboxes ended; cheap to clone, usable from any
/// thread.
#[derive(Clone)]
pub struct Ender {
    sock: Arc<OwnedFd>,
}

impl Ender {
    /// The sandbox whose init is `pid` ended (its cgroup is empty): the
    /// spawner reaps init and keeps `netns` for another sandbox if it is
    /// empty. Never waits: with the socket full the namespace is let go
    /// (and init reaped by the spawner's sweep).
    pub fn ended(&self, pid: i32, netns: Option<OwnedFd>) {
        let fds: Vec<BorrowedFd<'_>> = netns.iter().map(AsFd::as_fd).collect();
        let _ = proto::send(self.sock.as_fd(), &ToSpawner::Ended { pid }, &fds);
    }
}

impl Spawner {
    /// Takes over the handle; needs the tokio runtime.
    pub fn new(handle: SpawnerHandle) -> std::io::Result<Spawner> {
        set_nonblocking(&handle.sock)?;
        let ends = Ender {
            sock: Arc::new(handle.sock.try_clone()?),
        };
        Ok(Spawner {
            sock: tokio::sync::Mutex::new((sys::async_fd(handle.sock)?, Vec::new())),
            ends,
            pid: handle.pid,
        })
    }

    /// Where to report the end of the sandboxes it makes.
    pub fn ender(&self) -> Ender {
        self.ends.clone()
    }

    /// Asks for one container. One a request waits on first raises the
    /// spawner, which may be making a sandbox ahead at idle priority: that
    /// spawn, which this one queues behind, must not wait for an idle CPU.
    pub async fn spawn(&self, req: SpawnRequest) -> Result<Spawned, SpawnError> {
        if !req.background {
            let _ = sys::set_priority(Some(self.pid), sys::Priority::Normal);
        }
        let mut guard = self.sock.lock().await;
        let (sock, buf) = &mut *guard;
        send_async(sock, &ToSpawner::Spawn(req), &[])
            .await
            .map_err(SpawnError::Gone)?;
        let (reply, fds) = recv_async::<SpawnReply>(sock, buf)
            .await
            .map_err(SpawnError::Gone)?;
        match reply {
            SpawnReply::Spawned { pid, netns_reused } => {
                let mut fds = fds.into_iter();
                match (fds.next(), fds.next()) {
                    (Some(control), Some(pidfd)) => {
                        set_nonblocking(&control).map_err(SpawnError::Socket)?;
                        Ok(Spawned {
                            pid,
                            control,
                            pidfd,
                            netns_reused,
                            netns: fds.next(),
                        })
                    }
                    _ => Err(SpawnError::NoDescriptors),
                }
            }
            SpawnReply::Failed { error } => Err(SpawnError::Refused(error)),
        }
    }
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn would_block(e: ProtoError) -> std::io::Error {
    match e {
        ProtoError::Sys(errno) => std::io::Error::from(errno),
        other => std::io::Error::other(other),
    }
}

/// [`proto::send`] on a non-blocking socket, waiting for room.
pub(crate) async fn send_async<T: serde::Serialize>(
    sock: &AsyncFd<OwnedFd>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    // A fresh socket is almost always writable: try before asking the
    // reactor, which costs a trip through the event loop.
    match proto::send(sock.get_ref().as_fd(), msg, fds).map_err(would_block) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        done => return done,
    }
    loop {
        let mut guard = sock.writable().await?;
        match guard.try_io(|fd| proto::send(fd.get_ref().as_fd(), msg, fds).map_err(would_block)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// [`proto::recv`] on a non-blocking socket, waiting for a message.
pub(crate) async fn recv_async<T: for<'de> serde::Deserialize<'de>>(
    sock: &AsyncFd<OwnedFd>,
    buf: &mut Vec<u8>,
) -> std::io::Result<(T, Vec<OwnedFd>)> {
    loop {
        let mut guard = sock.readable().await?;
        match guard.try_io(|fd| proto::recv(fd.get_ref().as_fd(), buf).map_err(would_block)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}
