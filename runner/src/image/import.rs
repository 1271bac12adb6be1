//! Import of one image into the [`ImageStore`]: telling the format apart,
//! choosing the manifest, verifying every blob and unpacking the layers.
//!
//! The format is told by content: a directory or tar holding `oci-layout`
//! and `index.json` is an OCI image layout (`oci:`, `oci-archive:`,
//! `podman save --format oci-archive`, and docker 25+'s `docker save`, which
//! writes both kinds of index); one holding only `manifest.json` is a
//! `docker save` / `docker-archive:` tarball, whose layers are named by path
//! (`<id>/layer.tar`, maybe a symlink to another, or `blobs/sha256/<hex>`).
//! A tar may itself be gzip or zstd compressed. A tar's files are first
//! copied into the staging directory, hashed on the way; a blob the store
//! already holds is hard-linked there instead.
//!
//! Every blob is checked against the digest that names it (and its
//! descriptor's size), every layer's uncompressed stream against the
//! config's `rootfs.diff_ids` while it is unpacked, and a layer's media type
//! against its magic bytes. Everything the import writes is charged to one
//! [`Budget`] (the store's [`ImportLimits`](super::ImportLimits)) while it
//! streams. Nothing reaches its final name in the store before the whole
//! image is verified.
//!
//! Staging, copying and unpacking take no lock, so imports run side by
//! side. The commit takes the store's lock for a few renames: a layer
//! another import committed first is kept and the copy dropped (same
//! content, same name), a blob already in place is left alone, and a layer
//! this import meant to reuse but a prune removed meanwhile makes the
//! import start again.
//!
//! Limits: an index must offer a `linux/<host arch>` manifest, or only one
//! manifest; a docker archive must hold exactly one image (its `RepoTags`
//! are not kept); only sha256 digests; JSON documents are capped at 16 MiB;
//! foreign layers with URLs are not fetched.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, OciLayout};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::limits::{Budget, OverLimit};
use super::unpack::{self, UnpackError, UnpackStats};
use super::{Image, ImageConfig, ImageRecord, ImageStore, LayerRecord, sys};
use crate::spec::Digest;
use crate::store::durable;

/// Cap on an index, manifest or config document.
const MAX_JSON_BYTES: u64 = 16 << 20;
/// How many indexes deep a manifest may be nested.
const MAX_INDEX_DEPTH: usize = 4;
/// Attempts at an import whose reused layers concurrent prunes removed.
const MAX_ATTEMPTS: usize = 3;

pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(super) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why an image could not be imported. Nothing was stored under its final
/// name when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is neither an OCI image layout nor a docker archive")]
    UnknownFormat { path: PathBuf },
    #[error("the image has no file {name:?}")]
    Missing { name: String },
    #[error("refusing {name:?}: it points outside the image")]
    BadName { name: String },
    #[error("{name} is larger than the limit of {limit} bytes")]
    TooLarge { name: String, limit: u64 },
    #[error("parsing {name}: {source}")]
    Json {
        name: String,
        source: serde_json::Error,
    },
    #[error("unsupported digest {digest:?}: only sha256 is supported")]
    UnsupportedDigest { digest: String },
    #[error("blob {name} has digest {actual}, expected {expected}")]
    DigestMismatch {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("blob {name} is {actual} bytes long, expected {expected}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("no manifest for {platform} in the index (it has: {found:?})")]
    NoManifest {
        platform: String,
        found: Vec<String>,
    },
    #[error("the docker archive holds {count} images, expected one")]
    ImageCount { count: usize },
    #[error("the manifest lists {layers} layers but the config has {diff_ids} diff_ids")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("layer {layer}: media type {media_type:?} does not match its {found} content")]
    LayerMediaType {
        layer: Digest,
        media_type: String,
        found: &'static str,
    },
    #[error("layer {layer} unpacks to {actual}, but the config says {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {diff_id} is unpacked for other uid/gid offsets; prune it first")]
    LayerOwnership { diff_id: Digest },
    #[error("unpacking layer {layer}: {source}")]
    Unpack { layer: Digest, source: UnpackError },
    #[error("{name}: {limit}")]
    OverLimit { name: String, limit: OverLimit },
    #[error("layer {diff_id} was pruned while the image was imported; import it again")]
    Pruned { diff_id: Digest },
}

impl ImportError {
    /// The limit the image went past, if that is why it was refused.
    pub fn over_limit(&self) -> Option<OverLimit> {
        match self {
            ImportError::OverLimit { limit, .. }
            | ImportError::Unpack {
                source: UnpackError::OverLimit { limit, .. },
                ..
            } => Some(*limit),
            _ => None,
        }
    }

    fn read(path: &Path) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| ImportError::Read { path, source }
    }

    fn write(path: &Path) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| ImportError::Write { path, source }
    }
}

/// Written to `layers/<hex>/complete` once a layer is whole.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LayerMarker {
    size: u64,
    entries: u64,
    uid_offset: u32,
    gid_offset: u32,
}

/// A blob in staging: copied and hashed, or a hard link to the store's.
#[derive(Debug, Clone)]
pub(super) struct Blob {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) path: PathBuf,
}

/// What an image is made of, once its documents are read and its blobs
/// verified.
pub(super) struct Parts {
    pub(super) manifest: Blob,
    pub(super) config_blob: Blob,
    pub(super) config: ImageConfiguration,
    /// Each layer's blob and media type.
    pub(super) layers: Vec<(Blob, String)>,
    /// Local names to give the image (a docker archive's `RepoTags`).
    pub(super) names: Vec<String>,
}

