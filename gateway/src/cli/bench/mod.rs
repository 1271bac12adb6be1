//! `wisp bench`: the load and cold-start benchmark, run against a gateway.
//!
//! - `warm`: a closed loop, `--concurrency` workers each sending its next
//!   request when the last one answered, for `--duration` or `--requests`.
//! - `rate`: an open loop at `--rate` requests per second, at most
//!   `--concurrency` in flight (as wrk2 and k6's arrival-rate executors
//!   do); each latency is measured from the request's due time
//!   ([`schedule`]), so a request sent late because all were in flight
//!   counts its wait.
//! - `cold`: every measured request finds the function at zero instances:
//!   the bench deploys `--requests` copies of it (same artifact and
//!   settings, named `<name>-bench-<n>`), calls each once, and removes them;
//!   `--concurrency` workers share the copies, so the throughput is the
//!   rate of cold starts the server sustains.
//! - `burst`: `--concurrency` concurrent first requests to a fresh copy.
//! - `curve`: the load-latency curve, rate steps scaled to the closed-loop
//!   peak ([`curve`]).
//!
//! With `--url` the same generator loads any HTTP server instead of a
//! function (`warm`, `rate` and `curve`): an anchor measured by the bench
//! that measures wisp, rather than by another tool with its own biases.
//!
//! The requests run on `--threads` single-threaded event loops, each with
//! its own connections ([`loops`]); `rate` waits for each due time with a
//! [`schedule::Pacer`] (`--pacing`). Latencies go into an HDR histogram;
//! cold starts also record the phases the server reports in
//! `Server-Timing`.

pub mod curve;
mod loops;
pub use loops::default_threads;
pub mod plot;
pub mod schedule;
pub mod stats;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::client::{Client, ClientError};
use crate::api::{FunctionDeployment, FunctionResources, FunctionStatus, ScalingFields};
use stats::{Recorder, Summary};

/// How to load the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Warm,
    Rate,
    Cold,
    Burst,
    Curve,
}

/// How the open loop waits for each request's due time (measured in
/// BENCHMARKS.md, "How the open loop paces its requests").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pacing {
    /// A `timerfd` per event loop that fires at the first due time and
    /// sends with it every request due within the next [`GROUP_WINDOW`];
    /// those sent early count their latency from when they went. Costs
    /// the bench about what `tick` does.
    Group,
    /// The same timer, each request at its due time to the microsecond: a
    /// timer interrupt per request, which costs the bench two to three
    /// times the CPU of `group` (a host's timer is dear in a VM).
    Exact,
    /// tokio's timer: requests due within a millisecond leave together at
    /// the next 1-ms tick, and each latency counts that wait from its due
    /// time, as wrk2's does (p50 1.2–1.4 ms on `ping` at 1,000–10,000
    /// req/s, against 0.15 with `exact`).
    Tick,
}

/// How far ahead of its due time `--pacing group` sends a request with an
/// earlier one. At 25k req/s against a minimal hyper proxy, the bench's CPU
/// per request was 34.5 µs with no window, 14.8 with 250 µs, 12.3 with
/// 500 µs and 10.3 with 1 ms, against 10.4 for tokio's timer; p50 0.20,
/// 0.19, 0.24, 0.44 and 1.6 ms.
pub const GROUP_WINDOW: Duration = Duration::from_micros(500);

/// One run's settings.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The function; with `direct`, the URL given with `--url` (a label).
    pub function: String,
    /// The requests go to `path` as it is, on any HTTP server (`--url`),
    /// not to a function below `/function/`; nothing is asked of a gateway.
    pub direct: bool,
    pub mode: Mode,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: usize,
    /// Event loops the requests run on ([`loops`]).
    pub threads: usize,
    /// How `rate` waits for each request's due time ([`schedule::Pacer`]).
    pub pacing: Pacing,
    pub rate: Option<f64>,
    pub path: String,
    pub method: Method,
    pub body: Bytes,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

