//! The set-up of one sandbox as a plain value: which namespaces, which uid
//! and gid mapping, which layers under which overlay, which mounts in which
//! order, which devices, which process with which environment, which cgroup
//! limits. [`plan`] computes it from the function's container settings and
//! its image without touching the system, so it is unit-tested without root;
//! the container's init (`container::init`) only carries it out.
//!
//! Security defaults decided here: every namespace including a user
//! namespace (container root = an unprivileged host uid), a network
//! namespace with loopback only, no capabilities, `no_new_privs`, Docker's
//! default seccomp profile (`container::seccomp`), read-only image layers
//! (they are overlay lower dirs; writes land in a size-capped tmpfs), a
//! minimal `/dev` on a tmpfs whose nodes init makes with `mknodat` as host
//! root, before it enters the user namespace (which may not make device
//! nodes), and no host paths but the function's own secrets, bound
//! read-only, when it asks for some.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::container::cgroup::CgroupLimits;
use crate::container::users::Ids;
use crate::image::ImageConfig;
use crate::protocol::Protocol;
use crate::spec::SECRETS_PATH;

/// Port a `http` handler listens on inside its network namespace.
pub const DEFAULT_PORT: u16 = 8080;
/// Default size cap of a sandbox's writable layer (the overlay upper tmpfs).
pub const DEFAULT_SCRATCH_BYTES: u64 = 64 * 1024 * 1024;
/// Default process limit of a sandbox.
pub const DEFAULT_PIDS: u64 = 128;
/// `PATH` when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the function asks for, beyond its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSettings {
    /// Function name; becomes the hostname.
    pub name: String,
    /// Replaces the image's Entrypoint + Cmd when non-empty.
    pub command: Vec<String>,
    /// `NAME=value` pairs added to (and overriding) the image's.
    pub env: Vec<(String, String)>,
    pub protocol: Protocol,
    /// Port an `http` handler listens on (`$PORT`).
    pub port: u16,
    pub memory_bytes: u64,
    /// Thousandths of a CPU; `None` = no cap.
    pub cpu_millis: Option<u32>,
    pub pids: u64,
    pub scratch_bytes: u64,
    /// The host directory of the function's secrets, bound read-only at
    /// [`SECRETS_PATH`]: the one host path a sandbox may see, and only when
    /// the function asks for secrets.
    pub secrets: Option<PathBuf>,
}

/// Operator settings: where the container's root maps to on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// Host uid that container uid 0 maps to.
    pub host_uid: u32,
    /// Host gid that container gid 0 maps to.
    pub host_gid: u32,
    /// How many ids are mapped (container ids `0..size`).
    pub size: u32,
}

impl Default for IdMap {
    fn default() -> Self {
        // The range rootless podman conventionally gives its first user.
        IdMap {
            host_uid: 100_000,
            host_gid: 100_000,
            size: 65_536,
        }
    }
}

/// The namespaces a sandbox gets (all of them: the fields exist so that
/// tests and a later `--network host`-like option can see the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub user: bool,
    pub mount: bool,
    pub pid: bool,
    pub net: bool,
    pub uts: bool,
    pub ipc: bool,
    pub cgroup: bool,
}

/// One mount, inside the new root, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Host path for bind mounts, or the filesystem's source name.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    pub fstype: Option<String>,
    pub bind: bool,
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    /// Filesystem options, e.g. `size=…,mode=…`.
    pub data: String,
}

/// The root filesystem: the image's layers under an overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// Lower dirs, top layer first (overlayfs `lowerdir=` order).
    pub lower: Vec<PathBuf>,
    /// Size cap of the tmpfs holding the overlay's upper and work dirs.
    pub scratch_bytes: u64,
}

/// The handler process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub argv: Vec<String>,
    /// `NAME=value`, sorted by name, unique.
    pub env: Vec<String>,
    pub cwd: String,
    /// Container uid and gid the handler runs as.
    pub uid: u32,
    pub gid: u32,
}

/// Everything needed to build one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPlan {
    pub hostname: String,
    pub namespaces: Namespaces,
    pub id_map: IdMap,
    pub rootfs: Rootfs,
    /// After the overlay is the new root, before `pivot_root`'s old root goes.
    pub mounts: Vec<Mount>,
    /// Host device nodes bind-mounted into `/dev`.
    pub devices: Vec<String>,
    pub process: Process,
    pub protocol: Protocol,
    /// Port an `http` handler listens on inside the sandbox.
    pub port: u16,
    pub cgroup: CgroupLimits,
    pub no_new_privs: bool,
    /// Capabilities kept (none).
    pub capabilities: Vec<String>,
}

