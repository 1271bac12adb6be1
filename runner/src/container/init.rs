//! What runs inside a new container: the set-up of its sandbox (as host
//! root, in the namespaces the spawner's `clone` made) and then wisp's own
//! init, which stays PID 1 for the container's life.
//!
//! Set-up order (verified on the development machine, see
//! docs/architecture.md): join the cgroup and make a cgroup namespace;
//! loopback up; make `/` private; fork the zygote, the future handler,
//! which enters the user namespace and installs the seccomp filter; make
//! `/proc`, `/dev` (with its nodes) and `/tmp` as detached mounts — a
//! pre-made sandbox waits here for a function — then hostname; mount the
//! scratch tmpfs and the overlay; `pivot_root` into it and detach the
//! host's root; only then attach `/proc`, `/dev` and `/tmp`, so that no
//! path the image controls (its symlinks) is ever resolved against the
//! host's tree; finally enter the user namespace, where container root is
//! an unprivileged host uid.
//!
//! Init then drops the capability bounding set, waits for the gateway's
//! `Start` (the cgroup limits are written), gives the zygote its command
//! (or, for CGI, kills it and forks one process per request), reaps every process reparented to
//! it, forwards the handler's output to the gateway, and exits when the
//! handler does, when asked to stop, or when the gateway goes away. Its
//! exit ends the PID namespace: the kernel kills whatever is left.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{Mode, SFlag, makedev, umask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, chdir, pivot_root, setresgid, setresuid};

use crate::container::plan::{DEFAULT_SCRATCH_BYTES, Mount, Protocol, SandboxPlan};
use crate::container::proto::{
    self, ExitReport, ExitStatus, FromInit, SpawnRequest, Timings, ToInit, monotonic_ns,
};
use crate::container::seccomp::Filters;
use crate::container::sys;

/// Bytes of the handler's stderr kept for its exit report.
const STDERR_TAIL: usize = 4096;

/// A failed set-up step.
struct Failure {
    stage: &'static str,
    error: String,
}

fn at<E: std::fmt::Display>(stage: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| Failure {
        stage,
        error: e.to_string(),
    }
}

/// The container's process, from right after `clone` to its exit.
/// Returns the exit code of the container's init.
pub(crate) fn container_main(
    req: &SpawnRequest,
    control: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    filters: &Filters,
) -> isize {
    let mut timings = Timings {
        cloned: monotonic_ns(),
        ..Timings::default()
    };
    let report = |f: Failure| {
        let _ = proto::send(
            control,
            &FromInit::SetupFailed {
                stage: f.stage.to_owned(),
                error: f.error,
            },
            &[],
        );
        1
    };
    if req.background {
        // Best effort: a sandbox at normal priority is only less polite.
        let _ = sys::set_idle_priority(None, true);
    }
    if let Err(f) = prepare(req) {
        return report(f);
    }
    // The handler's process, forked now so that the fork, the user
    // namespace and the seccomp filter are not paid during a cold start.
    let zygote = match Zygote::fork(control, userns, filters) {
        Ok(z) => z,
        Err(f) => return report(f),
    };
    // The standard mounts and the scratch tmpfs, made now and attached
    // after `pivot_root`; without them (an old kernel, say) they are
    // mounted then instead.
    let premounted = Premounted::make(req.id_map, &req.scratch).ok();
    timings.sandbox = monotonic_ns();
    // A pre-made sandbox: wait until the gateway gives it a function.
    let mut buf = Vec::new();
    let plan = match proto::recv::<ToInit>(control, &mut buf) {
        Ok((ToInit::Run { plan }, _)) => plan,
        // Never used: the gateway dropped it, or went away.
        _ => return 0,
    };
    timings.assigned = monotonic_ns();
    if req.background {
        // The gateway raised init when it took the sandbox.
        let _ = sys::set_idle_priority(Some(zygote.pid), false);
    }
    if let Err(f) = assign(&plan, &req.scratch, userns, premounted) {
        return report(f);
    }
    timings.rootfs = monotonic_ns();
    // Nothing of the image's runs before the gateway has limited the cgroup.
    match proto::recv::<ToInit>(control, &mut buf) {
        Ok((ToInit::Start, _)) => {}
        _ => return 0,
    }
    let mut init = Init {
        plan: &plan,
        control,
        filters,
        timings,
        zygote: Some(zygote),
        handler: None,
        cgi: HashMap::new(),
        stderr_tail: Vec::new(),
        stop_deadline: None,
    };
    match init.run() {
        Ok(()) => 0,
        Err(f) => report(f),
    }
}

