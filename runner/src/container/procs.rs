//! Processes as `/proc` shows them: one process's `stat` line ([`stat`],
//! whose command name may hold spaces and parentheses), and what a
//! sandbox's processes are doing, for the log, when its init has not
//! answered in time ([`describe`]): each process under init with its
//! state, the kernel function it sleeps in and, where the kernel shows it
//! (root only), its kernel stack — read only on that error path.

use std::collections::HashMap;
use std::fmt::Write;
use std::fs;

/// Lines past this many of a process's kernel stack are left out.
const STACK_FRAMES: usize = 12;
/// Processes past this many are counted, not described.
const MAX_PROCESSES: usize = 16;

/// The fields of `/proc/<pid>/stat` wisp reads.
pub(crate) struct Stat {
    pub(crate) comm: String,
    pub(crate) state: char,
    pub(crate) ppid: i32,
    /// When it started, in clock ticks after boot.
    pub(crate) start_time: u64,
}

/// Process `pid`'s `stat` line; `None` if it is gone.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) is in parentheses and may hold spaces and
    // parentheses: the fields after it are counted from the last `)`.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // Fields 3 (state), 4 (ppid) and 22 (starttime).
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start_time: rest.get(19)?.parse().ok()?,
    })
}

/// Every process's parent, from one pass over `/proc`.
fn parents() -> HashMap<i32, i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?.ppid)))
        .collect()
}

/// `init` and its descendants, parents before children.
fn tree(init: i32) -> Vec<i32> {
    let parents = parents();
    let mut found = vec![init];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        let mut children: Vec<i32> = parents
            .iter()
            .filter(|&(_, &p)| p == parent)
            .map(|(&c, _)| c)
            .collect();
        children.sort_unstable();
        found.extend(children);
        i += 1;
    }
    found
}

/// A description of `init`'s processes, one paragraph each; empty if
/// init is gone.
pub(crate) fn describe(init: i32) -> String {
    let mut out = String::new();
    let pids = tree(init);
    for &pid in pids.iter().take(MAX_PROCESSES) {
        let Some(s) = stat(pid) else { continue };
        let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let _ = write!(
            out,
            "pid {pid} ({}) state {} in {}",
            s.comm,
            s.state,
            if wchan.is_empty() || wchan == "0" {
                "-"
            } else {
                &wchan
            }
        );
        if let Ok(stack) = fs::read_to_string(format!("/proc/{pid}/stack")) {
            let frames: Vec<&str> = stack
                .lines()
                .take(STACK_FRAMES)
                // "[<0>] do_sys_poll+0x437/0x5c0": the function's name.
                .filter_map(|l| l.split_whitespace().nth(1)?.split('+').next())
                .collect();
            if !frames.is_empty() {
                // Innermost first: each called from the next.
                let _ = write!(out, " [{}]", frames.join(" < "));
            }
        }
        out.push_str("; ");
    }
    if pids.len() > MAX_PROCESSES {
        let _ = write!(out, "and {} more", pids.len() - MAX_PROCESSES);
    }
    out.trim_end_matches("; ").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_and_its_children_are_described_with_their_states() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let me = std::process::id() as i32;
        let text = describe(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(text.starts_with(&format!("pid {me} (")), "{text}");
        // Its name may still be the test's if it has not exec'd yet.
        assert!(text.contains(&format!("; pid {} (", child.id())), "{text}");
    }

    #[test]
    fn a_process_that_is_gone_is_described_as_nothing() {
        assert_eq!(describe(i32::MAX), "");
    }
}