/// What of a plan makes a sandbox's filesystems: the root filesystem, the
/// mounts inside it and the device nodes, owned per `id_map`. A pre-made
/// sandbox may mount these before its function is known, unless they
/// [bind host directories](Filesystems::bind_host_dirs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystems {
    pub id_map: IdMap,
    pub rootfs: Rootfs,
    pub mounts: Vec<Mount>,
    pub devices: Vec<String>,
}

impl SandboxPlan {
    /// Its filesystems.
    pub fn filesystems(&self) -> Filesystems {
        Filesystems {
            id_map: self.id_map,
            rootfs: self.rootfs.clone(),
            mounts: self.mounts.clone(),
            devices: self.devices.clone(),
        }
    }

    /// Whether a sandbox with `fs` mounted is what this plan asks for.
    pub fn has_filesystems(&self, fs: &Filesystems) -> bool {
        self.id_map == fs.id_map
            && self.rootfs == fs.rootfs
            && self.mounts == fs.mounts
            && self.devices == fs.devices
    }
}

impl Filesystems {
    /// Whether they bind a host directory in (a function's secrets): such
    /// filesystems are mounted only for their function, never ahead.
    pub fn bind_host_dirs(&self) -> bool {
        self.mounts.iter().any(|m| m.bind)
    }
}

/// Why a sandbox cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("function {function}: the image has no Entrypoint or Cmd and none was given")]
    NoCommand { function: String },
    #[error("function {function}: the image has no layers")]
    NoLayers { function: String },
    #[error("function {function}: working directory {dir:?} is not an absolute path")]
    WorkingDir { function: String, dir: String },
}

/// Plans a sandbox for a function with `settings`, running `image` whose
/// unpacked layers are `layers` (bottom first, as the image lists them) as
/// `ids`, the image's `User` resolved in the image
/// ([`crate::container::users::resolve`]).
pub fn plan(
    settings: &ContainerSettings,
    image: &ImageConfig,
    layers: &[PathBuf],
    id_map: IdMap,
    ids: Ids,
) -> Result<SandboxPlan, PlanError> {
    let function = settings.name.clone();
    if layers.is_empty() {
        return Err(PlanError::NoLayers { function });
    }
    let argv = if settings.command.is_empty() {
        image
            .entrypoint
            .iter()
            .chain(&image.cmd)
            .cloned()
            .collect::<Vec<_>>()
    } else {
        settings.command.clone()
    };
    if argv.is_empty() {
        return Err(PlanError::NoCommand { function });
    }
    let cwd = match image.working_dir.as_deref() {
        None | Some("") => "/".to_owned(),
        Some(dir) if dir.starts_with('/') => dir.to_owned(),
        Some(dir) => {
            return Err(PlanError::WorkingDir {
                function,
                dir: dir.to_owned(),
            });
        }
    };
    let Ids { uid, gid } = ids;

    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| match env.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_owned(),
        None => env.push((name.to_owned(), value.to_owned())),
    };
    set("PATH", DEFAULT_PATH);
    set("HOSTNAME", &settings.name);
    set("HOME", if uid == 0 { "/root" } else { "/" });
    if settings.protocol == Protocol::Lambda {
        let handler = image.cmd.join(" ");
        for (name, value) in
            crate::protocol::lambda::environment(&settings.name, settings.memory_bytes, &handler)
        {
            set(name, &value);
        }
    }
    for entry in &image.env {
        if let Some((name, value)) = entry.split_once('=') {
            set(name, value);
        }
    }
    for (name, value) in &settings.env {
        set(name, value);
    }
    if settings.protocol == Protocol::Http {
        set("PORT", &settings.port.to_string());
    }
    env.sort();
    let env = env.into_iter().map(|(n, v)| format!("{n}={v}")).collect();

    Ok(SandboxPlan {
        hostname: settings.name.clone(),
        namespaces: Namespaces {
            user: true,
            mount: true,
            pid: true,
            net: true,
            uts: true,
            ipc: true,
            cgroup: true,
        },
        id_map,
        rootfs: Rootfs {
            lower: layers.iter().rev().cloned().collect(),
            scratch_bytes: settings.scratch_bytes,
        },
        mounts: standard_mounts()
            .into_iter()
            .chain(settings.secrets.as_ref().map(|dir| secrets_mount(dir)))
            .collect(),
        devices: standard_devices(),
        process: Process {
            argv,
            env,
            cwd,
            uid,
            gid,
        },
        protocol: settings.protocol,
        port: settings.port,
        cgroup: CgroupLimits {
            memory_bytes: settings.memory_bytes,
            cpu_millis: settings.cpu_millis,
            pids: settings.pids,
        },
        no_new_privs: true,
        capabilities: Vec::new(),
    })
}

