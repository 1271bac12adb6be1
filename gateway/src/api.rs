//! The control API's wire types, shaped like the OpenFaaS gateway API
//! (`FunctionDeployment`, `FunctionStatus`, `GatewayInfo`,
//! `DeleteFunctionRequest`) so that its clients work, plus wisp's own
//! optional fields (`timeout`, `maxBodySize`, `allowOutbound`, the scaling
//! settings of [`ScalingFields`], which are also the CLI's scaling flags).
//! Conversion to a [`FunctionSpec`] validates everything and says what is
//! wrong. Fields neither OpenFaaS nor wisp defines are ignored, as the spec's
//! open objects and OpenFaaS allow, and named in the answer
//! ([`FunctionDeployment::ignored_fields`]), so that a misspelt one does not
//! pass unnoticed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wisp_runner::backend::{Prepared, PulledArtifact};
use wisp_runner::image::pull::{self, Credentials, PullOptions, PullPolicy, Reference};
use wisp_runner::protocol::Protocol;
use wisp_runner::spec::{
    self, ContainerOptions, Digest, FunctionKind, FunctionName, FunctionSpec, Limits, ScalingSpec,
    SpecError,
};

use crate::registry::StoredFunction;

/// The default namespace (OpenFaaS's), where a request that names none
/// acts; see [`crate::namespaces`].
pub const NAMESPACE: &str = "openfaas-fn";

/// An optional field that may be left out but is not `null`: the spec's
/// types are not nullable but for `labels`, `annotations`, `limits` and
/// `requests` (absent, the field is `None` by `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Fields of a request that no one defines, by name.
pub type UnknownFields = BTreeMap<String, serde_json::Value>;

/// `POST`/`PUT /system/functions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    pub service: String,
    /// An artifact digest, `sha256:<hex>`, from `POST /system/artifacts`,
    /// or a registry reference (`[registry[:port]/]repo[:tag][@digest]`).
    pub image: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub env_process: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub constraints: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub secrets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub read_only_root_filesystem: Option<bool>,
    /// Credentials for the image's registry, base64 `user:password` (as
    /// older OpenFaaS took them). Used for the pull, never stored, logged
    /// or returned.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub registry_auth: Option<String>,
    /// Deprecated in OpenFaaS and ignored there too.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub network: Option<String>,
    /// wisp: the deadline of one request, e.g. `30s`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<String>,
    /// wisp: the largest request body, e.g. `6Mi`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_body_size: Option<String>,
    /// wisp: hosts the function may call over HTTP (`*` for any).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_outbound: Option<Vec<String>>,
    /// wisp, images only: `http` (default) or `cgi`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub protocol: Option<String>,
    /// wisp, images only: the port an `http` handler listens on.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u16>,
    /// wisp, images only: replaces the image's Entrypoint and Cmd.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub command: Option<Vec<String>>,
    /// wisp: the scaling settings; `minInstances` and `maxInstances` fall
    /// back to OpenFaaS's labels `com.openfaas.scale.min` and `.max`.
    #[serde(flatten)]
    pub scaling: ScalingFields,
    /// wisp, wasi:http components: requests one wasm instance serves
    /// (default 1: a fresh instance per request).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_reuse: Option<u32>,
    /// wisp, an image named by reference: when to ask its registry
    /// (`always`, `missing`, `never`) [default: `always` for a tag,
    /// `missing` for a digest].
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub pull: Option<String>,
    /// wisp, an image named by reference: registries (`host:port`) to
    /// reach over plain HTTP for this deploy.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub insecure_registries: Option<Vec<String>>,
    /// Everything else: ignored (after `scaling`, which takes its fields).
    #[serde(flatten, skip_serializing)]
    pub unknown: UnknownFields,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionResources {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<String>,
    /// Everything else: ignored.
    #[serde(flatten, skip_serializing)]
    pub unknown: UnknownFields,
}

/// The scaling settings a deployment or a scale request may give, flattened
/// into both (camelCase JSON fields), and the `--min`, `--max`, … flags of
/// `wisp deploy` and `wisp scale` (the doc comments are their help). `None`
/// leaves the default, or in a scale request the current value. The types
/// that embed it collect the fields it does not take as unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "camelCase")]
pub struct ScalingFields {
    /// Instances kept running (pre-warmed) [default: 0, scale to zero].
    #[arg(long = "min")]
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_instances: Option<u32>,
    /// Most instances [default: 10 for containers, 1 for wasm].
    #[arg(long = "max")]
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_instances: Option<u32>,
    /// Requests one instance takes at once [default: containers 8 (http) or 1 (cgi); wasm 1000].
    #[arg(long)]
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub concurrency: Option<u32>,
    /// Idle time before an instance stops, e.g. `60s` [default: 60s].
    #[arg(long)]
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<String>,
    /// Requests that may wait once every instance is busy [default: 100].
    #[arg(long)]
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub queue_size: Option<u32>,
    /// Longest wait in that queue [default: the request timeout].
    #[arg(long)]
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub queue_timeout: Option<String>,
}

/// `DELETE /system/functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteFunctionRequest {
    pub function_name: String,
    /// wisp (as `?namespace=` in the spec): the function's namespace.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
}

