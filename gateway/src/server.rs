//! `wisp serve`: the HTTP server (hyper 1, HTTP/1.1 and h2 on one port),
//! the application state it serves from, and the invocation path
//! `/function/{name}/{rest...}` → [`Pool`] → instance → handler.
//!
//! Shutdown: on SIGINT/SIGTERM the listener closes, connections finish the
//! requests they have in flight and asynchronous calls running finish (up
//! to a grace period; waiting calls stay stored), then every pool is
//! retired so its instances stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use wisp_runner::backend::{Backend, Body, BodyError, InvokeError, RequestInfo, full_body};
use wisp_runner::container::ContainerBackend;
use wisp_runner::container::spawner::{LaunchError, SpawnerHandle};
use wisp_runner::image::ImportLimits;
use wisp_runner::pool::{Pool, StopReason};
use wisp_runner::quiet::Quietly;
use wisp_runner::router::Router;
use wisp_runner::store::artifact::ArtifactStore;
use wisp_runner::wasm::{WasmBackend, WasmConfig};

use crate::connections::{Admitted, ConnectionLimits, Connections, Tracked};
use crate::metrics::{FunctionMetrics, Metrics};
use crate::prune::{Holds, PruneConfig};
use crate::registry::{Registry, StoredFunction};
use crate::rescue::{GatewayError, rescue};
use crate::route::{Route, route};

/// Interval of h2 keep-alive pings.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Concurrent streams per h2 connection.
const H2_MAX_STREAMS: u32 = 256;
/// Largest h2 header list (decoded) a request may carry.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// Streams a client may open and reset before they are accepted, before
/// the connection is refused with GOAWAY (h2's default, made explicit).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's errors before GOAWAY.
const H2_MAX_LOCAL_RESETS: usize = 256;

/// Operator settings of `wisp serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Cap and timeouts of client connections.
    pub connections: ConnectionLimits,
    /// Largest artifact `POST /system/artifacts` accepts.
    pub max_artifact_bytes: u64,
    pub wasm: WasmConfig,
    /// How container sandboxes are made: how many ahead of demand, with
    /// which cgroups.
    pub sandboxes: wisp_runner::container::SandboxOptions,
    /// What one image import may write.
    pub images: ImportLimits,
    /// Garbage collection of unused artifacts and images.
    pub prune: PruneConfig,
    /// Registries (`host:port`) every deploy may reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Registries pulled from a mirror instead: (registry, mirror URL).
    pub registry_mirrors: Vec<(String, String)>,
    /// How long a deploy waits for its pull before answering 202.
    pub deploy_wait: Duration,
    /// Revisions kept per function for rollbacks (the current one included).
    pub revision_history: usize,
    /// `AWS_REGION` of Lambda functions whose env names none.
    pub lambda_region: String,
    /// Asynchronous invocation.
    pub calls: crate::calls::AsyncConfig,
    /// Cluster mode: the etcd this node shares with the others.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The control API's token, from `--token-file`, instead of the data
    /// dir's own.
    pub token: Option<String>,
}

/// A deployed function: what the registry holds and the pool serving it.
pub struct Function {
    pub stored: StoredFunction,
    pub pool: Arc<Pool>,
    pub invocations: AtomicU64,
    /// Shared with the pool, which reports its instances into it.
    pub metrics: Arc<FunctionMetrics>,
    /// `/function/{name}`, the CGI `SCRIPT_NAME` of its requests.
    pub script_name: Arc<str>,
    /// This version's secrets (shared with a copy that only changed its
    /// scaling), removed when the version is gone.
    pub secrets: Option<Arc<crate::secrets::SecretsDir>>,
}

