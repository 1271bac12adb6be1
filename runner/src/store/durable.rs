//! Putting a file in place so that after a crash its name holds either the
//! whole new content or nothing new: the content goes to a temporary file
//! on the same file system, the file is `fsync`ed, renamed over its final
//! name, and the directory holding that name is `fsync`ed. Without the
//! first sync a journaling file system may keep the rename but not the
//! data (an empty or partial file under the final name); without the last
//! the rename itself may be lost. Every write-then-rename of wisp's stores
//! (artifacts, compiled code, image records) goes through here.
//!
//! Limits: the temporary file's directory is the caller's (a store's
//! `tmp/`, which it empties at start); a failed call removes the temporary
//! file but not a file already renamed into place whose directory could
//! not be synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` through the temporary file `tmp` (which must
/// not exist, on the same file system), durably.
pub fn write_atomically(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
    if let Err(e) = file.write_all(bytes) {
        drop(file);
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    persist(file, tmp, path)
}

/// Puts the temporary file `tmp`, fully written through `file`, in place
/// at `path`, durably: syncs it, renames it, syncs `path`'s directory.
/// On failure `tmp` is removed.
pub fn persist(file: File, tmp: &Path, path: &Path) -> io::Result<()> {
    let moved = file.sync_all().and_then(|()| {
        drop(file);
        fs::rename(tmp, path)
    });
    if let Err(e) = moved {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Syncs the directory `dir`, so that the names renamed into it stay after
/// a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Syncs the directory that holds `path`.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_arrives_whole_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tmp) = (dir.path().join("record"), dir.path().join("tmp-1"));
        let bytes: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        write_atomically(&path, &tmp, &bytes).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert!(!tmp.exists());
        // Again over the old content.
        write_atomically(&path, &tmp, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_failure_leaves_no_temporary_file_and_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp-1");
        // The final name is a directory that is not empty: rename fails.
        let taken = dir.path().join("taken");
        fs::create_dir(&taken).unwrap();
        fs::write(taken.join("inside"), b"old").unwrap();
        assert!(write_atomically(&taken, &tmp, b"new").is_err());
        assert!(!tmp.exists());
        assert_eq!(fs::read(taken.join("inside")).unwrap(), b"old");
        // The final name's directory does not exist.
        let nowhere = dir.path().join("no/such/dir/record");
        assert!(write_atomically(&nowhere, &tmp, b"new").is_err());
        assert!(!tmp.exists());
        // The temporary file cannot be made: nothing is touched.
        let path = dir.path().join("record");
        let err = write_atomically(&path, &dir.path().join("no/tmp"), b"new");
        assert!(err.is_err());
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only `taken`");
        // A temporary name in use is someone else's: left alone.
        fs::write(&tmp, b"theirs").unwrap();
        assert!(write_atomically(&path, &tmp, b"new").is_err());
        assert_eq!(fs::read(&tmp).unwrap(), b"theirs");
        assert!(!path.exists());
    }

    #[test]
    fn persist_moves_a_streamed_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tmp) = (dir.path().join("blob"), dir.path().join("tmp-2"));
        let mut file = File::create_new(&tmp).unwrap();
        for chunk in [&b"one "[..], b"two ", b"three"] {
            file.write_all(chunk).unwrap();
        }
        persist(file, &tmp, &path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one two three");
        assert!(!tmp.exists());
    }
}
