//! Safe unpacking of one image layer (an uncompressed tar stream) into a
//! directory of its own, ready to be an overlayfs lower layer.
//!
//! This module walks the entries itself instead of trusting
//! `tar::Entry::unpack_in`. An entry whose path is absolute or contains `..`
//! is refused; parent directories are created one component at a time and an
//! existing symlink (or non-directory) on the way is refused; files are
//! created with `create_new` and `O_NOFOLLOW`, and an existing entry of the
//! same name is removed first, so nothing is ever written through a symlink.
//! Symlinks themselves may point anywhere: they are resolved inside the
//! container's rootfs, never here. A hard link must name a regular file
//! already unpacked in the same layer. OCI whiteouts become overlayfs ones
//! (`.wh.NAME` → a 0:0 character device `NAME`, `.wh..wh..opq` → the
//! `trusted.overlay.opaque` xattr on its directory).
//!
//! Limits: device nodes and FIFOs are refused (a container gets its own
//! minimal `/dev`); entries' xattrs, ACLs and PAX-only uids are dropped and
//! only regular files keep their mtime. Mode bits are kept, setuid and setgid
//! included: the container runs with `no_new_privs`, and the store keeps
//! layers in a 0700 directory that host users cannot enter. Ownership is
//! shifted by [`UnpackOptions`] into the user namespace's range. Every
//! entry, and the declared size of every regular file before it is written,
//! is charged to the caller's [`Budget`] (the image's limits). The
//! destination must be private to the caller while it runs: the checks are
//! made path by path, so a concurrent writer could swap a checked directory
//! for a symlink. Needs root (chown, mknod, `trusted.*` xattrs).

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tar::EntryType;

use super::limits::{Budget, OverLimit};
use super::sys;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// How a layer is unpacked: the ownership shift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackOptions {
    /// Added to every entry's uid: the host uid that the container's uid 0
    /// maps to.
    pub uid_offset: u32,
    /// Added to every entry's gid.
    pub gid_offset: u32,
}

/// What one unpacked layer holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Bytes of regular files.
    pub bytes: u64,
    /// Entries of the archive, of every type.
    pub entries: u64,
}

/// Why a layer could not be unpacked. Every refused entry is named by its
/// path as written in the archive.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum UnpackError {
    #[error("refusing {entry:?}: absolute path")]
    AbsolutePath { entry: PathBuf },
    #[error("refusing {entry:?}: path contains `..`")]
    ParentDir { entry: PathBuf },
    #[error("refusing {entry:?}: only a directory entry may name the layer root")]
    RootPath { entry: PathBuf },
    #[error("refusing {entry:?}: {component:?} on its way is a symlink")]
    SymlinkInPath { entry: PathBuf, component: PathBuf },
    #[error("refusing {entry:?}: {component:?} on its way is not a directory")]
    NotADirectory { entry: PathBuf, component: PathBuf },
    #[error(
        "refusing hard link {entry:?}: its target {target:?} is not a regular file in this layer"
    )]
    HardLinkTarget { entry: PathBuf, target: PathBuf },
    #[error("refusing {entry:?}: {kind} entries are not allowed in a layer")]
    Unsupported { entry: PathBuf, kind: &'static str },
    #[error("refusing whiteout {entry:?}: it names no file")]
    InvalidWhiteout { entry: PathBuf },
    #[error("refusing {entry:?}: owner {uid}:{gid} is out of range")]
    Owner { entry: PathBuf, uid: u64, gid: u64 },
    #[error("refusing {entry:?}: {limit}")]
    OverLimit { entry: PathBuf, limit: OverLimit },
    #[error("reading the layer archive: {source}")]
    Read { source: IoCause },
    #[error("unpacking {entry:?}: {source}")]
    Write { entry: PathBuf, source: IoCause },
}

/// An I/O error that equals another of the same kind, so that
/// [`UnpackError`] can derive `PartialEq` for tests.
#[derive(Debug)]
pub struct IoCause(pub io::Error);

impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind()
    }
}

impl fmt::Display for IoCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl UnpackError {
    pub(crate) fn read(source: io::Error) -> Self {
        UnpackError::Read {
            source: IoCause(source),
        }
    }
}

