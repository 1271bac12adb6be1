//! The handler's process: the zygote, made while the sandbox is pre-made
//! (user namespace, empty bounding set, `no_new_privs` and seccomp already
//! applied), which execs the function's command once it has one; and, for
//! CGI, one process forked per request. A [`Command`] is everything init
//! resolved (executable along the image's `PATH`, environment, ids); init
//! turns it into a [`Prepared`] one (C strings), so that the child only
//! applies it, allocating nothing: the zygote shares init's memory (see
//! [`Zygote`]).

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, chdir};

use super::{SetupError, at};
use crate::container::plan::SandboxPlan;
use crate::container::proto::Stage;
use crate::container::seccomp::Filters;
use crate::container::sys;

/// A close-on-exec pipe for a handler's output: init polls the read end,
/// which is non-blocking.
fn output_pipe() -> Result<(OwnedFd, OwnedFd), SetupError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(at(Stage::Pipes))?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(at(Stage::Pipes))?;
    Ok((r, w))
}

/// Why a handler's process could not be made or could not exec.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExecError {
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error("empty command")]
    EmptyCommand,
    #[error("exec {0:?}: executable file not found in $PATH")]
    NotFound(String),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to run: this process's / is not the container's")]
    NotContainerRoot,
    #[error("exec {path:?}: {}", source.desc())]
    Exec {
        path: CString,
        #[source]
        source: nix::Error,
    },
    /// What the forked process reported through its pipe.
    #[error("{0}")]
    Child(String),
    #[error("the handler's process is gone: {0}")]
    Gone(#[source] std::io::Error),
}

fn sys_step(what: &str) -> impl FnOnce(nix::Error) -> ExecError + '_ {
    move |source| ExecError::Sys {
        what: what.to_owned(),
        source,
    }
}

fn io_step(what: &str) -> impl FnOnce(std::io::Error) -> ExecError + '_ {
    move |source| ExecError::Io {
        what: what.to_owned(),
        source,
    }
}

/// What a process needs to become the handler: everything resolved by
/// init, so that the process only has to apply it.
#[derive(Debug)]
pub(super) struct Command {
    path: String,
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
    uid: u32,
    gid: u32,
    /// Device and inode of the container's `/`, which the process checks
    /// is its root before it runs anything of the image's.
    root: (u64, u64),
}

/// A command's path, argv and environment as C strings.
type CStrings = (CString, Vec<CString>, Vec<CString>);

impl Command {
    fn c_strings(&self) -> Result<CStrings, ExecError> {
        let cstr = |s: &str| CString::new(s).map_err(|_| ExecError::Nul(s.to_owned()));
        let all = |v: &[String]| v.iter().map(|s| cstr(s)).collect::<Result<Vec<_>, _>>();
        Ok((cstr(&self.path)?, all(&self.argv)?, all(&self.env)?))
    }

    /// The plan's command with `extra_env` added, its executable found
    /// along the image's `PATH`.
    pub(super) fn of(plan: &SandboxPlan, extra_env: &[String]) -> Result<Command, ExecError> {
        let process = &plan.process;
        let root = fs::metadata("/").map_err(io_step("/"))?;
        Ok(Command {
            path: resolve(&process.argv, &process.env)?,
            argv: process.argv.clone(),
            env: process.env.iter().chain(extra_env).cloned().collect(),
            cwd: process.cwd.clone(),
            uid: process.uid,
            gid: process.gid,
            root: (root.dev(), root.ino()),
        })
    }
}

/// Where a handler's process failed, as its failure record names it: the
/// process reports a step and an errno, never text, because the zygote
/// must not allocate (see [`Zygote`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Ready = 0,
    Pdeathsig,
    Root,
    RootStat,
    UserNamespace,
    BoundingSet,
    NoNewPrivs,
    Seccomp,
    NotContainerRoot,
    Signals,
    Stdin,
    Stdout,
    Stderr,
    Setsid,
    Setgroups,
    Setresgid,
    Setresuid,
    Capabilities,
    Cwd,
    Exec,
}

