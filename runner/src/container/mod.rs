//! The container backend (microcontainers): OCI images run in sandboxes
//! that wisp builds itself from Linux namespaces, overlayfs and cgroups.
//!
//! - [`plan`]: the set-up of one sandbox as a value (pure, unit-tested);
//! - [`cgroup`]: memory, CPU and pids limits on cgroup v1 and v2;
//! - [`spawner`]: the single-threaded process that clones containers;
//! - `init`: what runs inside: set-up, then PID 1;
//! - [`seccomp`], `sys`, [`proto`]: the filter, raw calls, messages.
//!
//! This module is the gateway's side: [`ContainerBackend`] imports images
//! at deploy time and, per cold start, plans a sandbox, makes its cgroup,
//! asks the spawner for it and waits until it is ready; a
//! [`ContainerInstance`] then forwards requests to the handler — over
//! kept-alive HTTP/1.1 connections made inside the sandbox's network
//! namespace for `http`, or as one process per request for `cgi`.

pub mod cgroup;
mod init;
pub mod plan;
pub mod proto;
pub mod seccomp;
pub mod spawner;
mod sys;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};

use crate::artifact::ArtifactStore;
use crate::backend::{
    Backend, Body, Instance, InvokeError, PrepareError, Prepared, RequestInfo, StartError,
    full_body,
};
use crate::container::cgroup::{Cgroup, Cgroups, Layout, RealFs};
use crate::container::plan::{ContainerSettings, IdMap, Protocol};
use crate::container::proto::{ExitReport, ExitStatus, FromInit, SpawnRequest, ToInit};
use crate::container::spawner::{Spawner, SpawnerHandle, recv_async, send_async};
use crate::image::{ImageStore, UnpackOptions};
use crate::pool::Deadline;
use crate::spec::{Digest, FunctionKind, FunctionName, FunctionSpec, HandlerProtocol};

/// How long a stopping handler gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Longest a sandbox may take to become ready, whatever the function's
/// request timeout.
const MAX_START: Duration = Duration::from_secs(30);
/// Default number of pre-made sandboxes kept waiting for a function.
pub const DEFAULT_PREMADE: usize = 2;

/// Runs container functions.
pub struct ContainerBackend {
    artifacts: ArtifactStore,
    images: ImageStore,
    runtime: Result<Arc<Runtime>, String>,
    id_map: IdMap,
}

/// What starting containers needs; absent when wisp cannot run them.
struct Runtime {
    spawner: Spawner,
    cgroups: Arc<Cgroups>,
    scratch: PathBuf,
    id_map: IdMap,
    seq: AtomicU64,
    /// Sandboxes made ahead of demand, waiting for a function.
    premade: Mutex<VecDeque<Premade>>,
    /// How many to keep.
    target: usize,
    refill: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

/// A sandbox whose namespaces, cgroup and init exist, waiting for a plan.
struct Premade {
    sandbox: Sandbox,
    control: OwnedFd,
    pid: i32,
}

impl ContainerBackend {
    /// `spawner` is the spawner `main` forked, or why there is none (not
    /// root, …); without it deploying a container function is refused with
    /// that reason, and wasm functions are unaffected. `premade` sandboxes
    /// are kept ready ahead of demand (needs a tokio runtime).
    pub fn new(
        artifacts: ArtifactStore,
        data_dir: &Path,
        spawner: Result<SpawnerHandle, String>,
        premade: usize,
    ) -> Result<ContainerBackend, String> {
        let id_map = IdMap::default();
        let images = ImageStore::open(data_dir.join("images"))
            .map_err(|e| e.to_string())?
            .with_unpack_options(UnpackOptions {
                uid_offset: id_map.host_uid,
                gid_offset: id_map.host_gid,
                ..UnpackOptions::default()
            });
        let runtime = spawner.and_then(|handle| {
            let cgroups = Layout::detect()
                .and_then(|layout| Cgroups::new(layout, Box::new(RealFs)))
                .map_err(|e| format!("cgroups: {e}"))?;
            let spawner = Spawner::new(handle).map_err(|e| format!("spawner: {e}"))?;
            let scratch = data_dir.join("run").join("scratch");
            std::fs::create_dir_all(&scratch)
                .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
            let removed = clean_up_leftovers(&cgroups);
            if removed > 0 {
                tracing::info!(
                    sandboxes = removed,
                    "removed what a previous wisp serve left behind"
                );
            }
            Ok(Arc::new(Runtime {
                spawner,
                cgroups: Arc::new(cgroups),
                scratch,
                id_map,
                seq: AtomicU64::new(0),
                premade: Mutex::new(VecDeque::new()),
                target: premade,
                refill: tokio::sync::Notify::new(),
                closed: std::sync::atomic::AtomicBool::new(false),
            }))
        });
        match &runtime {
            Ok(runtime) if runtime.target > 0 => {
                tokio::spawn(runtime.clone().keep_premade());
            }
            Ok(_) => {}
            Err(reason) => tracing::warn!(%reason, "container functions are unavailable"),
        }
        Ok(ContainerBackend {
            artifacts,
            images,
            runtime,
            id_map,
        })
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    fn runtime(&self) -> Result<&Arc<Runtime>, String> {
        self.runtime.as_ref().map_err(Clone::clone)
    }
}

impl Runtime {
    /// Makes a sandbox that waits for a function.
    async fn make(&self, background: bool) -> Result<Premade, String> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("sandbox-{}-{seq}", std::process::id());
        let cgroup = self
            .cgroups
            .create_unlimited(&name)
            .map_err(|e| e.to_string())?;
        let guard = CgroupGuard {
            cgroups: self.cgroups.clone(),
            cgroup: Some(cgroup),
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
        };
        let spawned = self.spawner.spawn(&request).await?;
        Ok(Premade {
            sandbox: Sandbox {
                pidfd: spawned.pidfd,
                cgroup: guard,
                oom_seen: AtomicU64::new(0),
            },
            control: spawned.control,
            pid: spawned.pid,
        })
    }

