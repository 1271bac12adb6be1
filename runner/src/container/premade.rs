//! The pool of pre-made sandboxes: sandboxes whose namespaces, cgroup and
//! init exist before any function needs them, so that a cold start only
//! mounts a root filesystem and execs. [`PremadePool`] keeps `target` of
//! them waiting (made at idle priority), hands one out per start and
//! refills behind it; it is also the one place sandboxes are made. A new
//! sandbox gets an emptied cgroup kept from an exited one where there is
//! one ([`Cgroups::keep`]).
//!
//! Beside those it keeps up to `target` sandboxes that have also mounted
//! the filesystems of the image started last ([`ToInit::Mount`]: overlay,
//! `pivot_root`, the host's tree detached, the standard mounts attached),
//! so that the next start of that image — another instance of a function
//! scaling out, or another function of the same image — skips its
//! root-filesystem phase. Only filesystems that bind nothing of the host's
//! are mounted ahead (a function's secrets are mounted for it alone), and
//! a start takes such a sandbox only for the very same filesystems, with
//! the layer directories still the ones mounted (a pruned layer unpacked
//! again is a new directory).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::container::cgroup::Cgroups;
use crate::container::error::SandboxError;
use crate::container::init_link::lock;
use crate::container::plan::{Filesystems, IdMap};
use crate::container::proto::{FromInit, SpawnRequest, ToInit};
use crate::container::sandbox::{CgroupGuard, Ending, Sandbox, owner_tag};
use crate::container::spawner::{Spawner, recv_async, send_async};
use crate::container::sys;

/// How long init may take to mount ahead.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

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
    waiting: Mutex<Waiting>,
    /// The filesystems of the latest start that could have them mounted
    /// ahead: what plain sandboxes are given to mount (`keep_mounted`).
    expected: Mutex<Option<Filesystems>>,
    /// How many to keep of each kind.
    target: usize,
    /// Wakes the refill of plain sandboxes.
    refill: tokio::sync::Notify,
    /// Wakes the mounting ahead.
    mount: tokio::sync::Notify,
    closed: AtomicBool,
}

/// The waiting sandboxes, oldest first.
#[derive(Default)]
struct Waiting {
    plain: VecDeque<Premade>,
    /// With filesystems mounted ahead, and which.
    mounted: VecDeque<(Premade, Ahead)>,
}

/// Filesystems a waiting sandbox mounted ahead, and the identity (device,
/// inode) of their layer directories then.
struct Ahead {
    filesystems: Filesystems,
    layers: Vec<(u64, u64)>,
}

