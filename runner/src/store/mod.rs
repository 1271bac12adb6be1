//! What wisp keeps on disk beside the request path: uploaded artifacts by
//! content address ([`artifact`]) and handlers' output per function
//! ([`logs`]); [`durable`] puts a file in place so that it survives a
//! crash whole or not at all. The OCI image store, which the container
//! backend reads from, is [`crate::image`]. Both content-addressed stores
//! report what a prune removes as [`Removed`] entries, measured by
//! [`disk_usage`].

pub mod artifact;
pub mod durable;
pub mod logs;

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One thing a prune removed (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// What names it: `sha256:<hex>` (an artifact, a blob, an image's
    /// manifest, a layer's diff id).
    pub digest: String,
    /// Disk space it held, in bytes (allocated blocks).
    pub bytes: u64,
}

/// The disk space `path` holds: its allocated blocks, and for a directory
/// everything below it (symlinks not followed, hard links counted once).
pub fn disk_usage(path: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut pending = vec![path.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_a_tree_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/file"), vec![1u8; 64 * 1024]).unwrap();
        let one = disk_usage(&root.join("sub/file")).unwrap();
        assert!(one >= 64 * 1024, "{one}");
        let before = disk_usage(&root).unwrap();
        assert!(before > one);
        std::fs::hard_link(root.join("sub/file"), root.join("again")).unwrap();
        std::os::unix::fs::symlink("/", root.join("link")).unwrap();
        let after = disk_usage(&root).unwrap();
        assert!(after - before < 4096, "{before} → {after}");
    }
}