/// What does not depend on the function: cgroup, cgroup namespace,
/// loopback, mount propagation.
fn prepare(req: &SpawnRequest) -> Result<(), Failure> {
    umask(Mode::empty());
    sys::reset_sigchld().map_err(at("signals"))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(at("pdeathsig"))?;
    for dir in &req.cgroup_dirs {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, "0").map_err(|e| Failure {
            stage: "cgroup",
            error: format!("joining {}: {e}", dir.display()),
        })?;
    }
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(at("cgroup namespace"))?;
    sys::loopback_up().map_err(at("loopback"))?;
    // No mount event crosses between this namespace and the host's.
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(at("making / private"))?;
    Ok(())
}

/// Makes the sandbox the function's: hostname, root filesystem, user
/// namespace.
fn assign(
    plan: &SandboxPlan,
    scratch: &Path,
    userns: BorrowedFd<'_>,
    premounted: Option<Premounted>,
) -> Result<(), Failure> {
    nix::unistd::sethostname(&plan.hostname).map_err(at("hostname"))?;
    mount_rootfs(plan, scratch, premounted)?;
    // Leaving the initial user namespace is the last step: from here on
    // this process is container root, a plain uid on the host.
    nix::unistd::setgroups(&[]).map_err(at("setgroups"))?;
    setns(userns, CloneFlags::CLONE_NEWUSER).map_err(at("user namespace"))?;
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(at("setresgid"))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(at("setresuid"))?;
    sys::drop_bounding_set().map_err(at("capability bounding set"))?;
    Ok(())
}

