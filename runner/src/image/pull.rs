//! Pulling an image from an OCI registry into the [`ImageStore`], or a
//! wasm component published as an OCI artifact into the artifact store.
//!
//! The distribution protocol (the `/v2/` API, the `WWW-Authenticate`
//! bearer-token flow, basic auth, plain HTTP for named registries) is
//! `oci-client`'s; what it fetches is read here. A reference is resolved
//! to one manifest: an index (OCI or Docker manifest list) picks the
//! `linux/<host arch>` entry, as a file import does ([`pick_manifest`]).
//! Blobs the store already holds are hard-linked into the pull's staging
//! directory and not downloaded; the others are downloaded a few at a
//! time, each streamed to disk, hashed while it arrives and charged to
//! the import's [`Budget`](super::limits::Budget), so a registry cannot
//! make wisp write more than the image limits, nor keep a byte whose
//! digest is wrong. Then the import's own [`ImageStore::finish`] unpacks
//! and verifies the layers and commits the image, exactly as for a file.
//!
//! A manifest whose config or layers say it is a wasm component
//! (`application/vnd.wasm.config.v0+json` from wkg and `oci-wasm`,
//! `application/wasm` layers, Spin's
//! `application/vnd.wasm.content.layer.v1+wasm`) is not an image: its one
//! wasm layer is verified and stored as an artifact, and deployed as a
//! `.wasm` file would be.
//!
//! A pull reports how far it is — its phase, and each layer's bytes as
//! they arrive — into the [`ProgressSink`] of its options, which the
//! server lists for `GET /system/pulls` and the CLI draws.
//!
//! A registry may have a mirror (`--registry-mirror docker.io=URL`, for
//! hosts that reach no public registry, or a pull-through cache): its
//! references are fetched from there, under the same names.
//!
//! Limits: manifests and configs are capped at [`MAX_DOCUMENT_BYTES`], but
//! `oci-client` reads a manifest response whole before the cap is checked;
//! credentials are anonymous or basic (what [`RegistryAuth`] the caller
//! gives); foreign layers (`urls`) are not fetched.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::secrets::RegistryAuth;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::import::{
    Blob, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, Parts, Staging,
    parse_digest, pick_manifest,
};
use super::{Image, ImageStore, ImportError};
use crate::backend::{Cause, PrepareError, PullFailure};
use crate::spec::Digest;
use crate::store::artifact::{ArtifactStore, UploadError};

pub use oci_client::Reference;

/// Cap on a manifest, index or config fetched from a registry.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// How many indexes deep a reference may lead.
const MAX_INDEX_DEPTH: usize = 4;
/// Blobs downloaded at once.
const CONCURRENT_DOWNLOADS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("wisp/", env!("CARGO_PKG_VERSION"));

const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const WASM_LAYERS: [&str; 2] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// How to reach a registry, and when to. Its `Debug` shows no password
/// ([`Credentials`]' own hides it).
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub auth: Credentials,
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub policy: PullPolicy,
    /// Cap on a wasm component pulled into the artifact store.
    pub max_artifact_bytes: u64,
    /// Registries served from elsewhere: (`docker.io`, `http://127.0.0.1:5000`).
    pub mirrors: Vec<(String, String)>,
    /// Where the pull reports how far it is.
    pub progress: ProgressSink,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            auth: Credentials::Anonymous,
            insecure_registries: Vec::new(),
            policy: PullPolicy::default(),
            max_artifact_bytes: crate::store::artifact::DEFAULT_MAX_ARTIFACT_BYTES,
            mirrors: Vec::new(),
            progress: ProgressSink::default(),
        }
    }
}

/// How far one pull is: what it is doing, and each layer's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub phase: PullPhase,
    /// The image's layers (or a wasm artifact's one layer), in order, once
    /// the manifest is known.
    pub layers: Vec<LayerProgress>,
}

/// What a pull is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPhase {
    /// Asking the registry what the reference names.
    #[default]
    Resolving,
    /// Fetching blobs.
    Downloading,
    /// Unpacking and verifying the layers into the store.
    Unpacking,
}

impl PullPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPhase::Resolving => "resolving",
            PullPhase::Downloading => "downloading",
            PullPhase::Unpacking => "unpacking",
        }
    }
}

/// One layer of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    pub digest: Digest,
    /// Its size, as the manifest says.
    pub size: u64,
    /// Bytes in hand (all of them for a layer the store held).
    pub done: u64,
    /// The store held it: nothing was downloaded.
    pub present: bool,
}

