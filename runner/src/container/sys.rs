//! The few system calls the container backend makes that neither `std` nor
//! `nix` wraps safely: pidfds, bringing loopback up, capability sets,
//! `close_range`, scheduling policy and the new mount API (detached
//! mounts, `move_mount`, reconfiguring a mounted filesystem). One small
//! function each, with its `unsafe` justified.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

/// A pidfd for `pid` (Linux 5.3+): signals reach exactly that process even
/// after its pid is reused, and it polls readable when the process exits.
pub fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(fd)?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind `pidfd`.
pub fn pidfd_send_signal(
    pidfd: BorrowedFd<'_>,
    signal: nix::sys::signal::Signal,
) -> nix::Result<()> {
    // SAFETY: a valid descriptor, a valid signal, no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the union member SIOCGIFFLAGS just filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// The TCP settings of a sandbox's network namespace (of the calling
/// thread: the files under `/proc/sys/net` are those of whoever opens
/// them), written when it is made: no `TIME_WAIT` entries
/// (`tcp_max_tw_buckets` 0) and no metrics cached from closed connections
/// (`tcp_no_metrics_save`). Both keep an exited sandbox's namespace empty
/// for the next (see `container::netns`).
pub fn sandbox_tcp() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "0")?;
    std::fs::write("/proc/sys/net/ipv4/tcp_no_metrics_save", "1")
}

/// Empties the capability bounding set, so no later `execve` (not even of
/// a setuid binary, or by uid 0) can gain a capability. Needs `CAP_SETPCAP`.
pub fn drop_bounding_set() -> nix::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        match Errno::result(rc) {
            Ok(_) => {}
            // Past the last capability this kernel knows.
            Err(Errno::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec.
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(rc).map(drop)
}

/// Closes every descriptor from 3 up but those in `keep`: what a process
/// cloned from the spawner holds of the spawner's table and does not use.
/// The caller must hold no owned handle to a descriptor it closes.
pub fn close_all_except(keep: &[i32]) -> nix::Result<()> {
    let close = |first: u32, last: u32| {
        // SAFETY: close_range with integer arguments; the caller keeps
        // what it still uses.
        Errno::result(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
    };
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd >= 3)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 3;
    for fd in keep {
        if fd > first {
            close(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close(first, u32::MAX)
}

/// Closes a descriptor known only by number (one inherited across
/// `clone` that this process must not keep).
pub fn close_raw(fd: i32) {
    // SAFETY: the caller names a descriptor this process holds and that no
    // owned handle in this process refers to any more.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

/// Restores `SIGCHLD`'s default disposition (init must see its children).
pub fn reset_sigchld() -> nix::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installing the default disposition runs no handler code.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }.map(drop)
}

/// Registers an owned descriptor with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps its descriptor open and unchanged for as
    // long as the `AsyncFd` owns it.
    Ok(unsafe { tokio::io::unix::AsyncFd::register(fd) }?)
}

/// The scheduling policy a sandbox's processes run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// `SCHED_IDLE`: a sandbox pre-made ahead of demand (and the spawner
    /// while it clones one), or init once it is told to stop (its
    /// teardown): none must take a CPU from work that is waited on. Their
    /// cgroups are idle too (`Cgroups::set_idle`): a task's policy counts
    /// only inside its cgroup.
    Background,
    /// `SCHED_OTHER` (nice 0): init and its zygote once their sandbox is
    /// taken, so that the steps of a cold start they are woken for run at
    /// once.
    Normal,
    /// `SCHED_BATCH` (nice 0): the function's own processes, from their
    /// `execve` on. The same fair share of the CPUs as `SCHED_OTHER`, but
    /// their wake-ups do not preempt the task that woke them: a request the
    /// gateway writes to a handler does not switch the gateway out in the
    /// middle of its work. Not before the exec: a woken `SCHED_BATCH` task
    /// waits for the running one to sleep or for the next tick, and the
    /// zygote woken with its command is on the cold start's path (issue 13:
    /// the command → exec step took 0.35 ms at the median at `SCHED_BATCH`).
    Serving,
}

/// Sets the scheduling policy of `pid` (this process when `None`).
pub(crate) fn set_priority(pid: Option<nix::unistd::Pid>, priority: Priority) -> nix::Result<()> {
    let policy = match priority {
        Priority::Background => libc::SCHED_IDLE,
        Priority::Normal => libc::SCHED_OTHER,
        Priority::Serving => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    let pid = pid.map_or(0, nix::unistd::Pid::as_raw);
    // SAFETY: plain syscall with a valid parameter block.
    Errno::result(unsafe { libc::sched_setscheduler(pid, policy, &param) }).map(drop)
}

// The new mount API (Linux 5.2): filesystems made as detached mounts,
// attached later with `move_mount`. Constants from <linux/mount.h>.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSCONFIG_CMD_RECONFIGURE: libc::c_uint = 7;
const FSPICK_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
pub(crate) const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;

/// A step of making a detached mount, or of reconfiguring a mounted
/// filesystem, that failed.
#[derive(Debug, thiserror::Error)]
#[error("{fstype}: {step}: {source}")]
pub(crate) struct MountApiError {
    fstype: String,
    /// The system call, or the option being set.
    step: String,
    #[source]
    source: Errno,
}

impl MountApiError {
    /// `step` on `fstype` failed with the last system call's error.
    fn last(fstype: &str, step: &str) -> MountApiError {
        MountApiError {
            fstype: fstype.to_owned(),
            step: step.to_owned(),
            source: Errno::last(),
        }
    }
}

/// `s` as a C string; one with a NUL byte is `EINVAL` at `step`.
fn c_string(fstype: &str, step: &str, s: &[u8]) -> Result<std::ffi::CString, MountApiError> {
    std::ffi::CString::new(s).map_err(|_| MountApiError {
        fstype: fstype.to_owned(),
        step: step.to_owned(),
        source: Errno::EINVAL,
    })
}

/// Sets `options` (`key=value` sets a string, a bare `key` a flag) on
/// the filesystem context `fs`, then runs `command` on it.
fn configure(
    fs: BorrowedFd<'_>,
    fstype: &str,
    options: &[&str],
    command: libc::c_uint,
) -> Result<(), MountApiError> {
    let cstr = |s: &str| c_string(fstype, &format!("{s:?}"), s.as_bytes());
    for option in options.iter().filter(|o| !o.is_empty()) {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (cstr(k)?, Some(cstr(v)?)),
            None => (cstr(option)?, None),
        };
        let (cmd, value_ptr) = match &value {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: valid descriptor and C strings; the result is checked.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                key.as_ptr(),
                value_ptr,
                0,
            )
        };
        if r < 0 {
            return Err(MountApiError::last(fstype, option));
        }
    }
    let null: *const libc::c_char = std::ptr::null();
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), command, null, null, 0) };
    if r < 0 {
        let step = if command == FSCONFIG_CMD_CREATE {
            "create"
        } else {
            "reconfigure"
        };
        return Err(MountApiError::last(fstype, step));
    }
    Ok(())
}

