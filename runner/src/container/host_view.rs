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

use std::os::fd::{AsFd, OwnedFd};
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

/// Tags an error (of any kind) with the step it failed.
fn fail<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> ViewError {
    let what = what.to_string();
    move |e| ViewError {
        what,
        cause: e.to_string(),
    }
}

/// Moves this process (the spawner, single-threaded) into a mount
/// namespace whose root holds only `dirs` (with the mounts below them)
/// and `/proc`, each at its own path; `mount_on` is an empty host
/// directory the new root's tmpfs is mounted on while it is built. Every
/// path is absolute (the gateway makes the data dir so): after the pivot
/// the working directory is the new root.
///
/// On failure before `pivot_root` the process is left in the host's
/// namespace or a private copy of it, which serves sandboxes as before.
pub(crate) fn isolate(dirs: &[PathBuf], mount_on: &Path) -> Result<(), ViewError> {
    if let Some(relative) = dirs
        .iter()
        .map(PathBuf::as_path)
        .chain([mount_on])
        .find(|p| !p.is_absolute())
    {
        return Err(fail(relative.display())("not an absolute path"));
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(fail("unshare(CLONE_NEWNS)"))?;
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(fail("making / private"))?;
    // Copies of the trees, taken before the new root's tmpfs covers
    // `mount_on` (which may be inside one of them).
    let mut trees: Vec<(&Path, OwnedFd)> = Vec::new();
    for (dir, recursive) in
        std::iter::once((Path::new("/proc"), false)).chain(dirs.iter().map(|d| (d.as_path(), true)))
    {
        trees.push((
            dir,
            sys::clone_tree(dir, recursive).map_err(fail(dir.display()))?,
        ));
    }
    mount(
        Some("tmpfs"),
        mount_on,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .map_err(fail(format_args!("tmpfs on {}", mount_on.display())))?;
    for (dir, tree) in &trees {
        let target = mount_on.join(dir.strip_prefix("/").unwrap_or(dir));
        std::fs::create_dir_all(&target).map_err(fail(dir.display()))?;
        sys::attach_mount(tree.as_fd(), &target.to_string_lossy())
            .map_err(fail(format_args!("attaching {}", dir.display())))?;
    }
    chdir(mount_on).map_err(fail("chdir to the new root"))?;
    pivot_root(".", ".").map_err(fail("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detaching the host's root"))?;
    chdir("/").map_err(fail("chdir /"))
}
