//! What sandboxes see of the host before their `pivot_root`: the
//! spawner's own mount namespace, holding only the directories they use.
//!
//! A sandbox's mount namespace starts as a copy of the spawner's (`clone`
//! with `CLONE_NEWNS` copies every mount), and its `pivot_root` detaches
//! that copy again on the cold start's path. Both grow with the host's
//! mount table, which on a Kubernetes node or a Docker host holds hundreds
//! of mounts: with 300 extra mounts on the development machine, a cold
//! start took 0.5–1 ms longer (BENCHMARKS.md, "Host mounts"). So with its
//! first request the spawner moves into a mount namespace whose root is a
//! small tmpfs holding the directories sandboxes use before `pivot_root`
//! (the data dir: image layers, scratch, secrets; wisp's cgroup
//! directories), each at its own path, and `/proc`, and detaches the
//! host's tree. Sandboxes then copy a dozen mounts whatever the host has,
//! and what their set-up could reach of the host is those directories.
//!
//! The gateway stays in the host's namespace. Files written later in these
//! directories (a pulled image's layers) are seen, as the binds share the
//! host's filesystems; mounts made later on the host are not (private
//! propagation), nor needed.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{chdir, pivot_root};

use crate::container::sys;

/// Why the spawner kept the host's mount table.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub(crate) struct ViewError {
    what: String,
    cause: String,
}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> ViewError {
    let what = what.to_string();
    move |e| ViewError {
        what,
        cause: e.to_string(),
    }
}

/// Moves this process (the spawner, single-threaded) into a mount
/// namespace whose root holds only `dirs` (with the mounts below them)
/// and `/proc`, each at its own path; `mount_on` is an empty host
/// directory the new root's tmpfs is mounted on while it is built.
/// Relative paths keep resolving from the same working directory.
///
/// On failure before `pivot_root` the process is left in a private copy
/// of the host's namespace, which serves sandboxes as the host's does.
pub(crate) fn isolate(dirs: &[PathBuf], mount_on: &Path) -> Result<(), ViewError> {
    let absolute = |p: &Path| {
        std::path::absolute(p).map_err(|e| ViewError {
            what: p.display().to_string(),
            cause: e.to_string(),
        })
    };
    let cwd = std::env::current_dir().map_err(|e| ViewError {
        what: "the working directory".into(),
        cause: e.to_string(),
    })?;
    let mount_on = absolute(mount_on)?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(fail("unshare(CLONE_NEWNS)"))?;
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(fail("making / private"))?;
    // Copies of the trees, taken before the new root's tmpfs covers
    // `mount_on` (which may be inside one of them).
    let mut trees: Vec<(PathBuf, OwnedFd)> = Vec::new();
    for (dir, recursive) in
        std::iter::once((Path::new("/proc"), false)).chain(dirs.iter().map(|d| (d.as_path(), true)))
    {
        let dir = absolute(dir)?;
        let tree = sys::clone_tree(&dir, recursive).map_err(|e| ViewError {
            what: dir.display().to_string(),
            cause: e.to_string(),
        })?;
        trees.push((dir, tree));
    }
    mount(
        Some("tmpfs"),
        &mount_on,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .map_err(fail(format_args!("tmpfs on {}", mount_on.display())))?;
    let inside = |p: &Path| mount_on.join(p.strip_prefix("/").unwrap_or(p));
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| ViewError {
            what,
            cause: e.to_string(),
        }
    };
    for (dir, tree) in &trees {
        let target = inside(dir);
        std::fs::create_dir_all(&target).map_err(io(dir))?;
        sys::attach_mount(std::os::fd::AsFd::as_fd(tree), &target.to_string_lossy())
            .map_err(fail(format_args!("attaching {}", dir.display())))?;
    }
    // The working directory, for relative paths (a relative data dir).
    std::fs::create_dir_all(inside(&cwd)).map_err(io(&cwd))?;
    chdir(&mount_on).map_err(fail("chdir to the new root"))?;
    pivot_root(".", ".").map_err(fail("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detaching the host's root"))?;
    chdir(&cwd).map_err(fail(format_args!("chdir {}", cwd.display())))?;
    Ok(())
}