/// A new, detached mount of `fstype` with `options` (`key=value` sets a
/// string, a bare `key` a flag) and mount attributes `attrs`; the
/// descriptor refers to its root.
pub(crate) fn detached_mount(
    fstype: &str,
    options: &[&str],
    attrs: libc::c_uint,
) -> Result<OwnedFd, MountApiError> {
    let name = c_string(fstype, "name", fstype.as_bytes())?;
    // SAFETY: valid C string; the result is checked.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    let fs = owned(fs).ok_or_else(|| MountApiError::last(fstype, "fsopen"))?;
    configure(fs.as_fd(), fstype, options, FSCONFIG_CMD_CREATE)?;
    // SAFETY: valid descriptor; the result is checked.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    owned(mnt).ok_or_else(|| MountApiError::last(fstype, "fsmount"))
}

/// Reconfigures the filesystem (the superblock, not the mount's own
/// attributes) mounted at `mount` with exactly `options`: what is not
/// named goes back to its default.
pub(crate) fn reconfigure(
    mount: &Path,
    fstype: &str,
    options: &[&str],
) -> Result<(), MountApiError> {
    let path = c_string(fstype, "path", mount.as_os_str().as_bytes())?;
    // SAFETY: valid C string; the result is checked.
    let fs = unsafe {
        libc::syscall(
            libc::SYS_fspick,
            libc::AT_FDCWD,
            path.as_ptr(),
            FSPICK_CLOEXEC,
        )
    };
    let fs = owned(fs).ok_or_else(|| MountApiError::last(fstype, "fspick"))?;
    configure(fs.as_fd(), fstype, options, FSCONFIG_CMD_RECONFIGURE)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_SETATTR_EMPTY_PATH: libc::c_uint = libc::AT_EMPTY_PATH as libc::c_uint;

/// `struct mount_attr` of <linux/mount.h>.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached bind mount of the host directory `source` (that mount
/// only, not those below it) with mount attributes `attrs`, for
/// [`attach_mount`] to put in place once the host's tree is gone from
/// view (after `pivot_root`).
pub(crate) fn bind_tree(source: &str, attrs: libc::c_uint) -> Result<OwnedFd, MountApiError> {
    let fail = |step: &str| MountApiError::last(source, step);
    let tree = clone_tree(source.as_ref(), false)?;
    let attr = MountAttr {
        attr_set: u64::from(attrs),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: valid descriptor, C string and attribute block of the size
    // passed; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            MOUNT_SETATTR_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(fail("mount_setattr"));
    }
    Ok(tree)
}

/// A detached copy of the mount at the host path `source` (with the
/// mounts below it if `recursive`), for [`attach_mount`]; its flags are
/// the source's.
pub(crate) fn clone_tree(source: &Path, recursive: bool) -> Result<OwnedFd, MountApiError> {
    let name = source.to_string_lossy();
    let path = c_string(&name, "path", source.as_os_str().as_bytes())?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: valid C string; the result is checked.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    owned(tree).ok_or_else(|| MountApiError::last(&name, "open_tree"))
}

/// Attaches the detached mount `mount` at `target` (resolved from this
/// process's root and working directory).
pub(crate) fn attach_mount(mount: BorrowedFd<'_>, target: &str) -> nix::Result<()> {
    let target = std::ffi::CString::new(target).map_err(|_| Errno::EINVAL)?;
    let empty = c"";
    // SAFETY: valid descriptor and C strings; the result is checked.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// A descriptor returned by a raw system call, or `None` on failure.
fn owned(fd: libc::c_long) -> Option<OwnedFd> {
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
