//! cgroup limits for sandboxes — memory, CPU and pids — on cgroup v2
//! (one unified hierarchy) and v1 (one hierarchy per controller, as on hybrid
//! hosts where only an empty v2 tree is mounted) alike, by writing cgroupfs
//! directly.
//!
//! Plan, then act: [`Layout::from_mountinfo`] and [`limit_writes`] are pure
//! (unit-tested without root); [`Cgroups`] carries them out through the
//! [`CgroupFs`] trait, whose real implementation is `std::fs` on cgroupfs and
//! whose test double records what would be written.
//!
//! Where sandboxes go: `<hierarchy>/<wisp's own cgroup>/wisp/<name>`, i.e.
//! nested under the cgroup wisp itself runs in, so the host's accounting of
//! wisp (a systemd unit, a container) covers its sandboxes too. On v2 a
//! cgroup's children get only the controllers it enables in its
//! `cgroup.subtree_control`, so wisp enables memory, cpu and pids in its
//! own cgroup and in its `wisp` directory. The kernel's "no internal
//! processes" rule allows that in a cgroup other than the root only while
//! it holds no process: in a delegated cgroup (a systemd unit with
//! `Delegate=yes`, a container's cgroup namespace) wisp first moves itself
//! and its spawner into the leaf `wisp-server` beside `wisp`; a cgroup
//! shared with other processes (a login session's scope) is refused with
//! that reason. Limits: no I/O limits; CPU is a CFS quota, not shares. A
//! sandbox made ahead waits in a cgroup marked idle (`cpu.idle`,
//! [`Cgroups::set_idle`]), cleared when a function takes it.
//!
//! A sandbox's cgroup outlives it: once empty it is kept, its limits
//! lifted, for the next sandbox ([`Cgroups::keep`],
//! [`Cgroups::take_unlimited`]; docs/architecture.md, "Cgroups are
//! reused").

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Default CFS period: 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// On v2, the leaf of wisp's own cgroup that wisp moves its processes to
/// when that cgroup must enable controllers for the sandboxes.
pub const SERVER_LEAF: &str = "wisp-server";

/// The limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupLimits {
    /// Memory cap (no swap beyond it).
    pub memory_bytes: u64,
    /// CPU cap in thousandths of a CPU (1000 = one full CPU); `None` = no cap.
    pub cpu_millis: Option<u32>,
    /// Most processes and threads at once.
    pub pids: u64,
}

/// What wisp writes to a v2 `cgroup.subtree_control`.
const V2_ENABLE: &str = "+memory +cpu +pids";