/// One entry of `GET /system/functions`, and `GET /system/function/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    pub image: String,
    pub namespace: String,
    pub env_vars: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub limits: FunctionResources,
    pub invocation_count: u64,
    pub replicas: u64,
    pub available_replicas: u64,
    pub created_at: String,
    /// wisp: how the artifact runs (`wasm-http`, `wasm-cgi`).
    pub kind: FunctionKind,
    /// wisp: the request deadline.
    pub timeout: String,
    /// wisp: the request body limit in bytes.
    pub max_body_size: u64,
    pub allow_outbound: Vec<String>,
    /// The secrets the function reads (names only, never values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The deploy this version is, among the name's (`wisp history`);
    /// absent while a first deploy is still pulling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// wisp, container functions: how the handler is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// wisp, container functions: the image's manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    /// wisp, functions deployed from a registry: the manifest digest the
    /// reference in `image` resolved to, which the function keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// wisp: the scaling settings in effect.
    #[serde(default)]
    pub scaling: ScalingStatus,
    /// wisp, container functions: the port an `http` handler listens on, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// wisp, container functions: the command replacing Entrypoint+Cmd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// wisp, wasi:http functions: requests per wasm instance, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
    /// wisp: `ready` when a version serves; `pulling` while the first
    /// deploy is still pulling its image; `failed` when it could not.
    #[serde(default)]
    pub state: FunctionState,
    /// wisp: a deploy of this name by reference that has not finished (an
    /// update's, while the old version serves), or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploying: Option<DeployingStatus>,
}

/// Whether a function serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionState {
    #[default]
    Ready,
    Pulling,
    Failed,
}

impl FunctionState {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionState::Ready => "ready",
            FunctionState::Pulling => "pulling",
            FunctionState::Failed => "failed",
        }
    }
}

/// A deploy by reference in flight, or the error that ended it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployingStatus {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The pull's progress, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullStatus>,
}

/// One pull in flight: `GET /system/pulls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullStatus {
    pub reference: String,
    /// The function whose deploy runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// `resolving`, `downloading` or `unpacking`.
    pub phase: String,
    pub seconds: f64,
    pub layers: Vec<LayerStatus>,
}

/// One layer of a pull in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerStatus {
    pub digest: String,
    pub size: u64,
    /// Bytes in hand.
    pub done: u64,
    /// The store held it already.
    pub present: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    pub min_instances: usize,
    pub max_instances: usize,
    pub concurrency: usize,
    pub idle_timeout: String,
    pub queue_size: usize,
    pub queue_timeout: String,
}

/// `POST /system/scale-function/{name}` (OpenFaaS's `replicas` sets the
/// minimum; wisp's fields change the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleRequest {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_name: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
    /// OpenFaaS: the minimum (int64 ≥ 0 in the spec; wisp runs at most
    /// [`spec::MAX_INSTANCES`], so more are capped at that).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub replicas: Option<i64>,
    /// wisp: the settings to change; those not given stay as they are.
    #[serde(flatten)]
    pub scaling: ScalingFields,
    /// Everything else: ignored (after `scaling`, which takes its fields).
    #[serde(flatten, skip_serializing)]
    pub unknown: UnknownFields,
}

/// `GET /system/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub provider: ProviderInfo,
    pub version: VersionInfo,
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub provider: String,
    pub orchestration: String,
    pub version: VersionInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub sha: String,
    pub release: String,
}

/// One entry of `GET /system/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    /// The manifest digest.
    pub digest: String,
    /// Its local names, `registry/repository:tag`.
    #[serde(default)]
    pub names: Vec<String>,
    /// Bytes of regular files across its layers.
    pub size: u64,
    /// Bottom layer first.
    pub layers: Vec<LayerSummary>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Deployed functions that run it.
    pub functions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerSummary {
    pub diff_id: String,
    pub size: u64,
}

/// `POST /system/prune` answers this: what was removed (or, in a dry run,
/// would be), each list sorted by digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub dry_run: bool,
    /// Uploaded artifacts (with the code compiled from them).
    pub artifacts: Vec<PrunedEntry>,
    /// Image records, by manifest digest.
    pub images: Vec<PrunedEntry>,
    /// Unpacked layers, by diff id.
    pub layers: Vec<PrunedEntry>,
    /// Image blobs: manifests, configs, layers as shipped.
    pub blobs: Vec<PrunedEntry>,
    /// Disk space freed (or that would be), in bytes.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedEntry {
    pub digest: String,
    pub bytes: u64,
}

impl PruneReport {
    /// Whether nothing was (or would be) removed.
    pub fn is_empty(&self) -> bool {
        self.entries().next().is_none()
    }

    /// Every entry with what it is: `artifact`, `image`, `layer`, `blob`.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &PrunedEntry)> {
        self.artifacts
            .iter()
            .map(|e| ("artifact", e))
            .chain(self.images.iter().map(|e| ("image", e)))
            .chain(self.layers.iter().map(|e| ("layer", e)))
            .chain(self.blobs.iter().map(|e| ("blob", e)))
    }
}

/// `POST /system/artifacts` answers this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactUploaded {
    pub digest: String,
    pub size: u64,
}

impl GatewayInfo {
    pub fn current() -> Self {
        let version = VersionInfo {
            sha: option_env!("WISP_GIT_SHA").unwrap_or("unknown").to_owned(),
            release: env!("CARGO_PKG_VERSION").to_owned(),
        };
        GatewayInfo {
            provider: ProviderInfo {
                provider: "wisp".into(),
                orchestration: "wisp".into(),
                version: version.clone(),
            },
            version,
            arch: std::env::consts::ARCH.into(),
        }
    }
}

/// Why a deployment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(
        "image {image:?} is neither an artifact digest (sha256:<hex>, from POST /system/artifacts or `wisp deploy FILE`) nor a registry reference ([registry[:port]/]repository[:tag][@sha256:<hex>]): {detail}"
    )]
    NotAnArtifact { image: String, detail: String },
    #[error("registryAuth must be base64 of user:password")]
    RegistryAuth,
    #[error("{0}")]
    PullPolicy(String),
    #[error(
        "invalid namespace {namespace:?}: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63"
    )]
    Namespace { namespace: String },
    #[error(
        "{name}.{namespace} is longer than 63 characters: a function's name and namespace together are at most 62"
    )]
    QualifiedName { name: String, namespace: String },
    #[error("rawValue of secret {name:?} is not base64")]
    SecretEncoding { name: String },
    #[error("envProcess is not supported by wasm functions")]
    EnvProcess,
    #[error("{field} applies only to container images, and this artifact is WebAssembly")]
    NotAContainer { field: &'static str },
    #[error(
        "invalid cpu limit {value:?}: expected cores such as 0.5 or 2, or millicores such as 500m (10m..=64)"
    )]
    Cpu { value: String },
    #[error(
        "a scale request gives serviceName and replicas, or wisp's minInstances, maxInstances, concurrency, idleTimeout, queueSize or queueTimeout"
    )]
    IncompleteScale,
}