impl Function {
    /// A version of the function `stored` (its secrets written out for
    /// it), carrying the metrics and the count of `previous`. A Lambda
    /// function's sandboxes are told its revision and `lambda_region`
    /// unless its env says otherwise.
    #[expect(
        clippy::too_many_arguments,
        reason = "the server's parts a function version is made from"
    )]
    fn new(
        stored: StoredFunction,
        previous: Option<&Function>,
        backend: &Arc<dyn Backend>,
        metrics: &Metrics,
        secrets: &crate::secrets::SecretFiles,
        registry: &Registry,
        deploying: bool,
        lambda_region: &str,
        warm: bool,
    ) -> Result<Function, GatewayError> {
        let mut stored = stored;
        let name = stored.spec.name.to_string();
        let dir = secrets.make(registry, &stored.spec, deploying)?;
        stored.spec.secrets_dir = dir.as_ref().map(|d| d.path().to_owned());
        let function_metrics = Arc::new(metrics.function(&name, previous.map(|f| &*f.metrics)));
        let mut run = stored.spec.clone();
        if !warm {
            // Another node is its home: it keeps the instances warm.
            run.scaling.min_instances = Some(0);
        }
        if run
            .container
            .as_ref()
            .is_some_and(|c| c.protocol == wisp_runner::protocol::Protocol::Lambda)
        {
            let version = stored.revision.max(1).to_string();
            for (name, value) in [
                ("AWS_LAMBDA_FUNCTION_VERSION", version.as_str()),
                ("AWS_REGION", lambda_region),
                ("AWS_DEFAULT_REGION", lambda_region),
            ] {
                run.env
                    .entry(name.to_owned())
                    .or_insert_with(|| value.to_owned());
            }
        }
        Ok(Function {
            pool: Arc::new(Pool::new(run, backend.clone(), function_metrics.clone())),
            metrics: function_metrics,
            script_name: script_name(&name),
            stored,
            invocations: AtomicU64::new(
                previous.map_or(0, |f| f.invocations.load(Ordering::Relaxed)),
            ),
            secrets: dir.map(Arc::new),
        })
    }
}

/// Everything a request may need.
pub struct App {
    pub(crate) registry: Registry,
    pub(crate) artifacts: ArtifactStore,
    pub(crate) images: wisp_runner::image::ImageStore,
    pub(crate) logs: Arc<wisp_runner::store::logs::LogStore>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) functions: DashMap<String, Arc<Function>>,
    pub(crate) token: String,
    /// Deploys, deletes and prunes run one at a time, so registry and
    /// routing agree and a prune sees what is in use.
    pub(crate) deploy_lock: tokio::sync::Mutex<()>,
    /// Artifacts and images in use beyond the deployed functions.
    pub(crate) holds: Arc<Holds>,
    pub(crate) max_artifact_bytes: u64,
    pub(crate) insecure_registries: Vec<String>,
    pub(crate) registry_mirrors: Vec<(String, String)>,
    /// Pulls in flight, and the deploys waiting for theirs.
    pub(crate) pulls: crate::pending::Pulls,
    pub(crate) pending: DashMap<String, Arc<crate::pending::PendingDeploy>>,
    pub(crate) deploy_wait: Duration,
    pub(crate) logins: crate::credentials::RegistryLogins,
    pub(crate) prune: PruneConfig,
    pub(crate) metrics: Metrics,
    /// Where function versions get their secrets' files.
    pub(crate) secrets: crate::secrets::SecretFiles,
    /// Revisions kept per function (the current one included).
    pub(crate) revision_history: usize,
    pub(crate) lambda_region: String,
    /// Asynchronous calls.
    pub(crate) calls: crate::calls::Calls,
    /// In a cluster: the latest version of each function the cluster's
    /// store holds, as this node last heard (what a retried apply checks
    /// it is still wanted).
    pub(crate) wanted: DashMap<String, StoredFunction>,
    /// A cluster member that started while etcd was out of reach, not
    /// joined yet: it serves its last view and refuses changes.
    pub(crate) joining: std::sync::atomic::AtomicBool,
    /// This node's cluster, in cluster mode (set once joined).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Forwards invocations to their home node in a cluster.
    pub(crate) forwarder: crate::cluster::forward::Forwarder,
}

