//! The image store's system calls beyond `std`: the overlayfs whiteout
//! (`mknod`), the opaque-directory xattr (set and read), one `syncfs` per
//! import and the `openat2` that reads a file of a layer without following
//! links ([`super::tree`]), one small function each. They stay apart from
//! `container::sys` on purpose: the image store is a store beside the
//! request path and does not depend on the container backend. Making
//! whiteouts and reading or writing `trusted.*` need root (`CAP_MKNOD`,
//! `CAP_SYS_ADMIN`).

use std::fs::File;
use std::io;
use std::path::Path;

/// The xattr that makes an overlayfs directory hide the lower layers' one.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Makes the overlayfs whiteout `path`: a character device with device
/// number 0:0 and no permission bits, which overlayfs reads as "this name
/// was deleted in this layer". `path` must not exist. Needs `CAP_MKNOD`.
pub(crate) fn make_whiteout(path: &Path) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(io::Error::from)
}

/// Marks the directory `dir` opaque for overlayfs (`trusted.overlay.opaque
/// = y`): the lower layers' content of that directory is hidden. Does not
/// follow a symlink at `dir`.
pub(crate) fn make_opaque(dir: &Path) -> io::Result<()> {
    xattr::set(dir, OPAQUE_XATTR, b"y")
}

/// Flushes the whole filesystem holding `dir` to disk (`syncfs(2)`): one
/// call per import instead of an `fsync` per unpacked file, so that a layer
/// or blob renamed into place afterwards is never found empty after a crash.
pub(crate) fn sync_filesystem(dir: &Path) -> io::Result<()> {
    let dir = File::open(dir)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)
}

/// Whether the directory `dir` is marked opaque for overlayfs (see
/// [`make_opaque`]). Does not follow a symlink at `dir`.
pub(crate) fn is_opaque(dir: &Path) -> io::Result<bool> {
    match xattr::get(dir, OPAQUE_XATTR) {
        Ok(value) => Ok(value.as_deref() == Some(b"y")),
        // A file system without extended attributes holds no opaque dirs.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `meta` (from `lstat`) is an overlayfs whiteout (see
/// [`make_whiteout`]).
pub(crate) fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Opens `relative` beneath the directory `dir` for reading, refusing any
/// symbolic link on the way and any path that leaves `dir`
/// (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, Linux 5.6+; older
/// kernels get `O_NOFOLLOW` on the last component only). Does not block on
/// a FIFO.
pub(crate) fn open_beneath(dir: &Path, relative: &Path) -> io::Result<File> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let root = File::open(dir)?;
    let how = OpenHow::new().flags(flags).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    match openat2(&root, relative, how) {
        Ok(fd) => Ok(File::from(fd)),
        Err(nix::errno::Errno::ENOSYS) => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(dir.join(relative))
        }
        Err(e) => Err(io::Error::from(e)),
    }
}
