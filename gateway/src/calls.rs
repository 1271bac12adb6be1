//! Asynchronous invocations, as OpenFaaS has them: `POST
//! /async-function/{name}[/rest…]` answers `202` with an `X-Call-Id` once
//! the request (method, path, query, headers, body up to the function's
//! limit) is stored in the registry's call table, so that a call accepted
//! survives a crash or a restart of the server.
//!
//! Each function has a queue and a dispatcher task that runs its calls in
//! order through the same path as a synchronous request, but never more at
//! once than `--async-share` of the function's capacity (its instances ×
//! their concurrency, at least one), so that asynchronous work does not
//! starve the function's synchronous callers. A call runs once; it runs
//! again only when the server died while it ran (its outcome unknown), or
//! when the function's retry annotations (`com.openfaas.retry.attempts`,
//! `.codes`, `.min_wait`, `.max_wait`) ask for it, with exponential
//! back-off. When it is done, its result is stored and POSTed to its
//! `X-Callback-Url` with `X-Function-Status`, `X-Function-Name`,
//! `X-Call-Id` and `X-Duration-Seconds`, retried with back-off, and the
//! call is forgotten: a callback is delivered at least once (receivers
//! tell repeats by `X-Call-Id`).
//!
//! Callbacks never reach loopback, link-local, unspecified or multicast
//! addresses, nor this host's own, unless the server is started with
//! `--allow-local-callbacks`: the names are resolved by wisp and checked
//! (every time, against DNS rebinding), literal addresses are checked, and
//! redirects are not followed.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use wisp_runner::backend::{Body, InvokeError, full_body};
use wisp_runner::spec::FunctionName;

use crate::rescue::GatewayError;
use crate::server::{App, Client};

/// Default share of a function's capacity its asynchronous calls may use.
pub const DEFAULT_SHARE: f64 = 0.5;
/// Default number of calls that may wait per function.
pub const DEFAULT_MAX_QUEUED: usize = 10_000;
/// Default total of the request bodies that may wait per function.
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 1024 * 1024 * 1024;
/// Largest response body kept for a callback; a longer one is cut there.
const MAX_RESULT_BYTES: u64 = 16 * 1024 * 1024;
/// Deliveries of one callback before it is given up.
const CALLBACK_ATTEMPTS: u32 = 5;
/// Wait before the first repeat of a callback; doubled each time.
const CALLBACK_FIRST_WAIT: Duration = Duration::from_secs(1);
/// Longest a callback's receiver may take to answer.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries, a second apart, to remove a finished call from etcd.
const FORGET_ATTEMPTS: u32 = 10;
/// Longest caller-given call id kept.
const MAX_CALL_ID: usize = 128;

/// Operator settings of asynchronous invocation.
#[derive(Debug, Clone)]
pub struct AsyncConfig {
    /// Share of a function's capacity (instances × concurrency) its
    /// asynchronous calls may use at once, the rest kept for synchronous
    /// requests; at least one call runs.
    pub share: f64,
    /// Calls that may wait per function; more are refused with 429.
    pub max_queued: usize,
    /// Bytes of request bodies that may wait per function (they are kept
    /// in the data dir); more are refused with 429.
    pub max_queued_bytes: u64,
    /// Whether callbacks may go to loopback, link-local or this host's own
    /// addresses.
    pub allow_local_callbacks: bool,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            share: DEFAULT_SHARE,
            max_queued: DEFAULT_MAX_QUEUED,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            allow_local_callbacks: false,
        }
    }
}

/// One accepted call, as the registry keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Call {
    id: String,
    function: String,
    method: String,
    /// The path after the function's name, from `/`.
    rest: String,
    query: Option<String>,
    headers: Vec<Header>,
    #[serde(with = "b64")]
    body: Vec<u8>,
    callback: Option<String>,
    remote: SocketAddr,
    /// Unix time it was accepted, in nanoseconds (`X-Start-Time`).
    accepted_ns: u128,
    /// Runs so far.
    attempts: u32,
    /// Unix time in milliseconds before which it does not run (a retry).
    not_before_ms: u64,
    /// Set once it has run for good; then only its callback is left.
    result: Option<CallResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    name: String,
    #[serde(with = "b64")]
    value: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CallResult {
    status: u16,
    headers: Vec<Header>,
    #[serde(with = "b64")]
    body: Vec<u8>,
    seconds: f64,
}

/// Bytes as base64 in the stored JSON.
mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