impl FunctionDeployment {
    /// Validates the request into a spec of the given kind.
    pub fn to_spec(&self, kind: FunctionKind) -> Result<FunctionSpec, DeploymentError> {
        self.to_spec_with(kind, self.artifact()?)
    }

    /// Validates the request into a spec of the given kind that runs
    /// `artifact` (an upload's digest, or what a pull found).
    pub fn to_spec_with(
        &self,
        kind: FunctionKind,
        artifact: Digest,
    ) -> Result<FunctionSpec, DeploymentError> {
        let bare = FunctionName::new(&self.service)?;
        check_namespace(self.namespace.as_deref())?;
        let namespace = crate::namespaces::other(self.namespace.as_deref()).map(str::to_owned);
        let name = match &namespace {
            None => bare,
            Some(ns) => {
                FunctionName::new(&crate::namespaces::key(bare.as_str(), ns)).map_err(|_| {
                    DeploymentError::QualifiedName {
                        name: self.service.clone(),
                        namespace: ns.clone(),
                    }
                })?
            }
        };
        let mut secrets = self.secrets.clone().unwrap_or_default();
        for secret in &secrets {
            spec::validate_secret_name(secret)?;
        }
        secrets.sort();
        secrets.dedup();
        if self.env_process.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(DeploymentError::EnvProcess);
        }
        let env = self.env_vars.clone().unwrap_or_default();
        for key in env.keys() {
            spec::validate_env_name(key)?;
        }
        let mut limits = Limits::default();
        if let Some(memory) = self.limits.as_ref().and_then(|l| l.memory.as_deref()) {
            limits.memory_bytes = spec::parse_bytes("memory limit", memory)?;
        }
        if let Some(timeout) = self.timeout.as_deref() {
            limits.timeout_ms = spec::parse_duration("timeout", timeout)?
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX);
        }
        if let Some(max_body) = self.max_body_size.as_deref() {
            limits.max_body_bytes = spec::parse_bytes("body limit", max_body)?;
        }
        limits.validate()?;
        if let Some(p) = self.protocol.as_deref() {
            Protocol::parse(p)?;
        }
        self.cpu_millis()?;
        Ok(FunctionSpec {
            name,
            artifact,
            kind,
            env,
            labels: self.labels.clone().unwrap_or_default(),
            annotations: self.annotations.clone().unwrap_or_default(),
            limits,
            allow_outbound: self.allow_outbound.clone().unwrap_or_default(),
            container: None,
            scaling: self.scaling()?,
            source: None,
            namespace,
            secrets,
            secrets_dir: None,
        })
    }

    /// Completes a validated draft with what the backend found the
    /// artifact to be.
    pub fn with_prepared(
        &self,
        draft: FunctionSpec,
        prepared: Prepared,
    ) -> Result<FunctionSpec, DeploymentError> {
        if self.instance_reuse.is_some_and(|n| n > 1) && prepared.kind != FunctionKind::WasmHttp {
            return Err(DeploymentError::Spec(SpecError::OutOfRange {
                what: "instanceReuse",
                value: format!(
                    "{} for a {} function",
                    self.instance_reuse.unwrap_or(1),
                    prepared.kind.as_str()
                ),
                range: "only wasi:http components reuse instances",
            }));
        }
        let container = match (prepared.kind, prepared.image) {
            (FunctionKind::Container, Some(image)) => Some(ContainerOptions {
                image,
                // An image holding a Lambda runtime speaks Lambda's
                // protocol unless the deploy names another.
                protocol: match (self.protocol.as_deref(), prepared.lambda_bootstrap) {
                    (Some(p), _) => Protocol::parse(p)?,
                    (None, Some(_)) => Protocol::Lambda,
                    (None, None) => Protocol::Http,
                },
                port: self.port,
                command: self.command.clone().unwrap_or_default(),
                cpu_millis: self.cpu_millis()?,
            }),
            _ => {
                for (field, set) in [
                    ("protocol", self.protocol.is_some()),
                    ("port", self.port.is_some()),
                    ("command", self.command.is_some()),
                ] {
                    if set {
                        return Err(DeploymentError::NotAContainer { field });
                    }
                }
                None
            }
        };
        Ok(FunctionSpec {
            kind: prepared.kind,
            container,
            ..draft
        })
    }

    /// The scaling settings: wisp's fields, else OpenFaaS's labels.
    pub fn scaling(&self) -> Result<ScalingSpec, DeploymentError> {
        let label = |key: &str| -> Result<Option<u32>, DeploymentError> {
            match self.labels.as_ref().and_then(|l| l.get(key)) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    DeploymentError::Spec(SpecError::OutOfRange {
                        what: "scale label",
                        value: format!("{key}={}", v.chars().take(20).collect::<String>()),
                        range: "a whole number",
                    })
                }),
            }
        };
        let mut from_labels = ScalingSpec {
            instance_reuse: self.instance_reuse,
            ..ScalingSpec::default()
        };
        if self.scaling.min_instances.is_none() {
            from_labels.min_instances = label("com.openfaas.scale.min")?;
        }
        if self.scaling.max_instances.is_none() {
            from_labels.max_instances = label("com.openfaas.scale.max")?;
        }
        let scaling = self.scaling.over(from_labels)?;
        scaling.validate()?;
        Ok(scaling)
    }

    /// `limits.cpu` in thousandths of a CPU.
    fn cpu_millis(&self) -> Result<Option<u32>, DeploymentError> {
        let Some(cpu) = self.limits.as_ref().and_then(|l| l.cpu.as_deref()) else {
            return Ok(None);
        };
        let bad = || DeploymentError::Cpu {
            value: cpu.chars().take(40).collect(),
        };
        let millis = match cpu.strip_suffix('m') {
            Some(m) => m.parse::<f64>().map_err(|_| bad())?,
            None => cpu.parse::<f64>().map_err(|_| bad())? * 1000.0,
        };
        if !(10.0..=64_000.0).contains(&millis) {
            return Err(bad());
        }
        Ok(Some(millis.round() as u32))
    }

    /// The fields of the request no one defines (`limits.x` for one inside
    /// `limits`), which were ignored.
    pub fn ignored_fields(&self) -> Vec<String> {
        let nested = [("limits", &self.limits), ("requests", &self.requests)]
            .into_iter()
            .filter_map(|(at, resources)| Some((at, resources.as_ref()?)))
            .flat_map(|(at, resources)| resources.unknown.keys().map(move |k| format!("{at}.{k}")));
        self.unknown.keys().cloned().chain(nested).collect()
    }

    /// The artifact the deployment names, if it names one by digest.
    pub fn artifact(&self) -> Result<Digest, DeploymentError> {
        match self.source()? {
            ImageRef::Artifact(digest) => Ok(digest),
            ImageRef::Registry(reference) => Err(DeploymentError::NotAnArtifact {
                image: self.image.chars().take(100).collect(),
                detail: format!("{reference} is a registry reference"),
            }),
        }
    }

    /// What `image` names: an uploaded artifact, or an image in a registry.
    pub fn source(&self) -> Result<ImageRef, DeploymentError> {
        if let Ok(digest) = Digest::parse(&self.image) {
            return Ok(ImageRef::Artifact(digest));
        }
        reference(&self.image).map(|r| ImageRef::Registry(Box::new(r)))
    }

    /// How to pull a registry reference for this deployment: its
    /// credentials and plain-HTTP registries, on top of the server's.
    pub fn pull_options(
        &self,
        reference: &Reference,
        server: &ServerPullSettings,
    ) -> Result<PullOptions, DeploymentError> {
        pull_options(
            self.pull.as_deref(),
            self.registry_auth.as_deref(),
            self.insecure_registries.as_deref(),
            reference,
            server,
        )
    }
}