/// What a run found, as `--json` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub function: String,
    pub mode: Mode,
    pub requests: u64,
    pub errors: u64,
    /// Answers by status code (`"0"` = no answer: a transport error).
    pub statuses: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub concurrency: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// How `rate` paced its requests (it moves every latency it reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pacing: Option<Pacing>,
    pub latency: Summary,
    pub cold_starts: u64,
    /// Cold-start phases from `Server-Timing`, by name.
    pub phases: BTreeMap<String, Summary>,
}

impl BenchConfig {
    /// Checks the settings before anything is sent.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            bail!("--duration must be longer than zero");
        }
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        if self.mode == Mode::Rate && !self.rate.is_some_and(|r| r.is_finite() && r > 0.0) {
            bail!("--mode rate needs --rate R (requests per second, more than zero)");
        }
        if !self.path.starts_with('/') {
            bail!("--path must start with '/'");
        }
        if self.direct && matches!(self.mode, Mode::Cold | Mode::Burst) {
            bail!("--url loads a server that is already up: --mode warm, rate or curve");
        }
        if let Some(plot) = &self.plot
            && plot.extension().and_then(|e| e.to_str()) != Some("svg")
        {
            bail!("--plot {} must name an .svg file", plot.display());
        }
        Ok(())
    }
}

/// Runs the benchmark and returns its report (also written to `--json`).
pub async fn run(client: &Client, config: &BenchConfig) -> anyhow::Result<Report> {
    config.validate()?;
    let status = if config.direct {
        None
    } else {
        match client.function(&config.function).await {
            Ok(status) => Some(status),
            Err(ClientError::Status { status, .. }) if status == http::StatusCode::NOT_FOUND => {
                bail!("function {} is not deployed", config.function)
            }
            Err(e) => return Err(e.into()),
        }
    };
    let loops = loops::Loops::start(config.threads)?;
    let bench = Bench {
        client: client.clone(),
        loop_clients: (0..loops.len())
            .map(|_| client.with_own_connections())
            .collect(),
        loops: Arc::new(loops),
        loop_index: 0,
        config: Arc::new(config.clone()),
        recorder: Arc::new(Mutex::new(Recorder::default())),
        progress: progress_bar(config),
    };
    let started = Instant::now();
    let function = || {
        status
            .as_ref()
            .context("--mode cold and burst need a function, not --url")
    };
    match config.mode {
        Mode::Warm => warm(&bench).await?,
        Mode::Rate => rate(&bench).await?,
        Mode::Cold => cold(&bench, function()?).await?,
        Mode::Burst => burst(&bench, function()?).await?,
        Mode::Curve => bail!("--mode curve runs several benches: see curve::run"),
    }
    bench.progress.finish_and_clear();
    let recorder = bench
        .recorder
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Measured requests only: not cold mode's deploying and removing of
    // copies, nor the warm-up.
    let elapsed = recorder
        .window
        .map_or_else(|| started.elapsed(), |(first, last)| last - first);
    let requests = recorder.latency.count();
    let report = Report {
        function: config.function.clone(),
        mode: config.mode,
        requests,
        errors: recorder.errors(),
        statuses: recorder
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect(),
        elapsed_s: elapsed.as_secs_f64(),
        throughput_rps: requests as f64 / elapsed.as_secs_f64().max(1e-9),
        concurrency: config.concurrency,
        rate: config.rate.filter(|_| config.mode == Mode::Rate),
        pacing: (config.mode == Mode::Rate).then_some(config.pacing),
        latency: recorder.latency.summary(),
        cold_starts: recorder.cold_starts,
        phases: recorder
            .phases
            .iter()
            .map(|(name, l)| (name.clone(), l.summary()))
            .collect(),
    };
    if let Some(path) = &config.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &config.plot {
        plot::draw(path, &report, &recorder.latency)?;
    }
    Ok(report)
}

fn progress_bar(config: &BenchConfig) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match (config.requests, config.duration) {
        (Some(n), _) => indicatif::ProgressBar::new(n),
        (None, Some(d)) => indicatif::ProgressBar::new(d.as_secs().max(1)),
        _ => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_message(format!("{:?} {}", config.mode, config.function).to_lowercase());
    bar
}

