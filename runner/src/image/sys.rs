//! The image store's system calls beyond `std`: the overlayfs whiteout
//! (`mknod`), the opaque-directory xattr and one `syncfs` per import, one
//! small function each. They stay apart from `container::sys` on purpose:
//! the image store is a store beside the request path and does not depend
//! on the container backend. All of them need root (`CAP_MKNOD`,
//! `CAP_SYS_ADMIN` for `trusted.*`).

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
