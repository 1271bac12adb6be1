//! Writing OCI images, for the three places in wisp that make them: `wisp
//! deploy --rootfs/--binary` (the gateway's `pack`), the example functions'
//! images (the `wisp-function-artifacts` build script) and the image
//! importer's test fixtures. This crate owns the bytes: blobs and their
//! sha256 digests, descriptors, layer tars, config, manifest and index JSON,
//! and the three forms an image travels in — an OCI image layout directory,
//! an OCI archive (that directory as a tar) and a `docker save` archive.
//!
//! The tars it makes itself have ustar headers, owner 0:0, mtime 0, no user
//! names, and an entry for each directory before its first file; JSON is
//! compact with its keys sorted (serde_json's map, as long as nothing in the
//! build turns on its `preserve_order` feature). So the bytes are a function
//! of the content, except for [`Layer::from_dir`] and [`archive_dir`], which
//! take what the file system lists.
//!
//! Limits: everything is built in memory; an image is for one platform; the
//! content of a config (entrypoint, env, …) is the caller's. It only writes:
//! checking images is the importer's job (`wisp-runner`'s `image` module).
//! It is a build dependency of the artifacts crate, so it stays cheap to
//! compile: tar, sha2, hex, serde_json and flate2, nothing else.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The media types of the OCI image spec that these images use.
pub mod media_type {
    /// An image index (`index.json`).
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed layer tar.
    pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// A gzip-compressed layer tar.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// `PATH` as docker and the OCI image spec's examples set it: an entry for
/// a config's `Env`.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The content of a layout's `oci-layout` file.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// gzip's "unknown" operating system, written instead of the host's.
const GZIP_OS_UNKNOWN: u8 = 255;

/// Bytes of an image (a layer, config, manifest or index) with their media
/// type and sha256; in a layout they sit at `blobs/sha256/<hex>`.
#[derive(Clone)]
pub struct Blob {
    media_type: &'static str,
    bytes: Vec<u8>,
    hex: String,
}

impl Blob {
    /// `bytes` as a blob of `media_type`.
    pub fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        let hex = hex::encode(Sha256::digest(&bytes));
        Blob {
            media_type,
            bytes,
            hex,
        }
    }

    /// `value` as compact JSON, a blob of `media_type`.
    pub fn json(media_type: &'static str, value: &Value) -> Blob {
        Blob::new(media_type, value.to_string().into_bytes())
    }

    /// Its content.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `sha256:<hex>`.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }

    /// The hex of its sha256: its file name under `blobs/sha256/`.
    fn hex(&self) -> &str {
        &self.hex
    }

    /// Its descriptor: media type, digest and size.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor(json!({
            "mediaType": self.media_type,
            "digest": self.digest(),
            "size": self.bytes.len(),
        }))
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("media_type", &self.media_type)
            .field("digest", &self.digest())
            .field("size", &self.bytes.len())
            .finish()
    }
}

/// An OCI content descriptor: media type, digest and size of a blob, and
/// for a manifest in an index, its platform and annotations if given.
#[derive(Clone, Debug)]
pub struct Descriptor(Value);

impl Descriptor {
    /// Says the manifest it points to is for `os` on `architecture` (Go's
    /// names: `linux`, `amd64`).
    pub fn platform(mut self, os: &str, architecture: &str) -> Descriptor {
        self.0["platform"] = json!({ "architecture": architecture, "os": os });
        self
    }

    /// Adds the annotation `key` = `value`.
    pub fn annotation(mut self, key: &str, value: &str) -> Descriptor {
        self.0["annotations"][key] = json!(value);
        self
    }
}