/// What every sending task shares; cheap to clone into each.
#[derive(Clone)]
struct Bench {
    /// On a loop, that loop's client; outside, the caller's.
    client: Client,
    loops: Arc<loops::Loops>,
    /// One client, with its own connections, per loop.
    loop_clients: Arc<[Client]>,
    /// The loop this clone runs on (0 outside them).
    loop_index: usize,
    config: Arc<BenchConfig>,
    recorder: Arc<Mutex<Recorder>>,
    progress: indicatif::ProgressBar,
}

impl Bench {
    /// One request to `function`; records its latency from `since` (its
    /// due time in `rate`).
    async fn send(&self, function: &str, since: Instant) {
        send(&self.client, &self.config, function, since, &self.recorder).await;
    }

    /// Runs `n` copies of `task` at once, dealt round the loops, each with
    /// its own clone of the bench (and its loop's client), and returns their
    /// results once all are done.
    async fn in_parallel<F, Fut, T>(&self, n: u64, task: F) -> anyhow::Result<Vec<T>>
    where
        F: Fn(Bench) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let i = usize::try_from(i).unwrap_or(usize::MAX) % self.loops.len();
                let on_loop = Bench {
                    client: self.loop_clients[i].clone(),
                    loop_index: i,
                    ..self.clone()
                };
                self.loops.spawn(i, task(on_loop))
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(
                task.await
                    .map_err(|_| anyhow::anyhow!("a worker of the bench failed"))?,
            );
        }
        Ok(results)
    }
}

/// One request; records its latency from `since` (its due time in `rate`).
async fn send(
    client: &Client,
    config: &BenchConfig,
    function: &str,
    since: Instant,
    recorder: &Mutex<Recorder>,
) {
    let path = if config.direct {
        config.path.clone()
    } else {
        format!("/function/{function}{}", config.path)
    };
    let answer = client
        .call(
            config.method.clone(),
            &path,
            HeaderMap::new(),
            config.body.clone(),
        )
        .await;
    let done = Instant::now();
    let latency = done.duration_since(since);
    let mut recorder = recorder
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    recorder.span(since, done);
    match answer {
        Ok(answer) => {
            let timing = answer
                .headers
                .get("server-timing")
                .and_then(|v| v.to_str().ok());
            recorder.record(answer.status.as_u16(), latency, timing);
        }
        Err(_) => recorder.record(0, latency, None),
    }
}

/// One unmeasured request, so that no instance starts while measuring.
async fn warm_up(bench: &Bench) {
    let scratch = Mutex::new(Recorder::default());
    let config = &bench.config;
    send(
        &bench.client,
        config,
        &config.function,
        Instant::now(),
        &scratch,
    )
    .await;
}

/// Opens the connections the workers will use before the clock starts
/// (as wrk does): `--concurrency` requests at once to the gateway's
/// `/healthz`, which no function sees (with `--url`, to the path measured).
/// Otherwise each worker's first
/// request waits for a TCP handshake and the gateway's accept, all of them
/// in the same milliseconds, and the open loop counts that ramp against
/// the server at the rate measured.
async fn open_connections(bench: &Bench) -> anyhow::Result<()> {
    let path: Arc<str> = if bench.config.direct {
        bench.config.path.as_str().into()
    } else {
        "/healthz".into()
    };
    bench
        .in_parallel(bench.config.concurrency as u64, |bench| {
            let path = path.clone();
            async move {
                // A failure here is the measured requests' to report.
                let _ = bench
                    .client
                    .call(Method::GET, &path, HeaderMap::new(), Bytes::new())
                    .await;
            }
        })
        .await?;
    Ok(())
}

