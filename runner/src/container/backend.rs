//! The container backend as the router sees it: [`ContainerBackend`]
//! imports an image at deploy time and, per cold start, derives the
//! sandbox's plan from the function and its image, takes a pre-made
//! sandbox, gives it the plan, writes its cgroup limits while it mounts
//! its root, and waits until the handler is ready. The mechanism each step
//! uses lives in its own module (premade, init_link, cgroup, plan).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{
    Backend, Cause, Instance, PrepareError, Prepared, PulledArtifact, StartError,
};
use crate::container::cgroup::{Cgroups, Layout, RealFs};
use crate::container::error::{SandboxError, UnavailableError};
use crate::container::handler_conns::HandlerConns;
use crate::container::init_link::{InitLink, NotReady, stderr_suffix, wait_ready, why_gone};
use crate::container::instance::{ContainerInstance, Transport};
use crate::container::lambda::{Init, RuntimeApi};
use crate::container::plan::{self, ContainerSettings, IdMap, SandboxPlan};
use crate::container::premade::{Premade, PremadePool};
use crate::container::proto::{self, ToInit};
use crate::container::sandbox::sweep_leftovers;
use crate::container::spawner::{LaunchError, Spawner, SpawnerHandle, send_async};
use crate::container::sys;
use crate::container::users;
use crate::image::pull::{self, PullOptions, Reference};
use crate::image::{Image, ImageStore, ImportError, ImportLimits, StoreError, UnpackOptions};
use crate::protocol::Protocol;
use crate::spec::{Digest, FunctionKind, FunctionSpec};
use crate::store::artifact::ArtifactStore;
use crate::store::logs::escape_controls;

/// Longest a sandbox may take to become ready, whatever the function's
/// request timeout.
const MAX_START: Duration = Duration::from_secs(30);
/// Default number of pre-made sandboxes kept waiting for a function.
pub const DEFAULT_PREMADE: usize = 2;

/// Runs container functions.
pub struct ContainerBackend {
    artifacts: ArtifactStore,
    images: ImageStore,
    premade: Result<Arc<PremadePool>, Arc<UnavailableError>>,
    id_map: IdMap,
}

/// How the container backend makes its sandboxes.
#[derive(Debug, Clone, Copy)]
pub struct SandboxOptions {
    /// Sandboxes kept made ahead of demand.
    pub premade: usize,
    /// Whether a sandbox may take the cgroup of one that exited.
    pub reuse_cgroups: bool,
    /// Whether to turn on the host's cgroup2 `favordynmods`
    /// (see [`super::cgroup_tuning`]).
    pub favordynmods: bool,
}

impl ContainerBackend {
    /// `spawner` is the spawner `main` forked, or why there is none (not
    /// root, …); without it deploying a container function is refused with
    /// that reason, and wasm functions are unaffected. `sandboxes.premade`
    /// sandboxes are kept ready ahead of demand (needs a tokio runtime); an
    /// image import writes at most `limits`.
    pub fn new(
        artifacts: ArtifactStore,
        data_dir: &Path,
        spawner: Result<SpawnerHandle, LaunchError>,
        sandboxes: SandboxOptions,
        limits: ImportLimits,
    ) -> Result<ContainerBackend, StoreError> {
        let id_map = IdMap::default();
        let images = ImageStore::open(data_dir.join("images"))?
            .with_unpack_options(UnpackOptions {
                uid_offset: id_map.host_uid,
                gid_offset: id_map.host_gid,
            })
            .with_limits(limits);
        let pool = spawner
            .map_err(UnavailableError::NoSpawner)
            .and_then(|handle| premade_pool(handle, data_dir, id_map, sandboxes))
            .map_err(Arc::new);
        match &pool {
            Ok(pool) if pool.target() > 0 => {
                tokio::spawn(pool.clone().keep_filled());
            }
            Ok(_) => {}
            Err(reason) => tracing::warn!(%reason, "container functions are unavailable"),
        }
        Ok(ContainerBackend {
            artifacts,
            images,
            premade: pool,
            id_map,
        })
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Refuses, at deploy time rather than at the first request, an image
    /// that cannot run here: containers unavailable, or a `User` the image
    /// does not have.
    /// Checks a pulled image as an import does (its user exists); returns
    /// where it keeps a Lambda runtime, if it has one.
    async fn check_image(&self, image: &Image) -> Result<Option<&'static str>, PrepareError> {
        let digest = image.manifest_digest.to_string();
        if let Err(e) = &self.premade {
            return Err(PrepareError::ContainersUnavailable {
                cause: Cause::new(SandboxError::Unavailable(e.clone())),
            });
        }
        let layers: Vec<PathBuf> = image.layers.iter().map(|l| l.path.clone()).collect();
        let user = image.config.user.clone();
        let id_map = self.id_map;
        tokio::task::spawn_blocking(move || {
            users::resolve(user.as_deref(), &layers, id_map).map(|_| lambda_bootstrap(&layers))
        })
        .await
        .map_err(|e| PrepareError::Storage {
            digest: digest.clone(),
            cause: Cause::new(e),
        })?
        .map_err(|e| PrepareError::BadImage {
            digest,
            cause: Cause::new(e),
        })
    }

