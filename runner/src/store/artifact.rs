//! Content-addressed artifact store: uploaded blobs live under
//! `<root>/sha256/<hex>`, named by the sha256 of their bytes, written once
//! through a temporary file, fsynced and renamed ([`super::durable`]), so a
//! crash mid-upload never leaves a blob under a name that does not match its
//! content.
//!
//! Derived files (wasmtime's precompiled code) live beside them under
//! `<root>/compiled/`, keyed by the blob digest and the engine's
//! compatibility hash so an upgraded wasmtime recompiles instead of loading
//! stale code.
//!
//! [`ArtifactStore::prune`] removes the artifacts its caller does not name
//! and that were stored before a cutoff (a fresh upload is about to be
//! deployed), with the code compiled from them. An upload of bytes already
//! stored renames a fresh copy over the old one, so it restarts the clock.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Removed, disk_usage};
use crate::spec::Digest;
use crate::store::durable;

/// Default cap on one uploaded artifact.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

/// Why an upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("artifact is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("artifact is empty")]
    Empty,
    #[error("reading the upload failed: {0}")]
    Body(String),
    #[error("writing artifact to {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the artifact's digest is {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
}

/// Why pruning the store failed (what was removed before stays removed).
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("pruning the artifact store at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn prune_error(path: &Path) -> impl FnOnce(io::Error) -> PruneError + use<> {
    let path = path.to_owned();
    move |source| PruneError::Io { path, source }
}

impl ArtifactStore {
    /// Opens (and creates) the store under `root`, removing uploads that a
    /// crashed server left half-written.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for dir in ["sha256", "compiled", "tmp"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(ArtifactStore { root })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where derived data for `digest` goes, e.g. `compiled_path(d, "abc.cwasm")`.
    pub fn compiled_path(&self, digest: &Digest, suffix: &str) -> PathBuf {
        self.root
            .join("compiled")
            .join(format!("{}-{suffix}", digest.hex()))
    }

    /// A fresh temporary path inside the store (same filesystem as the blobs).
    pub fn temp_path(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    /// Streams `body` into the store, hashing as it goes; returns its digest.
    pub async fn put_stream<S, E>(&self, body: S, limit: u64) -> Result<Digest, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.put_verified(body, limit, None).await
    }

    /// As [`ArtifactStore::put_stream`], but keeps the artifact only if its
    /// digest is `expected` (when given).
    pub async fn put_verified<S, E>(
        &self,
        mut body: S,
        limit: u64,
        expected: Option<&Digest>,
    ) -> Result<Digest, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = self.temp_path();
        let io_err = |source| UploadError::Io {
            path: tmp.clone(),
            source,
        };
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                written += chunk.len() as u64;
                if written > limit {
                    return Err(UploadError::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io_err)?;
            }
            if written == 0 {
                return Err(UploadError::Empty);
            }
            file.flush().await.map_err(io_err)?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let digest = Digest::from_sha256(&hasher.finalize());
        if let Some(expected) = expected.filter(|e| **e != digest) {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(UploadError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        let dest = self.blob_path(&digest);
        let file = file.into_std().await;
        let placed = {
            let (tmp, dest) = (tmp.clone(), dest.clone());
            tokio::task::spawn_blocking(move || durable::persist(file, &tmp, &dest)).await
        };
        match placed {
            Ok(Ok(())) => Ok(digest),
            Ok(Err(source)) => Err(UploadError::Io { path: dest, source }),
            Err(join) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(UploadError::Io {
                    path: dest,
                    source: io::Error::other(join),
                })
            }
        }
    }

