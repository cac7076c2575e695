//! `greenbelt bench devices`: one model on the CPU and on a GPU across batch
//! sizes, in process (no server, no network: the device is all that
//! differs), one call in flight, as perf_analyzer measures: windows of a
//! fixed length until three consecutive windows agree within 10% on
//! throughput, then throughput and latency percentiles over those three.
//! The report names the batch size from which the GPU is faster.
//!
//! A device that cannot load the model (no GPU, an ONNX Runtime library
//! without the CUDA execution provider, a build without the `cuda` feature)
//! is reported as not measured, with the reason; the CPU is still measured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use greenbelt_core::Tensor;
use greenbelt_runtime::{Backend, Device, LoadOptions, Model, Runtimes};
use serde::Serialize;

use crate::error::{AppError, Result};
use crate::loadgen::{InputSpec, make_input};

/// What to measure.
#[derive(Debug, Clone)]
pub struct DevicesOptions {
    pub model: PathBuf,
    pub backend: Backend,
    pub devices: Vec<Device>,
    pub batch_sizes: Vec<usize>,
    /// One measurement window.
    pub window: Duration,
    /// Windows per batch size at most before giving up on stability.
    pub max_windows: usize,
    /// Consecutive windows that must agree (perf_analyzer: 3).
    pub stable_windows: usize,
    /// How far they may be apart, as a share of their mean (perf_analyzer: 10%).
    pub stability: f64,
    pub onnxruntime_library: Option<PathBuf>,
}

impl DevicesOptions {
    pub fn new(model: PathBuf) -> DevicesOptions {
        DevicesOptions {
            model,
            backend: Backend::Auto,
            devices: vec![Device::Cpu, Device::Cuda(0)],
            batch_sizes: vec![1, 8, 64, 256, 1024],
            window: Duration::from_millis(500),
            max_windows: 10,
            stable_windows: 3,
            stability: 0.10,
            onnxruntime_library: None,
        }
    }
}

/// One batch size on one device.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub batch: usize,
    pub rows_per_s: f64,
    pub calls_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Windows measured before the last `stable_windows` agreed (or the cap).
    pub windows: usize,
    /// Whether they agreed; the numbers are those of the last windows either way.
    pub stable: bool,
}

/// One device: measured, or why not.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceRun {
    pub device: String,
    /// The backend that served (`onnxruntime`, `native`, ...), when loaded.
    pub backend: Option<String>,
    pub error: Option<String>,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DevicesReport {
    pub model: String,
    pub window_ms: f64,
    pub stability: f64,
    pub runs: Vec<DeviceRun>,
    /// The smallest batch size from which the GPU's throughput beats the
    /// CPU's at every larger size measured; None when it never does or was
    /// not measured.
    pub gpu_faster_from_batch: Option<usize>,
}

/// Whether the last `n` window throughputs agree within `tolerance` of their mean.
pub fn is_stable(throughputs: &[f64], n: usize, tolerance: f64) -> bool {
    if n == 0 || throughputs.len() < n {
        return false;
    }
    let last = &throughputs[throughputs.len() - n..];
    let mean = last.iter().sum::<f64>() / n as f64;
    mean > 0.0 && last.iter().all(|t| (t - mean).abs() <= tolerance * mean)
}