/// Unpacks the tar stream `layer` into `dest`, an existing empty directory
/// private to the caller, which becomes the layer's root: owned by the
/// container's root (the offsets) with mode 0755 unless the archive has an
/// entry for `./`. Entries and file sizes are charged to `budget` as they
/// come. On error `dest` holds part of the layer and should be removed;
/// nothing is ever written outside it.
pub fn unpack(
    layer: impl Read,
    dest: &Path,
    options: &UnpackOptions,
    budget: &Budget,
) -> Result<UnpackStats, UnpackError> {
    let mut stats = UnpackStats::default();
    let root = Unpacker {
        dest,
        options,
        budget,
        entry: Path::new("."),
    };
    root.set_owner_and_mode(dest, 0, 0, 0o755)?;

    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(UnpackError::read)? {
        let mut entry = entry.map_err(UnpackError::read)?;
        let raw_path = entry.path_bytes().into_owned();
        let name = PathBuf::from(OsStr::from_bytes(&raw_path));
        let unpacker = Unpacker {
            dest,
            options,
            budget,
            entry: &name,
        };
        stats.entries += 1;
        budget
            .spend_entry()
            .map_err(|limit| unpacker.over_limit(limit))?;
        unpacker.entry(&mut entry, &raw_path, &mut stats)?;
    }
    Ok(stats)
}

/// Unpacks one entry; `entry` is its path as written, for errors.
struct Unpacker<'a> {
    dest: &'a Path,
    options: &'a UnpackOptions,
    budget: &'a Budget,
    entry: &'a Path,
}