impl Step {
    /// Every step, in the order of their discriminants (what a failure
    /// record carries), with what an error message calls it.
    const NAMES: [(Step, &'static str); 20] = [
        (Step::Ready, "ready"),
        (Step::Pdeathsig, "pdeathsig"),
        (Step::Root, "working directory /"),
        (Step::RootStat, "/"),
        (Step::UserNamespace, "user namespace"),
        (Step::BoundingSet, "bounding set"),
        (Step::NoNewPrivs, "no_new_privs"),
        (Step::Seccomp, "seccomp filter"),
        (Step::NotContainerRoot, "root"),
        (Step::Signals, "signal mask"),
        (Step::Stdin, "stdin"),
        (Step::Stdout, "stdout"),
        (Step::Stderr, "stderr"),
        (Step::Setsid, "setsid"),
        (Step::Setgroups, "setgroups"),
        (Step::Setresgid, "setresgid"),
        (Step::Setresuid, "setresuid"),
        (Step::Capabilities, "capabilities"),
        (Step::Cwd, "working directory"),
        (Step::Exec, "exec"),
    ];

    fn from_u8(byte: u8) -> Option<Step> {
        Step::NAMES.get(usize::from(byte)).map(|(step, _)| *step)
    }

    fn what(self) -> &'static str {
        Step::NAMES
            .get(self as usize)
            .map_or("?", |(_, what)| *what)
    }

    /// The error a failure at this step stands for, when it needs nothing
    /// of the command to say.
    fn error(self, errno: i32) -> ExecError {
        ExecError::Sys {
            what: self.what().to_owned(),
            source: nix::Error::from_raw(errno),
        }
    }
}

/// A step and the errno it failed with: what a handler's process writes
/// to its failure pipe before it exits.
type Failure = (Step, i32);

/// The failure pipe's record: the step, then the errno (native endian).
const RECORD: usize = 5;

fn record((step, errno): Failure) -> [u8; RECORD] {
    let e = errno.to_ne_bytes();
    [step as u8, e[0], e[1], e[2], e[3]]
}

/// A failure record read back by init; `None` when it is not one.
fn parse_record(bytes: &[u8]) -> Option<Failure> {
    let (&step, errno) = bytes.split_first()?;
    let errno: [u8; 4] = errno.try_into().ok()?;
    Some((Step::from_u8(step)?, i32::from_ne_bytes(errno)))
}

fn rustix_errno(step: Step) -> impl FnOnce(rustix::io::Errno) -> Failure {
    move |e| (step, e.raw_os_error())
}

/// In a handler's process: writes its failure record and exits. Only
/// system calls: the zygote shares init's memory and must not run libc's
/// or Rust's exit handlers in it.
fn fail(failure_pipe: BorrowedFd<'_>, failure: Failure) -> ! {
    let _ = rustix::io::write(failure_pipe, &record(failure));
    exit_now(127)
}

fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` ends the process at once; nothing of this process's
    // runs after it.
    unsafe { libc::_exit(code) }
}

/// A [`Command`] as the C strings and pointer arrays `execve` takes, made
/// by init. The process that execs it only reads it, so that it need not
/// allocate.
struct Prepared {
    path: CString,
    argv: Vec<*const libc::c_char>,
    env: Vec<*const libc::c_char>,
    /// What `argv` and `env` point into.
    _strings: (Vec<CString>, Vec<CString>),
    cwd: CString,
    uid: u32,
    gid: u32,
    root: (u64, u64),
}

impl Prepared {
    fn new(command: &Command) -> Result<Prepared, ExecError> {
        let (path, argv, env) = command.c_strings()?;
        let cwd =
            CString::new(command.cwd.as_str()).map_err(|_| ExecError::Nul(command.cwd.clone()))?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Prepared {
            path,
            argv: pointers(&argv),
            env: pointers(&env),
            _strings: (argv, env),
            cwd,
            uid: command.uid,
            gid: command.gid,
            root: command.root,
        })
    }

    /// The error a failure record of this command's process stands for.
    fn error(&self, (step, errno): Failure) -> ExecError {
        let source = nix::Error::from_raw(errno);
        match step {
            Step::NotContainerRoot => ExecError::NotContainerRoot,
            Step::Exec => ExecError::Exec {
                path: self.path.clone(),
                source,
            },
            Step::Cwd => ExecError::Sys {
                what: format!("working directory {:?}", self.cwd),
                source,
            },
            _ => step.error(errno),
        }
    }
}

/// The zygote's stack: it runs in init's memory (`CLONE_VM`), on pages of
/// its own, with a guard page below them.
struct Stack {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

/// Enough for the zygote's few frames; pages it does not touch cost nothing.
const ZYGOTE_STACK: usize = 256 << 10;

impl Stack {
    fn new() -> nix::Result<Stack> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
        let len = std::num::NonZeroUsize::new(ZYGOTE_STACK).ok_or(nix::Error::EINVAL)?;
        // SAFETY: a new private mapping, aliased by nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
            )
        }?;
        let stack = Stack {
            base,
            len: ZYGOTE_STACK,
        };
        // SAFETY: the lowest page of the mapping just made: an overflow
        // faults there instead of writing into init's memory.
        unsafe { mprotect(stack.base, 4096, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }

    /// The initial stack pointer: the top, 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        self.base
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(self.len)
            .cast()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Stack::new`; the caller ensures no
        // process runs on it any more.
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.len) };
    }
}

/// What the zygote reads from init's memory: descriptor numbers (valid in
/// its own table, a copy of init's at the clone) and the seccomp filter.
struct Shared {
    command: i32,
    failure: i32,
    stdout: i32,
    stderr: i32,
    userns: i32,
    /// init's ends and its control socket, closed in the zygote.
    close: [i32; 5],
    filters: *const Filters,
}

/// The zygote's memory, in init: its stack and what it reads.
struct Memory {
    stack: Stack,
    shared: Shared,
}

/// [`Memory`] freed only by [`ZygoteMemory::free`], once the zygote has
/// exec'd or exited; leaked when dropped (the zygote may still run on it).
struct ZygoteMemory(Option<Box<Memory>>);

impl ZygoteMemory {
    fn free(mut self) {
        drop(self.0.take());
    }
}

impl Drop for ZygoteMemory {
    fn drop(&mut self) {
        if let Some(memory) = self.0.take() {
            std::mem::forget(memory);
        }
    }
}

/// The handler's process before it is the handler: made while the sandbox
/// waits for a function, already in the user namespace, with an empty
/// bounding set, `no_new_privs` and the seccomp filter, blocked until init
/// gives it a command.
///
/// It is a `clone(CLONE_VM)` of init, not a fork: it shares init's memory
/// until its `execve`, so making it copies no page tables, its writes fault
/// no pages, and its `execve` tears down no copy of init's address space
/// (on a cold start's path). The price is discipline in the zygote:
/// - its set-up (namespace, bounding set, filter) runs while init waits for
///   its "ready" byte, so only one of the two runs at a time;
/// - from then on the two run at once, and the zygote only makes system
///   calls through `rustix` (which never touch errno, a thread-local it
///   would share with init) on data init prepared, allocating nothing,
///   until `sched_setscheduler` and `execve` (libc's: errno is written
///   only if they fail, and init is then blocked reading the failure
///   pipe);
/// - init frees the zygote's stack and the command only once the failure
///   pipe (close-on-exec) is at end of file: the zygote has exec'd or died.
pub(super) struct Zygote {
    pub(super) pid: Pid,
    /// init → zygote: the address of the [`Prepared`] command.
    command: OwnedFd,
    /// zygote → init: "ready", then a failure record; end of file once it
    /// has exec'd (the pipe is close-on-exec).
    failure: OwnedFd,
    /// The read ends of its stdout and stderr.
    stdout: OwnedFd,
    stderr: OwnedFd,
    memory: ZygoteMemory,
}

