//! `--plot FILE.svg`: the latency distribution of a run, as a CDF and a
//! histogram side by side (plotters, SVG backend: no fonts needed).

use std::path::Path;

use plotters::prelude::*;

use super::Report;
use super::stats::Latencies;

const BINS: usize = 40;

/// Draws `latencies` of `report` into an SVG file at `path`.
pub fn draw(path: &Path, report: &Report, latencies: &Latencies) -> anyhow::Result<()> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "wisp bench {} --mode {:?}: {} requests, p50 {:.2} ms, p99 {:.2} ms",
            report.function,
            report.mode,
            report.requests,
            report.latency.p50_ms,
            report.latency.p99_ms
        )
        .to_lowercase();
        let root = root.titled(&title, ("sans-serif", 18))?;
        let (left, right) = root.split_horizontally(500);
        // Up to p99.9 (plus a margin): the tail beyond it would flatten the rest.
        let upper = (report.latency.p999_ms * 1.1)
            .max(report.latency.max_ms.min(1.0))
            .max(0.01);

        let cdf = latencies.cdf();
        let mut chart = ChartBuilder::on(&left)
            .caption("CDF", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..upper, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms)")
            .y_desc("fraction of requests")
            .draw()?;
        chart.draw_series(LineSeries::new(
            cdf.into_iter().filter(|(ms, _)| *ms <= upper),
            BLUE.stroke_width(2),
        ))?;

        let bins = latencies.bins(upper, BINS);
        let width = upper / BINS as f64;
        let top = bins.iter().copied().max().unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(&right)
            .caption("histogram", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..upper, 0u64..top + top / 10 + 1)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms)")
            .y_desc("requests")
            .draw()?;
        chart.draw_series(bins.iter().enumerate().map(|(i, &n)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0), (x0 + width * 0.9, n)], BLUE.mix(0.6).filled())
        }))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}