/// The identity of each layer directory.
fn layer_ids(fs: &Filesystems) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    fs.rootfs
        .lower
        .iter()
        .map(|dir| std::fs::metadata(dir).map(|m| (m.dev(), m.ino())))
        .collect()
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
            waiting: Mutex::new(Waiting::default()),
            expected: Mutex::new(None),
            target,
            refill: tokio::sync::Notify::new(),
            mount: tokio::sync::Notify::new(),
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
        let (mut cgroup, cgroup_reused) = self
            .cgroups
            .take_unlimited(&name)
            .map_err(SandboxError::Cgroup)?;
        // Best effort, as init's own `SCHED_IDLE`: a background sandbox's
        // set-up, mounting ahead and waiting yield to any other work (a
        // kept cgroup may still be idle from its last pre-made sandbox).
        let _ = self.cgroups.set_idle(&mut cgroup, background);
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

    /// Asks a waiting sandbox to mount `filesystems` ahead; returns what
    /// it mounted once init has said they are in place (on failure the
    /// sandbox is released).
    async fn ask_to_mount(
        &self,
        premade: &mut Premade,
        filesystems: Filesystems,
    ) -> Result<Ahead, SandboxError> {
        let layers = layer_ids(&filesystems).map_err(SandboxError::Control)?;
        // Mounting is short: init does it at normal priority (it lowers
        // itself after), in its cgroup, which stays idle: the mount yields
        // to a start or a request. (Clearing the cgroup's idle mark for the
        // mount made sequential cold starts no faster: 0.999x, session 30.)
        let _ = sys::set_priority(
            Some(nix::unistd::Pid::from_raw(premade.pid)),
            sys::Priority::Normal,
        );
        let control = sys::async_fd(premade.control.try_clone().map_err(SandboxError::Control)?)
            .map_err(SandboxError::Control)?;
        let mount = ToInit::Mount {
            filesystems: Box::new(filesystems.clone()),
        };
        let mut buf = Vec::new();
        let answer = tokio::time::timeout(MOUNT_WAIT, async {
            send_async(&control, &mount, &[]).await?;
            recv_async::<FromInit>(&control, &mut buf).await
        })
        .await;
        match answer {
            Ok(Ok((FromInit::Mounted, _))) => Ok(Ahead {
                filesystems,
                layers,
            }),
            Ok(Ok((FromInit::SetupFailed { stage, error }, _))) => {
                Err(SandboxError::Setup { stage, error })
            }
            Ok(Ok(_)) => Err(SandboxError::Control(std::io::Error::other(
                "init answered Mount with something else",
            ))),
            Ok(Err(e)) => Err(SandboxError::InitGone(e)),
            Err(_) => Err(SandboxError::NoReport(MOUNT_WAIT)),
        }
    }

    /// A pre-made sandbox if one is waiting (and alive), else a new one;
    /// says which. One that mounted `filesystems` ahead if there is one,
    /// else a plain one. `filesystems` are the start's if they may be
    /// mounted ahead: the refill mounts them next.
    pub(crate) async fn take(
        &self,
        filesystems: Option<&Filesystems>,
    ) -> Result<(Premade, bool), SandboxError> {
        if let Some(fs) = filesystems {
            let mut expected = lock(&self.expected);
            if expected.as_ref() != Some(fs) {
                *expected = Some(fs.clone());
            }
        }
        loop {
            let next = {
                let mut waiting = lock(&self.waiting);
                let mounted = filesystems
                    .and_then(|fs| {
                        waiting
                            .mounted
                            .iter()
                            .position(|(_, a)| &a.filesystems == fs)
                    })
                    .and_then(|at| waiting.mounted.remove(at));
                match mounted {
                    Some((premade, ahead)) => Some((premade, Some(ahead))),
                    None => waiting.plain.pop_front().map(|premade| (premade, None)),
                }
            };
            // Replace it now, while this start waits on its sandbox: the
            // new one sets itself up at idle priority (see `background`).
            self.refill.notify_one();
            self.mount.notify_one();
            match next {
                Some((premade, _)) if !premade.sandbox.is_alive() => continue,
                // Its layers pruned and unpacked again since: it would see
                // empty directories.
                Some((premade, Some(ahead)))
                    if !layer_ids(&ahead.filesystems).is_ok_and(|now| now == ahead.layers) =>
                {
                    tokio::spawn(premade.sandbox.release());
                }
                Some((premade, _)) => return Ok((premade, true)),
                None => return Ok((self.make(false).await?, false)),
            }
        }
    }

    /// Keeps `target` plain sandboxes waiting, and `target` with the
    /// expected filesystems mounted, until [`PremadePool::close`]: two
    /// loops, so that a plain sandbox is made while another mounts.
    pub(crate) async fn keep_filled(self: Arc<Self>) {
        tokio::join!(self.keep_plain(), self.keep_mounted());
    }

    async fn keep_plain(&self) {
        loop {
            while !self.closed.load(Ordering::Acquire)
                && lock(&self.waiting).plain.len() < self.target
            {
                match self.make(true).await {
                    Ok(premade) => {
                        lock(&self.waiting).plain.push_back(premade);
                        self.mount.notify_one();
                    }
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

    /// Has plain sandboxes mount the expected filesystems ahead while
    /// fewer than `target` have them (the mount is all they lack).
    async fn keep_mounted(&self) {
        loop {
            while !self.closed.load(Ordering::Acquire) {
                let to_mount = {
                    let mut waiting = lock(&self.waiting);
                    let expected = lock(&self.expected);
                    let wanted = expected.as_ref().filter(|fs| {
                        let have = waiting
                            .mounted
                            .iter()
                            .filter(|(_, a)| &a.filesystems == *fs);
                        have.count() < self.target
                    });
                    match wanted {
                        Some(fs) => waiting.plain.pop_front().map(|p| (p, fs.clone())),
                        None => None,
                    }
                };
                let Some((premade, fs)) = to_mount else {
                    break;
                };
                self.refill.notify_one();
                if premade.sandbox.is_alive() {
                    self.mount_ahead(premade, fs).await;
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            self.mount.notified().await;
        }
    }

    /// Has `premade` mount `fs` ahead and keeps it waiting with them,
    /// making room among the other images' (oldest first).
    async fn mount_ahead(&self, mut premade: Premade, fs: Filesystems) {
        let ahead = match self.ask_to_mount(&mut premade, fs.clone()).await {
            Ok(ahead) => ahead,
            Err(error) => {
                premade.sandbox.release().await;
                // Not again for these filesystems until a start asks for
                // them anew.
                tracing::warn!(%error, "could not mount an image's filesystems ahead");
                let mut expected = lock(&self.expected);
                if expected.as_ref() == Some(&fs) {
                    *expected = None;
                }
                return;
            }
        };
        let evicted = {
            let mut waiting = lock(&self.waiting);
            waiting.mounted.push_back((premade, ahead));
            let mut evicted = Vec::new();
            while waiting.mounted.len() > self.target {
                let Some(at) = waiting
                    .mounted
                    .iter()
                    .position(|(_, a)| a.filesystems != fs)
                else {
                    break;
                };
                evicted.extend(waiting.mounted.remove(at));
            }
            evicted
        };
        for (premade, _) in evicted {
            premade.sandbox.release().await;
        }
    }

    /// Stops refilling and releases the sandboxes that wait.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.refill.notify_one();
        self.mount.notify_one();
        // The sandboxes released from now on remove their cgroups.
        let cgroups = self.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || cgroups.stop_keeping()).await;
        let waiting: Vec<Premade> = {
            let mut waiting = lock(&self.waiting);
            let Waiting { plain, mounted } = &mut *waiting;
            plain
                .drain(..)
                .chain(mounted.drain(..).map(|(p, _)| p))
                .collect()
        };
        for premade in waiting {
            premade.sandbox.release().await;
        }
    }
}
