//! Network namespaces kept for reuse, in the spawner. Making one costs
//! ~0.45 ms of CPU and tearing it down (in a kernel worker) about as much
//! again: together a tenth of the machine's CPU when containers start at
//! the rate two cores allow. A sandbox's namespace is kept when the
//! sandbox exits and given to a later one if it is clean.
//!
//! While the sandbox runs the gateway holds its namespace (the spawner
//! hands it over with the sandbox's other descriptors) and hands it back
//! once the sandbox's cgroup is empty ([`crate::container::proto::ToSpawner::Ended`]);
//! the pool reaps that sandbox's init by its pid before it looks inside
//! (with or without a namespace to keep, so ended inits are reaped
//! promptly either way).
//! The spawner holds only free namespaces and those on their way back:
//! every new sandbox starts with a copy of the spawner's descriptor table,
//! and one descriptor per running sandbox there made each start copy (and
//! each exit and `execve` close) as many descriptors as sandboxes ran —
//! a start cost that grew with the host's load.
//!
//! What makes a kept namespace as good as a fresh one:
//!
//! - Its configuration is the one it was made with. It belongs to the
//!   host's user namespace, and a sandbox's processes never hold a
//!   capability there (container root is an unprivileged host uid in a
//!   child user namespace): no address, route, link state, netfilter rule
//!   or sysctl of it can have changed.
//! - No socket is left in it: every process of the sandbox has exited
//!   (the namespace is looked at only after its init was reaped, which the
//!   kernel allows only once the whole PID namespace is gone), and
//!   `/proc/net/sockstat`, read inside it, counts no socket at all —
//!   listening, connected, orphaned, UDP, raw, Unix (abstract names
//!   included) or netlink — no TCP `TIME_WAIT` entry (one would hold a
//!   port the next handler may bind) and no fragment awaiting reassembly.
//! - Its TCP keeps no `TIME_WAIT` entries at all (`tcp_max_tw_buckets` 0,
//!   set when it is made, for fresh and kept namespaces alike): a handler
//!   that closes its connections (busybox httpd closes each one) would
//!   otherwise leave one per request for a minute. They guard a new
//!   connection against stray segments of an old one with the same
//!   addresses and ports, which cannot arrive on a loopback-only
//!   interface. Nor does it cache metrics of closed connections
//!   (`tcp_no_metrics_save`), so no round-trip estimate of an earlier
//!   sandbox's connections is kept.
//!
//! What carries over: the loopback interface's and the protocols'
//! counters (packets and bytes on `lo`, `/proc/net/snmp`) and the
//! namespace's identity (its inode and cookie): a later sandbox can learn
//! how much loopback traffic earlier sandboxes made, nothing of what it
//! was. `wisp serve --reuse-netns false` makes a fresh namespace for every
//! sandbox instead.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Namespaces kept for reuse, at most.
pub(crate) const KEPT: usize = 32;
/// How long an exited sandbox's namespace may take to empty (the gateway
/// closing its connections into it) before it is let go.
const SETTLE: Duration = Duration::from_secs(2);

/// The spawner's kept namespaces: free ones, and those of ended sandboxes
/// on their way back. The namespace of a running sandbox is held by the
/// gateway, not here: every sandbox's init starts with a copy of the
/// spawner's descriptor table, so a descriptor per running sandbox here
/// would make each start copy, and each exit and `execve` close, one
/// descriptor per sandbox on the host.
pub(crate) struct NetnsPool {
    /// The spawner's own namespace, to return to after a look inside one.
    host: OwnedFd,
    free: Vec<OwnedFd>,
    /// Ended sandboxes' inits, to reap by pid, each with its namespace if
    /// it is to be kept (looked at once its init is reaped).
    pending: Vec<(Pid, Option<OwnedFd>, Instant)>,
    /// Namespaces of reaped sandboxes, until they are found empty.
    returning: Vec<(OwnedFd, Instant)>,
    keep: usize,
}

/// What `/proc/net/sockstat` says of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contents {
    Empty,
    /// Sockets, `TIME_WAIT` entries or fragments remain.
    Busy,
}

impl NetnsPool {
    /// A pool keeping up to `keep` namespaces (0: none, every sandbox gets
    /// a fresh one).
    pub(crate) fn new(keep: usize) -> std::io::Result<NetnsPool> {
        let host = std::fs::File::open("/proc/thread-self/ns/net")?;
        Ok(NetnsPool {
            host: host.into(),
            free: Vec::new(),
            pending: Vec::new(),
            returning: Vec::new(),
            keep,
        })
    }

    /// A clean namespace for the next sandbox, if one is kept.
    pub(crate) fn take(&mut self) -> Option<OwnedFd> {
        self.free.pop()
    }

