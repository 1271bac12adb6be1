//! Prometheus metrics, served at `/metrics` in the text format. The names
//! OpenFaaS uses are kept so that its dashboards work
//! (`gateway_function_invocation_total`, `gateway_functions_seconds`,
//! `gateway_service_count`); wisp adds cold-start, instance, queue and
//! in-flight series. The gauges are read from each function's counters
//! at scrape time (`LiveGauges`) and rare series are made by their first
//! event, so that an idle function costs little (see docs/architecture.md,
//! "Logs and metrics").
//! Labels come only from deployed function names, HTTP status codes and
//! closed enums: a request for an unknown function is not counted under
//! its (client-chosen) name.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, Metric, MetricFamily, MetricType};

use wisp_runner::pool::{ColdStart, PoolEvents, StopReason};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets, in seconds: 100 µs to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Every metric family wisp declares. A unit test checks that it matches
/// what is registered; the end-to-end suite checks that each one moves.
pub const DECLARED: &[&str] = &[
    "gateway_function_invocation_total",
    "gateway_functions_seconds",
    "gateway_service_count",
    "wisp_requests_in_flight",
    "wisp_cold_start_seconds",
    "wisp_cold_start_phase_seconds",
    "wisp_instances",
    "wisp_queue_depth",
    "wisp_instance_stops_total",
    "wisp_http_connections",
    "wisp_http_connections_refused_total",
    "wisp_http_connections_closed_total",
    "wisp_log_lines_dropped_total",
    "wisp_image_pull_seconds",
    "wisp_image_pull_bytes_total",
    "wisp_async_queue_depth",
    "wisp_async_calls_total",
    "wisp_async_retries_total",
    "wisp_async_callbacks_total",
];

/// Pull durations, in seconds: 10 ms to 30 min.
const PULL_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

pub struct Metrics {
    registry: Registry,
    invocations: IntCounterVec,
    duration: HistogramVec,
    cold_start: HistogramVec,
    cold_start_phases: HistogramVec,
    /// The gauges read from each function at scrape time.
    live: LiveGauges,
    stops: IntCounterVec,
    connections: ConnectionMetrics,
    log_dropped: IntCounterVec,
    pull_seconds: HistogramVec,
    pull_bytes: IntCounter,
    async_depth: IntGaugeVec,
    async_calls: IntCounterVec,
    async_retries: IntCounterVec,
    async_callbacks: IntCounterVec,
}

