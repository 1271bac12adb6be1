//! What a container holds on the host — its init (by pidfd) and its
//! cgroup — and how it is let go: killed, then the cgroup removed once the
//! kernel has finished its processes off. Also the sweep, at start, of the
//! cgroups that servers no longer running left behind.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::container::cgroup::{Cgroup, Cgroups};
use crate::container::sys;

/// One sandbox's host resources. Dropping it kills init, which ends the
/// PID namespace (the kernel kills the rest) and with the last process
/// the mount namespace; the cgroup is then removed.
pub(crate) struct Sandbox {
    pub(crate) pidfd: OwnedFd,
    pub(crate) cgroup: CgroupGuard,
    /// OOM kills already reported.
    pub(crate) oom_seen: AtomicU64,
}

impl Sandbox {
    /// Whether the OOM killer struck since the last call.
    pub(crate) fn oom_killed(&self) -> bool {
        let kills = self
            .cgroup
            .cgroup
            .as_ref()
            .map_or(0, |c| self.cgroup.cgroups.oom_kills(c).unwrap_or(0));
        self.oom_seen.fetch_max(kills, Ordering::AcqRel) < kills
    }

    pub(crate) fn kill(&self) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), nix::sys::signal::Signal::SIGKILL);
    }

    /// Whether init still runs (a pidfd polls readable once it exited).
    pub(crate) fn is_alive(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Kills the sandbox and waits until its cgroup is gone.
    pub(crate) async fn release(mut self) {
        self.kill();
        if let Some(cgroup) = self.cgroup.cgroup.take() {
            let cgroups = self.cgroup.cgroups.clone();
            let _ = tokio::task::spawn_blocking(move || remove_cgroup(&cgroups, &cgroup)).await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes the cgroup when dropped (after the sandbox's processes).
pub(crate) struct CgroupGuard {
    pub(crate) cgroups: Arc<Cgroups>,
    pub(crate) cgroup: Option<Cgroup>,
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let cgroups = self.cgroups.clone();
            // Removal waits for the kernel to finish the processes off.
            std::thread::spawn(move || remove_cgroup(&cgroups, &cgroup));
        }
    }
}

/// Kills and removes the sandboxes' cgroups that servers no longer running
/// left (after a crash); returns how many there were. Cgroups are named
/// `sandbox-<server pid>-<n>`, so servers sharing a host (or a cgroup)
/// leave each other's sandboxes alone.
pub(crate) fn sweep_leftovers(cgroups: &Cgroups) -> usize {
    let Ok(existing) = cgroups.existing() else {
        return 0;
    };
    let mut removed = 0;
    for cgroup in &existing {
        let owner = cgroup
            .name()
            .rsplit('-')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(server_is_running) {
            continue;
        }
        remove_cgroup(cgroups, cgroup);
        removed += 1;
    }
    removed
}

/// Whether `pid` is a live wisp process other than this one.
fn server_is_running(pid: u32) -> bool {
    pid != std::process::id()
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "wisp")
}

/// Kills what is left in `cgroup` and removes it, retrying while the
/// kernel finishes off its processes.
fn remove_cgroup(cgroups: &Cgroups, cgroup: &Cgroup) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for pid in cgroups.processes(cgroup).unwrap_or_default() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        match cgroups.remove(cgroup) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!(error = %e, "a sandbox cgroup could not be removed");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
