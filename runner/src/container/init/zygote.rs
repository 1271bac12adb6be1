//! The handler's process: the zygote, forked while the sandbox is
//! pre-made (user namespace, empty bounding set, `no_new_privs` and
//! seccomp already applied),
//! which execs the function's command once it has one; and, for CGI, one
//! process forked per request. A [`Command`] is everything init resolved
//! (executable along the image's `PATH`, environment, ids), so the child
//! only applies it.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::stat::{Mode, umask};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Pid, Uid, chdir, setresgid, setresuid};

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
    #[error("the command: {0}")]
    Command(#[source] serde_json::Error),
    #[error("{0}")]
    Seccomp(#[source] crate::container::seccomp::SeccompError),
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
#[derive(Debug, serde::Serialize, serde::Deserialize)]
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

/// The handler's process before it is the handler: forked while the
/// sandbox waits for a function, already in the user namespace, with an
/// empty bounding set, `no_new_privs` and the seccomp filter, blocked
/// until init sends it a [`Command`] (JSON, then end of file).
pub(super) struct Zygote {
    pub(super) pid: Pid,
    /// init → zygote: the command.
    command: OwnedFd,
    /// zygote → init: why it could not exec; end of file when it did
    /// (the pipe is close-on-exec).
    failure: OwnedFd,
    /// The read ends of its stdout and stderr.
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Zygote {
    pub(super) fn fork(
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
        #[expect(
            clippy::disallowed_methods,
            reason = "init is single-threaded: it forks the handler's process"
        )]
        // SAFETY: init is single-threaded, so the child may allocate and
        // run arbitrary code until it execs.
        let forked = unsafe { nix::unistd::fork() };
        match forked.map_err(at(Stage::Fork))? {
            ForkResult::Child => {
                drop((command_w, failure_r, out_r, err_r));
                sys::close_raw(control.as_raw_fd());
                let error = Zygote::wait_and_exec(command_r, out_w, err_w, userns, filters)
                    .map_or_else(|e| e.to_string(), |()| String::new());
                let _ = fs::File::from(failure_w).write_all(error.as_bytes());
                std::process::exit(127);
            }
            ForkResult::Parent { child } => Ok(Zygote {
                pid: child,
                command: command_w,
                failure: failure_r,
                stdout: out_r,
                stderr: err_r,
            }),
        }
    }

    /// In the zygote: everything that does not depend on the function,
    /// then waits for the command. Returns only on failure, or with `Ok`
    /// when init dropped the sandbox without a function.
    fn wait_and_exec(
        command: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
        userns: BorrowedFd<'_>,
        filters: &Filters,
    ) -> Result<(), ExecError> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys_step("pdeathsig"))?;
        // At the host's `/` for now: pivot_root moves it to the container's.
        chdir("/").map_err(sys_step("working directory"))?;
        setns(userns, CloneFlags::CLONE_NEWUSER).map_err(sys_step("user namespace"))?;
        // Entering a user namespace gives the full bounding set back (the
        // kernel's `set_cred_user_ns`), whatever init dropped before the
        // fork: the zygote drops it itself, with the `CAP_SETPCAP` it now
        // has in the namespace, so that the handler, like a CGI process,
        // starts with none.
        sys::drop_bounding_set().map_err(sys_step("bounding set"))?;
        nix::sys::prctl::set_no_new_privs().map_err(sys_step("no_new_privs"))?;
        // The filter goes on last: everything the zygote does from here to
        // `execve` must be allowed by it.
        filters.apply().map_err(ExecError::Seccomp)?;
        warm_up();
        let mut text = Vec::new();
        fs::File::from(command)
            .read_to_end(&mut text)
            .map_err(io_step("reading the command"))?;
        if text.is_empty() {
            return Ok(());
        }
        let command: Command = serde_json::from_slice(&text).map_err(ExecError::Command)?;
        Err(become_handler(&command, None, stdout, stderr, None))
    }

    /// Gives the zygote its command; returns the handler's pid and the
    /// read ends of its stdout and stderr once it has exec'd.
    pub(super) fn exec(self, command: &Command) -> Result<(Pid, OwnedFd, OwnedFd), ExecError> {
        let text = serde_json::to_vec(command).map_err(ExecError::Command)?;
        let sent = fs::File::from(self.command).write_all(&text);
        let mut why = String::new();
        let _ = fs::File::from(self.failure).read_to_string(&mut why);
        let failed = match sent {
            Err(e) => Some(ExecError::Gone(e)),
            Ok(()) if !why.is_empty() => Some(ExecError::Child(why)),
            Ok(()) => None,
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
    /// start does not wait for its exit.
    pub(super) fn discard(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
    }
}

/// Runs, on a made-up command, the code the zygote runs on its real one,
/// so that its pages are mapped (a fork maps none of the executable's) and
/// its heap has grown before a cold start needs them.
fn warm_up() {
    let sample = Command {
        path: "/bin/true".into(),
        argv: vec!["true".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        root: (0, 0),
    };
    if let Ok(text) = serde_json::to_vec(&sample)
        && let Ok(parsed) = serde_json::from_slice::<Command>(&text)
    {
        let _ = parsed.c_strings();
    }
    let _ = fs::metadata("/");
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
    let command = Command::of(plan, extra_env)?;
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
            let error = become_handler(&command, Some(stdin), stdout, stderr, Some(filters));
            let _ = fs::File::from(err_w).write_all(error.to_string().as_bytes());
            std::process::exit(127);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(err_w);
            drop(stdout);
            drop(stderr);
            let mut why = String::new();
            let _ = fs::File::from(err_r).read_to_string(&mut why);
            if why.is_empty() {
                Ok(child)
            } else {
                let _ = waitpid(child, None);
                Err(ExecError::Child(why))
            }
        }
    }
}

