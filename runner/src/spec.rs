//! What a function is: the validated, backend-neutral description that the
//! registry stores and every backend starts from.
//!
//! A [`FunctionSpec`] is built once at deploy time from the user's request
//! (the control API owns the wire format) and is immutable afterwards; a
//! redeploy makes a new spec. Parsing of the human-friendly quantities used
//! on the wire (`128Mi`, `30s`) lives here too so that the CLI, the control
//! API and the tests agree on them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;

/// Longest function name accepted (a DNS label, as OpenFaaS and Kubernetes use).
pub const MAX_NAME_LEN: usize = 63;
/// Default memory cap of one instance.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 * 1024 * 1024;
/// Default deadline of one request.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default cap on a request body (AWS Lambda's synchronous payload limit).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 6 * 1024 * 1024;
/// Largest request body limit a function may ask for. Bodies stream to
/// `http` handlers, but CGI programs get theirs whole, held in memory
/// while they run: the limit bounds that memory too.
pub const MAX_BODY_LIMIT_BYTES: u64 = 1024 * 1024 * 1024;
/// Default CPU cap of a container instance: one CPU.
pub const DEFAULT_CPU_MILLIS: u32 = 1000;
/// Largest memory cap a function may ask for.
pub const MAX_MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Longest deadline a function may ask for.
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Longest secret name accepted (a DNS subdomain, as Kubernetes names secrets).
pub const MAX_SECRET_NAME_LEN: usize = 253;
/// Where a function finds its secrets, one read-only file each, in a
/// container and in a wasm guest alike (where OpenFaaS and faasd mount them).
pub const SECRETS_PATH: &str = "/var/openfaas/secrets";

/// A deployed function, as wisp runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: FunctionName,
    /// Content address of the uploaded artifact, `sha256:<hex>`.
    pub artifact: Digest,
    /// How the artifact is run; detected from the artifact at deploy time.
    pub kind: FunctionKind,
    /// Environment variables the handler sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Free-form labels and annotations, kept for the control API.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub limits: Limits,
    /// Hosts the function may send HTTP requests to (`*` = any); empty = none.
    #[serde(default)]
    pub allow_outbound: Vec<String>,
    /// How a container function runs; `None` for wasm functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerOptions>,
    /// How many instances, how busy, how long idle; unset fields take the
    /// defaults of the function's kind ([`FunctionSpec::scaling`]).
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// Where the artifact came from when it was pulled from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSource>,
    /// The namespace the function lives in, if not the default one; then
    /// `name` is `{its name}.{namespace}` (the gateway's key for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The secrets the function reads, by name: files in [`SECRETS_PATH`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The host directory holding this version's secrets, one file each,
    /// which the gateway makes when it installs the function (so that a
    /// changed secret makes a new version); never stored.
    #[serde(skip)]
    pub secrets_dir: Option<PathBuf>,
}

/// A registry reference a function was deployed from, and what it resolved
/// to then: the function runs that manifest until it is deployed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// The reference, normalised (`docker.io/library/nginx:latest`).
    pub reference: String,
    /// The digest of the manifest it resolved to.
    pub manifest: Digest,
}

/// Scaling settings as the user gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Requests one instance takes at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Requests that may wait for an instance once `max_instances` are busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u32>,
    /// Longest a request waits in that queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
    /// wasi:http components: requests one wasm instance (store) serves
    /// before it is dropped, as `wasmtime serve --max-instance-reuse-count`;
    /// unset or 1 = a fresh instance per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
}

/// Scaling settings in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    pub min_instances: usize,
    pub max_instances: usize,
    pub concurrency: usize,
    pub idle_timeout: Duration,
    pub queue_size: usize,
    pub queue_timeout: Duration,
}

/// Default idle time before an instance is torn down.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default number of requests that may queue past `max_instances`.
pub const DEFAULT_QUEUE_SIZE: u32 = 100;
/// Most instances of one function.
pub const MAX_INSTANCES: u32 = 1000;