/// `POST /system/images`: pull an image (or wasm component) by reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullRequest {
    pub image: String,
    /// `always` (default), `missing` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_registries: Option<Vec<String>>,
    /// Base64 `user:password`; never stored, logged or returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<String>,
}

impl PullRequest {
    pub fn reference(&self) -> Result<Reference, DeploymentError> {
        reference(&self.image)
    }

    pub fn pull_options(
        &self,
        reference: &Reference,
        server: &ServerPullSettings,
    ) -> Result<PullOptions, DeploymentError> {
        pull_options(
            Some(self.pull.as_deref().unwrap_or("always")),
            self.registry_auth.as_deref(),
            self.insecure_registries.as_deref(),
            reference,
            server,
        )
    }
}

/// `POST /system/registries` (`wisp login`): credentials the server saves
/// for pulls from `registry`, once the registry accepts them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    pub registry: String,
    pub username: String,
    pub password: String,
    /// Reach the registry over plain HTTP to check the login.
    #[serde(default)]
    pub insecure: bool,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// `PUT /system/images` (`wisp tag`): name a stored image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagRequest {
    /// A local name or a manifest digest.
    pub source: String,
    /// The new name (a reference; `app` means `docker.io/library/app:latest`).
    pub target: String,
}

/// `DELETE /system/images` (`wisp rmi`): remove a name, and the image
/// once it has no name left and no function runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoveImageRequest {
    /// A local name or a manifest digest.
    pub image: String,
    /// Also while functions run it: the names go, the image stays until
    /// they are gone (a prune then removes it).
    #[serde(default)]
    pub force: bool,
}

/// What `DELETE /system/images` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovedImage {
    pub untagged: Vec<String>,
    /// The image, if it was removed (with the bytes freed).
    pub deleted: Option<String>,
    pub bytes: u64,
}

/// `DELETE /system/registries` (`wisp logout`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogoutRequest {
    pub registry: String,
}

/// What `POST /system/images` pulled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullResponse {
    /// The reference, normalised.
    pub reference: String,
    /// The manifest it resolved to.
    pub digest: String,
    /// `container`, `wasm-http` or `wasm-cgi`.
    pub kind: FunctionKind,
    /// What a deploy of it runs: the image's manifest digest, or the wasm
    /// component's artifact digest.
    pub artifact: String,
    pub downloaded_bytes: u64,
    pub blobs_fetched: usize,
    pub blobs_present: usize,
    pub seconds: f64,
}

impl PullResponse {
    pub fn new(reference: String, pulled: &PulledArtifact) -> Self {
        PullResponse {
            reference,
            digest: pulled.report.manifest_digest.to_string(),
            kind: pulled.prepared.kind,
            artifact: pulled.artifact.to_string(),
            downloaded_bytes: pulled.report.downloaded,
            blobs_fetched: pulled.report.blobs_fetched,
            blobs_present: pulled.report.blobs_present,
            seconds: pulled.report.elapsed.as_secs_f64(),
        }
    }
}