/// Where a pull reports its [`PullProgress`]: a watch channel, or nowhere.
#[derive(Debug, Clone, Default)]
pub struct ProgressSink(Option<std::sync::Arc<tokio::sync::watch::Sender<PullProgress>>>);

/// Bytes a download takes in between two reports.
const PROGRESS_STEP: u64 = 256 << 10;

impl ProgressSink {
    /// A sink, and the receiver that watches it.
    pub fn channel() -> (Self, tokio::sync::watch::Receiver<PullProgress>) {
        let (sender, receiver) = tokio::sync::watch::channel(PullProgress::default());
        (ProgressSink(Some(std::sync::Arc::new(sender))), receiver)
    }

    fn update(&self, change: impl FnOnce(&mut PullProgress)) {
        if let Some(sender) = &self.0 {
            sender.send_modify(change);
        }
    }

    fn start(&self, layers: &[Descriptor]) {
        self.update(|p| {
            p.phase = PullPhase::Downloading;
            p.layers = layers
                .iter()
                .filter_map(|l| {
                    Some(LayerProgress {
                        digest: Digest::parse(l.digest().as_ref()).ok()?,
                        size: l.size(),
                        done: 0,
                        present: false,
                    })
                })
                .collect();
        });
    }

    /// Blob `digest` has `done` bytes in hand (`present`: from the store).
    fn layer(&self, digest: &Digest, done: u64, present: bool) {
        self.update(|p| {
            for layer in p.layers.iter_mut().filter(|l| l.digest == *digest) {
                layer.done = done;
                layer.present = present;
            }
        });
    }

    fn phase(&self, phase: PullPhase) {
        self.update(|p| p.phase = phase);
    }
}

/// When a reference is fetched from its registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always ask the registry what the reference names now.
    Always,
    /// Only when the store lacks it: a reference by digest that the store
    /// holds is used as it is; a tag is always resolved.
    #[default]
    Missing,
    /// Never: the store must hold the reference's digest.
    Never,
}

impl PullPolicy {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(PullPolicy::Always),
            "missing" => Ok(PullPolicy::Missing),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "invalid pull policy {:?}: expected always, missing or never",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// Credentials for one registry. Never printed: `Debug` says which kind.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <hidden>)"),
        }
    }
}

/// What a reference turned out to be.
#[derive(Debug, Clone)]
pub enum Pulled {
    /// A container image, now in the image store.
    Image(Image),
    /// A wasm component, now in the artifact store under this digest.
    Wasm { artifact: Digest },
}

/// What one pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub pulled: Pulled,
    /// The digest of the manifest the reference resolved to (for an
    /// index, the platform's manifest): what a deploy pins.
    pub manifest_digest: Digest,
    /// Bytes downloaded (blobs the store held are not counted).
    pub downloaded: u64,
    /// Blobs downloaded, and blobs found in the store.
    pub blobs_fetched: usize,
    pub blobs_present: usize,
    pub elapsed: Duration,
}

impl PullReport {
    /// An image the store held: nothing asked of the registry.
    fn stored(image: Image, manifest_digest: Digest) -> Self {
        PullReport {
            pulled: Pulled::Image(image),
            manifest_digest,
            downloaded: 0,
            blobs_fetched: 0,
            blobs_present: 0,
            elapsed: Duration::ZERO,
        }
    }
}

/// Why a pull failed. Nothing was stored under a final name.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{reference}: not found in the registry ({detail})")]
    NotFound { reference: String, detail: String },
    #[error(
        "{registry}: the registry refused the credentials for {reference} (401/403); log in or pass registryAuth"
    )]
    Unauthorized { registry: String, reference: String },
    #[error("{reference}: the registry could not be reached: {detail}")]
    Unreachable { reference: String, detail: String },
    #[error("{reference}: the registry answered with an error: {detail}")]
    Registry { reference: String, detail: String },
    #[error("{reference}: {what} is {size} bytes, over the limit of {MAX_DOCUMENT_BYTES}")]
    DocumentTooLarge {
        reference: String,
        what: String,
        size: usize,
    },
    #[error("{reference}: {detail}")]
    Unsupported { reference: String, detail: String },
    #[error("{reference}: blob {expected} arrived with digest {actual}")]
    DigestMismatch {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{reference}: blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        reference: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("{reference}: {source}")]
    Import {
        reference: String,
        #[source]
        source: ImportError,
    },
    #[error("{reference}: storing the artifact: {detail}")]
    Artifact { reference: String, detail: String },
}