fn headers_of(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When and how often a function's failed calls run again, from its
/// OpenFaaS retry annotations; without them, never.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in all, the first included.
    pub attempts: u32,
    /// The statuses that are retried.
    pub codes: Vec<u16>,
    pub min_wait: Duration,
    pub max_wait: Duration,
}

impl RetryPolicy {
    /// The policy of a function with `annotations`; an annotation that
    /// does not parse is an error naming it (a deploy refuses it).
    pub fn parse(
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<RetryPolicy, String> {
        let get = |key: &str| annotations.get(&format!("com.openfaas.retry.{key}"));
        let bad = |key: &str, expected: &str| {
            format!("annotation com.openfaas.retry.{key}: expected {expected}")
        };
        let attempts = match get("attempts") {
            None => 1,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| bad("attempts", "a whole number from 1 to 100"))?,
        };
        let codes = match get("codes") {
            None => vec![408, 429, 500, 502, 503, 504],
            Some(v) => v
                .split([',', ' '])
                .filter(|c| !c.is_empty())
                .map(|c| c.parse::<u16>().ok().filter(|c| (100..600).contains(c)))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| bad("codes", "HTTP status codes such as 429,502,503"))?,
        };
        let wait = |key: &str, default: Duration| -> Result<Duration, String> {
            match get(key) {
                None => Ok(default),
                Some(v) => wisp_runner::spec::parse_duration("wait", v)
                    .map_err(|_| bad(key, "a duration such as 500ms, 5s or 1m")),
            }
        };
        let min_wait = wait("min_wait", Duration::from_secs(1))?;
        let max_wait = wait("max_wait", Duration::from_secs(120))?.max(min_wait);
        Ok(RetryPolicy {
            attempts,
            codes,
            min_wait,
            max_wait,
        })
    }

    /// The wait before run `attempts + 1`: `min_wait` doubled per run
    /// made, at most `max_wait`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(20);
        self.min_wait
            .saturating_mul(1 << doublings)
            .min(self.max_wait)
    }
}

/// Where a call is kept: this node's registry, or the cluster's etcd.
#[derive(Debug, Clone)]
enum Stored {
    Local(u64),
    Cluster(String),
}

/// A function's calls waiting in memory.
#[derive(Default)]
struct Queue {
    waiting: Mutex<VecDeque<(Stored, Call)>>,
    /// Accepted and not yet run for good: waiting, running or between retries.
    queued: AtomicUsize,
    /// Their request bodies' bytes.
    bytes: AtomicU64,
    running: AtomicUsize,
    /// Wakes the dispatcher (one waiter: a stored permit is not lost).
    wake: Notify,
}