    fn premade(&self) -> Result<&Arc<PremadePool>, SandboxError> {
        self.premade
            .as_ref()
            .map_err(|e| SandboxError::Unavailable(e.clone()))
    }

    /// The sandbox plan of `spec`: its image, settings and limits.
    fn plan(&self, spec: &FunctionSpec) -> Result<SandboxPlan, SandboxError> {
        let options = spec
            .container
            .as_ref()
            .ok_or(SandboxError::NoContainerSettings)?;
        let image = self
            .images
            .image(&options.image)
            .map_err(SandboxError::Images)?
            .ok_or_else(|| SandboxError::ImageMissing(options.image.clone()))?;
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
            protocol: options.protocol,
            port,
            memory_bytes: spec.limits.memory_bytes,
            cpu_millis: Some(options.cpu_cap_millis()),
            pids: plan::DEFAULT_PIDS,
            scratch_bytes: plan::DEFAULT_SCRATCH_BYTES,
            secrets: spec.secrets_dir.clone(),
        };
        let ids = users::resolve(image.config.user.as_deref(), &layers, self.id_map)
            .map_err(SandboxError::User)?;
        plan::plan(&settings, &image.config, &layers, self.id_map, ids).map_err(SandboxError::Plan)
    }
}

/// The pool of pre-made sandboxes, once the cgroups, the spawner and the
/// scratch directory are there; removes what a crashed server left first.
fn premade_pool(
    handle: SpawnerHandle,
    data_dir: &Path,
    id_map: IdMap,
    options: SandboxOptions,
) -> Result<Arc<PremadePool>, UnavailableError> {
    let cgroups = Layout::detect()
        .and_then(|layout| {
            let ours = [std::process::id(), handle.pid()];
            Cgroups::new(layout, Box::new(RealFs), &ours)
        })
        .map_err(UnavailableError::Cgroups)?;
    if !options.reuse_cgroups {
        cgroups.keep_at_most(0);
    }
    if options.favordynmods {
        let outcome = super::cgroup_tuning::favor_dynamic_modifications();
        super::cgroup_tuning::log(&outcome);
    }
    let spawner = Spawner::new(handle).map_err(UnavailableError::Spawner)?;
    let scratch = data_dir.join("run").join("scratch");
    std::fs::create_dir_all(&scratch).map_err(|source| UnavailableError::Scratch {
        path: scratch.clone(),
        source,
    })?;
    let removed = sweep_leftovers(&cgroups);
    if removed > 0 {
        tracing::info!(
            sandboxes = removed,
            "removed what a previous wisp serve left behind"
        );
    }
    // Sandboxes use these before `pivot_root`: the data dir (layers,
    // scratch, secrets) and the cgroups they join.
    let host_dirs = std::iter::once(data_dir)
        .chain(cgroups.parent_dirs())
        .map(Path::to_path_buf)
        .collect();
    Ok(Arc::new(PremadePool::new(
        spawner,
        Arc::new(cgroups),
        scratch,
        host_dirs,
        id_map,
        options.premade,
    )))
}

