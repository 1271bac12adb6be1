//! `--mode curve`: a function's load-latency curve. The closed-loop peak
//! first (`warm`, 64 workers, `--duration`, three times: the median, so
//! that one slow or fast spell of a shared host does not set every step),
//! then an open loop (`rate`, at most `--concurrency` in flight) at each of
//! `--steps` percent of that peak, `--duration` each; per step the goodput
//! (200s per second), the share answered 429 and any other failure, and the
//! latency percentiles. `--plot` draws latency and goodput against the
//! offered load.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::{BenchConfig, Mode, Report};
use crate::cli::client::Client;

/// Workers of the closed loop that finds the peak.
const PEAK_WORKERS: usize = 64;
/// Closed-loop runs the peak is the median of.
const PEAK_RUNS: usize = 3;

/// One step of the curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Offered load, percent of the peak.
    pub load_percent: u32,
    pub offered_rps: f64,
    /// 200s per second.
    pub goodput_rps: f64,
    /// Share of answers that were 429 (0–1).
    pub shed: f64,
    /// Answers neither 200 nor 429, and requests with no answer.
    pub failed: u64,
    pub report: Report,
}

/// What `--mode curve` found, as `--json` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curve {
    pub function: String,
    /// The closed-loop run whose goodput is the median.
    pub peak: Report,
    pub peak_rps: f64,
    /// Every closed-loop run's goodput, in the order run.
    #[serde(default)]
    pub peak_runs_rps: Vec<f64>,
    pub steps: Vec<Step>,
}

fn goodput(report: &Report) -> f64 {
    let ok = report.statuses.get("200").copied().unwrap_or(0);
    ok as f64 / report.elapsed_s.max(1e-9)
}

/// Finds the peak, then runs each step.
pub async fn run(client: &Client, config: &BenchConfig, steps: &[u32]) -> anyhow::Result<Curve> {
    let quiet = |mode, concurrency, rate| BenchConfig {
        mode,
        concurrency,
        rate,
        json: None,
        plot: None,
        requests: None,
        ..config.clone()
    };
    let mut runs = Vec::with_capacity(PEAK_RUNS);
    for _ in 0..PEAK_RUNS {
        runs.push(super::run(client, &quiet(Mode::Warm, PEAK_WORKERS, None)).await?);
    }
    let peak_runs_rps: Vec<f64> = runs.iter().map(goodput).collect();
    runs.sort_by(|a, b| goodput(a).total_cmp(&goodput(b)));
    let peak = runs.swap_remove(PEAK_RUNS / 2);
    let peak_rps = goodput(&peak);
    if peak_rps <= 0.0 {
        anyhow::bail!(
            "{} answered no request with 200 in the closed loop: no peak to scale the steps by",
            config.function
        );
    }
    let mut measured = Vec::new();
    for &percent in steps {
        let rate = peak_rps * f64::from(percent) / 100.0;
        let report = super::run(client, &quiet(Mode::Rate, config.concurrency, Some(rate))).await?;
        let answered: u64 = report.statuses.values().sum();
        let shed = report.statuses.get("429").copied().unwrap_or(0);
        let ok = report.statuses.get("200").copied().unwrap_or(0);
        measured.push(Step {
            load_percent: percent,
            offered_rps: rate,
            goodput_rps: goodput(&report),
            shed: shed as f64 / answered.max(1) as f64,
            failed: answered - ok - shed,
            report,
        });
    }
    let curve = Curve {
        function: config.function.clone(),
        peak,
        peak_rps,
        peak_runs_rps,
        steps: measured,
    };
    if let Some(path) = &config.json {
        let json = serde_json::to_vec_pretty(&curve)?;
        std::fs::write(path, json)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &config.plot {
        draw(path, &curve)?;
    }
    Ok(curve)
}

/// The table `wisp bench --mode curve` prints.
pub fn render(curve: &Curve) -> String {
    let mut out = format!(
        "{} curve: closed-loop peak {:.0} req/s ({PEAK_WORKERS} workers; median of {})\n",
        curve.function,
        curve.peak_rps,
        curve
            .peak_runs_rps
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str(&format!(
        "{:>5} {:>9} {:>9} {:>7} {:>7} {:>9} {:>9}\n",
        "load", "offered", "goodput", "429 %", "failed", "p50 ms", "p99 ms"
    ));
    for s in &curve.steps {
        out.push_str(&format!(
            "{:>4}% {:>9.0} {:>9.0} {:>7.1} {:>7} {:>9.3} {:>9.3}\n",
            s.load_percent,
            s.offered_rps,
            s.goodput_rps,
            s.shed * 100.0,
            s.failed,
            s.report.latency.p50_ms,
            s.report.latency.p99_ms
        ));
    }
    out
}

/// Latency (log scale) and goodput against the offered load.
fn draw(path: &Path, curve: &Curve) -> anyhow::Result<()> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "wisp bench {} --mode curve: closed-loop peak {:.0} req/s",
            curve.function, curve.peak_rps
        );
        let root = root.titled(&title, ("sans-serif", 18))?;
        let (left, right) = root.split_horizontally(500);
        let max_load = curve
            .steps
            .iter()
            .map(|s| f64::from(s.load_percent))
            .fold(100.0, f64::max)
            * 1.05;
        let latencies = curve
            .steps
            .iter()
            .flat_map(|s| [s.report.latency.p50_ms, s.report.latency.p99_ms]);
        let top = latencies.fold(1.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(&left)
            .caption("latency from each request's due time", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..max_load, (0.05f64..top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("offered load (% of peak)")
            .y_desc("ms")
            .draw()?;
        for (label, color, pick) in [
            (
                "p50",
                BLUE,
                (|s: &Step| s.report.latency.p50_ms) as fn(&Step) -> f64,
            ),
            ("p99", RED, |s: &Step| s.report.latency.p99_ms),
        ] {
            let points: Vec<(f64, f64)> = curve
                .steps
                .iter()
                .map(|s| (f64::from(s.load_percent), pick(s).max(0.05)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;

        let top_rps = curve
            .steps
            .iter()
            .map(|s| s.offered_rps)
            .fold(curve.peak_rps, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&right)
            .caption("answered per second", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_load, 0f64..top_rps)?;
        chart
            .configure_mesh()
            .x_desc("offered load (% of peak)")
            .y_desc("req/s")
            .draw()?;
        let series = [
            (
                "offered",
                BLACK.mix(0.4),
                (|s: &Step| s.offered_rps) as fn(&Step) -> f64,
            ),
            ("200 (goodput)", GREEN.mix(1.0), |s: &Step| s.goodput_rps),
            ("429", RGBColor(230, 140, 0).mix(1.0), |s: &Step| {
                s.shed * s.report.throughput_rps
            }),
        ];
        for (label, color, pick) in series {
            let points: Vec<(f64, f64)> = curve
                .steps
                .iter()
                .map(|s| (f64::from(s.load_percent), pick(s)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}