impl ScalingSpec {
    /// Checks the values against wisp's bounds.
    pub fn validate(&self) -> Result<(), SpecError> {
        let range =
            |what: &'static str, value: Option<u64>, lo: u64, hi: u64, text: &'static str| {
                match value {
                    Some(v) if v < lo || v > hi => Err(SpecError::OutOfRange {
                        what,
                        value: v.to_string(),
                        range: text,
                    }),
                    _ => Ok(()),
                }
            };
        range(
            "min instances",
            self.min_instances.map(u64::from),
            0,
            u64::from(MAX_INSTANCES),
            "0..=1000",
        )?;
        range(
            "max instances",
            self.max_instances.map(u64::from),
            1,
            u64::from(MAX_INSTANCES),
            "1..=1000",
        )?;
        range(
            "concurrency",
            self.concurrency.map(u64::from),
            1,
            10_000,
            "1..=10000",
        )?;
        range(
            "queue size",
            self.queue_size.map(u64::from),
            0,
            100_000,
            "0..=100000",
        )?;
        range(
            "idle timeout (ms)",
            self.idle_timeout_ms,
            100,
            86_400_000,
            "100ms..=24h",
        )?;
        range(
            "queue timeout (ms)",
            self.queue_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
            "1ms..=15m",
        )?;
        if let (Some(min), Some(max)) = (self.min_instances, self.max_instances)
            && min > max
        {
            return Err(SpecError::OutOfRange {
                what: "min instances",
                value: min.to_string(),
                range: "at most max instances",
            });
        }
        Ok(())
    }
}

impl FunctionSpec {
    /// The scaling settings in effect: the user's, else the defaults of the
    /// function's kind. A wasm instance is compiled code that gives every
    /// request a fresh store, so one takes many requests at once; a CGI
    /// container runs one request per instance; an `http` container a few.
    pub fn scaling(&self) -> Scaling {
        let s = &self.scaling;
        let (max, concurrency) = match (self.kind, self.container.as_ref().map(|c| c.protocol)) {
            (FunctionKind::Container, Some(Protocol::Cgi)) => (10, 1),
            (FunctionKind::Container, _) => (10, 8),
            (FunctionKind::WasmHttp | FunctionKind::WasmCgi, _) => (1, 1000),
        };
        let max_instances = s.max_instances.unwrap_or(max).max(1) as usize;
        Scaling {
            min_instances: (s.min_instances.unwrap_or(0) as usize).min(max_instances),
            max_instances,
            concurrency: s.concurrency.unwrap_or(concurrency).max(1) as usize,
            idle_timeout: Duration::from_millis(
                s.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
            ),
            queue_size: s.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE) as usize,
            queue_timeout: Duration::from_millis(
                s.queue_timeout_ms.unwrap_or(self.limits.timeout_ms),
            ),
        }
    }
}

/// How a container function's image runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerOptions {
    /// Manifest digest of the imported image (set at deploy).
    pub image: Digest,
    pub protocol: Protocol,
    /// Port an `http` handler listens on [default: the image's only
    /// exposed port, else 8080].
    #[serde(default)]
    pub port: Option<u16>,
    /// Replaces the image's Entrypoint and Cmd when non-empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// CPU cap in thousandths of a CPU; `None` = [`DEFAULT_CPU_MILLIS`].
    #[serde(default)]
    pub cpu_millis: Option<u32>,
}

impl ContainerOptions {
    /// The CPU cap in effect: the function's, else one CPU, so that no
    /// handler can take the whole machine unless it asks to.
    pub fn cpu_cap_millis(&self) -> u32 {
        self.cpu_millis.unwrap_or(DEFAULT_CPU_MILLIS)
    }
}

/// Which entry of `allow_outbound` lets a request out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundGrant {
    /// The host is named: whatever it resolves to, the deployer asked for it.
    Named,
    /// Only `*` matches: any host but those that resolve to the machine
    /// itself (loopback, link-local, the host's own addresses).
    Wildcard,
}

impl FunctionSpec {
    /// Whether outbound HTTP to `authority` (host or host:port) may go out,
    /// and on which grant.
    pub fn outbound_grant(&self, authority: &str) -> Option<OutboundGrant> {
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if self
            .allow_outbound
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(host))
        {
            Some(OutboundGrant::Named)
        } else if self.allow_outbound.iter().any(|allowed| allowed == "*") {
            Some(OutboundGrant::Wildcard)
        } else {
            None
        }
    }
}

/// The ABI a function's artifact speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionKind {
    /// A component exporting `wasi:http/incoming-handler` (the `wasi:http/proxy` world).
    WasmHttp,
    /// A WASI preview1 command module run CGI-style, as WAGI does.
    WasmCgi,
    /// An OCI image run in a microcontainer.
    Container,
}