impl ImageStore {
    /// Imports the image at `path` (an OCI layout directory, an OCI archive
    /// or a docker archive), unpacking the layers that the store lacks.
    /// Importing an image again reuses what is stored.
    pub fn import(&self, path: &Path) -> Result<Image, ImportError> {
        let mut attempt = 1;
        loop {
            match self.import_once(path) {
                Err(ImportError::Pruned { diff_id }) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(%diff_id, attempt, "a layer was pruned during the import; importing again");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn import_once(&self, path: &Path) -> Result<Image, ImportError> {
        let staging = Staging::new(self)?;
        let source = Source::open(path, &staging)?;
        let parts = if source.has("oci-layout") && source.has("index.json") {
            self.read_oci(&source, &staging)?
        } else if source.has("manifest.json") {
            self.read_docker(&source, &staging)?
        } else {
            return Err(ImportError::UnknownFormat {
                path: path.to_owned(),
            });
        };
        self.finish(&staging, parts)
    }

    fn read_oci(&self, source: &Source, staging: &Staging) -> Result<Parts, ImportError> {
        let _: OciLayout = source.read_json("oci-layout")?;
        let index: ImageIndex = source.read_json("index.json")?;
        let mut manifests = index.manifests().clone();
        let mut found = None;
        for _ in 0..MAX_INDEX_DEPTH {
            let descriptor = pick_manifest(&manifests)?;
            let blob = self.descriptor_blob(source, staging, descriptor)?;
            let media_type = descriptor.media_type().to_string();
            if media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST {
                let nested: ImageIndex = read_json(&blob.path, &blob.digest.to_string())?;
                manifests = nested.manifests().clone();
            } else {
                found = Some(blob);
                break;
            }
        }
        let manifest = found.ok_or_else(|| ImportError::NoManifest {
            platform: host_platform(),
            found: vec![format!("indexes nested deeper than {MAX_INDEX_DEPTH}")],
        })?;
        let document: ImageManifest = read_json(&manifest.path, &manifest.digest.to_string())?;
        let config_blob = self.descriptor_blob(source, staging, document.config())?;
        let config = read_json(&config_blob.path, &config_blob.digest.to_string())?;
        let layers = document
            .layers()
            .iter()
            .map(|d| {
                let blob = self.descriptor_blob(source, staging, d)?;
                Ok((blob, d.media_type().to_string()))
            })
            .collect::<Result<_, ImportError>>()?;
        Ok(Parts {
            manifest,
            config_blob,
            config,
            layers,
            names: Vec::new(),
        })
    }

    fn read_docker(&self, source: &Source, staging: &Staging) -> Result<Parts, ImportError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            layers: Vec<String>,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
        }
        let entries: Vec<Entry> = source.read_json("manifest.json")?;
        let [entry] = &entries[..] else {
            return Err(ImportError::ImageCount {
                count: entries.len(),
            });
        };
        let named = |name: &str| source.blob(self, staging, name, digest_in_name(name).as_ref());
        let config_blob = named(&entry.config)?;
        let config = read_json(&config_blob.path, &entry.config)?;
        let mut layers = Vec::new();
        for name in &entry.layers {
            let blob = named(name)?;
            let compression = Compression::of_file(&blob.path)?;
            layers.push((blob, compression.oci_media_type().to_owned()));
        }
        // A docker archive has no manifest: make the OCI one it stands for.
        let layer_descriptors: Vec<_> = layers
            .iter()
            .map(|(blob, media_type)| descriptor_json(media_type, blob))
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor_json(OCI_CONFIG, &config_blob),
            "layers": layer_descriptors,
        });
        let manifest = staging.put(manifest.to_string().as_bytes())?;
        // Its tags become local names, normalised as `docker` reads them.
        let names = entry
            .repo_tags
            .iter()
            .flatten()
            .filter_map(|tag| super::pull::parse_reference(tag).ok())
            .map(|reference| reference.whole())
            .collect();
        Ok(Parts {
            manifest,
            config_blob,
            config,
            layers,
            names,
        })
    }

    /// Verifies the layers (unpacking those the store lacks), then commits:
    /// moves blobs, layers and finally the image record into place.
    pub(super) fn finish(&self, staging: &Staging, parts: Parts) -> Result<Image, ImportError> {
        let diff_ids = parts.config.rootfs().diff_ids();
        if diff_ids.len() != parts.layers.len() {
            return Err(ImportError::LayerCount {
                layers: parts.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut unpacked: HashMap<Digest, (PathBuf, u64)> = HashMap::new();
        let mut reused = Vec::new();
        let mut layers = Vec::new();
        for ((blob, media_type), diff_id) in parts.layers.iter().zip(diff_ids) {
            let diff_id = parse_digest(diff_id)?;
            let size = if let Some((_, size)) = unpacked.get(&diff_id) {
                *size
            } else if let Some(marker) = self.unpacked_layer(&diff_id)? {
                reused.push(diff_id.clone());
                marker.size
            } else {
                let dir = staging.path();
                let stats = self.unpack_layer(staging, blob, media_type, &diff_id, &dir)?;
                unpacked.insert(diff_id.clone(), (dir, stats.bytes));
                stats.bytes
            };
            layers.push(LayerRecord { diff_id, size });
        }

        let mut blobs = vec![&parts.manifest, &parts.config_blob];
        blobs.extend(parts.layers.iter().map(|(blob, _)| blob));
        let mut blob_digests: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
        blob_digests.sort();
        blob_digests.dedup();
        let record = ImageRecord {
            manifest_digest: parts.manifest.digest.clone(),
            config: ImageConfig::from_oci(&parts.config),
            blobs: blob_digests,
            layers,
        };
        let json = serde_json::to_vec_pretty(&record).map_err(io::Error::other);
        let staged_record = staging.path();
        json.and_then(|json| fs::write(&staged_record, json))
            .map_err(ImportError::write(&staged_record))?;
        sys::sync_filesystem(&staging.dir).map_err(ImportError::write(&staging.dir))?;

        // The commit: only these renames hold the store's lock.
        let _lock = self.lock().map_err(ImportError::write(&self.root))?;
        for diff_id in &reused {
            if self.unpacked_layer(diff_id)?.is_none() {
                return Err(ImportError::Pruned {
                    diff_id: diff_id.clone(),
                });
            }
        }
        for blob in &blobs {
            let dest = self.blob_path(&blob.digest);
            if !dest.exists() {
                fs::rename(&blob.path, &dest).map_err(ImportError::write(&dest))?;
            }
        }
        for (diff_id, (dir, _)) in &unpacked {
            if self.unpacked_layer(diff_id)?.is_some() {
                // Another import committed the same layer first.
                continue;
            }
            let dest = self.layer_dir(diff_id);
            // A directory without its marker is what a crash left.
            unpack::remove_existing(&dest).map_err(ImportError::write(&dest))?;
            fs::rename(dir, &dest).map_err(ImportError::write(&dest))?;
        }
        // The blobs' and layers' new names reach the disk before the record
        // that refers to them (their content did with the `syncfs` above),
        // and the record's after it is renamed into place.
        for dir in ["blobs/sha256", "layers"] {
            let dir = self.root.join(dir);
            durable::sync_dir(&dir).map_err(ImportError::write(&dir))?;
        }
        let dest = self.record_path(&record.manifest_digest);
        fs::rename(&staged_record, &dest).map_err(ImportError::write(&dest))?;
        if let Some(records) = dest.parent() {
            durable::sync_dir(records).map_err(ImportError::write(records))?;
        }
        if !parts.names.is_empty() {
            let store_error = |e: super::StoreError| ImportError::Write {
                path: self.root.join("names.json"),
                source: io::Error::other(e.to_string()),
            };
            let mut names = self.names().map_err(store_error)?;
            for name in &parts.names {
                names.insert(name.clone(), record.manifest_digest.clone());
            }
            self.write_names(&names).map_err(store_error)?;
        }
        Ok(self.image_of(record))
    }

    /// The marker of the layer `diff_id` if it is unpacked already (a layer
    /// directory without one is a leftover, for the commit to replace).
    fn unpacked_layer(&self, diff_id: &Digest) -> Result<Option<LayerMarker>, ImportError> {
        let dir = self.layer_dir(diff_id);
        let path = dir.join("complete");
        match fs::read(&path) {
            Ok(bytes) => {
                let marker: LayerMarker =
                    serde_json::from_slice(&bytes).map_err(|source| ImportError::Json {
                        name: path.display().to_string(),
                        source,
                    })?;
                if (marker.uid_offset, marker.gid_offset)
                    != (self.unpack.uid_offset, self.unpack.gid_offset)
                {
                    return Err(ImportError::LayerOwnership {
                        diff_id: diff_id.clone(),
                    });
                }
                Ok(Some(marker))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImportError::read(&path)(e)),
        }
    }

    /// Unpacks `blob` into `dir/diff`, checking the uncompressed stream
    /// against `diff_id` and charging it to the staging's budget, and
    /// writes `dir/complete`.
    fn unpack_layer(
        &self,
        staging: &Staging,
        blob: &Blob,
        media_type: &str,
        diff_id: &Digest,
        dir: &Path,
    ) -> Result<UnpackStats, ImportError> {
        let diff = dir.join("diff");
        fs::create_dir(dir)
            .and_then(|()| fs::create_dir(&diff))
            .map_err(ImportError::write(dir))?;
        let file = File::open(&blob.path).map_err(ImportError::read(&blob.path))?;
        let mut reader = BufReader::new(file);
        let head = reader.fill_buf().map_err(ImportError::read(&blob.path))?;
        let found = Compression::of_content(head);
        if Compression::of_media_type(media_type) != Some(found) {
            return Err(ImportError::LayerMediaType {
                layer: blob.digest.clone(),
                media_type: media_type.to_owned(),
                found: found.name(),
            });
        }
        let unpack_error = |source| ImportError::Unpack {
            layer: blob.digest.clone(),
            source,
        };
        let tar = found
            .decoder(reader)
            .map_err(|e| unpack_error(UnpackError::read(e)))?;
        let mut tar = HashingReader::new(tar);
        let stats =
            unpack::unpack(&mut tar, &diff, &self.unpack, &staging.budget).map_err(unpack_error)?;
        // The hash covers the whole stream, padding after the tar's end
        // too, which is charged: nothing is written, but it is all read.
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match tar.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(unpack_error(UnpackError::read(e))),
            };
            staging
                .budget
                .spend_bytes(n)
                .map_err(|limit| ImportError::OverLimit {
                    name: format!("layer {}, after the end of its tar", blob.digest),
                    limit,
                })?;
        }
        let actual = tar.digest();
        if actual != *diff_id {
            return Err(ImportError::DiffIdMismatch {
                layer: blob.digest.clone(),
                expected: diff_id.clone(),
                actual,
            });
        }
        let marker = LayerMarker {
            size: stats.bytes,
            entries: stats.entries,
            uid_offset: self.unpack.uid_offset,
            gid_offset: self.unpack.gid_offset,
        };
        let path = dir.join("complete");
        serde_json::to_vec(&marker)
            .map_err(io::Error::other)
            .and_then(|json| fs::write(&path, json))
            .map_err(ImportError::write(&path))?;
        Ok(stats)
    }

    /// The blob a descriptor names, verified against its digest and size.
    fn descriptor_blob(
        &self,
        source: &Source,
        staging: &Staging,
        descriptor: &Descriptor,
    ) -> Result<Blob, ImportError> {
        let digest = parse_digest(descriptor.digest().as_ref())?;
        let name = format!("blobs/sha256/{}", digest.hex());
        let blob = source.blob(self, staging, &name, Some(&digest))?;
        if blob.size != descriptor.size() {
            return Err(ImportError::SizeMismatch {
                name,
                expected: descriptor.size(),
                actual: blob.size,
            });
        }
        Ok(blob)
    }
}

