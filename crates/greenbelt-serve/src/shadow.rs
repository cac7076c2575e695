//! Shadow traffic: a copy of a deployment's live request goes, after the
//! client has its answer, to a bounded queue; workers run it on the shadow
//! version and compare the outputs with what the primary returned. The
//! client never waits for a shadow: the copy is offered with `try_send`, and
//! a full queue drops it and counts the drop.
//!
//! Comparison, per mirrored request: class agreement per row (an integer
//! output is the label; otherwise the arg-max of a score row, or score ≥ 0.5
//! for one score per row), absolute and relative differences of every float
//! output element, and the latency of both sides. A bounded sample of the
//! most different requests is kept for inspection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenbelt_core::{Tensor, TensorData};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::repository::ServedVersion;
use crate::stages::execute::{Executed, Executor};

/// Most-different requests kept per shadow.
pub const WORST_KEPT: usize = 20;
/// Values of a tensor shown in a kept sample.
const SAMPLE_VALUES: usize = 16;
/// Scale of the difference histograms: 1e-9 resolution.
const DIFF_SCALE: f64 = 1e9;

/// One mirrored request waiting for its shadow.
pub struct ShadowJob {
    pub deployment: Arc<str>,
    pub shadow: Arc<ServedVersion>,
    pub inputs: Vec<Tensor>,
    pub primary: Vec<Tensor>,
    pub primary_latency: Duration,
    pub request_id: String,
    /// The primary request's trace, when it is recorded: the shadow's run
    /// becomes a child of its server span.
    pub trace: Option<crate::traces::TraceIds>,
}

/// Cumulative counts for windowed analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowCounters {
    pub compared: u64,
    pub errors: u64,
    pub dropped: u64,
    pub rows: u64,
    pub rows_agree: u64,
}

/// A window of shadow comparison for one shadow version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowWindow {
    pub compared: u64,
    pub errors: u64,
    pub dropped: u64,
    pub rows: u64,
    /// Share of compared rows whose class agreed (1 when none were compared).
    pub agreement: f64,
    /// Errors over mirrored requests that ran.
    pub error_rate: f64,
}

