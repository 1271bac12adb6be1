//! The seam between the pool and the sandboxes: a [`Backend`] makes
//! [`Instance`]s ready to take requests (from an upload, or from an image it
//! pulls), an instance forwards requests to its handler. Everything above
//! this module (pool, gateway) sees only these traits and the error enums,
//! each of which says which function failed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::image::pull::{PullOptions, PullReport, Reference};
use crate::spec::{Digest, FunctionKind, FunctionName, FunctionSpec};

/// Error type carried by streamed bodies.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed HTTP body, in either direction.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A body with all of its bytes at hand.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty_body() -> Body {
    full_body(Bytes::new())
}

/// Makes sandboxes of one kind.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Checks a newly uploaded artifact and does the per-artifact work that
    /// every later start shares (compiling, unpacking). Runs at deploy time,
    /// before the function is stored, so a bad artifact never reaches the
    /// registry. Returns the kind of function the artifact is.
    async fn prepare(&self, artifact: &Digest) -> Result<Prepared, PrepareError>;

    /// Pulls `reference` from its registry and prepares what it is (an
    /// image or a wasm component), as [`Backend::prepare`] does an upload.
    async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<PulledArtifact, PrepareError> {
        let _ = options;
        Err(PrepareError::Pull {
            failure: PullFailure::Unsupported,
            cause: Cause::new(std::io::Error::other(format!(
                "{reference}: this server cannot pull images"
            ))),
        })
    }

    /// Makes a sandbox that is ready to take requests (a cold start).
    async fn start(&self, spec: &FunctionSpec) -> Result<Box<dyn Instance>, StartError>;

    /// Releases what the backend holds beyond its instances (sandboxes made
    /// ahead of demand), at server shutdown.
    async fn shutdown(&self) {}

    /// Whether the host is too busy to feed another instance: a pool that
    /// has instances then queues (and sheds) rather than starting more.
    fn saturated(&self) -> bool {
        false
    }
}

/// What [`Backend::prepare`] found an artifact to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub kind: FunctionKind,
    /// For an OCI image: the digest of its manifest in the image store.
    pub image: Option<Digest>,
    /// For an OCI image holding a Lambda runtime: where (one of
    /// [`crate::protocol::lambda::BOOTSTRAP_PATHS`]).
    pub lambda_bootstrap: Option<&'static str>,
}

/// What [`Backend::pull`] fetched and prepared.
#[derive(Debug, Clone)]
pub struct PulledArtifact {
    /// What the function runs: the wasm component's digest in the artifact
    /// store, or the image's manifest digest.
    pub artifact: Digest,
    pub prepared: Prepared,
    pub report: PullReport,
}

impl PullFailure {
    pub const ALL: [PullFailure; 7] = [
        PullFailure::NotFound,
        PullFailure::Unauthorized,
        PullFailure::Unreachable,
        PullFailure::TooLarge,
        PullFailure::Invalid,
        PullFailure::Storage,
        PullFailure::Unsupported,
    ];

    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PullFailure::NotFound => "not_found",
            PullFailure::Unauthorized => "unauthorized",
            PullFailure::Unreachable => "unreachable",
            PullFailure::TooLarge => "too_large",
            PullFailure::Invalid => "invalid",
            PullFailure::Storage => "storage",
            PullFailure::Unsupported => "unsupported",
        }
    }
}

/// Why a pull failed, in the terms a caller answers by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// No such repository, tag or digest.
    NotFound,
    /// The registry refused the credentials.
    Unauthorized,
    /// The registry could not be reached, or timed out.
    Unreachable,
    /// Past the server's image limits.
    TooLarge,
    /// The registry served something wrong or unsupported.
    Invalid,
    /// Writing what arrived failed on this host.
    Storage,
    /// This server does not pull.
    Unsupported,
}

/// One sandbox of one function.
#[async_trait]
pub trait Instance: Send + Sync {
    /// Forwards one request to the handler and returns its (streamed) response.
    async fn invoke(&self, req: Request<Body>) -> Result<Response<Body>, InvokeError>;

    /// How many requests the instance may take at once.
    fn concurrency(&self) -> usize;

    /// Tears the sandbox down and releases everything it holds.
    async fn stop(self: Box<Self>);

    /// How long the phases of this instance's start took (for
    /// `Server-Timing` and the cold-start histogram).
    fn start_phases(&self) -> Vec<(&'static str, Duration)> {
        Vec::new()
    }

    /// A response of this instance was still streaming at its deadline:
    /// stop the work behind it (a backend that cannot stop one request
    /// alone stops the instance, and reports unhealthy).
    fn overran(&self) {}

    /// Whether the sandbox can still take requests (its handler has not
    /// exited or been killed). The pool replaces instances that cannot.
    fn is_healthy(&self) -> bool {
        true
    }
}