impl Queue {
    fn push(&self, seq: Stored, call: Call) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((seq, call));
        self.wake.notify_one();
    }

    /// `call` is off the queue for good (run, or taken by another node):
    /// the calls still queued.
    fn done(&self, call: &Call) -> usize {
        self.bytes
            .fetch_sub(call.body.len() as u64, Ordering::AcqRel);
        self.queued.fetch_sub(1, Ordering::AcqRel).saturating_sub(1)
    }

    fn pop(&self) -> Option<(Stored, Call)> {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

/// Every function's queue, and the client that delivers callbacks.
pub struct Calls {
    config: AsyncConfig,
    next: AtomicU64,
    /// Set at shutdown: no call starts any more.
    stopping: std::sync::atomic::AtomicBool,
    /// Calls running, over all functions; `idle` is told when none is.
    running: AtomicUsize,
    idle: Notify,
    queues: DashMap<String, Arc<Queue>>,
    /// In a cluster: the calls this node has taken up (queued, running,
    /// waiting to retry or to call back), by key.
    taken: Mutex<std::collections::HashSet<String>>,
    /// Made at the first callback: a host without TLS roots (a minimal VM,
    /// a scratch container) still serves, and says why no callback goes
    /// out.
    callbacks: std::sync::OnceLock<Result<reqwest::Client, String>>,
    own: Arc<Vec<IpAddr>>,
}

impl Calls {
    pub fn new(config: AsyncConfig) -> Calls {
        Calls {
            config,
            next: AtomicU64::new(1),
            stopping: std::sync::atomic::AtomicBool::new(false),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
            queues: DashMap::new(),
            taken: Mutex::default(),
            callbacks: std::sync::OnceLock::new(),
            own: Arc::new(own_addresses()),
        }
    }

    /// The client that delivers callbacks, or why there is none.
    fn callback_client(&self) -> Result<&reqwest::Client, &str> {
        self.callbacks
            .get_or_init(|| {
                wisp_runner::image::pull::crypto_provider();
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .timeout(CALLBACK_TIMEOUT)
                    .dns_resolver(Arc::new(GuardedResolver {
                        allow_local: self.config.allow_local_callbacks,
                        own: self.own.clone(),
                    }))
                    .build()
                    .map_err(|e| {
                        format!(
                            "making the callback client: {}",
                            wisp_runner::image::pull::error_chain(&e)
                        )
                    })
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Checks a callback URL: http or https, with a host that is not a
    /// forbidden address.
    fn check_callback(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("only http and https callbacks are made".into());
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("it has no host")?
            .to_ascii_lowercase();
        if self.config.allow_local_callbacks {
            return Ok(parsed);
        }
        // A literal address is never resolved: it is checked here.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let local = match literal {
            Some(ip) => forbidden(ip, &self.own),
            None => host == "localhost" || host.ends_with(".localhost"),
        };
        if local {
            return Err("it is a loopback, link-local or this host's own address, which callbacks reach only when the server allows it (--allow-local-callbacks)".into());
        }
        Ok(parsed)
    }
}

/// Whether a callback may not go to `ip`: loopback, link-local,
/// unspecified, multicast or broadcast, or one of this host's addresses.
fn forbidden(ip: IpAddr, own: &[IpAddr]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let special = match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || special || own.contains(&ip)
}

/// This host's addresses, of every interface.
fn own_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// Resolves callback hosts, dropping the addresses they may not reach.
struct GuardedResolver {
    allow_local: bool,
    own: Arc<Vec<IpAddr>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (allow_local, own) = (self.allow_local, self.own.clone());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_local || !forbidden(a.ip(), &own))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "{host} resolves to no address a callback may reach (--allow-local-callbacks)"
                )
                .into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A new call id: a random (version 4) UUID.
fn new_call_id() -> String {
    wisp_runner::protocol::new_uuid()
}

/// The caller's `X-Call-Id`, if it is one wisp keeps (visible ASCII, not
/// too long), else a new one.
fn call_id(headers: &HeaderMap) -> String {
    headers
        .get("x-call-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_CALL_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(new_call_id, str::to_owned)
}

impl App {
    /// `/async-function/{name}{rest}`: stores the call and answers 202.
    pub(crate) async fn invoke_async(
        self: &Arc<Self>,
        name: &str,
        rest: &str,
        req: Request<Body>,
        remote: &Client,
    ) -> Result<Response<Body>, GatewayError> {
        let mut limits = match self.function(name) {
            Ok(function) => function.stored.spec.limits,
            Err(unknown) => match self.pending.get(name) {
                Some(pending) => pending.draft.limits,
                None => return Err(unknown),
            },
        };
        let cluster = self.cluster.get().cloned();
        if cluster.is_some() {
            // Kept in etcd, within its request limit.
            limits.max_body_bytes = limits
                .max_body_bytes
                .min(crate::cluster::calls::CLUSTER_CALL_BYTES);
        }
        let function =
            FunctionName::new(name).map_err(|_| GatewayError::UnknownFunction(name.to_owned()))?;
        let too_large = || {
            GatewayError::Invoke(InvokeError::BodyTooLarge {
                function: function.clone(),
                limit_bytes: limits.max_body_bytes,
            })
        };
        if crate::server::declares_more_than(req.headers(), limits.max_body_bytes) {
            return Err(too_large());
        }
        let callback = match req.headers().get("x-callback-url") {
            None => None,
            Some(value) => {
                let url = value
                    .to_str()
                    .map_err(|_| GatewayError::BadRequest("X-Callback-Url is not a URL".into()))?;
                self.calls.check_callback(url).map_err(|why| {
                    let shown: String = url.chars().take(200).collect();
                    GatewayError::BadRequest(format!("X-Callback-Url {shown:?}: {why}"))
                })?;
                Some(url.to_owned())
            }
        };
        let queue = self.queue(name);
        if queue.queued.load(Ordering::Relaxed) >= self.calls.config.max_queued {
            return Err(GatewayError::Invoke(InvokeError::QueueFull {
                function,
                detail: format!(
                    "{} asynchronous calls wait already (--async-queue-max)",
                    self.calls.config.max_queued
                ),
            }));
        }
        let id = call_id(req.headers());
        let (parts, body) = req.into_parts();
        let body = wisp_runner::body::collect(body, limits.max_body_bytes)
            .await
            .map_err(
                |e| match e.downcast_ref::<wisp_runner::body::BodyTooLarge>() {
                    Some(_) => too_large(),
                    None => GatewayError::BadRequest(format!("reading the body: {e}")),
                },
            )?;
        let waiting = queue.bytes.load(Ordering::Relaxed);
        if waiting.saturating_add(body.len() as u64) > self.calls.config.max_queued_bytes {
            return Err(GatewayError::Invoke(InvokeError::QueueFull {
                function,
                detail: format!(
                    "the asynchronous calls waiting hold {waiting} bytes of bodies already (--async-queue-max-bytes)"
                ),
            }));
        }
        let accepted_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut headers = parts.headers;
        crate::server::strip_hop_by_hop(&mut headers);
        headers.remove(http::header::AUTHORIZATION);
        let start_time = HeaderValue::from(u64::try_from(accepted_ns).unwrap_or(u64::MAX));
        let id_value = HeaderValue::from_str(&id)
            .map_err(|_| GatewayError::BadRequest("invalid X-Call-Id".into()))?;
        headers.insert("x-call-id", id_value.clone());
        headers.insert("x-start-time", start_time.clone());
        let call = Call {
            id,
            function: name.to_owned(),
            method: parts.method.as_str().to_owned(),
            rest: rest.to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: headers_of(&headers),
            body: body.to_vec(),
            callback,
            remote: remote.addr,
            accepted_ns,
            attempts: 0,
            not_before_ms: 0,
            result: None,
        };
        let seq = self.calls.next.fetch_add(1, Ordering::Relaxed);
        match cluster {
            None => {
                let seq = Stored::Local(seq);
                self.store_call(&seq, &call).await?;
                self.take_up(seq, call);
            }
            Some(cluster) => {
                let key = cluster.call_key(name, accepted_ns, seq);
                let seq = Stored::Cluster(key.clone());
                self.store_call(&seq, &call).await?;
                // Its home runs it; another node's learns of it from etcd.
                if self.is_home(&cluster, name) {
                    self.take_up(seq, call);
                }
            }
        }
        let mut response = Response::new(full_body(""));
        *response.status_mut() = StatusCode::ACCEPTED;
        response.headers_mut().insert("x-call-id", id_value);
        response.headers_mut().insert("x-start-time", start_time);
        Ok(response)
    }

    async fn store_call(&self, seq: &Stored, call: &Call) -> Result<(), GatewayError> {
        let json = serde_json::to_vec(call)
            .map_err(|e| GatewayError::BadRequest(format!("storing the call: {e}")))?;
        match (seq, self.cluster.get()) {
            (Stored::Cluster(key), Some(cluster)) => cluster.put_call(key, json).await,
            (Stored::Cluster(_), None) => Err(GatewayError::NotReady("not in a cluster".into())),
            (Stored::Local(seq), _) => {
                let seq = *seq;
                Ok(self.registry.write(move |r| r.put_call(seq, &json)).await?)
            }
        }
    }

    async fn forget_call(&self, seq: &Stored) {
        let result = match (seq, self.cluster.get()) {
            (Stored::Local(seq), _) => {
                let seq = *seq;
                self.registry
                    .write(move |r| r.remove_call(seq))
                    .await
                    .map_err(|e| e.to_string())
            }
            (Stored::Cluster(key), cluster) => {
                let Some(cluster) = cluster else {
                    return;
                };
                let mut forgotten = cluster.forget_call(key).await;
                for _ in 1..FORGET_ATTEMPTS {
                    if forgotten.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    forgotten = cluster.forget_call(key).await;
                }
                // Only once it is gone from etcd: until then this node
                // holds its claim, and would take it up again (it stays
                // taken when etcd stays out of reach: it runs again only
                // after this node's lease ends).
                if forgotten.is_ok() {
                    self.calls
                        .taken
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(key);
                }
                forgotten
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "removing a finished asynchronous call");
        }
    }

    /// Queues an accepted call that has not run for good.
    fn take_up(self: &Arc<Self>, seq: Stored, call: Call) {
        if let Stored::Cluster(key) = &seq
            && !self
                .calls
                .taken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.clone())
        {
            return;
        }
        let queue = self.queue(&call.function);
        queue.queued.fetch_add(1, Ordering::Relaxed);
        queue
            .bytes
            .fetch_add(call.body.len() as u64, Ordering::Relaxed);
        self.metrics
            .async_depth(&call.function, queue.queued.load(Ordering::Relaxed));
        let wait = Duration::from_millis(call.not_before_ms.saturating_sub(now_ms()));
        if wait.is_zero() {
            queue.push(seq, call);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                queue.push(seq, call);
            });
        }
    }

    /// In a cluster, claims call `key` before it runs: whether this node
    /// holds it. One another node holds is dropped here; one that cannot
    /// be claimed now (etcd out of reach) is queued again a little later.
    async fn claim(&self, key: &str, queue: &Arc<Queue>, seq: &Stored, call: &Call) -> bool {
        use crate::cluster::calls::Claimed;
        let claimed = match self.cluster.get() {
            Some(cluster) => cluster.claim_call(key).await,
            None => Ok(Claimed::Elsewhere),
        };
        match claimed {
            Ok(Claimed::Held) => true,
            Ok(Claimed::Elsewhere) => {
                self.calls
                    .taken
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(key);
                let left = queue.done(call);
                self.metrics.async_depth(&call.function, left);
                false
            }
            Err(e) => {
                tracing::warn!(function = %call.function, call_id = %call.id, error = %e, "an asynchronous call cannot be claimed now; it is tried again in a second");
                let (queue, seq, call) = (queue.clone(), seq.clone(), call.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    queue.push(seq, call);
                });
                false
            }
        }
    }

    /// Whether this node is `function`'s home in `cluster`.
    fn is_home(&self, cluster: &crate::cluster::Cluster, function: &str) -> bool {
        cluster
            .rank(function)
            .first()
            .is_some_and(|home| home.name == cluster.node())
    }

    /// The queue of `function`, and its dispatcher the first time.
    fn queue(self: &Arc<Self>, function: &str) -> Arc<Queue> {
        if let Some(queue) = self.calls.queues.get(function) {
            return queue.clone();
        }
        let mut made = false;
        let queue = self
            .calls
            .queues
            .entry(function.to_owned())
            .or_insert_with(|| {
                made = true;
                Arc::default()
            })
            .clone();
        if made {
            tokio::spawn(dispatch(self.clone(), function.to_owned(), queue.clone()));
        }
        queue
    }

    /// How many of `function`'s calls may run at once.
    fn slots(&self, function: &str) -> usize {
        let Ok(function) = self.function(function) else {
            return 1;
        };
        let scaling = function.stored.spec.scaling();
        let capacity = scaling.max_instances.saturating_mul(scaling.concurrency);
        ((capacity as f64 * self.calls.config.share).floor() as usize).max(1)
    }

    /// Takes up the calls a previous server accepted and did not finish.
    pub(crate) fn resume_calls(self: &Arc<Self>) {
        let stored = match self.registry.calls() {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = %e, "reading the asynchronous calls");
                return;
            }
        };
        let last = stored.last().map_or(0, |(seq, _)| *seq);
        self.calls.next.fetch_max(last + 1, Ordering::Relaxed);
        let mut resumed = 0usize;
        for (n, json) in stored {
            let call: Call = match serde_json::from_slice(&json) {
                Ok(call) => call,
                Err(e) => {
                    tracing::error!(seq = n, error = %e, "an asynchronous call is unreadable; it is dropped");
                    if let Err(e) = self.registry.remove_call(n) {
                        tracing::error!(error = %e, "removing an unreadable asynchronous call");
                    }
                    continue;
                }
            };
            let seq = Stored::Local(n);
            resumed += 1;
            if call.result.is_some() {
                tokio::spawn(deliver(self.clone(), seq, call, None));
                continue;
            }
            self.take_up(seq, call);
        }
        if resumed > 0 {
            tracing::info!(
                calls = resumed,
                "taking up the asynchronous calls accepted before"
            );
        }
    }
}