impl Unpacker<'_> {
    fn entry<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &[u8],
        stats: &mut UnpackStats,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        let refuse = |kind| UnpackError::Unsupported {
            entry: self.entry.to_owned(),
            kind,
        };
        match kind {
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Char => return Err(refuse("character device")),
            EntryType::Block => return Err(refuse("block device")),
            EntryType::Fifo => return Err(refuse("fifo")),
            _ => {}
        }
        let parts = self.components(raw_path)?;
        let header = entry.header();
        let (uid, gid) = (
            header.uid().map_err(UnpackError::read)?,
            header.gid().map_err(UnpackError::read)?,
        );
        let mode = header.mode().map_err(UnpackError::read)? & 0o7777;

        let Some((last, parents)) = parts.split_last() else {
            return match kind {
                EntryType::Directory => self.set_owner_and_mode(self.dest, uid, gid, mode),
                _ => Err(UnpackError::RootPath {
                    entry: self.entry.to_owned(),
                }),
            };
        };
        let parent = self.make_parents(parents)?;
        let last = last.as_bytes();

        if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
            if last == OPAQUE_WHITEOUT {
                return sys::make_opaque(&parent).map_err(|e| self.write_error(e));
            }
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(UnpackError::InvalidWhiteout {
                    entry: self.entry.to_owned(),
                });
            }
            let path = parent.join(OsStr::from_bytes(hidden));
            remove_existing(&path).map_err(|e| self.write_error(e))?;
            sys::make_whiteout(&path).map_err(|e| self.write_error(e))?;
            return self.set_owner(&path, 0, 0);
        }

        let path = parent.join(OsStr::from_bytes(last));
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => {}
                    _ => {
                        remove_existing(&path).map_err(|e| self.write_error(e))?;
                        fs::create_dir(&path).map_err(|e| self.write_error(e))?;
                    }
                }
                self.set_owner_and_mode(&path, uid, gid, mode)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // The declared size (a sparse file's full length), charged
                // before a byte of it is written.
                stats.bytes = stats.bytes.saturating_add(entry.size());
                self.budget
                    .spend_bytes(entry.size())
                    .map_err(|limit| self.over_limit(limit))?;
                let mtime = entry.header().mtime().ok();
                self.write_file(&path, entry, uid, gid, mode, mtime)
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                let target = target.unwrap_or_default();
                remove_existing(&path).map_err(|e| self.write_error(e))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| self.write_error(e))?;
                self.set_owner(&path, uid, gid)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                let source = self.hard_link_source(&target.unwrap_or_default())?;
                if source == path {
                    return Ok(());
                }
                remove_existing(&path).map_err(|e| self.write_error(e))?;
                fs::hard_link(&source, &path).map_err(|e| self.write_error(e))
            }
            _ => Err(refuse("unknown")),
        }
    }

    /// The path's components, refusing absolute paths and `..`. Empty and
    /// `.` components are dropped.
    fn components<'p>(&self, raw: &'p [u8]) -> Result<Vec<&'p OsStr>, UnpackError> {
        if raw.first() == Some(&b'/') {
            return Err(UnpackError::AbsolutePath {
                entry: self.entry.to_owned(),
            });
        }
        let mut parts = Vec::new();
        for part in raw.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    return Err(UnpackError::ParentDir {
                        entry: self.entry.to_owned(),
                    });
                }
                _ => parts.push(OsStr::from_bytes(part)),
            }
        }
        Ok(parts)
    }

    /// Creates the missing directories of `parts` under the layer root, one
    /// at a time, refusing symlinks and non-directories on the way; returns
    /// the last one's path. A created directory is 0755, owned by root.
    fn make_parents(&self, parts: &[&OsStr]) -> Result<PathBuf, UnpackError> {
        let mut path = self.dest.to_path_buf();
        let mut inside = PathBuf::new();
        for part in parts {
            path.push(part);
            inside.push(part);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(UnpackError::SymlinkInPath {
                        entry: self.entry.to_owned(),
                        component: inside,
                    });
                }
                Ok(_) => {
                    return Err(UnpackError::NotADirectory {
                        entry: self.entry.to_owned(),
                        component: inside,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(|e| self.write_error(e))?;
                    self.set_owner_and_mode(&path, 0, 0, 0o755)?;
                }
                Err(e) => return Err(self.write_error(e)),
            }
        }
        Ok(path)
    }

    /// Where the hard link's target is: a regular file already unpacked in
    /// this layer, reached through directories only.
    fn hard_link_source(&self, target: &[u8]) -> Result<PathBuf, UnpackError> {
        let refuse = || UnpackError::HardLinkTarget {
            entry: self.entry.to_owned(),
            target: PathBuf::from(OsStr::from_bytes(target)),
        };
        let parts = self.components(target).map_err(|_| refuse())?;
        if parts.is_empty() {
            return Err(refuse());
        }
        let mut path = self.dest.to_path_buf();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            let meta = fs::symlink_metadata(&path).map_err(|_| refuse())?;
            let last = i + 1 == parts.len();
            if (last && !meta.is_file()) || (!last && !meta.is_dir()) {
                return Err(refuse());
            }
        }
        Ok(path)
    }

    fn write_file(
        &self,
        path: &Path,
        content: &mut impl Read,
        uid: u64,
        gid: u64,
        mode: u32,
        mtime: Option<u64>,
    ) -> Result<(), UnpackError> {
        let write = |e| self.write_error(e);
        remove_existing(path).map_err(write)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(write)?;
        io::copy(content, &mut file).map_err(write)?;
        let (uid, gid) = self.shifted(uid, gid)?;
        // chown before chmod: chown clears the setuid and setgid bits.
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(write)?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(write)?;
        if let Some(mtime) =
            mtime.and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        {
            file.set_modified(mtime).map_err(write)?;
        }
        Ok(())
    }

    /// Owner and mode of a directory that was checked not to be a symlink.
    fn set_owner_and_mode(
        &self,
        path: &Path,
        uid: u64,
        gid: u64,
        mode: u32,
    ) -> Result<(), UnpackError> {
        self.set_owner(path, uid, gid)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| self.write_error(e))
    }

    /// Shifted ownership, without following a symlink at `path`.
    fn set_owner(&self, path: &Path, uid: u64, gid: u64) -> Result<(), UnpackError> {
        let (uid, gid) = self.shifted(uid, gid)?;
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| self.write_error(e))
    }

    fn shifted(&self, uid: u64, gid: u64) -> Result<(u32, u32), UnpackError> {
        let shift = |id: u64, offset: u32| {
            u32::try_from(id)
                .ok()
                .and_then(|id| id.checked_add(offset))
                .filter(|&id| id != u32::MAX)
        };
        match (
            shift(uid, self.options.uid_offset),
            shift(gid, self.options.gid_offset),
        ) {
            (Some(uid), Some(gid)) => Ok((uid, gid)),
            _ => Err(UnpackError::Owner {
                entry: self.entry.to_owned(),
                uid,
                gid,
            }),
        }
    }

    fn over_limit(&self, limit: OverLimit) -> UnpackError {
        UnpackError::OverLimit {
            entry: self.entry.to_owned(),
            limit,
        }
    }

    fn write_error(&self, source: io::Error) -> UnpackError {
        UnpackError::Write {
            entry: self.entry.to_owned(),
            source: IoCause(source),
        }
    }
}