async fn warm(bench: &Bench) -> anyhow::Result<()> {
    warm_up(bench).await;
    open_connections(bench).await?;
    let config = &bench.config;
    let end = config.duration.map(|d| Instant::now() + d).or(config
        .requests
        .is_none()
        .then(|| Instant::now() + Duration::from_secs(10)));
    let left = Arc::new(AtomicU64::new(config.requests.unwrap_or(u64::MAX)));
    let ticker = tick_seconds(bench);
    bench
        .in_parallel(config.concurrency as u64, |bench| {
            let left = left.clone();
            async move {
                loop {
                    if end.is_some_and(|e| Instant::now() >= e) {
                        break;
                    }
                    let took = left.fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
                    if took.is_err() {
                        break;
                    }
                    bench.send(&bench.config.function, Instant::now()).await;
                    if bench.config.requests.is_some() {
                        bench.progress.inc(1);
                    }
                }
            }
        })
        .await?;
    ticker.abort();
    Ok(())
}

/// Advances a duration-based progress bar once a second.
fn tick_seconds(bench: &Bench) -> tokio::task::JoinHandle<()> {
    let progress = bench.progress.clone();
    let by_time = bench.config.requests.is_none();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if by_time {
                progress.inc(1);
            } else {
                progress.tick();
            }
        }
    })
}

async fn rate(bench: &Bench) -> anyhow::Result<()> {
    warm_up(bench).await;
    open_connections(bench).await?;
    let config = &bench.config;
    let start = Instant::now();
    let schedule = schedule::Schedule::new(start, config.rate.unwrap_or(1.0));
    let end = match (config.requests, config.duration) {
        (Some(_), None) => start + Duration::from_secs(24 * 3600),
        (_, duration) => start + duration.unwrap_or(Duration::from_secs(10)),
    };
    let ticker = tick_seconds(bench);
    let next = Arc::new(AtomicU64::new(0));
    // Unless paced by tokio's timer, one timer per loop, started on it.
    let window = match config.pacing {
        Pacing::Tick => None,
        Pacing::Exact => Some(Duration::ZERO),
        Pacing::Group => Some(GROUP_WINDOW),
    };
    let timers: Arc<[Option<Arc<schedule::LoopTimer>>]> = if let Some(window) = window {
        let started = (0..bench.loops.len())
            .map(|i| {
                bench
                    .loops
                    .spawn(i, async move { schedule::LoopTimer::start(window) })
            })
            .collect::<Vec<_>>();
        let mut timers = Vec::with_capacity(started.len());
        for timer in started {
            let timer = timer
                .await
                .map_err(|_| anyhow::anyhow!("a loop of the bench failed"))?
                .context("the bench's loop timer")?;
            timers.push(Some(timer));
        }
        timers.into()
    } else {
        vec![None; bench.loops.len()].into()
    };
    let workers = bench
        .in_parallel(config.concurrency as u64, |bench| {
            let next = next.clone();
            let timer = timers.get(bench.loop_index).cloned().flatten();
            async move {
                let pacer = match timer {
                    None => schedule::Pacer::Coarse,
                    Some(timer) => schedule::Pacer::Precise(timer),
                };
                let limit = bench.config.requests;
                schedule::run_worker(schedule, end, limit, &next, &pacer, |due| {
                    let bench = bench.clone();
                    async move {
                        bench.send(&bench.config.function, due).await;
                        if bench.config.requests.is_some() {
                            bench.progress.inc(1);
                        }
                    }
                })
                .await
            }
        })
        .await?;
    ticker.abort();
    for worker in workers {
        worker.context("pacing the open loop (the loop's timerfd)")?;
    }
    Ok(())
}

/// A deployment identical to `status`'s function, under `name`, at zero
/// instances.
fn copy_of(status: &FunctionStatus, name: String) -> FunctionDeployment {
    FunctionDeployment {
        service: name,
        image: status.image.clone(),
        env_vars: Some(status.env_vars.clone()),
        limits: Some(FunctionResources {
            memory: status.limits.memory.clone(),
            cpu: status.limits.cpu.clone(),
            ..FunctionResources::default()
        }),
        timeout: Some(status.timeout.clone()),
        max_body_size: Some(status.max_body_size.to_string()),
        allow_outbound: Some(status.allow_outbound.clone()),
        protocol: status.protocol.map(|p| p.as_str().to_owned()),
        port: status.port,
        command: (!status.command.is_empty()).then(|| status.command.clone()),
        scaling: ScalingFields {
            min_instances: Some(0),
            max_instances: Some(status.scaling.max_instances.try_into().unwrap_or(u32::MAX)),
            concurrency: Some(status.scaling.concurrency.try_into().unwrap_or(u32::MAX)),
            ..ScalingFields::default()
        },
        instance_reuse: status.instance_reuse,
        ..FunctionDeployment::default()
    }
}