fn mount_rootfs(
    plan: &SandboxPlan,
    scratch: &Path,
    premounted: Option<Premounted>,
) -> Result<(), Failure> {
    let owner = (plan.id_map.host_uid, plan.id_map.host_gid);
    match &premounted {
        Some(p) if p.owner == owner => {
            if plan.rootfs.scratch_bytes != DEFAULT_SCRATCH_BYTES {
                let none: Option<&str> = None;
                let size = format!("size={}", plan.rootfs.scratch_bytes);
                mount(
                    none,
                    scratch,
                    none,
                    MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(size.as_str()),
                )
                .map_err(at("scratch tmpfs"))?;
            }
        }
        _ => make_scratch(scratch, plan.rootfs.scratch_bytes, owner)?,
    }
    let (upper, work, root) = (scratch.join("u"), scratch.join("w"), scratch.join("r"));

    // lowerdir= holds at most a page: name the layers relative to their
    // common parent (the image store's `layers/`), which is our cwd.
    let base = common_parent(&plan.rootfs.lower).ok_or_else(|| Failure {
        stage: "overlay",
        error: "the layers share no parent directory".into(),
    })?;
    chdir(&base).map_err(at("overlay"))?;
    let mut lower = String::new();
    for layer in &plan.rootfs.lower {
        let rel = layer.strip_prefix(&base).unwrap_or(layer);
        let rel = rel
            .to_str()
            .filter(|s| !s.contains([',', ':']))
            .ok_or_else(|| Failure {
                stage: "overlay",
                error: format!(
                    "layer path {} is not usable in overlay options",
                    layer.display()
                ),
            })?;
        if !lower.is_empty() {
            lower.push(':');
        }
        lower.push_str(rel);
    }
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        plain(&upper)?,
        plain(&work)?
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::MS_NOSUID,
        Some(opts.as_str()),
    )
    .map_err(at("overlay"))?;
    chdir(&root).map_err(at("pivot_root"))?;
    pivot_root(".", ".").map_err(at("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(at("detaching the host root"))?;
    chdir("/").map_err(at("pivot_root"))?;

    // Only the standard mounts are made ahead; the scratch tmpfs was
    // used above whatever the plan's mounts.
    match premounted.filter(|p| p.fits(plan)) {
        Some(premounted) => premounted.attach(),
        None => {
            let (uid, gid) = (plan.id_map.host_uid, plan.id_map.host_gid);
            for m in &plan.mounts {
                mount_one(m, plan)?;
                if m.target == "/dev" {
                    let dev = fs::File::open("/dev").map_err(at("devices"))?;
                    make_devices(dev.as_fd(), &plan.devices, uid, gid)?;
                }
            }
            Ok(())
        }
    }
}

/// Mounts the scratch tmpfs (`bytes` big) on `dir`, with the overlay's
/// upper (`u`), work (`w`) and root (`r`) directories in it.
fn make_scratch(dir: &Path, bytes: u64, (uid, gid): (u32, u32)) -> Result<(), Failure> {
    let data = format!("size={bytes},mode=0755");
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(at("scratch tmpfs"))?;
    let upper = dir.join("u");
    for (sub, mode) in [
        (&upper, 0o755),
        (&dir.join("w"), 0o700),
        (&dir.join("r"), 0o755),
    ] {
        fs::DirBuilder::new()
            .mode(mode)
            .create(sub)
            .map_err(at("scratch dirs"))?;
    }
    // The top directory of the rootfs is the upper dir: owned by the
    // container's root, so that it may create files in `/`.
    nix::unistd::chown(&upper, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(at("scratch dirs"))
}

/// The standard mounts (`plan::standard_mounts`: `/proc`, `/dev` with its
/// nodes, `/dev/pts`, `/dev/shm`, `/tmp`), made while the sandbox waits for
/// a function as detached mounts (the new mount API), in order, and the
/// scratch tmpfs (at the default size, in place). After `pivot_root` each
/// detached mount is attached at its path inside the new root, so that, as
/// when they are mounted then, no path of the image's is ever resolved
/// against the host's tree.
struct Premounted {
    owner: (u32, u32),
    /// Detached; `attach` puts them in place.
    mounts: Vec<(String, OwnedFd)>,
}

impl Premounted {
    fn make(ids: crate::container::plan::IdMap, scratch: &Path) -> Result<Premounted, Failure> {
        let (uid, gid) = (ids.host_uid, ids.host_gid);
        let standard = crate::container::plan::standard_mounts();
        let mut mounts: Vec<(String, OwnedFd)> = Vec::new();
        for m in &standard {
            let fail = |error: String| Failure {
                stage: "mounts",
                error: format!("{}: {error}", m.target),
            };
            let fstype =
                m.fstype.as_deref().filter(|_| !m.bind).ok_or_else(|| {
                    fail("only filesystems, not bind mounts, are made ahead".into())
                })?;
            let mut options = vec![format!("source={}", m.source)];
            options.extend(m.data.split(',').map(str::to_owned));
            if fstype == "tmpfs" {
                options.extend([format!("uid={uid}"), format!("gid={gid}")]);
            }
            let mut attrs = 0;
            for (set, attr) in [
                (m.read_only, sys::MOUNT_ATTR_RDONLY),
                (m.nosuid, sys::MOUNT_ATTR_NOSUID),
                (m.nodev, sys::MOUNT_ATTR_NODEV),
                (m.noexec, sys::MOUNT_ATTR_NOEXEC),
            ] {
                if set {
                    attrs |= attr;
                }
            }
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            let mount = sys::detached_mount(fstype, &options, attrs).map_err(fail)?;
            if m.target == "/dev" {
                make_devices(
                    mount.as_fd(),
                    &crate::container::plan::standard_devices(),
                    uid,
                    gid,
                )?;
                // Mount points of what goes inside /dev.
                for inner in standard
                    .iter()
                    .filter_map(|n| n.target.strip_prefix("/dev/"))
                {
                    nix::sys::stat::mkdirat(mount.as_fd(), inner, Mode::from_bits_truncate(0o755))
                        .map_err(|e| fail(format!("{inner}: {e}")))?;
                    nix::unistd::fchownat(
                        mount.as_fd(),
                        inner,
                        Some(Uid::from_raw(uid)),
                        Some(Gid::from_raw(gid)),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| fail(format!("{inner}: {e}")))?;
                }
            }
            mounts.push((m.target.clone(), mount));
        }
        // Mounted in place: the scratch tmpfs is outside the new root.
        make_scratch(scratch, DEFAULT_SCRATCH_BYTES, (uid, gid))?;
        Ok(Premounted {
            owner: (uid, gid),
            mounts,
        })
    }

    /// Whether these are the mounts `plan` asks for.
    fn fits(&self, plan: &SandboxPlan) -> bool {
        plan.mounts == crate::container::plan::standard_mounts()
            && plan.devices == crate::container::plan::standard_devices()
            && self.owner == (plan.id_map.host_uid, plan.id_map.host_gid)
    }

    /// Attaches every mount at its path (run after `pivot_root`).
    fn attach(self) -> Result<(), Failure> {
        for (target, mount) in &self.mounts {
            mount_point(target)?;
            sys::attach_mount(mount.as_fd(), target).map_err(|e| Failure {
                stage: "mounts",
                error: format!("{target}: {e}"),
            })?;
        }
        Ok(())
    }
}

/// Makes the directory `target` (and its parents) if missing.
fn mount_point(target: &str) -> Result<(), Failure> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Failure {
            stage: "mounts",
            error: format!("{target}: {e}"),
        }),
    }
}

