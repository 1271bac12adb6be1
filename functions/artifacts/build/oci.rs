//! Single-layer container images of one static binary, written two ways: as
//! an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/…`, the layer gzip-compressed) and as a `docker save`
//! archive (`manifest.json`, `<config hex>.json`, `<diff id hex>/layer.tar`).
//!
//! The output is a function of the binary alone: every tar entry has mtime
//! 0, owner 0:0 and no user names, entries are sorted, the gzip header has
//! no time or host, and JSON keys are written in a fixed order. Only
//! `linux/amd64`; no history beyond one entry; panics with the path on any
//! I/O error (this runs in a build script).

use std::fs;
use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// `PATH` as docker and the OCI image spec's examples set it.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The creation time written into the config: the epoch, for reproducibility.
const EPOCH: &str = "1970-01-01T00:00:00Z";
/// gzip's "unknown" operating system, instead of the host's.
const GZIP_OS_UNKNOWN: u8 = 255;

/// What the image is made of.
pub struct ImageSpec<'a> {
    /// The name in `RepoTags` and the containerd annotation, e.g. `wisp/ping`.
    pub repository: &'a str,
    pub tag: &'a str,
    /// The static program on the host.
    pub binary: &'a Path,
    /// Where the program sits in the image (absolute); also the entrypoint.
    pub entrypoint: &'a str,
    /// e.g. `8080/tcp`.
    pub exposed_ports: &'a [&'a str],
}

/// The blobs of a built image, ready to be written in either format.
pub struct Image {
    repository: String,
    tag: String,
    /// The layer tar, uncompressed; its sha256 is the diff id.
    layer_tar: Vec<u8>,
    layer_gzip: Vec<u8>,
    config: Vec<u8>,
}

impl Image {
    /// Builds the layer (the binary alone, mode 0755, owner 0:0) and the
    /// config that runs it.
    pub fn build(spec: &ImageSpec<'_>) -> Image {
        let program =
            fs::read(spec.binary).unwrap_or_else(|e| panic!("read {}: {e}", spec.binary.display()));
        let in_layer = spec
            .entrypoint
            .strip_prefix('/')
            .unwrap_or_else(|| panic!("entrypoint {:?} is not absolute", spec.entrypoint));
        let layer_tar = tar_of(&[(in_layer, &program, 0o755)]);

        let mut gzip = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(GZIP_OS_UNKNOWN)
            .write(Vec::new(), flate2::Compression::best());
        gzip.write_all(&layer_tar).expect("gzip the layer");
        let layer_gzip = gzip.finish().expect("gzip the layer");

        let mut container = json!({
            "Entrypoint": [spec.entrypoint],
            "Env": [DEFAULT_PATH],
            "WorkingDir": "/",
        });
        if !spec.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = spec
                .exposed_ports
                .iter()
                .map(|port| ((*port).to_owned(), json!({})))
                .collect();
            container["ExposedPorts"] = Value::Object(ports);
        }
        let file_name = spec.binary.file_name().unwrap_or_default();
        let created_by = format!(
            "wisp-function-artifacts: COPY {} {}",
            file_name.to_string_lossy(),
            spec.entrypoint
        );
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": EPOCH,
            "config": container,
            "rootfs": {
                "type": "layers",
                "diff_ids": [digest(&layer_tar)],
            },
            "history": [{
                "created": EPOCH,
                "created_by": created_by,
            }],
        });
        Image {
            repository: spec.repository.to_owned(),
            tag: spec.tag.to_owned(),
            layer_tar,
            layer_gzip,
            config: to_json(&config),
        }
    }

    /// Writes an OCI image layout directory at `dir`, replacing what is there.
    pub fn write_oci_layout(&self, dir: &Path) {
        let manifest = to_json(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": descriptor(MEDIA_OCI_CONFIG, &self.config),
            "layers": [descriptor(MEDIA_OCI_LAYER_GZIP, &self.layer_gzip)],
        }));
        let mut manifest_descriptor = descriptor(MEDIA_OCI_MANIFEST, &manifest);
        manifest_descriptor["platform"] = json!({ "architecture": "amd64", "os": "linux" });
        manifest_descriptor["annotations"] = json!({
            "io.containerd.image.name": format!("docker.io/{}:{}", self.repository, self.tag),
            "org.opencontainers.image.ref.name": self.tag,
        });
        let index = to_json(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [manifest_descriptor],
        }));

        if dir.exists() {
            fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
        }
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("create {}: {e}", blobs.display()));
        for blob in [&self.layer_gzip, &self.config, &manifest] {
            write(&blobs.join(hex_sha256(blob)), blob);
        }
        write(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        write(&dir.join("index.json"), &index);
    }

    /// Writes a `docker save` (docker-archive) tarball at `path`.
    pub fn write_docker_archive(&self, path: &Path) {
        let config_name = format!("{}.json", hex_sha256(&self.config));
        let layer_dir = hex_sha256(&self.layer_tar);
        let layer_name = format!("{layer_dir}/layer.tar");
        let manifest = to_json(&json!([{
            "Config": config_name,
            "RepoTags": [format!("{}:{}", self.repository, self.tag)],
            "Layers": [layer_name],
        }]));
        let mut entries: Vec<(&str, &[u8], u32)> = vec![
            (&config_name, &self.config, 0o644),
            (&layer_name, &self.layer_tar, 0o644),
            ("manifest.json", &manifest, 0o644),
        ];
        entries.sort_by_key(|entry| entry.0);
        let archive = tar_of(&entries);
        let partial = path.with_extension("tar.partial");
        write(&partial, &archive);
        fs::rename(&partial, path)
            .unwrap_or_else(|e| panic!("rename {} to {}: {e}", partial.display(), path.display()));
    }
}

/// A tar of regular files (name, content, mode), in the order given, with
/// an entry for each parent directory before its first file.
fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs: Vec<&str> = Vec::new();
    for (name, content, mode) in files {
        if let Some((dir, _)) = name.rsplit_once('/')
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
            let header = header(&format!("{dir}/"), tar::EntryType::Directory, 0, 0o755);
            builder.append(&header, &[][..]).expect("append to a tar");
        }
        let size = u64::try_from(content.len()).expect("file size fits u64");
        let header = header(name, tar::EntryType::Regular, size, *mode);
        builder.append(&header, *content).expect("append to a tar");
    }
    builder.into_inner().expect("finish a tar")
}

fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(name)
        .unwrap_or_else(|e| panic!("tar entry {name}: {e}"));
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    header
}

/// An OCI descriptor of `blob`.
fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": digest(blob),
        "size": blob.len(),
    })
}

fn digest(blob: &[u8]) -> String {
    format!("sha256:{}", hex_sha256(blob))
}

fn hex_sha256(blob: &[u8]) -> String {
    hex::encode(Sha256::digest(blob))
}

fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialize JSON")
}

fn write(path: &Path, content: &[u8]) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