impl Zygote {
    /// Makes the zygote and waits until it has set itself up (or says
    /// why it could not).
    pub(super) fn spawn(
        control: BorrowedFd<'_>,
        userns: BorrowedFd<'_>,
        filters: &Filters,
    ) -> Result<Zygote, SetupError> {
        // Blocking both ways: the zygote and init each wait on the other.
        let control_pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(at(Stage::Pipes));
        let (command_r, command_w) = control_pipe()?;
        let (failure_r, failure_w) = control_pipe()?;
        let (out_r, out_w) = output_pipe()?;
        let (err_r, err_w) = output_pipe()?;
        let memory = Box::new(Memory {
            stack: Stack::new().map_err(at(Stage::Fork))?,
            shared: Shared {
                command: command_r.as_raw_fd(),
                failure: failure_w.as_raw_fd(),
                stdout: out_w.as_raw_fd(),
                stderr: err_w.as_raw_fd(),
                userns: userns.as_raw_fd(),
                close: [
                    command_w.as_raw_fd(),
                    failure_r.as_raw_fd(),
                    out_r.as_raw_fd(),
                    err_r.as_raw_fd(),
                    control.as_raw_fd(),
                ],
                filters,
            },
        });
        let shared: *const Shared = &memory.shared;
        // SAFETY: the child runs `zygote_main` on its own stack, reading
        // `memory`, which init keeps until the child has exec'd or exited
        // (see `Zygote`). No `CLONE_FILES`/`CLONE_FS`: its descriptors,
        // root and working directory are its own.
        let pid = unsafe {
            libc::clone(
                zygote_main,
                memory.stack.top(),
                libc::CLONE_VM | libc::SIGCHLD,
                shared.cast_mut().cast(),
            )
        };
        let pid = nix::Error::result(pid).map_err(at(Stage::Fork))?;
        drop((command_r, failure_w, out_w, err_w));
        let zygote = Zygote {
            pid: Pid::from_raw(pid),
            command: command_w,
            failure: failure_r,
            stdout: out_r,
            stderr: err_r,
            memory: ZygoteMemory(Some(memory)),
        };
        // Wait for its set-up: until "ready" it may use libc.
        let mut first = [0u8; RECORD];
        let n = read_full(zygote.failure.as_fd(), &mut first[..1]);
        match (n, first[0]) {
            (1, ready) if ready == Step::Ready as u8 => Ok(zygote),
            _ => {
                let n = n + read_full(zygote.failure.as_fd(), &mut first[n..]);
                let error = match parse_record(&first[..n]) {
                    Some((step, errno)) => step.error(errno),
                    None => ExecError::Gone(std::io::ErrorKind::UnexpectedEof.into()),
                };
                // It exited (or dies now): its memory may be freed.
                let _ = kill(zygote.pid, Signal::SIGKILL);
                let _ = waitpid(zygote.pid, None);
                zygote.memory.free();
                Err(SetupError::new(Stage::Fork, error))
            }
        }
    }

    /// Gives the zygote its command; returns the handler's pid and the
    /// read ends of its stdout and stderr once it has exec'd.
    pub(super) fn exec(self, command: &Command) -> Result<(Pid, OwnedFd, OwnedFd), ExecError> {
        let prepared = match Prepared::new(command) {
            Ok(p) => p,
            Err(e) => {
                self.discard();
                return Err(e);
            }
        };
        let address = (&raw const prepared).expose_provenance().to_ne_bytes();
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let sent = rustix::io::write(&self.command, &address);
        let mut got = [0u8; RECORD];
        let n = read_full(self.failure.as_fd(), &mut got);
        // End of file: the zygote has exec'd or is gone; nothing of init's
        // memory is used by it any more.
        let _ = read_full(self.failure.as_fd(), &mut [0u8; 1]);
        self.memory.free();
        let failed = match (sent, n) {
            (_, RECORD) => Some(
                parse_record(&got).map_or(ExecError::Child("an unreadable failure".into()), |f| {
                    prepared.error(f)
                }),
            ),
            (Err(e), _) => Some(ExecError::Gone(e.into())),
            (Ok(_), _) => None,
        };
        match failed {
            None => Ok((self.pid, self.stdout, self.stderr)),
            Some(e) => {
                let _ = kill(self.pid, Signal::SIGKILL);
                let _ = waitpid(self.pid, None);
                Err(e)
            }
        }
    }