impl App {
    /// In a cluster: takes up the calls this node is home for, as etcd
    /// shows them stored (a watch) and as a sweep finds them held by no
    /// node (their node died, their home moved, the watch broke).
    pub(crate) async fn follow_calls(self: Arc<Self>) {
        use crate::cluster::calls::SWEEP_EVERY;
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        let (found, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let watching = {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = cluster.watch_calls(&found).await {
                        tracing::debug!(error = %e, "the calls' watch broke; watching again");
                    }
                    if found.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.calls.stopping.load(Ordering::Acquire) {
            tokio::select! {
                next = seen.recv() => match next {
                    Some((key, json)) => self.take_up_stored(&cluster, key, &json),
                    None => break,
                },
                _ = sweep.tick() => self.sweep_calls(&cluster).await,
            }
        }
        watching.abort();
    }

    /// Takes up the calls this node is home for that no node holds.
    async fn sweep_calls(self: &Arc<Self>, cluster: &crate::cluster::Cluster) {
        let unclaimed = match cluster.unclaimed_calls().await {
            Ok(unclaimed) => unclaimed,
            Err(e) => {
                tracing::debug!(error = %e, "looking for asynchronous calls no node holds");
                return;
            }
        };
        for key in unclaimed {
            if !self.is_home(cluster, &key.function) || self.is_taken(&key.key) {
                continue;
            }
            match cluster.get_call(&key.key).await {
                Ok(Some(json)) => self.take_up_stored(cluster, key, &json),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "reading an asynchronous call");
                    return;
                }
            }
        }
    }