/// An image config for Linux on `architecture` (Go's name: `amd64`,
/// `arm64`): `container` is its `config` object (`Entrypoint`, `Env`, …) and
/// `diff_ids` are its layers' [`Layer::diff_id`]s, bottom first. Add other
/// fields (`created`, `history`) to the value, then make it a blob of
/// [`media_type::CONFIG`] with [`Blob::json`].
pub fn config(architecture: &str, container: Value, diff_ids: &[String]) -> Value {
    json!({
        "architecture": architecture,
        "os": "linux",
        "config": container,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
}

/// An image manifest naming `config` and `layers` (bottom first).
pub fn manifest(config: &Blob, layers: &[&Blob]) -> Blob {
    let layers: Vec<Value> = layers.iter().map(|layer| layer.descriptor().0).collect();
    Blob::json(
        media_type::MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::MANIFEST,
            "config": config.descriptor().0,
            "layers": layers,
        }),
    )
}

/// A layer: an uncompressed tar of the files it lays over the layers below.
pub struct Layer {
    tar: Vec<u8>,
}

impl Layer {
    /// A layer whose tar was made elsewhere (a test's hand-made entries).
    pub fn from_tar(tar: Vec<u8>) -> Layer {
        Layer { tar }
    }

    /// The directory `dir` as the layer's root, symlinks kept as links, in
    /// tar's deterministic mode: owner 0:0 (as `COPY` in a Dockerfile
    /// makes them), tar's fixed mtime (`tar::DETERMINISTIC_TIMESTAMP`), mode 0755
    /// for directories and executables and 0644 for the rest. Entries come
    /// in the order the file system lists them.
    pub fn from_dir(dir: &Path) -> Result<Layer, IoError> {
        let packing = |source| IoError::new("packing", dir, source);
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Deterministic);
        builder.append_dir_all(".", dir).map_err(packing)?;
        let tar = builder.into_inner().map_err(packing)?;
        Ok(Layer { tar })
    }

    /// A layer of one regular file at `path` (relative, `/`-separated) with
    /// `content` and `mode`, owner 0:0, mtime 0; its parent directories, if
    /// any, get entries of their own (0755).
    ///
    /// # Panics
    ///
    /// If `path` is absolute, empty or has a `..` component.
    pub fn from_file(path: &str, content: &[u8], mode: u32) -> Layer {
        Layer {
            tar: tar_of(&[(path, content, mode)]),
        }
    }

    /// `sha256:<hex>` of the uncompressed tar: what a config's
    /// `rootfs.diff_ids` lists.
    pub fn diff_id(&self) -> String {
        format!("sha256:{}", self.diff_hex())
    }

    /// The hex of the uncompressed tar's sha256.
    fn diff_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.tar))
    }

    /// The tar as an uncompressed layer blob ([`media_type::LAYER`]).
    pub fn into_blob(self) -> Blob {
        Blob::new(media_type::LAYER, self.tar)
    }

    /// The tar gzip-compressed, as a [`media_type::LAYER_GZIP`] blob: best
    /// compression, and a gzip header with no time, name or host, so the
    /// bytes depend on the tar alone.
    pub fn gzip(&self) -> Blob {
        let mut gzip = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(GZIP_OS_UNKNOWN)
            .write(Vec::new(), flate2::Compression::best());
        gzip.write_all(&self.tar)
            .expect("gzip into memory cannot fail");
        let bytes = gzip.finish().expect("gzip into memory cannot fail");
        Blob::new(media_type::LAYER_GZIP, bytes)
    }
}

/// An OCI image layout: `oci-layout`, `index.json` and `blobs/sha256/<hex>`.
pub struct Layout {
    index: Blob,
    blobs: Vec<Blob>,
}

impl Layout {
    /// A layout whose index lists `manifests` and which holds `blobs` (the
    /// manifests, configs and layers they name), in that order. A
    /// descriptor whose blob is not among them is listed all the same.
    pub fn new(manifests: &[Descriptor], blobs: Vec<Blob>) -> Layout {
        let manifests: Vec<&Value> = manifests.iter().map(|d| &d.0).collect();
        let index = Blob::json(
            media_type::INDEX,
            &json!({
                "schemaVersion": 2,
                "mediaType": media_type::INDEX,
                "manifests": manifests,
            }),
        );
        Layout { index, blobs }
    }