    /// A pre-made sandbox if one is waiting (and alive), else a new one.
    async fn take(&self) -> Result<(Premade, bool), String> {
        loop {
            let next = lock(&self.premade).pop_front();
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

    /// Keeps `target` sandboxes waiting, until the backend shuts down.
    async fn keep_premade(self: Arc<Self>) {
        loop {
            while !self.closed.load(Ordering::Acquire) && lock(&self.premade).len() < self.target {
                match self.make(true).await {
                    Ok(premade) => lock(&self.premade).push_back(premade),
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
}

/// Kills and removes the sandboxes' cgroups that servers no longer running
/// left (after a crash); returns how many there were. Cgroups are named
/// `sandbox-<server pid>-<n>`, so servers sharing a host (or a cgroup)
/// leave each other's sandboxes alone.
fn clean_up_leftovers(cgroups: &Cgroups) -> usize {
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

#[async_trait]
impl Backend for ContainerBackend {
    async fn prepare(&self, artifact: &Digest) -> Result<Prepared, PrepareError> {
        let digest = artifact.to_string();
        self.runtime()
            .map_err(|detail| PrepareError::ContainersUnavailable { detail })?;
        let blob = self.artifacts.blob_path(artifact);
        if !blob.is_file() {
            return Err(PrepareError::MissingArtifact { digest });
        }
        let images = self.images.clone();
        let image = tokio::task::spawn_blocking(move || images.import(&blob))
            .await
            .map_err(|e| PrepareError::Storage {
                digest: digest.clone(),
                detail: format!("import task failed: {e}"),
            })?
            .map_err(|e| PrepareError::BadImage {
                digest: digest.clone(),
                detail: e.to_string(),
            })?;
        tracing::info!(artifact = %digest, image = %image.manifest_digest, layers = image.layers.len(), "image imported");
        Ok(Prepared {
            kind: FunctionKind::Container,
            image: Some(image.manifest_digest),
        })
    }

    async fn start(&self, spec: &FunctionSpec) -> Result<Box<dyn Instance>, StartError> {
        let requested = proto::monotonic_ns();
        let function = spec.name.clone();
        let sandbox_err = |detail: String| StartError::Sandbox {
            function: function.clone(),
            detail,
        };
        let runtime = self.runtime().map_err(sandbox_err)?;
        let plan = self.plan(spec).map_err(sandbox_err)?;
        let (premade, was_premade) = runtime.take().await.map_err(sandbox_err)?;
        let Premade {
            sandbox,
            control,
            pid,
        } = premade;
        if was_premade {
            // Made at idle priority; one that has not finished setting up
            // must not wait behind busy CPUs now that a request waits on it
            // (init raises its zygote itself when it gets the plan).
            let _ = sys::set_idle_priority(Some(nix::unistd::Pid::from_raw(pid)), false);
        }
        let control = sys::async_fd(control).map_err(|e| sandbox_err(e.to_string()))?;
        let protocol = plan.protocol;
        let cgi_env = plan.process.env.clone();
        let limits = plan.cgroup;
        let gone = |e: std::io::Error| sandbox_err(format!("the sandbox went away: {e}"));
        send_async(
            &control,
            &ToInit::Run {
                plan: Box::new(plan),
            },
            &[],
        )
        .await
        .map_err(gone)?;
        // While the sandbox mounts its root filesystem; it runs nothing of
        // the image's until `Start`.
        if let Some(cgroup) = &sandbox.cgroup.cgroup {
            runtime
                .cgroups
                .apply_limits(cgroup, &limits)
                .map_err(|e| sandbox_err(e.to_string()))?;
        }
        send_async(&control, &ToInit::Start, &[])
            .await
            .map_err(gone)?;
        let timeout = spec.limits.timeout().min(MAX_START);
        let first = tokio::time::timeout(timeout, wait_ready(&function, pid, &control))
            .await
            .map_err(|_| {
                if let Protocol::Http { port } = protocol {
                    StartError::NotReady {
                        function: function.clone(),
                        port,
                        timeout,
                    }
                } else {
                    sandbox_err(format!("init did not report within {timeout:?}"))
                }
            })?;
        let (timings, first_conn) = match first {
            Ok(ready) => ready,
            Err(Failure::Setup(detail)) => return Err(sandbox_err(detail)),
            Err(Failure::Exited(report)) => {
                let status = if sandbox.oom_killed() {
                    "killed by the OOM killer: out of memory".to_owned()
                } else {
                    report.status.to_string()
                };
                tracing::warn!(function = %function, %status, stderr = %report.stderr_tail, "handler exited before it was ready");
                return Err(StartError::Exited {
                    function,
                    status,
                    stderr: stderr_suffix(&report.stderr_tail),
                });
            }
        };
        let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
        tracing::info!(
            function = %function,
            pid,
            premade = was_premade,
            cgroup_ns_ms = ms(timings.cloned, timings.sandbox),
            assign_ms = ms(requested, timings.assigned),
            rootfs_ms = ms(timings.assigned, timings.rootfs),
            exec_ms = ms(timings.rootfs, timings.exec),
            ready_ms = ms(timings.exec, timings.ready),
            total_ms = ms(requested, proto::monotonic_ns()),
            "container started"
        );
        let control = Control::start(function.clone(), pid, control, first_conn);
        let handler = match protocol {
            Protocol::Http { .. } => Handler::Http(Box::new(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(None)
                    .build(NsConnector(control.clone())),
            )),
            Protocol::Cgi => Handler::Cgi { env: cgi_env },
        };
        let phase = |a: u64, b: u64| Duration::from_nanos(b.saturating_sub(a));
        let phases = vec![
            ("sandbox", phase(requested, timings.assigned)),
            ("rootfs", phase(timings.assigned, timings.rootfs)),
            ("exec", phase(timings.rootfs, timings.exec)),
            ("ready", phase(timings.exec, timings.ready)),
        ];
        Ok(Box::new(ContainerInstance {
            function,
            phases,
            timeout: spec.limits.timeout(),
            memory_bytes: spec.limits.memory_bytes,
            control,
            handler,
            sandbox: Some(sandbox),
            cgi_seq: AtomicU64::new(0),
        }))
    }
    async fn shutdown(&self) {
        let Ok(runtime) = self.runtime() else { return };
        runtime.closed.store(true, Ordering::Release);
        runtime.refill.notify_one();
        let premade: Vec<Premade> = lock(&runtime.premade).drain(..).collect();
        for premade in premade {
            premade.sandbox.release().await;
        }
    }
}

impl ContainerBackend {
    /// The sandbox plan of `spec`: its image, settings and limits.
    fn plan(&self, spec: &FunctionSpec) -> Result<plan::SandboxPlan, String> {
        let options = spec
            .container
            .as_ref()
            .ok_or("the function has no container settings")?;
        let image = self
            .images
            .image(&options.image)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "image {} is no longer in the image store; deploy the function again",
                    options.image
                )
            })?;
        let layers: Vec<PathBuf> = image.layers.iter().map(|l| l.path.clone()).collect();
        let port = options
            .port
            .or(match image.config.exposed_ports.as_slice() {
                [only] => Some(*only),
                _ => None,
            })
            .unwrap_or(plan::DEFAULT_PORT);
        let settings = ContainerSettings {
            name: spec.name.to_string(),
            command: options.command.clone(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            protocol: match options.protocol {
                HandlerProtocol::Http => Protocol::Http { port },
                HandlerProtocol::Cgi => Protocol::Cgi,
            },
            memory_bytes: spec.limits.memory_bytes,
            cpu_millis: options.cpu_millis,
            pids: plan::DEFAULT_PIDS,
            scratch_bytes: plan::DEFAULT_SCRATCH_BYTES,
        };
        let lookup = NameLookup::read(&layers);
        plan::plan(&settings, &image.config, &layers, self.id_map, &|k, n| {
            lookup.find(k, n)
        })
        .map_err(|e| e.to_string())
    }
}

fn stderr_suffix(tail: &str) -> String {
    let tail = tail.trim();
    if tail.is_empty() {
        String::new()
    } else {
        let start = tail.char_indices().rev().nth(499).map_or(0, |(i, _)| i);
        format!("; stderr: {}", &tail[start..])
    }
}

enum Failure {
    Setup(String),
    Exited(ExitReport),
}

/// Reads init's messages until it reports ready (or fails).
async fn wait_ready(
    function: &FunctionName,
    pid: i32,
    control: &AsyncFd<OwnedFd>,
) -> Result<(proto::Timings, Option<OwnedFd>), Failure> {
    let mut buf = Vec::new();
    loop {
        let (msg, fds) = recv_async::<FromInit>(control, &mut buf)
            .await
            .map_err(|e| Failure::Setup(format!("the sandbox's init went away: {e}")))?;
        match msg {
            FromInit::Ready { timings } => return Ok((timings, fds.into_iter().next())),
            FromInit::SetupFailed { stage, error } => {
                return Err(Failure::Setup(format!("{stage}: {error}")));
            }
            FromInit::Exited(report) => return Err(Failure::Exited(report)),
            FromInit::Output { stream, text } => log_output(function, pid, stream, &text),
            _ => {}
        }
    }
}

fn log_output(function: &FunctionName, instance: i32, stream: u8, text: &str) {
    let stream = if stream == 1 { "stdout" } else { "stderr" };
    crate::logs::record(
        function.as_str(),
        &format!("container-{instance}"),
        stream,
        text,
    );
}

/// Removes the cgroup when dropped (after the sandbox's processes).
struct CgroupGuard {
    cgroups: Arc<Cgroups>,
    cgroup: Option<Cgroup>,
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

/// What a container holds on the host: its init (by pidfd) and its cgroup.
/// Dropping it kills init, which ends the PID namespace (the kernel kills
/// the rest) and with the last process the mount namespace; the cgroup is
/// then removed.
struct Sandbox {
    pidfd: OwnedFd,
    cgroup: CgroupGuard,
    /// OOM kills already reported.
    oom_seen: AtomicU64,
}

impl Sandbox {
    /// Whether the OOM killer struck since the last call.
    fn oom_killed(&self) -> bool {
        let kills = self
            .cgroup
            .cgroup
            .as_ref()
            .map_or(0, |c| self.cgroup.cgroups.oom_kills(c).unwrap_or(0));
        self.oom_seen.fetch_max(kills, Ordering::AcqRel) < kills
    }

    fn kill(&self) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), nix::sys::signal::Signal::SIGKILL);
    }

    /// Whether init still runs (a pidfd polls readable once it exited).
    fn is_alive(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Kills the sandbox and waits until its cgroup is gone.
    async fn release(mut self) {
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

/// The gateway's side of one container's control socket: one task reads
/// init's messages and hands each to whoever waits for it.
struct Control {
    function: FunctionName,
    /// Host pid of the sandbox's init (names the instance in logs).
    pid: i32,
    fd: AsyncFd<OwnedFd>,
    /// Serialises `Connect` requests with their FIFO of waiters.
    connect: tokio::sync::Mutex<()>,
    connects: Mutex<VecDeque<oneshot::Sender<Result<OwnedFd, String>>>>,
    spare: Mutex<Option<OwnedFd>>,
    cgi: Mutex<HashMap<u64, oneshot::Sender<Result<ExitStatus, String>>>>,
    /// Why the sandbox is gone, once it is.
    dead: watch::Sender<Option<String>>,
}

impl Control {
    fn start(
        function: FunctionName,
        pid: i32,
        fd: AsyncFd<OwnedFd>,
        first_conn: Option<OwnedFd>,
    ) -> Arc<Control> {
        let control = Arc::new(Control {
            function,
            pid,
            fd,
            connect: tokio::sync::Mutex::new(()),
            connects: Mutex::new(VecDeque::new()),
            spare: Mutex::new(first_conn),
            cgi: Mutex::new(HashMap::new()),
            dead: watch::channel(None).0,
        });
        tokio::spawn(control.clone().read_loop());
        control
    }

    async fn read_loop(self: Arc<Self>) {
        let mut buf = Vec::new();
        let reason = loop {
            let (msg, fds) = match recv_async::<FromInit>(&self.fd, &mut buf).await {
                Ok(m) => m,
                Err(e) => break format!("the sandbox ended ({e})"),
            };
            match msg {
                FromInit::Connection => {
                    let waiter = lock(&self.connects).pop_front();
                    let fd = fds.into_iter().next().ok_or("no descriptor".to_owned());
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(fd);
                    }
                }
                FromInit::ConnectFailed { error } => {
                    if let Some(waiter) = lock(&self.connects).pop_front() {
                        let _ = waiter.send(Err(error));
                    }
                }
                FromInit::CgiDone { id, status } => {
                    if let Some(waiter) = lock(&self.cgi).remove(&id) {
                        let _ = waiter.send(Ok(status));
                    }
                }
                FromInit::CgiFailed { id, error } => {
                    if let Some(waiter) = lock(&self.cgi).remove(&id) {
                        let _ = waiter.send(Err(error));
                    }
                }
                FromInit::Output { stream, text } => {
                    log_output(&self.function, self.pid, stream, &text)
                }
                FromInit::Exited(report) => {
                    tracing::warn!(function = %self.function, status = %report.status, stderr = %report.stderr_tail, "handler exited");
                    break format!(
                        "the handler exited ({}){}",
                        report.status,
                        stderr_suffix(&report.stderr_tail)
                    );
                }
                FromInit::Ready { .. } | FromInit::SetupFailed { .. } => {}
            }
        };
        self.dead.send_replace(Some(reason.clone()));
        for waiter in lock(&self.connects).drain(..) {
            let _ = waiter.send(Err(reason.clone()));
        }
        for (_, waiter) in lock(&self.cgi).drain() {
            let _ = waiter.send(Err(reason.clone()));
        }
    }

    fn dead_reason(&self) -> Option<String> {
        self.dead.borrow().clone()
    }

    /// Records that the sandbox is being killed, before init's socket
    /// closes, so that no new request is sent its way.
    fn mark_dead(&self, reason: &str) {
        self.dead.send_if_modified(|dead| {
            let fresh = dead.is_none();
            if fresh {
                *dead = Some(reason.to_owned());
            }
            fresh
        });
    }

    async fn send(&self, msg: &ToInit, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), String> {
        send_async(&self.fd, msg, fds)
            .await
            .map_err(|e| format!("the sandbox is gone: {e}"))
    }

    /// A new connection to the handler's port, made inside the sandbox.
    async fn connect(&self) -> Result<OwnedFd, String> {
        if let Some(fd) = lock(&self.spare).take() {
            return Ok(fd);
        }
        if let Some(reason) = self.dead_reason() {
            return Err(reason);
        }
        let (tx, rx) = oneshot::channel();
        {
            let _serial = self.connect.lock().await;
            lock(&self.connects).push_back(tx);
            self.send(&ToInit::Connect, &[]).await?;
        }
        rx.await
            .unwrap_or_else(|_| Err("the sandbox is gone".to_owned()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// hyper-util's connector for one sandbox: every new connection is a
/// socket init made in the sandbox's network namespace.
#[derive(Clone)]
struct NsConnector(Arc<Control>);

impl tower_service::Service<Uri> for NsConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let control = self.0.clone();
        Box::pin(async move {
            let fd = control.connect().await.map_err(std::io::Error::other)?;
            let stream = std::net::TcpStream::from(fd);
            stream.set_nonblocking(true)?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
        })
    }
}

enum Handler {
    Http(Box<Client<NsConnector, Body>>),
    Cgi { env: Vec<String> },
}

/// One running container.
pub struct ContainerInstance {
    function: FunctionName,
    /// How its start went, by phase.
    phases: Vec<(&'static str, Duration)>,
    timeout: Duration,
    memory_bytes: u64,
    control: Arc<Control>,
    handler: Handler,
    sandbox: Option<Sandbox>,
    cgi_seq: AtomicU64,
}

impl ContainerInstance {
    /// The OOM killer struck: whatever else the sandbox holds may be what
    /// filled it, so it is replaced rather than trusted with the next request.
    fn out_of_memory(&self) -> InvokeError {
        self.control
            .mark_dead("the sandbox ran out of memory and was replaced");
        if let Some(sandbox) = &self.sandbox {
            sandbox.kill();
        }
        InvokeError::OutOfMemory {
            function: self.function.clone(),
            limit_bytes: self.memory_bytes,
        }
    }

    /// The error for a request that failed because the sandbox did.
    fn failure(&self, detail: String) -> InvokeError {
        if self.sandbox.as_ref().is_some_and(Sandbox::oom_killed) {
            return self.out_of_memory();
        }
        let detail = self.control.dead_reason().unwrap_or(detail);
        InvokeError::BadResponse {
            function: self.function.clone(),
            detail,
        }
    }

    async fn invoke_http(
        &self,
        client: &Client<NsConnector, Body>,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        parts.uri = Uri::try_from(format!("http://localhost{path}")).map_err(|e| {
            InvokeError::BadRequest {
                function: self.function.clone(),
                detail: e.to_string(),
            }
        })?;
        parts.version = http::Version::HTTP_11;
        let response = client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| self.failure(format!("forwarding to the handler: {e}")))?;
        Ok(response.map(|body| {
            body.map_err(|e| -> crate::backend::BodyError { Box::new(e) })
                .boxed_unsync()
        }))
    }

    async fn invoke_cgi(
        &self,
        env: &[String],
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let function = self.function.clone();
        let info = req
            .extensions()
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_default();
        let (parts, body) = req.into_parts();
        let input =
            crate::body::collect(body, u64::MAX)
                .await
                .map_err(|e| InvokeError::BadRequest {
                    function: function.clone(),
                    detail: format!("reading the request body: {e}"),
                })?;
        let mut vars: Vec<String> = env.to_vec();
        vars.extend(
            crate::wasm::cgi::cgi_variables(&parts, &info, input.len())
                .into_iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| self.failure(format!("pipe: {e}")))
        };
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let id = self.cgi_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.control.cgi).insert(id, tx);
        self.control
            .send(
                &ToInit::Cgi { id, env: vars },
                &[stdin_r.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()],
            )
            .await
            .map_err(|e| self.failure(e))?;
        drop((stdin_r, stdout_w, stderr_w));
        let io_err = |e: std::io::Error| self.failure(format!("talking to the CGI process: {e}"));
        let mut stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_w).map_err(io_err)?;
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout_r).map_err(io_err)?;
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_r).map_err(io_err)?;
        let write = async move {
            use tokio::io::AsyncWriteExt;
            // A program that does not read its input is fine: EPIPE ends it.
            let _ = stdin.write_all(&input).await;
        };
        let max = crate::wasm::cgi::MAX_CGI_OUTPUT_BYTES as u64;
        let read = |pipe: tokio::net::unix::pipe::Receiver, max: u64| async move {
            use tokio::io::AsyncReadExt;
            let mut out = Vec::new();
            let result = pipe.take(max).read_to_end(&mut out).await;
            result.map(|_| out)
        };
        let (_, out, err, status) =
            tokio::join!(write, read(stdout, max), read(stderr, 64 * 1024), async {
                rx.await
                    .unwrap_or_else(|_| Err("the sandbox is gone".into()))
            });
        let out = out.map_err(io_err)?;
        let err = err.unwrap_or_default();
        let err_text = String::from_utf8_lossy(&err);
        if !err_text.trim().is_empty() {
            log_output(&function, self.control.pid, 2, &err_text);
        }
        let status = status.map_err(|e| self.failure(e))?;
        let killed = matches!(status, ExitStatus::Signal(_));
        let oom =
            status != ExitStatus::Code(0) && self.sandbox.as_ref().is_some_and(Sandbox::oom_killed);
        if oom {
            return Err(self.out_of_memory());
        }
        if status != ExitStatus::Code(0) && (out.is_empty() || killed) {
            return Err(self.failure(format!(
                "the CGI process failed ({status}){}",
                stderr_suffix(&err_text)
            )));
        }
        let (code, headers, start) =
            crate::wasm::cgi::parse_cgi_response(&out).map_err(|detail| {
                InvokeError::BadResponse {
                    function: function.clone(),
                    detail,
                }
            })?;
        let mut response = Response::new(full_body(Bytes::from(out).slice(start..)));
        *response.status_mut() = code;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[async_trait]
impl Instance for ContainerInstance {
    async fn invoke(&self, req: Request<Body>) -> Result<Response<Body>, InvokeError> {
        if let Some(reason) = self.control.dead_reason() {
            return Err(self.failure(reason));
        }
        let deadline = req
            .extensions()
            .get::<Deadline>()
            .map_or_else(|| tokio::time::Instant::now() + self.timeout, |d| d.0);
        let work = async {
            match &self.handler {
                Handler::Http(client) => self.invoke_http(client, req).await,
                Handler::Cgi { env } => self.invoke_cgi(env, req).await,
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(_) => {
                // The handler is stuck on this request: replace the sandbox.
                self.control
                    .mark_dead("a request timed out and the sandbox was replaced");
                if let Some(sandbox) = &self.sandbox {
                    sandbox.kill();
                }
                Err(InvokeError::Timeout {
                    function: self.function.clone(),
                    timeout: self.timeout,
                })
            }
        }
    }

    fn concurrency(&self) -> usize {
        usize::MAX
    }

    fn is_healthy(&self) -> bool {
        self.control.dead_reason().is_none()
    }

    fn start_phases(&self) -> Vec<(&'static str, Duration)> {
        self.phases.clone()
    }

    async fn stop(mut self: Box<Self>) {
        let grace = STOP_GRACE;
        let asked = self
            .control
            .send(
                &ToInit::Stop {
                    grace_ms: grace.as_millis().try_into().unwrap_or(u64::MAX),
                },
                &[],
            )
            .await;
        if asked.is_ok() {
            let mut dead = self.control.dead.subscribe();
            let _ = tokio::time::timeout(
                grace + Duration::from_millis(500),
                dead.wait_for(Option::is_some),
            )
            .await;
        }
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.release().await;
        }
    }
}

/// User and group names of an image (its `/etc/passwd`, `/etc/group`),
/// read from the topmost layer that has each file.
struct NameLookup {
    passwd: String,
    group: String,
}

impl NameLookup {
    fn read(layers: &[PathBuf]) -> NameLookup {
        let top = |file: &str| -> String {
            layers
                .iter()
                .rev()
                .map(|l| l.join(file))
                .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        NameLookup {
            passwd: top("etc/passwd"),
            group: top("etc/group"),
        }
    }

    /// `kind` is `user`, `group` or `primary-group` (of a user).
    fn find(&self, kind: &str, name: &str) -> Option<u32> {
        let (text, field) = match kind {
            "user" => (&self.passwd, 2),
            "primary-group" => (&self.passwd, 3),
            "group" => (&self.group, 2),
            _ => return None,
        };
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name))
                .then(|| fields.get(field)?.parse().ok())
                .flatten()
        })
    }
}