#[async_trait]
impl Backend for ContainerBackend {
    async fn prepare(&self, artifact: &Digest) -> Result<Prepared, PrepareError> {
        let digest = artifact.to_string();
        if let Err(e) = &self.premade {
            return Err(PrepareError::ContainersUnavailable {
                cause: Cause::new(SandboxError::Unavailable(e.clone())),
            });
        }
        let blob = self.artifacts.blob_path(artifact);
        if !blob.is_file() {
            return Err(PrepareError::MissingArtifact { digest });
        }
        let images = self.images.clone();
        let id_map = self.id_map;
        let image = tokio::task::spawn_blocking(move || {
            let image = images.import(&blob).map_err(ImportFailure::Import)?;
            // Refused now rather than at the first request: an image whose
            // `User` names a user or group it does not have.
            let layers: Vec<PathBuf> = image.layers.iter().map(|l| l.path.clone()).collect();
            users::resolve(image.config.user.as_deref(), &layers, id_map)
                .map_err(|e| ImportFailure::User(Cause::new(e)))?;
            let bootstrap = lambda_bootstrap(&layers);
            Ok::<_, ImportFailure>((image, bootstrap))
        })
        .await
        .map_err(|e| PrepareError::Storage {
            digest: digest.clone(),
            cause: Cause::new(e),
        })?
        .map_err(|failure| {
            let digest = digest.clone();
            match failure {
                ImportFailure::Import(e) if e.over_limit().is_some() => PrepareError::TooLarge {
                    digest,
                    cause: Cause::new(e),
                },
                // Prunes kept taking its layers away: not the image's fault.
                ImportFailure::Import(e @ ImportError::Pruned { .. }) => PrepareError::Storage {
                    digest,
                    cause: Cause::new(e),
                },
                ImportFailure::Import(e) => PrepareError::BadImage {
                    digest,
                    cause: Cause::new(e),
                },
                ImportFailure::User(cause) => PrepareError::BadImage { digest, cause },
            }
        })?;
        let (image, lambda_bootstrap) = image;
        tracing::info!(artifact = %digest, image = %image.manifest_digest, layers = image.layers.len(), lambda_bootstrap, "image imported");
        Ok(Prepared {
            kind: FunctionKind::Container,
            image: Some(image.manifest_digest),
            lambda_bootstrap,
        })
    }

    async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<PulledArtifact, PrepareError> {
        let report = pull::pull(&self.images, &self.artifacts, reference, options).await?;
        let image = match &report.pulled {
            pull::Pulled::Image(image) => image.clone(),
            pull::Pulled::Wasm { artifact } => {
                // Not ours to prepare: the router hands it to the wasm backend.
                return Ok(PulledArtifact {
                    artifact: artifact.clone(),
                    prepared: Prepared {
                        kind: FunctionKind::WasmHttp,
                        image: None,
                        lambda_bootstrap: None,
                    },
                    report,
                });
            }
        };
        let lambda_bootstrap = self.check_image(&image).await?;
        Ok(PulledArtifact {
            artifact: image.manifest_digest.clone(),
            prepared: Prepared {
                kind: FunctionKind::Container,
                image: Some(image.manifest_digest.clone()),
                lambda_bootstrap,
            },
            report,
        })
    }