impl App {
    /// Opens the data dir and brings back every stored function.
    pub fn open(
        config: &ServeConfig,
        spawner: Result<SpawnerHandle, LaunchError>,
    ) -> anyhow::Result<(Arc<App>, Option<String>)> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        // Functions' environments, their output and the token live here:
        // only the server's user may look in, also in a data dir an older
        // wisp made 0755.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", config.data_dir.display()))?;
        }
        if let Some(token) = &config.token {
            crate::auth::install(&config.data_dir, token).with_context(|| {
                format!("installing the token in {}", config.data_dir.display())
            })?;
        }
        let (token, fresh) = crate::auth::load_or_create(&config.data_dir)
            .with_context(|| format!("reading the token in {}", config.data_dir.display()))?;
        let artifacts =
            ArtifactStore::open(config.data_dir.join("artifacts")).with_context(|| {
                format!(
                    "opening the artifact store in {}",
                    config.data_dir.display()
                )
            })?;
        let registry = Registry::open(&config.data_dir.join("wisp.redb"))?;
        let logins =
            crate::credentials::RegistryLogins::open(&config.data_dir).with_context(|| {
                format!(
                    "reading the registry logins in {}",
                    config.data_dir.display()
                )
            })?;
        let wasm = WasmBackend::new(artifacts.clone(), &config.wasm)
            .map_err(|e| anyhow::anyhow!("starting wasmtime: {e:#}"))?;
        let container = ContainerBackend::new(
            artifacts.clone(),
            &config.data_dir,
            spawner,
            config.sandboxes,
            config.images,
        )
        .map_err(|e| anyhow::anyhow!("opening the image store: {e}"))?;
        let images = container.images().clone();
        let logs = Arc::new(
            wisp_runner::store::logs::LogStore::open(
                config.data_dir.join("logs"),
                wisp_runner::store::logs::DEFAULT_MAX_BYTES,
            )
            .with_context(|| format!("opening the log store in {}", config.data_dir.display()))?,
        );
        wisp_runner::store::logs::install(logs.clone())
            .context("starting the log writer thread")?;
        let backend: Arc<dyn Backend> = Arc::new(Router {
            artifacts: artifacts.clone(),
            wasm: Arc::new(wasm),
            container: Arc::new(container),
        });
        let metrics = Metrics::new().map_err(|e| anyhow::anyhow!("registering metrics: {e}"))?;
        let secrets =
            crate::secrets::SecretFiles::open(config.data_dir.join("run").join("secrets"))
                .with_context(|| {
                    format!(
                        "making the secrets directory in {}",
                        config.data_dir.display()
                    )
                })?;
        let functions = DashMap::new();
        for stored in registry.list()? {
            let name = stored.spec.name.to_string();
            let function = Function::new(
                stored,
                None,
                &backend,
                &metrics,
                &secrets,
                &registry,
                false,
                &config.lambda_region,
                // Before joining a cluster (`follow_homes` settles it).
                true,
            )
            .map_err(|e| anyhow::anyhow!("loading function {name}: {e}"))?;
            functions.insert(name, Arc::new(function));
        }
        tracing::info!(functions = functions.len(), data_dir = %config.data_dir.display(), "registry loaded");
        let app = App {
            registry,
            artifacts,
            images,
            logs,
            backend,
            functions,
            token: token.clone(),
            deploy_lock: tokio::sync::Mutex::new(()),
            holds: Arc::default(),
            max_artifact_bytes: config.max_artifact_bytes,
            insecure_registries: config.insecure_registries.clone(),
            registry_mirrors: config.registry_mirrors.clone(),
            pulls: crate::pending::Pulls::default(),
            pending: DashMap::new(),
            deploy_wait: config.deploy_wait,
            logins,
            prune: config.prune,
            metrics,
            secrets,
            revision_history: config.revision_history,
            lambda_region: config.lambda_region.clone(),
            calls: crate::calls::Calls::new(config.calls.clone()),
            wanted: DashMap::new(),
            joining: std::sync::atomic::AtomicBool::new(false),
            cluster: std::sync::OnceLock::new(),
            forwarder: crate::cluster::forward::forwarder(),
        };
        Ok((Arc::new(app), fresh.then_some(token)))
    }

    /// A version of the function `stored` to route to, replacing
    /// `previous`; `deploying` refuses secrets that do not exist.
    pub(crate) fn new_function(
        &self,
        stored: StoredFunction,
        previous: Option<&Function>,
        deploying: bool,
    ) -> Result<Function, GatewayError> {
        let stored_key = stored.spec.name.to_string();
        Function::new(
            stored,
            previous,
            &self.backend,
            &self.metrics,
            &self.secrets,
            &self.registry,
            deploying,
            &self.lambda_region,
            self.warms_here(&stored_key),
        )
    }

    /// Starts following the cluster this node `joined`.
    fn start_cluster(
        self: Arc<Self>,
        joined: Arc<crate::cluster::Cluster>,
        marker: std::path::PathBuf,
    ) {
        let _ = self.cluster.set(joined.clone());
        self.joining.store(false, Ordering::Release);
        let (changes, applied) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(joined.follow_functions(changes));
        tokio::spawn(self.clone().apply_changes(applied, marker));
        tokio::spawn(self.clone().follow_calls());
        tokio::spawn(self.follow_homes());
    }

    /// Tries to join the cluster until it can (etcd was out of reach at
    /// start), a few seconds apart.
    async fn join_later(
        self: Arc<Self>,
        config: crate::cluster::ClusterConfig,
        load: crate::cluster::LoadFn,
        marker: std::path::PathBuf,
    ) {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            match crate::cluster::Cluster::join(config.clone(), load.clone()).await {
                Ok(joined) => {
                    tracing::info!("etcd is back: joined the cluster");
                    self.start_cluster(joined, marker);
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "joining the cluster"),
            }
        }
    }

    /// Whether this node keeps function `key`'s `--min` instances warm:
    /// alone, always; in a cluster, when it is the function's home (so
    /// `--min` counts across the cluster, not per node).
    pub(crate) fn warms_here(&self, key: &str) -> bool {
        self.cluster
            .get()
            .is_none_or(|cluster| cluster.is_home(key))
    }

    /// `spec`'s scaling as this node's pool applies it.
    pub(crate) fn scaling_here(
        &self,
        spec: &wisp_runner::spec::FunctionSpec,
    ) -> wisp_runner::spec::Scaling {
        let mut scaling = spec.scaling();
        if !self.warms_here(spec.name.as_str()) {
            scaling.min_instances = 0;
        }
        scaling
    }

    /// In a cluster: each time a node joins or leaves, the functions whose
    /// home moved here warm their `--min` instances, and those whose home
    /// moved away let theirs go idle.
    pub(crate) async fn follow_homes(self: Arc<Self>) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        let mut moved = cluster.homes_moved();
        loop {
            for function in self.functions.iter() {
                function
                    .pool
                    .set_scaling(self.scaling_here(&function.stored.spec));
            }
            if moved.changed().await.is_err() {
                return;
            }
        }
    }

    /// The key of the function an invocation path's `{name}` means.
    /// `{name}.{namespace}` is already the key of a function of another
    /// namespace ([`crate::namespaces`]); `{name}.openfaas-fn` names one of
    /// the default namespace, whose key is `{name}`. A function whose own
    /// name ends in `.openfaas-fn` is found by it first. Only such a name
    /// is looked up twice: the request path pays nothing otherwise.
    pub(crate) fn qualified<'a>(&self, name: &'a str) -> &'a str {
        match name.rsplit_once('.') {
            Some((base, namespace))
                if namespace == crate::api::NAMESPACE
                    && !self.functions.contains_key(name)
                    && !self.pending.contains_key(name) =>
            {
                base
            }
            _ => name,
        }
    }

    /// The deployed function `name`, or the error that answers 404.
    pub(crate) fn function(&self, name: &str) -> Result<Arc<Function>, GatewayError> {
        self.functions
            .get(name)
            .map(|f| f.clone())
            .ok_or_else(|| GatewayError::UnknownFunction(name.to_owned()))
    }

    /// Answers one request; never fails (errors become responses).
    pub async fn handle(self: Arc<Self>, req: Request<Body>, remote: &Client) -> Response<Body> {
        let method = req.method().clone();
        // A clone shares the request's buffer: the route borrows from it
        // while the request itself moves on.
        let uri = req.uri().clone();
        let path = uri.path();
        let started = std::time::Instant::now();
        let result = match route(path) {
            Route::Healthz | Route::Metrics if !is_get(&method) => {
                Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD" })
            }
            Route::Healthz => Ok(text(StatusCode::OK, "ok\n")),
            Route::Invoke { .. } if !forwards(&method) => Err(GatewayError::MethodNotAllowed {
                allow: FORWARDED_METHODS,
            }),
            Route::Invoke { name, rest } => {
                let key = self.qualified(name);
                match self.elsewhere(key, req.headers()) {
                    Some(order) => Ok(self.forward(key, rest, order, req, remote).await),
                    None => self.invoke(key, rest, req, remote).await,
                }
            }
            Route::InvokeAsync { .. } if !forwards(&method) => {
                Err(GatewayError::MethodNotAllowed {
                    allow: FORWARDED_METHODS,
                })
            }
            Route::InvokeAsync { name, rest } => {
                self.invoke_async(self.qualified(name), rest, req, remote)
                    .await
            }
            Route::LambdaInvoke(name) => self.lambda_invoke(name, req, remote).await,
            Route::Metrics => {
                let mut dropped = self.logs.dropped();
                dropped.retain(|(name, _)| self.functions.contains_key(name));
                self.metrics.log_lines_dropped(&dropped);
                let mut response = text(StatusCode::OK, self.metrics.render());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(response)
            }
            Route::NotFound => Err(GatewayError::NotFound(path.to_owned())),
            system => match self.caller(req.headers()) {
                Ok(caller) => self.control(system, &caller, req).await,
                Err(e) => Err(e),
            },
        };
        let response = result.unwrap_or_else(|e| rescue(&e));
        tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
        response
    }

    pub(crate) async fn invoke(
        &self,
        name: &str,
        rest: &str,
        req: Request<Body>,
        remote: &Client,
    ) -> Result<Response<Body>, GatewayError> {
        let function = match self.function(name) {
            Ok(function) => function,
            Err(unknown) => match self.pending.get(name).map(|p| p.clone()) {
                Some(pending) => self.deployed(name, pending).await?,
                None => return Err(unknown),
            },
        };
        let started = std::time::Instant::now();
        let _in_flight = function.metrics.in_flight_guard();
        let response = self
            .invoke_function(&function, name, rest, req, remote)
            .await
            .unwrap_or_else(|e| rescue(&e));
        function
            .metrics
            .invoked(response.status().as_u16(), started.elapsed());
        Ok(response)
    }

    /// The function a deploy in flight makes, once it has: a request waits
    /// for it up to the function's deadline.
    async fn deployed(
        &self,
        name: &str,
        pending: Arc<crate::pending::PendingDeploy>,
    ) -> Result<Arc<Function>, GatewayError> {
        use crate::pending::DeployState;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(pending.draft.limits.timeout_ms);
        let mut pending = pending;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let state = pending.settled(left).await;
            // A newer deploy of the name replaced this one: serve what it
            // installed, or wait for it.
            if matches!(state, DeployState::Failed(_)) {
                if let Ok(function) = self.function(name) {
                    return Ok(function);
                }
                if let Some(newer) = self.pending.get(name).map(|p| p.clone())
                    && !Arc::ptr_eq(&newer, &pending)
                    && !left.is_zero()
                {
                    pending = newer;
                    continue;
                }
            }
            return match state {
                DeployState::Done => self.function(name),
                DeployState::Failed(reason) => Err(GatewayError::NotReady(format!(
                    "function {name} is not deployed: {reason}"
                ))),
                DeployState::Pulling => Err(GatewayError::NotReady(format!(
                    "function {name} is still pulling {}; try again shortly",
                    pending.reference
                ))),
            };
        }
    }

    async fn invoke_function(
        &self,
        function: &Function,
        name: &str,
        rest: &str,
        req: Request<Body>,
        remote: &Client,
    ) -> Result<Response<Body>, GatewayError> {
        let spec = function.pool.spec();
        let limit = spec.limits.max_body_bytes;
        if declares_more_than(req.headers(), limit) {
            return Err(GatewayError::Invoke(InvokeError::BodyTooLarge {
                function: spec.name.clone(),
                limit_bytes: limit,
            }));
        }
        let (mut parts, body) = req.into_parts();
        parts.uri = function_uri(&parts.uri, &parts.headers, rest)?;
        strip_hop_by_hop(&mut parts.headers);
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", remote.addr.ip())).ok(),
            None => Some(remote.ip.clone()),
        };
        if let Some(value) = forwarded {
            parts.headers.insert("x-forwarded-for", value);
        }
        parts.extensions.insert(RequestInfo {
            script_name: function.script_name.clone(),
            remote_addr: Some(remote.addr),
        });
        if parts
            .headers
            .remove(crate::lambda_api::DIRECT_HEADER)
            .is_some()
        {
            parts
                .extensions
                .insert(wisp_runner::protocol::lambda::Direct);
        }
        let (body, too_large) = wisp_runner::body::cap(body, limit);
        function.invocations.fetch_add(1, Ordering::Relaxed);
        let result = function.pool.invoke(Request::from_parts(parts, body)).await;
        if too_large.load(Ordering::Acquire) {
            return Err(GatewayError::Invoke(InvokeError::BodyTooLarge {
                function: spec.name.clone(),
                limit_bytes: limit,
            }));
        }
        let served = result?;
        let mut response = served.response;
        strip_hop_by_hop(response.headers_mut());
        let timing = match &served.cold_start {
            Some(cold) => {
                self.metrics.cold_start(name, spec.kind.backend(), cold);
                server_timing(cold)
            }
            None => String::new(),
        };
        let timing = if timing.is_empty() {
            Ok(HeaderValue::from_static("warm"))
        } else {
            HeaderValue::from_str(&timing)
        };
        if let Ok(value) = timing {
            response.headers_mut().insert("server-timing", value);
        }
        Ok(response)
    }
}