    fn is_taken(&self, key: &str) -> bool {
        self.calls
            .taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    /// Takes up call `key`, stored as `json`, if this node is its home
    /// and does not have it yet: queued to run, or, when it has run, its
    /// callback delivered.
    fn take_up_stored(
        self: &Arc<Self>,
        cluster: &crate::cluster::Cluster,
        key: crate::cluster::calls::CallKey,
        json: &[u8],
    ) {
        if !self.is_home(cluster, &key.function) || self.is_taken(&key.key) {
            return;
        }
        let call: Call = match serde_json::from_slice(json) {
            Ok(call) => call,
            Err(e) => {
                tracing::error!(key = %key.key, error = %e, "an asynchronous call in etcd is unreadable; it is dropped");
                let (cluster, key) = (self.cluster.get().cloned(), key.key);
                tokio::spawn(async move {
                    if let Some(cluster) = cluster {
                        let _ = cluster.forget_call(&key).await;
                    }
                });
                return;
            }
        };
        let seq = Stored::Cluster(key.key.clone());
        if call.result.is_none() {
            self.take_up(seq, call);
            return;
        }
        // Run by a node that died before its callback was delivered.
        self.calls
            .taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.key.clone());
        let app = self.clone();
        tokio::spawn(async move {
            let held = match app.cluster.get() {
                Some(cluster) => cluster.claim_call(&key.key).await,
                None => return,
            };
            if matches!(held, Ok(crate::cluster::calls::Claimed::Held)) {
                deliver(app, seq, call, None).await;
            } else {
                app.calls
                    .taken
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key.key);
            }
        });
    }
}