/// In a forked child: becomes `command`'s process. `filters` is the
/// seccomp filter to install, unless the process has it already. Returns
/// only on failure, with why.
fn become_handler(
    command: &Command,
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    filters: Option<&Filters>,
) -> ExecError {
    let run = || -> Result<std::convert::Infallible, ExecError> {
        let (path, argv, env) = command.c_strings()?;
        let root = fs::metadata("/").map_err(io_step("/"))?;
        if (root.dev(), root.ino()) != command.root {
            return Err(ExecError::NotContainerRoot);
        }
        SigSet::all()
            .thread_unblock()
            .map_err(sys_step("signal mask"))?;
        let stdin = match stdin {
            Some(fd) => fd,
            None => fs::File::open("/dev/null")
                .map_err(io_step("/dev/null"))?
                .into(),
        };
        nix::unistd::dup2_stdin(&stdin).map_err(sys_step("stdin"))?;
        nix::unistd::dup2_stdout(&stdout).map_err(sys_step("stdout"))?;
        nix::unistd::dup2_stderr(&stderr).map_err(sys_step("stderr"))?;
        nix::unistd::setsid().map_err(sys_step("setsid"))?;
        let (uid, gid) = (Uid::from_raw(command.uid), Gid::from_raw(command.gid));
        nix::unistd::setgroups(&[]).map_err(sys_step("setgroups"))?;
        setresgid(gid, gid, gid).map_err(sys_step("setresgid"))?;
        setresuid(uid, uid, uid).map_err(sys_step("setresuid"))?;
        sys::clear_capabilities().map_err(sys_step("capabilities"))?;
        chdir(command.cwd.as_str()).map_err(|source| ExecError::Sys {
            what: format!("working directory {:?}", command.cwd),
            source,
        })?;
        umask(Mode::from_bits_truncate(0o022));
        if let Some(filters) = filters {
            nix::sys::prctl::set_no_new_privs().map_err(sys_step("no_new_privs"))?;
            filters.apply().map_err(ExecError::Seccomp)?;
        }
        nix::unistd::execve(&path, &argv, &env).map_err(|source| ExecError::Exec { path, source })
    };
    match run() {
        Err(e) => e,
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