impl FunctionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionKind::WasmHttp => "wasm-http",
            FunctionKind::WasmCgi => "wasm-cgi",
            FunctionKind::Container => "container",
        }
    }

    /// The backend that runs this kind (a metrics label).
    /// Every value of [`FunctionKind::backend`].
    pub const BACKENDS: [&'static str; 2] = ["wasm", "container"];

    pub fn backend(self) -> &'static str {
        match self {
            FunctionKind::WasmHttp | FunctionKind::WasmCgi => "wasm",
            FunctionKind::Container => "container",
        }
    }
}

/// Resource limits of one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory cap of one instance, in bytes.
    pub memory_bytes: u64,
    /// Deadline of one request, in milliseconds.
    pub timeout_ms: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks the limits against wisp's bounds.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.memory_bytes < 1024 * 1024 || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(SpecError::OutOfRange {
                what: "memory limit",
                value: self.memory_bytes.to_string(),
                range: "1Mi..=4Gi",
            });
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(SpecError::OutOfRange {
                what: "timeout",
                value: format!("{}ms", self.timeout_ms),
                range: "1ms..=15m",
            });
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_LIMIT_BYTES {
            return Err(SpecError::OutOfRange {
                what: "body limit",
                value: self.max_body_bytes.to_string(),
                range: "1..=1Gi",
            });
        }
        Ok(())
    }
}

/// A validated function name: 1–63 characters of `[a-z0-9-_.]`, starting
/// with a letter or digit, so it is safe in URLs, file names and metric labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(String);