/// A cgroup controller wisp uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// How the host mounts cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy with every controller wisp needs.
    V2 { mount: PathBuf },
    /// A hierarchy per controller.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid cgroup name {0:?}")]
    InvalidName(String),
    /// v2: the parent of wisp's cgroup does not enable these controllers
    /// for it, so wisp cannot enable them for its sandboxes.
    #[error(
        "cgroup {} does not offer the {} controller(s) that wisp's sandboxes need: its parent must enable them for it (as systemd does for a unit with Delegate=yes)",
        cgroup.display(),
        missing.join(", ")
    )]
    NotDelegated {
        cgroup: PathBuf,
        missing: Vec<&'static str>,
    },
    /// v2: wisp's cgroup holds other processes, so it cannot enable
    /// controllers for its children (the "no internal processes" rule).
    #[error(
        "cgroup {} holds processes other than wisp's ({others:?}), so it cannot enable controllers for wisp's sandboxes: run wisp in a cgroup of its own (a systemd unit with Delegate=yes)",
        cgroup.display()
    )]
    Shared { cgroup: PathBuf, others: Vec<u32> },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Layout {
    /// Reads the host's layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Layout, CgroupError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err(Path::new("/proc/self/mountinfo")))?;
        Layout::from_mountinfo(&mountinfo, |mount| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// Picks the layout from mountinfo text. A v2 mount is used when its
    /// `cgroup.controllers` (read with `controllers`) offers memory, cpu and
    /// pids; otherwise the v1 hierarchies of those controllers.
    pub fn from_mountinfo(
        mountinfo: &str,
        controllers: impl Fn(&Path) -> String,
    ) -> Result<Layout, CgroupError> {
        let mut v1 = [None, None, None];
        for Mounted {
            mount,
            fstype,
            options,
        } in mounts(mountinfo)
        {
            match fstype {
                "cgroup2" => {
                    let offered = controllers(&mount);
                    let offered: Vec<&str> = offered.split_whitespace().collect();
                    if Controller::ALL.iter().all(|c| offered.contains(&c.name())) {
                        return Ok(Layout::V2 { mount });
                    }
                }
                "cgroup" => {
                    for (i, c) in Controller::ALL.iter().enumerate() {
                        if options.split(',').any(|o| o == c.name()) {
                            v1[i] = Some(mount.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        match v1 {
            [Some(memory), Some(cpu), Some(pids)] => Ok(Layout::V1 { memory, cpu, pids }),
            _ => Err(CgroupError::NoHierarchy(
                "neither a cgroup2 mount with the memory, cpu and pids controllers nor v1 hierarchies for all three are mounted".into(),
            )),
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }
}

/// One line of `/proc/self/mountinfo`: where, what, and the filesystem's
/// own (superblock) options.
pub(crate) struct Mounted<'a> {
    pub(crate) mount: PathBuf,
    pub(crate) fstype: &'a str,
    pub(crate) options: &'a str,
}

/// The mounts `mountinfo` lists, in its order; malformed lines skipped.
pub(crate) fn mounts(mountinfo: &str) -> impl Iterator<Item = Mounted<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or("");
        let options = right.nth(1).unwrap_or("");
        Some(Mounted {
            mount: PathBuf::from(unescape_mountinfo(mount)),
            fstype,
            options,
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The files to write for `limits`, per controller, in order.
pub fn limit_writes(v2: bool, limits: &CgroupLimits) -> Vec<(Controller, &'static str, String)> {
    let memory = limits.memory_bytes.to_string();
    let cpu = limits
        .cpu_millis
        .map(|m| u64::from(m) * CPU_PERIOD_US / 1000);
    let pids = limits.pids.to_string();
    if v2 {
        vec![
            (Controller::Memory, "memory.max", memory),
            (Controller::Memory, "memory.swap.max", "0".into()),
            (
                Controller::Cpu,
                "cpu.max",
                match cpu {
                    Some(quota) => format!("{quota} {CPU_PERIOD_US}"),
                    None => format!("max {CPU_PERIOD_US}"),
                },
            ),
            (Controller::Pids, "pids.max", pids),
        ]
    } else {
        vec![
            (Controller::Memory, "memory.limit_in_bytes", memory.clone()),
            // Memory + swap at the same cap: no swap. Absent without swap accounting.
            (Controller::Memory, "memory.memsw.limit_in_bytes", memory),
            (
                Controller::Cpu,
                "cpu.cfs_period_us",
                CPU_PERIOD_US.to_string(),
            ),
            (
                Controller::Cpu,
                "cpu.cfs_quota_us",
                cpu.map_or_else(|| "-1".to_owned(), |q| q.to_string()),
            ),
            (Controller::Pids, "pids.max", pids),
        ]
    }
}

/// What lifts every limit [`limit_writes`] sets, in an order the kernel
/// accepts (on v1 memory + swap is raised before memory, which may not
/// exceed it).
pub fn lift_writes(v2: bool) -> Vec<(Controller, &'static str, &'static str)> {
    if v2 {
        vec![
            (Controller::Memory, "memory.max", "max"),
            (Controller::Memory, "memory.swap.max", "max"),
            (Controller::Cpu, "cpu.max", "max"),
            (Controller::Pids, "pids.max", "max"),
        ]
    } else {
        vec![
            (Controller::Memory, "memory.memsw.limit_in_bytes", "-1"),
            (Controller::Memory, "memory.limit_in_bytes", "-1"),
            (Controller::Cpu, "cpu.cfs_quota_us", "-1"),
            (Controller::Pids, "pids.max", "max"),
        ]
    }
}

/// Files absent when the kernel has no swap accounting.
fn optional(file: &str) -> bool {
    file == "memory.memsw.limit_in_bytes" || file == "memory.swap.max"
}

/// The file operations cgroup management needs.
pub trait CgroupFs: Send + Sync {
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<String>;
    fn exists(&self, path: &Path) -> bool;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn list_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
}

/// cgroupfs through `std::fs`.
pub struct RealFs;

impl CgroupFs for RealFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn list_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        Ok(dirs)
    }
}

/// wisp's cgroups: the parent directory in each hierarchy and the sandboxes below it.
pub struct Cgroups {
    layout: Layout,
    /// `wisp`'s directory per hierarchy (one entry on v2).
    parents: Vec<(Option<Controller>, PathBuf)>,
    fs: Box<dyn CgroupFs>,
    /// Emptied sandbox cgroups waiting for the next sandbox.
    kept: Mutex<Kept>,
    /// Whether the kernel has `cpu.idle` (Linux 5.15+), as wisp's own
    /// directory shows: [`Cgroups::set_idle`] does nothing without it.
    cpu_idle: bool,
}

/// Emptied cgroups kept for reuse ([`Cgroups::keep`]).
struct Kept {
    /// How many at most; 0 after [`Cgroups::stop_keeping`].
    max: usize,
    cgroups: Vec<Cgroup>,
}

/// How many emptied cgroups are kept at most, by default
/// ([`Cgroups::keep_at_most`]).
pub const KEPT_CGROUPS: usize = 32;

/// An emptied cgroup still charged more memory than this (page cache its
/// last sandbox read stays charged to it) is removed rather than kept: the
/// next function's memory limit would first have to reclaim it.
pub const KEPT_MAX_CHARGE: u64 = 16 << 20;

/// One sandbox's cgroup (a directory per hierarchy), and the CPU cap wisp
/// left in it.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<(Option<Controller>, PathBuf)>,
    /// The CPU cap in effect as wisp last wrote it (in thousandths of a
    /// CPU; `Some(None)`: no cap); `None` for a new cgroup, whose first
    /// limits are all written. The same cap is not written again: every
    /// write of a CPU cap makes the kernel check every task group on the
    /// host (`tg_set_cfs_bandwidth`), a cost that grows with the cgroups
    /// the host has — with every running sandbox.
    cpu_millis: Option<Option<u32>>,
    /// Whether wisp last marked it idle ([`Cgroups::set_idle`]); a new
    /// cgroup is not.
    idle: bool,
}

/// The same cgroup: the same directories, whatever limits it has.
impl PartialEq for Cgroup {
    fn eq(&self, other: &Cgroup) -> bool {
        self.dirs == other.dirs
    }
}

impl Eq for Cgroup {}

/// A kept cgroup keeps a CPU cap of at least the default one (one CPU) for
/// the next sandbox, whose set-up runs under it until the next function's
/// limits are written; a smaller cap is lifted, so that a sandbox made
/// ahead never sets up at a trickle.
const KEPT_MIN_CPU_MILLIS: u32 = crate::spec::DEFAULT_CPU_MILLIS;

impl Cgroups {
    /// Uses `layout`, with wisp's directory `wisp` below the cgroup this
    /// process runs in (read from `/proc/self/cgroup`). `ours` are the
    /// server's processes (itself, its spawner), which on v2 may be moved
    /// to a leaf of that cgroup (see the module's documentation).
    pub fn new(
        layout: Layout,
        fs: Box<dyn CgroupFs>,
        ours: &[u32],
    ) -> Result<Cgroups, CgroupError> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io_err(Path::new("/proc/self/cgroup")))?;
        Cgroups::with_own_cgroups(layout, fs, &own, ours)
    }

    /// As [`Cgroups::new`], with the text of `/proc/self/cgroup` given.
    pub fn with_own_cgroups(
        layout: Layout,
        fs: Box<dyn CgroupFs>,
        proc_self_cgroup: &str,
        ours: &[u32],
    ) -> Result<Cgroups, CgroupError> {
        let own = |controller: Option<Controller>| -> PathBuf {
            // Lines are `id:controllers:path`; v2 is `0::path`.
            let path = proc_self_cgroup.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                let matches = match controller {
                    None => names.is_empty(),
                    Some(c) => names.split(',').any(|n| n == c.name()),
                };
                matches.then(|| path.trim_start_matches('/').to_owned())
            });
            PathBuf::from(path.unwrap_or_default())
        };
        let parents = match &layout {
            Layout::V2 { mount } => vec![(None, mount.join(own(None)).join("wisp"))],
            Layout::V1 { memory, cpu, pids } => vec![
                (
                    Some(Controller::Memory),
                    memory.join(own(Some(Controller::Memory))).join("wisp"),
                ),
                (
                    Some(Controller::Cpu),
                    cpu.join(own(Some(Controller::Cpu))).join("wisp"),
                ),
                (
                    Some(Controller::Pids),
                    pids.join(own(Some(Controller::Pids))).join("wisp"),
                ),
            ],
        };
        let mut cgroups = Cgroups {
            layout,
            parents,
            fs,
            kept: Mutex::new(Kept {
                max: KEPT_CGROUPS,
                cgroups: Vec::new(),
            }),
            cpu_idle: false,
        };
        if let Layout::V2 { mount } = &cgroups.layout {
            cgroups.enable_for_children(&mount.join(own(None)), ours)?;
        }
        for (_, parent) in &cgroups.parents {
            cgroups.fs.create_dir(parent).map_err(io_err(parent))?;
        }
        if cgroups.layout.is_v2() {
            for (_, parent) in &cgroups.parents {
                let control = parent.join("cgroup.subtree_control");
                cgroups
                    .fs
                    .write(&control, V2_ENABLE)
                    .map_err(io_err(&control))?;
            }
        }
        cgroups.cpu_idle = cgroups
            .fs
            .exists(&dir_of(&cgroups.parents, Controller::Cpu).join("cpu.idle"));
        Ok(cgroups)
    }

    /// v2: makes `own` (wisp's cgroup) enable memory, cpu and pids for its
    /// children. The root cgroup may hold processes and do so; any other
    /// refuses (`EBUSY`) while it holds one, so wisp then moves `ours` into
    /// the leaf [`SERVER_LEAF`], if they are all `own` holds.
    fn enable_for_children(&self, own: &Path, ours: &[u32]) -> Result<(), CgroupError> {
        let names = Controller::ALL.map(Controller::name);
        let control = own.join("cgroup.subtree_control");
        let enabled = self.fs.read(&control).map_err(io_err(&control))?;
        if names
            .iter()
            .all(|n| enabled.split_whitespace().any(|e| e == *n))
        {
            return Ok(());
        }
        let offered_path = own.join("cgroup.controllers");
        let offered = self.fs.read(&offered_path).map_err(io_err(&offered_path))?;
        let missing: Vec<&'static str> = names
            .into_iter()
            .filter(|n| !offered.split_whitespace().any(|o| o == *n))
            .collect();
        if !missing.is_empty() {
            return Err(CgroupError::NotDelegated {
                cgroup: own.to_owned(),
                missing,
            });
        }
        match self.fs.write(&control, V2_ENABLE) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {}
            Err(e) => return Err(io_err(&control)(e)),
        }
        let procs_path = own.join("cgroup.procs");
        let procs = self.fs.read(&procs_path).map_err(io_err(&procs_path))?;
        let procs: Vec<u32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let others: Vec<u32> = procs
            .iter()
            .copied()
            .filter(|p| !ours.contains(p))
            .collect();
        if !others.is_empty() {
            return Err(CgroupError::Shared {
                cgroup: own.to_owned(),
                others,
            });
        }
        let leaf = own.join(SERVER_LEAF);
        self.fs.create_dir(&leaf).map_err(io_err(&leaf))?;
        let leaf_procs = leaf.join("cgroup.procs");
        for pid in procs {
            self.fs
                .write(&leaf_procs, &pid.to_string())
                .map_err(io_err(&leaf_procs))?;
        }
        self.fs.write(&control, V2_ENABLE).map_err(io_err(&control))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// `wisp`'s directory in each hierarchy: every sandbox cgroup is in
    /// one of these.
    pub fn parent_dirs(&self) -> impl Iterator<Item = &Path> {
        self.parents.iter().map(|(_, dir)| dir.as_path())
    }

    /// Makes the cgroup `name` with `limits`.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        let mut cgroup = self.create_unlimited(name)?;
        if let Err(e) = self.apply_limits(&mut cgroup, limits) {
            let _ = self.remove(&cgroup);
            return Err(e);
        }
        Ok(cgroup)
    }

    /// Makes the cgroup `name` without limits (they come later, with
    /// [`Cgroups::apply_limits`]: a pre-made sandbox learns its function's
    /// limits only when it is given one).
    pub fn create_unlimited(&self, name: &str) -> Result<Cgroup, CgroupError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(CgroupError::InvalidName(name.to_owned()));
        }
        let cgroup = Cgroup {
            dirs: self
                .parents
                .iter()
                .map(|(c, parent)| (*c, parent.join(name)))
                .collect(),
            cpu_millis: None,
            idle: false,
        };
        for (_, dir) in &cgroup.dirs {
            self.fs.create_dir(dir).map_err(io_err(dir))?;
        }
        Ok(cgroup)
    }

    /// A cgroup for a new sandbox, without limits: an emptied one kept by
    /// [`Cgroups::keep`] if there is one (it keeps its name), else the new
    /// cgroup `name`. `true` when it was kept.
    pub fn take_unlimited(&self, name: &str) -> Result<(Cgroup, bool), CgroupError> {
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cgroups
            .pop();
        match kept {
            Some(cgroup) => Ok((cgroup, true)),
            None => self.create_unlimited(name).map(|c| (c, false)),
        }
    }

    /// Keeps `cgroup`, which no process is in any more, for the next
    /// sandbox instead of removing it: making and removing a cgroup costs
    /// ~0.1 ms per hierarchy each way, and the kernel's teardown of a
    /// removed one more in a worker. Its limits are lifted to none (as a
    /// new cgroup's) but a CPU cap of `KEPT_MIN_CPU_MILLIS` or more,
    /// which the next sandbox's function likely has too (see
    /// `Cgroup::cpu_millis`); what carries over is described in
    /// `docs/architecture.md` ("Cgroups are reused"). Gives it back when it
    /// is not kept — as many as [`Cgroups::keep_at_most`] allows are kept,
    /// it is charged more than [`KEPT_MAX_CHARGE`], or a write failed — for
    /// the caller to remove.
    pub fn keep(&self, mut cgroup: Cgroup) -> Result<(), Cgroup> {
        let room = |kept: &Kept| kept.cgroups.len() < kept.max;
        if !room(&self.kept.lock().unwrap_or_else(PoisonError::into_inner)) {
            return Err(cgroup);
        }
        if self
            .memory_charge(&cgroup)
            .is_none_or(|bytes| bytes > KEPT_MAX_CHARGE)
        {
            return Err(cgroup);
        }
        let keep_cpu =
            matches!(cgroup.cpu_millis, Some(Some(millis)) if millis >= KEPT_MIN_CPU_MILLIS);
        for (controller, file, value) in lift_writes(self.layout.is_v2()) {
            if controller == Controller::Cpu && keep_cpu {
                continue;
            }
            let path = cgroup.dir(controller).join(file);
            if optional(file) && !self.fs.exists(&path) {
                continue;
            }
            if self.fs.write(&path, value).is_err() {
                return Err(cgroup);
            }
        }
        if !keep_cpu {
            cgroup.cpu_millis = Some(None);
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if !room(&kept) {
            return Err(cgroup);
        }
        kept.cgroups.push(cgroup);
        Ok(())
    }

    /// Keeps at most `max` emptied cgroups ([`KEPT_CGROUPS`] unless told
    /// otherwise; 0: none, every cgroup is removed with its sandbox).
    pub fn keep_at_most(&self, max: usize) {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).max = max;
    }

    /// Keeps no more cgroups and removes the kept ones (at shutdown).
    pub fn stop_keeping(&self) {
        let kept = {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            kept.max = 0;
            std::mem::take(&mut kept.cgroups)
        };
        for cgroup in kept {
            if let Err(e) = self.remove(&cgroup) {
                tracing::warn!(error = %e, "a kept sandbox cgroup could not be removed");
            }
        }
    }

    /// The memory charged to the cgroup, in bytes.
    fn memory_charge(&self, cgroup: &Cgroup) -> Option<u64> {
        let file = if self.layout.is_v2() {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        let text = self
            .fs
            .read(&cgroup.dir(Controller::Memory).join(file))
            .ok()?;
        text.trim().parse().ok()
    }

    /// Writes `limits` into the cgroup.
    pub fn apply_limits(
        &self,
        cgroup: &mut Cgroup,
        limits: &CgroupLimits,
    ) -> Result<(), CgroupError> {
        let same_cpu = cgroup.cpu_millis == Some(limits.cpu_millis);
        // Unknown until the writes below succeed.
        cgroup.cpu_millis = None;
        for (controller, file, value) in limit_writes(self.layout.is_v2(), limits) {
            if controller == Controller::Cpu && same_cpu {
                continue;
            }
            let dir = cgroup.dir(controller);
            let path = dir.join(file);
            if optional(file) && !self.fs.exists(&path) {
                continue;
            }
            self.fs.write(&path, &value).map_err(io_err(&path))?;
        }
        cgroup.cpu_millis = Some(limits.cpu_millis);
        Ok(())
    }

    /// Marks the cgroup idle, or not (`cpu.idle`; nothing on a kernel
    /// without it). The scheduler weighs a cgroup's tasks against the rest
    /// of the host as one entity, whatever their own policies: a pre-made
    /// sandbox's init at `SCHED_IDLE` still took a CPU from a cold start's
    /// steps as a full nice-0 entity, so its cgroup is idle while it is
    /// made and waits, and any other task's wake-up preempts it (issue 13).
    /// A sandbox's cgroup stops being idle when it is taken for a function.
    pub fn set_idle(&self, cgroup: &mut Cgroup, idle: bool) -> Result<(), CgroupError> {
        if !self.cpu_idle || cgroup.idle == idle {
            return Ok(());
        }
        let path = cgroup.dir(Controller::Cpu).join("cpu.idle");
        self.fs
            .write(&path, if idle { "1" } else { "0" })
            .map_err(io_err(&path))?;
        cgroup.idle = idle;
        Ok(())
    }

    /// Moves process `pid` into the cgroup (in every hierarchy).
    pub fn add_process(&self, cgroup: &Cgroup, pid: u32) -> Result<(), CgroupError> {
        for (_, dir) in &cgroup.dirs {
            let procs = dir.join("cgroup.procs");
            self.fs
                .write(&procs, &pid.to_string())
                .map_err(io_err(&procs))?;
        }
        Ok(())
    }

    /// The processes in the cgroup.
    pub fn processes(&self, cgroup: &Cgroup) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        for (_, dir) in &cgroup.dirs {
            let procs = dir.join("cgroup.procs");
            match self.fs.read(&procs) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&procs)(e)),
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Whether the kernel's OOM killer has killed a process of the cgroup.
    pub fn oom_killed(&self, cgroup: &Cgroup) -> Result<bool, CgroupError> {
        Ok(self.oom_kills(cgroup)? > 0)
    }

    /// How many processes of the cgroup the kernel's OOM killer has killed.
    pub fn oom_kills(&self, cgroup: &Cgroup) -> Result<u64, CgroupError> {
        let dir = cgroup.dir(Controller::Memory);
        let file = if self.layout.is_v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let path = dir.join(file);
        let text = self.fs.read(&path).map_err(io_err(&path))?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0))
    }

    /// Removes the cgroup's directories. Its processes must be gone
    /// (the kernel refuses to remove a cgroup with members: `EBUSY`).
    pub fn remove(&self, cgroup: &Cgroup) -> Result<(), CgroupError> {
        let mut first_error = None;
        for (_, dir) in &cgroup.dirs {
            match self.fs.remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(io_err(dir)(e));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The sandboxes' cgroups that exist now (e.g. left by a crashed server).
    pub fn existing(&self) -> Result<Vec<Cgroup>, CgroupError> {
        let mut names: Vec<String> = Vec::new();
        for (_, parent) in &self.parents {
            for dir in self.fs.list_dirs(parent).map_err(io_err(parent))? {
                if let Some(name) = dir.file_name().and_then(|n| n.to_str())
                    && !names.iter().any(|n| n == name)
                {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| Cgroup {
                dirs: self
                    .parents
                    .iter()
                    .map(|(c, parent)| (*c, parent.join(&name)))
                    .collect(),
                cpu_millis: None,
                idle: false,
            })
            .collect())
    }
}

/// Of directories per hierarchy (one for all controllers on v2), the one
/// holding `controller`'s files.
fn dir_of(dirs: &[(Option<Controller>, PathBuf)], controller: Controller) -> &Path {
    dirs.iter()
        .find(|(c, _)| c.is_none() || *c == Some(controller))
        .map_or_else(|| Path::new("/nonexistent"), |(_, d)| d.as_path())
}

impl Cgroup {
    /// The directory holding `controller`'s files.
    fn dir(&self, controller: Controller) -> &Path {
        dir_of(&self.dirs, controller)
    }

    /// The cgroup's name (its directories' last component).
    pub fn name(&self) -> &str {
        self.dirs
            .first()
            .and_then(|(_, d)| d.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("")
    }

    /// The directories of the cgroup, one per hierarchy.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE_V2: &str = "25 20 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn hybrid_hosts_use_v1() {
        let layout = Layout::from_mountinfo(HYBRID, |_| "hugetlb\n".into()).unwrap();
        assert_eq!(
            layout,
            Layout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
                pids: "/sys/fs/cgroup/pids".into(),
            }
        );
    }

    #[test]
    fn v2_hosts_use_the_unified_tree() {
        let layout =
            Layout::from_mountinfo(PURE_V2, |_| "cpuset cpu io memory pids\n".into()).unwrap();
        assert_eq!(
            layout,
            Layout::V2 {
                mount: "/sys/fs/cgroup".into()
            }
        );
        let err = Layout::from_mountinfo(PURE_V2, |_| "io\n".into()).unwrap_err();
        assert!(err.to_string().contains("memory, cpu and pids"));
        // Combined v1 mounts ("cpu,cpuacct") count for cpu.
        let combined = HYBRID.replace("rw,cpu\n", "rw,cpu,cpuacct\n");
        assert!(Layout::from_mountinfo(&combined, |_| String::new()).is_ok());
    }

    #[test]
    fn limits_become_the_right_files() {
        let limits = CgroupLimits {
            memory_bytes: 64 << 20,
            cpu_millis: Some(500),
            pids: 64,
        };
        let v2 = limit_writes(true, &limits);
        assert!(v2.contains(&(Controller::Memory, "memory.max", "67108864".into())));
        assert!(v2.contains(&(Controller::Cpu, "cpu.max", "50000 100000".into())));
        assert!(v2.contains(&(Controller::Pids, "pids.max", "64".into())));
        let v1 = limit_writes(false, &limits);
        assert!(v1.contains(&(
            Controller::Memory,
            "memory.limit_in_bytes",
            "67108864".into()
        )));
        assert!(v1.contains(&(Controller::Cpu, "cpu.cfs_quota_us", "50000".into())));
        let uncapped = limit_writes(
            false,
            &CgroupLimits {
                cpu_millis: None,
                ..limits
            },
        );
        assert!(uncapped.contains(&(Controller::Cpu, "cpu.cfs_quota_us", "-1".into())));
    }

    /// Records what would be written, and models the two kernel rules the
    /// v2 code relies on: writing a pid to a `cgroup.procs` moves it out of
    /// every other cgroup (one hierarchy), and a cgroup in `non_root`
    /// refuses writes to its `cgroup.subtree_control` with `EBUSY` while
    /// it holds a process.
    #[derive(Default)]
    struct Recording {
        files: Mutex<BTreeMap<PathBuf, String>>,
        dirs: Mutex<Vec<PathBuf>>,
        non_root: Mutex<Vec<PathBuf>>,
    }

    impl CgroupFs for std::sync::Arc<Recording> {
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            self.dirs.lock().unwrap().push(path.to_owned());
            Ok(())
        }
        fn write(&self, path: &Path, value: &str) -> io::Result<()> {
            let mut files = self.files.lock().unwrap();
            let dir = path.parent().unwrap_or(Path::new("/"));
            match path.file_name().and_then(|n| n.to_str()) {
                Some("cgroup.procs") => {
                    for (other, procs) in files.iter_mut() {
                        if other.ends_with("cgroup.procs") {
                            let left: Vec<&str> = procs.lines().filter(|p| *p != value).collect();
                            *procs = left.join("\n");
                        }
                    }
                    let procs = files.entry(path.to_owned()).or_default();
                    if !procs.is_empty() {
                        procs.push('\n');
                    }
                    procs.push_str(value);
                    return Ok(());
                }
                Some("cgroup.subtree_control")
                    if self.non_root.lock().unwrap().iter().any(|d| d == dir)
                        && files
                            .get(&dir.join("cgroup.procs"))
                            .is_some_and(|p| !p.is_empty()) =>
                {
                    return Err(io::Error::from_raw_os_error(
                        nix::errno::Errno::EBUSY as i32,
                    ));
                }
                _ => {}
            }
            files.insert(path.to_owned(), value.to_owned());
            Ok(())
        }
        fn read(&self, path: &Path) -> io::Result<String> {
            self.files
                .lock()
                .unwrap()
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn exists(&self, _: &Path) -> bool {
            true
        }
        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            self.dirs.lock().unwrap().retain(|d| d != path);
            Ok(())
        }
        fn list_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
            Ok(self
                .dirs
                .lock()
                .unwrap()
                .iter()
                .filter(|d| d.parent() == Some(path))
                .cloned()
                .collect())
        }
    }

    /// A v2 host for the double, mounted at `/cg`: wisp's cgroup `own`
    /// offers `offered`, enables `enabled` and holds `procs`; it is the
    /// root cgroup if `own` is `/`.
    fn v2_host(
        own: &str,
        offered: &str,
        enabled: &str,
        procs: &[u32],
    ) -> std::sync::Arc<Recording> {
        let fs = std::sync::Arc::new(Recording::default());
        let own = Path::new("/cg").join(own.trim_start_matches('/'));
        let procs: Vec<String> = procs.iter().map(u32::to_string).collect();
        let mut files = fs.files.lock().unwrap();
        files.insert(own.join("cgroup.controllers"), offered.to_owned());
        files.insert(own.join("cgroup.subtree_control"), enabled.to_owned());
        files.insert(own.join("cgroup.procs"), procs.join("\n"));
        drop(files);
        if own != Path::new("/cg") {
            fs.non_root.lock().unwrap().push(own);
        }
        fs
    }

    fn v2_layout() -> Layout {
        Layout::V2 {
            mount: "/cg".into(),
        }
    }

    #[test]
    fn v2_plan_is_carried_out_under_wisps_own_cgroup() {
        // systemd lists what a delegated unit's cgroup enables in its own order.
        let own = "/system.slice/wisp.service";
        let fs = v2_host(own, "cpu io memory pids", "pids memory cpu", &[]);
        let cgroups = Cgroups::with_own_cgroups(
            v2_layout(),
            Box::new(fs.clone()),
            "0::/system.slice/wisp.service\n",
            &[],
        )
        .unwrap();
        let limits = CgroupLimits {
            memory_bytes: 1 << 20,
            cpu_millis: None,
            pids: 10,
        };
        let cg = cgroups.create("sb-1", &limits).unwrap();
        let files = fs.files.lock().unwrap().clone();
        let base = Path::new("/cg/system.slice/wisp.service/wisp");
        assert_eq!(
            files[&base.join("cgroup.subtree_control")],
            "+memory +cpu +pids"
        );
        assert_eq!(
            files[Path::new("/cg/system.slice/wisp.service/cgroup.subtree_control")],
            "pids memory cpu",
            "what is enabled already is left alone"
        );
        assert_eq!(files[&base.join("sb-1/memory.max")], "1048576");
        assert_eq!(files[&base.join("sb-1/pids.max")], "10");
        cgroups.add_process(&cg, 42).unwrap();
        assert_eq!(
            fs.files.lock().unwrap()[&base.join("sb-1/cgroup.procs")],
            "42"
        );
        assert_eq!(cgroups.existing().unwrap(), vec![cg.clone()]);
        cgroups.remove(&cg).unwrap();
        assert!(cgroups.existing().unwrap().is_empty());
        assert!(cgroups.create("../escape", &limits).is_err());
    }

    /// An emptied cgroup is kept with its limits lifted, handed to the next
    /// sandbox, and removed when keeping stops; one still charged much
    /// memory, or one past the cap, is given back for removal.
    #[test]
    fn emptied_cgroups_are_kept_lifted_and_reused() {
        let fs = v2_host("/", "cpu memory pids", "", &[]);
        let cgroups =
            Cgroups::with_own_cgroups(v2_layout(), Box::new(fs.clone()), "0::/\n", &[]).unwrap();
        let limits = CgroupLimits {
            memory_bytes: 1 << 20,
            cpu_millis: Some(250),
            pids: 10,
        };
        let base = Path::new("/cg/wisp");
        let cg = cgroups.create("sb-1", &limits).unwrap();
        let charge = |bytes: u64| {
            fs.files
                .lock()
                .unwrap()
                .insert(base.join("sb-1/memory.current"), bytes.to_string());
        };
        charge(KEPT_MAX_CHARGE + 1);
        let cg = cgroups.keep(cg).expect_err("too much memory charged");
        charge(4096);
        cgroups.keep(cg.clone()).unwrap();
        {
            let files = fs.files.lock().unwrap();
            assert_eq!(files[&base.join("sb-1/memory.max")], "max");
            assert_eq!(files[&base.join("sb-1/memory.swap.max")], "max");
            assert_eq!(files[&base.join("sb-1/cpu.max")], "max");
            assert_eq!(files[&base.join("sb-1/pids.max")], "max");
        }
        assert_eq!(cgroups.take_unlimited("sb-2").unwrap(), (cg.clone(), true));
        let (fresh, kept) = cgroups.take_unlimited("sb-2").unwrap();
        assert!(!kept);
        assert_eq!(fresh.name(), "sb-2");

        // At most KEPT_CGROUPS.
        for _ in 0..KEPT_CGROUPS {
            cgroups.keep(cg.clone()).unwrap();
        }
        assert!(cgroups.keep(cg.clone()).is_err());
        assert!(cgroups.existing().unwrap().contains(&cg));
        cgroups.stop_keeping();
        assert!(!cgroups.existing().unwrap().contains(&cg), "removed");
        fs.files
            .lock()
            .unwrap()
            .insert(base.join("sb-2/memory.current"), "0".into());
        assert!(
            cgroups.keep(fresh.clone()).is_err(),
            "no keeping after the stop"
        );
        assert!(!cgroups.take_unlimited("sb-3").unwrap().1);
        cgroups.keep_at_most(1);
        cgroups.keep(fresh.clone()).unwrap();
        assert!(cgroups.keep(fresh).is_err(), "one at most");
    }

    /// A kept cgroup keeps a CPU cap of one CPU or more, and a cap already
    /// in place is not written again (each write makes the kernel check
    /// every task group on the host); a smaller cap is lifted.
    #[test]
    fn a_kept_cgroup_keeps_its_cpu_cap_and_the_same_cap_is_not_written_again() {
        let fs = v2_host("/", "cpu memory pids", "", &[]);
        let cgroups =
            Cgroups::with_own_cgroups(v2_layout(), Box::new(fs.clone()), "0::/\n", &[]).unwrap();
        let base = Path::new("/cg/wisp");
        let file = |name: &str| fs.files.lock().unwrap()[&base.join(name)].clone();
        let set = |name: &str, value: &str| {
            fs.files
                .lock()
                .unwrap()
                .insert(base.join(name), value.to_owned());
        };
        let one_cpu = CgroupLimits {
            memory_bytes: 1 << 20,
            cpu_millis: Some(1000),
            pids: 10,
        };
        let cg = cgroups.create("sb-1", &one_cpu).unwrap();
        assert_eq!(file("sb-1/cpu.max"), "100000 100000");
        set("sb-1/memory.current", "0");
        cgroups.keep(cg).unwrap();
        assert_eq!(file("sb-1/cpu.max"), "100000 100000", "kept with its cap");
        assert_eq!(file("sb-1/memory.max"), "max", "the other limits lifted");

        let (mut cg, kept) = cgroups.take_unlimited("sb-2").unwrap();
        assert!(kept);
        // A write would replace the marker.
        set("sb-1/cpu.max", "marker");
        cgroups.apply_limits(&mut cg, &one_cpu).unwrap();
        assert_eq!(
            file("sb-1/cpu.max"),
            "marker",
            "the same cap is not written"
        );
        assert_eq!(file("sb-1/memory.max"), (1u64 << 20).to_string());
        let quarter = CgroupLimits {
            cpu_millis: Some(250),
            ..one_cpu
        };
        cgroups.apply_limits(&mut cg, &quarter).unwrap();
        assert_eq!(file("sb-1/cpu.max"), "25000 100000");
        cgroups.keep(cg).unwrap();
        assert_eq!(file("sb-1/cpu.max"), "max", "a cap below one CPU is lifted");

        let (mut cg, _) = cgroups.take_unlimited("sb-3").unwrap();
        set("sb-1/cpu.max", "marker");
        let uncapped = CgroupLimits {
            cpu_millis: None,
            ..one_cpu
        };
        cgroups.apply_limits(&mut cg, &uncapped).unwrap();
        assert_eq!(
            file("sb-1/cpu.max"),
            "marker",
            "no cap on a lifted one: none written"
        );
    }

    /// `cpu.idle` is written when a cgroup changes between idle and not, and
    /// only then; a kept cgroup remembers what it was.
    #[test]
    fn idle_is_written_only_when_it_changes() {
        let fs = v2_host("/", "cpu memory pids", "", &[]);
        let cgroups =
            Cgroups::with_own_cgroups(v2_layout(), Box::new(fs.clone()), "0::/\n", &[]).unwrap();
        let idle = Path::new("/cg/wisp/sb-1/cpu.idle");
        let read = || fs.files.lock().unwrap().get(idle).cloned();
        let mark = |value: &str| {
            fs.files
                .lock()
                .unwrap()
                .insert(idle.to_owned(), value.to_owned());
        };
        let (mut cg, kept) = cgroups.take_unlimited("sb-1").unwrap();
        assert!(!kept);
        cgroups.set_idle(&mut cg, false).unwrap();
        assert_eq!(read(), None, "a new cgroup is not idle: nothing written");
        cgroups.set_idle(&mut cg, true).unwrap();
        assert_eq!(read().as_deref(), Some("1"));
        mark("marker");
        cgroups.set_idle(&mut cg, true).unwrap();
        assert_eq!(read().as_deref(), Some("marker"), "already idle");
        cgroups.set_idle(&mut cg, false).unwrap();
        assert_eq!(read().as_deref(), Some("0"));
        cgroups.set_idle(&mut cg, true).unwrap();
        fs.files
            .lock()
            .unwrap()
            .insert("/cg/wisp/sb-1/memory.current".into(), "0".into());
        cgroups.keep(cg).unwrap();
        let (mut cg, kept) = cgroups.take_unlimited("sb-2").unwrap();
        assert!(kept);
        mark("marker");
        cgroups.set_idle(&mut cg, true).unwrap();
        assert_eq!(read().as_deref(), Some("marker"), "kept idle");
        cgroups.set_idle(&mut cg, false).unwrap();
        assert_eq!(read().as_deref(), Some("0"));
    }

    /// A host whose init enables no controller (the kernel's state at boot):
    /// the root cgroup may hold processes and still enable them.
    #[test]
    fn v2_in_the_root_cgroup_wisp_enables_the_controllers_there() {
        let fs = v2_host("/", "cpuset cpu io memory hugetlb pids", "", &[1, 42, 43]);
        Cgroups::with_own_cgroups(v2_layout(), Box::new(fs.clone()), "0::/\n", &[42, 43]).unwrap();
        let files = fs.files.lock().unwrap();
        assert_eq!(
            files[Path::new("/cg/cgroup.subtree_control")],
            "+memory +cpu +pids"
        );
        assert_eq!(
            files[Path::new("/cg/wisp/cgroup.subtree_control")],
            "+memory +cpu +pids"
        );
        assert_eq!(
            files[Path::new("/cg/cgroup.procs")],
            "1\n42\n43",
            "nobody moved"
        );
    }

    /// A systemd unit with `Delegate=yes`: the server and its spawner are
    /// all its cgroup holds; they move to a leaf so that the cgroup may
    /// enable the controllers.
    #[test]
    fn v2_in_a_delegated_cgroup_wisp_moves_itself_to_a_leaf() {
        let own = "/system.slice/wisp.service";
        let fs = v2_host(own, "cpu io memory pids", "", &[42, 43]);
        let proc_self_cgroup = format!("0::{own}\n");
        Cgroups::with_own_cgroups(
            v2_layout(),
            Box::new(fs.clone()),
            &proc_self_cgroup,
            &[42, 43],
        )
        .unwrap();
        let files = fs.files.lock().unwrap();
        let base = Path::new("/cg/system.slice/wisp.service");
        assert_eq!(files[&base.join("cgroup.procs")], "");
        assert_eq!(files[&base.join("wisp-server/cgroup.procs")], "42\n43");
        assert_eq!(
            files[&base.join("cgroup.subtree_control")],
            "+memory +cpu +pids"
        );
        assert_eq!(
            files[&base.join("wisp/cgroup.subtree_control")],
            "+memory +cpu +pids"
        );
    }

    /// A login session's scope also holds the shell: wisp moves nobody and
    /// says why it cannot run containers there.
    #[test]
    fn v2_a_cgroup_shared_with_other_processes_is_refused() {
        let own = "/user.slice/user-0.slice/session-1.scope";
        let fs = v2_host(own, "cpu memory pids", "", &[7, 42, 43]);
        let proc_self_cgroup = format!("0::{own}\n");
        let err = Cgroups::with_own_cgroups(
            v2_layout(),
            Box::new(fs.clone()),
            &proc_self_cgroup,
            &[42, 43],
        )
        .err()
        .expect("refused");
        assert!(
            matches!(&err, CgroupError::Shared { others, .. } if others == &[7]),
            "{err}"
        );
        assert!(err.to_string().contains("Delegate=yes"), "{err}");
        let files = fs.files.lock().unwrap();
        let procs = Path::new("/cg").join(&own[1..]).join("cgroup.procs");
        assert_eq!(files[&procs], "7\n42\n43", "nobody moved");
    }

    #[test]
    fn v2_a_cgroup_without_the_controllers_is_refused() {
        let own = "/system.slice/wisp.service";
        let fs = v2_host(own, "cpu io", "", &[42]);
        let err = Cgroups::with_own_cgroups(
            v2_layout(),
            Box::new(fs),
            "0::/system.slice/wisp.service\n",
            &[42],
        )
        .err()
        .expect("refused");
        assert!(
            matches!(&err, CgroupError::NotDelegated { missing, .. } if missing == &["memory", "pids"]),
            "{err}"
        );
    }

    #[test]
    fn v1_uses_each_controllers_own_path() {
        let fs = std::sync::Arc::new(Recording::default());
        let layout = Layout::V1 {
            memory: "/m".into(),
            cpu: "/c".into(),
            pids: "/p".into(),
        };
        let own = "4:memory:/process_api/abc\n2:cpu,cpuacct:/\n8:pids:/x\n0::/\n";
        let cgroups = Cgroups::with_own_cgroups(layout, Box::new(fs.clone()), own, &[1]).unwrap();
        let limits = CgroupLimits {
            memory_bytes: 2 << 20,
            cpu_millis: Some(250),
            pids: 5,
        };
        cgroups.create("s", &limits).unwrap();
        let files = fs.files.lock().unwrap().clone();
        assert_eq!(
            files[Path::new("/m/process_api/abc/wisp/s/memory.limit_in_bytes")],
            "2097152"
        );
        assert_eq!(files[Path::new("/c/wisp/s/cpu.cfs_quota_us")], "25000");
        assert_eq!(files[Path::new("/p/x/wisp/s/pids.max")], "5");
    }

    /// On the real host (CI runs as root): limits apply, a process joins, the
    /// OOM killer is seen, and nothing is left behind.
    #[test]
    fn real_cgroups_limit_a_memory_hog_and_leave_nothing() {
        let cgroups = Cgroups::new(
            Layout::detect().unwrap(),
            Box::new(RealFs),
            &[std::process::id()],
        )
        .unwrap();
        let name = format!("test-{}", std::process::id());
        let limits = CgroupLimits {
            memory_bytes: 32 << 20,
            cpu_millis: Some(500),
            pids: 16,
        };
        let cg = cgroups.create(&name, &limits).unwrap();
        // A shell that waits for a line, then hogs memory: `tail` keeps a
        // whole newline-free stream in memory.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read go; head -c 200000000 /dev/zero | tail -c 150000000 > /dev/null")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        cgroups.add_process(&cg, child.id()).unwrap();
        assert!(cgroups.processes(&cg).unwrap().contains(&child.id()));
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let _ = child.wait().unwrap();
        assert!(
            cgroups.oom_killed(&cg).unwrap(),
            "the hog was not OOM-killed at 32 MiB"
        );
        for _ in 0..100 {
            if cgroups.processes(&cg).unwrap().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        cgroups.remove(&cg).unwrap();
        for dir in cg.dirs() {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}