/// Deploys `count` copies named `<function>-bench-<i>`; returns their names.
async fn deploy_copies(
    client: &Client,
    status: &FunctionStatus,
    count: u64,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("{}-bench-{i}", status.name);
        client
            .deploy(&copy_of(status, name.clone()))
            .await
            .with_context(|| format!("deploying the copy {name}"))?;
        names.push(name);
    }
    Ok(names)
}

async fn remove_copies(client: &Client, names: &[String]) {
    for name in names {
        let _ = client.delete(name).await;
    }
}

async fn cold(bench: &Bench, status: &FunctionStatus) -> anyhow::Result<()> {
    let client = &bench.client;
    let count = bench.config.requests.unwrap_or(20);
    let names = deploy_copies(client, status, count).await?;
    // `--concurrency` workers take the next unused copy until none is left:
    // throughput is then the rate of cold starts the server sustains.
    let queue = Arc::new(Mutex::new(names.clone().into_iter()));
    let removals = bench
        .in_parallel(bench.config.concurrency as u64, |bench| {
            let queue = queue.clone();
            async move {
                let mut removals = Vec::new();
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .next();
                    let Some(name) = next else {
                        break;
                    };
                    bench.send(&name, Instant::now()).await;
                    bench.progress.inc(1);
                    // The copy has served its one request: removed in the
                    // background, as an idle instance would be reaped.
                    let client = bench.client.clone();
                    removals.push(tokio::spawn(async move { client.delete(&name).await }));
                }
                removals
            }
        })
        .await?;
    for removal in removals.into_iter().flatten() {
        let _ = removal.await;
    }
    remove_copies(client, &names).await;
    Ok(())
}

async fn burst(bench: &Bench, status: &FunctionStatus) -> anyhow::Result<()> {
    let names = deploy_copies(&bench.client, status, 1).await?;
    let name: Arc<str> = names.first().map_or("", String::as_str).into();
    let n = bench
        .config
        .requests
        .unwrap_or(bench.config.concurrency as u64);
    let barrier = Arc::new(tokio::sync::Barrier::new(usize::try_from(n).unwrap_or(1)));
    bench
        .in_parallel(n, |bench| {
            let (barrier, name) = (barrier.clone(), name.clone());
            async move {
                barrier.wait().await;
                bench.send(&name, Instant::now()).await;
                bench.progress.inc(1);
            }
        })
        .await?;
    remove_copies(&bench.client, &names).await;
    Ok(())
}

/// The report for people.
pub fn render(report: &Report) -> String {
    let l = &report.latency;
    let mut out = format!(
        "{} {:?}: {} requests in {:.2} s ({:.1} req/s), {} errors\n",
        report.function,
        report.mode,
        report.requests,
        report.elapsed_s,
        report.throughput_rps,
        report.errors
    )
    .to_lowercase();
    let statuses: Vec<String> = report
        .statuses
        .iter()
        .map(|(s, n)| format!("{}: {n}", if s == "0" { "no answer" } else { s }))
        .collect();
    out.push_str(&format!("statuses: {}\n", statuses.join(", ")));
    out.push_str(&format!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    ));
    if report.cold_starts > 0 {
        out.push_str(&format!(
            "cold starts: {} (server-reported phases, ms)\n",
            report.cold_starts
        ));
        for (name, s) in &report.phases {
            out.push_str(&format!(
                "  {name:<8} p50 {:.3}  p99 {:.3}  max {:.3}\n",
                s.p50_ms, s.p99_ms, s.max_ms
            ));
        }
    }
    out
}