impl PullError {
    /// What kind of failure this is, for the caller's answer.
    pub fn failure(&self) -> PullFailure {
        match self {
            PullError::NotFound { .. } => PullFailure::NotFound,
            PullError::Unauthorized { .. } => PullFailure::Unauthorized,
            PullError::Unreachable { .. } => PullFailure::Unreachable,
            PullError::Import { source, .. } if source.over_limit().is_some() => {
                PullFailure::TooLarge
            }
            PullError::Import {
                source: ImportError::Write { .. } | ImportError::Pruned { .. },
                ..
            }
            | PullError::Artifact { .. } => PullFailure::Storage,
            _ => PullFailure::Invalid,
        }
    }
}

impl From<PullError> for PrepareError {
    fn from(e: PullError) -> Self {
        PrepareError::Pull {
            failure: e.failure(),
            cause: Cause::new(e),
        }
    }
}

/// Pulls `reference` into `images` (or, for a wasm artifact, into
/// `artifacts`, within `max_artifact_bytes`).
pub async fn pull(
    images: &ImageStore,
    artifacts: &ArtifactStore,
    reference: &Reference,
    options: &PullOptions,
) -> Result<PullReport, PullError> {
    if options.policy != PullPolicy::Always
        && let Some(digest) = reference.digest().and_then(|d| Digest::parse(d).ok())
        && let Some(image) = images.image(&digest).map_err(|e| PullError::Unsupported {
            reference: reference.whole(),
            detail: e.to_string(),
        })?
    {
        return Ok(PullReport::stored(image, digest));
    }
    // A tag the store has a name for, unless told to ask the registry.
    if options.policy != PullPolicy::Always
        && reference.digest().is_none()
        && let Some(name) = local_name(reference)
        && let Some(digest) = images.named(&name).ok().flatten()
        && let Ok(Some(image)) = images.image(&digest)
    {
        return Ok(PullReport::stored(image, digest));
    }
    if options.policy == PullPolicy::Never {
        return Err(PullError::NotFound {
            reference: reference.whole(),
            detail: "the local store does not hold it, and the pull policy is never".into(),
        });
    }
    let started = Instant::now();
    let (mirrored, options) = mirrored(reference, options);
    let puller = Puller::new(mirrored.as_ref().unwrap_or(reference), &options);
    let (manifest_bytes, manifest_digest) = puller.resolve().await?;
    let manifest: ImageManifest = puller.parse(&manifest_bytes, "the manifest")?;
    if is_wasm(&manifest) {
        options.progress.start(
            &manifest
                .layers()
                .iter()
                .filter(|l| WASM_LAYERS.contains(&l.media_type().to_string().as_str()))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let (artifact, downloaded) = puller
            .wasm_layer(&manifest, artifacts, options.max_artifact_bytes)
            .await?;
        let report = PullReport {
            pulled: Pulled::Wasm { artifact },
            manifest_digest,
            downloaded,
            blobs_fetched: 1,
            blobs_present: 0,
            elapsed: started.elapsed(),
        };
        tracing::info!(reference = %reference, digest = %report.manifest_digest, bytes = downloaded, seconds = report.elapsed.as_secs_f64(), "pulled a wasm component");
        return Ok(report);
    }
    if let Some(layer) = manifest.layers().iter().find(|l| l.urls().is_some()) {
        return Err(puller.unsupported(format!(
            "layer {} is a foreign layer (it names URLs), which wisp does not fetch",
            layer.digest()
        )));
    }

    options.progress.start(manifest.layers());
    let staging = Staging::new(images).map_err(|e| puller.import(e))?;
    let manifest_blob = puller.put_document(&staging, &manifest_bytes, &manifest_digest)?;
    let config_blob = puller.blob(images, &staging, manifest.config()).await?;
    let config_bytes = std::fs::read(&config_blob.blob.path).map_err(|e| {
        puller.import(ImportError::Read {
            path: config_blob.blob.path.clone(),
            source: e,
        })
    })?;
    let config = puller.parse(&config_bytes, "the image config")?;
    // The futures are made first: a stream that maps with a closure
    // trips the compiler's Send inference in async traits.
    let mut downloads = Vec::new();
    for layer in manifest.layers() {
        downloads.push(puller.blob(images, &staging, layer));
    }
    let fetched: Vec<Fetched> = futures::stream::iter(downloads)
        .buffered(CONCURRENT_DOWNLOADS)
        .try_collect()
        .await?;
    options.progress.phase(PullPhase::Unpacking);
    let (mut downloaded, mut blobs_fetched, mut blobs_present) = (0, 0, 0);
    for f in std::iter::once(&config_blob).chain(&fetched) {
        match f.downloaded {
            Some(n) => {
                downloaded += n;
                blobs_fetched += 1;
            }
            None => blobs_present += 1,
        }
    }
    let parts = Parts {
        manifest: manifest_blob,
        config_blob: config_blob.blob,
        config,
        layers: fetched
            .into_iter()
            .zip(manifest.layers())
            .map(|(f, d)| (f.blob, d.media_type().to_string()))
            .collect(),
        names: local_name(reference).into_iter().collect(),
    };
    let store = images.clone();
    let image = tokio::task::spawn_blocking(move || store.finish(&staging, parts))
        .await
        .map_err(|e| puller.unsupported(format!("the import task failed: {e}")))?
        .map_err(|e| puller.import(e))?;
    let report = PullReport {
        pulled: Pulled::Image(image),
        manifest_digest,
        downloaded,
        blobs_fetched,
        blobs_present,
        elapsed: started.elapsed(),
    };
    tracing::info!(reference = %reference, digest = %report.manifest_digest, bytes = report.downloaded, fetched = report.blobs_fetched, present = report.blobs_present, seconds = report.elapsed.as_secs_f64(), "pulled an image");
    Ok(report)
}

/// The local name a pull by `reference` gives its image:
/// `registry/repository:tag` (none for a reference by digest alone).
pub fn local_name(reference: &Reference) -> Option<String> {
    let tag = reference.tag()?;
    Some(
        Reference::with_tag(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            tag.to_owned(),
        )
        .whole(),
    )
}

/// `reference` on its registry's mirror, if it has one, and the options
/// that reach the mirror (plain HTTP for an `http://` one).
fn mirrored(reference: &Reference, options: &PullOptions) -> (Option<Reference>, PullOptions) {
    let mut options = options.clone();
    let mirror = options.mirrors.iter().find(|(registry, _)| {
        registry == reference.registry() || registry == reference.resolve_registry()
    });
    let Some((_, url)) = mirror else {
        return (None, options);
    };
    let (host, insecure) = match url.strip_prefix("http://") {
        Some(host) => (host, true),
        None => (url.strip_prefix("https://").unwrap_or(url), false),
    };
    let host = host.trim_end_matches('/').to_owned();
    if insecure {
        options.insecure_registries.push(host.clone());
    }
    let repository = reference.repository().to_owned();
    let on_mirror = match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(host, repository, tag.to_owned(), digest.to_owned())
        }
        (None, Some(digest)) => Reference::with_digest(host, repository, digest.to_owned()),
        (tag, None) => Reference::with_tag(host, repository, tag.unwrap_or("latest").to_owned()),
    };
    (Some(on_mirror), options)
}