/// The methods an invocation forwards to the handler, as OpenFaaS's proxy
/// does; `TRACE`, `CONNECT` and extension methods are refused with 405.
const FORWARDED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

fn forwards(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

fn is_get(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// `Server-Timing` of a cold start: `cold`, the whole start, and the
/// backend's phases (e.g. `cold;desc="cold start", start;dur=2.9,
/// rootfs;dur=0.9, exec;dur=1.0, ready;dur=0.2`).
fn server_timing(cold: &wisp_runner::pool::ColdStart) -> String {
    let mut timing = format!(
        "cold;desc=\"cold start\", start;dur={:.3}",
        cold.total.as_secs_f64() * 1e3
    );
    for (phase, took) in &cold.phases {
        timing.push_str(&format!(", {phase};dur={:.3}", took.as_secs_f64() * 1e3));
    }
    timing
}

/// The URI the handler sees: its own path (`rest`) and the original query,
/// with an authority so that handlers that need one (wasi:http) have it.
fn function_uri(uri: &Uri, headers: &HeaderMap, rest: &str) -> Result<Uri, GatewayError> {
    let path_and_query = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let path_and_query = PathAndQuery::try_from(path_and_query)
        .map_err(|e| GatewayError::BadRequest(format!("invalid path: {e}")))?;
    let authority = uri
        .authority()
        .cloned()
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        })
        .unwrap_or_else(|| Authority::from_static("localhost"));
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| GatewayError::BadRequest(format!("invalid URI: {e}")))
}