    /// Writes the layout's files into the directory `dir`, creating it;
    /// other files already there stay.
    pub fn write_dir(&self, dir: &Path) -> Result<(), IoError> {
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| IoError::new("creating", &blobs, e))?;
        let write = |path: PathBuf, bytes: &[u8]| {
            fs::write(&path, bytes).map_err(|e| IoError::new("writing", &path, e))
        };
        for blob in &self.blobs {
            write(blobs.join(blob.hex()), blob.bytes())?;
        }
        write(dir.join("oci-layout"), OCI_LAYOUT)?;
        write(dir.join("index.json"), self.index.bytes())
    }

    /// The layout as an OCI archive (a tar of its files, what skopeo and
    /// podman call `oci-archive:`): `oci-layout`, `index.json`, then the
    /// blobs in the order given to [`Layout::new`].
    pub fn to_archive(&self) -> Vec<u8> {
        let names: Vec<String> = self
            .blobs
            .iter()
            .map(|blob| format!("blobs/sha256/{}", blob.hex()))
            .collect();
        let mut files: Vec<(&str, &[u8], u32)> = vec![
            ("oci-layout", OCI_LAYOUT, 0o644),
            ("index.json", self.index.bytes(), 0o644),
        ];
        files.extend(
            names
                .iter()
                .zip(&self.blobs)
                .map(|(name, blob)| (name.as_str(), blob.bytes(), 0o644)),
        );
        tar_of(&files)
    }
}

/// A `docker save` archive of one image tagged `repo_tag` (`name:tag`):
/// `manifest.json`, the config as `<hex>.json` and each layer uncompressed
/// as `<diff id hex>/layer.tar`, entries sorted by name.
pub fn docker_archive(repo_tag: &str, config: &Blob, layers: &[&Layer]) -> Vec<u8> {
    let config_name = format!("{}.json", config.hex());
    let layer_names: Vec<String> = layers
        .iter()
        .map(|layer| format!("{}/layer.tar", layer.diff_hex()))
        .collect();
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_names,
    }])
    .to_string();
    let mut files: Vec<(&str, &[u8], u32)> = vec![
        (&config_name, config.bytes(), 0o644),
        ("manifest.json", manifest.as_bytes(), 0o644),
    ];
    files.extend(
        layer_names
            .iter()
            .zip(layers)
            .map(|(name, layer)| (name.as_str(), &layer.tar[..], 0o644)),
    );
    files.sort_by_key(|file| file.0);
    tar_of(&files)
}

/// The directory `dir` tarred as it is (owners, times and modes kept,
/// symlinks as links): how an OCI layout directory on disk becomes an OCI
/// archive.
pub fn archive_dir(dir: &Path) -> Result<Vec<u8>, IoError> {
    let packing = |source| IoError::new("packing", dir, source);
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir).map_err(packing)?;
    builder.into_inner().map_err(packing)
}

