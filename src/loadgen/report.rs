//! Turning request measurements into the report: one row per concurrency level, shown as
//! a terminal table, written as JSON and drawn as an SVG chart.
//!
//! Definitions (as vLLM's `benchmark_serving` uses them):
//! - TTFT: send to first token; E2E: send to end of stream.
//! - TPOT, per request: (E2E − TTFT) / (output tokens − 1), for requests with more than
//!   one token; its percentiles are over requests.
//! - ITL: every gap between two successive token arrivals of a request, pooled over
//!   requests.
//! - Throughput: completed requests (or their output tokens) over the level's wall time,
//!   from the first send to the last answer.
//!
//! Percentiles interpolate linearly between order statistics (numpy's default).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::client::{RequestError, RequestResult};

/// The `p`-th percentile (0..=100) of `sorted` (ascending), interpolating linearly; 0
/// for no data.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// Mean and percentiles of one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub count: usize,
}

impl Stats {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        Self {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: percentile(&values, 50.0),
            p90: percentile(&values, 90.0),
            p99: percentile(&values, 99.0),
            count: values.len(),
        }
    }
}

/// The results of one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelReport {
    pub concurrency: usize,
    pub num_prompts: usize,
    pub completed: usize,
    pub failed: usize,
    /// Failed requests by kind (`http_429`, `stream_error`, `timeout`, ...).
    pub errors: BTreeMap<String, usize>,
    /// One message per error kind, for diagnosis.
    pub error_examples: BTreeMap<String, String>,
    pub duration_s: f64,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Output tokens of completed requests per second.
    pub output_throughput: f64,
    pub total_output_tokens: usize,
    /// Prompt tokens as the server reported them (0 when it does not).
    pub total_input_tokens: usize,
    pub mean_output_tokens: f64,
    /// Completed requests that generated fewer tokens than asked (stopped at EOS).
    pub short_requests: usize,
    pub ttft_ms: Stats,
    pub tpot_ms: Stats,
    pub itl_ms: Stats,
    pub e2e_ms: Stats,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl LevelReport {
    /// Summarizes one level's results; `duration` is its wall time and `output_len` the
    /// tokens each request asked for.
    pub fn summarize(
        concurrency: usize,
        results: &[Result<RequestResult, RequestError>],
        duration: Duration,
        output_len: usize,
    ) -> Self {
        let ok: Vec<&RequestResult> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut errors = BTreeMap::new();
        let mut error_examples = BTreeMap::new();
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            let kind = e.kind.to_string();
            *errors.entry(kind.clone()).or_insert(0) += 1;
            error_examples
                .entry(kind)
                .or_insert_with(|| e.message.clone());
        }
        let secs = duration.as_secs_f64().max(1e-9);
        let total_output_tokens: usize = ok.iter().map(|r| r.output_tokens).sum();
        Self {
            concurrency,
            num_prompts: results.len(),
            completed: ok.len(),
            failed: results.len() - ok.len(),
            errors,
            error_examples,
            duration_s: duration.as_secs_f64(),
            request_throughput: ok.len() as f64 / secs,
            output_throughput: total_output_tokens as f64 / secs,
            total_output_tokens,
            total_input_tokens: ok.iter().filter_map(|r| r.prompt_tokens).sum(),
            mean_output_tokens: if ok.is_empty() {
                0.0
            } else {
                total_output_tokens as f64 / ok.len() as f64
            },
            short_requests: ok.iter().filter(|r| r.output_tokens < output_len).count(),
            ttft_ms: Stats::of(ok.iter().map(|r| ms(r.ttft)).collect()),
            tpot_ms: Stats::of(ok.iter().filter_map(|r| r.tpot()).map(ms).collect()),
            itl_ms: Stats::of(
                ok.iter()
                    .flat_map(|r| r.itl.iter().copied().map(ms))
                    .collect(),
            ),
            e2e_ms: Stats::of(ok.iter().map(|r| ms(r.latency)).collect()),
        }
    }
}

/// A whole sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkReport {
    pub label: String,
    pub url: String,
    pub api: String,
    pub date: String,
    pub input_len: Option<usize>,
    pub output_len: usize,
    /// Requests per second (Poisson), or null for a closed loop.
    pub request_rate: Option<f64>,
    pub seed: u64,
    /// How prompt lengths were measured.
    pub prompt_tokens_by: String,
    /// Mean measured length of the prompts sent (no special tokens), when measured.
    pub mean_prompt_tokens: Option<f64>,
    pub levels: Vec<LevelReport>,
}