/// Runs `function`'s calls in order, no more at once than its slots.
async fn dispatch(app: Arc<App>, function: String, queue: Arc<Queue>) {
    loop {
        if !app.calls.stopping.load(Ordering::Acquire)
            && queue.running.load(Ordering::Acquire) < app.slots(&function)
            && let Some((seq, call)) = queue.pop()
        {
            queue.running.fetch_add(1, Ordering::AcqRel);
            app.calls.running.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(run(app.clone(), queue.clone(), seq, call));
            continue;
        }
        queue.wake.notified().await;
    }
}

impl App {
    /// At shutdown: starts no more calls and waits for the running ones
    /// to end (their results stored, so that a restart does not run them
    /// again). The waiting ones stay stored for the next start.
    pub(crate) async fn stop_calls(&self) {
        self.calls.stopping.store(true, Ordering::Release);
        loop {
            // Registered before the count is read, so that no wake-up
            // falls in between.
            let idle = self.calls.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.calls.running.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Runs one call, then schedules its retry or delivers its callback.
async fn run(app: Arc<App>, queue: Arc<Queue>, seq: Stored, mut call: Call) {
    if let Stored::Cluster(key) = &seq
        && !app.claim(key, &queue, &seq, &call).await
    {
        queue.running.fetch_sub(1, Ordering::AcqRel);
        queue.wake.notify_one();
        drop(Running(app.clone()));
        return;
    }
    let started = Instant::now();
    call.attempts += 1;
    let response = invoke(&app, &call).await;
    let seconds = started.elapsed().as_secs_f64();
    // Counted as running until its outcome is stored.
    let running = Running(app.clone());
    queue.running.fetch_sub(1, Ordering::AcqRel);
    queue.wake.notify_one();
    let policy = app
        .function(&call.function)
        .ok()
        .and_then(|f| RetryPolicy::parse(&f.stored.spec.annotations).ok())
        .unwrap_or(RetryPolicy {
            attempts: 1,
            codes: Vec::new(),
            min_wait: Duration::ZERO,
            max_wait: Duration::ZERO,
        });
    if call.attempts < policy.attempts && policy.codes.contains(&response.status) {
        let wait = policy.backoff(call.attempts);
        call.not_before_ms =
            now_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        tracing::info!(function = %call.function, call_id = %call.id, status = response.status, attempt = call.attempts, wait_ms = wait.as_millis() as u64, "asynchronous call failed; it runs again");
        app.metrics.async_retried(&call.function);
        if let Err(e) = app.store_call(&seq, &call).await {
            tracing::error!(error = %e, "storing an asynchronous call's retry");
        }
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            queue.push(seq, call);
        });
        drop(running);
        return;
    }
    let outcome = if (200..300).contains(&response.status) {
        "succeeded"
    } else {
        "failed"
    };
    app.metrics.async_finished(&call.function, outcome);
    let left = queue.done(&call);
    app.metrics.async_depth(&call.function, left);
    tracing::debug!(function = %call.function, call_id = %call.id, status = response.status, attempts = call.attempts, "asynchronous call done");
    call.result = Some(CallResult {
        seconds,
        ..response
    });
    if call.callback.is_none() {
        app.forget_call(&seq).await;
        return;
    }
    if matches!(seq, Stored::Cluster(_))
        && let Some(result) = &mut call.result
    {
        // Kept in etcd, within its request limit.
        result
            .body
            .truncate(crate::cluster::calls::CLUSTER_CALL_BYTES as usize);
    }
    if let Err(e) = app.store_call(&seq, &call).await {
        tracing::error!(error = %e, "storing an asynchronous call's result");
    }
    // A shutdown waits for the callback's first try (a restart would send
    // a delivered one again), not for its repeats.
    deliver(app, seq, call, Some(running)).await;
}

/// A call between its start and its stored outcome, for [`App::stop_calls`].
struct Running(Arc<App>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.calls.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.calls.idle.notify_waiters();
        }
    }
}