/// Removes whatever is at `path` (a later entry replaces an earlier one of
/// the same name), without following a symlink there.
pub(crate) fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::*;
    use crate::image::limits::ImportLimits;

    /// Appends an entry whose name and link name are written into the header
    /// as raw bytes, bypassing the `tar` crate's path checks.
    pub(crate) fn raw_entry(
        tar: &mut tar::Builder<Vec<u8>>,
        kind: EntryType,
        name: &str,
        link: &str,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        let old = header.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        tar.append(&header, data).unwrap();
    }

    /// A raw entry: type, name, link name, content.
    pub(crate) type RawEntry<'a> = (EntryType, &'a str, &'a str, &'a [u8]);

    /// A tar archive of raw entries.
    pub(crate) fn archive(entries: &[RawEntry<'_>]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (kind, name, link, data) in entries {
            raw_entry(&mut tar, *kind, name, link, data);
        }
        tar.into_inner().unwrap()
    }

    /// A budget no test layer reaches.
    pub(crate) fn unlimited() -> Budget {
        Budget::new(ImportLimits {
            max_bytes: u64::MAX,
            max_entries: u64::MAX,
        })
    }

    /// A tar holding one GNU sparse file `name` that is all hole: `size`
    /// bytes of zeros when read, none of them in the archive (as GNU tar
    /// writes such a file: one map entry at the end, of length 0).
    pub(crate) fn sparse_archive(name: &str, size: u64) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::GNUSparse);
        header.set_path(name).unwrap();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.set_real_size(size);
        gnu.sparse[0].set_offset(size);
        gnu.sparse[0].set_length(0);
        header.set_cksum();
        let mut tar = tar::Builder::new(Vec::new());
        tar.append(&header, &[][..]).unwrap();
        tar.into_inner().unwrap()
    }

    /// A scratch directory holding the layer dir `layer` and a sibling
    /// `outside` that must stay empty, four directories deep so that a
    /// `..` chain in a test could not reach past the scratch directory.
    struct Scratch {
        dir: tempfile::TempDir,
    }

    const DEPTH: &str = "d/d/d/d";
    const VICTIM: &[u8] = b"the host's file";

    impl Scratch {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join(DEPTH).join("layer")).unwrap();
            fs::create_dir(dir.path().join(DEPTH).join("outside")).unwrap();
            Scratch { dir }
        }
        /// With a file and a directory in `outside` that hostile entries aim
        /// at ([`Scratch::assert_victims_untouched`]).
        fn with_victims() -> Self {
            let scratch = Scratch::new();
            let outside = scratch.outside();
            fs::write(outside.join("victim"), VICTIM).unwrap();
            fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o640)).unwrap();
            fs::create_dir(outside.join("vdir")).unwrap();
            scratch
        }
        /// The victims are as [`Scratch::with_victims`] made them: not
        /// written, linked, chowned, chmodded, replaced or made opaque.
        fn assert_victims_untouched(&self) -> Result<(), TestCaseError> {
            let outside = self.outside();
            let victim = fs::symlink_metadata(outside.join("victim")).unwrap();
            prop_assert!(victim.is_file());
            prop_assert_eq!(fs::read(outside.join("victim")).unwrap(), VICTIM);
            prop_assert_eq!(victim.nlink(), 1, "a hard link to the victim");
            prop_assert_eq!(victim.mode() & 0o7777, 0o640);
            let me = (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            );
            prop_assert_eq!((victim.uid(), victim.gid()), me);
            let vdir = fs::symlink_metadata(outside.join("vdir")).unwrap();
            prop_assert!(vdir.is_dir());
            prop_assert_eq!((vdir.uid(), vdir.gid()), me);
            prop_assert_eq!(fs::read_dir(outside.join("vdir")).unwrap().count(), 0);
            prop_assert_eq!(
                xattr::get(outside.join("vdir"), sys::OPAQUE_XATTR).unwrap(),
                None
            );
            Ok(())
        }
        fn layer(&self) -> PathBuf {
            self.dir.path().join(DEPTH).join("layer")
        }
        fn outside(&self) -> PathBuf {
            self.dir.path().join(DEPTH).join("outside")
        }
        fn unpack(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
            unpack(tar, &self.layer(), &UnpackOptions::default(), &unlimited())
        }
        /// Everything in the scratch directory but the layer's content is
        /// what `new` made.
        fn assert_nothing_outside(&self) {
            let mut found = Vec::new();
            let mut dirs = vec![self.dir.path().to_owned()];
            while let Some(dir) = dirs.pop() {
                for entry in fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path == self.layer() {
                        continue;
                    }
                    if fs::symlink_metadata(&path).unwrap().is_dir() {
                        dirs.push(path.clone());
                    }
                    found.push(path.strip_prefix(self.dir.path()).unwrap().to_owned());
                }
            }
            found.sort();
            let mut expected: Vec<PathBuf> = ["d", "d/d", "d/d/d", "d/d/d/d", "d/d/d/d/outside"]
                .map(PathBuf::from)
                .into();
            if self.outside().join("victim").exists() {
                expected.push("d/d/d/d/outside/vdir".into());
                expected.push("d/d/d/d/outside/victim".into());
            }
            assert_eq!(found, expected);
        }
    }

    use EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};

    #[test]
    fn unpacks_files_dirs_links_with_shifted_owners_and_modes() {
        let scratch = Scratch::new();
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(&mut tar, Directory, "./", "", b"");
        raw_entry(&mut tar, Directory, "./usr/", "", b"");
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o4755);
        header.set_uid(1000);
        header.set_gid(1001);
        header.set_mtime(1_600_000_000);
        tar.append_data(&mut header, "usr/bin/tool", &b"hello"[..])
            .unwrap();
        raw_entry(&mut tar, Symlink, "usr/abs", "/etc/passwd", b"");
        raw_entry(&mut tar, Link, "usr/hard", "usr/bin/tool", b"");
        let tar = tar.into_inner().unwrap();
        let options = UnpackOptions {
            uid_offset: 100_000,
            gid_offset: 200_000,
        };
        let stats = unpack(&tar[..], &scratch.layer(), &options, &unlimited()).unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                bytes: 5,
                entries: 5
            }
        );

        let layer = scratch.layer();
        let tool = fs::metadata(layer.join("usr/bin/tool")).unwrap();
        assert_eq!(fs::read(layer.join("usr/bin/tool")).unwrap(), b"hello");
        assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!((tool.uid(), tool.gid()), (101_000, 201_001));
        assert_eq!(tool.mtime(), 1_600_000_000);
        assert_eq!(tool.nlink(), 2);
        // The implicit parent `usr/bin` belongs to the container's root.
        let bin = fs::metadata(layer.join("usr/bin")).unwrap();
        assert_eq!(
            (bin.uid(), bin.gid(), bin.mode() & 0o7777),
            (100_000, 200_000, 0o755)
        );
        let root = fs::metadata(&layer).unwrap();
        assert_eq!((root.uid(), root.gid()), (100_000, 200_000));
        let link = fs::symlink_metadata(layer.join("usr/abs")).unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!((link.uid(), link.gid()), (100_000, 200_000));
        assert_eq!(
            fs::read_link(layer.join("usr/abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        scratch.assert_nothing_outside();
    }

    #[test]
    fn hostile_entries_are_refused_by_name_and_write_nothing_outside() {
        let scratch = Scratch::new();
        let outside = scratch.outside();
        // `link -> /`, then a path through it that names `outside`.
        let through_root = format!("link{}/passwd", outside.display());
        let entry = |s: &str| PathBuf::from(s);
        let cases: Vec<(Vec<RawEntry<'_>>, UnpackError)> = vec![
            (
                vec![(Regular, "../escape", "", b"x")],
                UnpackError::ParentDir {
                    entry: entry("../escape"),
                },
            ),
            (
                vec![(Regular, "/abs", "", b"x")],
                UnpackError::AbsolutePath {
                    entry: entry("/abs"),
                },
            ),
            (
                vec![(Regular, "a/../../x", "", b"x")],
                UnpackError::ParentDir {
                    entry: entry("a/../../x"),
                },
            ),
            (
                vec![
                    (Symlink, "link", "/", b""),
                    (Regular, through_root.as_str(), "", b"x"),
                ],
                UnpackError::SymlinkInPath {
                    entry: entry(&through_root),
                    component: entry("link"),
                },
            ),
            (
                vec![(Link, "hard", "../../outside", b"")],
                UnpackError::HardLinkTarget {
                    entry: entry("hard"),
                    target: entry("../../outside"),
                },
            ),
            (
                vec![
                    (Symlink, "out", "/etc/passwd", b""),
                    (Link, "hard", "out", b""),
                ],
                UnpackError::HardLinkTarget {
                    entry: entry("hard"),
                    target: entry("out"),
                },
            ),
            (
                vec![(Char, "dev/null", "", b"")],
                UnpackError::Unsupported {
                    entry: entry("dev/null"),
                    kind: "character device",
                },
            ),
            (
                vec![(Block, "dev/sda", "", b"")],
                UnpackError::Unsupported {
                    entry: entry("dev/sda"),
                    kind: "block device",
                },
            ),
            (
                vec![(Fifo, "pipe", "", b"")],
                UnpackError::Unsupported {
                    entry: entry("pipe"),
                    kind: "fifo",
                },
            ),
            (
                vec![
                    (Regular, "file", "", b"x"),
                    (Regular, "file/below", "", b"x"),
                ],
                UnpackError::NotADirectory {
                    entry: entry("file/below"),
                    component: entry("file"),
                },
            ),
            (
                vec![(Regular, "d/.wh..", "", b"")],
                UnpackError::InvalidWhiteout {
                    entry: entry("d/.wh.."),
                },
            ),
            (
                vec![(Regular, ".", "", b"x")],
                UnpackError::RootPath { entry: entry(".") },
            ),
        ];
        for (entries, expected) in cases {
            let layer = scratch.layer();
            fs::remove_dir_all(&layer).unwrap();
            fs::create_dir(&layer).unwrap();
            let err = scratch.unpack(&archive(&entries)).unwrap_err();
            assert_eq!(err, expected);
            let bad = entries.last().unwrap().1;
            assert!(err.to_string().contains(bad), "{err} names {bad}");
            scratch.assert_nothing_outside();
        }
    }

    #[test]
    fn a_later_entry_replaces_a_symlink_instead_of_writing_through_it() {
        let scratch = Scratch::new();
        let outside = scratch.outside().join("victim");
        let outside = outside.to_str().unwrap();
        let tar = archive(&[
            (Symlink, "f", outside, b""),
            (Regular, "f", "", b"mine"),
            (Symlink, "d", scratch.outside().to_str().unwrap(), b""),
            (Directory, "d", "", b""),
        ]);
        scratch.unpack(&tar).unwrap();
        assert_eq!(fs::read(scratch.layer().join("f")).unwrap(), b"mine");
        assert!(
            fs::symlink_metadata(scratch.layer().join("d"))
                .unwrap()
                .is_dir()
        );
        scratch.assert_nothing_outside();
    }

    #[test]
    fn whiteouts_become_overlayfs_whiteouts() {
        let scratch = Scratch::new();
        let tar = archive(&[
            (Regular, "etc/.wh.gone", "", b""),
            (Directory, "var/", "", b""),
            (Regular, "var/.wh..wh..opq", "", b""),
        ]);
        scratch.unpack(&tar).unwrap();
        let layer = scratch.layer();
        let gone = fs::symlink_metadata(layer.join("etc/gone")).unwrap();
        assert!(gone.file_type().is_char_device());
        assert_eq!(gone.rdev(), 0);
        assert!(!layer.join("etc/.wh.gone").exists());
        assert_eq!(
            xattr::get(layer.join("var"), sys::OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert!(!layer.join("var/.wh..wh..opq").exists());
    }

    #[test]
    fn sizes_and_entries_are_charged_to_the_budget() {
        let tar = archive(&[(Regular, "a", "", b"1234"), (Regular, "b", "", b"5678")]);
        let options = UnpackOptions::default();
        let limited = |max_bytes, max_entries| {
            Budget::new(ImportLimits {
                max_bytes,
                max_entries,
            })
        };
        let scratch = Scratch::new();
        assert_eq!(
            unpack(&tar[..], &scratch.layer(), &options, &limited(6, 10)).unwrap_err(),
            UnpackError::OverLimit {
                entry: PathBuf::from("b"),
                limit: OverLimit::Bytes { limit: 6 }
            }
        );
        assert!(
            !scratch.layer().join("b").exists(),
            "refused before writing"
        );
        let scratch = Scratch::new();
        assert_eq!(
            unpack(&tar[..], &scratch.layer(), &options, &limited(100, 1)).unwrap_err(),
            UnpackError::OverLimit {
                entry: PathBuf::from("b"),
                limit: OverLimit::Entries { limit: 1 }
            }
        );
        // One budget spans layers: what one spent, the next cannot.
        let shared = limited(12, 10);
        let scratch = Scratch::new();
        unpack(&tar[..], &scratch.layer(), &options, &shared).unwrap();
        assert_eq!(shared.spent(), (8, 2));
        let again = Scratch::new();
        assert!(matches!(
            unpack(&tar[..], &again.layer(), &options, &shared),
            Err(UnpackError::OverLimit {
                limit: OverLimit::Bytes { limit: 12 },
                ..
            })
        ));
    }

    #[test]
    fn a_sparse_file_is_charged_at_its_full_length() {
        let scratch = Scratch::new();
        let tar = sparse_archive("zero", 1 << 40);
        let budget = Budget::new(ImportLimits {
            max_bytes: 1 << 20,
            max_entries: 10,
        });
        let err = unpack(
            &tar[..],
            &scratch.layer(),
            &UnpackOptions::default(),
            &budget,
        )
        .unwrap_err();
        assert_eq!(
            err,
            UnpackError::OverLimit {
                entry: PathBuf::from("zero"),
                limit: OverLimit::Bytes { limit: 1 << 20 }
            }
        );
        assert!(!scratch.layer().join("zero").exists());
    }

    /// Appends a GNU long-name (`L`) and long-link (`K`) record before the
    /// header, so that `name` and `link` may be any length and any bytes.
    fn long_entry(
        tar: &mut tar::Builder<Vec<u8>>,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        data: &[u8],
    ) {
        for (record, value) in [
            (EntryType::GNULongName, name),
            (EntryType::GNULongLink, link),
        ] {
            if value.is_empty() {
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(record);
            let old = header.as_old_mut();
            old.name[..13].copy_from_slice(b"././@LongLink");
            let mut value = value.to_vec();
            value.push(0);
            header.set_size(value.len() as u64);
            header.set_cksum();
            tar.append(&header, &value[..]).unwrap();
        }
        raw_entry(tar, kind, "placeholder", "", data);
    }

    /// Appends a PAX extended header setting `path` and `linkpath` for the
    /// entry after it.
    fn pax_entry(
        tar: &mut tar::Builder<Vec<u8>>,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        data: &[u8],
    ) {
        let mut records = Vec::new();
        for (key, value) in [(&b"path"[..], name), (b"linkpath", link)] {
            // "<len> <key>=<value>\n", the length counting itself.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while (rest + len.to_string().len()) != len {
                len = rest + len.to_string().len();
            }
            records.extend_from_slice(format!("{len} ").as_bytes());
            records.extend_from_slice(key);
            records.push(b'=');
            records.extend_from_slice(value);
            records.push(b'\n');
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_size(records.len() as u64);
        header.set_cksum();
        tar.append(&header, &records[..]).unwrap();
        raw_entry(tar, kind, "placeholder", "", data);
    }

    /// A path component a hostile layer might use.
    fn arb_component() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "a", "b", "..", ".", "", "link", "out", ".wh.a", ".wh..", ".wh...",
                ".wh..wh..opq", ".wh.victim", ".wh.vdir", "victim", "vdir",
            ])
            .prop_map(str::to_owned),
            1 => "[a-z]{90,130}",
            1 => "\\PC{1,6}",
        ]
    }

    /// A path: components joined, maybe absolute or naming `outside`'s
    /// victims through enough `..`.
    fn arb_hostile_path() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::collection::vec(arb_component(), 1..6).prop_map(|p| p.join("/")),
            1 => prop::sample::select(vec![
                "../outside/victim",
                "../outside/vdir/x",
                "../outside/.wh.victim",
                "../outside/vdir/.wh..wh..opq",
                "a/../../outside/victim",
            ])
            .prop_map(str::to_owned),
            1 => prop::collection::vec(arb_component(), 0..3)
                .prop_map(|p| format!("/{}", p.join("/"))),
        ]
    }

    /// How an entry's name reaches the header.
    #[derive(Debug, Clone, Copy)]
    enum Encoding {
        Plain,
        GnuLong,
        Pax,
    }

    fn arb_hostile_entry() -> impl Strategy<Value = (EntryType, String, String, Encoding)> {
        let kind = prop::sample::select(vec![
            Regular, Regular, Directory, Symlink, Symlink, Link, Link, Char, Block, Fifo,
        ]);
        let encoding =
            prop::sample::select(vec![Encoding::Plain, Encoding::GnuLong, Encoding::Pax]);
        (kind, arb_hostile_path(), arb_hostile_path(), encoding)
    }

    /// Builds a layer of hostile entries; an absolute link target is moved
    /// under `outside`, so that a bug that followed one would still only
    /// touch the scratch directory.
    fn hostile_layer(
        scratch: &Scratch,
        entries: &[(EntryType, String, String, Encoding)],
    ) -> Vec<u8> {
        let outside = scratch.outside();
        let mut tar = tar::Builder::new(Vec::new());
        for (kind, name, link, encoding) in entries {
            let link = match link.strip_prefix('/') {
                Some(rest) => format!("{}/{rest}", outside.display()),
                None => link.clone(),
            };
            let fits = name.len() < 100 && link.len() < 100;
            match encoding {
                Encoding::Plain if fits => raw_entry(&mut tar, *kind, name, &link, b"x"),
                Encoding::Plain | Encoding::GnuLong => {
                    long_entry(&mut tar, *kind, name.as_bytes(), link.as_bytes(), b"x")
                }
                Encoding::Pax => pax_entry(&mut tar, *kind, name.as_bytes(), link.as_bytes(), b"x"),
            }
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn long_and_pax_names_are_the_names_checked() {
        let scratch = Scratch::with_victims();
        let long = format!("{}/file", "x".repeat(150));
        let mut tar = tar::Builder::new(Vec::new());
        long_entry(&mut tar, Regular, long.as_bytes(), b"", b"long");
        pax_entry(&mut tar, Regular, b"pax/name", b"", b"pax");
        pax_entry(&mut tar, Symlink, b"pax/link", long.as_bytes(), b"");
        scratch.unpack(&tar.into_inner().unwrap()).unwrap();
        let layer = scratch.layer();
        assert_eq!(fs::read(layer.join(&long)).unwrap(), b"long");
        assert_eq!(fs::read(layer.join("pax/name")).unwrap(), b"pax");
        assert_eq!(
            fs::read_link(layer.join("pax/link")).unwrap(),
            Path::new(&long)
        );
        for (encode, name) in [
            (
                long_entry as fn(&mut _, _, &[u8], &[u8], &[u8]),
                "../outside/victim",
            ),
            (pax_entry, "a/../../outside/victim"),
        ] {
            let mut tar = tar::Builder::new(Vec::new());
            encode(&mut tar, Regular, name.as_bytes(), b"", b"x");
            let err = scratch.unpack(&tar.into_inner().unwrap()).unwrap_err();
            assert_eq!(err, UnpackError::ParentDir { entry: name.into() });
        }
        scratch.assert_nothing_outside();
    }

    fn arb_path() -> impl Strategy<Value = String> {
        let part = prop::sample::select(vec!["a", "b", "..", ".", "", "link", "/", ".wh.a"]);
        prop::collection::vec(part, 1..5).prop_map(|parts| parts.join("/"))
    }

    fn arb_entry() -> impl Strategy<Value = (EntryType, String, String)> {
        let kind = prop::sample::select(vec![Regular, Directory, Symlink, Link]);
        let link = prop_oneof![
            Just("..".to_owned()),
            Just("../outside".to_owned()),
            arb_path(),
        ];
        (kind, arb_path(), link)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_entries_never_escape_the_layer(
            entries in prop::collection::vec(arb_entry(), 1..8),
        ) {
            let scratch = Scratch::new();
            // Absolute link targets point into `outside`, never at the host's
            // own files, even if a bug followed them.
            let outside = scratch.outside();
            let entries: Vec<(EntryType, String, String)> = entries
                .into_iter()
                .map(|(kind, name, link)| match link.strip_prefix('/') {
                    Some(rest) => (kind, name, format!("{}/{rest}", outside.display())),
                    None => (kind, name, link),
                })
                .collect();
            let entries: Vec<RawEntry<'_>> = entries
                .iter()
                .map(|(kind, name, link)| (*kind, name.as_str(), link.as_str(), &b"x"[..]))
                .collect();
            let _ = scratch.unpack(&archive(&entries));
            scratch.assert_nothing_outside();
        }

        #[test]
        fn hostile_layers_never_reach_outside(
            entries in prop::collection::vec(arb_hostile_entry(), 1..10),
        ) {
            let scratch = Scratch::with_victims();
            let tar = hostile_layer(&scratch, &entries);
            if let Err(e) = scratch.unpack(&tar) {
                prop_assert!(!e.to_string().is_empty());
            }
            scratch.assert_nothing_outside();
            scratch.assert_victims_untouched()?;
            // Whatever landed is plain: no device but a whiteout, nothing
            // that climbs out through a `..` name.
            let mut dirs = vec![scratch.layer()];
            while let Some(dir) = dirs.pop() {
                for entry in fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    let meta = fs::symlink_metadata(&path).unwrap();
                    let kind = meta.file_type();
                    prop_assert!(!kind.is_block_device() && !kind.is_fifo() && !kind.is_socket());
                    if kind.is_char_device() {
                        prop_assert_eq!(meta.rdev(), 0, "only whiteouts: {}", path.display());
                    }
                    if kind.is_dir() {
                        dirs.push(path);
                    }
                }
            }
        }

        #[test]
        fn any_byte_stream_is_unpacked_or_refused(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            entries in prop::collection::vec(arb_hostile_entry(), 1..4),
            at in any::<prop::sample::Index>(),
            byte: u8,
            cut in any::<prop::sample::Index>(),
        ) {
            let scratch = Scratch::with_victims();
            let _ = scratch.unpack(&bytes);
            // A hostile layer damaged by one byte, and cut short.
            let mut tar = hostile_layer(&scratch, &entries);
            let i = at.index(tar.len());
            tar[i] = byte;
            for layer in [&tar[..], &tar[..cut.index(tar.len())]] {
                fs::remove_dir_all(scratch.layer()).unwrap();
                fs::create_dir(scratch.layer()).unwrap();
                let _ = scratch.unpack(layer);
                scratch.assert_nothing_outside();
                scratch.assert_victims_untouched()?;
            }
        }
    }
}