/// Why an artifact was refused at deploy time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error(
        "artifact {digest} is not a WebAssembly binary (expected a component or a core module)"
    )]
    NotWasm { digest: String },
    #[error(
        "artifact {digest} is not a function wisp can run: {detail} (expected a component of the wasi:http/proxy world, or a WASI preview1 command module)"
    )]
    WrongWorld { digest: String, detail: String },
    #[error("artifact {digest} failed to compile: {detail}")]
    Compile { digest: String, detail: String },
    #[error(
        "artifact {digest} is not in the artifact store; upload it with POST /system/artifacts"
    )]
    MissingArtifact { digest: String },
    #[error("storage error while preparing artifact {digest}: {cause}")]
    Storage {
        digest: String,
        #[source]
        cause: Cause,
    },
    #[error("artifact {digest} is neither a WebAssembly binary nor a usable OCI image: {cause}")]
    BadImage {
        digest: String,
        #[source]
        cause: Cause,
    },
    /// The image is past the server's import limits (its cause names the
    /// limit and the setting).
    #[error("artifact {digest} is refused: {cause}")]
    TooLarge {
        digest: String,
        #[source]
        cause: Cause,
    },
    #[error("cannot run container functions: {cause}")]
    ContainersUnavailable {
        #[source]
        cause: Cause,
    },
    #[error("{cause}")]
    Pull {
        failure: PullFailure,
        #[source]
        cause: Cause,
    },
}

impl PrepareError {
    /// Whether the caller sent something wisp cannot run (as opposed to a host fault).
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            PrepareError::Storage { .. }
                | PrepareError::ContainersUnavailable { .. }
                | PrepareError::Pull {
                    failure: PullFailure::Unreachable
                        | PullFailure::Storage
                        | PullFailure::Unsupported,
                    ..
                }
        )
    }
}

/// Why a sandbox could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("function {function}: compiled artifact is missing or unreadable: {detail}")]
    Artifact {
        function: FunctionName,
        detail: String,
    },
    #[error("function {function}: instantiation failed: {detail}")]
    Instantiate {
        function: FunctionName,
        detail: String,
    },
    #[error("function {function}: no backend runs {kind} functions")]
    Unsupported {
        function: FunctionName,
        kind: &'static str,
    },
    #[error("function {function}: the handler exited before it was ready ({status}){stderr}")]
    Exited {
        function: FunctionName,
        status: String,
        /// `; stderr: …` or empty.
        stderr: String,
    },
    /// `waited_for`: what the handler did not do, e.g. `accept
    /// connections on port 8080`.
    #[error("function {function}: the handler did not {waited_for} within {timeout:?}")]
    NotReady {
        function: FunctionName,
        waited_for: String,
        timeout: Duration,
    },
    #[error("function {function}: the sandbox could not be made: {cause}")]
    Sandbox {
        function: FunctionName,
        #[source]
        cause: Cause,
    },
}

/// Why one request to a function failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("function {function} did not answer within {timeout:?}")]
    Timeout {
        function: FunctionName,
        timeout: Duration,
    },
    #[error("function {function} ran out of memory (limit {limit_bytes} bytes)")]
    OutOfMemory {
        function: FunctionName,
        limit_bytes: u64,
    },
    #[error("function {function} failed: {detail}")]
    Trap {
        function: FunctionName,
        detail: String,
    },
    /// A Lambda function's handler returned an error (it reported it to
    /// the Runtime API; the sandbox is fine).
    #[error("function {function} returned an error: {error_type}: {message}")]
    Unhandled {
        function: FunctionName,
        error_type: String,
        message: String,
    },
    #[error("request body to function {function} is larger than its limit of {limit_bytes} bytes")]
    BodyTooLarge {
        function: FunctionName,
        limit_bytes: u64,
    },
    #[error("function {function} sent an invalid response: {detail}")]
    BadResponse {
        function: FunctionName,
        detail: String,
    },
    #[error("function {function} is at capacity: {detail}")]
    QueueFull {
        function: FunctionName,
        detail: String,
    },
    #[error("function {function} has no capacity left: {detail}")]
    Capacity {
        function: FunctionName,
        detail: String,
    },
    #[error("function {function} could not be started: {0}", function = .0.function())]
    Start(#[from] StartError),
    #[error("request to function {function} failed: {detail}")]
    BadRequest {
        function: FunctionName,
        detail: String,
    },
}

impl StartError {
    pub fn function(&self) -> &FunctionName {
        match self {
            StartError::Artifact { function, .. }
            | StartError::Instantiate { function, .. }
            | StartError::Unsupported { function, .. }
            | StartError::Exited { function, .. }
            | StartError::NotReady { function, .. }
            | StartError::Sandbox { function, .. } => function,
        }
    }
}

/// What a backend's own error was, kept whole (its chain of sources) behind
/// the backend-neutral enums above. Shared, because the pool hands one
/// start failure to every request that waited on it; two causes are equal
/// when they read the same (for tests).
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(error))
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

/// Facts about a request that are not in the request itself; the gateway
/// puts them in its extensions for handlers that want them (CGI).
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The path prefix that routed to the function, e.g. `/function/hello`.
    pub script_name: std::sync::Arc<str>,
    /// The client's address.
    pub remote_addr: Option<std::net::SocketAddr>,
}