/// Invokes the function as a synchronous request would; the response
/// whole (cut at [`MAX_RESULT_BYTES`]).
async fn invoke(app: &Arc<App>, call: &Call) -> CallResult {
    let failed = |status: StatusCode, text: String| CallResult {
        status: status.as_u16(),
        headers: vec![Header {
            name: "content-type".into(),
            value: b"text/plain; charset=utf-8".to_vec(),
        }],
        body: text.into_bytes(),
        seconds: 0.0,
    };
    let uri = match &call.query {
        Some(query) => format!("/function/{}{}?{query}", call.function, call.rest),
        None => format!("/function/{}{}", call.function, call.rest),
    };
    let mut builder = Request::builder()
        .method(Method::from_bytes(call.method.as_bytes()).unwrap_or(Method::POST))
        .uri(uri);
    for header in &call.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(&header.value),
        ) {
            builder = builder.header(name, value);
        }
    }
    let req = match builder.body(full_body(call.body.clone())) {
        Ok(req) => req,
        Err(e) => {
            return failed(
                StatusCode::BAD_REQUEST,
                format!("the stored call is invalid: {e}\n"),
            );
        }
    };
    let response = match app
        .invoke(&call.function, &call.rest, req, &Client::new(call.remote))
        .await
    {
        Ok(response) => response,
        Err(e) => crate::rescue::rescue(&e),
    };
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    crate::server::strip_hop_by_hop(&mut headers);
    headers.remove(http::header::CONTENT_LENGTH);
    match wisp_runner::body::collect(body, MAX_RESULT_BYTES).await {
        Ok(body) => CallResult {
            status: parts.status.as_u16(),
            headers: headers_of(&headers),
            body: body.to_vec(),
            seconds: 0.0,
        },
        Err(e) => failed(
            StatusCode::BAD_GATEWAY,
            format!("reading the function's response: {e}\n"),
        ),
    }
}