fn plain(path: &Path) -> Result<&str, Failure> {
    path.to_str()
        .filter(|s| !s.contains([',', ':']))
        .ok_or_else(|| Failure {
            stage: "overlay",
            error: format!("{} is not usable in overlay options", path.display()),
        })
}

fn common_parent(paths: &[PathBuf]) -> Option<PathBuf> {
    let mut base = paths.first()?.parent()?.parent()?.to_path_buf();
    while !paths.iter().all(|p| p.starts_with(&base)) {
        base = base.parent()?.to_path_buf();
    }
    Some(base)
}

/// Mounts one of the plan's filesystems, inside the new root. tmpfs mounts
/// belong to the container's root.
fn mount_one(m: &Mount, plan: &SandboxPlan) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure {
        stage: "mounts",
        error: format!("{}: {e}", m.target),
    };
    mount_point(&m.target)?;
    let mut flags = MsFlags::empty();
    for (set, flag) in [
        (m.bind, MsFlags::MS_BIND),
        (m.read_only, MsFlags::MS_RDONLY),
        (m.nosuid, MsFlags::MS_NOSUID),
        (m.nodev, MsFlags::MS_NODEV),
        (m.noexec, MsFlags::MS_NOEXEC),
    ] {
        if set {
            flags |= flag;
        }
    }
    let mut data = m.data.clone();
    if m.fstype.as_deref() == Some("tmpfs") {
        if !data.is_empty() {
            data.push(',');
        }
        data.push_str(&format!(
            "uid={},gid={}",
            plan.id_map.host_uid, plan.id_map.host_gid
        ));
    }
    mount(
        Some(m.source.as_str()),
        m.target.as_str(),
        m.fstype.as_deref(),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| fail(&e))
}

