//! How busy the host's CPUs are: the signal a pool checks before it starts
//! another instance, since an instance the CPUs cannot feed only adds work
//! (its start, its share of the scheduler) without adding throughput.
//!
//! Read lazily from `/proc/stat`: no thread and no timer. A reading is the
//! busy share of all CPU time since the previous reading, taken at most
//! every [`MIN_SPAN`]; in between the last one is returned. The CPUs count
//! as saturated for a second after a reading of 85 % or more. After a quiet
//! spell the first reading covers the whole spell (the host was idle, which
//! is the right answer at the start of a burst).
//!
//! The figure is the host's: on a host whose CPUs wisp shares with a CPU
//! limit of its own (a cgroup quota on wisp itself), the limit is not seen.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The shortest span a reading covers (clock ticks are 10 ms, so a span
/// of 50 ms on two CPUs reads in steps of 10 %).
const MIN_SPAN: Duration = Duration::from_millis(50);
/// The busy share at which the CPUs count as saturated.
const SATURATED: f64 = 0.85;
/// How long the CPUs count as saturated after a reading said so: a pool
/// grows only once they have had room for this long, not in the gap of
/// one quieter reading (each start is itself work for the CPUs).
const REMEMBER: Duration = Duration::from_secs(1);

/// The host's CPU load.
pub struct CpuLoad {
    last: Mutex<Reading>,
}

struct Reading {
    at: Instant,
    ticks: Ticks,
    busy_share: f64,
    /// The last reading at or above [`SATURATED`].
    saturated_at: Option<Instant>,
}

/// Cumulative CPU time, all CPUs, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ticks {
    busy: u64,
    total: u64,
}

impl CpuLoad {
    /// The one reader for this process.
    pub fn host() -> &'static CpuLoad {
        static HOST: OnceLock<CpuLoad> = OnceLock::new();
        HOST.get_or_init(|| CpuLoad {
            last: Mutex::new(Reading {
                at: Instant::now(),
                ticks: read_ticks().unwrap_or_default(),
                busy_share: 0.0,
                saturated_at: None,
            }),
        })
    }

    /// Whether the CPUs were (nearly) all busy in the last second.
    pub fn saturated(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.refresh();
        last.saturated_at.is_some_and(|at| at.elapsed() < REMEMBER)
    }

    /// The busy share (0–1) of all CPU time over the recent span; 0 when
    /// `/proc/stat` cannot be read.
    pub fn busy_share(&self) -> f64 {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.refresh();
        last.busy_share
    }
}

impl Reading {
    /// Takes a new reading if the last is at least [`MIN_SPAN`] old.
    fn refresh(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.at) < MIN_SPAN {
            return;
        }
        let Some(ticks) = read_ticks() else {
            self.busy_share = 0.0;
            return;
        };
        // Clock ticks are coarse (10 ms): a span with no tick keeps the
        // previous figure rather than reading as idle.
        if let Some(share) = share_between(self.ticks, ticks) {
            self.busy_share = share;
            self.at = now;
            self.ticks = ticks;
            if share >= SATURATED {
                self.saturated_at = Some(now);
            }
        }
    }
}

/// The busy share between two readings; `None` if no time passed.
fn share_between(before: Ticks, after: Ticks) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let busy = after.busy.saturating_sub(before.busy);
    (total > 0).then(|| (busy as f64 / total as f64).min(1.0))
}

fn read_ticks() -> Option<Ticks> {
    parse_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq
/// softirq steal guest guest_nice` (guest time is already in user).
fn parse_ticks(stat: &str) -> Option<Ticks> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some(Ticks {
        busy: total.saturating_sub(idle),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_of_proc_stat_gives_busy_and_total_time() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\nintr 1 2 3\n";
        assert_eq!(
            parse_ticks(stat),
            Some(Ticks {
                busy: 160,
                total: 980
            })
        );
        assert_eq!(parse_ticks("intr 1 2\n"), None);
        assert_eq!(parse_ticks("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn the_share_is_of_the_time_between_two_readings() {
        let a = Ticks {
            busy: 100,
            total: 1000,
        };
        let b = Ticks {
            busy: 190,
            total: 1100,
        };
        assert_eq!(share_between(a, b), Some(0.9));
        assert_eq!(share_between(a, a), None);
        assert_eq!(share_between(b, a), None);
    }

    #[test]
    fn this_host_has_a_reading() {
        let share = CpuLoad::host().busy_share();
        assert!((0.0..=1.0).contains(&share), "{share}");
        assert!(read_ticks().is_some(), "/proc/stat has no cpu line");
    }
}