/// The pull policy (by default `always` for a tag, `missing` for a
/// digest), credentials and plain-HTTP registries of one pull.
pub(crate) fn pull_options(
    policy: Option<&str>,
    registry_auth: Option<&str>,
    insecure_registries: Option<&[String]>,
    reference: &Reference,
    server: &ServerPullSettings,
) -> Result<PullOptions, DeploymentError> {
    let policy = match policy {
        Some(p) => PullPolicy::parse(p).map_err(DeploymentError::PullPolicy)?,
        None if reference.digest().is_some() => PullPolicy::Missing,
        None => PullPolicy::Always,
    };
    let auth = match registry_auth {
        None | Some("") => Credentials::Anonymous,
        Some(encoded) => decode_basic(encoded).ok_or(DeploymentError::RegistryAuth)?,
    };
    let mut insecure = server.insecure_registries.clone();
    insecure.extend(insecure_registries.into_iter().flatten().cloned());
    Ok(PullOptions {
        auth,
        insecure_registries: insecure,
        policy,
        max_artifact_bytes: server.max_artifact_bytes,
        mirrors: server.registry_mirrors.clone(),
        progress: Default::default(),
    })
}

/// What `wisp serve` says about every pull.
#[derive(Debug, Clone, Default)]
pub struct ServerPullSettings {
    pub insecure_registries: Vec<String>,
    pub registry_mirrors: Vec<(String, String)>,
    pub max_artifact_bytes: u64,
}

/// `image` as a registry reference, or the error that names both forms.
fn reference(image: &str) -> Result<Reference, DeploymentError> {
    pull::parse_reference(image).map_err(|detail| DeploymentError::NotAnArtifact {
        image: image.chars().take(100).collect(),
        detail,
    })
}

/// `base64(user:password)` → basic credentials.
fn decode_basic(encoded: &str) -> Option<Credentials> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// What a deployment's `image` names.
#[derive(Debug, Clone)]
pub enum ImageRef {
    /// An uploaded artifact, by digest.
    Artifact(Digest),
    /// An image (or wasm artifact) in a registry.
    Registry(Box<Reference>),
}

/// One kept revision of a function, as `GET /system/revisions/{name}`
/// lists them (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSummary {
    pub revision: u64,
    /// When it was deployed (RFC 3339).
    pub created_at: String,
    /// As [`FunctionStatus::image`]: the reference or the artifact digest.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub kind: FunctionKind,
    /// Whether requests go to it now.
    pub current: bool,
}

impl RevisionSummary {
    pub fn new(stored: &StoredFunction, current: u64) -> Self {
        let spec = &stored.spec;
        RevisionSummary {
            revision: stored.revision,
            created_at: rfc3339(stored.created_at),
            image: spec
                .source
                .as_ref()
                .map_or_else(|| spec.artifact.to_string(), |s| s.reference.clone()),
            image_digest: spec.source.as_ref().map(|s| s.manifest.to_string()),
            kind: spec.kind,
            current: stored.revision == current,
        }
    }
}

/// `POST /system/rollback/{name}`: the revision to go back to; without
/// one, the one before the current.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequest {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub revision: Option<u64>,
}

/// `POST`/`PUT /system/secrets`: a secret and its value. `rawValue`
/// (base64, for binary values) wins over `value` when both are given, as
/// in OpenFaaS. `Debug` shows no value, so that no log prints one.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub name: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub raw_value: Option<String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// Checks the name and namespace; returns the value's bytes.
    pub fn checked_value(&self) -> Result<Vec<u8>, DeploymentError> {
        SecretDescription {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
        }
        .check()?;
        use base64::Engine as _;
        match self.raw_value.as_deref().filter(|raw| !raw.is_empty()) {
            Some(raw) => base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|_| DeploymentError::SecretEncoding {
                    name: self.name.clone(),
                }),
            None => Ok(self.value.clone().unwrap_or_default().into_bytes()),
        }
    }
}

/// A secret without its value: what `GET /system/secrets` lists, and
/// `DELETE /system/secrets`' body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretDescription {
    pub name: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
}

impl SecretDescription {
    /// Refuses a name unusable as a file name and a namespace that is not
    /// a DNS label.
    pub fn check(&self) -> Result<(), DeploymentError> {
        spec::validate_secret_name(&self.name)?;
        check_namespace(self.namespace.as_deref())
    }
}

impl FunctionStatus {
    pub fn new(stored: &StoredFunction, invocation_count: u64, replicas: u64) -> Self {
        let spec = &stored.spec;
        FunctionStatus {
            name: crate::namespaces::name_of(spec).to_owned(),
            image: spec
                .source
                .as_ref()
                .map_or_else(|| spec.artifact.to_string(), |s| s.reference.clone()),
            image_digest: spec.source.as_ref().map(|s| s.manifest.to_string()),
            namespace: crate::namespaces::of(spec).to_owned(),
            env_vars: spec.env.clone(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            limits: FunctionResources {
                memory: Some(spec.limits.memory_bytes.to_string()),
                cpu: spec
                    .container
                    .as_ref()
                    .map(|c| format!("{}m", c.cpu_cap_millis())),
                ..FunctionResources::default()
            },
            invocation_count,
            replicas,
            available_replicas: replicas,
            created_at: rfc3339(stored.created_at),
            kind: spec.kind,
            timeout: format!("{}ms", spec.limits.timeout_ms),
            max_body_size: spec.limits.max_body_bytes,
            allow_outbound: spec.allow_outbound.clone(),
            secrets: spec.secrets.clone(),
            revision: (stored.revision > 0).then_some(stored.revision),
            port: spec.container.as_ref().and_then(|c| c.port),
            command: spec
                .container
                .as_ref()
                .map(|c| c.command.clone())
                .unwrap_or_default(),
            instance_reuse: spec.scaling.instance_reuse,
            protocol: spec.container.as_ref().map(|c| c.protocol),
            container_image: spec.container.as_ref().map(|c| c.image.to_string()),
            scaling: {
                let s = spec.scaling();
                ScalingStatus {
                    min_instances: s.min_instances,
                    max_instances: s.max_instances,
                    concurrency: s.concurrency,
                    idle_timeout: format!("{}ms", s.idle_timeout.as_millis()),
                    queue_size: s.queue_size,
                    queue_timeout: format!("{}ms", s.queue_timeout.as_millis()),
                }
            },
            state: FunctionState::Ready,
            deploying: None,
        }
    }
}

impl ScaleRequest {
    /// Refuses a request that says nothing to change: OpenFaaS's form gives
    /// `serviceName` and `replicas` (the spec requires both, and a namespace,
    /// which OpenFaaS's clients leave out when they have none); wisp's gives
    /// at least one of its scaling fields.
    pub fn check_complete(&self) -> Result<(), DeploymentError> {
        if let Some(n) = self.replicas.filter(|&n| n < 0) {
            return Err(DeploymentError::Spec(SpecError::OutOfRange {
                what: "replicas",
                value: n.to_string(),
                range: "0 or more",
            }));
        }
        let openfaas = self.service_name.is_some() && self.replicas.is_some();
        if openfaas || self.scaling != ScalingFields::default() {
            Ok(())
        } else {
            Err(DeploymentError::IncompleteScale)
        }
    }