    /// The namespace of the sandbox whose init is `pid`, for the gateway
    /// to hold while it runs: `reused` if it was taken from the pool, else
    /// the new one its `clone` made. None when none are kept.
    pub(crate) fn hand_over(&self, pid: Pid, reused: Option<OwnedFd>) -> Option<OwnedFd> {
        if self.keep == 0 {
            return None;
        }
        match reused {
            Some(ns) => Some(ns),
            // Not kept if it cannot be opened: the sandbox works the same.
            None => std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(OwnedFd::from),
        }
    }

    /// The gateway reported the end of the sandbox whose init is `pid`,
    /// handing its namespace back if it held one: init is reaped (now, or
    /// when it has finished exiting) and the namespace kept once it is
    /// found empty, if fewer than `keep` are.
    pub(crate) fn ended(&mut self, pid: Pid, ns: Option<OwnedFd>) {
        let ns = ns.filter(|_| self.free.len() < self.keep);
        self.pending.push((pid, ns, Instant::now()));
        self.reap(Instant::now());
    }

    /// Whether namespaces wait to be found empty (the spawner then looks
    /// again soon).
    pub(crate) fn settling(&self) -> bool {
        !self.returning.is_empty() || !self.pending.is_empty()
    }

    /// Reaps the inits of ended sandboxes (each by its pid: the kernel
    /// finds one child without walking them all), then looks inside the
    /// namespaces of reaped sandboxes: empty ones are kept (up to the
    /// limit), those still busy after [`SETTLE`] let go.
    pub(crate) fn settle(&mut self) {
        let now = Instant::now();
        self.reap(now);
        let returning = std::mem::take(&mut self.returning);
        for (ns, since) in returning {
            // With as many kept as wanted, the rest are let go unlooked-at
            // (many sandboxes ending at once would otherwise each be looked
            // into every 10 ms while their connections close).
            if self.free.len() >= self.keep {
                continue;
            }
            match self.contents(&ns) {
                Ok(Contents::Empty) => self.free.push(ns),
                Ok(Contents::Busy) if now.duration_since(since) < SETTLE => {
                    self.returning.push((ns, since));
                }
                // Still busy after `SETTLE`, or unreadable: the kernel tears
                // it down.
                _ => {}
            }
        }
    }

    /// Reaps the inits of ended sandboxes, each by its pid; a reaped one's
    /// namespace goes on to be looked at. One still exiting is tried again
    /// (and left to the spawner's sweep after [`SETTLE`]).
    fn reap(&mut self, now: Instant) {
        for (pid, ns, since) in std::mem::take(&mut self.pending) {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                // Reaped now, or already by the spawner's sweep: the PID
                // namespace is gone, so is every process that could use
                // the network namespace.
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
                    if let Some(ns) = ns {
                        self.returning.push((ns, since));
                    }
                }
                Ok(_) if now.duration_since(since) < SETTLE => {
                    self.pending.push((pid, ns, since));
                }
                _ => {}
            }
        }
    }

    /// What namespace `ns` holds: this thread enters it, reads its
    /// `/proc/net/sockstat` and comes back.
    pub(crate) fn contents(&mut self, ns: &OwnedFd) -> std::io::Result<Contents> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
        let read = std::fs::read_to_string("/proc/thread-self/net/sockstat");
        if let Err(e) = setns(self.host.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Stuck in a sandbox's namespace: keep none from now on (the
            // spawner itself uses no network).
            self.keep = 0;
            self.free.clear();
            return Err(e.into());
        }
        Ok(sockstat_contents(&read?))
    }
}