/// Creates `devices` in the fresh `/dev` tmpfs `dev` (as host root,
/// before the user namespace, which could not), owned by container root,
/// plus the usual links.
fn make_devices(
    dev: BorrowedFd<'_>,
    devices: &[String],
    uid: u32,
    gid: u32,
) -> Result<(), Failure> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Failure {
        stage: "devices",
        error: format!("/dev/{what}: {e}"),
    };
    for name in devices {
        let (major, minor) = match name.as_str() {
            "null" => (1, 3),
            "zero" => (1, 5),
            "full" => (1, 7),
            "random" => (1, 8),
            "urandom" => (1, 9),
            "tty" => (5, 0),
            other => return Err(fail(other, &"unknown device")),
        };
        nix::sys::stat::mknodat(
            dev,
            name.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| fail(name, &e))?;
        nix::unistd::fchownat(
            dev,
            name.as_str(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(name, &e))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        nix::unistd::symlinkat(target, dev, link).map_err(|e| fail(link, &e))?;
    }
    Ok(())
}

/// The container's PID 1 after set-up.
struct Init<'a> {
    plan: &'a SandboxPlan,
    control: BorrowedFd<'a>,
    filters: &'a Filters,
    timings: Timings,
    /// The forked process that becomes the `http` handler.
    zygote: Option<Zygote>,
    /// The `http` handler and its stdout/stderr pipes.
    handler: Option<Handler>,
    /// Running CGI processes, by pid.
    cgi: HashMap<Pid, u64>,
    stderr_tail: Vec<u8>,
    stop_deadline: Option<Instant>,
}

struct Handler {
    pid: Pid,
    port: u16,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    ready: bool,
    /// Next readiness probe and the current back-off.
    next_probe: Instant,
    backoff: Duration,
}