/// POSTs a finished call's result to its callback, repeating with
/// back-off while the receiver cannot take it, then forgets the call.
async fn deliver(app: Arc<App>, seq: Stored, call: Call, running: Option<Running>) {
    let mut running = running;
    let (Some(url), Some(result)) = (&call.callback, &call.result) else {
        app.forget_call(&seq).await;
        return;
    };
    let mut wait = CALLBACK_FIRST_WAIT;
    let mut outcome = "failed";
    let client = match app.calls.callback_client() {
        Ok(client) => client,
        Err(why) => {
            tracing::error!(function = %call.function, call_id = %call.id, error = %why, "an asynchronous call's callback cannot be sent");
            app.metrics.async_callback(&call.function, outcome);
            app.forget_call(&seq).await;
            return;
        }
    };
    for attempt in 1..=CALLBACK_ATTEMPTS {
        let mut request = client.post(url.as_str());
        for header in &result.headers {
            request = request.header(header.name.as_str(), header.value.as_slice());
        }
        let sent = request
            .header("x-function-status", result.status.to_string())
            .header("x-function-name", call.function.as_str())
            .header("x-call-id", call.id.as_str())
            .header("x-duration-seconds", format!("{:.6}", result.seconds))
            .body(result.body.clone())
            .send()
            .await;
        let (done, why) = match sent {
            Ok(answer) if answer.status().is_success() => {
                outcome = "delivered";
                (true, String::new())
            }
            // The receiver refuses it: sending it again would not help.
            Ok(answer)
                if answer.status().is_client_error()
                    && !matches!(answer.status().as_u16(), 408 | 429) =>
            {
                (true, format!("the receiver answered {}", answer.status()))
            }
            Ok(answer) => (false, format!("the receiver answered {}", answer.status())),
            Err(e) => (false, wisp_runner::image::pull::error_chain(&e)),
        };
        if !why.is_empty() {
            tracing::warn!(function = %call.function, call_id = %call.id, attempt, error = %why, "an asynchronous call's callback failed");
        }
        if done {
            app.metrics.async_callback(&call.function, outcome);
            app.forget_call(&seq).await;
            return;
        }
        drop(running.take());
        if attempt < CALLBACK_ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    app.metrics.async_callback(&call.function, outcome);
    app.forget_call(&seq).await;
    drop(running);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_annotations_parse_and_back_off() {
        let annotations = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (format!("com.openfaas.retry.{k}"), (*v).to_owned()))
                .collect()
        };
        let none = RetryPolicy::parse(&annotations(&[])).unwrap();
        assert_eq!(none.attempts, 1);
        let policy = RetryPolicy::parse(&annotations(&[
            ("attempts", "4"),
            ("codes", "429, 503"),
            ("min_wait", "100ms"),
            ("max_wait", "250ms"),
        ]))
        .unwrap();
        assert_eq!(
            (policy.attempts, policy.codes.as_slice()),
            (4, &[429, 503][..])
        );
        let waits: Vec<u128> = (1..=4).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 250, 250]);
        for bad in [
            ("attempts", "0"),
            ("attempts", "x"),
            ("codes", "5xx"),
            ("min_wait", "soon"),
        ] {
            let err = RetryPolicy::parse(&annotations(&[bad])).unwrap_err();
            assert!(err.contains(bad.0), "{err}");
        }
    }

    #[test]
    fn callbacks_to_this_host_are_refused_unless_allowed() {
        let own = vec!["192.0.2.7".parse().unwrap()];
        for ip in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "192.0.2.7",
            "224.0.0.1",
        ] {
            assert!(forbidden(ip.parse().unwrap(), &own), "{ip}");
        }
        for ip in ["10.1.2.3", "192.0.2.8", "2001:db8::1"] {
            assert!(!forbidden(ip.parse().unwrap(), &own), "{ip}");
        }
        let calls = Calls::new(AsyncConfig::default());
        assert!(calls.callback_client().is_ok());
        for url in [
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://[::1]/",
            "ftp://example.com/",
            "not a url",
        ] {
            assert!(calls.check_callback(url).is_err(), "{url}");
        }
        assert!(calls.check_callback("https://example.com/hook").is_ok());
        let allowed = Calls::new(AsyncConfig {
            allow_local_callbacks: true,
            ..AsyncConfig::default()
        });
        assert!(allowed.check_callback("http://127.0.0.1:9/x").is_ok());
    }

    #[tokio::test]
    async fn names_are_resolved_to_reachable_addresses_only() {
        use reqwest::dns::Resolve as _;
        let guarded = GuardedResolver {
            allow_local: false,
            own: Arc::new(own_addresses()),
        };
        // /etc/hosts: no network needed. A name that resolves to loopback
        // (DNS rebinding) is refused at every delivery.
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let refused = guarded.resolve(name).await.err().unwrap();
        assert!(
            refused.to_string().contains("--allow-local-callbacks"),
            "{refused}"
        );
        let open = GuardedResolver {
            allow_local: true,
            own: Arc::new(Vec::new()),
        };
        let found: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()) && !found.is_empty());
    }

    #[test]
    fn call_ids_are_the_callers_or_new_uuids() {
        let mut headers = HeaderMap::new();
        let id = call_id(&headers);
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
        assert_ne!(call_id(&headers), id);
        headers.insert("x-call-id", HeaderValue::from_static("mine-1"));
        assert_eq!(call_id(&headers), "mine-1");
        headers.insert("x-call-id", HeaderValue::from_static("has space"));
        assert_ne!(call_id(&headers), "has space");
    }
}
