//! What a benchmark run records: latencies in an HDR histogram (1 µs to
//! 10 min, 3 significant digits), answers by status, and the cold-start
//! phases the server reported in `Server-Timing`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded exactly; longer ones are clamped to it.
const MAX_MICROS: u64 = 600_000_000;

/// Latencies of one kind (all requests, or one phase).
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        #[expect(clippy::expect_used, reason = "constant, valid bounds")]
        let histogram =
            Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds");
        Latencies(histogram)
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `quantile` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count(),
            mean_ms: if self.0.is_empty() {
                0.0
            } else {
                self.0.mean() / 1000.0
            },
            p50_ms: self.quantile_ms(0.50),
            p90_ms: self.quantile_ms(0.90),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: if self.0.is_empty() {
                0.0
            } else {
                self.0.max() as f64 / 1000.0
            },
        }
    }

    /// Counts in `bins` equal-width bins from 0 to `upper_ms` (later
    /// values go in the last bin), for a histogram plot.
    pub fn bins(&self, upper_ms: f64, bins: usize) -> Vec<u64> {
        let bins = bins.max(1);
        let mut counts = vec![0u64; bins];
        let width = (upper_ms / bins as f64).max(1e-9);
        for v in self.0.iter_recorded() {
            let ms = v.value_iterated_to() as f64 / 1000.0;
            let i = ((ms / width) as usize).min(bins - 1);
            counts[i] += v.count_at_value();
        }
        counts
    }

    /// (latency ms, cumulative fraction) at each recorded value: the CDF.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let total = self.count().max(1) as f64;
        let mut seen = 0u64;
        self.0
            .iter_recorded()
            .map(|v| {
                seen += v.count_at_value();
                (v.value_iterated_to() as f64 / 1000.0, seen as f64 / total)
            })
            .collect()
    }
}

/// A latency distribution in numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Everything one run recorded.
#[derive(Debug, Default)]
pub struct Recorder {
    pub latency: Latencies,
    /// Answers by HTTP status; transport errors count under 0.
    pub statuses: BTreeMap<u16, u64>,
    /// Cold starts only: each phase's latency.
    pub phases: BTreeMap<String, Latencies>,
    pub cold_starts: u64,
    /// From the first measured request's send (or due) time to the last
    /// answer: the span throughput is computed over.
    pub window: Option<(Instant, Instant)>,
}

impl Recorder {
    /// Widens the measured window to cover a request sent (or due) at
    /// `sent` and answered at `done`.
    pub fn span(&mut self, sent: Instant, done: Instant) {
        self.window = Some(match self.window {
            None => (sent, done),
            Some((first, last)) => (first.min(sent), last.max(done)),
        });
    }

    /// Records one answer and its `Server-Timing` header, if any.
    pub fn record(&mut self, status: u16, latency: Duration, server_timing: Option<&str>) {
        self.latency.record(latency);
        *self.statuses.entry(status).or_default() += 1;
        if let Some(timing) = server_timing {
            let phases = parse_server_timing(timing);
            if !phases.is_empty() {
                self.cold_starts += 1;
            }
            for (name, took) in phases {
                self.phases.entry(name).or_default().record(took);
            }
        }
    }

    pub fn errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| !(200..400).contains(*status))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The phases of a cold start's `Server-Timing` (`cold;desc="…",
/// start;dur=2.9, rootfs;dur=0.9`): every metric with a `dur`, when the
/// header says `cold`; nothing for a warm answer.
pub fn parse_server_timing(header: &str) -> Vec<(String, Duration)> {
    let mut metrics = header.split(',').map(str::trim);
    if metrics
        .next()
        .is_none_or(|first| !first.starts_with("cold"))
    {
        return Vec::new();
    }
    metrics
        .filter_map(|metric| {
            let mut parts = metric.split(';').map(str::trim);
            let name = parts.next()?.to_owned();
            let dur = parts.find_map(|p| p.strip_prefix("dur="))?;
            let ms: f64 = dur.parse().ok()?;
            (ms.is_finite() && ms >= 0.0).then(|| (name, Duration::from_secs_f64(ms / 1000.0)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.001;
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
        let cdf = l.cdf();
        assert!((cdf.last().unwrap().1 - 1.0).abs() < 1e-9);
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        assert_eq!(Latencies::new().summary().p99_ms, 0.0);
        let mut l = Latencies::new();
        l.record(Duration::from_secs(3600));
        let max = l.summary().max_ms;
        assert!(
            (600_000.0..601_000.0).contains(&max),
            "clamped, not lost: {max}"
        );
    }

    #[test]
    fn server_timing_phases() {
        let phases = parse_server_timing(
            r#"cold;desc="cold start", start;dur=2.923, rootfs;dur=0.95, exec;dur=bogus"#,
        );
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].0, "start");
        assert_eq!(phases[1].1, Duration::from_micros(950));
        assert!(parse_server_timing("warm").is_empty());
        let mut r = Recorder::default();
        r.record(200, Duration::from_millis(3), Some("cold, start;dur=2"));
        r.record(502, Duration::from_millis(1), Some("warm"));
        r.record(0, Duration::from_millis(1), None);
        assert_eq!(r.cold_starts, 1);
        assert_eq!(r.errors(), 2);
        assert_eq!(r.phases["start"].count(), 1);
    }
}