impl FunctionName {
    pub fn new(name: &str) -> Result<Self, SpecError> {
        let invalid = |reason: &'static str| SpecError::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("it is longer than 63 characters"));
        }
        if name.contains('/') || name.contains('\\') {
            return Err(invalid("it contains a path separator"));
        }
        if !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        }) {
            return Err(invalid(
                "only lower-case letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(invalid("it must start with a letter or a digit"));
        }
        Ok(FunctionName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for FunctionName {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        FunctionName::new(&s)
    }
}

impl From<FunctionName> for String {
    fn from(n: FunctionName) -> String {
        n.0
    }
}

/// A sha256 content address, `sha256:<64 lower-case hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| SpecError::InvalidDigest {
                digest: s.chars().take(80).collect(),
            })?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(SpecError::InvalidDigest {
                digest: s.chars().take(80).collect(),
            });
        }
        Ok(Digest(s.to_owned()))
    }

    pub fn from_sha256(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    /// The 64 hex digits, for file names.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// Why a function's description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid function name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid digest {digest:?}: expected sha256:<64 hex digits>")]
    InvalidDigest { digest: String },
    #[error("invalid {what} {value:?}: {expected}")]
    InvalidQuantity {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{what} {value} is out of range ({range})")]
    OutOfRange {
        what: &'static str,
        value: String,
        range: &'static str,
    },
    #[error("invalid environment variable {name:?}: {reason}")]
    InvalidEnv { name: String, reason: &'static str },
    #[error("invalid secret name {name:?}: {reason}")]
    InvalidSecretName { name: String, reason: &'static str },
}

/// Parses a byte quantity as Kubernetes and OpenFaaS write them: `134217728`,
/// `128M` (10^6), `128Mi` (2^20), `1G`, `1Gi`, `512k`, `512Ki`.
pub fn parse_bytes(what: &'static str, s: &str) -> Result<u64, SpecError> {
    let err = || SpecError::InvalidQuantity {
        what,
        value: s.chars().take(80).collect(),
        expected: "a byte count such as 134217728, 128Mi or 128M",
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// Parses a duration: `250ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(what: &'static str, s: &str) -> Result<Duration, SpecError> {
    let err = || SpecError::InvalidQuantity {
        what,
        value: s.chars().take(80).collect(),
        expected: "a duration such as 500ms, 30s or 2m",
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err()),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(err)
}

/// Checks that an environment variable name is usable (POSIX-ish, no `=`).
pub fn validate_env_name(name: &str) -> Result<(), SpecError> {
    let invalid = |reason| SpecError::InvalidEnv {
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.contains('=') || name.contains('\0') {
        return Err(invalid("the name contains '=' or NUL"));
    }
    Ok(())
}

/// Checks that a secret name is usable as a file name in
/// [`SECRETS_PATH`]: 1 to 253 of `a-z A-Z 0-9 . _ -`, not starting with a
/// dot (so never `.` or `..`).
pub fn validate_secret_name(name: &str) -> Result<(), SpecError> {
    let invalid = |reason| SpecError::InvalidSecretName {
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.len() > MAX_SECRET_NAME_LEN {
        return Err(invalid("longer than 253 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    if name.starts_with('.') {
        return Err(invalid("the name starts with '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secret_names() {
        for good in ["aws-key", "db.password", "A_1", &"a".repeat(253)] {
            assert!(validate_secret_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            "a\0",
            &"a".repeat(254),
        ] {
            assert!(validate_secret_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(FunctionName::new("hello").is_ok());
        assert!(FunctionName::new("cgi-echo.v2_a").is_ok());
        assert!(FunctionName::new(&"a".repeat(63)).is_ok());
        for bad in [
            "", "a/b", "..", ".hidden", "-x", "UPPER", "a b", "a\\b", "é",
        ] {
            assert!(FunctionName::new(bad).is_err(), "{bad:?} accepted");
        }
        let long = FunctionName::new(&"a".repeat(64)).unwrap_err();
        assert!(long.to_string().contains("longer than 63"), "{long}");
        let sep = FunctionName::new("a/b").unwrap_err();
        assert!(sep.to_string().contains("path separator"), "{sep}");
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.hex(), hex);
        assert!(Digest::parse(&hex).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}/..", "a".repeat(62))).is_err());
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("m", "128Mi"), Ok(128 << 20));
        assert_eq!(parse_bytes("m", "128M"), Ok(128_000_000));
        assert_eq!(parse_bytes("m", "42"), Ok(42));
        assert_eq!(parse_bytes("m", "1Gi"), Ok(1 << 30));
        assert!(parse_bytes("m", "Mi").is_err());
        assert!(parse_bytes("m", "12Xi").is_err());
        assert!(parse_bytes("m", "99999999999999999999Gi").is_err());
        assert_eq!(parse_duration("t", "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("t", "30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("t", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("t", "5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("t", "5d").is_err());
        assert!(parse_duration("t", "").is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert!(Limits::default().validate().is_ok());
        let too_big = Limits {
            memory_bytes: MAX_MEMORY_BYTES + 1,
            ..Limits::default()
        };
        assert!(too_big.validate().is_err());
        let no_time = Limits {
            timeout_ms: 0,
            ..Limits::default()
        };
        assert!(no_time.validate().is_err());
        for max_body_bytes in [0, MAX_BODY_LIMIT_BYTES + 1] {
            let body = Limits {
                max_body_bytes,
                ..Limits::default()
            };
            assert!(body.validate().is_err(), "{max_body_bytes}");
        }
    }

    #[test]
    fn outbound_allow_list() {
        let mut spec = FunctionSpec {
            name: FunctionName::new("f").unwrap(),
            artifact: Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap(),
            kind: FunctionKind::WasmHttp,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            limits: Limits::default(),
            allow_outbound: vec![],
            container: None,
            scaling: ScalingSpec::default(),
            source: None,
            namespace: None,
            secrets: vec![],
            secrets_dir: None,
        };
        assert_eq!(spec.outbound_grant("example.com"), None);
        spec.allow_outbound = vec!["example.com".into(), "::1".into()];
        let named = Some(OutboundGrant::Named);
        assert_eq!(spec.outbound_grant("example.com:443"), named);
        assert_eq!(spec.outbound_grant("EXAMPLE.com"), named);
        assert_eq!(spec.outbound_grant("[::1]:8080"), named);
        assert_eq!(spec.outbound_grant("evil.com"), None);
        spec.allow_outbound = vec!["*".into(), "localhost".into()];
        assert_eq!(
            spec.outbound_grant("evil.com"),
            Some(OutboundGrant::Wildcard)
        );
        assert_eq!(spec.outbound_grant("localhost:80"), named);
    }

    proptest! {
        #[test]
        fn name_parser_never_panics_and_accepts_only_safe_names(s in "\\PC{0,80}") {
            if let Ok(name) = FunctionName::new(&s) {
                prop_assert!(!name.as_str().contains('/'));
                prop_assert!(name.as_str().len() <= MAX_NAME_LEN);
                prop_assert!(!name.as_str().starts_with('.'));
            }
        }

        #[test]
        fn quantity_parsers_never_panic(s in "\\PC{0,30}") {
            let _ = parse_bytes("m", &s);
            let _ = parse_duration("t", &s);
        }
    }
}