/// The series of client connections, kept by [`crate::connections`].
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub(crate) open: IntGauge,
    pub(crate) refused: IntCounter,
    pub(crate) closed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let invocations = IntCounterVec::new(
            Opts::new(
                "gateway_function_invocation_total",
                "Invocations of each function, by HTTP status code.",
            ),
            &["function_name", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_functions_seconds",
                "Time from receiving an invocation to the function's response headers, by status code.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["function_name", "code"],
        )?;
        let cold_start = HistogramVec::new(
            HistogramOpts::new(
                "wisp_cold_start_seconds",
                "Time to start an instance for a request that found none, by function.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["function_name", "backend"],
        )?;
        // Phases across functions: per function they would cost every
        // function five more histograms (~100 lines of `/metrics`).
        let cold_start_phases = HistogramVec::new(
            HistogramOpts::new(
                "wisp_cold_start_phase_seconds",
                "Each phase of the cold starts of a backend, over all functions.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["backend", "phase"],
        )?;
        let live = LiveGauges::new()?;
        let stops = IntCounterVec::new(
            Opts::new(
                "wisp_instance_stops_total",
                "Instances stopped, by reason: idle, crash, timeout, oom, deleted, shutdown.",
            ),
            &["function_name", "reason"],
        )?;
        let log_dropped = IntCounterVec::new(
            Opts::new(
                "wisp_log_lines_dropped_total",
                "Lines of each function's output not logged: over its rate limit, or the log writer behind.",
            ),
            &["function_name"],
        )?;
        registry.register(Box::new(log_dropped.clone()))?;
        let pull_seconds = HistogramVec::new(
            HistogramOpts::new(
                "wisp_image_pull_seconds",
                "Pulls from registries (by deploys and wisp pull), by outcome: ok, not_found, unauthorized, unreachable, too_large, invalid, storage, unsupported.",
            )
            .buckets(PULL_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let pull_bytes = IntCounter::new(
            "wisp_image_pull_bytes_total",
            "Bytes downloaded from registries (blobs the store held are not downloaded).",
        )?;
        // Every outcome from zero, so that rates work from the first pull.
        pull_seconds.with_label_values(&["ok"]);
        for failure in wisp_runner::backend::PullFailure::ALL {
            pull_seconds.with_label_values(&[failure.as_str()]);
        }
        registry.register(Box::new(pull_seconds.clone()))?;
        registry.register(Box::new(pull_bytes.clone()))?;
        let connections = ConnectionMetrics {
            open: IntGauge::new("wisp_http_connections", "Client connections open now.")?,
            refused: IntCounter::new(
                "wisp_http_connections_refused_total",
                "Client connections closed on arrival: the cap was full and none open was idle.",
            )?,
            closed: IntCounterVec::new(
                Opts::new(
                    "wisp_http_connections_closed_total",
                    "Client connections the server closed, by reason: idle, evicted (the cap was full), shutdown.",
                ),
                &["reason"],
            )?,
        };
        // Every reason from zero, so that rates work from the first close.
        for reason in crate::connections::CloseReason::ALL {
            connections.closed.with_label_values(&[reason.as_str()]);
        }
        registry.register(Box::new(connections.open.clone()))?;
        registry.register(Box::new(connections.refused.clone()))?;
        registry.register(Box::new(connections.closed.clone()))?;
        registry.register(Box::new(stops.clone()))?;
        registry.register(Box::new(invocations.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(live.clone()))?;
        registry.register(Box::new(cold_start.clone()))?;
        registry.register(Box::new(cold_start_phases.clone()))?;
        let async_depth = IntGaugeVec::new(
            Opts::new(
                "wisp_async_queue_depth",
                "Asynchronous calls of each function accepted and not yet run for good (waiting, running, or between retries).",
            ),
            &["function_name"],
        )?;
        let async_calls = IntCounterVec::new(
            Opts::new(
                "wisp_async_calls_total",
                "Asynchronous calls run for good, by outcome: succeeded (2xx), failed (any other status, after its retries).",
            ),
            &["function_name", "outcome"],
        )?;
        let async_retries = IntCounterVec::new(
            Opts::new(
                "wisp_async_retries_total",
                "Asynchronous calls run again after a status the function's retry annotations name.",
            ),
            &["function_name"],
        )?;
        let async_callbacks = IntCounterVec::new(
            Opts::new(
                "wisp_async_callbacks_total",
                "Callbacks of asynchronous calls, by outcome: delivered, failed (given up).",
            ),
            &["function_name", "outcome"],
        )?;
        registry.register(Box::new(async_depth.clone()))?;
        registry.register(Box::new(async_calls.clone()))?;
        registry.register(Box::new(async_retries.clone()))?;
        registry.register(Box::new(async_callbacks.clone()))?;
        Ok(Metrics {
            registry,
            invocations,
            duration,
            cold_start,
            cold_start_phases,
            live,
            stops,
            connections,
            log_dropped,
            pull_seconds,
            pull_bytes,
            async_depth,
            async_calls,
            async_retries,
            async_callbacks,
        })
    }

    /// The series of one deployed function, resolved once so that the
    /// request path does no label lookups in the common case.
    /// The series of one function. Those a function moves at every
    /// request (OpenFaaS's invocations and seconds for 200, the instance
    /// and queue gauges) exist from its deploy, at zero; the rare ones
    /// (stops by reason, dropped log lines, other status codes, cold
    /// starts) from their first event: each series costs the gateway
    /// ~0.5 KB and its `/metrics` a line or more, for every function.
    ///
    /// `previous` is the series of the version this deploy replaces: the
    /// status codes it answered stay known, so that [`Metrics::forget`]
    /// finds their series.
    pub fn function(&self, function: &str, previous: Option<&FunctionMetrics>) -> FunctionMetrics {
        FunctionMetrics {
            name: function.to_owned(),
            codes: previous.map(|p| p.codes.clone()).unwrap_or_default(),
            live: self.live.add(function),
            ok_count: self.invocations.with_label_values(&[function, "200"]),
            ok_seconds: self.duration.with_label_values(&[function, "200"]),
            invocations: self.invocations.clone(),
            duration: self.duration.clone(),
            stops: self.stops.clone(),
            silenced: Arc::default(),
        }
    }

    /// Records a cold start: its total and each of the backend's phases.
    pub fn cold_start(&self, function: &str, backend: &str, cold: &ColdStart) {
        self.cold_start
            .with_label_values(&[function, backend])
            .observe(cold.total.as_secs_f64());
        for (phase, took) in &cold.phases {
            self.cold_start_phases
                .with_label_values(&[backend, phase])
                .observe(took.as_secs_f64());
        }
    }

    /// Brings `wisp_log_lines_dropped_total` up to the log store's counts;
    /// the caller passes deployed functions only.
    pub fn log_lines_dropped(&self, counts: &[(String, u64)]) {
        for (function, total) in counts {
            if *total == 0 {
                continue;
            }
            let counter = self.log_dropped.with_label_values(&[function.as_str()]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Drops every series of a deleted function, counters too. (OpenFaaS
    /// keeps its counters; with functions of ever new names that grew the
    /// gateway and its `/metrics` by ~50 series per deleted function, for
    /// good. A Prometheus server keeps what it scraped.)
    ///
    /// Each series is removed by its labels: the cost does not grow with
    /// the number of functions deployed (collecting every series to find a
    /// function's took most of the gateway's CPU when copies were deleted
    /// among 1,500).
    pub fn forget(&self, function: &FunctionMetrics) {
        let name = function.name.as_str();
        let _ = self.log_dropped.remove_label_values(&[name]);
        self.live.remove(name);
        for code in std::iter::once(200).chain(function.codes_seen()) {
            let code = code.to_string();
            let _ = self.invocations.remove_label_values(&[name, &code]);
            let _ = self.duration.remove_label_values(&[name, &code]);
        }
        for backend in wisp_runner::spec::FunctionKind::BACKENDS {
            let _ = self.cold_start.remove_label_values(&[name, backend]);
        }
        for reason in StopReason::ALL {
            let _ = self.stops.remove_label_values(&[name, reason.as_str()]);
        }
        let _ = self.async_depth.remove_label_values(&[name]);
        let _ = self.async_retries.remove_label_values(&[name]);
        for outcome in ["succeeded", "failed"] {
            let _ = self.async_calls.remove_label_values(&[name, outcome]);
        }
        for outcome in ["delivered", "failed"] {
            let _ = self.async_callbacks.remove_label_values(&[name, outcome]);
        }
    }

    /// Records one pull: how long it took and how it ended, and the bytes
    /// it downloaded.
    pub fn pulled(&self, took: Duration, outcome: &str, downloaded: u64) {
        self.pull_seconds
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
        self.pull_bytes.inc_by(downloaded);
    }

    /// Sets how many asynchronous calls of `function` are not done.
    pub fn async_depth(&self, function: &str, depth: usize) {
        self.async_depth
            .with_label_values(&[function])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts an asynchronous call run for good (`succeeded`, `failed`).
    pub fn async_finished(&self, function: &str, outcome: &str) {
        self.async_calls
            .with_label_values(&[function, outcome])
            .inc();
    }

    /// Counts an asynchronous call that runs again.
    pub fn async_retried(&self, function: &str) {
        self.async_retries.with_label_values(&[function]).inc();
    }

    /// Counts a callback delivered or given up (`delivered`, `failed`).
    pub fn async_callback(&self, function: &str, outcome: &str) {
        self.async_callbacks
            .with_label_values(&[function, outcome])
            .inc();
    }

    /// The series of client connections.
    pub fn connections(&self) -> ConnectionMetrics {
        self.connections.clone()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// One function's series (see [`Metrics::function`]).
#[derive(Clone)]
pub struct FunctionMetrics {
    name: String,
    /// In flight, instances and queue: read at scrape time.
    live: Arc<Live>,
    ok_count: IntCounter,
    ok_seconds: Histogram,
    invocations: IntCounterVec,
    duration: HistogramVec,
    stops: IntCounterVec,
    /// The function was deleted and its series forgotten: what its last
    /// requests and instances report makes none again.
    silenced: Arc<std::sync::atomic::AtomicBool>,
    /// The status codes other than 200 it answered (each has series),
    /// over the function's versions.
    codes: Arc<std::sync::Mutex<Vec<u16>>>,
}

impl PoolEvents for FunctionMetrics {
    fn instances(&self, starting: usize, idle: usize, busy: usize) {
        self.live.starting.store(starting, Ordering::Relaxed);
        self.live.idle.store(idle, Ordering::Relaxed);
        self.live.busy.store(busy, Ordering::Relaxed);
    }

    fn queue_depth(&self, depth: usize) {
        self.live.queue.store(depth, Ordering::Relaxed);
    }

    fn stopped(&self, reason: StopReason) {
        if self.is_silenced() {
            return;
        }
        self.stops
            .with_label_values(&[&self.name, reason.as_str()])
            .inc();
    }
}

impl FunctionMetrics {
    /// The function is deleted: its series are forgotten (see
    /// [`Metrics::forget`]) and none is made again.
    pub fn silence(&self) {
        self.silenced
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn codes_seen(&self) -> Vec<u16> {
        self.codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_silenced(&self) -> bool {
        self.silenced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one finished invocation.
    pub fn invoked(&self, status: u16, elapsed: Duration) {
        if status == 200 {
            self.ok_count.inc();
            self.ok_seconds.observe(elapsed.as_secs_f64());
            return;
        }
        if self.is_silenced() {
            return;
        }
        {
            let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
            if !codes.contains(&status) {
                codes.push(status);
            }
        }
        let code = status.to_string();
        self.invocations
            .with_label_values(&[&self.name, &code])
            .inc();
        self.duration
            .with_label_values(&[&self.name, &code])
            .observe(elapsed.as_secs_f64());
    }

    /// Its requests in flight.
    pub fn in_flight(&self) -> usize {
        self.live.in_flight.load(Ordering::Relaxed)
    }

    /// Counts an invocation as in flight until the guard is dropped (also
    /// when the client goes away and the request is cancelled).
    pub fn in_flight_guard(&self) -> impl Drop + use<> {
        self.live.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.live.clone())
    }
}

struct InFlight(Arc<Live>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a function's pool and requests report as they change, read when
/// `/metrics` is scraped.
#[derive(Default)]
struct Live {
    in_flight: AtomicUsize,
    starting: AtomicUsize,
    idle: AtomicUsize,
    busy: AtomicUsize,
    queue: AtomicUsize,
}

/// `gateway_service_count`, `wisp_requests_in_flight`, `wisp_instances`
/// and `wisp_queue_depth`, made at each scrape from every function's
/// [`Live`] counters. As gauges of the `prometheus` crate they were six
/// series per function, ~0.5 KB of gateway memory each, kept between
/// scrapes for functions that mostly sit at zero (10,000 functions: 30 MB).
#[derive(Clone)]
struct LiveGauges {
    functions: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Arc<Live>>>>,
    descs: Arc<Vec<Desc>>,
}

const LIVE_FAMILIES: [(&str, &str, &[&str]); 4] = [
    (
        "gateway_service_count",
        "Running instances of each function.",
        &["function_name"],
    ),
    (
        "wisp_requests_in_flight",
        "Invocations of each function being served now.",
        &["function_name"],
    ),
    (
        "wisp_instances",
        "Instances of each function by state: starting, idle or busy.",
        &["function_name", "state"],
    ),
    (
        "wisp_queue_depth",
        "Requests of each function waiting for an instance.",
        &["function_name"],
    ),
];

impl LiveGauges {
    fn new() -> Result<Self, prometheus::Error> {
        let descs = LIVE_FAMILIES
            .iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LiveGauges {
            functions: Arc::default(),
            descs: Arc::new(descs),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Arc<Live>>> {
        self.functions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A function's counters; a new version's replace the old one's.
    fn add(&self, function: &str) -> Arc<Live> {
        let live = Arc::new(Live::default());
        self.lock().insert(function.to_owned(), live.clone());
        live
    }

    fn remove(&self, function: &str) {
        self.lock().remove(function);
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn gauge_metric(labels: Vec<LabelPair>, value: usize) -> Metric {
    let mut gauge = proto::Gauge::default();
    gauge.set_value(value as f64);
    let mut metric = Metric::from_label(labels);
    metric.set_gauge(gauge);
    metric
}

impl Collector for LiveGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let functions: Vec<(String, Arc<Live>)> = self
            .lock()
            .iter()
            .map(|(name, live)| (name.clone(), live.clone()))
            .collect();
        let mut families: Vec<Vec<Metric>> = vec![Vec::new(); LIVE_FAMILIES.len()];
        for (name, live) in &functions {
            let read = |a: &AtomicUsize| a.load(Ordering::Relaxed);
            let (idle, busy) = (read(&live.idle), read(&live.busy));
            let function = || label("function_name", name);
            families[0].push(gauge_metric(vec![function()], idle + busy));
            families[1].push(gauge_metric(vec![function()], read(&live.in_flight)));
            for (state, value) in [
                ("starting", read(&live.starting)),
                ("idle", idle),
                ("busy", busy),
            ] {
                families[2].push(gauge_metric(vec![function(), label("state", state)], value));
            }
            families[3].push(gauge_metric(vec![function()], read(&live.queue)));
        }
        LIVE_FAMILIES
            .iter()
            .zip(families)
            .map(|((name, help, _), metrics)| {
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(MetricType::GAUGE);
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openfaas_names() {
        let m = Metrics::new().unwrap();
        let hello = m.function("hello", None);
        hello.invoked(200, Duration::from_millis(3));
        hello.invoked(504, Duration::from_secs(1));
        m.cold_start(
            "hello",
            "container",
            &ColdStart {
                total: Duration::from_micros(2900),
                phases: vec![("rootfs", Duration::from_micros(900))],
            },
        );
        hello.instances(1, 0, 1);
        hello.queue_depth(3);
        hello.stopped(StopReason::Idle);
        m.log_lines_dropped(&[("hello".to_owned(), 2), ("quiet".to_owned(), 0)]);
        drop(hello.in_flight_guard());
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                r#"gateway_function_invocation_total{code="200",function_name="hello"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_functions_seconds_count{code="200",function_name="hello"} 1"#)
        );
        for series in [
            r#"wisp_cold_start_seconds_count{backend="container",function_name="hello"} 1"#,
            r#"wisp_cold_start_phase_seconds_count{backend="container",phase="rootfs"} 1"#,
            r#"gateway_service_count{function_name="hello"} 1"#,
            r#"wisp_instances{function_name="hello",state="starting"} 1"#,
            r#"wisp_instances{function_name="hello",state="busy"} 1"#,
            r#"wisp_queue_depth{function_name="hello"} 3"#,
            r#"wisp_instance_stops_total{function_name="hello",reason="idle"} 1"#,
            r#"wisp_log_lines_dropped_total{function_name="hello"} 2"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
        // Rare series come with their first event, not before.
        assert!(!text.contains(r#"function_name="quiet""#), "{text}");
        assert!(!text.contains(r#"reason="crash""#), "{text}");
        assert!(!text.contains("wisp_async"), "{text}");
        m.async_depth("hello", 2);
        m.async_finished("hello", "succeeded");
        m.async_retried("hello");
        m.async_callback("hello", "delivered");
        let text = String::from_utf8(m.render()).unwrap();
        for series in [
            r#"wisp_async_queue_depth{function_name="hello"} 2"#,
            r#"wisp_async_calls_total{function_name="hello",outcome="succeeded"} 1"#,
            r#"wisp_async_retries_total{function_name="hello"} 1"#,
            r#"wisp_async_callbacks_total{function_name="hello",outcome="delivered"} 1"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
        let mut registered: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        registered.sort();
        let mut declared: Vec<String> = DECLARED.iter().map(|s| (*s).to_owned()).collect();
        declared.sort();
        assert_eq!(
            registered, declared,
            "DECLARED lists every registered family"
        );
        // A new version of the function, then its deletion: every series
        // of the name goes, also those the first version made.
        let other = m.function("other", None);
        other.invoked(500, Duration::from_millis(1));
        let hello = m.function("hello", Some(&hello));
        hello.invoked(429, Duration::from_millis(1));
        m.forget(&hello);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains(r#"function_name="hello""#), "{text}");
        assert!(
            text.contains(
                r#"gateway_function_invocation_total{code="500",function_name="other"} 1"#
            ),
            "{text}"
        );
    }
}