    /// Stores `bytes`; returns their digest.
    pub async fn put(&self, bytes: Bytes) -> Result<Digest, UploadError> {
        let limit = bytes.len() as u64;
        self.put_stream(
            futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]),
            limit,
        )
        .await
    }

    /// Removes every artifact that is neither in `keep` nor stored after
    /// `cutoff`, with the code compiled from it, and compiled code whose
    /// artifact is gone; returns them by digest, each with the space it
    /// held (blob and compiled code together). With `dry_run`, only says
    /// what it would remove. Blocks.
    pub fn prune(
        &self,
        keep: &HashSet<Digest>,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<Vec<Removed>, PruneError> {
        let remove = |path: &Path| -> Result<u64, PruneError> {
            let bytes = disk_usage(path).map_err(prune_error(path))?;
            if !dry_run {
                std::fs::remove_file(path).map_err(prune_error(path))?;
            }
            Ok(bytes)
        };
        let mut removed: BTreeMap<String, u64> = BTreeMap::new();
        let mut kept = HashSet::new();
        let blobs = self.root.join("sha256");
        for entry in std::fs::read_dir(&blobs).map_err(prune_error(&blobs))? {
            let path = entry.map_err(prune_error(&blobs))?.path();
            let hex = file_name(&path);
            let named = Digest::parse(&format!("sha256:{hex}")).is_ok_and(|d| keep.contains(&d));
            let stored = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(prune_error(&path))?;
            if named || stored > cutoff {
                kept.insert(hex);
            } else {
                removed.insert(hex, remove(&path)?);
            }
        }
        let compiled = self.root.join("compiled");
        for entry in std::fs::read_dir(&compiled).map_err(prune_error(&compiled))? {
            let path = entry.map_err(prune_error(&compiled))?.path();
            let name = file_name(&path);
            let hex = name.split_once('-').map_or(name.as_str(), |(hex, _)| hex);
            if !kept.contains(hex) {
                let bytes = remove(&path)?;
                *removed.entry(hex.to_owned()).or_default() += bytes;
            }
        }
        Ok(removed
            .into_iter()
            .map(|(hex, bytes)| Removed {
                digest: format!("sha256:{hex}"),
                bytes,
            })
            .collect())
    }

    /// Writes derived data atomically and durably (temporary file, fsync,
    /// rename, fsync of the directory).
    pub fn write_compiled(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        durable::write_atomically(path, &self.temp_path(), bytes)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prune_keeps_what_is_named_or_recent_and_takes_compiled_code_along() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let used = store.put(Bytes::from_static(b"used")).await.unwrap();
        let unused = store.put(Bytes::from_static(b"unused")).await.unwrap();
        for digest in [&used, &unused] {
            store
                .write_compiled(&store.compiled_path(digest, "engine.cwasm"), b"code")
                .unwrap();
        }
        let orphan = Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
        store
            .write_compiled(&store.compiled_path(&orphan, "engine.cwasm"), b"code")
            .unwrap();
        let keep = HashSet::from([used.clone()]);

        // Stored after the cutoff: kept, named or not (the orphan goes).
        let before = SystemTime::now() - std::time::Duration::from_secs(60);
        let removed = store.prune(&keep, before, false).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].digest, orphan.as_str());
        assert!(store.contains(&unused));

        let after = SystemTime::now() + std::time::Duration::from_secs(1);
        let planned = store.prune(&keep, after, true).unwrap();
        assert!(store.contains(&unused), "a dry run removes nothing");
        let removed = store.prune(&keep, after, false).unwrap();
        assert_eq!(removed, planned);
        let [gone] = &removed[..] else {
            panic!("{removed:?}")
        };
        assert_eq!(gone.digest, unused.as_str());
        assert!(gone.bytes > 0);
        assert!(!store.contains(&unused));
        assert!(!store.compiled_path(&unused, "engine.cwasm").exists());
        assert!(store.contains(&used));
        assert!(store.compiled_path(&used, "engine.cwasm").exists());
    }

    #[tokio::test]
    async fn put_hashes_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let d1 = store.put(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(
            d1.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let d2 = store.put(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(d1, d2);
        assert_eq!(std::fs::read(store.blob_path(&d1)).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn oversized_and_empty_uploads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let chunks = futures::stream::iter([
            Ok::<_, std::convert::Infallible>(Bytes::from_static(b"1234")),
            Ok(Bytes::from_static(b"5678")),
        ]);
        let err = store.put_stream(chunks, 5).await.unwrap_err();
        assert!(matches!(err, UploadError::TooLarge { limit: 5 }));
        assert!(matches!(
            store.put(Bytes::new()).await.unwrap_err(),
            UploadError::Empty
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    /// Issue 11, finding 17: compiled code was written and renamed without
    /// a sync, and a failed rename left its temporary file in `tmp/`.
    #[test]
    fn compiled_code_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let digest = Digest::from_sha256(&[7; 32]);
        let code: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let path = store.compiled_path(&digest, "abc.cwasm");
        store.write_compiled(&path, &code).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), code);
        // The final name is taken by a directory: the rename fails.
        let taken = store.compiled_path(&digest, "taken.cwasm");
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("x"), b"x").unwrap();
        assert!(store.write_compiled(&taken, &code).is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "no temporary file is left behind"
        );
    }
}