impl ShadowCounters {
    pub fn since(&self, earlier: &ShadowCounters) -> ShadowWindow {
        let compared = self.compared.saturating_sub(earlier.compared);
        let errors = self.errors.saturating_sub(earlier.errors);
        let rows = self.rows.saturating_sub(earlier.rows);
        let agree = self.rows_agree.saturating_sub(earlier.rows_agree);
        ShadowWindow {
            compared,
            errors,
            dropped: self.dropped.saturating_sub(earlier.dropped),
            rows,
            agreement: if rows == 0 {
                1.0
            } else {
                agree as f64 / rows as f64
            },
            error_rate: if compared + errors == 0 {
                0.0
            } else {
                errors as f64 / (compared + errors) as f64
            },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyDelta {
    pub primary_mean_ms: f64,
    pub shadow_mean_ms: f64,
    /// Shadow minus primary, mean over compared requests.
    pub delta_mean_ms: f64,
    pub primary_p99_ms: f64,
    pub shadow_p99_ms: f64,
}

/// One kept request: what each side answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub request_id: String,
    pub max_abs_diff: f64,
    pub rows_disagree: u64,
    pub inputs: Vec<TensorPreview>,
    pub primary: Vec<TensorPreview>,
    pub shadow: Vec<TensorPreview>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorPreview {
    pub name: String,
    pub shape: Vec<i64>,
    /// The first values, as numbers (strings for BYTES).
    pub values: Vec<serde_json::Value>,
}

/// `greenbelt shadow report`: everything compared for one shadow version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub deployment: String,
    pub version: u64,
    pub counters: ShadowCounters,
    pub agreement: f64,
    pub error_rate: f64,
    pub abs_diff: Spread,
    pub rel_diff: Spread,
    pub latency: LatencyDelta,
    pub worst: Vec<Sample>,
}

struct Inner {
    counters: ShadowCounters,
    abs: Option<Histogram<u64>>,
    rel: Option<Histogram<u64>>,
    abs_sum: f64,
    rel_sum: f64,
    elements: u64,
    abs_max: f64,
    rel_max: f64,
    primary_us: Option<Histogram<u64>>,
    shadow_us: Option<Histogram<u64>>,
    primary_sum_ms: f64,
    shadow_sum_ms: f64,
    worst: Vec<Sample>,
}

/// Comparison state for one (deployment, shadow version).
pub struct ShadowStats {
    inner: Mutex<Inner>,
}

/// Two significant digits, auto-resizing (only an invalid precision fails).
fn histogram() -> Option<Histogram<u64>> {
    Histogram::new(2).ok()
}

fn record(h: &mut Option<Histogram<u64>>, v: u64) {
    if let Some(h) = h {
        let _ = h.record(v);
    }
}

fn quantile(h: &Option<Histogram<u64>>, q: f64) -> f64 {
    h.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64)
}

impl Default for ShadowStats {
    fn default() -> Self {
        ShadowStats {
            inner: Mutex::new(Inner {
                counters: ShadowCounters::default(),
                abs: histogram(),
                rel: histogram(),
                abs_sum: 0.0,
                rel_sum: 0.0,
                elements: 0,
                abs_max: 0.0,
                rel_max: 0.0,
                primary_us: histogram(),
                shadow_us: histogram(),
                primary_sum_ms: 0.0,
                shadow_sum_ms: 0.0,
                worst: Vec::new(),
            }),
        }
    }
}

fn scaled(x: f64) -> u64 {
    if x.is_finite() {
        (x * DIFF_SCALE).clamp(0.0, 1e18) as u64
    } else {
        1_000_000_000_000_000_000
    }
}

impl ShadowStats {
    pub fn counters(&self) -> ShadowCounters {
        self.inner.lock().map(|i| i.counters).unwrap_or_default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> Option<R> {
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    pub fn dropped(&self) {
        self.with(|i| i.counters.dropped += 1);
    }

    pub fn error(&self) {
        self.with(|i| i.counters.errors += 1);
    }

    fn compared(
        &self,
        c: &Comparison,
        job: &ShadowJob,
        shadow_out: &[Tensor],
        shadow_latency: Duration,
    ) {
        self.with(|i| {
            i.counters.compared += 1;
            i.counters.rows += c.rows;
            i.counters.rows_agree += c.rows_agree;
            for d in &c.abs {
                record(&mut i.abs, scaled(*d));
                i.abs_sum += d;
                i.abs_max = i.abs_max.max(*d);
            }
            for r in &c.rel {
                record(&mut i.rel, scaled(*r));
                i.rel_sum += r;
                i.rel_max = i.rel_max.max(*r);
            }
            i.elements += c.abs.len() as u64;
            let p = job.primary_latency.as_secs_f64() * 1000.0;
            let s = shadow_latency.as_secs_f64() * 1000.0;
            record(&mut i.primary_us, (p * 1000.0) as u64);
            record(&mut i.shadow_us, (s * 1000.0) as u64);
            i.primary_sum_ms += p;
            i.shadow_sum_ms += s;
            let disagree = c.rows - c.rows_agree;
            let score = (disagree, c.max_abs);
            let worth = i.worst.len() < WORST_KEPT
                || i.worst
                    .last()
                    .is_some_and(|w| score > (w.rows_disagree, w.max_abs_diff));
            if worth && (disagree > 0 || c.max_abs > 0.0) {
                i.worst.push(Sample {
                    request_id: job.request_id.clone(),
                    max_abs_diff: c.max_abs,
                    rows_disagree: disagree,
                    inputs: job.inputs.iter().map(preview).collect(),
                    primary: job.primary.iter().map(preview).collect(),
                    shadow: shadow_out.iter().map(preview).collect(),
                });
                i.worst.sort_by(|a, b| {
                    (b.rows_disagree, b.max_abs_diff)
                        .partial_cmp(&(a.rows_disagree, a.max_abs_diff))
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                i.worst.truncate(WORST_KEPT);
            }
        });
    }

    pub fn report(&self, deployment: &str, version: u64) -> ShadowReport {
        self.with(|i| {
            let w = i.counters.since(&ShadowCounters::default());
            let n = i.counters.compared.max(1) as f64;
            let e = i.elements.max(1) as f64;
            ShadowReport {
                deployment: deployment.to_string(),
                version,
                counters: i.counters,
                agreement: w.agreement,
                error_rate: w.error_rate,
                abs_diff: Spread {
                    mean: i.abs_sum / e,
                    p99: quantile(&i.abs, 0.99) / DIFF_SCALE,
                    max: i.abs_max,
                },
                rel_diff: Spread {
                    mean: i.rel_sum / e,
                    p99: quantile(&i.rel, 0.99) / DIFF_SCALE,
                    max: i.rel_max,
                },
                latency: LatencyDelta {
                    primary_mean_ms: i.primary_sum_ms / n,
                    shadow_mean_ms: i.shadow_sum_ms / n,
                    delta_mean_ms: (i.shadow_sum_ms - i.primary_sum_ms) / n,
                    primary_p99_ms: quantile(&i.primary_us, 0.99) / 1000.0,
                    shadow_p99_ms: quantile(&i.shadow_us, 0.99) / 1000.0,
                },
                worst: i.worst.clone(),
            }
        })
        .unwrap_or_default()
    }
}

fn preview(t: &Tensor) -> TensorPreview {
    let values = match &t.data {
        TensorData::Bytes(v) => v
            .iter()
            .take(SAMPLE_VALUES)
            .map(|b| serde_json::Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect(),
        other => numbers(other)
            .into_iter()
            .take(SAMPLE_VALUES)
            .map(|x| {
                serde_json::Number::from_f64(x)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            })
            .collect(),
    };
    TensorPreview {
        name: t.name.clone(),
        shape: t.shape.clone(),
        values,
    }
}

/// Every element as f64 (empty for BYTES).
fn numbers(d: &TensorData) -> Vec<f64> {
    match d {
        TensorData::Bool(v) => v.iter().map(|x| f64::from(u8::from(*x))).collect(),
        TensorData::Uint8(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Uint16(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Uint32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Uint64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorData::Int8(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int16(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Fp32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Fp64(v) => v.clone(),
        TensorData::Bytes(_) => Vec::new(),
    }
}

fn is_float(d: &TensorData) -> bool {
    matches!(
        d,
        TensorData::Fp16(_) | TensorData::Fp32(_) | TensorData::Fp64(_)
    )
}

/// What comparing one request's outputs found.
#[derive(Debug, Default, PartialEq)]
pub struct Comparison {
    pub rows: u64,
    pub rows_agree: u64,
    pub abs: Vec<f64>,
    pub rel: Vec<f64>,
    pub max_abs: f64,
}

/// Class of each row of `t`: the value itself for one value per row, else
/// the arg-max; a single float score per row is thresholded at 0.5.
fn classes(t: &Tensor) -> Vec<i64> {
    let values = numbers(&t.data);
    let rows = t.rows().max(1);
    let per_row = (values.len() / rows).max(1);
    values
        .chunks(per_row)
        .map(|row| {
            if per_row == 1 {
                let x = row.first().copied().unwrap_or(0.0);
                if is_float(&t.data) {
                    i64::from(x >= 0.5)
                } else {
                    x as i64
                }
            } else {
                row.iter()
                    .enumerate()
                    .fold((0usize, f64::NEG_INFINITY), |best, (i, x)| {
                        if *x > best.1 { (i, *x) } else { best }
                    })
                    .0 as i64
            }
        })
        .collect()
}

/// Compare a shadow's outputs with the primary's, output by output name.
pub fn compare(primary: &[Tensor], shadow: &[Tensor]) -> Comparison {
    let mut c = Comparison::default();
    let pairs: Vec<(&Tensor, &Tensor)> = primary
        .iter()
        .filter_map(|p| shadow.iter().find(|s| s.name == p.name).map(|s| (p, s)))
        .collect();
    let label = pairs
        .iter()
        .find(|(p, _)| !is_float(&p.data) && !matches!(p.data, TensorData::Bytes(_)))
        .or_else(|| pairs.iter().find(|(p, _)| is_float(&p.data)));
    let rows = primary.first().map_or(0, Tensor::rows) as u64;
    c.rows = rows;
    if let Some((p, s)) = label {
        let (a, b) = (classes(p), classes(s));
        c.rows_agree = if a.len() == b.len() && p.shape == s.shape {
            a.iter().zip(&b).filter(|(x, y)| x == y).count() as u64
        } else {
            0
        };
    } else if pairs.is_empty() {
        c.rows_agree = 0;
    } else {
        c.rows_agree = rows;
    }
    for (p, s) in pairs.iter().filter(|(p, _)| is_float(&p.data)) {
        let (a, b) = (numbers(&p.data), numbers(&s.data));
        if a.len() != b.len() {
            c.abs.push(f64::INFINITY);
            c.rel.push(f64::INFINITY);
            c.max_abs = f64::INFINITY;
            continue;
        }
        for (x, y) in a.iter().zip(&b) {
            let d = (x - y).abs();
            c.abs.push(d);
            c.rel.push(d / x.abs().max(1e-12));
            c.max_abs = c.max_abs.max(d);
        }
    }
    c
}

type StatsMap = HashMap<(Arc<str>, u64), Arc<ShadowStats>>;

/// The mirror: queue in, comparison state out.
pub struct Shadows {
    tx: mpsc::Sender<ShadowJob>,
    rx: Mutex<Option<mpsc::Receiver<ShadowJob>>>,
    table: StatsTable,
    metrics: Arc<Metrics>,
}

/// Comparison state per (deployment, shadow version), shared with the workers.
#[derive(Clone, Default)]
struct StatsTable(Arc<Mutex<StatsMap>>);

impl StatsTable {
    fn get(&self, deployment: &str, version: u64) -> Arc<ShadowStats> {
        let Ok(mut map) = self.0.lock() else {
            return Arc::new(ShadowStats::default());
        };
        map.entry((Arc::from(deployment), version))
            .or_default()
            .clone()
    }
}

/// What a shadow worker needs: a way to run models and where to record.
/// Not the request path's state.
struct Worker {
    executor: Executor,
    table: StatsTable,
    metrics: Arc<Metrics>,
    /// Idle-priority threads for shadow inference.
    pool: crate::compute::IdlePool,
    /// Shadow runs of recorded requests become spans of their trace.
    traces: Arc<crate::traces::Tracer>,
}

impl Shadows {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Shadows {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Shadows {
            tx,
            rx: Mutex::new(Some(rx)),
            table: StatsTable::default(),
            metrics,
        }
    }

    pub fn stats(&self, deployment: &str, version: u64) -> Arc<ShadowStats> {
        self.table.get(deployment, version)
    }

    /// Reports for every shadow of `deployment`, by version.
    pub fn reports(&self, deployment: &str) -> Vec<ShadowReport> {
        let entries: Vec<(u64, Arc<ShadowStats>)> = self
            .table
            .0
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|((d, _), _)| &**d == deployment)
                    .map(|((_, v), s)| (*v, s.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut out: Vec<ShadowReport> = entries
            .into_iter()
            .map(|(v, s)| s.report(deployment, v))
            .collect();
        out.sort_by_key(|r| r.version);
        out
    }

    /// Offer a copy without waiting; a full queue drops it (counted).
    pub fn offer(&self, job: ShadowJob) {
        let (dep, version) = (job.deployment.clone(), job.shadow.version);
        if self.tx.try_send(job).is_err() {
            self.stats(&dep, version).dropped();
            self.metrics.shadow(&dep, &version.to_string(), "dropped");
        }
    }

    /// Start the workers (once): at most `concurrency` shadow requests run
    /// at a time, through `executor`.
    pub fn spawn_workers(
        &self,
        executor: Executor,
        concurrency: usize,
        traces: Arc<crate::traces::Tracer>,
    ) {
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let worker = Arc::new(Worker {
            executor,
            table: self.table.clone(),
            metrics: self.metrics.clone(),
            pool: crate::compute::IdlePool::new(concurrency, concurrency),
            traces,
        });
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let worker = worker.clone();
                tokio::spawn(async move {
                    worker.run_one(job).await;
                    drop(permit);
                });
            }
        });
    }
}

impl Worker {
    async fn run_one(&self, job: ShadowJob) {
        let started = Instant::now();
        let wall = job.trace.as_ref().map(|_| std::time::SystemTime::now());
        let stats = self.table.get(&job.deployment, job.shadow.version);
        let version = job.shadow.version.to_string();
        let result = match self.execute(&job).await {
            Ok(r) => r,
            Err(skipped) => {
                // The CPU was busy with live requests: not the shadow's fault,
                // so not an error; counted as dropped.
                tracing::debug!(deployment = %job.deployment, version = %version, reason = ?skipped, "shadow request skipped");
                self.metrics.shadow(&job.deployment, &version, "starved");
                stats.dropped();
                return;
            }
        };
        let took = started.elapsed();
        let outcome = match &result {
            Ok(_) => crate::error::Outcome::Success,
            Err(e) => e.outcome(),
        };
        job.shadow
            .metrics
            .request(crate::metrics::Protocol::Rest, outcome, took, None);
        if let (Some(ids), Some(wall)) = (&job.trace, wall) {
            self.traces.child(
                ids,
                "shadow",
                wall,
                took,
                vec![
                    opentelemetry::KeyValue::new("greenbelt.model", job.deployment.to_string()),
                    opentelemetry::KeyValue::new("greenbelt.model_version", version.clone()),
                    opentelemetry::KeyValue::new("greenbelt.outcome", outcome.as_str()),
                ],
                result.as_ref().err().map(ToString::to_string),
            );
        }
        match result {
            Ok(out) => {
                let c = compare(&job.primary, &out.outputs);
                self.metrics.shadow(&job.deployment, &version, "compared");
                self.metrics.shadow_compared(
                    &job.deployment,
                    &version,
                    c.rows_agree,
                    c.rows - c.rows_agree,
                    c.max_abs,
                    took,
                );
                stats.compared(&c, &job, &out.outputs, took);
            }
            Err(e) => {
                tracing::debug!(deployment = %job.deployment, version = %version, error = %e, "shadow request failed");
                self.metrics.shadow(&job.deployment, &version, "error");
                stats.error();
            }
        }
    }

    /// Run the shadow version on the idle-priority pool, so a mirrored
    /// request only uses CPU that live requests leave free. A shadow with
    /// dynamic batching goes through its own batcher.
    async fn execute(
        &self,
        job: &ShadowJob,
    ) -> Result<Result<Executed, crate::error::ServeError>, crate::compute::Skipped> {
        if job.shadow.batcher.is_some() {
            return Ok(self
                .executor
                .execute_within_timeout(&job.shadow, job.inputs.clone())
                .await);
        }
        let runtime = job.shadow.runtime.clone();
        let inputs = job.inputs.clone();
        let rows = inputs.first().map_or(0, Tensor::rows);
        let (result, timing) = self
            .pool
            .run(self.executor.timeout, move || runtime.infer(&inputs))
            .await?;
        job.shadow
            .metrics
            .cost()
            .compute_call(timing.cpu, timing.compute);
        Ok(result.map_err(Into::into).map(|outputs| Executed {
            outputs,
            queue: timing.wait,
            compute: timing.compute,
            cpu: timing.cpu,
            batch_rows: rows,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: Vec<i64>, data: TensorData) -> Tensor {
        Tensor::new(name.to_string(), shape, data).unwrap()
    }

    #[test]
    fn labels_decide_agreement_and_scores_give_differences() {
        let p = vec![
            t("label", vec![3], TensorData::Int64(vec![0, 1, 1])),
            t(
                "probabilities",
                vec![3, 2],
                TensorData::Fp32(vec![0.9, 0.1, 0.2, 0.8, 0.4, 0.6]),
            ),
        ];
        let s = vec![
            t("label", vec![3], TensorData::Int64(vec![0, 1, 0])),
            t(
                "probabilities",
                vec![3, 2],
                TensorData::Fp32(vec![0.9, 0.1, 0.3, 0.7, 0.6, 0.4]),
            ),
        ];
        let c = compare(&p, &s);
        assert_eq!((c.rows, c.rows_agree), (3, 2));
        assert_eq!(c.abs.len(), 6);
        assert!((c.max_abs - 0.2).abs() < 1e-6, "{}", c.max_abs);
        // Identical outputs agree fully with zero difference.
        let same = compare(&p, &p);
        assert_eq!((same.rows_agree, same.max_abs), (3, 0.0));
    }

    #[test]
    fn scores_alone_use_argmax_or_threshold() {
        let p = vec![t(
            "y",
            vec![2, 2],
            TensorData::Fp32(vec![0.9, 0.1, 0.2, 0.8]),
        )];
        let s = vec![t(
            "y",
            vec![2, 2],
            TensorData::Fp32(vec![0.6, 0.4, 0.7, 0.3]),
        )];
        assert_eq!(compare(&p, &s).rows_agree, 1);
        let p = vec![t("p", vec![2, 1], TensorData::Fp64(vec![0.7, 0.2]))];
        let s = vec![t("p", vec![2, 1], TensorData::Fp64(vec![0.4, 0.1]))];
        assert_eq!(compare(&p, &s).rows_agree, 1);
        // A shape mismatch is a full disagreement and an infinite difference.
        let s = vec![t("p", vec![1, 1], TensorData::Fp64(vec![0.4]))];
        let c = compare(&p, &s);
        assert_eq!(c.rows_agree, 0);
        assert!(c.max_abs.is_infinite());
    }

    #[test]
    fn windows_and_reports() {
        let a = ShadowCounters {
            compared: 10,
            errors: 1,
            dropped: 0,
            rows: 10,
            rows_agree: 9,
        };
        let b = ShadowCounters {
            compared: 30,
            errors: 1,
            dropped: 2,
            rows: 30,
            rows_agree: 19,
        };
        let w = b.since(&a);
        assert_eq!((w.compared, w.errors, w.dropped, w.rows), (20, 0, 2, 20));
        assert!((w.agreement - 0.5).abs() < 1e-12);
        assert_eq!(
            ShadowCounters::default()
                .since(&ShadowCounters::default())
                .agreement,
            1.0
        );
    }
}
