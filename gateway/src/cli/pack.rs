//! Packing local files into something `POST /system/artifacts` takes, for
//! users without Docker: a directory (an OCI image layout, or a root
//! filesystem) or a single static binary becomes an OCI image layout in a
//! tar, built in memory with `wisp-oci-writer`. Rootfs and binary images
//! get one uncompressed layer whose files belong to root (as `COPY` in a
//! Dockerfile does), so the container's root can read them whoever owns
//! them on the host.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;
use wisp_oci_writer::{Blob, DEFAULT_PATH, Layer, Layout, media_type};

/// A directory tarred as it is (an OCI image layout directory).
pub fn tar_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(wisp_oci_writer::archive_dir(dir)?)
}

/// An image whose only layer is `rootfs`, running `command`.
pub fn rootfs_image(rootfs: &Path, command: &[String]) -> anyhow::Result<Vec<u8>> {
    if !rootfs.is_dir() {
        bail!("--rootfs {} is not a directory", rootfs.display());
    }
    if command.is_empty() {
        bail!("--rootfs needs --cmd: the command to run inside it");
    }
    let layer = Layer::from_dir(rootfs)?;
    Ok(image(layer, command))
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
    let layer = Layer::from_file(name, &bytes, 0o755);
    let default = [format!("/{name}")];
    Ok(image(
        layer,
        if command.is_empty() {
            &default
        } else {
            command
        },
    ))
}

/// An OCI image layout, as a tar, with `layer` (uncompressed) and `command`
/// as its Entrypoint.
pub fn image(layer: Layer, command: &[String]) -> Vec<u8> {
    let architecture = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let container = json!({ "Entrypoint": command, "Env": [DEFAULT_PATH] });
    let config = wisp_oci_writer::config(&architecture, container, &[layer.diff_id()]);
    let config = Blob::json(media_type::CONFIG, &config);
    let layer = layer.into_blob();
    let manifest = wisp_oci_writer::manifest(&config, &[&layer]);
    Layout::new(&[manifest.descriptor()], vec![config, manifest, layer]).to_archive()
}
