//! The pool of pre-made sandboxes: sandboxes whose namespaces, cgroup and
//! init exist before any function needs them, so that a cold start only
//! mounts a root filesystem and execs. [`PremadePool`] keeps `target` of
//! them waiting (made at idle priority), hands one out per start and
//! refills behind it; it is also the one place sandboxes are made. A new
//! sandbox gets an emptied cgroup kept from an exited one where there is
//! one ([`Cgroups::keep`]).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::container::cgroup::Cgroups;
use crate::container::error::SandboxError;
use crate::container::init_link::lock;
use crate::container::plan::IdMap;
use crate::container::proto::SpawnRequest;
use crate::container::sandbox::{CgroupGuard, Ending, Sandbox, owner_tag};
use crate::container::spawner::Spawner;

/// Makes sandboxes and keeps some waiting for a function.
pub(crate) struct PremadePool {
    spawner: Spawner,
    pub(crate) cgroups: Arc<Cgroups>,
    scratch: PathBuf,
    /// What sandboxes use of the host before `pivot_root`
    /// ([`SpawnRequest::host_dirs`]).
    host_dirs: Vec<PathBuf>,
    id_map: IdMap,
    seq: AtomicU64,
    /// This server, as its sandboxes' cgroups name it.
    owner: String,
    /// Sandboxes made ahead of demand, waiting for a function.
    waiting: Mutex<VecDeque<Premade>>,
    /// How many to keep.
    target: usize,
    refill: tokio::sync::Notify,
    closed: AtomicBool,
}

/// A sandbox whose namespaces, cgroup and init exist, waiting for a plan.
pub(crate) struct Premade {
    pub(crate) sandbox: Sandbox,
    /// The gateway's end of init's control socket.
    pub(crate) control: OwnedFd,
    /// Host pid of init.
    pub(crate) pid: i32,
    /// Its network namespace is a kept one.
    pub(crate) netns_reused: bool,
    /// Its cgroup is a kept one.
    pub(crate) cgroup_reused: bool,
}

impl PremadePool {
    pub(crate) fn new(
        spawner: Spawner,
        cgroups: Arc<Cgroups>,
        scratch: PathBuf,
        host_dirs: Vec<PathBuf>,
        id_map: IdMap,
        target: usize,
    ) -> PremadePool {
        PremadePool {
            spawner,
            cgroups,
            scratch,
            host_dirs,
            id_map,
            seq: AtomicU64::new(0),
            owner: owner_tag(),
            waiting: Mutex::new(VecDeque::new()),
            target,
            refill: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// How many sandboxes it keeps waiting.
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    /// Makes a sandbox that waits for a function; `background` ones set
    /// themselves up at idle priority.
    async fn make(&self, background: bool) -> Result<Premade, SandboxError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("sandbox-{}-{seq}", self.owner);
        let (cgroup, cgroup_reused) = self
            .cgroups
            .take_unlimited(&name)
            .map_err(SandboxError::Cgroup)?;
        // A kept cgroup counts its earlier sandboxes' OOM kills.
        let oom_seen = if cgroup_reused {
            self.cgroups.oom_kills(&cgroup).unwrap_or(0)
        } else {
            0
        };
        let mut guard = CgroupGuard {
            cgroups: self.cgroups.clone(),
            cgroup: Some(cgroup),
            ending: None,
        };
        let request = SpawnRequest {
            cgroup_dirs: guard
                .cgroup
                .as_ref()
                .map(|c| c.dirs().map(Path::to_path_buf).collect())
                .unwrap_or_default(),
            background,
            id_map: self.id_map,
            scratch: self.scratch.clone(),
            host_dirs: self.host_dirs.clone(),
        };
        let spawned = self
            .spawner
            .spawn(request)
            .await
            .map_err(SandboxError::Spawn)?;
        guard.ending = Some(Ending {
            ender: self.spawner.ender(),
            pid: spawned.pid,
            netns: spawned.netns,
        });
        Ok(Premade {
            sandbox: Sandbox {
                pidfd: spawned.pidfd,
                cgroup: guard,
                oom_seen: AtomicU64::new(oom_seen),
            },
            control: spawned.control,
            pid: spawned.pid,
            netns_reused: spawned.netns_reused,
            cgroup_reused,
        })
    }

    /// A pre-made sandbox if one is waiting (and alive), else a new one;
    /// says which.
    pub(crate) async fn take(&self) -> Result<(Premade, bool), SandboxError> {
        loop {
            let next = lock(&self.waiting).pop_front();
            // Replace it now, while this start waits on its sandbox: the
            // new one sets itself up at idle priority (see `background`).
            self.refill.notify_one();
            match next {
                Some(premade) if premade.sandbox.is_alive() => return Ok((premade, true)),
                Some(_dead) => continue,
                None => return Ok((self.make(false).await?, false)),
            }
        }
    }

    /// Keeps `target` sandboxes waiting, until [`PremadePool::close`].
    pub(crate) async fn keep_filled(self: Arc<Self>) {
        loop {
            while !self.closed.load(Ordering::Acquire) && lock(&self.waiting).len() < self.target {
                match self.make(true).await {
                    Ok(premade) => lock(&self.waiting).push_back(premade),
                    Err(error) => {
                        tracing::warn!(%error, "could not pre-make a sandbox");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            self.refill.notified().await;
        }
    }

    /// Stops refilling and releases the sandboxes that wait.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.refill.notify_one();
        // The sandboxes released from now on remove their cgroups.
        let cgroups = self.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || cgroups.stop_keeping()).await;
        let waiting: Vec<Premade> = lock(&self.waiting).drain(..).collect();
        for premade in waiting {
            premade.sandbox.release().await;
        }
    }
}