/// Whether a `/proc/net/sockstat` text shows an empty namespace: no socket
/// in use, no `TIME_WAIT` entry, no fragment queued. An unexpected text is
/// busy.
pub(crate) fn sockstat_contents(text: &str) -> Contents {
    let field = |line: &str, name: &str| -> Option<u64> {
        let mut words = text
            .lines()
            .find(|l| l.starts_with(line))?
            .split_whitespace();
        words.find(|w| *w == name)?;
        words.next()?.parse().ok()
    };
    let counts = [
        field("sockets:", "used"),
        field("TCP:", "tw"),
        field("FRAG:", "inuse"),
    ];
    if counts.iter().all(|c| *c == Some(0)) {
        Contents::Empty
    } else {
        Contents::Busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_is_empty_only_without_sockets_time_wait_or_fragments() {
        let empty = "sockets: used 0\nTCP: inuse 0 orphan 3 tw 0 alloc 9 mem 10\nUDP: inuse 0 mem 0\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n";
        assert_eq!(sockstat_contents(empty), Contents::Empty);
        for busy in [
            empty.replace("used 0", "used 1"),
            empty.replace("tw 0", "tw 2"),
            empty.replace("FRAG: inuse 0", "FRAG: inuse 1"),
            empty.replace("sockets: used 0\n", ""),
            String::new(),
        ] {
            assert_eq!(sockstat_contents(&busy), Contents::Busy, "{busy}");
        }
    }

    /// A new, empty namespace made as a sandbox's is, by a thread.
    fn sandbox_netns() -> OwnedFd {
        std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            crate::container::sys::loopback_up().unwrap();
            crate::container::sys::sandbox_tcp().unwrap();
            OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap())
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_handed_back_namespace_is_kept_once_its_init_is_reaped_up_to_the_limit() {
        let mut pool = NetnsPool::new(2).unwrap();
        // Handed over for the gateway to hold, whether reused or new.
        assert!(pool.hand_over(Pid::this(), Some(sandbox_netns())).is_some());
        assert!(pool.hand_over(Pid::this(), None).is_some());
        // An "init" that still runs: its namespace waits for it.
        #[expect(
            clippy::zombie_processes,
            reason = "the pool under test reaps it, as the spawner reaps an ended sandbox's init"
        )]
        let mut init = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(i32::try_from(init.id()).unwrap());
        pool.ended(pid, Some(sandbox_netns()));
        pool.settle();
        assert!(pool.settling());
        assert!(pool.take().is_none(), "kept while its init runs");
        init.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.settling() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            pool.settle();
        }
        assert!(pool.take().is_some(), "kept once its init was reaped");
        // Inits reaped already (by the spawner's sweep; pid 1 is nobody's
        // child here): kept at once, at most 2.
        for _ in 0..3 {
            pool.ended(Pid::from_raw(1), Some(sandbox_netns()));
        }
        pool.settle();
        assert!(!pool.settling());
        assert!(pool.take().is_some() && pool.take().is_some());
        assert!(pool.take().is_none(), "at most 2 are kept");
        // Keeping none: nothing is handed over, looked at or kept.
        let mut none = NetnsPool::new(0).unwrap();
        assert!(none.hand_over(Pid::this(), Some(sandbox_netns())).is_none());
        none.ended(Pid::from_raw(1), Some(sandbox_netns()));
        assert!(!none.settling());
        assert!(none.take().is_none());
    }

    /// A real namespace, made by a thread of this test: busy while a
    /// socket or a `TIME_WAIT` entry remains in it, empty once none does.
    #[test]
    fn a_namespace_is_found_busy_until_its_sockets_and_time_wait_are_gone() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let (to_test, from_thread) = std::sync::mpsc::channel();
        let (to_thread, from_test) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            crate::container::sys::loopback_up().unwrap();
            let ns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
                .unwrap()
                .into();
            let listener = TcpListener::bind("127.0.0.1:8080").unwrap();
            let mut client = TcpStream::connect("127.0.0.1:8080").unwrap();
            let (mut served, _) = listener.accept().unwrap();
            client.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            served.read_exact(&mut byte).unwrap();
            to_test.send(ns.try_clone().unwrap()).unwrap();
            // The server side closes first: its end enters TIME_WAIT.
            from_test.recv().unwrap();
            drop(served);
            drop(listener);
            std::thread::sleep(Duration::from_millis(50));
            drop(client);
            std::thread::sleep(Duration::from_millis(50));
            to_test.send(ns.try_clone().unwrap()).unwrap();
            from_test.recv().unwrap();
            // A new namespace, set up as the sandboxes' are: no TIME_WAIT.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            crate::container::sys::loopback_up().unwrap();
            crate::container::sys::sandbox_tcp().unwrap();
            let ns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
                .unwrap()
                .into();
            let listener = TcpListener::bind("127.0.0.1:8080").unwrap();
            let client = TcpStream::connect("127.0.0.1:8080").unwrap();
            let (served, _) = listener.accept().unwrap();
            drop(served);
            drop(listener);
            std::thread::sleep(Duration::from_millis(50));
            drop(client);
            std::thread::sleep(Duration::from_millis(50));
            to_test.send(ns).unwrap();
        });
        use std::os::unix::fs::MetadataExt;
        let own = || std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let before = own();
        let mut pool = NetnsPool::new(KEPT).unwrap();
        let open = from_thread.recv().unwrap();
        assert_eq!(pool.contents(&open).unwrap(), Contents::Busy);
        to_thread.send(()).unwrap();
        let time_wait = from_thread.recv().unwrap();
        assert_eq!(pool.contents(&time_wait).unwrap(), Contents::Busy);
        to_thread.send(()).unwrap();
        let quiet = from_thread.recv().unwrap();
        assert_eq!(pool.contents(&quiet).unwrap(), Contents::Empty);
        thread.join().unwrap();
        // This thread came back to its own namespace.
        assert_eq!(own(), before);
    }
}