    /// Ends the zygote unused. Init's `SIGCHLD` handling reaps it: a
    /// start does not wait for its exit (so its memory is left to init's
    /// exit: it may not be freed before the zygote is gone).
    pub(super) fn discard(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
    }
}

/// Reads until `buf` is full or end of file; returns how much was read.
fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..)
        && !rest.is_empty()
    {
        match rustix::io::read(fd, rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    n
}

/// The zygote, from `clone` to `execve`, in init's memory (see [`Zygote`]).
extern "C" fn zygote_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: init keeps `Shared` until this process has exec'd or exited.
    let shared = unsafe { &*arg.cast_const().cast::<Shared>() };
    // SAFETY: descriptors of this process's table, open until it execs.
    let fd = |raw: i32| unsafe { BorrowedFd::borrow_raw(raw) };
    let failure = fd(shared.failure);
    if let Err(f) = set_up(shared) {
        fail(failure, f);
    }
    if rustix::io::write(failure, &[Step::Ready as u8]).is_err() {
        exit_now(127);
    }
    // init runs again: from here only `rustix`, no allocation.
    let mut address = [0u8; 8];
    if read_full(fd(shared.command), &mut address) != address.len() {
        // No command: the sandbox was dropped unused.
        exit_now(0);
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    // SAFETY: init sent the address of a `Prepared` it keeps until this
    // process has exec'd or exited.
    let prepared =
        unsafe { &*std::ptr::with_exposed_provenance::<Prepared>(usize::from_ne_bytes(address)) };
    let failed = become_handler(prepared, None, fd(shared.stdout), fd(shared.stderr), None);
    fail(failure, failed)
}

/// The zygote's set-up, while init waits for it: everything that does not
/// depend on the function.
fn set_up(shared: &Shared) -> Result<(), Failure> {
    for raw in shared.close {
        // SAFETY: init's ends of the pipes and its control socket, copies
        // in this process's table that nothing here uses.
        let _ = unsafe { libc::close(raw) };
    }
    let nix_errno = |step: Step| move |e: nix::Error| (step, e as i32);
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(nix_errno(Step::Pdeathsig))?;
    // At the host's `/` for now: pivot_root moves it to the container's.
    chdir("/").map_err(nix_errno(Step::Root))?;
    // SAFETY: the user namespace's descriptor, open in init for the
    // sandbox's life (and so in this table).
    let userns = unsafe { BorrowedFd::borrow_raw(shared.userns) };
    setns(userns, CloneFlags::CLONE_NEWUSER).map_err(nix_errno(Step::UserNamespace))?;
    // Entering a user namespace gives the full bounding set back (the
    // kernel's `set_cred_user_ns`), whatever init dropped before the
    // clone: the zygote drops it itself, with the `CAP_SETPCAP` it now
    // has in the namespace, so that the handler, like a CGI process,
    // starts with none.
    sys::drop_bounding_set().map_err(nix_errno(Step::BoundingSet))?;
    nix::sys::prctl::set_no_new_privs().map_err(nix_errno(Step::NoNewPrivs))?;
    // The filter goes on last: everything the zygote does from here to
    // `execve` must be allowed by it.
    // SAFETY: init's filters, alive while init waits for this set-up.
    let filters = unsafe { &*shared.filters };
    filters.apply().map_err(|e| (Step::Seccomp, e.errno()))
}

/// Starts a CGI process: the plan's command with `extra_env` added, as
/// the plan's user, with no capabilities, `no_new_privs` and the seccomp
/// filter. Returns its pid, or why it could not be executed.
pub(super) fn spawn_cgi(
    plan: &SandboxPlan,
    extra_env: &[String],
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    filters: &Filters,
) -> Result<Pid, ExecError> {
    let prepared = Prepared::new(&Command::of(plan, extra_env)?)?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_step("pipe"))?;
    #[expect(
        clippy::disallowed_methods,
        reason = "init is single-threaded: it forks each CGI process"
    )]
    // SAFETY: init is single-threaded, so the child may allocate and run
    // arbitrary code until it execs.
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Err(e) => Err(sys_step("fork")(e)),
        Ok(ForkResult::Child) => {
            drop(err_r);
            let failed = become_handler(
                &prepared,
                Some(stdin.as_fd()),
                stdout.as_fd(),
                stderr.as_fd(),
                Some(filters),
            );
            fail(err_w.as_fd(), failed)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(err_w);
            drop(stdout);
            drop(stderr);
            let mut got = [0u8; RECORD];
            let n = read_full(err_r.as_fd(), &mut got);
            if n == 0 {
                return Ok(child);
            }
            let _ = waitpid(child, None);
            Err(parse_record(&got[..n])
                .map_or(ExecError::Child("an unreadable failure".into()), |f| {
                    prepared.error(f)
                }))
        }
    }
}

