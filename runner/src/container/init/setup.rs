//! The sandbox's set-up steps, as host root in the namespaces the
//! spawner's `clone` made: [`isolate`] does what no function needs (it runs
//! while the sandbox is pre-made); [`mount_rootfs`] may follow, ahead of
//! the function, for an image the gateway expects; [`take_function`] makes
//! the sandbox the function's once its plan arrives; [`drop_bounding_set`]
//! empties init's bounding set once the handler is exec'ing.

use std::fs;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Uid, setresgid, setresuid};

use super::mounts::Premounted;
pub(super) use super::mounts::mount_rootfs;
use super::{SetupError, at};
use crate::container::plan::{Filesystems, SandboxPlan};
use crate::container::proto::{SpawnRequest, Stage};
use crate::container::sys;

/// What does not depend on the function: network namespace (a kept one,
/// `netns`, is entered; a new one is set up), cgroup, cgroup namespace,
/// mount propagation.
pub(super) fn isolate(req: &SpawnRequest, netns: Option<i32>) -> Result<(), SetupError> {
    umask(Mode::empty());
    sys::reset_sigchld().map_err(at(Stage::Signals))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(at(Stage::Pdeathsig))?;
    for dir in &req.cgroup_dirs {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, "0").map_err(|e| {
            SetupError::new(Stage::Cgroup, format!("joining {}: {e}", dir.display()))
        })?;
    }
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(at(Stage::CgroupNamespace))?;
    match netns {
        Some(fd) => {
            // SAFETY: the spawner's descriptor of the kept namespace, in
            // this process's copy of its table; closed here, once entered.
            let ns = unsafe { OwnedFd::from_raw_fd(fd) };
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(at(Stage::NetworkNamespace))?;
        }
        None => {
            sys::loopback_up().map_err(at(Stage::Loopback))?;
            sys::sandbox_tcp().map_err(at(Stage::NetworkNamespace))?;
        }
    }
    // No mount event crosses between this namespace and the host's.
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(at(Stage::MakePrivate))?;
    Ok(())
}

/// The root filesystem as a function's plan finds it.
pub(super) enum Root {
    /// Mounted ahead
    /// ([`ToInit::Mount`](crate::container::proto::ToInit::Mount)): these
    /// filesystems, the host's tree already detached.
    Mounted(Filesystems),
    /// Not mounted yet; with the standard mounts made ahead, if they
    /// could be.
    Pending(Option<Premounted>),
}

/// Makes the sandbox the function's: root filesystem (unless mounted
/// ahead, for this plan), hostname, user namespace. Init's bounding set,
/// which entering the namespace fills, is emptied later, off the cold
/// start's path but before init forks anything ([`drop_bounding_set`]).
pub(super) fn take_function(
    plan: &SandboxPlan,
    scratch: &Path,
    userns: BorrowedFd<'_>,
    root: Root,
) -> Result<(), SetupError> {
    match root {
        Root::Mounted(fs) if plan.has_filesystems(&fs) => {}
        // The gateway gives a sandbox that mounted ahead only a plan with
        // the same filesystems; anything else is refused, not patched up.
        Root::Mounted(_) => {
            return Err(SetupError::new(
                Stage::Overlay,
                "the filesystems mounted ahead are not the plan's",
            ));
        }
        Root::Pending(premounted) => mount_rootfs(&plan.filesystems(), scratch, premounted)?,
    }
    nix::unistd::sethostname(&plan.hostname).map_err(at(Stage::Hostname))?;
    // Leaving the initial user namespace is the last step: from here on
    // this process is container root, a plain uid on the host.
    nix::unistd::setgroups(&[]).map_err(at(Stage::Setgroups))?;
    setns(userns, CloneFlags::CLONE_NEWUSER).map_err(at(Stage::UserNamespace))?;
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(at(Stage::Setresgid))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(at(Stage::Setresuid))?;
    Ok(())
}

/// Empties init's capability bounding set (41 `prctl`s, each a copy of its
/// credentials). It limits only what a process gains at `execve`, and init
/// never execs: what it guards is the CGI processes init forks, which
/// inherit it. The handler, a zygote made before, empties its own. So
/// init drops it once the handler's exec is under way (or, for CGI,
/// before its first fork) rather than on the cold start's path.
pub(super) fn drop_bounding_set() -> Result<(), SetupError> {
    sys::drop_bounding_set().map_err(at(Stage::BoundingSet))
}