impl ImageConfig {
    fn from_oci(image: &ImageConfiguration) -> Self {
        let Some(config) = image.config() else {
            return ImageConfig::default();
        };
        let mut exposed_ports: Vec<u16> = config
            .exposed_ports()
            .iter()
            .flatten()
            .filter_map(|port| match port.split_once('/') {
                None => port.parse().ok(),
                Some((port, "tcp")) => port.parse().ok(),
                Some(_) => None,
            })
            .collect();
        exposed_ports.sort_unstable();
        exposed_ports.dedup();
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: config.entrypoint().clone().unwrap_or_default(),
            cmd: config.cmd().clone().unwrap_or_default(),
            env: config.env().clone().unwrap_or_default(),
            working_dir: non_empty(config.working_dir()),
            user: non_empty(config.user()),
            exposed_ports,
        }
    }
}

/// Where an image's files are read from.
enum Source {
    /// A directory; names are relative to it.
    Dir(PathBuf),
    /// A tar whose regular files were copied into staging; its symlinks,
    /// resolved to names.
    Archive {
        files: HashMap<String, Blob>,
        links: HashMap<String, String>,
    },
}

impl Source {
    fn open(path: &Path, staging: &Staging) -> Result<Self, ImportError> {
        let meta = fs::metadata(path).map_err(ImportError::read(path))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_owned()));
        }
        let mut reader = BufReader::new(File::open(path).map_err(ImportError::read(path))?);
        let head = reader.fill_buf().map_err(ImportError::read(path))?;
        let reader = Compression::of_content(head)
            .decoder(reader)
            .map_err(ImportError::read(path))?;
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(ImportError::read(path))? {
            let mut entry = entry.map_err(ImportError::read(path))?;
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let over_limit = |limit| ImportError::OverLimit {
                name: format!("archive entry {raw_name:?}"),
                limit,
            };
            staging.budget.spend_entry().map_err(over_limit)?;
            let kind = entry.header().entry_type();
            if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
                // Not copied, but read through all the same.
                staging
                    .budget
                    .spend_bytes(entry.size())
                    .map_err(over_limit)?;
            }
            let Some(name) = normalize("", &raw_name) else {
                continue;
            };
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let what = format!("archive entry {raw_name:?}");
                    let blob = staging.copy(&mut entry, &path.join(&name), &what)?;
                    files.insert(name, blob);
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    let parent = name.rsplit_once('/').map_or("", |(parent, _)| parent);
                    if let Some(target) = normalize(parent, &String::from_utf8_lossy(&target)) {
                        links.insert(name, target);
                    }
                }
                _ => {}
            }
        }
        Ok(Source::Archive { files, links })
    }

    fn has(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// The file `name`: a path in the directory, or the staged copy.
    fn find(&self, name: &str) -> Result<Found<'_>, ImportError> {
        let missing = || ImportError::Missing {
            name: name.to_owned(),
        };
        let mut clean = normalize("", name).ok_or_else(|| ImportError::BadName {
            name: name.to_owned(),
        })?;
        match self {
            Source::Dir(dir) => {
                let path = dir.join(clean);
                if path.is_file() {
                    Ok(Found::Path(path))
                } else {
                    Err(missing())
                }
            }
            Source::Archive { files, links } => {
                for _ in 0..8 {
                    if let Some(blob) = files.get(&clean) {
                        return Ok(Found::Staged(blob));
                    }
                    clean = links.get(&clean).ok_or_else(missing)?.clone();
                }
                Err(missing())
            }
        }
    }

    fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T, ImportError> {
        match self.find(name)? {
            Found::Path(path) => read_json(&path, name),
            Found::Staged(blob) => read_json(&blob.path, name),
        }
    }

    /// The blob `name`, hashed, and checked against `expected` if given.
    fn blob(
        &self,
        store: &ImageStore,
        staging: &Staging,
        name: &str,
        expected: Option<&Digest>,
    ) -> Result<Blob, ImportError> {
        let blob = match self.find(name)? {
            Found::Staged(staged) => staged.clone(),
            Found::Path(path) => {
                let stored = match expected {
                    Some(digest) => staging.link(&store.blob_path(digest), digest)?,
                    None => None,
                };
                match stored {
                    Some(blob) => blob,
                    None => {
                        let file = File::open(&path).map_err(ImportError::read(&path))?;
                        staging.copy(file, &path, &format!("file {name:?}"))?
                    }
                }
            }
        };
        match expected {
            Some(expected) if *expected != blob.digest => Err(ImportError::DigestMismatch {
                name: name.to_owned(),
                expected: expected.clone(),
                actual: blob.digest,
            }),
            _ => Ok(blob),
        }
    }
}