/// In a handler's process: becomes `prepared`'s command. `filters` is the
/// seccomp filter to install, unless the process has it already. Returns
/// only on failure, with where. Allocates nothing and makes its system
/// calls through `rustix`, so that the zygote may run it in init's memory.
fn become_handler(
    prepared: &Prepared,
    stdin: Option<BorrowedFd<'_>>,
    stdout: BorrowedFd<'_>,
    stderr: BorrowedFd<'_>,
    filters: Option<&Filters>,
) -> Failure {
    let run = || -> Result<std::convert::Infallible, Failure> {
        let root = rustix::fs::stat(c"/").map_err(rustix_errno(Step::RootStat))?;
        if (root.st_dev, root.st_ino) != prepared.root {
            return Err((Step::NotContainerRoot, 0));
        }
        // SAFETY: an all-zero `sigset_t` is the empty set; pthread_sigmask
        // returns its error rather than setting errno.
        let rc = unsafe {
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err((Step::Signals, rc));
        }
        match stdin {
            Some(fd) => rustix::stdio::dup2_stdin(fd),
            None => rustix::fs::open(
                c"/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .and_then(rustix::stdio::dup2_stdin),
        }
        .map_err(rustix_errno(Step::Stdin))?;
        rustix::stdio::dup2_stdout(stdout).map_err(rustix_errno(Step::Stdout))?;
        rustix::stdio::dup2_stderr(stderr).map_err(rustix_errno(Step::Stderr))?;
        rustix::process::setsid().map_err(rustix_errno(Step::Setsid))?;
        rustix::thread::set_thread_groups(&[]).map_err(rustix_errno(Step::Setgroups))?;
        let gid = rustix::process::Gid::from_raw_unchecked(prepared.gid);
        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(rustix_errno(Step::Setresgid))?;
        let uid = rustix::process::Uid::from_raw_unchecked(prepared.uid);
        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(rustix_errno(Step::Setresuid))?;
        rustix::thread::clear_ambient_capability_set()
            .and_then(|()| {
                let none = rustix::thread::CapabilitySet::empty();
                rustix::thread::set_capabilities(
                    None,
                    rustix::thread::CapabilitySets {
                        effective: none,
                        permitted: none,
                        inheritable: none,
                    },
                )
            })
            .map_err(rustix_errno(Step::Capabilities))?;
        rustix::process::chdir(prepared.cwd.as_c_str()).map_err(rustix_errno(Step::Cwd))?;
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        if let Some(filters) = filters {
            rustix::thread::set_no_new_privs(true).map_err(rustix_errno(Step::NoNewPrivs))?;
            filters.apply().map_err(|e| (Step::Seccomp, e.errno()))?;
        }
        // Last, so that every thread the handler makes inherits the serving
        // policy (its steps up to here are the cold start's: see
        // `sys::Priority::Serving`). Best effort; like `execve`, libc's
        // call writes errno only if it fails.
        let _ = sys::set_priority(None, sys::Priority::Serving);
        // SAFETY: NULL-terminated arrays of pointers to C strings, all
        // owned by `prepared`.
        unsafe {
            libc::execve(
                prepared.path.as_ptr(),
                prepared.argv.as_ptr(),
                prepared.env.as_ptr(),
            )
        };
        Err((
            Step::Exec,
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    };
    match run() {
        Err(failure) => failure,
        Ok(never) => match never {},
    }
}

/// The executable `argv[0]` names: itself if it has a `/`, else the first
/// match along the plan's `PATH` (the image's, not the host's).
fn resolve(argv: &[String], env: &[String]) -> Result<String, ExecError> {
    let name = argv.first().ok_or(ExecError::EmptyCommand)?;
    if name.contains('/') {
        return Ok(name.clone());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(crate::container::plan::DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate.to_string_lossy().into_owned());
        }
    }
    Err(ExecError::NotFound(name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(path: &Path) {
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn resolves_along_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir_all(&first).unwrap();
        fs::create_dir_all(&second).unwrap();
        executable(&second.join("tool"));
        executable(&first.join("tool2"));
        // Not executable: skipped.
        fs::write(first.join("tool"), "data").unwrap();
        let env = vec![format!("PATH={}::{}", first.display(), second.display())];
        let argv = |name: &str| vec![name.to_owned(), "--flag".to_owned()];
        assert_eq!(
            resolve(&argv("tool"), &env).unwrap(),
            second.join("tool").display().to_string()
        );
        assert_eq!(
            resolve(&argv("tool2"), &env).unwrap(),
            first.join("tool2").display().to_string()
        );
        // A directory of that name is not an executable.
        fs::create_dir_all(first.join("sub")).unwrap();
        assert!(matches!(
            resolve(&argv("sub"), &env),
            Err(ExecError::NotFound(name)) if name == "sub"
        ));
    }

    #[test]
    fn failure_records_name_every_step_and_its_errno() {
        for (i, (step, _)) in Step::NAMES.iter().enumerate() {
            assert_eq!(*step as usize, i, "Step::NAMES is in discriminant order");
            assert_eq!(parse_record(&record((*step, 13))), Some((*step, 13)));
        }
        assert_eq!(parse_record(&[]), None);
        assert_eq!(parse_record(&[Step::Exec as u8, 1, 0]), None, "cut short");
        assert_eq!(parse_record(&[200, 0, 0, 0, 0]), None, "no such step");
        let command = Command {
            path: "/bin/run".into(),
            argv: vec!["run".into(), "--flag".into()],
            env: vec!["A=1".into()],
            cwd: "/srv".into(),
            uid: 1000,
            gid: 1000,
            root: (1, 2),
        };
        let prepared = Prepared::new(&command).unwrap();
        assert_eq!(prepared.argv.len(), 3, "argv ends with a null pointer");
        assert!(prepared.argv.last().unwrap().is_null());
        assert!(prepared.env.last().unwrap().is_null());
        assert_eq!(
            prepared.error((Step::Exec, libc::ENOENT)).to_string(),
            "exec \"/bin/run\": No such file or directory"
        );
        assert_eq!(
            prepared.error((Step::Cwd, libc::ENOENT)).to_string(),
            "working directory \"/srv\": ENOENT: No such file or directory"
        );
        assert_eq!(
            prepared.error((Step::NotContainerRoot, 0)).to_string(),
            "refusing to run: this process's / is not the container's"
        );
    }

    #[test]
    fn paths_with_a_slash_are_taken_as_given() {
        let env = vec!["PATH=/nowhere".to_owned()];
        assert_eq!(resolve(&["./run".to_owned()], &env).unwrap(), "./run");
        assert_eq!(resolve(&["/bin/x".to_owned()], &env).unwrap(), "/bin/x");
    }

    #[test]
    fn empty_and_missing_commands_are_refused() {
        assert!(matches!(resolve(&[], &[]), Err(ExecError::EmptyCommand)));
        let err = resolve(
            &["no-such-tool-anywhere".to_owned()],
            &["PATH=/nowhere".to_owned()],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec \"no-such-tool-anywhere\": executable file not found in $PATH"
        );
    }

    #[test]
    fn without_a_path_the_default_one_is_searched() {
        // /bin/sh exists on every machine the tests run on.
        let found = resolve(&["sh".to_owned()], &[]).unwrap();
        assert!(found.ends_with("/sh"), "{found}");
    }
}