/// A blob in staging, and how many bytes were downloaded for it (`None`:
/// the store had it).
struct Fetched {
    blob: Blob,
    downloaded: Option<u64>,
}

struct Puller<'a> {
    client: oci_client::Client,
    reference: &'a Reference,
    auth: RegistryAuth,
    progress: ProgressSink,
}

/// Installs the process's TLS crypto provider (ring) once.
pub fn crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The registry client's settings: TLS but for `insecure_registries`,
/// wisp's timeouts and user agent.
fn client_config(insecure_registries: &[String]) -> ClientConfig {
    crypto_provider();
    ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure_registries.to_vec()),
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    }
}

fn is_wasm(manifest: &ImageManifest) -> bool {
    manifest.config().media_type().to_string() == WASM_CONFIG
        || manifest
            .layers()
            .iter()
            .any(|l| WASM_LAYERS.contains(&l.media_type().to_string().as_str()))
}

impl<'a> Puller<'a> {
    fn new(reference: &'a Reference, options: &PullOptions) -> Self {
        let config = client_config(&options.insecure_registries);
        let auth = match &options.auth {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        };
        Puller {
            client: oci_client::Client::new(config),
            reference,
            auth,
            progress: options.progress.clone(),
        }
    }

    fn name(&self) -> String {
        self.reference.whole()
    }

