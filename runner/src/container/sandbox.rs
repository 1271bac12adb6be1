//! What a container holds on the host — its init (by pidfd), its cgroup
//! and its network namespace — and how it is let go: killed, then, once
//! the kernel has finished its processes off, the spawner told (it reaps
//! init and may keep the namespace: [`Ending`]) and the cgroup kept for the
//! next sandbox ([`Cgroups::keep`]) or removed. Also the sweep, at start, of the cgroups
//! that servers no longer running left behind.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::container::cgroup::{Cgroup, Cgroups};
use crate::container::spawner::Ender;
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

    /// Whether init still runs.
    pub(crate) fn is_alive(&self) -> bool {
        !exited_within(&self.pidfd, Duration::ZERO)
    }

    /// Kills the sandbox and waits until its cgroup is empty (and kept)
    /// or gone.
    pub(crate) async fn release(mut self) {
        self.kill();
        if let Some(cgroup) = self.cgroup.cgroup.take() {
            let cgroups = self.cgroup.cgroups.clone();
            let ending = self.cgroup.ending.take();
            let init = self.pidfd.try_clone().ok();
            let _ = tokio::task::spawn_blocking(move || {
                retire_cgroup(&cgroups, cgroup, true, ending, init.as_ref());
            })
            .await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keeps or removes the cgroup when dropped (after the sandbox's
/// processes), and tells the spawner the sandbox ended.
pub(crate) struct CgroupGuard {
    pub(crate) cgroups: Arc<Cgroups>,
    pub(crate) cgroup: Option<Cgroup>,
    pub(crate) ending: Option<Ending>,
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let cgroups = self.cgroups.clone();
            let ending = self.ending.take();
            // This waits for the kernel to finish the processes off.
            std::thread::spawn(move || retire_cgroup(&cgroups, cgroup, true, ending, None));
        }
    }
}

/// What the spawner is told when a sandbox's processes are gone: the pid
/// of its init (to reap) and the network namespace it handed over (to
/// keep for another sandbox).
pub(crate) struct Ending {
    pub(crate) ender: Ender,
    pub(crate) pid: i32,
    pub(crate) netns: Option<OwnedFd>,
}

impl Ending {
    fn report(self) {
        self.ender.ended(self.pid, self.netns);
    }
}

/// Kills and removes the sandboxes' cgroups that servers no longer running
/// left (after a crash); returns how many there were. Cgroups are named
/// `sandbox-<owner>-<n>`, where the owner is the server's pid and its start
/// time ([`owner_tag`]), so servers sharing a host (or a cgroup) leave each
/// other's sandboxes alone, whatever their binaries are called, and a pid
/// reused by another process does not keep a dead server's sandboxes.
pub(crate) fn sweep_leftovers(cgroups: &Cgroups) -> usize {
    let Ok(existing) = cgroups.existing() else {
        return 0;
    };
    let mut removed = 0;
    for cgroup in existing {
        if owner_is_running(cgroup.name().rsplit('-').nth(1).unwrap_or("")) {
            continue;
        }
        retire_cgroup(cgroups, cgroup, false, None, None);
        removed += 1;
    }
    removed
}

/// This server as the owner of its sandboxes' cgroups: `<pid>.<start
/// time>` (clock ticks after boot, `/proc/<pid>/stat` field 22), which
/// names one process for the machine's uptime.
pub(crate) fn owner_tag() -> String {
    let pid = std::process::id();
    format!("{pid}.{}", start_time(pid).unwrap_or(0))
}

/// Whether `owner` (an [`owner_tag`]) is a live process other than this
/// one. A name without a start time (an older wisp's, or none) is not.
fn owner_is_running(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once('.') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    pid != std::process::id() && start_time(pid) == Some(start)
}

/// When process `pid` started, in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    super::procs::stat(i32::try_from(pid).ok()?).map(|s| s.start_time)
}