impl Init<'_> {
    fn run(&mut self) -> Result<(), Failure> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(at("signals"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(at("signals"))?;

        match self.plan.protocol {
            Protocol::Http { port } => {
                let zygote = self.zygote.take().ok_or_else(|| Failure {
                    stage: "exec",
                    error: "the handler's process is gone".into(),
                })?;
                let command = Command::of(self.plan, &[]).map_err(|error| Failure {
                    stage: "exec",
                    error,
                })?;
                let (pid, stdout, stderr) = zygote.exec(&command).map_err(|error| Failure {
                    stage: "exec",
                    error,
                })?;
                self.timings.exec = monotonic_ns();
                self.handler = Some(Handler {
                    pid,
                    port,
                    stdout: Some(stdout),
                    stderr: Some(stderr),
                    ready: false,
                    next_probe: Instant::now(),
                    backoff: Duration::from_micros(50),
                });
            }
            Protocol::Cgi => {
                // One process per request: the zygote is not needed.
                if let Some(zygote) = self.zygote.take() {
                    zygote.discard();
                }
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
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(at("poll")(e)),
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
                self.drain(1);
            }
            if err_ev {
                self.drain(2);
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

    fn poll_timeout(&self) -> PollTimeout {
        let now = Instant::now();
        let mut until: Option<Instant> = self.stop_deadline;
        if let Some(h) = &self.handler
            && !h.ready
        {
            until = Some(until.map_or(h.next_probe, |u| u.min(h.next_probe)));
        }
        match until {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis();
                PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX))
                    .unwrap_or(PollTimeout::NONE)
            }
        }
    }

    /// Tries the handler's port while it is not ready yet, backing off
    /// from 50 µs to 5 ms between tries.
    fn probe_readiness(&mut self) {
        let Some(h) = self.handler.as_mut() else {
            return;
        };
        if h.ready || Instant::now() < h.next_probe {
            return;
        }
        match TcpStream::connect(("127.0.0.1", h.port)) {
            Ok(stream) => {
                h.ready = true;
                self.timings.ready = monotonic_ns();
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
                h.backoff = (h.backoff * 2).min(Duration::from_millis(5));
            }
        }
    }

    fn handle(&mut self, msg: ToInit, fds: Vec<OwnedFd>) {
        match msg {
            ToInit::Connect => {
                let port = self.handler.as_ref().map_or(0, |h| h.port);
                match TcpStream::connect(("127.0.0.1", port)) {
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
                match spawn(self.plan, &env, Some(stdin), stdout, stderr, self.filters) {
                    Ok(pid) => {
                        self.cgi.insert(pid, id);
                    }
                    Err(error) => self.send(&FromInit::CgiFailed { id, error }),
                }
            }
            ToInit::Stop { grace_ms } => self.stop(Duration::from_millis(grace_ms)),
            ToInit::Run { .. } | ToInit::Start => {}
        }
    }

    fn stop(&mut self, grace: Duration) {
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
                self.drain(1);
                self.drain(2);
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

    /// Forwards what the handler wrote on `stream` (1 or 2).
    fn drain(&mut self, stream: u8) {
        let Some(h) = self.handler.as_mut() else {
            return;
        };
        let slot = if stream == 1 {
            &mut h.stdout
        } else {
            &mut h.stderr
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
                    if stream == 2 {
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

/// A close-on-exec pipe for a handler's output: init polls the read end,
/// which is non-blocking.
fn output_pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(at("pipes"))?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(at("pipes"))?;
    Ok((r, w))
}

/// What a process needs to become the handler: everything resolved by
/// init, so that the process only has to apply it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Command {
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
    fn c_strings(&self) -> Result<CStrings, String> {
        let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        let all = |v: &[String]| v.iter().map(|s| cstr(s)).collect::<Result<Vec<_>, _>>();
        Ok((cstr(&self.path)?, all(&self.argv)?, all(&self.env)?))
    }

    /// The plan's command with `extra_env` added, its executable found
    /// along the image's `PATH`.
    fn of(plan: &SandboxPlan, extra_env: &[String]) -> Result<Command, String> {
        let process = &plan.process;
        let root = fs::metadata("/").map_err(|e| format!("/: {e}"))?;
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
/// sandbox waits for a function, already in the user namespace, with
/// `no_new_privs` and the seccomp filter, blocked until init sends it a
/// [`Command`] (JSON, then end of file).
struct Zygote {
    pid: Pid,
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
    fn fork(
        control: BorrowedFd<'_>,
        userns: BorrowedFd<'_>,
        filters: &Filters,
    ) -> Result<Zygote, Failure> {
        // Blocking both ways: the zygote and init each wait on the other.
        let control_pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(at("pipes"));
        let (command_r, command_w) = control_pipe()?;
        let (failure_r, failure_w) = control_pipe()?;
        let (out_r, out_w) = output_pipe()?;
        let (err_r, err_w) = output_pipe()?;
        // SAFETY: init is single-threaded, so the child may allocate and
        // run arbitrary code until it execs.
        #[expect(
            clippy::disallowed_methods,
            reason = "init is single-threaded: it forks the handler's process"
        )]
        let forked = unsafe { nix::unistd::fork() };
        match forked.map_err(at("fork"))? {
            ForkResult::Child => {
                drop((command_w, failure_r, out_r, err_r));
                sys::close_raw(control.as_raw_fd());
                let error = Zygote::wait_and_exec(command_r, out_w, err_w, userns, filters);
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
    /// then waits for the command. Returns only on failure (an empty
    /// string when init dropped the sandbox without a function).
    fn wait_and_exec(
        command: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
        userns: BorrowedFd<'_>,
        filters: &Filters,
    ) -> String {
        let ready = || -> Result<Option<Command>, String> {
            let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{what}: {e}"));
            step("pdeathsig", nix::sys::prctl::set_pdeathsig(Signal::SIGKILL))?;
            // At the host's `/` for now: pivot_root moves it to the container's.
            step("working directory", chdir("/"))?;
            step("user namespace", setns(userns, CloneFlags::CLONE_NEWUSER))?;
            step("no_new_privs", nix::sys::prctl::set_no_new_privs())?;
            filters.apply().map_err(|e| e.to_string())?;
            warm_up();
            let mut text = Vec::new();
            fs::File::from(command)
                .read_to_end(&mut text)
                .map_err(|e| format!("reading the command: {e}"))?;
            if text.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| format!("the command: {e}"))
        };
        match ready() {
            Ok(Some(command)) => become_handler(&command, None, stdout, stderr, None),
            Ok(None) => String::new(),
            Err(e) => e,
        }
    }

    /// Gives the zygote its command; returns the handler's pid and the
    /// read ends of its stdout and stderr once it has exec'd.
    fn exec(self, command: &Command) -> Result<(Pid, OwnedFd, OwnedFd), String> {
        let text = serde_json::to_vec(command).map_err(|e| e.to_string())?;
        let sent = fs::File::from(self.command).write_all(&text);
        let mut why = String::new();
        let _ = fs::File::from(self.failure).read_to_string(&mut why);
        if let Err(e) = sent {
            why = format!("the handler's process is gone: {e}");
        }
        if why.is_empty() {
            Ok((self.pid, self.stdout, self.stderr))
        } else {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
            Err(why)
        }
    }

    /// Ends the zygote unused.
    fn discard(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
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
fn spawn(
    plan: &SandboxPlan,
    extra_env: &[String],
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    filters: &Filters,
) -> Result<Pid, String> {
    let command = Command::of(plan, extra_env)?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: init is single-threaded, so the child may allocate and run
    // arbitrary code until it execs.
    #[expect(
        clippy::disallowed_methods,
        reason = "init is single-threaded: it forks each CGI process"
    )]
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(err_r);
            let error = become_handler(&command, stdin, stdout, stderr, Some(filters));
            let _ = fs::File::from(err_w).write_all(error.as_bytes());
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
                Err(why)
            }
        }
    }
}

/// In a forked child: becomes `command`'s process. `filters` is the
/// seccomp filter to install, unless the process has it already. Returns
/// only on failure.
fn become_handler(
    command: &Command,
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    filters: Option<&Filters>,
) -> String {
    let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let run = || -> Result<(), String> {
        let (path, argv, env) = command.c_strings()?;
        let root = fs::metadata("/").map_err(|e| format!("/: {e}"))?;
        if (root.dev(), root.ino()) != command.root {
            return Err("refusing to run: this process's / is not the container's".into());
        }
        step("signal mask", SigSet::all().thread_unblock())?;
        let stdin = match stdin {
            Some(fd) => fd,
            None => fs::File::open("/dev/null")
                .map_err(|e| format!("/dev/null: {e}"))?
                .into(),
        };
        step("stdin", nix::unistd::dup2_stdin(&stdin))?;
        step("stdout", nix::unistd::dup2_stdout(&stdout))?;
        step("stderr", nix::unistd::dup2_stderr(&stderr))?;
        step("setsid", nix::unistd::setsid().map(drop))?;
        let (uid, gid) = (command.uid, command.gid);
        step("setgroups", nix::unistd::setgroups(&[]))?;
        step(
            "setresgid",
            setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid)),
        )?;
        step(
            "setresuid",
            setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid)),
        )?;
        step("capabilities", sys::clear_capabilities())?;
        step(
            &format!("working directory {:?}", command.cwd),
            chdir(command.cwd.as_str()),
        )?;
        umask(Mode::from_bits_truncate(0o022));
        if let Some(filters) = filters {
            step("no_new_privs", nix::sys::prctl::set_no_new_privs())?;
            filters.apply().map_err(|e| e.to_string())?;
        }
        let e = nix::unistd::execve(&path, &argv, &env).err();
        Err(format!(
            "exec {path:?}: {}",
            e.map_or_else(|| "failed".to_owned(), |e| e.desc().to_owned())
        ))
    };
    run().err().unwrap_or_default()
}

/// The executable `argv[0]` names: itself if it has a `/`, else the first
/// match along the plan's `PATH` (the image's, not the host's).
fn resolve(argv: &[String], env: &[String]) -> Result<String, String> {
    let name = argv.first().ok_or("empty command")?;
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
    Err(format!("exec {name:?}: executable file not found in $PATH"))
}

/// Raw descriptor numbers the container must not keep (the spawner's).
pub(crate) fn close_inherited(fds: &[i32]) {
    for &fd in fds {
        sys::close_raw(fd);
    }
    let _ = sys::cloexec_from(3);
}