    /// The reference's manifest for this host, following indexes, with its
    /// digest.
    async fn resolve(&self) -> Result<(bytes::Bytes, Digest), PullError> {
        let accepted = [
            OCI_MANIFEST,
            DOCKER_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST_LIST,
        ];
        let mut at = self.reference.clone();
        for _ in 0..MAX_INDEX_DEPTH {
            let (bytes, digest) = self
                .client
                .pull_manifest_raw(&at, &self.auth, &accepted)
                .await
                .map_err(|e| self.distribution(e))?;
            if bytes.len() > MAX_DOCUMENT_BYTES {
                return Err(PullError::DocumentTooLarge {
                    reference: self.name(),
                    what: "the manifest".into(),
                    size: bytes.len(),
                });
            }
            let digest = parse_digest(&digest).map_err(|e| self.import(e))?;
            let actual = Digest::from_sha256(&Sha256::digest(&bytes));
            if actual != digest {
                return Err(PullError::DigestMismatch {
                    reference: self.name(),
                    expected: digest,
                    actual,
                });
            }
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Kind {
                media_type: Option<String>,
                manifests: Option<serde_json::Value>,
            }
            let kind: Kind = self.parse(&bytes, "the manifest")?;
            let is_index = match kind.media_type.as_deref() {
                Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
                Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
                Some(other) => {
                    return Err(self.unsupported(format!(
                        "unsupported manifest media type {:?}",
                        other.chars().take(100).collect::<String>()
                    )));
                }
                None => kind.manifests.is_some(),
            };
            if !is_index {
                return Ok((bytes, digest));
            }
            let index: ImageIndex = self.parse(&bytes, "the index")?;
            let entry = pick_manifest(index.manifests()).map_err(|e| self.import(e))?;
            at = self.reference.clone_with_digest(entry.digest().to_string());
        }
        Err(self.unsupported(format!("indexes nested deeper than {MAX_INDEX_DEPTH}")))
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: &str,
    ) -> Result<T, PullError> {
        serde_json::from_slice(bytes).map_err(|source| {
            self.import(ImportError::Json {
                name: what.to_owned(),
                source,
            })
        })
    }

    /// Writes a document already fetched (and verified) into staging.
    fn put_document(
        &self,
        staging: &Staging,
        bytes: &[u8],
        digest: &Digest,
    ) -> Result<Blob, PullError> {
        let path = staging.path();
        staging
            .budget
            .spend_bytes(bytes.len() as u64)
            .map_err(|limit| {
                self.import(ImportError::OverLimit {
                    name: "the manifest".into(),
                    limit,
                })
            })?;
        std::fs::write(&path, bytes).map_err(|e| {
            self.import(ImportError::Write {
                path: path.clone(),
                source: e,
            })
        })?;
        Ok(Blob {
            digest: digest.clone(),
            size: bytes.len() as u64,
            path,
        })
    }

    /// The blob `descriptor` names, in staging: linked from the store, or
    /// downloaded and verified.
    async fn blob(
        &self,
        images: &ImageStore,
        staging: &Staging,
        descriptor: &Descriptor,
    ) -> Result<Fetched, PullError> {
        let digest = parse_digest(descriptor.digest().as_ref()).map_err(|e| self.import(e))?;
        let expected = descriptor.size();
        // The store's blob, if it has it: verified when it was stored.
        if let Some(blob) = staging
            .link(&images.blob_path(&digest), &digest)
            .map_err(|e| self.import(e))?
            && blob.size == expected
        {
            self.progress.layer(&digest, expected, true);
            return Ok(Fetched {
                blob,
                downloaded: None,
            });
        }
        let path = staging.path();
        let size = self
            .download(&digest, expected, &path, |n| {
                staging.budget.spend_bytes(n).map_err(|limit| {
                    self.import(ImportError::OverLimit {
                        name: format!("blob {digest}"),
                        limit,
                    })
                })
            })
            .await?;
        Ok(Fetched {
            blob: Blob { digest, size, path },
            downloaded: Some(size),
        })
    }