/// The batch size from which `gpu` beats `cpu` at every larger batch both measured.
pub fn crossover(cpu: &[Point], gpu: &[Point]) -> Option<usize> {
    let mut pairs: Vec<(usize, bool)> = gpu
        .iter()
        .filter_map(|g| {
            cpu.iter()
                .find(|c| c.batch == g.batch)
                .map(|c| (g.batch, g.rows_per_s > c.rows_per_s))
        })
        .collect();
    pairs.sort_by_key(|p| p.0);
    let mut from = None;
    for (batch, faster) in pairs {
        match (faster, from) {
            (true, None) => from = Some(batch),
            (false, _) => from = None,
            _ => {}
        }
    }
    from
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Measure one batch size: windows until stable (or the cap).
fn measure(
    model: &dyn Model,
    inputs: &[Tensor],
    batch: usize,
    o: &DevicesOptions,
) -> Result<Point> {
    // One call to warm up (first-call allocations, GPU kernels' compilation).
    model
        .infer(inputs)
        .map_err(|e| AppError::Invalid(format!("batch {batch}: {e}")))?;
    let mut throughputs = Vec::new();
    let mut windows: Vec<Vec<f64>> = Vec::new();
    while windows.len() < o.max_windows.max(o.stable_windows) {
        let start = Instant::now();
        let mut lat = Vec::new();
        while start.elapsed() < o.window {
            let t = Instant::now();
            model
                .infer(inputs)
                .map_err(|e| AppError::Invalid(format!("batch {batch}: {e}")))?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        throughputs.push(lat.len() as f64 / start.elapsed().as_secs_f64());
        windows.push(lat);
        if is_stable(&throughputs, o.stable_windows, o.stability) {
            break;
        }
    }
    let n = o.stable_windows.min(windows.len());
    let mut lat: Vec<f64> = windows[windows.len() - n..].concat();
    lat.sort_by(f64::total_cmp);
    let calls_per_s = throughputs[throughputs.len() - n..].iter().sum::<f64>() / n as f64;
    Ok(Point {
        batch,
        rows_per_s: calls_per_s * batch as f64,
        calls_per_s,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        windows: windows.len(),
        stable: is_stable(&throughputs, o.stable_windows, o.stability),
    })
}

/// The inputs of `model` with `batch` rows; an error when a fixed first
/// dimension does not allow that many.
fn inputs_for(model: &dyn Model, batch: usize) -> Result<Vec<Tensor>> {
    model
        .signature()
        .inputs
        .iter()
        .map(|s| {
            if let Some(&d) = s.shape.first()
                && d >= 0
                && d as usize != batch
            {
                return Err(AppError::Invalid(format!(
                    "input \"{}\" has a fixed first dimension {d}: only --batch-sizes {d} can be measured",
                    s.name
                )));
            }
            make_input(
                &InputSpec {
                    name: s.name.clone(),
                    datatype: s.datatype,
                    shape: s.shape.clone(),
                },
                batch,
            )
        })
        .collect()
}

/// Run the comparison (blocking: call it off the async executor).
pub fn run(o: &DevicesOptions) -> Result<DevicesReport> {
    if o.batch_sizes.is_empty() || o.batch_sizes.contains(&0) {
        return Err(AppError::Invalid(
            "--batch-sizes must be positive row counts, e.g. 1,8,64,256,1024".into(),
        ));
    }
    if o.devices.is_empty() {
        return Err(AppError::Invalid(
            "--devices must name at least one of cpu, cuda, cuda:N".into(),
        ));
    }
    if !o.model.is_file() {
        return Err(AppError::Invalid(format!(
            "--model-file {}: no such file",
            o.model.display()
        )));
    }
    let runtimes = Runtimes::probe(o.onnxruntime_library.as_deref());
    let mut runs = Vec::new();
    for &device in &o.devices {
        let opts = LoadOptions {
            backend: o.backend,
            device,
            ..LoadOptions::default()
        };
        let model: Arc<dyn Model> = match runtimes.load(&o.model, &opts) {
            Ok(m) => m,
            Err(e) => {
                runs.push(DeviceRun {
                    device: device.to_string(),
                    backend: None,
                    error: Some(e.to_string()),
                    points: Vec::new(),
                });
                continue;
            }
        };
        let mut points = Vec::new();
        for &batch in &o.batch_sizes {
            let inputs = inputs_for(model.as_ref(), batch)?;
            points.push(measure(model.as_ref(), &inputs, batch, o)?);
        }
        runs.push(DeviceRun {
            device: device.to_string(),
            backend: Some(model.backend().as_str().to_string()),
            error: None,
            points,
        });
    }
    let cpu = runs.iter().find(|r| r.device == "cpu" && r.error.is_none());
    let gpu = runs.iter().find(|r| r.device != "cpu" && r.error.is_none());
    let gpu_faster_from_batch = match (cpu, gpu) {
        (Some(c), Some(g)) => crossover(&c.points, &g.points),
        _ => None,
    };
    Ok(DevicesReport {
        model: o.model.display().to_string(),
        window_ms: o.window.as_secs_f64() * 1e3,
        stability: o.stability,
        runs,
        gpu_faster_from_batch,
    })
}

impl DevicesReport {
    /// A table per device, then the verdict.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}: windows of {:.0} ms until 3 agree within {:.0}%\n\n",
            self.model,
            self.window_ms,
            self.stability * 100.0
        );
        out.push_str(&format!(
            "{:<8} {:<12} {:>6} {:>14} {:>12} {:>10} {:>10} {:>8}\n",
            "device", "backend", "batch", "rows/s", "calls/s", "p50 ms", "p99 ms", "stable"
        ));
        for r in &self.runs {
            if let Some(e) = &r.error {
                out.push_str(&format!("{:<8} not measured: {e}\n", r.device));
                continue;
            }
            for p in &r.points {
                out.push_str(&format!(
                    "{:<8} {:<12} {:>6} {:>14.0} {:>12.0} {:>10.3} {:>10.3} {:>8}\n",
                    r.device,
                    r.backend.as_deref().unwrap_or("-"),
                    p.batch,
                    p.rows_per_s,
                    p.calls_per_s,
                    p.p50_ms,
                    p.p99_ms,
                    if p.stable {
                        "yes".to_string()
                    } else {
                        format!("no ({})", p.windows)
                    }
                ));
            }
        }
        let measured_gpu = self
            .runs
            .iter()
            .any(|r| r.device != "cpu" && r.error.is_none());
        out.push('\n');
        out.push_str(&match (measured_gpu, self.gpu_faster_from_batch) {
            (false, _) => "GPU: not measured (see above); only the CPU side is known.\n".into(),
            (true, Some(b)) => format!("The GPU is faster from batch {b} on.\n"),
            (true, None) => "The GPU is not faster at any batch size measured.\n".into(),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn point(batch: usize, rows_per_s: f64) -> Point {
        Point {
            batch,
            rows_per_s,
            calls_per_s: rows_per_s / batch as f64,
            p50_ms: 0.0,
            p99_ms: 0.0,
            windows: 3,
            stable: true,
        }
    }

    #[test]
    fn three_windows_within_ten_percent_are_stable() {
        assert!(is_stable(&[50.0, 100.0, 104.0, 96.0], 3, 0.10));
        assert!(!is_stable(&[100.0, 115.0, 90.0], 3, 0.10));
        assert!(!is_stable(&[100.0, 100.0], 3, 0.10), "too few windows");
        assert!(!is_stable(&[0.0, 0.0, 0.0], 3, 0.10), "nothing ran");
    }

    #[test]
    fn the_crossover_is_where_the_gpu_stays_ahead() {
        let cpu = [
            point(1, 100.0),
            point(8, 700.0),
            point(64, 3000.0),
            point(256, 5000.0),
        ];
        // ahead at 1 by noise, behind at 8, ahead from 64 on
        let gpu = [
            point(1, 101.0),
            point(8, 500.0),
            point(64, 4000.0),
            point(256, 20000.0),
        ];
        assert_eq!(crossover(&cpu, &gpu), Some(64));
        let slower = [
            point(1, 10.0),
            point(8, 50.0),
            point(64, 100.0),
            point(256, 200.0),
        ];
        assert_eq!(crossover(&cpu, &slower), None);
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models")
            .join(name)
            .join("1/model.onnx")
    }

    #[test]
    fn the_cpu_is_measured_and_a_missing_gpu_is_reported_not_fatal() {
        let mut o = DevicesOptions::new(fixture("logreg"));
        o.batch_sizes = vec![1, 64];
        o.window = Duration::from_millis(20);
        o.max_windows = 4;
        let r = run(&o).unwrap();
        let cpu = &r.runs[0];
        assert_eq!(cpu.device, "cpu");
        assert_eq!(cpu.error, None);
        assert_eq!(cpu.points.len(), 2);
        for p in &cpu.points {
            assert!(
                p.rows_per_s > 0.0 && p.p50_ms > 0.0 && p.p99_ms >= p.p50_ms,
                "{p:?}"
            );
            assert!((3..=4).contains(&p.windows), "{p:?}");
            assert!((p.rows_per_s - p.calls_per_s * p.batch as f64).abs() < 1e-6 * p.rows_per_s);
        }
        let gpu = &r.runs[1];
        assert_eq!(gpu.device, "cuda");
        // This machine has no GPU: the reason names CUDA (no provider in the
        // library, no library at all, or no device), and nothing was measured.
        if let Some(e) = &gpu.error {
            assert!(
                e.to_lowercase().contains("cuda") || e.contains("ONNX Runtime"),
                "{e}"
            );
            assert!(gpu.points.is_empty());
            assert_eq!(r.gpu_faster_from_batch, None);
            assert!(
                r.text().contains("only the CPU side is known"),
                "{}",
                r.text()
            );
        }
    }

    #[test]
    fn bad_options_name_the_flag() {
        let mut o = DevicesOptions::new(fixture("logreg"));
        o.batch_sizes = vec![0];
        assert!(run(&o).unwrap_err().to_string().contains("--batch-sizes"));
        let o = DevicesOptions::new(PathBuf::from("/nonexistent/model.onnx"));
        assert!(run(&o).unwrap_err().to_string().contains("--model-file"));
        let mut o = DevicesOptions::new(fixture("logreg"));
        o.devices = vec![];
        assert!(run(&o).unwrap_err().to_string().contains("--devices"));
    }
}