    /// `replicas` as a minimum number of instances: at most
    /// [`spec::MAX_INSTANCES`].
    pub fn replicas_as_min(&self) -> Option<u32> {
        self.replicas.map(|n| {
            u32::try_from(n.max(0))
                .unwrap_or(u32::MAX)
                .min(spec::MAX_INSTANCES)
        })
    }

    /// Whether `replicas` asked for more instances than wisp runs.
    pub fn replicas_capped(&self) -> bool {
        self.replicas
            .is_some_and(|n| n > i64::from(spec::MAX_INSTANCES))
    }

    /// Merges the request into `scaling` and validates the result.
    pub fn apply(&self, scaling: &mut ScalingSpec) -> Result<(), DeploymentError> {
        check_namespace(self.namespace.as_deref())?;
        let mut current = *scaling;
        if let Some(min) = self.replicas_as_min() {
            current.min_instances = Some(min);
        }
        let mut next = self.scaling.over(current)?;
        // OpenFaaS's replicas may exceed the maximum: raise it to match.
        if let (Some(min), Some(max)) = (next.min_instances, next.max_instances)
            && self.scaling.max_instances.is_none()
            && min > max
        {
            next.max_instances = Some(min);
        }
        next.validate()?;
        *scaling = next;
        Ok(())
    }
}

impl ScalingFields {
    /// `base` with every setting given here put in its place.
    fn over(&self, base: ScalingSpec) -> Result<ScalingSpec, DeploymentError> {
        Ok(ScalingSpec {
            min_instances: self.min_instances.or(base.min_instances),
            max_instances: self.max_instances.or(base.max_instances),
            concurrency: self.concurrency.or(base.concurrency),
            idle_timeout_ms: optional_millis("idle timeout", &self.idle_timeout)?
                .or(base.idle_timeout_ms),
            queue_size: self.queue_size.or(base.queue_size),
            queue_timeout_ms: optional_millis("queue timeout", &self.queue_timeout)?
                .or(base.queue_timeout_ms),
            instance_reuse: base.instance_reuse,
        })
    }
}

/// Refuses a namespace that is not a DNS label (absent or empty mean the
/// default one). Whether it exists is the server's to say.
pub fn check_namespace(namespace: Option<&str>) -> Result<(), DeploymentError> {
    match namespace {
        Some(ns) if !ns.is_empty() && !crate::namespaces::is_valid(ns) => {
            Err(DeploymentError::Namespace {
                namespace: ns.chars().take(80).collect(),
            })
        }
        _ => Ok(()),
    }
}

/// An optional duration field (`"60s"`) in milliseconds.
fn optional_millis(
    what: &'static str,
    value: &Option<String>,
) -> Result<Option<u64>, DeploymentError> {
    value
        .as_deref()
        .map(|d| {
            spec::parse_duration(what, d).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
        .transpose()
        .map_err(DeploymentError::Spec)
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp.
fn rfc3339(secs: u64) -> String {
    wisp_runner::store::logs::rfc3339(secs, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    #[test]
    fn openfaas_json_parses() {
        let json = format!(
            r#"{{"service":"hello","image":"{}","namespace":"openfaas-fn","envVars":{{"A":"1"}},
               "labels":{{"com.openfaas.scale.min":"1"}},"annotations":{{"x":"y"}},
               "limits":{{"memory":"64Mi","cpu":"0.5"}},"requests":{{"memory":"32Mi"}},
               "readOnlyRootFilesystem":true,"timeout":"5s","maxBodySize":"1Mi"}}"#,
            digest()
        );
        let d: FunctionDeployment = serde_json::from_str(&json).unwrap();
        let spec = d.to_spec(FunctionKind::WasmHttp).unwrap();
        assert_eq!(spec.limits.memory_bytes, 64 << 20);
        assert_eq!(spec.limits.timeout_ms, 5000);
        assert_eq!(spec.limits.max_body_bytes, 1 << 20);
        assert_eq!(spec.env["A"], "1");
    }

    #[test]
    fn null_is_refused_where_the_spec_does_not_allow_it() {
        let deployment = |extra: &str| {
            let json = format!(r#"{{"service":"hello","image":"{}",{extra}}}"#, digest());
            serde_json::from_str::<FunctionDeployment>(&json)
        };
        for nullable in ["labels", "annotations", "limits", "requests"] {
            assert!(
                deployment(&format!(r#""{nullable}":null"#)).is_ok(),
                "{nullable}"
            );
        }
        for field in [
            "namespace",
            "envProcess",
            "secrets",
            "envVars",
            "timeout",
            "minInstances",
        ] {
            let err = deployment(&format!(r#""{field}":null"#)).unwrap_err();
            assert!(err.to_string().contains("null"), "{field}: {err}");
        }
        assert!(deployment(r#""limits":{"memory":null}"#).is_err());
        for body in [
            r#"{"serviceName":"f","replicas":1,"namespace":null}"#,
            r#"{"serviceName":null,"replicas":1}"#,
            r#"{"serviceName":"f","replicas":null}"#,
        ] {
            assert!(
                serde_json::from_str::<ScaleRequest>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_named() {
        let json = format!(
            r#"{{"service":"hello","image":"{}","imgae":"x","limits":{{"memory":"1Mi","gpu":1}}}}"#,
            digest()
        );
        let deployment: FunctionDeployment = serde_json::from_str(&json).unwrap();
        assert_eq!(deployment.ignored_fields(), ["imgae", "limits.gpu"]);
        assert_eq!(deployment.image, digest());
        // They are not sent on.
        let again = serde_json::to_value(&deployment).unwrap();
        assert!(again.get("imgae").is_none(), "{again}");
    }

    #[test]
    fn scaling_fields_are_top_level_camel_case_on_the_wire() {
        let deployment = FunctionDeployment {
            service: "hello".into(),
            image: digest(),
            scaling: ScalingFields {
                min_instances: Some(1),
                max_instances: Some(4),
                concurrency: Some(2),
                idle_timeout: Some("60s".into()),
                queue_size: Some(10),
                queue_timeout: Some("5s".into()),
            },
            instance_reuse: Some(3),
            ..Default::default()
        };
        let json = serde_json::json!({
            "service": "hello", "image": digest(),
            "minInstances": 1, "maxInstances": 4, "concurrency": 2,
            "idleTimeout": "60s", "queueSize": 10, "queueTimeout": "5s",
            "instanceReuse": 3,
        });
        assert_eq!(serde_json::to_value(&deployment).unwrap(), json);
        assert_eq!(
            serde_json::from_value::<FunctionDeployment>(json).unwrap(),
            deployment
        );
        let request = ScaleRequest {
            replicas: Some(2),
            scaling: ScalingFields {
                max_instances: Some(4),
                idle_timeout: Some("1s".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let json = serde_json::json!({"replicas": 2, "maxInstances": 4, "idleTimeout": "1s"});
        assert_eq!(serde_json::to_value(&request).unwrap(), json);
        assert_eq!(
            serde_json::from_value::<ScaleRequest>(json).unwrap(),
            request
        );
        assert_eq!(
            serde_json::to_string(&ScaleRequest::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn misspelt_scaling_fields_are_named_and_bad_values_refused() {
        let deployment =
            |extra: &str| format!(r#"{{"service":"hello","image":"{}",{extra}}}"#, digest());
        for (extra, field) in [
            (r#""min_instances":1"#, "min_instances"),
            (r#""scaling":{"minInstances":1}"#, "scaling"),
            (r#""minInstances":1,"maxInstance":2"#, "maxInstance"),
        ] {
            let parsed: FunctionDeployment = serde_json::from_str(&deployment(extra)).unwrap();
            assert_eq!(parsed.ignored_fields(), [field], "{extra}");
            let request: ScaleRequest = serde_json::from_str(&format!("{{{extra}}}")).unwrap();
            assert_eq!(
                request.unknown.keys().collect::<Vec<_>>(),
                [field],
                "{extra}"
            );
        }
        let both: FunctionDeployment =
            serde_json::from_str(&deployment(r#""minInstances":1,"maxInstance":2"#)).unwrap();
        assert_eq!(both.scaling.min_instances, Some(1));
        // A scale request changes the pool, not how instances are made.
        let request: ScaleRequest = serde_json::from_str(r#"{"instanceReuse":2}"#).unwrap();
        assert!(request.unknown.contains_key("instanceReuse"));
        let err = serde_json::from_str::<ScaleRequest>(r#"{"queueSize":"many"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn scaling_fields_win_over_labels_and_scale_requests_merge() {
        let labels = [
            ("com.openfaas.scale.min".to_owned(), "2".to_owned()),
            (
                "com.openfaas.scale.max".to_owned(),
                "not a number".to_owned(),
            ),
        ];
        let mut deployment = FunctionDeployment {
            service: "hello".into(),
            image: digest(),
            labels: Some(labels.into()),
            scaling: ScalingFields {
                max_instances: Some(5),
                idle_timeout: Some("2s".into()),
                ..Default::default()
            },
            instance_reuse: Some(3),
            ..Default::default()
        };
        let mut scaling = deployment.scaling().unwrap();
        assert_eq!(
            scaling,
            ScalingSpec {
                min_instances: Some(2),
                max_instances: Some(5),
                idle_timeout_ms: Some(2000),
                instance_reuse: Some(3),
                ..Default::default()
            }
        );
        deployment.scaling.max_instances = None;
        assert!(
            deployment
                .scaling()
                .unwrap_err()
                .to_string()
                .contains("com.openfaas.scale.max")
        );

        // OpenFaaS's replicas set the minimum and raise the maximum to it.
        let replicas = ScaleRequest {
            replicas: Some(7),
            scaling: ScalingFields {
                queue_timeout: Some("1s".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        replicas.apply(&mut scaling).unwrap();
        assert_eq!(
            (scaling.min_instances, scaling.max_instances),
            (Some(7), Some(7))
        );
        assert_eq!(
            (scaling.idle_timeout_ms, scaling.queue_timeout_ms),
            (Some(2000), Some(1000))
        );
        assert_eq!(scaling.instance_reuse, Some(3));
        // minInstances wins over replicas; an explicit maximum is checked.
        let both = ScaleRequest {
            replicas: Some(9),
            scaling: ScalingFields {
                min_instances: Some(8),
                max_instances: Some(6),
                ..Default::default()
            },
            ..Default::default()
        };
        let before = scaling;
        assert!(both.apply(&mut scaling).is_err());
        assert_eq!(scaling, before, "a refused request changes nothing");
        // A request says what to change, in OpenFaaS's form or wisp's.
        for (body, complete) in [
            (r#"{"serviceName":"f","replicas":1}"#, true),
            (
                r#"{"serviceName":"f","namespace":"openfaas-fn","replicas":0}"#,
                true,
            ),
            (r#"{"maxInstances":3}"#, true),
            (r#"{}"#, false),
            (r#"{"replicas":1}"#, false),
            (r#"{"serviceName":"f","replicas":-1}"#, false),
            (r#"{"serviceName":"f","namespace":"openfaas-fn"}"#, false),
        ] {
            let request: ScaleRequest = serde_json::from_str(body).unwrap();
            assert_eq!(request.check_complete().is_ok(), complete, "{body}");
        }
        // The spec's replicas is any int64 >= 0: past wisp's limit, capped.
        let many = ScaleRequest {
            replicas: Some(i64::MAX),
            ..Default::default()
        };
        assert!(many.replicas_capped());
        many.apply(&mut scaling).unwrap();
        assert_eq!(
            (scaling.min_instances, scaling.max_instances),
            (Some(spec::MAX_INSTANCES), Some(spec::MAX_INSTANCES))
        );
    }

    #[test]
    fn bad_deployments_say_why() {
        let base = FunctionDeployment {
            service: "hello".into(),
            image: digest(),
            ..Default::default()
        };
        let kind = FunctionKind::WasmHttp;
        let bad_name = FunctionDeployment {
            service: "a/b".into(),
            ..base.clone()
        };
        assert!(matches!(
            bad_name.to_spec(kind),
            Err(DeploymentError::Spec(SpecError::InvalidName { .. }))
        ));
        let registry_image = FunctionDeployment {
            image: "functions/nodeinfo:latest".into(),
            ..base.clone()
        };
        assert!(matches!(
            registry_image.to_spec(kind),
            Err(DeploymentError::NotAnArtifact { .. })
        ));
        let secrets = FunctionDeployment {
            secrets: Some(vec!["s".into(), "b".into(), "s".into()]),
            ..base.clone()
        };
        assert_eq!(secrets.to_spec(kind).unwrap().secrets, ["b", "s"]);
        for bad in ["", "..", "a/b"] {
            let secrets = FunctionDeployment {
                secrets: Some(vec![bad.into()]),
                ..base.clone()
            };
            assert!(
                matches!(
                    secrets.to_spec(kind),
                    Err(DeploymentError::Spec(SpecError::InvalidSecretName { .. }))
                ),
                "{bad:?}"
            );
        }
        for (namespace, good) in [("Other", false), ("a.b", false), ("team-a", true)] {
            let ns = FunctionDeployment {
                namespace: Some(namespace.into()),
                ..base.clone()
            };
            match ns.to_spec(kind) {
                Ok(spec) => {
                    assert!(good, "{namespace}");
                    assert_eq!(spec.namespace.as_deref(), Some(namespace));
                    assert_eq!(spec.name.as_str(), format!("{}.{namespace}", base.service));
                }
                Err(e) => {
                    assert!(!good, "{namespace}: {e}");
                    assert!(matches!(e, DeploymentError::Namespace { .. }), "{e}");
                }
            }
        }
        let long = FunctionDeployment {
            service: "f".repeat(40),
            namespace: Some("n".repeat(40)),
            ..base.clone()
        };
        assert!(matches!(
            long.to_spec(kind),
            Err(DeploymentError::QualifiedName { .. })
        ));
        let memory = FunctionDeployment {
            limits: Some(FunctionResources {
                memory: Some("lots".into()),
                ..FunctionResources::default()
            }),
            ..base.clone()
        };
        assert!(
            memory
                .to_spec(kind)
                .unwrap_err()
                .to_string()
                .contains("memory limit")
        );
        let env = FunctionDeployment {
            env_vars: Some([("A=B".to_owned(), "x".to_owned())].into()),
            ..base
        };
        assert!(env.to_spec(kind).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a deployment says, validating it never panics, and an
        /// accepted one names a safe function and sane limits.
        #[test]
        fn any_deployment_is_validated_or_refused(
            service in "\\PC{0,70}|[a-z0-9][a-z0-9._-]{0,70}",
            image in proptest::prop_oneof!["\\PC{0,80}", "sha256:[0-9a-f]{64}"],
            memory in proptest::option::of("\\PC{0,12}|[0-9]{1,12}(Ki|Mi|Gi|M|G)?"),
            cpu in proptest::option::of("\\PC{0,8}|[0-9]{1,6}m?|[0-9]\\.[0-9]{1,4}"),
            timeout in proptest::option::of("\\PC{0,8}|[0-9]{1,9}(ms|s|m|h)"),
            min in proptest::option::of("\\PC{0,4}|[0-9]{1,5}"),
            env in proptest::collection::btree_map("\\PC{0,10}", "\\PC{0,10}", 0..3),
        ) {
            let deployment = FunctionDeployment {
                service,
                image,
                limits: Some(FunctionResources { memory, cpu, ..FunctionResources::default() }),
                timeout,
                labels: min.map(|m| [("com.openfaas.scale.min".to_owned(), m)].into()),
                env_vars: Some(env),
                ..FunctionDeployment::default()
            };
            if let Ok(spec) = deployment.to_spec(FunctionKind::WasmHttp) {
                let name = spec.name.as_str();
                proptest::prop_assert!(!name.is_empty() && name.len() <= 63);
                proptest::prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
                proptest::prop_assert!(spec.limits.validate().is_ok());
                proptest::prop_assert!(spec.scaling.validate().is_ok());
                let cpu = deployment.cpu_millis().unwrap();
                proptest::prop_assert!(cpu.is_none_or(|m| (10..=64_000).contains(&m)));
            }
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