    /// Streams blob `digest` into `path`, hashing it and charging each
    /// chunk with `spend` before it is written; fails past `expected`
    /// bytes or on a digest that does not match.
    async fn download(
        &self,
        digest: &Digest,
        expected: u64,
        path: &std::path::Path,
        spend: impl Fn(u64) -> Result<(), PullError>,
    ) -> Result<u64, PullError> {
        let write_error = |e: std::io::Error| {
            self.import(ImportError::Write {
                path: path.to_owned(),
                source: e,
            })
        };
        let mut stream = self
            .client
            .pull_blob_stream(self.reference, digest.as_str())
            .await
            .map_err(|e| self.distribution(e))?;
        let mut file = tokio::fs::File::create_new(path)
            .await
            .map_err(write_error)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut reported = 0u64;
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.map_err(|e| self.chunk_error(digest, &e))?;
            size += chunk.len() as u64;
            if size - reported >= PROGRESS_STEP {
                self.progress.layer(digest, size, false);
                reported = size;
            }
            if size > expected {
                return Err(PullError::SizeMismatch {
                    reference: self.name(),
                    digest: digest.clone(),
                    expected,
                    actual: size,
                });
            }
            spend(chunk.len() as u64)?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)?;
        if size != expected {
            return Err(PullError::SizeMismatch {
                reference: self.name(),
                digest: digest.clone(),
                expected,
                actual: size,
            });
        }
        let actual = Digest::from_sha256(&hasher.finalize());
        if actual != *digest {
            return Err(PullError::DigestMismatch {
                reference: self.name(),
                expected: digest.clone(),
                actual,
            });
        }
        self.progress.layer(digest, size, false);
        Ok(size)
    }

    /// Stores the one wasm layer of a wasm artifact.
    async fn wasm_layer(
        &self,
        manifest: &ImageManifest,
        artifacts: &ArtifactStore,
        max_bytes: u64,
    ) -> Result<(Digest, u64), PullError> {
        let wasm: Vec<&Descriptor> = manifest
            .layers()
            .iter()
            .filter(|l| WASM_LAYERS.contains(&l.media_type().to_string().as_str()))
            .collect();
        let [layer] = wasm[..] else {
            return Err(self.unsupported(format!(
                "the artifact has {} wasm layers; wisp deploys one component",
                wasm.len()
            )));
        };
        let digest = parse_digest(layer.digest().as_ref()).map_err(|e| self.import(e))?;
        if layer.size() > max_bytes {
            return Err(self.unsupported(format!(
                "the wasm layer is {} bytes, over the artifact limit of {max_bytes} (wisp serve --max-artifact-size)",
                layer.size()
            )));
        }
        if artifacts.contains(&digest) {
            self.progress.layer(&digest, layer.size(), true);
            return Ok((digest, 0));
        }
        let blob = self
            .client
            .pull_blob_stream(self.reference, digest.as_str())
            .await
            .map_err(|e| self.distribution(e))?;
        // The stream's error is only text to the store: keep what it was.
        let failed = std::sync::Mutex::new(None);
        let received = std::sync::atomic::AtomicU64::new(0);
        let stream = blob.stream.inspect_ok(|chunk| {
            let before =
                received.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let now = before + chunk.len() as u64;
            if now / PROGRESS_STEP != before / PROGRESS_STEP || now == layer.size() {
                self.progress.layer(&digest, now, false);
            }
        });
        let stream = stream.map_err(|e| {
            let error = self.chunk_error(&digest, &e);
            let text = error.to_string();
            *failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
            text
        });
        let limit = layer.size();
        let stored = artifacts.put_verified(stream, limit, Some(&digest)).await;
        if let Some(error) = failed
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            return Err(error);
        }
        stored.map_err(|e| match e {
            UploadError::DigestMismatch { expected, actual } => PullError::DigestMismatch {
                reference: self.name(),
                expected,
                actual,
            },
            UploadError::TooLarge { limit } => PullError::SizeMismatch {
                reference: self.name(),
                digest: digest.clone(),
                expected: limit,
                actual: limit + 1,
            },
            other => PullError::Artifact {
                reference: self.name(),
                detail: other.to_string(),
            },
        })?;
        Ok((digest, limit))
    }

    /// A failed chunk of blob `digest`: the client's own digest check at
    /// the end of the stream, or the connection.
    fn chunk_error(&self, digest: &Digest, e: &std::io::Error) -> PullError {
        let verification = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<DigestError>());
        if let Some(DigestError::VerificationError { actual, .. }) = verification {
            return PullError::DigestMismatch {
                reference: self.name(),
                expected: digest.clone(),
                actual: Digest::parse(actual).unwrap_or_else(|_| Digest::from_sha256(&[0; 32])),
            };
        }
        PullError::Unreachable {
            reference: self.name(),
            detail: format!("downloading blob {digest}: {e}"),
        }
    }

    fn import(&self, source: ImportError) -> PullError {
        PullError::Import {
            reference: self.name(),
            source,
        }
    }

    fn unsupported(&self, detail: String) -> PullError {
        PullError::Unsupported {
            reference: self.name(),
            detail,
        }
    }

    /// Tells what the registry said apart: missing, refused, unreachable.
    fn distribution(&self, e: OciDistributionError) -> PullError {
        let reference = self.name();
        let registry = self.reference.resolve_registry().to_owned();
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => PullError::Unauthorized {
                registry,
                reference,
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}", e.code))
                    .collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| c.contains("Unknown")) {
                    PullError::NotFound { reference, detail }
                } else if codes
                    .iter()
                    .any(|c| c.contains("Unauthorized") || c.contains("Denied"))
                {
                    PullError::Unauthorized {
                        registry,
                        reference,
                    }
                } else {
                    PullError::Registry { reference, detail }
                }
            }
            OciDistributionError::ServerError {
                code: 404, message, ..
            } => PullError::NotFound {
                reference,
                detail: message.chars().take(200).collect(),
            },
            OciDistributionError::RequestError(e) => {
                let mut detail = error_chain(&e);
                // What rustls says when the other end speaks plain HTTP.
                if detail.contains("InvalidContentType") {
                    detail.push_str(&format!(
                        " (does {registry} speak plain HTTP? name it with --insecure-registry {registry})"
                    ));
                }
                PullError::Unreachable { reference, detail }
            }
            other => PullError::Registry {
                reference,
                detail: error_chain(&other).chars().take(300).collect(),
            },
        }
    }
}