/// Whether the request's `Content-Length` already exceeds `limit` (so it
/// can be refused before a byte of the body is read).
pub(crate) fn declares_more_than(headers: &HeaderMap, limit: u64) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > limit)
}

/// `/function/{name}`: the path prefix that routes to a function.
pub(crate) fn script_name(name: &str) -> Arc<str> {
    format!("/function/{name}").into()
}

/// The headers that are always connection-scoped, besides `Keep-Alive`.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str() == "keep-alive"
}

/// Removes the connection-scoped headers a proxy must not forward (RFC 9110 §7.6.1).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at each name, no removal (which
    // hashes every name it is asked to remove).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

pub(crate) fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Runs the server until `shutdown` resolves, then drains and stops.
pub async fn serve(
    config: ServeConfig,
    spawner: Result<SpawnerHandle, LaunchError>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (app, fresh_token) = App::open(&config, spawner)?;
    app.resume_deploys();
    app.resume_calls();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr()?;
    if let Some(cluster) = &config.cluster {
        let mut cluster = cluster.clone();
        if cluster.advertise.is_empty() {
            cluster.advertise = format!("http://{local}");
        }
        let weak = Arc::downgrade(&app);
        let load: crate::cluster::LoadFn = Arc::new(move || match weak.upgrade() {
            Some(app) => app.load(),
            None => crate::cluster::NodeLoad::default(),
        });
        let marker = config.data_dir.join(crate::cluster::functions::MEMBER_FILE);
        let member_before =
            std::fs::read_to_string(&marker).is_ok_and(|name| name.trim() == cluster.name);
        match crate::cluster::Cluster::join(cluster.clone(), load.clone()).await {
            Ok(joined) => app.clone().start_cluster(joined, marker),
            // A node that has been a member serves its last view while
            // etcd is out of reach, and joins when it is back; a first
            // join, or a misconfiguration, stops the start.
            Err(e) if member_before && e.is_unreachable() => {
                tracing::warn!(error = %e, "etcd is out of reach; serving this node's last view and joining when it is back");
                app.joining.store(true, Ordering::Release);
                tokio::spawn(app.clone().join_later(cluster, load, marker));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(token) = fresh_token {
        println!(
            "wisp: control API token (shown once, kept in {}): {token}",
            crate::auth::token_path(&config.data_dir).display()
        );
    }
    println!("wisp: listening on http://{local}");
    tracing::info!(%local, "listening");

    if !config.prune.interval.is_zero() {
        tokio::spawn(crate::prune::sweep(app.clone(), config.prune.interval));
    }
    let connections = Arc::new(Connections::new(
        config.connections,
        app.metrics.connections(),
    ));
    crate::linger::limit_to(config.connections.max);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Timeouts on silent, half-sent and idle connections are kept by
    // `Connections`; hyper's own header-read timeout also guards each
    // later request head of a keep-alive connection (slowloris).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.connections.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        // The rapid-reset guards (CVE-2023-44487, RUSTSEC-2024-0003).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(admitted) = connections.admit() else {
                    tracing::debug!(%remote, "connection refused: every open connection is busy");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // Polled quietly: hyper's dispatcher and the guests it runs
                // wake the connection's task from inside its own poll
                // (`wisp_runner::quiet`).
                tokio::spawn(Quietly::new(serve_connection(
                    app.clone(),
                    &builder,
                    stream,
                    remote,
                    admitted,
                )));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: finishing in-flight requests");
    // The other nodes stop sending requests here now, not when the lease
    // would have expired.
    if let Some(cluster) = app.cluster.get() {
        cluster.leave().await;
    }
    connections.shut_down();
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    if tokio::time::timeout_at(deadline, connections.drained())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    // Asynchronous calls running finish within the same grace; the ones
    // waiting stay stored for the next start.
    if tokio::time::timeout_at(deadline, app.stop_calls())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period over; asynchronous calls still running run again at the next start"
        );
    }
    let pools: Vec<_> = app.functions.iter().map(|f| f.value().clone()).collect();
    for function in pools {
        function.pool.retire(StopReason::Shutdown).await;
    }
    app.backend.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The client at the other end of a connection.
pub struct Client {
    pub addr: SocketAddr,
    /// Its address as a header value (`X-Forwarded-For`), made once per
    /// connection rather than once per request.
    ip: HeaderValue,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Client { addr, ip }
    }
}

/// Serves one client connection until it ends or the server closes it
/// (idle, evicted, shutting down: see [`Connections`]).
fn serve_connection(
    app: Arc<App>,
    builder: &auto::Builder<TokioExecutor>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    admitted: Admitted,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let admitted = Arc::new(admitted);
    let tracker = admitted.clone();
    let client = Arc::new(Client::new(remote));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let client = client.clone();
        let in_flight = tracker.request();
        async move {
            let req = req.map(|b| b.map_err(BodyError::from).boxed_unsync());
            // Boxed: a request's future is ~12 KB, and hyper moves the
            // service's future into place for every request; unboxed, that
            // was a 24 KB copy per request (the largest single caller of
            // `memmove`, 4 % of the gateway's user-space samples on the
            // container hop).
            let response = Box::pin(app.handle(req, &client)).await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
        }
    });
    let (stream, linger) = crate::linger::Lingering::new(stream);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    async move {
        tokio::pin!(conn);
        let reason = tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            reason = admitted.close_requested() => reason,
        };
        tracing::debug!(%remote, ?reason, "closing connection");
        admitted.closing(reason);
        // Closed to free its descriptor, or for good: not kept lingering.
        linger.store(false, std::sync::atomic::Ordering::Relaxed);
        // Requests in flight finish (h1 closes after the response, h2 sends
        // GOAWAY); a connection with nothing in flight is dropped.
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            () = admitted.quiet() => {}
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop wisp with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_uri_keeps_rest_and_query() {
        let uri: Uri = "/function/hello/a/b?x=1&y=2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com:8080"));
        let out = function_uri(&uri, &headers, "/a/b").unwrap();
        assert_eq!(out.to_string(), "http://example.com:8080/a/b?x=1&y=2");
        let out =
            function_uri(&"/function/hello".parse().unwrap(), &HeaderMap::new(), "/").unwrap();
        assert_eq!(out.to_string(), "http://localhost/");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));

        // Each one alone, without a `Connection` header naming it.
        for name in ["keep-alive", "te", "upgrade", "proxy-authorization"] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static("x"));
            headers.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut headers);
            assert_eq!(headers.len(), 1, "{name} is removed");
        }
    }
}