fn triple(s: &Stats, scale: f64, digits: usize) -> String {
    if s.count == 0 {
        return "-".into();
    }
    format!(
        "{:.d$}/{:.d$}/{:.d$}",
        s.p50 * scale,
        s.p90 * scale,
        s.p99 * scale,
        d = digits
    )
}

impl BenchmarkReport {
    /// The terminal table: one row per level.
    pub fn table(&self) -> String {
        let header = [
            "conc",
            "ok/sent",
            "req/s",
            "out tok/s",
            "TTFT ms p50/p90/p99",
            "TPOT ms p50/p90/p99",
            "ITL ms p50/p90/p99",
            "E2E s p50/p90/p99",
            "errors",
        ];
        let rows: Vec<Vec<String>> = self
            .levels
            .iter()
            .map(|l| {
                let errors = if l.errors.is_empty() {
                    "-".to_string()
                } else {
                    l.errors
                        .iter()
                        .map(|(k, n)| format!("{k}:{n}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                vec![
                    l.concurrency.to_string(),
                    format!("{}/{}", l.completed, l.num_prompts),
                    format!("{:.2}", l.request_throughput),
                    format!("{:.1}", l.output_throughput),
                    triple(&l.ttft_ms, 1.0, 0),
                    triple(&l.tpot_ms, 1.0, 1),
                    triple(&l.itl_ms, 1.0, 1),
                    triple(&l.e2e_ms, 0.001, 2),
                    errors,
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[&str]| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == cells.len() - 1 {
                        c.to_string()
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", parts.join("  ").trim_end());
        };
        let _ = writeln!(
            out,
            "{} ({} API at {}), input {} tokens, output {} tokens, {}",
            self.label,
            self.api,
            self.url,
            self.mean_prompt_tokens
                .map(|m| format!("{m:.0}"))
                .or(self.input_len.map(|n| n.to_string()))
                .unwrap_or_else(|| "file".into()),
            self.output_len,
            match self.request_rate {
                Some(r) => format!("Poisson arrivals at {r} req/s"),
                None => "closed loop".into(),
            }
        );
        line(&mut out, &header);
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(&mut out, &cells);
        }
        let short: usize = self.levels.iter().map(|l| l.short_requests).sum();
        if short > 0 {
            let _ = writeln!(
                out,
                "note: {short} requests stopped before {} tokens (EOS); throughput counts the tokens generated",
                self.output_len
            );
        }
        for l in &self.levels {
            for (kind, msg) in &l.error_examples {
                let _ = writeln!(out, "error at concurrency {}: {kind}: {msg}", l.concurrency);
            }
        }
        out
    }
}

/// Draws output throughput and TTFT (p50 and p99) against concurrency for each report
/// (one line per report and metric) as an SVG string. Needs no system fonts: the SVG
/// names a generic font family and the viewer renders it.
pub fn chart_svg(reports: &[&BenchmarkReport]) -> Result<String> {
    use plotters::prelude::*;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (left, right) = root.split_horizontally(550);
        let levels: Vec<usize> = reports
            .iter()
            .flat_map(|r| r.levels.iter().map(|l| l.concurrency))
            .collect();
        let xmin = levels.iter().copied().min().unwrap_or(1).max(1) as f64;
        let xmax = levels.iter().copied().max().unwrap_or(1).max(1) as f64;
        let (x0, x1) = (xmin / 1.25, (xmax * 1.25).max(xmin * 1.6));
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
        ];

        type Metric = fn(&LevelReport) -> f64;
        type Panel<'a, A> = (
            &'a A,
            &'static str,
            &'static str,
            Vec<(&'static str, Metric)>,
        );
        let panels: [Panel<'_, _>; 2] = [
            (
                &left,
                "Output throughput",
                "tokens / s",
                vec![("", |l: &LevelReport| l.output_throughput)],
            ),
            (
                &right,
                "Time to first token",
                "ms",
                vec![
                    (" p50", |l: &LevelReport| l.ttft_ms.p50),
                    (" p99", |l: &LevelReport| l.ttft_ms.p99),
                ],
            ),
        ];
        for (area, title, unit, metrics) in panels {
            let ymax = reports
                .iter()
                .flat_map(|r| r.levels.iter())
                .flat_map(|l| metrics.iter().map(move |(_, f)| f(l)))
                .fold(0.0f64, f64::max);
            let ymax = if ymax > 0.0 { ymax * 1.15 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((x0..x1).log_scale(), 0f64..ymax)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("concurrent requests")
                .y_desc(unit)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .draw()
                .map_err(plot_err)?;
            let mut series = 0;
            for report in reports {
                for (suffix, f) in &metrics {
                    let color = colors[series % colors.len()];
                    let dashed = suffix.contains("p99");
                    let points: Vec<(f64, f64)> = report
                        .levels
                        .iter()
                        .map(|l| (l.concurrency as f64, f(l)))
                        .collect();
                    let style = if dashed {
                        color.stroke_width(1)
                    } else {
                        color.stroke_width(2)
                    };
                    chart
                        .draw_series(LineSeries::new(points.clone(), style))
                        .map_err(plot_err)?
                        .label(format!("{}{suffix}", report.label))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(plot_err)?;
                    series += 1;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart failed: {e:?}")
}

/// Writes [`chart_svg`] to `path`.
pub fn write_chart(reports: &[&BenchmarkReport], path: &Path) -> Result<()> {
    let svg = chart_svg(reports)?;
    std::fs::write(path, svg)
        .map_err(|e| anyhow::anyhow!("cannot write chart {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::client::ErrorKind;

    #[test]
    fn percentiles_interpolate_linearly() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert!((percentile(&v, 50.0) - 5.5).abs() < 1e-12);
        assert!((percentile(&v, 90.0) - 9.1).abs() < 1e-12);
        assert!((percentile(&v, 99.0) - 9.91).abs() < 1e-12);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let s = Stats::of(vec![4.0, 1.0, 3.0, 2.0, f64::NAN]);
        assert_eq!((s.mean, s.p50, s.count), (2.5, 2.5, 4));
    }

    fn result(ttft_ms: u64, gaps_ms: &[u64], tokens: usize) -> RequestResult {
        let itl: Vec<Duration> = gaps_ms.iter().map(|&g| Duration::from_millis(g)).collect();
        RequestResult {
            ttft: Duration::from_millis(ttft_ms),
            latency: Duration::from_millis(ttft_ms) + itl.iter().sum::<Duration>(),
            itl,
            output_tokens: tokens,
            prompt_tokens: Some(10),
            finish_reason: None,
        }
    }

    #[test]
    fn level_summary_math() {
        let results = vec![
            Ok(result(100, &[10, 10, 10], 4)),
            Ok(result(300, &[20], 2)),
            Err(RequestError {
                kind: ErrorKind::Http(429),
                message: "queue full".into(),
            }),
            Err(RequestError {
                kind: ErrorKind::Http(429),
                message: "again".into(),
            }),
        ];
        let l = LevelReport::summarize(2, &results, Duration::from_secs(2), 4);
        assert_eq!((l.completed, l.failed, l.num_prompts), (2, 2, 4));
        assert_eq!(l.errors.get("http_429"), Some(&2));
        assert_eq!(l.error_examples["http_429"], "queue full");
        assert_eq!(l.total_output_tokens, 6);
        assert_eq!(l.total_input_tokens, 20);
        assert!((l.request_throughput - 1.0).abs() < 1e-9);
        assert!((l.output_throughput - 3.0).abs() < 1e-9);
        assert_eq!(l.short_requests, 1);
        assert!((l.ttft_ms.p50 - 200.0).abs() < 1e-9);
        // TPOT per request: 30/3 = 10 and 20/1 = 20.
        assert!((l.tpot_ms.mean - 15.0).abs() < 1e-9);
        // ITL pooled: 10, 10, 10, 20.
        assert_eq!(l.itl_ms.count, 4);
        assert!((l.itl_ms.mean - 12.5).abs() < 1e-9);
        // E2E: 130 and 320 ms.
        assert!((l.e2e_ms.p50 - 225.0).abs() < 1e-9);
        assert!((l.e2e_ms.p99 - 318.1).abs() < 1e-9);
    }

    #[test]
    fn table_and_chart_render() {
        let results = vec![Ok(result(100, &[10, 10, 10], 4))];
        let report = BenchmarkReport {
            label: "test".into(),
            url: "http://127.0.0.1:1".into(),
            api: "tgi".into(),
            date: "2026-01-01".into(),
            input_len: Some(8),
            output_len: 4,
            request_rate: None,
            seed: 0,
            prompt_tokens_by: "estimate".into(),
            mean_prompt_tokens: None,
            levels: vec![
                LevelReport::summarize(1, &results, Duration::from_secs(1), 4),
                LevelReport::summarize(4, &results, Duration::from_secs(1), 4),
            ],
        };
        let table = report.table();
        assert!(table.contains("TTFT ms p50/p90/p99"), "{table}");
        assert!(table.contains("100/100/100"), "{table}");
        let svg = chart_svg(&[&report, &report]).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Time to first token"));
        let json = serde_json::to_string(&report).unwrap();
        let back: BenchmarkReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