/// An error and its sources, joined: reqwest's own text hides the cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parses a registry reference as `docker` does (`nginx` →
/// `docker.io/library/nginx:latest`).
pub fn parse_reference(text: &str) -> Result<Reference, String> {
    text.parse::<Reference>().map_err(|e| {
        format!(
            "{:?} is not an image reference ([registry[:port]/]repository[:tag][@sha256:<hex>]): {e}",
            text.chars().take(100).collect::<String>()
        )
    })
}

/// Checks `credentials` against `registry` (`host[:port]`) as `docker
/// login` does: `/v2/` with basic auth, or, when the registry answers with
/// a bearer challenge, a token from its realm.
pub async fn check_login(
    registry: &str,
    credentials: &Credentials,
    insecure_registries: &[String],
) -> Result<(), PullError> {
    crypto_provider();
    let Credentials::Basic { username, password } = credentials else {
        return Ok(());
    };
    let scheme = if insecure_registries.iter().any(|r| r == registry) {
        "http"
    } else {
        "https"
    };
    let url = format!("{scheme}://{registry}/v2/");
    let unreachable = |e: reqwest::Error| PullError::Unreachable {
        reference: registry.to_owned(),
        detail: error_chain(&e),
    };
    let unauthorized = || PullError::Unauthorized {
        registry: registry.to_owned(),
        reference: registry.to_owned(),
    };
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(USER_AGENT)
        .build()
        .map_err(unreachable)?;
    let challenge = client.get(&url).send().await.map_err(unreachable)?;
    let bearer = challenge
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer"));
    if challenge.status().is_success() {
        // The registry asks no one for credentials.
        return Ok(());
    }
    if bearer {
        // The token flow, as a pull would do it; any repository will do
        // for a token server to check the credentials.
        let probe = Reference::with_tag(
            registry.to_owned(),
            "library/wisp-login".into(),
            "latest".into(),
        );
        return match oci_client::Client::new(client_config(insecure_registries))
            .auth(
                &probe,
                &RegistryAuth::Basic(username.clone(), password.clone()),
                oci_client::RegistryOperation::Pull,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(OciDistributionError::RequestError(e)) => Err(unreachable(e)),
            Err(_) => Err(unauthorized()),
        };
    }
    let answer = client
        .get(&url)
        .basic_auth(username, Some(password))
        .send()
        .await
        .map_err(unreachable)?;
    if answer.status().is_success() {
        Ok(())
    } else if matches!(answer.status().as_u16(), 401 | 403) {
        Err(unauthorized())
    } else {
        Err(PullError::Registry {
            reference: registry.to_owned(),
            detail: format!("{url} answered {}", answer.status()),
        })
    }
}
