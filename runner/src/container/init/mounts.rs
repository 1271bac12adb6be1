//! The container's filesystems: the scratch tmpfs and the overlay root
//! (image layers read-only, writes in the tmpfs), `pivot_root` into it,
//! and the standard mounts (`/proc`, `/dev` with its nodes, `/dev/pts`,
//! `/dev/shm`, `/tmp`) — made ahead as detached mounts ([`Premounted`])
//! and attached after `pivot_root`, or mounted then — and last the plan's
//! binds of host directories (a function's secrets), cloned before
//! `pivot_root` and attached after it.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev};
use nix::unistd::{Gid, Uid, chdir, pivot_root};

use super::{SetupError, at};
use crate::container::plan::{DEFAULT_SCRATCH_BYTES, Filesystems, IdMap, Mount};
use crate::container::proto::Stage;
use crate::container::sys;

pub(super) fn mount_rootfs(
    fs: &Filesystems,
    scratch: &Path,
    premounted: Option<Premounted>,
) -> Result<(), SetupError> {
    let owner = (fs.id_map.host_uid, fs.id_map.host_gid);
    match &premounted {
        Some(p) if p.owner == owner => {
            if fs.rootfs.scratch_bytes != DEFAULT_SCRATCH_BYTES {
                let none: Option<&str> = None;
                let size = format!("size={}", fs.rootfs.scratch_bytes);
                mount(
                    none,
                    scratch,
                    none,
                    MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(size.as_str()),
                )
                .map_err(at(Stage::ScratchTmpfs))?;
            }
        }
        _ => make_scratch(scratch, fs.rootfs.scratch_bytes, owner)?,
    }
    let (upper, work, root) = (scratch.join("u"), scratch.join("w"), scratch.join("r"));

    // lowerdir= holds at most a page: name the layers relative to their
    // common parent (the image store's `layers/`), which is our cwd.
    let base = common_parent(&fs.rootfs.lower)
        .ok_or_else(|| SetupError::new(Stage::Overlay, "the layers share no parent directory"))?;
    chdir(&base).map_err(at(Stage::Overlay))?;
    let mut lower = String::new();
    for layer in &fs.rootfs.lower {
        let rel = layer.strip_prefix(&base).unwrap_or(layer);
        let rel = rel
            .to_str()
            .filter(|s| !s.contains([',', ':']))
            .ok_or_else(|| {
                SetupError::new(
                    Stage::Overlay,
                    format!(
                        "layer path {} is not usable in overlay options",
                        layer.display()
                    ),
                )
            })?;
        if !lower.is_empty() {
            lower.push(':');
        }
        lower.push_str(rel);
    }
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        plain(&upper)?,
        plain(&work)?
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::MS_NOSUID,
        Some(opts.as_str()),
    )
    .map_err(at(Stage::Overlay))?;
    // Host directories are bound while the host's tree is still in view,
    // and put in place after the standard mounts.
    let binds = fs
        .mounts
        .iter()
        .filter(|m| m.bind)
        .map(|m| {
            sys::bind_tree(&m.source, attributes(m))
                .map(|tree| (m.target.as_str(), tree))
                .map_err(|e| SetupError::new(Stage::Mounts, format!("{}: {e}", m.target)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    chdir(&root).map_err(at(Stage::PivotRoot))?;
    pivot_root(".", ".").map_err(at(Stage::PivotRoot))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(at(Stage::DetachHostRoot))?;
    chdir("/").map_err(at(Stage::PivotRoot))?;

    // Only the standard mounts are made ahead; the scratch tmpfs was
    // used above whatever the plan's mounts.
    match premounted.filter(|p| p.fits(fs)) {
        Some(premounted) => premounted.attach()?,
        None => {
            let (uid, gid) = (fs.id_map.host_uid, fs.id_map.host_gid);
            for m in fs.mounts.iter().filter(|m| !m.bind) {
                mount_one(m, fs.id_map)?;
                if m.target == "/dev" {
                    let dev = fs::File::open("/dev").map_err(at(Stage::Devices))?;
                    make_devices(dev.as_fd(), &fs.devices, uid, gid)?;
                }
            }
        }
    }
    for (target, tree) in &binds {
        mount_point(target)?;
        sys::attach_mount(tree.as_fd(), target)
            .map_err(|e| SetupError::new(Stage::Mounts, format!("{target}: {e}")))?;
    }
    Ok(())
}

/// A mount's flags as mount attributes (`MOUNT_ATTR_*`).
fn attributes(m: &Mount) -> libc::c_uint {
    let mut attrs = 0;
    for (set, attr) in [
        (m.read_only, sys::MOUNT_ATTR_RDONLY),
        (m.nosuid, sys::MOUNT_ATTR_NOSUID),
        (m.nodev, sys::MOUNT_ATTR_NODEV),
        (m.noexec, sys::MOUNT_ATTR_NOEXEC),
    ] {
        if set {
            attrs |= attr;
        }
    }
    attrs
}

/// Mounts the scratch tmpfs (`bytes` big) on `dir`, with the overlay's
/// upper (`u`), work (`w`) and root (`r`) directories in it.
fn make_scratch(dir: &Path, bytes: u64, (uid, gid): (u32, u32)) -> Result<(), SetupError> {
    let data = format!("size={bytes},mode=0755");
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(at(Stage::ScratchTmpfs))?;
    let upper = dir.join("u");
    for (sub, mode) in [
        (&upper, 0o755),
        (&dir.join("w"), 0o700),
        (&dir.join("r"), 0o755),
    ] {
        fs::DirBuilder::new()
            .mode(mode)
            .create(sub)
            .map_err(at(Stage::ScratchDirs))?;
    }
    // The top directory of the rootfs is the upper dir: owned by the
    // container's root, so that it may create files in `/`.
    nix::unistd::chown(&upper, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(at(Stage::ScratchDirs))
}

/// The standard mounts (`plan::standard_mounts`: `/proc`, `/dev` with its
/// nodes, `/dev/pts`, `/dev/shm`, `/tmp`), made while the sandbox waits for
/// a function as detached mounts (the new mount API), in order, and the
/// scratch tmpfs (at the default size, in place). After `pivot_root` each
/// detached mount is attached at its path inside the new root, so that, as
/// when they are mounted then, no path of the image's is ever resolved
/// against the host's tree.
pub(super) struct Premounted {
    owner: (u32, u32),
    /// Detached; `attach` puts them in place.
    mounts: Vec<(String, OwnedFd)>,
}

impl Premounted {
    pub(super) fn make(ids: IdMap, scratch: &Path) -> Result<Premounted, SetupError> {
        let (uid, gid) = (ids.host_uid, ids.host_gid);
        let standard = crate::container::plan::standard_mounts();
        let mut mounts: Vec<(String, OwnedFd)> = Vec::new();
        for m in &standard {
            let fail =
                |error: String| SetupError::new(Stage::Mounts, format!("{}: {error}", m.target));
            let fstype =
                m.fstype.as_deref().filter(|_| !m.bind).ok_or_else(|| {
                    fail("only filesystems, not bind mounts, are made ahead".into())
                })?;
            let mut options = vec![format!("source={}", m.source)];
            options.extend(m.data.split(',').map(str::to_owned));
            if fstype == "tmpfs" {
                options.extend([format!("uid={uid}"), format!("gid={gid}")]);
            }
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            let mount = sys::detached_mount(fstype, &options, attributes(m))
                .map_err(|e| fail(e.to_string()))?;
            if m.target == "/dev" {
                make_devices(
                    mount.as_fd(),
                    &crate::container::plan::standard_devices(),
                    uid,
                    gid,
                )?;
                // Mount points of what goes inside /dev.
                for inner in standard
                    .iter()
                    .filter_map(|n| n.target.strip_prefix("/dev/"))
                {
                    nix::sys::stat::mkdirat(mount.as_fd(), inner, Mode::from_bits_truncate(0o755))
                        .map_err(|e| fail(format!("{inner}: {e}")))?;
                    nix::unistd::fchownat(
                        mount.as_fd(),
                        inner,
                        Some(Uid::from_raw(uid)),
                        Some(Gid::from_raw(gid)),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| fail(format!("{inner}: {e}")))?;
                }
            }
            mounts.push((m.target.clone(), mount));
        }
        // Mounted in place: the scratch tmpfs is outside the new root.
        make_scratch(scratch, DEFAULT_SCRATCH_BYTES, (uid, gid))?;
        Ok(Premounted {
            owner: (uid, gid),
            mounts,
        })
    }

    /// Whether these are the standard mounts of `fs` (its binds are made
    /// apart).
    fn fits(&self, fs: &Filesystems) -> bool {
        fs.mounts
            .iter()
            .filter(|m| !m.bind)
            .eq(&crate::container::plan::standard_mounts())
            && fs.devices == crate::container::plan::standard_devices()
            && self.owner == (fs.id_map.host_uid, fs.id_map.host_gid)
    }

    /// Attaches every mount at its path (run after `pivot_root`).
    fn attach(self) -> Result<(), SetupError> {
        for (target, mount) in &self.mounts {
            mount_point(target)?;
            sys::attach_mount(mount.as_fd(), target)
                .map_err(|e| SetupError::new(Stage::Mounts, format!("{target}: {e}")))?;
        }
        Ok(())
    }
}

/// Makes the directory `target` (and its parents) if missing.
fn mount_point(target: &str) -> Result<(), SetupError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SetupError::new(Stage::Mounts, format!("{target}: {e}"))),
    }
}

fn plain(path: &Path) -> Result<&str, SetupError> {
    path.to_str()
        .filter(|s| !s.contains([',', ':']))
        .ok_or_else(|| {
            SetupError::new(
                Stage::Overlay,
                format!("{} is not usable in overlay options", path.display()),
            )
        })
}

fn common_parent(paths: &[PathBuf]) -> Option<PathBuf> {
    let mut base = paths.first()?.parent()?.parent()?.to_path_buf();
    while !paths.iter().all(|p| p.starts_with(&base)) {
        base = base.parent()?.to_path_buf();
    }
    Some(base)
}

/// Mounts one of the plan's filesystems, inside the new root. tmpfs mounts
/// belong to the container's root.
fn mount_one(m: &Mount, ids: IdMap) -> Result<(), SetupError> {
    let fail =
        |e: &dyn std::fmt::Display| SetupError::new(Stage::Mounts, format!("{}: {e}", m.target));
    mount_point(&m.target)?;
    let mut flags = MsFlags::empty();
    for (set, flag) in [
        (m.bind, MsFlags::MS_BIND),
        (m.read_only, MsFlags::MS_RDONLY),
        (m.nosuid, MsFlags::MS_NOSUID),
        (m.nodev, MsFlags::MS_NODEV),
        (m.noexec, MsFlags::MS_NOEXEC),
    ] {
        if set {
            flags |= flag;
        }
    }
    let mut data = m.data.clone();
    if m.fstype.as_deref() == Some("tmpfs") {
        if !data.is_empty() {
            data.push(',');
        }
        data.push_str(&format!("uid={},gid={}", ids.host_uid, ids.host_gid));
    }
    mount(
        Some(m.source.as_str()),
        m.target.as_str(),
        m.fstype.as_deref(),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| fail(&e))
}

/// Creates `devices` in the fresh `/dev` tmpfs `dev` (as host root,
/// before the user namespace, which could not), owned by container root,
/// plus the usual links.
fn make_devices(
    dev: BorrowedFd<'_>,
    devices: &[String],
    uid: u32,
    gid: u32,
) -> Result<(), SetupError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        SetupError::new(Stage::Devices, format!("/dev/{what}: {e}"))
    };
    for name in devices {
        let (major, minor) = match name.as_str() {
            "null" => (1, 3),
            "zero" => (1, 5),
            "full" => (1, 7),
            "random" => (1, 8),
            "urandom" => (1, 9),
            "tty" => (5, 0),
            other => return Err(fail(other, &"unknown device")),
        };
        nix::sys::stat::mknodat(
            dev,
            name.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| fail(name, &e))?;
        nix::unistd::fchownat(
            dev,
            name.as_str(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(name, &e))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        nix::unistd::symlinkat(target, dev, link).map_err(|e| fail(link, &e))?;
    }
    Ok(())
}