/// The function's secrets directory, bound read-only (and inert: no
/// set-uid, no devices, no execution) at [`SECRETS_PATH`].
fn secrets_mount(dir: &std::path::Path) -> Mount {
    Mount {
        source: dir.to_string_lossy().into_owned(),
        target: SECRETS_PATH.to_owned(),
        fstype: None,
        bind: true,
        read_only: true,
        nosuid: true,
        nodev: true,
        noexec: true,
        data: String::new(),
    }
}

/// The device nodes of every container's `/dev`.
pub(crate) fn standard_devices() -> Vec<String> {
    ["null", "zero", "full", "random", "urandom", "tty"]
        .map(String::from)
        .to_vec()
}

/// `/proc`, a minimal `/dev` (tmpfs + pts + shm) and a writable `/tmp`.
pub(crate) fn standard_mounts() -> Vec<Mount> {
    let fs = |source: &str, target: &str, fstype: &str, data: &str| Mount {
        source: source.to_owned(),
        target: target.to_owned(),
        fstype: Some(fstype.to_owned()),
        bind: false,
        read_only: false,
        nosuid: true,
        nodev: true,
        noexec: false,
        data: data.to_owned(),
    };
    vec![
        Mount {
            noexec: true,
            ..fs("proc", "/proc", "proc", "")
        },
        // /dev is a tmpfs so the device binds need no host path beyond the
        // nodes themselves; nodev does not apply to it (the binds carry the
        // host nodes' own flags).
        Mount {
            nodev: false,
            noexec: true,
            ..fs("tmpfs", "/dev", "tmpfs", "mode=755,size=65536k")
        },
        Mount {
            noexec: true,
            ..fs(
                "devpts",
                "/dev/pts",
                "devpts",
                "newinstance,ptmxmode=0666,mode=620",
            )
        },
        Mount {
            noexec: true,
            ..fs("shm", "/dev/shm", "tmpfs", "mode=1777,size=65536k")
        },
        fs("tmpfs", "/tmp", "tmpfs", "mode=1777,size=65536k"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ContainerSettings {
        ContainerSettings {
            name: "ping".into(),
            command: vec![],
            env: vec![
                ("GREETING".into(), "hi".into()),
                ("PATH".into(), "/custom".into()),
            ],
            protocol: Protocol::Http,
            port: DEFAULT_PORT,
            memory_bytes: 64 << 20,
            cpu_millis: Some(500),
            pids: DEFAULT_PIDS,
            scratch_bytes: DEFAULT_SCRATCH_BYTES,
            secrets: None,
        }
    }

    fn root() -> Ids {
        Ids::default()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/ping".into()],
            cmd: vec!["--verbose".into()],
            env: vec!["A=1".into(), "GREETING=from-image".into()],
            working_dir: Some("/srv".into()),
            user: None,
            exposed_ports: vec![8080],
        }
    }

    #[test]
    fn ping_gets_every_namespace_no_privileges_and_its_command() {
        let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let plan = plan(&settings(), &image(), &layers, IdMap::default(), root()).unwrap();
        assert_eq!(plan.hostname, "ping");
        let ns = plan.namespaces;
        assert!(ns.user && ns.mount && ns.pid && ns.net && ns.uts && ns.ipc && ns.cgroup);
        assert!(plan.capabilities.is_empty() && plan.no_new_privs);
        assert_eq!(
            plan.rootfs.lower,
            vec![PathBuf::from("/l/top"), PathBuf::from("/l/bottom")]
        );
        assert_eq!(plan.process.argv, ["/ping", "--verbose"]);
        assert_eq!(plan.process.cwd, "/srv");
        assert_eq!((plan.process.uid, plan.process.gid), (0, 0));
        assert_eq!(
            plan.process.env,
            [
                "A=1",
                "GREETING=hi",
                "HOME=/root",
                "HOSTNAME=ping",
                "PATH=/custom",
                "PORT=8080"
            ]
        );
        assert_eq!(plan.cgroup.memory_bytes, 64 << 20);
        let targets: Vec<_> = plan.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/tmp"]);
        assert!(
            plan.mounts.iter().all(|m| m.nosuid && !m.bind),
            "no host paths are mounted"
        );
        assert!(
            plan.devices.iter().any(|d| d == "null")
                && !plan.devices.iter().any(|d| d.contains('/'))
        );
    }

    #[test]
    fn command_overrides_and_cgi_has_no_port() {
        let s = ContainerSettings {
            command: vec!["/bin/sh".into(), "-c".into(), "echo".into()],
            protocol: Protocol::Cgi,
            port: DEFAULT_PORT,
            ..settings()
        };
        let plan = plan(
            &s,
            &image(),
            &[PathBuf::from("/l")],
            IdMap::default(),
            root(),
        )
        .unwrap();
        assert_eq!(plan.process.argv, ["/bin/sh", "-c", "echo"]);
        assert!(!plan.process.env.iter().any(|e| e.starts_with("PORT=")));
    }

    #[test]
    fn refusals_name_the_function_and_the_problem() {
        let empty = ImageConfig::default();
        let err = plan(
            &settings(),
            &empty,
            &[PathBuf::from("/l")],
            IdMap::default(),
            root(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::NoCommand {
                function: "ping".into()
            }
        );
        assert!(matches!(
            plan(&settings(), &image(), &[], IdMap::default(), root()),
            Err(PlanError::NoLayers { .. })
        ));
        let relative = ImageConfig {
            working_dir: Some("srv".into()),
            ..image()
        };
        assert!(matches!(
            plan(
                &settings(),
                &relative,
                &[PathBuf::from("/l")],
                IdMap::default(),
                root()
            ),
            Err(PlanError::WorkingDir { .. })
        ));
    }

    #[test]
    fn secrets_are_the_one_host_path_and_only_when_asked_for() {
        let s = ContainerSettings {
            secrets: Some(PathBuf::from("/data/run/secrets/ping.1")),
            ..settings()
        };
        let plan = plan(
            &s,
            &image(),
            &[PathBuf::from("/l")],
            IdMap::default(),
            root(),
        )
        .unwrap();
        let binds: Vec<_> = plan.mounts.iter().filter(|m| m.bind).collect();
        assert_eq!(binds.len(), 1);
        let secrets = binds[0];
        assert_eq!(secrets.source, "/data/run/secrets/ping.1");
        assert_eq!(secrets.target, "/var/openfaas/secrets");
        assert!(secrets.read_only && secrets.nosuid && secrets.nodev && secrets.noexec);
        assert_eq!(&plan.mounts[..standard_mounts().len()], standard_mounts());
    }

    /// What may be mounted ahead holds nothing of a function's own, is
    /// the same for two functions of one image, and never binds secrets.
    #[test]
    fn filesystems_are_the_images_and_never_a_functions_secrets() {
        let layers = [PathBuf::from("/l")];
        let plan_of = |s: &ContainerSettings| plan(s, &image(), &layers, IdMap::default(), root());
        let first = plan_of(&settings()).unwrap();
        let other = ContainerSettings {
            name: "other".into(),
            env: vec![("TOKEN".into(), "s3cret".into())],
            ..settings()
        };
        let second = plan_of(&other).unwrap();
        let fs = first.filesystems();
        assert!(!fs.bind_host_dirs());
        assert_eq!(fs, second.filesystems());
        assert!(second.has_filesystems(&fs));
        assert!(!format!("{fs:?}").contains("s3cret"));
        let with_secrets = plan_of(&ContainerSettings {
            secrets: Some(PathBuf::from("/data/run/secrets/ping.1")),
            ..settings()
        })
        .unwrap();
        assert!(with_secrets.filesystems().bind_host_dirs());
        assert!(!with_secrets.has_filesystems(&fs));
    }

    #[test]
    fn the_handler_runs_as_the_resolved_ids() {
        let ids = Ids { uid: 1000, gid: 50 };
        let plan = plan(
            &settings(),
            &image(),
            &[PathBuf::from("/l")],
            IdMap::default(),
            ids,
        )
        .unwrap();
        assert_eq!((plan.process.uid, plan.process.gid), (1000, 50));
        assert!(plan.process.env.contains(&"HOME=/".to_owned()));
    }
}
