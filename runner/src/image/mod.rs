//! The image store: OCI images imported from layout directories, OCI
//! archives and `docker save` tarballs ([`ImageStore::import`]), kept by
//! content address under one root, with each layer unpacked once.
//!
//! ```text
//! <root>/blobs/sha256/<hex>         manifests, configs and layers as shipped
//! <root>/layers/<diff id hex>/diff  an unpacked layer: an overlayfs lower dir
//! <root>/layers/<diff id hex>/complete   written last: the layer is whole
//! <root>/images/<manifest hex>.json the image: its config and its layers
//! <root>/names.json                 local names: `registry/repo:tag` → manifest digest
//! <root>/tmp/                       staging, emptied by `open`
//! ```
//!
//! Names are what `docker images` shows as REPOSITORY and TAG: a pull by
//! tag names the image it got, an imported `docker save` archive gives its
//! `RepoTags`. A name does not keep an image from [`ImageStore::prune`]
//! (the store is a cache of registries and uploads: what no function uses
//! goes, and its names with it).
//!
//! Everything reaches its final name by a rename out of `tmp/` once the
//! whole image is verified and synced to disk, and the image's record is
//! renamed last ([`crate::store::durable`]), so a crash leaves at most
//! blobs and layers that no image references, which [`ImageStore::prune`]
//! removes. Whiteouts stay in the layers as overlayfs whiteouts: they are
//! applied when the layers are mounted, and by [`ImageTree`], which reads a
//! file of the merged layers on the host without following a link out of
//! the image.
//!
//! An import writes at most [`ImportLimits`] (bytes and entries, counted
//! while it streams). It stages, copies and unpacks without a lock, so
//! imports of one store run side by side; its commit (the renames into
//! place) and a prune take an advisory lock on `<root>/lock`, so they see
//! each other whole, even across processes.
//!
//! Limits: the API blocks (plain `std::fs`; call it from a blocking
//! thread). `open` empties `tmp/`, so one process at a time may import
//! into a store (`wisp serve` holds the registry's lock on the data dir).
//! Layers are unpacked for one uid/gid shift ([`UnpackOptions`]); a store
//! opened with another finds them unusable. The root is made 0700 because
//! unpacked layers hold setuid files, so whatever mounts the layers must
//! reach them as host root. `prune` does not know which layers are
//! mounted: its caller names every image still in use.

mod import;
pub mod limits;
pub mod pull;
mod sys;
pub mod tree;
pub mod unpack;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use import::ImportError;
pub use limits::{ImportLimits, OverLimit};
pub use tree::{ImageTree, TreeError};
pub use unpack::{UnpackError, UnpackOptions, UnpackStats};

use crate::spec::Digest;
use crate::store::{Removed, disk_usage};

/// The file of local names, under the store's root.
const NAMES: &str = "names.json";

/// A content-addressed store of images and their unpacked layers.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    unpack: UnpackOptions,
    limits: ImportLimits,
}

/// An imported image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The digest of its OCI manifest (made up from `manifest.json` for a
    /// docker archive, which has none).
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<LayerRef>,
}

/// What the image says about how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved in the rootfs.
    pub user: Option<String>,
    /// TCP ports, sorted; UDP ports are left out.
    pub exposed_ports: Vec<u16>,
}

/// One unpacked layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// sha256 of the uncompressed layer tar.
    pub diff_id: Digest,
    /// The unpacked directory, ready to be an overlayfs lower dir.
    pub path: PathBuf,
    /// Bytes of regular files in it.
    pub size: u64,
}

/// What [`ImageStore::prune`] removed (or, in a dry run, would remove),
/// each list sorted by digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Image records, by manifest digest.
    pub images: Vec<Removed>,
    /// Blobs: manifests, configs and layers as shipped.
    pub blobs: Vec<Removed>,
    /// Unpacked layers, by diff id.
    pub layers: Vec<Removed>,
}

/// Why opening, listing or pruning the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image record {path} is unreadable: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn store_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError::Io { path, source }
}

/// An image as written to `images/<manifest hex>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    manifest_digest: Digest,
    config: ImageConfig,
    /// Every blob the image needs: manifest, config and layers.
    blobs: Vec<Digest>,
    layers: Vec<LayerRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LayerRecord {
    diff_id: Digest,
    size: u64,
}