    async fn start(&self, spec: &FunctionSpec) -> Result<Box<dyn Instance>, StartError> {
        let requested = proto::monotonic_ns();
        let function = spec.name.clone();
        let sandbox_err = |e: SandboxError| StartError::Sandbox {
            function: function.clone(),
            cause: Cause::new(e),
        };
        let pool = self.premade().map_err(sandbox_err)?;
        let plan = self.plan(spec).map_err(sandbox_err)?;
        let filesystems = Some(plan.filesystems()).filter(|fs| !fs.bind_host_dirs());
        let (premade, was_premade) = pool.take(filesystems.as_ref()).await.map_err(sandbox_err)?;
        let Premade {
            mut sandbox,
            control,
            pid,
            netns_reused,
            cgroup_reused,
        } = premade;
        if was_premade {
            // Made at idle priority; one that has not finished setting up
            // must not wait behind busy CPUs now that a request waits on it
            // (init raises its zygote itself when it gets the plan).
            let _ = sys::set_priority(Some(nix::unistd::Pid::from_raw(pid)), sys::Priority::Normal);
        }
        // Nor its cgroup, idle while the sandbox was made and waited.
        if let Some(cgroup) = &mut sandbox.cgroup.cgroup {
            pool.cgroups
                .set_idle(cgroup, false)
                .map_err(|e| sandbox_err(SandboxError::Cgroup(e)))?;
        }
        let control = sys::async_fd(control).map_err(|e| sandbox_err(SandboxError::Control(e)))?;
        let (protocol, port) = (plan.protocol, plan.port);
        let cgi_env = plan.process.env.clone();
        let limits = plan.cgroup;
        let gone = |e: std::io::Error| sandbox_err(why_gone(&control, e));
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
        if let Some(cgroup) = &mut sandbox.cgroup.cgroup {
            pool.cgroups
                .apply_limits(cgroup, &limits)
                .map_err(|e| sandbox_err(SandboxError::Cgroup(e)))?;
        }
        send_async(&control, &ToInit::Start, &[])
            .await
            .map_err(gone)?;
        let timeout = spec.limits.timeout().min(MAX_START);
        let first = tokio::time::timeout(timeout, wait_ready(&function, pid, &control))
            .await
            .map_err(|_| {
                // Where it is stuck, for the operator: not for the client.
                let processes = super::procs::describe(pid);
                tracing::warn!(function = %function, ?timeout, %processes, "the sandbox did not get ready in time");
                match protocol {
                    Protocol::Http => StartError::NotReady {
                        function: function.clone(),
                        waited_for: format!("accept connections on port {port}"),
                        timeout,
                    },
                    Protocol::Cgi | Protocol::Lambda => {
                        sandbox_err(SandboxError::NoReport(timeout))
                    }
                }
            })?;
        let (timings, first_conn) = match first {
            Ok(ready) => ready,
            Err(NotReady::Sandbox(e)) => return Err(sandbox_err(e)),
            Err(NotReady::Exited(report)) => {
                let status = if sandbox.oom_killed() {
                    "killed by the OOM killer: out of memory".to_owned()
                } else {
                    report.status.to_string()
                };
                tracing::warn!(function = %function, %status, stderr = %escape_controls(&report.stderr_tail), "handler exited before it was ready");
                return Err(StartError::Exited {
                    function,
                    status,
                    stderr: stderr_suffix(&report.stderr_tail),
                });
            }
        };
        let (first_conn, listener) = match protocol {
            Protocol::Lambda => (None, first_conn),
            _ => (first_conn, None),
        };
        let link = InitLink::start(function.clone(), pid, control, first_conn);
        let mut ready = timings.ready;
        let transport = match protocol {
            Protocol::Http => Transport::Http(HandlerConns::new(link.clone())),
            Protocol::Cgi => Transport::Cgi { env: cgi_env },
            Protocol::Lambda => {
                let listener = listener.ok_or_else(|| {
                    sandbox_err(SandboxError::Control(std::io::Error::other(
                        "init sent no Runtime API socket",
                    )))
                })?;
                let (api, server) =
                    RuntimeApi::serve(function.clone(), spec.limits.max_body_bytes, listener)
                        .map_err(|e| sandbox_err(SandboxError::Control(e)))?;
                let transport = Transport::Lambda {
                    api: api.clone(),
                    server,
                    concurrency: crate::protocol::lambda::max_concurrency(&spec.env),
                };
                // The runtime's init: until it asks for its first event.
                let left = timeout.saturating_sub(Duration::from_nanos(
                    proto::monotonic_ns().saturating_sub(requested),
                ));
                let init = tokio::time::timeout(left, async {
                    tokio::select! {
                        init = api.init_done() => Some(init),
                        () = link.wait_dead() => None,
                    }
                })
                .await;
                match init {
                    Ok(Some(Init::Done)) => {}
                    Ok(Some(Init::Failed(error))) => {
                        return Err(StartError::Exited {
                            function,
                            status: format!(
                                "its init failed: {}: {}",
                                error.error_type,
                                error.error_message.chars().take(512).collect::<String>()
                            ),
                            stderr: String::new(),
                        });
                    }
                    Ok(Some(Init::Running) | None) => {
                        let status = if sandbox.oom_killed() {
                            "killed by the OOM killer: out of memory".to_owned()
                        } else {
                            link.dead_reason()
                                .unwrap_or_else(|| "the sandbox ended".to_owned())
                        };
                        return Err(StartError::Exited {
                            function,
                            status,
                            stderr: "; its output is in `wisp logs`".to_owned(),
                        });
                    }
                    Err(_) => {
                        return Err(StartError::NotReady {
                            function,
                            waited_for: "ask the Lambda Runtime API for its first invocation"
                                .to_owned(),
                            timeout,
                        });
                    }
                }
                ready = proto::monotonic_ns();
                transport
            }
        };
        let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
        tracing::info!(
            function = %function,
            pid,
            premade = was_premade,
            netns_reused,
            cgroup_reused,
            cgroup_ns_ms = ms(timings.cloned, timings.sandbox),
            assign_ms = ms(requested, timings.assigned),
            rootfs_ms = ms(timings.assigned, timings.rootfs),
            limits_ms = ms(timings.rootfs, timings.started),
            exec_ms = ms(timings.started, timings.exec),
            ready_ms = ms(timings.exec, ready),
            total_ms = ms(requested, proto::monotonic_ns()),
            "container started"
        );
        let phase = |a: u64, b: u64| Duration::from_nanos(b.saturating_sub(a));
        let phases = vec![
            ("sandbox", phase(requested, timings.assigned)),
            ("rootfs", phase(timings.assigned, timings.rootfs)),
            // Init waiting for the gateway's `Start` (limits written).
            ("limits", phase(timings.rootfs, timings.started)),
            ("exec", phase(timings.started, timings.exec)),
            ("ready", phase(timings.exec, ready)),
        ];
        Ok(Box::new(ContainerInstance {
            function,
            limits: spec.limits,
            phases,
            link,
            transport,
            sandbox: Some(sandbox),
            cgi_seq: AtomicU64::new(0),
        }))
    }

    async fn shutdown(&self) {
        if let Ok(pool) = &self.premade {
            pool.close().await;
        }
    }
}

/// Where an image's unpacked layers (bottom first) keep a Lambda runtime:
/// the first of [`crate::protocol::lambda::BOOTSTRAP_PATHS`] that the top
/// layer holding it (or its whiteout) has.
fn lambda_bootstrap(layers: &[PathBuf]) -> Option<&'static str> {
    crate::protocol::lambda::BOOTSTRAP_PATHS
        .into_iter()
        .find(|path| {
            let relative = path.trim_start_matches('/');
            let whiteout = Path::new(relative).parent().map(|dir| {
                let name = Path::new(relative).file_name().unwrap_or_default();
                dir.join(format!(".wh.{}", name.to_string_lossy()))
            });
            for layer in layers.iter().rev() {
                if std::fs::symlink_metadata(layer.join(relative)).is_ok() {
                    return true;
                }
                if whiteout
                    .as_ref()
                    .is_some_and(|w| std::fs::symlink_metadata(layer.join(w)).is_ok())
                {
                    return false;
                }
            }
            false
        })
}

/// Why a deploy-time import failed: the import itself, or the image's user.
enum ImportFailure {
    Import(ImportError),
    User(Cause),
}
