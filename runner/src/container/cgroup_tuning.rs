//! The kernel's `favordynmods` cgroup2 mount option, which wisp turns on
//! where it can (`wisp serve --cgroup-favordynmods`, on by default).
//!
//! Why: every sandbox's init joins its cgroup by writing to
//! `cgroup.procs`. That write takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing, and a percpu rwsem's writer
//! first waits for an RCU grace period whenever no other writer came
//! within the last one (`rcu_sync_enter`): ~12 ms on this VM, with
//! `cgroup_mutex` held, so the other sandboxes being made wait behind it.
//! Back to back, a cold start that takes a sandbox still joining its
//! cgroup waits for it: that was most of the back-to-back p99 (see
//! BENCHMARKS.md). With `favordynmods` (Linux 6.0+) the rwsem stays in
//! its slow mode, so a join never waits for a grace period; forks and
//! exits on the host pay a memory barrier instead of a per-CPU increment
//! (Documentation/admin-guide/cgroup-v2.rst: "favordynmods"). From Linux
//! 6.18 it also makes a `cgroup.procs` write take the joining process's
//! own rwsem instead of the global one, and that switch is one-way: it
//! stays until reboot even if the option is turned off again. Operators
//! who prefer to choose at boot have `cgroup_favordynmods=true`.
//!
//! The option belongs to the one cgroup2 hierarchy, but the rwsem is
//! global, so on a hybrid host (v1 controllers beside an empty cgroup2
//! mount) setting it there also speeds up the v1 joins. A v1 hierarchy
//! takes it only when mounted; a host with no cgroup2 mount keeps the
//! grace-period waits. The kernel applies it only from the initial cgroup
//! namespace: inside a container it is left as it is.

use std::path::{Path, PathBuf};

use super::sys;

const OPTION: &str = "favordynmods";

/// What to do about `favordynmods`, from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// The cgroup2 hierarchy mounted at `mount` already has it.
    Set { mount: PathBuf },
    /// Reconfigure the cgroup2 hierarchy at `mount` with `options`: the
    /// ones it has (a reconfigure resets what it does not name), plus
    /// `favordynmods`.
    Reconfigure {
        mount: PathBuf,
        options: Vec<String>,
    },
    /// No writable cgroup2 mount: nothing to set it on.
    NoCgroup2,
}

impl Plan {
    pub fn from_mountinfo(mountinfo: &str) -> Plan {
        let cgroup2 = super::cgroup::mounts(mountinfo).filter(|m| m.fstype == "cgroup2");
        for super::cgroup::Mounted { mount, options, .. } in cgroup2 {
            let options: Vec<&str> = options.split(',').collect();
            if options.contains(&"ro") {
                continue;
            }
            if options.contains(&OPTION) {
                return Plan::Set { mount };
            }
            let mut options: Vec<String> = options
                .into_iter()
                .filter(|o| !o.is_empty() && *o != "rw")
                .map(str::to_owned)
                .collect();
            options.push(OPTION.to_owned());
            return Plan::Reconfigure { mount, options };
        }
        Plan::NoCgroup2
    }
}

/// What [`favor_dynamic_modifications`] found or did.
#[derive(Debug)]
pub enum Outcome {
    AlreadySet(PathBuf),
    Set(PathBuf),
    /// The kernel took the reconfigure but the option is not shown: an
    /// older kernel, or not the initial cgroup namespace.
    NotTaken(PathBuf),
    Failed(PathBuf, String),
    NoCgroup2,
}

fn read_plan() -> Result<Plan, String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| Plan::from_mountinfo(&text))
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))
}

/// Reconfigures the cgroup2 hierarchy at `mount` with exactly `options`
/// (what is not named goes back to its default).
pub fn reconfigure(mount: &Path, options: &[String]) -> Result<(), String> {
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    sys::reconfigure(mount, "cgroup2", &options).map_err(|e| e.to_string())
}

/// Turns `favordynmods` on where it is off; says what happened.
pub fn favor_dynamic_modifications() -> Outcome {
    let (mount, options) = match read_plan() {
        Ok(Plan::Set { mount }) => return Outcome::AlreadySet(mount),
        Ok(Plan::NoCgroup2) => return Outcome::NoCgroup2,
        Ok(Plan::Reconfigure { mount, options }) => (mount, options),
        Err(e) => return Outcome::Failed(PathBuf::new(), e),
    };
    if let Err(e) = reconfigure(&mount, &options) {
        return Outcome::Failed(mount, e);
    }
    match read_plan() {
        Ok(Plan::Set { mount: now }) if now == mount => Outcome::Set(mount),
        _ => Outcome::NotTaken(mount),
    }
}

/// Logs what [`favor_dynamic_modifications`] did.
pub fn log(outcome: &Outcome) {
    let at = |p: &Path| p.display().to_string();
    match outcome {
        Outcome::AlreadySet(m) => tracing::debug!(mount = %at(m), "cgroup2 favordynmods is on"),
        Outcome::Set(m) => tracing::info!(
            mount = %at(m),
            "turned on cgroup2 favordynmods: a sandbox joining its cgroup no longer waits for an RCU grace period (--cgroup-favordynmods=false leaves the host's option alone)"
        ),
        Outcome::NotTaken(m) => tracing::info!(
            mount = %at(m),
            "cgroup2 favordynmods did not take (an older kernel, or not the host's cgroup namespace): a sandbox joining its cgroup may wait for an RCU grace period"
        ),
        Outcome::Failed(m, e) => tracing::warn!(
            mount = %at(m),
            error = %e,
            "could not turn on cgroup2 favordynmods: a sandbox joining its cgroup may wait for an RCU grace period"
        ),
        Outcome::NoCgroup2 => tracing::info!(
            "no cgroup2 mount to set favordynmods on: a sandbox joining its cgroup may wait for an RCU grace period"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_options_a_hierarchy_has_are_kept_and_favordynmods_added() {
        let systemd = "25 20 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            Plan::from_mountinfo(systemd),
            Plan::Reconfigure {
                mount: "/sys/fs/cgroup".into(),
                options: vec![
                    "nsdelegate".into(),
                    "memory_recursiveprot".into(),
                    "favordynmods".into()
                ],
            }
        );
        assert_eq!(
            Plan::from_mountinfo(HYBRID),
            Plan::Reconfigure {
                mount: "/sys/fs/cgroup/unified".into(),
                options: vec!["favordynmods".into()],
            }
        );
    }

    #[test]
    fn a_hierarchy_that_has_it_or_none_at_all_is_left_alone() {
        let set = HYBRID.replace("cgroup2 rw\n", "cgroup2 rw,favordynmods\n");
        assert_eq!(
            Plan::from_mountinfo(&set),
            Plan::Set {
                mount: "/sys/fs/cgroup/unified".into()
            }
        );
        let v1_only = HYBRID.lines().next().unwrap_or_default();
        assert_eq!(Plan::from_mountinfo(v1_only), Plan::NoCgroup2);
        let read_only = HYBRID.replace("cgroup2 rw\n", "cgroup2 ro\n");
        assert_eq!(Plan::from_mountinfo(&read_only), Plan::NoCgroup2);
    }
}