/// Whether the process behind `pidfd` has exited (its pidfd polls
/// readable), waiting for it at most `within`; a pidfd that cannot be
/// polled counts as exited (nothing is left to wait for).
fn exited_within(pidfd: &OwnedFd, within: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(ready) => return ready > 0,
            Err(nix::errno::Errno::EINTR) if !left.is_zero() => {}
            Err(_) => return true,
        }
    }
}

/// Kills what is left in `cgroup` and, once the kernel has finished its
/// processes off, reports the sandbox's end to the spawner (`ending`) and
/// keeps the cgroup for another sandbox ([`Cgroups::keep`]) if `keep`, else
/// (or if it is not kept) removes it; gives up after 5 s, leaving it to
/// the next start's sweep. Given the sandbox's `init` (its pidfd), it
/// first waits for init to exit: init is the PID namespace's first
/// process, and the kernel finishes every other process of the namespace
/// before init's exit completes, so the cgroup is then found empty on the
/// first look, with no polling while init exits (at idle priority).
fn retire_cgroup(
    cgroups: &Cgroups,
    mut cgroup: Cgroup,
    mut keep: bool,
    mut ending: Option<Ending>,
    init: Option<&OwnedFd>,
) {
    let within = Duration::from_secs(5);
    let deadline = Instant::now() + within;
    if let Some(init) = init {
        exited_within(init, within);
    }
    loop {
        let pids = cgroups.processes(&cgroup).unwrap_or_default();
        if pids.is_empty()
            && let Some(ending) = ending.take()
        {
            ending.report();
        }
        if pids.is_empty() && keep {
            match cgroups.keep(cgroup) {
                Ok(()) => return,
                Err(back) => (cgroup, keep) = (back, false),
            }
        }
        for &pid in &pids {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if pids.is_empty() || !keep {
            match cgroups.remove(&cgroup) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(error = %e, "a sandbox cgroup could not be removed");
                    return;
                }
                Err(_) => {}
            }
        } else if Instant::now() >= deadline {
            tracing::warn!("a sandbox cgroup still had processes after 5 s");
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sleep SECONDS` and its pidfd.
    fn sleeper(seconds: &str) -> (std::process::Child, OwnedFd) {
        let child = std::process::Command::new("sleep")
            .arg(seconds)
            .spawn()
            .unwrap();
        let pidfd = sys::pidfd_open(i32::try_from(child.id()).unwrap()).unwrap();
        (child, pidfd)
    }

    #[test]
    fn waiting_for_an_exit_returns_once_the_process_is_gone_or_at_the_bound() {
        let (mut quick, pidfd) = sleeper("0.1");
        assert!(exited_within(&pidfd, Duration::from_secs(30)));
        assert!(
            quick.try_wait().unwrap().is_some(),
            "returned before the process exited"
        );
        let (mut slow, pidfd) = sleeper("30");
        assert!(!exited_within(&pidfd, Duration::from_millis(20)));
        assert!(slow.try_wait().unwrap().is_none(), "it still runs");
        slow.kill().unwrap();
        slow.wait().unwrap();
    }

    #[test]
    fn this_process_is_its_own_owner_but_not_running_elsewhere() {
        let tag = owner_tag();
        let (pid, start) = tag.split_once('.').unwrap();
        assert_eq!(pid, std::process::id().to_string());
        assert_ne!(start, "0", "the start time was read");
        // This process is skipped (it sweeps only others' leftovers).
        assert!(!owner_is_running(&tag));
    }

    #[test]
    fn a_live_process_owns_only_with_its_start_time() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap();
        assert!(owner_is_running(&format!("{pid}.{start}")));
        // The same pid with another start time: the pid was reused.
        assert!(!owner_is_running(&format!("{pid}.{}", start + 1)));
        // An older wisp's name, without a start time, or garbage.
        assert!(!owner_is_running(&pid.to_string()));
        assert!(!owner_is_running("x.y"));
        assert!(!owner_is_running(""));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!owner_is_running(&format!("{pid}.{start}")));
    }
}
