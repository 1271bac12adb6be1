//! What runs inside a new container: the set-up of its sandbox (as host
//! root, in the namespaces the spawner's `clone` made) and then wisp's own
//! init, which stays PID 1 for the container's life.
//!
//! Set-up order (verified on the development machine, see
//! docs/architecture.md): join the cgroup and make a cgroup namespace;
//! enter the kept network namespace the spawner passed, or set up the new
//! one (loopback up, the sandbox's TCP settings); make `/` private; make
//! the zygote, the future handler (a `clone(CLONE_VM)`: it shares init's
//! memory until it execs), which enters the user namespace, empties its bounding set (entering
//! the namespace gave it back in full) and installs the seccomp filter; make
//! `/proc`, `/dev` (with its nodes) and `/tmp` as detached mounts — a
//! pre-made sandbox waits here for a function — then mount the scratch
//! tmpfs and the overlay; `pivot_root` into it and detach the host's root;
//! only then attach `/proc`, `/dev` and `/tmp`, so that no path the image
//! controls (its symlinks) is ever resolved against the host's tree (a
//! sandbox told `Mount` does these steps for the image the gateway expects
//! and waits again, still host root, until its function's plan asks for
//! those very filesystems); then hostname; finally enter the user
//! namespace, where container root is an unprivileged host uid.
//!
//! Init then waits for the gateway's `Start` (the cgroup limits are
//! written), gives the zygote its command and, once it has exec'd, empties
//! its own capability bounding set while the handler starts up (for CGI it
//! kills the zygote, empties the set, and forks one process per request:
//! they inherit it); it reaps every process reparented to it, forwards the
//! handler's output to the gateway, and exits when the handler does, when
//! asked to stop, or when the gateway goes away. Its exit ends the PID
//! namespace: the kernel kills whatever is left.
//!
//! - [`setup`]: the steps before the function ([`setup::isolate`]), after
//!   its plan arrives ([`setup::take_function`]), and the bounding set
//!   ([`setup::drop_bounding_set`]);
//! - [`mounts`]: scratch tmpfs, overlay root, `pivot_root`, standard mounts;
//! - [`zygote`]: the handler's process and CGI processes, up to `execve`;
//! - [`supervisor`]: PID 1's loop once the sandbox is set up.

mod mounts;
mod setup;
mod supervisor;
mod zygote;

use std::os::fd::BorrowedFd;

use crate::container::proto::{self, FromInit, SpawnRequest, Stage, Timings, ToInit, monotonic_ns};
use crate::container::seccomp::Filters;
use crate::container::sys::{self, Priority};

use mounts::Premounted;
use setup::Root;
use supervisor::Supervisor;
use zygote::Zygote;

/// A failed set-up step, with its cause.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {source}")]
pub(crate) struct SetupError {
    stage: Stage,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl SetupError {
    fn new(stage: Stage, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SetupError {
            stage,
            source: source.into(),
        }
    }
}

/// Tags an error with the step it failed.
fn at<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    stage: Stage,
) -> impl FnOnce(E) -> SetupError {
    move |e| SetupError::new(stage, e)
}

/// The container's process, from right after `clone` to its exit.
/// Returns the exit code of the container's init.
pub(crate) fn container_main(
    req: &SpawnRequest,
    control: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    netns: Option<i32>,
    filters: &Filters,
) -> isize {
    let mut timings = Timings {
        cloned: monotonic_ns(),
        ..Timings::default()
    };
    let report = |f: SetupError| {
        let _ = proto::send(
            control,
            &FromInit::SetupFailed {
                stage: f.stage,
                error: f.source.to_string(),
            },
            &[],
        );
        1
    };
    if req.background {
        // Best effort: a sandbox at normal priority is only less polite.
        let _ = sys::set_priority(None, Priority::Background);
    }
    if let Err(f) = setup::isolate(req, netns) {
        return report(f);
    }
    // The handler's process, made now so that making it, the user
    // namespace and the seccomp filter are not paid during a cold start.
    let zygote = match Zygote::spawn(control, userns, filters) {
        Ok(z) => z,
        Err(f) => return report(f),
    };
    // The standard mounts and the scratch tmpfs, made now and attached
    // after `pivot_root`; without them (an old kernel, say) they are
    // mounted then instead.
    let premounted = Premounted::make(req.id_map, &req.scratch).ok();
    timings.sandbox = monotonic_ns();
    // A pre-made sandbox: wait until the gateway gives it a function,
    // perhaps mounting the root filesystem of an image it expects first.
    let mut buf = Vec::new();
    let mut root = Root::Pending(premounted);
    let plan = loop {
        match proto::recv::<ToInit>(control, &mut buf) {
            Ok((ToInit::Run { plan }, _)) => break plan,
            Ok((ToInit::Mount { filesystems }, _)) => {
                let Root::Pending(premounted) = root else {
                    return report(SetupError::new(Stage::Overlay, "mounted ahead twice"));
                };
                if let Err(f) = setup::mount_rootfs(&filesystems, &req.scratch, premounted) {
                    return report(f);
                }
                root = Root::Mounted(*filesystems);
                if req.background {
                    let _ = sys::set_priority(None, Priority::Background);
                }
                if proto::send(control, &FromInit::Mounted, &[]).is_err() {
                    return 0;
                }
            }
            // Never used: the gateway dropped it, or went away.
            _ => return 0,
        }
    };
    timings.assigned = monotonic_ns();
    // The zygote's steps up to its exec are the cold start's, as init's
    // are (the gateway raised init itself, if it was pre-made, when it
    // took the sandbox); it lowers itself to the serving policy right
    // before the exec.
    let _ = sys::set_priority(Some(zygote.pid), Priority::Normal);
    if let Err(f) = setup::take_function(&plan, &req.scratch, userns, root) {
        return report(f);
    }
    timings.rootfs = monotonic_ns();
    // Nothing of the image's runs before the gateway has limited the cgroup.
    match proto::recv::<ToInit>(control, &mut buf) {
        Ok((ToInit::Start, _)) => {}
        _ => return 0,
    }
    timings.started = monotonic_ns();
    let mut init = Supervisor::new(&plan, control, filters, timings, zygote);
    match init.run() {
        Ok(()) => 0,
        Err(f) => report(f),
    }
}

/// Closes what the container holds of the spawner's descriptors but the
/// raw descriptor numbers `keep` (its control socket, the user namespace,
/// a kept network namespace to enter), and marks those close-on-exec.
/// Nothing of the spawner's (its socket to the gateway, the free network
/// namespaces, another sandbox's control socket being made) stays with
/// the sandbox.
pub(crate) fn close_inherited(keep: &[i32]) {
    // Without close_range (Linux < 5.9) the first fails, and the second
    // still keeps everything from an exec'd process.
    let _ = sys::close_all_except(keep);
    let _ = sys::cloexec_from(3);
}