/// A file of a [`Source`].
enum Found<'a> {
    /// In the source directory: not read yet.
    Path(PathBuf),
    /// Copied from the archive into staging, and hashed.
    Staged(&'a Blob),
}

/// One import's directory under `<root>/tmp`, removed when dropped, and
/// the budget of what the import may write.
pub(super) struct Staging {
    pub(super) dir: PathBuf,
    next: std::sync::atomic::AtomicU64,
    pub(super) budget: Budget,
}

impl Staging {
    pub(super) fn new(store: &ImageStore) -> Result<Self, ImportError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = store
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        fs::create_dir(&dir).map_err(ImportError::write(&dir))?;
        Ok(Staging {
            dir,
            next: AtomicU64::new(0),
            budget: Budget::new(store.limits),
        })
    }

    /// A fresh name inside the staging directory.
    pub(super) fn path(&self) -> PathBuf {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(n.to_string())
    }

    /// Copies `from` (read from `from_path`; `what` it is, in the image's
    /// terms) into staging, hashing it and charging every chunk to the
    /// budget before it is written.
    fn copy(&self, mut from: impl Read, from_path: &Path, what: &str) -> Result<Blob, ImportError> {
        let path = self.path();
        let mut file = File::create_new(&path).map_err(ImportError::write(&path))?;
        let mut hasher = Sha256::new();
        let mut size = 0;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImportError::read(from_path)(e)),
            };
            self.budget
                .spend_bytes(n as u64)
                .map_err(|limit| ImportError::OverLimit {
                    name: what.to_owned(),
                    limit,
                })?;
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(ImportError::write(&path))?;
            size += n as u64;
        }
        Ok(Blob {
            digest: Digest::from_sha256(&hasher.finalize()),
            size,
            path,
        })
    }

    /// Hard-links the store's blob `stored` (named by `digest`) into
    /// staging, so that a prune cannot take it away before the commit;
    /// `None` if the store does not hold it.
    pub(super) fn link(&self, stored: &Path, digest: &Digest) -> Result<Option<Blob>, ImportError> {
        let path = self.path();
        match fs::hard_link(stored, &path) {
            Ok(()) => Ok(Some(Blob {
                digest: digest.clone(),
                size: fs::metadata(&path).map_err(ImportError::read(&path))?.len(),
                path,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImportError::write(&path)(e)),
        }
    }

    fn put(&self, bytes: &[u8]) -> Result<Blob, ImportError> {
        let what = "the generated manifest";
        self.copy(bytes, Path::new(what), what)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How a layer or archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn of_content(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn of_file(path: &Path) -> Result<Self, ImportError> {
        let mut head = Vec::with_capacity(4);
        File::open(path)
            .and_then(|f| f.take(4).read_to_end(&mut head))
            .map_err(ImportError::read(path))?;
        Ok(Compression::of_content(&head))
    }

    /// What a layer media type declares; `None` if it is no tar layer.
    fn of_media_type(media_type: &str) -> Option<Self> {
        if !media_type.contains("tar") {
            None
        } else if media_type.ends_with("gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with("tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn decoder<'a>(self, reader: impl BufRead + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        })
    }
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn digest(self) -> Digest {
        Digest::from_sha256(&self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The index entry to import: the only manifest, or the one for
/// `linux/<host arch>`.
pub(super) fn pick_manifest(manifests: &[Descriptor]) -> Result<&Descriptor, ImportError> {
    let candidates: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            let media_type = d.media_type().to_string();
            [
                OCI_MANIFEST,
                OCI_INDEX,
                DOCKER_MANIFEST,
                DOCKER_MANIFEST_LIST,
            ]
            .contains(&media_type.as_str())
        })
        .collect();
    if let [only] = candidates[..] {
        return Ok(only);
    }
    let platform_of = |d: &Descriptor| {
        d.platform().as_ref().map_or_else(
            || "unknown".to_owned(),
            |p| format!("{}/{}", p.os(), p.architecture()),
        )
    };
    let want = host_platform();
    candidates
        .iter()
        .find(|&&d| platform_of(d) == want)
        .copied()
        .ok_or_else(|| ImportError::NoManifest {
            found: candidates.iter().map(|&d| platform_of(d)).collect(),
            platform: want,
        })
}

/// `linux/<GOARCH of this host>`, as image indexes name platforms.
pub(crate) fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

fn descriptor_json(media_type: &str, blob: &Blob) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": blob.digest.as_str(),
        "size": blob.size,
    })
}

pub(super) fn parse_digest(digest: &str) -> Result<Digest, ImportError> {
    Digest::parse(digest).map_err(|_| ImportError::UnsupportedDigest {
        digest: digest.chars().take(80).collect(),
    })
}

/// The digest a docker archive's file name carries: `blobs/sha256/<hex>`
/// or `<hex>.json` (a config).
fn digest_in_name(name: &str) -> Option<Digest> {
    let name = normalize("", name)?;
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// `name` resolved against the directory `base`, both relative to the
/// image's root, without `.`, `..` or empty components; `None` if it is
/// absolute or climbs above the root.
fn normalize(base: &str, name: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

fn read_json<T: DeserializeOwned>(path: &Path, name: &str) -> Result<T, ImportError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_JSON_BYTES + 1).read_to_end(&mut bytes))
        .map_err(ImportError::read(path))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(ImportError::TooLarge {
            name: name.to_owned(),
            limit: MAX_JSON_BYTES,
        });
    }
    serde_json::from_slice(&bytes).map_err(|source| ImportError::Json {
        name: name.to_owned(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use serde_json::json;
    use tar::EntryType::{Directory, Link, Regular};
    use wisp_oci_writer::{self as oci, media_type};

    use super::*;
    use crate::image::LayerRef;
    use crate::image::unpack::tests::archive;

    pub(crate) fn sha(bytes: &[u8]) -> Digest {
        Digest::from_sha256(&Sha256::digest(bytes))
    }

    /// Two layers and a config naming them, shared by the format tests.
    pub(crate) struct Fixture {
        /// The uncompressed layer tars.
        layers: [Vec<u8>; 2],
    }

    /// An OCI layout written by [`Fixture::write_layout`].
    pub(crate) struct Layout {
        pub(crate) path: PathBuf,
        pub(crate) manifest: Digest,
        pub(crate) layer_blobs: [Digest; 2],
    }

    impl Fixture {
        pub(crate) fn new() -> Self {
            Fixture {
                layers: [
                    archive(&[
                        (Directory, "app/", "", b""),
                        (Regular, "app/hello", "", b"hello"),
                        (Regular, "etc/.wh.gone", "", b""),
                    ]),
                    archive(&[
                        (Regular, "app/second", "", b"second"),
                        (Link, "app/again", "app/second", b""),
                    ]),
                ],
            }
        }

        pub(crate) fn diff_ids(&self) -> Vec<Digest> {
            self.layers.iter().map(|l| sha(l)).collect()
        }

        pub(crate) fn config(&self, diff_ids: &[Digest]) -> Vec<u8> {
            let container = json!({
                "Entrypoint": ["/app/hello"],
                "Cmd": ["--port", "8080"],
                "Env": ["PATH=/usr/bin", "MODE=test"],
                "WorkingDir": "/app",
                "User": "1000:1000",
                "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "80": {}},
            });
            let diff_ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
            oci::config("amd64", container, &diff_ids)
                .to_string()
                .into_bytes()
        }

        pub(crate) fn expected_config() -> ImageConfig {
            let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
            ImageConfig {
                entrypoint: strings(&["/app/hello"]),
                cmd: strings(&["--port", "8080"]),
                env: strings(&["PATH=/usr/bin", "MODE=test"]),
                working_dir: Some("/app".into()),
                user: Some("1000:1000".into()),
                exposed_ports: vec![80, 8080],
            }
        }

        /// Writes an OCI image layout into `dir`: layer one gzip, layer two
        /// zstd, and an index that also lists a manifest for another
        /// platform, whose blob is missing.
        pub(crate) fn write_layout(&self, dir: &Path) -> Layout {
            self.write_layout_with(dir, &self.config(&self.diff_ids()))
        }

        pub(crate) fn write_layout_with(&self, dir: &Path, config: &[u8]) -> Layout {
            let config = oci::Blob::new(media_type::CONFIG, config.to_vec());
            let gzip = oci::Layer::from_tar(self.layers[0].clone()).gzip();
            let zstd = zstd::encode_all(&self.layers[1][..], 3).unwrap();
            let zstd = oci::Blob::new(Compression::Zstd.oci_media_type(), zstd);
            let manifest = oci::manifest(&config, &[&gzip, &zstd]);
            let platform = host_platform();
            let (os, arch) = platform.split_once('/').unwrap();
            let elsewhere = oci::Blob::new(media_type::MANIFEST, b"elsewhere".to_vec())
                .descriptor()
                .platform("linux", "not-this-one");
            let layout = Layout {
                path: dir.to_owned(),
                manifest: sha(manifest.bytes()),
                layer_blobs: [sha(gzip.bytes()), sha(zstd.bytes())],
            };
            let manifests = [elsewhere, manifest.descriptor().platform(os, arch)];
            oci::Layout::new(&manifests, vec![config, gzip, zstd, manifest])
                .write_dir(dir)
                .unwrap();
            layout
        }
    }

    /// A `docker save` tarball of the fixture's layers as one image with
    /// three layers: the first one again, through a symlink, on top.
    pub(crate) fn docker_archive(fixture: &Fixture) -> Vec<u8> {
        let ids = fixture.diff_ids();
        let config = fixture.config(&[ids[0].clone(), ids[1].clone(), ids[0].clone()]);
        let config_name = format!("{}.json", sha(&config).hex());
        let second = format!("blobs/sha256/{}", ids[1].hex());
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": ["demo:latest"],
            "Layers": ["aaa/layer.tar", second, "ccc/layer.tar"],
        }])
        .to_string();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("manifest.json", manifest.as_bytes()),
            (config_name.as_str(), &config),
            ("aaa/layer.tar", &fixture.layers[0]),
            (second.as_str(), &fixture.layers[1]),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, data).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, "ccc/layer.tar", "../aaa/layer.tar")
            .unwrap();
        tar.into_inner().unwrap()
    }

    fn assert_store_empty(store: &ImageStore) {
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            let count = fs::read_dir(store.root().join(sub)).unwrap().count();
            assert_eq!(count, 0, "{sub} is empty");
        }
    }

    fn assert_fixture_layers(layers: &[LayerRef]) {
        let [first, second] = layers else {
            panic!("two layers: {layers:?}")
        };
        assert_eq!(fs::read(first.path.join("app/hello")).unwrap(), b"hello");
        let gone = fs::symlink_metadata(first.path.join("etc/gone")).unwrap();
        assert!(gone.file_type().is_char_device());
        assert_eq!(fs::read(second.path.join("app/again")).unwrap(), b"second");
        let again = fs::metadata(second.path.join("app/again")).unwrap();
        assert_eq!(again.nlink(), 2);
        assert_eq!((first.size, second.size), (5, 6));
    }

    #[test]
    fn imports_an_oci_layout_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let fixture = Fixture::new();
        let layout = fixture.write_layout(&dir.path().join("layout"));
        let image = store.import(&layout.path).unwrap();

        assert_eq!(image.manifest_digest, layout.manifest);
        assert_eq!(image.config, Fixture::expected_config());
        let diff_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
        assert_eq!(diff_ids, fixture.diff_ids());
        assert_fixture_layers(&image.layers);
        for blob in [
            &layout.manifest,
            &layout.layer_blobs[0],
            &layout.layer_blobs[1],
        ] {
            assert!(store.blob_path(blob).is_file(), "{blob} is stored");
        }
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn imports_oci_archives_plain_and_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Fixture::new();
        let layout = fixture.write_layout(&dir.path().join("layout"));
        let tar = oci::archive_dir(&layout.path).unwrap();
        let zstd = zstd::encode_all(&tar[..], 3).unwrap();
        for (name, bytes) in [("plain.tar", &tar), ("compressed.tar.zst", &zstd)] {
            let store = ImageStore::open(dir.path().join(name).with_extension("store")).unwrap();
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            let image = store.import(&path).unwrap();
            assert_eq!(image.manifest_digest, layout.manifest, "{name}");
            assert_eq!(image.config, Fixture::expected_config());
            assert_fixture_layers(&image.layers);
        }
    }

    #[test]
    fn imports_a_docker_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let fixture = Fixture::new();
        let path = dir.path().join("docker.tar");
        fs::write(&path, docker_archive(&fixture)).unwrap();
        let image = store.import(&path).unwrap();

        assert_eq!(image.config, Fixture::expected_config());
        let ids = fixture.diff_ids();
        let diff_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
        assert_eq!(diff_ids, [ids[0].clone(), ids[1].clone(), ids[0].clone()]);
        assert_eq!(image.layers[0].path, image.layers[2].path);
        assert_fixture_layers(&image.layers[..2]);
        // The made-up manifest is stored, and names the layers uncompressed.
        let manifest: ImageManifest =
            read_json(&store.blob_path(&image.manifest_digest), "manifest").unwrap();
        assert_eq!(manifest.layers()[1].digest().to_string(), ids[1].as_str());
        assert!(store.blob_path(&ids[1]).is_file());
    }

    #[test]
    fn a_corrupted_blob_is_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let fixture = Fixture::new();
        let layout = fixture.write_layout(&dir.path().join("layout"));
        let expected = layout.layer_blobs[1].clone();
        let blob = layout.path.join("blobs/sha256").join(expected.hex());
        fs::write(&blob, b"not the layer").unwrap();
        let archive = dir.path().join("corrupt.tar");
        fs::write(&archive, oci::archive_dir(&layout.path).unwrap()).unwrap();

        for path in [&layout.path, &archive] {
            let err = store.import(path).unwrap_err();
            let ImportError::DigestMismatch {
                name,
                expected: e,
                actual,
            } = &err
            else {
                panic!("{err}")
            };
            assert_eq!(name, &format!("blobs/sha256/{}", expected.hex()));
            assert_eq!((e, actual), (&expected, &sha(b"not the layer")));
            let message = err.to_string();
            assert!(message.contains(expected.as_str()) && message.contains(actual.as_str()));
            assert_store_empty(&store);
        }
    }

    #[test]
    fn a_wrong_diff_id_is_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let fixture = Fixture::new();
        let ids = fixture.diff_ids();
        let config = fixture.config(&[ids[1].clone(), ids[0].clone()]);
        let layout = fixture.write_layout_with(&dir.path().join("layout"), &config);
        let err = store.import(&layout.path).unwrap_err();
        assert!(
            matches!(&err, ImportError::DiffIdMismatch { layer, expected, actual }
                if *layer == layout.layer_blobs[0] && *expected == ids[1] && *actual == ids[0]),
            "{err}"
        );
        assert_store_empty(&store);
    }

    #[test]
    fn importing_again_reuses_the_unpacked_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let layout = Fixture::new().write_layout(&dir.path().join("layout"));
        let first = store.import(&layout.path).unwrap();
        // A file unpacking cannot make tells whether the layer was redone.
        let sentinel = first.layers[0].path.join("sentinel");
        fs::write(&sentinel, b"").unwrap();
        let again = store.import(&layout.path).unwrap();
        assert_eq!(again, first);
        assert!(sentinel.exists(), "not unpacked again");

        // A layer without its completion marker is not trusted.
        let marker = store.layer_dir(&first.layers[0].diff_id).join("complete");
        fs::remove_file(marker).unwrap();
        let redone = store.import(&layout.path).unwrap();
        assert_eq!(redone, first);
        assert!(!sentinel.exists(), "unpacked again");
        assert_fixture_layers(&redone.layers);
    }

    #[test]
    fn layers_unpacked_for_other_offsets_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Fixture::new().write_layout(&dir.path().join("layout"));
        ImageStore::open(dir.path().join("store"))
            .unwrap()
            .import(&layout.path)
            .unwrap();
        let shifted = ImageStore::open(dir.path().join("store"))
            .unwrap()
            .with_unpack_options(unpack::UnpackOptions {
                uid_offset: 100_000,
                gid_offset: 100_000,
            });
        let err = shifted.import(&layout.path).unwrap_err();
        assert!(matches!(err, ImportError::LayerOwnership { .. }), "{err}");
    }

    /// An OCI layout in `dir` of one image whose only layer (gzip) is
    /// `tar`.
    fn layout_with_layer(dir: &Path, tar: Vec<u8>) -> PathBuf {
        let layer = oci::Layer::from_tar(tar);
        let config = oci::config("amd64", json!({"Entrypoint": ["/x"]}), &[layer.diff_id()]);
        let config = oci::Blob::json(media_type::CONFIG, &config);
        let blob = layer.gzip();
        let manifest = oci::manifest(&config, &[&blob]);
        oci::Layout::new(&[manifest.descriptor()], vec![config, blob, manifest])
            .write_dir(dir)
            .unwrap();
        dir.to_owned()
    }

    fn limited_store(dir: &Path, max_bytes: u64, max_entries: u64) -> ImageStore {
        ImageStore::open(dir.join("store"))
            .unwrap()
            .with_limits(super::super::ImportLimits {
                max_bytes,
                max_entries,
            })
    }

    #[test]
    fn images_past_the_limits_are_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = limited_store(dir.path(), 1 << 20, 100);

        // A layer that is one sparse file of 1 TiB: a few bytes of gzip.
        let sparse = unpack::tests::sparse_archive("zero", 1 << 40);
        let layout = layout_with_layer(&dir.path().join("sparse"), sparse);
        let err = store.import(&layout).unwrap_err();
        assert_eq!(
            err.over_limit(),
            Some(OverLimit::Bytes { limit: 1 << 20 }),
            "{err}"
        );
        assert!(err.to_string().contains("\"zero\""), "{err}");
        assert_store_empty(&store);

        // A layer of many empty files.
        let names: Vec<String> = (0..150).map(|i| format!("f{i}")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (Regular, n.as_str(), "", &b""[..]))
            .collect();
        let layout = layout_with_layer(&dir.path().join("many"), archive(&entries));
        let err = store.import(&layout).unwrap_err();
        assert_eq!(err.over_limit(), Some(OverLimit::Entries { limit: 100 }));
        assert!(err.to_string().contains("--max-image-entries"), "{err}");
        assert_store_empty(&store);

        // Zeros after the layer's tar: read, never written, still charged.
        let mut padded = archive(&[(Regular, "a", "", b"a")]);
        padded.resize(padded.len() + (2 << 20), 0);
        let layout = layout_with_layer(&dir.path().join("padded"), padded);
        let err = store.import(&layout).unwrap_err();
        assert_eq!(err.over_limit(), Some(OverLimit::Bytes { limit: 1 << 20 }));
        assert!(err.to_string().contains("after the end"), "{err}");
        assert_store_empty(&store);

        // An archive whose copy into staging passes the limit, even with a
        // file no manifest names; the layout directory itself imports.
        let layout = Fixture::new().write_layout(&dir.path().join("fixture"));
        fs::write(layout.path.join("junk"), vec![0u8; 2 << 20]).unwrap();
        let tar = oci::archive_dir(&layout.path).unwrap();
        let compressed = dir.path().join("junk.tar.zst");
        fs::write(&compressed, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
        let err = store.import(&compressed).unwrap_err();
        assert_eq!(err.over_limit(), Some(OverLimit::Bytes { limit: 1 << 20 }));
        assert!(err.to_string().contains("junk"), "{err}");
        assert_store_empty(&store);
        let image = store.import(&layout.path).unwrap();
        assert_fixture_layers(&image.layers);
    }

    #[test]
    fn a_slow_import_holds_up_neither_other_imports_nor_prunes() {
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let fixture = Fixture::new();
        let layout = fixture.write_layout(&dir.path().join("layout"));
        let archive = oci::archive_dir(&layout.path).unwrap();
        let docker = dir.path().join("docker.tar");
        fs::write(&docker, docker_archive(&fixture)).unwrap();

        // The slow import reads its archive from a pipe the test feeds.
        let fifo = dir.path().join("slow.tar");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let slow = {
            let (store, fifo) = (store.clone(), fifo.clone());
            std::thread::spawn(move || store.import(&fifo))
        };
        // Opening for writing waits until the import has opened the pipe.
        let mut writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(&archive[..512]).unwrap();

        // Meanwhile another image, which shares its layers, is imported,
        // and the store is pruned.
        let (done, finished) = mpsc::channel();
        {
            let store = store.clone();
            std::thread::spawn(move || {
                let imported = store.import(&docker).map(|image| image.layers.len());
                let pruned = store.prune(&[], std::time::UNIX_EPOCH, false).map(|_| ());
                let _ = done.send((imported.ok(), pruned.ok()));
            });
        }
        let (imported, pruned) = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("an import and a prune while another import waits for its bytes");
        assert_eq!((imported, pruned), (Some(3), Some(())));

        writer.write_all(&archive[512..]).unwrap();
        drop(writer);
        let image = slow.join().unwrap().unwrap();
        assert_eq!(image.manifest_digest, layout.manifest);
        assert_fixture_layers(&image.layers);
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn unknown_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let err = store.import(&empty).unwrap_err();
        assert!(matches!(err, ImportError::UnknownFormat { .. }), "{err}");
        assert!(err.to_string().contains("empty"));
    }

    /// The image's JSON documents, arbitrary and damaged: no panic, no
    /// image but a verified one, nothing stored when refused.
    mod documents {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::*;

        /// Keys the documents use, so that generated objects look like them.
        const KEYS: &[&str] = &[
            "schemaVersion",
            "mediaType",
            "manifests",
            "digest",
            "size",
            "platform",
            "architecture",
            "os",
            "config",
            "layers",
            "rootfs",
            "diff_ids",
            "type",
            "Entrypoint",
            "Cmd",
            "Env",
            "WorkingDir",
            "User",
            "ExposedPorts",
            "Config",
            "Layers",
            "RepoTags",
            "imageLayoutVersion",
            "urls",
            "annotations",
        ];

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                "\\PC{0,16}".prop_map(Value::from),
                Just(Value::from(format!("sha256:{}", "0".repeat(64)))),
                prop::sample::select(vec![OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, DOCKER_MANIFEST])
                    .prop_map(Value::from),
            ];
            let key = prop_oneof![
                prop::sample::select(KEYS).prop_map(str::to_owned),
                "\\PC{0,8}"
            ];
            leaf.prop_recursive(4, 32, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map(key.clone(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// One change to a document: a node replaced, or removed.
        #[derive(Debug, Clone)]
        enum Mutation {
            Replace(prop::sample::Index, Value),
            Remove(prop::sample::Index),
        }

        fn arb_mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                (any::<prop::sample::Index>(), arb_json())
                    .prop_map(|(i, v)| Mutation::Replace(i, v)),
                any::<prop::sample::Index>().prop_map(Mutation::Remove),
            ]
        }

        /// JSON pointers of every node below the root.
        fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
            let children: Vec<(String, &Value)> = match value {
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
                    .collect(),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect(),
                _ => return,
            };
            for (key, child) in children {
                let pointer = format!("{at}/{key}");
                out.push(pointer.clone());
                pointers(child, pointer, out);
            }
        }

        fn mutate(mut doc: Value, mutations: &[Mutation]) -> Value {
            for mutation in mutations {
                let mut all = Vec::new();
                pointers(&doc, String::new(), &mut all);
                if all.is_empty() {
                    continue;
                }
                match mutation {
                    Mutation::Replace(i, value) => {
                        if let Some(node) = doc.pointer_mut(&all[i.index(all.len())]) {
                            *node = value.clone();
                        }
                    }
                    Mutation::Remove(i) => {
                        let pointer = &all[i.index(all.len())];
                        let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
                        match doc.pointer_mut(parent) {
                            Some(Value::Object(map)) => {
                                map.remove(&key.replace("~1", "/").replace("~0", "~"));
                            }
                            Some(Value::Array(items)) => {
                                if let Ok(i) = key.parse::<usize>() {
                                    items.remove(i);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            doc
        }

        /// What becomes of a document: arbitrary bytes, arbitrary JSON, or
        /// the real one changed.
        #[derive(Debug, Clone)]
        enum Rewrite {
            Bytes(Vec<u8>),
            Json(Value),
            Mutated(Vec<Mutation>),
        }

        fn arb_rewrite() -> impl Strategy<Value = Rewrite> {
            prop_oneof![
                1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Rewrite::Bytes),
                2 => arb_json().prop_map(Rewrite::Json),
                4 => prop::collection::vec(arb_mutation(), 1..4).prop_map(Rewrite::Mutated),
            ]
        }

        fn rewritten(doc: Value, rewrite: &Rewrite) -> Vec<u8> {
            match rewrite {
                Rewrite::Bytes(bytes) => bytes.clone(),
                Rewrite::Json(value) => value.to_string().into_bytes(),
                Rewrite::Mutated(mutations) => mutate(doc, mutations).to_string().into_bytes(),
            }
        }

        #[derive(Debug, Clone, Copy)]
        enum Doc {
            OciLayout,
            Index,
            Manifest,
            Config,
            DockerManifest,
        }

        /// The fixture's image with `doc` rewritten, as an OCI layout (or a
        /// docker archive for `DockerManifest`); a rewritten blob is named
        /// by its digest and the document above it points at it.
        fn write_image(dir: &Path, fixture: &Fixture, doc: Doc, rewrite: &Rewrite) -> PathBuf {
            let config_doc: Value =
                serde_json::from_slice(&fixture.config(&fixture.diff_ids())).unwrap();
            let config = match doc {
                Doc::Config => rewritten(config_doc, rewrite),
                _ => config_doc.to_string().into_bytes(),
            };
            if let Doc::DockerManifest = doc {
                let layers: Vec<oci::Layer> = fixture
                    .layers
                    .iter()
                    .map(|l| oci::Layer::from_tar(l.clone()))
                    .collect();
                let config = oci::Blob::new(media_type::CONFIG, config);
                let archive =
                    oci::docker_archive("fuzz:latest", &config, &layers.iter().collect::<Vec<_>>());
                // Rewrite manifest.json inside the archive.
                let mut out = tar::Builder::new(Vec::new());
                let mut input = tar::Archive::new(&archive[..]);
                for entry in input.entries().unwrap() {
                    let mut entry = entry.unwrap();
                    let name = entry.path().unwrap().into_owned();
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).unwrap();
                    if name == Path::new("manifest.json") {
                        data = rewritten(serde_json::from_slice(&data).unwrap(), rewrite);
                    }
                    let mut header = tar::Header::new_gnu();
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    out.append_data(&mut header, &name, &data[..]).unwrap();
                }
                let path = dir.join("docker.tar");
                fs::write(&path, out.into_inner().unwrap()).unwrap();
                return path;
            }
            let config = oci::Blob::new(media_type::CONFIG, config);
            let layers: Vec<oci::Blob> = fixture
                .layers
                .iter()
                .map(|l| oci::Layer::from_tar(l.clone()).gzip())
                .collect();
            let manifest = oci::manifest(&config, &layers.iter().collect::<Vec<_>>());
            let manifest = match doc {
                Doc::Manifest => oci::Blob::new(
                    media_type::MANIFEST,
                    rewritten(serde_json::from_slice(manifest.bytes()).unwrap(), rewrite),
                ),
                _ => manifest,
            };
            let platform = host_platform();
            let (os, arch) = platform.split_once('/').unwrap();
            let mut blobs = vec![config, manifest.clone()];
            blobs.extend(layers);
            let path = dir.join("layout");
            oci::Layout::new(&[manifest.descriptor().platform(os, arch)], blobs)
                .write_dir(&path)
                .unwrap();
            for (file, which) in [("index.json", Doc::Index), ("oci-layout", Doc::OciLayout)] {
                if std::mem::discriminant(&doc) == std::mem::discriminant(&which) {
                    let original =
                        serde_json::from_slice(&fs::read(path.join(file)).unwrap()).unwrap();
                    fs::write(path.join(file), rewritten(original, rewrite)).unwrap();
                }
            }
            path
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]

            #[test]
            fn rewritten_documents_are_refused_or_name_the_verified_layers(
                doc in prop::sample::select(vec![
                    Doc::OciLayout, Doc::Index, Doc::Manifest, Doc::Config, Doc::DockerManifest,
                ]),
                rewrite in arb_rewrite(),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let store = ImageStore::open(dir.path().join("store")).unwrap();
                let fixture = Fixture::new();
                let path = write_image(dir.path(), &fixture, doc, &rewrite);
                match store.import(&path) {
                    Ok(image) => {
                        let ids = fixture.diff_ids();
                        for layer in &image.layers {
                            prop_assert!(ids.contains(&layer.diff_id), "{}", layer.diff_id);
                            prop_assert!(layer.path.is_dir());
                        }
                        prop_assert!(store.blob_path(&image.manifest_digest).is_file());
                    }
                    Err(e) => {
                        prop_assert!(!e.to_string().is_empty());
                        assert_store_empty(&store);
                    }
                }
            }

            #[test]
            fn any_config_round_trips(
                entrypoint in prop::collection::vec("\\PC{0,12}", 0..4),
                cmd in prop::collection::vec("\\PC{0,12}", 0..4),
                env in prop::collection::vec("[A-Z_]{1,8}=\\PC{0,12}", 0..4),
                working_dir in "\\PC{0,12}",
                user in "\\PC{0,12}",
                ports in prop::collection::vec(
                    (any::<u16>(), prop::sample::select(vec!["", "/tcp", "/udp", "/sctp"])),
                    0..5,
                ),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let store = ImageStore::open(dir.path().join("store")).unwrap();
                let fixture = Fixture::new();
                let exposed: serde_json::Map<String, Value> = ports
                    .iter()
                    .map(|(port, proto)| (format!("{port}{proto}"), json!({})))
                    .collect();
                let container = json!({
                    "Entrypoint": entrypoint,
                    "Cmd": cmd,
                    "Env": env,
                    "WorkingDir": working_dir,
                    "User": user,
                    "ExposedPorts": exposed,
                });
                let diff_ids: Vec<String> = fixture.diff_ids().iter().map(Digest::to_string).collect();
                let config = oci::config("amd64", container, &diff_ids).to_string();
                let layout = fixture.write_layout_with(&dir.path().join("layout"), config.as_bytes());
                let image = store.import(&layout.path).unwrap();
                let mut tcp: Vec<u16> = ports
                    .iter()
                    .filter(|(_, proto)| matches!(*proto, "" | "/tcp"))
                    .map(|(port, _)| *port)
                    .collect();
                tcp.sort_unstable();
                tcp.dedup();
                let expected = ImageConfig {
                    entrypoint,
                    cmd,
                    env,
                    working_dir: Some(working_dir).filter(|s| !s.is_empty()),
                    user: Some(user).filter(|s| !s.is_empty()),
                    exposed_ports: tcp,
                };
                prop_assert_eq!(image.config, expected);
            }
        }
    }

    #[test]
    fn names_are_normalized_inside_the_image() {
        assert_eq!(normalize("", "./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("a/b", "../c").as_deref(), Some("a/c"));
        assert_eq!(normalize("a", "../../c"), None);
        assert_eq!(normalize("", "/etc/passwd"), None);
        assert_eq!(
            digest_in_name(&format!("./{}.json", "a".repeat(64))).map(String::from),
            Some(format!("sha256:{}", "a".repeat(64)))
        );
        assert_eq!(digest_in_name("abc/layer.tar"), None);
    }
}
