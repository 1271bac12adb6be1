//! Packing local files into something `POST /system/artifacts` takes, for
//! users without Docker: a directory (an OCI image layout, or a root
//! filesystem) or a single static binary becomes an OCI image layout in a
//! tar, built in memory. Rootfs and binary images get one uncompressed
//! layer whose files belong to root (as `COPY` in a Dockerfile does), so
//! the container's root can read them whoever owns them on the host.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// A directory tarred as it is (an OCI image layout directory).
pub fn tar_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .with_context(|| format!("packing {}", dir.display()))?;
    builder.into_inner().context("packing")
}

/// An image whose only layer is `rootfs`, running `command`.
pub fn rootfs_image(rootfs: &Path, command: &[String]) -> anyhow::Result<Vec<u8>> {
    if !rootfs.is_dir() {
        bail!("--rootfs {} is not a directory", rootfs.display());
    }
    if command.is_empty() {
        bail!("--rootfs needs --cmd: the command to run inside it");
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder
        .append_dir_all(".", rootfs)
        .with_context(|| format!("packing {}", rootfs.display()))?;
    let layer = builder.into_inner().context("packing")?;
    image(layer, command)
}

/// An image holding the static executable `binary` as `/<its name>`,
/// which is also its entrypoint (unless `command` says otherwise).
pub fn binary_image(binary: &Path, command: &[String]) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!("--binary {} is not an ELF executable", binary.display());
    }
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .context("--binary needs a file name")?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = file_header(bytes.len(), 0o755);
    builder
        .append_data(&mut header, name, bytes.as_slice())
        .context("packing")?;
    let layer = builder.into_inner().context("packing")?;
    let default = [format!("/{name}")];
    image(
        layer,
        if command.is_empty() {
            &default
        } else {
            command
        },
    )
}

/// An OCI image layout, as a tar, with `layer` (an uncompressed tar) and
/// `command` as its Entrypoint.
pub fn image(layer: Vec<u8>, command: &[String]) -> anyhow::Result<Vec<u8>> {
    let config = json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": {
            "Entrypoint": command,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", &manifest)],
    });
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> anyhow::Result<()> {
        let mut header = file_header(data.len(), 0o644);
        builder
            .append_data(&mut header, path, data)
            .context("packing")
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &serde_json::to_vec(&index)?)?;
    for blob in [&config, &manifest, &layer] {
        add(&format!("blobs/sha256/{}", hex_sha256(blob)), blob)?;
    }
    builder.into_inner().context("packing")
}

/// A regular file's header owned by 0:0, with mtime 0 (reproducible).
fn file_header(size: usize, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    header
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(blob), "size": blob.len() })
}

fn digest(blob: &[u8]) -> String {
    format!("sha256:{}", hex_sha256(blob))
}

fn hex_sha256(blob: &[u8]) -> String {
    hex::encode(Sha256::digest(blob))
}