impl ImageStore {
    /// Opens (and creates) the store under `root` with the default
    /// [`UnpackOptions`], removing what a crashed import left in `tmp/`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in ["blobs/sha256", "layers", "images", "tmp"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).map_err(store_error(&dir))?;
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(store_error(&root))?;
        let store = ImageStore {
            root,
            unpack: UnpackOptions::default(),
            limits: ImportLimits::default(),
        };
        let _lock = store.lock().map_err(store_error(&store.root))?;
        let tmp = store.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(store_error(&tmp))? {
            let path = entry.map_err(store_error(&tmp))?.path();
            unpack::remove_existing(&path).map_err(store_error(&path))?;
        }
        Ok(store)
    }

    /// Unpacks layers with `options` (the ownership shift).
    pub fn with_unpack_options(mut self, options: UnpackOptions) -> Self {
        self.unpack = options;
        self
    }

    /// Caps what one import may write.
    pub fn with_limits(mut self, limits: ImportLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` is stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The unpacked layer `diff_id` (an overlayfs lower dir).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("diff")
    }

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn record_path(&self, manifest_digest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", manifest_digest.hex()))
    }

    /// The image imported with this manifest digest, if any.
    pub fn image(&self, manifest_digest: &Digest) -> Result<Option<Image>, StoreError> {
        let path = self.record_path(manifest_digest);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(self.image_of(read_record(&path, &bytes)?))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_error(&path)(e)),
        }
    }

    /// Every imported image, by manifest digest.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        Ok(self
            .records()?
            .into_iter()
            .map(|(_, record)| self.image_of(record))
            .collect())
    }

    /// The local names and the images they name.
    pub fn names(&self) -> Result<BTreeMap<String, Digest>, StoreError> {
        let path = self.root.join(NAMES);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Record { path, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(store_error(&path)(e)),
        }
    }

    /// The image `name` names, if any.
    pub fn named(&self, name: &str) -> Result<Option<Digest>, StoreError> {
        Ok(self.names()?.remove(name))
    }

    /// Names (or renames to) the stored image `digest`; false if the store
    /// has no such image.
    pub fn name(&self, name: &str, digest: &Digest) -> Result<bool, StoreError> {
        let _lock = self.lock().map_err(store_error(&self.root))?;
        if !self.record_path(digest).exists() {
            return Ok(false);
        }
        let mut names = self.names()?;
        names.insert(name.to_owned(), digest.clone());
        self.write_names(&names)?;
        Ok(true)
    }

    /// Removes the name; returns the image it named.
    pub fn unname(&self, name: &str) -> Result<Option<Digest>, StoreError> {
        let _lock = self.lock().map_err(store_error(&self.root))?;
        let mut names = self.names()?;
        let removed = names.remove(name);
        if removed.is_some() {
            self.write_names(&names)?;
        }
        Ok(removed)
    }

    /// Removes the image `digest` with its names, and the blobs and layers
    /// no other image uses (a prune that keeps every other image). An image
    /// imported meanwhile is kept.
    pub fn remove(&self, digest: &Digest) -> Result<Pruned, StoreError> {
        let now = SystemTime::now();
        let keep: Vec<Digest> = self
            .records()?
            .into_iter()
            .map(|(_, record)| record.manifest_digest)
            .filter(|d| d != digest)
            .collect();
        self.prune(&keep, now, false)
    }

    /// Replaces the names file; the caller holds the store's lock.
    fn write_names(&self, names: &BTreeMap<String, Digest>) -> Result<(), StoreError> {
        let path = self.root.join(NAMES);
        let tmp = self.root.join("tmp").join(NAMES);
        let json = serde_json::to_vec_pretty(names).map_err(io::Error::other);
        json.and_then(|json| {
            let mut file = File::create(&tmp)?;
            io::Write::write_all(&mut file, &json)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            crate::store::durable::sync_dir(&self.root)
        })
        .map_err(store_error(&path))
    }

    /// Removes every image that is neither named in `keep` nor imported
    /// (or imported again) after `cutoff`, then every blob and layer that no
    /// remaining image references. With `dry_run`, only says what it would
    /// remove. The cutoff keeps an image that was just imported for a
    /// deploy that has not reached the registry yet.
    pub fn prune(
        &self,
        keep: &[Digest],
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<Pruned, StoreError> {
        let _lock = self.lock().map_err(store_error(&self.root))?;
        let remove = |path: &Path, digest: String| -> Result<Removed, StoreError> {
            let bytes = disk_usage(path).map_err(store_error(path))?;
            if !dry_run {
                unpack::remove_existing(path).map_err(store_error(path))?;
            }
            Ok(Removed { digest, bytes })
        };
        let mut pruned = Pruned::default();
        let mut blobs = HashSet::new();
        let mut layers = HashSet::new();
        for (path, record) in self.records()? {
            let imported = fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(store_error(&path))?;
            if keep.contains(&record.manifest_digest) || imported > cutoff {
                blobs.extend(record.blobs.iter().map(|d| d.hex().to_owned()));
                layers.extend(record.layers.iter().map(|l| l.diff_id.hex().to_owned()));
            } else {
                let digest = record.manifest_digest.to_string();
                pruned.images.push(remove(&path, digest)?);
            }
        }
        for (dir, keep, removed) in [
            ("blobs/sha256", &blobs, &mut pruned.blobs),
            ("layers", &layers, &mut pruned.layers),
        ] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).map_err(store_error(&dir))? {
                let path = entry.map_err(store_error(&dir))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if !keep.contains(name) {
                    let digest = format!("sha256:{name}");
                    removed.push(remove(&path, digest)?);
                }
            }
        }
        // The names of removed images go with them.
        if !dry_run && !pruned.images.is_empty() {
            let mut names = self.names()?;
            let before = names.len();
            names.retain(|_, d| !pruned.images.iter().any(|r| r.digest == d.as_str()));
            if names.len() != before {
                self.write_names(&names)?;
            }
        }
        for list in [&mut pruned.images, &mut pruned.blobs, &mut pruned.layers] {
            list.sort_by(|a, b| a.digest.cmp(&b.digest));
        }
        Ok(pruned)
    }

    fn records(&self) -> Result<Vec<(PathBuf, ImageRecord)>, StoreError> {
        let dir = self.root.join("images");
        let mut records = Vec::new();
        for entry in fs::read_dir(&dir).map_err(store_error(&dir))? {
            let path = entry.map_err(store_error(&dir))?.path();
            let bytes = fs::read(&path).map_err(store_error(&path))?;
            let record = read_record(&path, &bytes)?;
            records.push((path, record));
        }
        records.sort_by(|a, b| a.1.manifest_digest.cmp(&b.1.manifest_digest));
        Ok(records)
    }

    fn image_of(&self, record: ImageRecord) -> Image {
        Image {
            manifest_digest: record.manifest_digest,
            config: record.config,
            layers: record
                .layers
                .into_iter()
                .map(|layer| LayerRef {
                    path: self.layer_path(&layer.diff_id),
                    diff_id: layer.diff_id,
                    size: layer.size,
                })
                .collect(),
        }
    }

    /// Takes the store's lock (`flock`), released when the file is dropped.
    fn lock(&self) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))?;
        file.lock()?;
        Ok(file)
    }
}

fn read_record(path: &Path, bytes: &[u8]) -> Result<ImageRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Record {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::import::tests::{Fixture, docker_archive};
    use super::*;

    /// A cutoff after every import of the test: nothing is too young.
    fn after_now() -> SystemTime {
        SystemTime::now() + std::time::Duration::from_secs(1)
    }

    fn counts(pruned: &Pruned) -> (usize, usize, usize) {
        (pruned.images.len(), pruned.blobs.len(), pruned.layers.len())
    }

    #[test]
    fn list_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let fixture = Fixture::new();
        let layout = fixture.write_layout(&dir.path().join("layout"));
        let oci = store.import(&layout.path).unwrap();
        let archive = dir.path().join("docker.tar");
        fs::write(&archive, docker_archive(&fixture)).unwrap();
        let docker = store.import(&archive).unwrap();

        // The docker archive's RepoTags name its image; the layout has none.
        let names = store.names().unwrap();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [(
                "docker.io/library/demo:latest".to_owned(),
                docker.manifest_digest.clone()
            )]
        );
        assert!(store.name("demo:v2", &oci.manifest_digest).unwrap());
        assert!(!store.name("x", &Digest::from_sha256(&[1; 32])).unwrap());
        assert_eq!(
            store.unname("demo:v2").unwrap(),
            Some(oci.manifest_digest.clone())
        );
        assert_eq!(store.unname("demo:v2").unwrap(), None);

        let mut listed = store.list().unwrap();
        listed.sort_by_key(|i| i.layers.len());
        assert_eq!(listed, [oci.clone(), docker.clone()]);
        let sizes: Vec<u64> = docker.layers.iter().map(|l| l.size).collect();
        assert_eq!(sizes, [5, 6, 5]);
        assert_eq!(
            store.image(&oci.manifest_digest).unwrap(),
            Some(oci.clone())
        );

        // Images imported after the cutoff stay, and what they use.
        let recent = SystemTime::now() - std::time::Duration::from_secs(60);
        assert_eq!(store.prune(&[], recent, false).unwrap(), Pruned::default());

        // A dry run says what would go and removes nothing.
        let keep = std::slice::from_ref(&oci.manifest_digest);
        let planned = store.prune(keep, after_now(), true).unwrap();
        assert_eq!(store.list().unwrap().len(), 2);

        // The docker image's own blobs go; the layers it shares stay.
        let pruned = store.prune(keep, after_now(), false).unwrap();
        assert_eq!(pruned, planned);
        assert_eq!(counts(&pruned), (1, 4, 0));
        assert_eq!(pruned.images[0].digest, docker.manifest_digest.as_str());
        assert!(pruned.blobs.iter().all(|b| b.bytes > 0), "{pruned:?}");
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&oci));
        assert_eq!(store.image(&docker.manifest_digest).unwrap(), None);
        assert!(
            store.names().unwrap().is_empty(),
            "a removed image's names go too"
        );
        assert!(oci.layers.iter().all(|l| l.path.join("app").is_dir()));

        let pruned = store.prune(&[], after_now(), false).unwrap();
        assert_eq!(counts(&pruned), (1, 4, 2));
        for sub in ["blobs/sha256", "layers", "images"] {
            assert_eq!(fs::read_dir(store.root().join(sub)).unwrap().count(), 0);
        }
    }

    #[test]
    fn open_clears_leftovers_and_locks_out_others() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = ImageStore::open(&root).unwrap();
        fs::create_dir(root.join("tmp/half-import")).unwrap();
        fs::write(root.join("tmp/half-import/blob"), b"x").unwrap();
        let again = ImageStore::open(&root).unwrap();
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        let mode = fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let held = store.lock().unwrap();
        let other = File::open(root.join("lock")).unwrap();
        assert!(other.try_lock().is_err(), "the lock is exclusive");
        drop(held);
        assert!(again.lock().is_ok());
    }

    /// The example images the project's build makes (functions/artifacts)
    /// import, in both formats, to the same layer and config.
    #[test]
    fn the_projects_own_ping_images_import() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store"))
            .unwrap()
            .with_unpack_options(UnpackOptions {
                uid_offset: 100_000,
                gid_offset: 100_000,
            });
        let oci = store
            .import(Path::new(wisp_function_artifacts::PING_OCI_LAYOUT))
            .unwrap();
        let docker = store
            .import(Path::new(wisp_function_artifacts::PING_DOCKER_ARCHIVE))
            .unwrap();
        for image in [&oci, &docker] {
            assert_eq!(image.config.entrypoint, ["/ping"]);
            assert_eq!(image.config.exposed_ports, [8080]);
            assert_eq!(image.layers.len(), 1);
        }
        assert_eq!(oci.layers[0].diff_id, docker.layers[0].diff_id);
        let binary = oci.layers[0].path.join("ping");
        let meta = fs::metadata(&binary).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!((meta.uid(), meta.gid()), (100_000, 100_000));
        let cgi = store
            .import(Path::new(
                wisp_function_artifacts::CGI_NATIVE_DOCKER_ARCHIVE,
            ))
            .unwrap();
        assert_eq!(cgi.config.entrypoint, ["/cgi-echo-native"]);
    }
}