/// Reading or writing image files failed: what was being done, to which
/// path, and the cause.
#[derive(Debug)]
pub struct IoError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl IoError {
    fn new(action: &'static str, path: &Path, source: io::Error) -> IoError {
        IoError {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.path.display())
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A tar of regular files (path, content, mode) in the order given, with an
/// entry (0755) for each directory before its first file; ustar headers
/// (GNU long names past their limit), owner 0:0, mtime 0.
///
/// Panics on a path tar refuses: absolute, empty or with `..`.
fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs: Vec<&str> = Vec::new();
    for &(path, content, mode) in files {
        for (end, _) in path.match_indices('/') {
            let dir = &path[..=end];
            if !dirs.contains(&dir) {
                dirs.push(dir);
                append(&mut builder, dir, tar::EntryType::Directory, &[], 0o755);
            }
        }
        append(&mut builder, path, tar::EntryType::Regular, content, mode);
    }
    builder.into_inner().expect("a tar into memory cannot fail")
}

/// Appends one entry owned by 0:0 with mtime 0 (see [`tar_of`]).
fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    content: &[u8],
    mode: u32,
) {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(content.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder
        .append_data(&mut header, path, content)
        .unwrap_or_else(|e| panic!("tar entry {path:?}: {e}"));
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// One entry of a tar, as read back.
    #[derive(Debug, PartialEq)]
    struct Entry {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        owner: (u64, u64),
        mtime: u64,
        content: Vec<u8>,
    }

    /// The entries of a tar, in order.
    fn entries(tar: &[u8]) -> Vec<Entry> {
        let mut archive = tar::Archive::new(tar);
        let mut entries = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            entries.push(Entry {
                path: entry.path().unwrap().to_str().unwrap().to_owned(),
                kind: header.entry_type(),
                mode: header.mode().unwrap(),
                owner: (header.uid().unwrap(), header.gid().unwrap()),
                mtime: header.mtime().unwrap(),
                content,
            });
        }
        entries
    }

    fn paths(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.path.as_str()).collect()
    }

    fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no {path} in {:?}", paths(entries)))
    }

    fn read_json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn sha256(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// A one-layer image: its layer, its gzip blob, config and manifest.
    fn image() -> (Layer, Blob, Blob, Blob) {
        let layer = Layer::from_file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755);
        let container = json!({ "Entrypoint": ["/bin/hello"], "Env": [DEFAULT_PATH] });
        let config = Blob::json(
            media_type::CONFIG,
            &config("amd64", container, &[layer.diff_id()]),
        );
        let gzip = layer.gzip();
        let manifest = manifest(&config, &[&gzip]);
        (layer, gzip, config, manifest)
    }

    #[test]
    fn a_written_layout_reads_back_with_matching_digests() {
        let (layer, gzip, config, manifest) = image();
        let descriptor = manifest
            .descriptor()
            .platform("linux", "amd64")
            .annotation("org.opencontainers.image.ref.name", "latest");
        let layout = Layout::new(&[descriptor], vec![gzip, config, manifest.clone()]);
        let dir = tempfile::tempdir().unwrap();
        layout.write_dir(dir.path()).unwrap();

        let oci_layout = read_json(&fs::read(dir.path().join("oci-layout")).unwrap());
        assert_eq!(oci_layout, json!({ "imageLayoutVersion": "1.0.0" }));
        let blob = |digest: &Value| {
            let digest = digest.as_str().unwrap();
            let hex = digest.strip_prefix("sha256:").unwrap();
            let bytes = fs::read(dir.path().join("blobs/sha256").join(hex)).unwrap();
            assert_eq!(sha256(&bytes), digest, "a blob's name is its digest");
            bytes
        };
        let index = read_json(&fs::read(dir.path().join("index.json")).unwrap());
        assert_eq!(index["mediaType"], media_type::INDEX);
        let [entry] = index["manifests"].as_array().unwrap().as_slice() else {
            panic!("one manifest: {index}")
        };
        assert_eq!(
            entry["platform"],
            json!({ "os": "linux", "architecture": "amd64" })
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        let manifest_bytes = blob(&entry["digest"]);
        assert_eq!(manifest_bytes, manifest.bytes());
        assert_eq!(entry["size"], manifest_bytes.len());

        let manifest = read_json(&manifest_bytes);
        assert_eq!(manifest["config"]["mediaType"], media_type::CONFIG);
        let config = read_json(&blob(&manifest["config"]["digest"]));
        let layer_descriptor = &manifest["layers"][0];
        assert_eq!(layer_descriptor["mediaType"], media_type::LAYER_GZIP);
        let compressed = blob(&layer_descriptor["digest"]);
        assert_eq!(layer_descriptor["size"], compressed.len());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(tar, layer.tar);
        assert_eq!(config["rootfs"]["diff_ids"], json!([sha256(&tar)]));
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/hello"]));
    }

    #[test]
    fn an_archive_holds_the_layout_files_owned_by_root() {
        let (_, gzip, config, manifest) = image();
        let names: Vec<String> = [&config, &manifest, &gzip]
            .iter()
            .map(|blob| format!("blobs/sha256/{}", blob.hex()))
            .collect();
        let layout = Layout::new(&[manifest.descriptor()], vec![config, manifest, gzip]);
        let dir = tempfile::tempdir().unwrap();
        layout.write_dir(dir.path()).unwrap();
        let entries = entries(&layout.to_archive());

        let mut expected = vec!["oci-layout", "index.json", "blobs/", "blobs/sha256/"];
        expected.extend(names.iter().map(String::as_str));
        assert_eq!(paths(&entries), expected);
        for entry in &entries {
            assert_eq!((entry.owner, entry.mtime), ((0, 0), 0), "{}", entry.path);
            if entry.path.ends_with('/') {
                assert_eq!((entry.kind, entry.mode), (tar::EntryType::Directory, 0o755));
            } else {
                assert_eq!((entry.kind, entry.mode), (tar::EntryType::Regular, 0o644));
                let on_disk = fs::read(dir.path().join(&entry.path)).unwrap();
                assert_eq!(entry.content, on_disk, "{}", entry.path);
            }
        }
    }

    #[test]
    fn a_docker_archive_names_config_and_layers_by_digest() {
        let (layer, _, config, _) = image();
        let entries = entries(&docker_archive("wisp/hello:latest", &config, &[&layer]));
        let diff_hex = layer.diff_id()["sha256:".len()..].to_owned();
        let config_name = format!("{}.json", config.hex());
        let layer_name = format!("{diff_hex}/layer.tar");
        let mut files = vec![config_name.as_str(), &layer_name, "manifest.json"];
        files.sort();
        let mut expected = files.clone();
        let at = expected.iter().position(|p| *p == layer_name).unwrap();
        let layer_dir = format!("{diff_hex}/");
        expected.insert(at, &layer_dir);
        assert_eq!(
            paths(&entries),
            expected,
            "sorted, a directory before its file"
        );
        let manifest = read_json(&find(&entries, "manifest.json").content);
        assert_eq!(
            manifest,
            json!([{
                "Config": config_name,
                "RepoTags": ["wisp/hello:latest"],
                "Layers": [layer_name],
            }])
        );
        assert_eq!(find(&entries, &config_name).content, config.bytes());
        assert_eq!(find(&entries, &layer_name).content, layer.tar);
    }

    #[test]
    fn layers_and_gzip_depend_on_the_content_alone() {
        let layer = Layer::from_file("a/b/c", b"content", 0o640);
        let again = Layer::from_file("a/b/c", b"content", 0o640);
        assert_eq!(layer.tar, again.tar);
        assert_eq!(layer.gzip().bytes(), again.gzip().bytes());
        let entries = entries(&layer.tar);
        assert_eq!(paths(&entries), ["a/", "a/b/", "a/b/c"]);
        let file = Entry {
            path: "a/b/c".into(),
            kind: tar::EntryType::Regular,
            mode: 0o640,
            owner: (0, 0),
            mtime: 0,
            content: b"content".to_vec(),
        };
        assert_eq!(entries[2], file);

        let long = format!("{}/file", "d".repeat(200));
        let entries = self::entries(&Layer::from_file(&long, b"", 0o644).tar);
        assert_eq!(entries.last().map(|e| e.path.as_str()), Some(long.as_str()));
    }

    #[test]
    fn a_directory_layer_is_owned_by_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("bin")).unwrap();
        fs::write(dir.path().join("bin/tool"), b"tool").unwrap();
        std::os::unix::fs::symlink("bin/tool", dir.path().join("link")).unwrap();
        let layer = Layer::from_dir(dir.path()).unwrap();
        let entries = entries(&layer.tar);
        let tool = find(&entries, "bin/tool");
        assert_eq!((tool.kind, tool.owner), (tar::EntryType::Regular, (0, 0)));
        assert_eq!(tool.content, b"tool");
        assert_eq!(find(&entries, "link").kind, tar::EntryType::Symlink);

        let missing = dir.path().join("missing");
        let err = Layer::from_dir(&missing).err().unwrap();
        assert_eq!(err.to_string(), format!("packing {}", missing.display()));
        assert!(std::error::Error::source(&err).is_some());
    }
}
