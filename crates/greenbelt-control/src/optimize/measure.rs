//! What `optimize` measures of a parent and a derived model, both on ONNX
//! Runtime with one intra-op thread: holdout quality (greenbelt-train's
//! scikit-learn-exact metrics), agreement with the parent, p50/p99 latency
//! of single-row calls, artifact size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use greenbelt_core::{DataType, Signature, Tensor, TensorData};
use greenbelt_runtime::{Backend, LoadOptions, Model, Runtimes};
use greenbelt_train::metrics::{self, BinaryMetrics};
use serde::Serialize;
use tokio::time::Instant;

use crate::pipeline::PipelineError;
use crate::pipeline::dataset::{self, Column};
use crate::pipeline::definition::Task;

/// A labelled data set to evaluate on: CSV or Parquet.
#[derive(Debug, Clone)]
pub struct HoldoutSpec {
    pub path: PathBuf,
    pub label: String,
    /// The model's input columns, in order; default: every numeric column
    /// but the label, in file order.
    pub features: Option<Vec<String>>,
}

/// The holdout, read.
#[derive(Debug, Clone)]
pub struct Holdout {
    pub spec: HoldoutSpec,
    pub features: Vec<String>,
    /// Row-major `[rows, features]`, as the model takes it.
    pub x: Vec<f32>,
    pub y: Vec<f64>,
    pub sha256: String,
}

impl Holdout {
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// What the report and the lineage record about it.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.spec.path.display().to_string(),
            "sha256": self.sha256,
            "rows": self.rows(),
            "label": self.spec.label,
            "features": self.features,
        })
    }
}

fn data_err(msg: impl Into<String>) -> PipelineError {
    PipelineError::Data(msg.into())
}

fn eval_err(msg: impl Into<String>) -> PipelineError {
    PipelineError::Evaluate(msg.into())
}

/// Read and check a holdout file.
pub fn read_holdout(spec: &HoldoutSpec) -> Result<Holdout, PipelineError> {
    let table = dataset::read(&spec.path)?;
    let file = spec.path.display();
    if table.rows == 0 {
        return Err(data_err(format!("{file}: no rows")));
    }
    let y = match table.columns.get(&spec.label) {
        Some(Column::Num(v)) => v.clone(),
        Some(Column::Text(_)) => {
            return Err(data_err(format!(
                "{file}: label column \"{}\" is text; it must be numeric (class index or target value)",
                spec.label
            )));
        }
        None => {
            return Err(data_err(format!(
                "{file}: no label column \"{}\"; columns are {:?}",
                spec.label,
                table.columns.keys().collect::<Vec<_>>()
            )));
        }
    };
    if let Some((i, v)) = y.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(data_err(format!(
            "{file}: label \"{}\" row {i} is {v}; every row needs a label",
            spec.label
        )));
    }
    let features = match &spec.features {
        Some(f) => f.clone(),
        None => column_order(&spec.path)?
            .into_iter()
            .filter(|c| *c != spec.label && matches!(table.columns.get(c), Some(Column::Num(_))))
            .collect(),
    };
    if features.is_empty() {
        return Err(data_err(format!(
            "{file}: no numeric feature columns besides the label \"{}\"",
            spec.label
        )));
    }
    let all: Vec<usize> = (0..table.rows).collect();
    let x = dataset::matrix(&table, &features, &all)
        .map_err(|e| data_err(format!("{file}: {e}")))?
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Ok(Holdout {
        spec: spec.clone(),
        features,
        x,
        y,
        sha256: table.sha256,
    })
}

/// The column names of a CSV or Parquet file, in file order.
fn column_order(path: &Path) -> Result<Vec<String>, PipelineError> {
    let file = path.display();
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet" | "pq") => {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            let f = std::fs::File::open(path).map_err(|e| data_err(format!("{file}: {e}")))?;
            let reader =
                SerializedFileReader::new(f).map_err(|e| data_err(format!("{file}: {e}")))?;
            Ok(reader
                .metadata()
                .file_metadata()
                .schema()
                .get_fields()
                .iter()
                .map(|f| f.name().to_string())
                .collect())
        }
        _ => {
            let mut reader =
                csv::Reader::from_path(path).map_err(|e| data_err(format!("{file}: {e}")))?;
            Ok(reader
                .headers()
                .map_err(|e| data_err(format!("{file}: {e}")))?
                .iter()
                .map(str::to_string)
                .collect())
        }
    }
}

/// Load `file` on ONNX Runtime, one intra-op thread, one instance.
pub fn load(runtimes: &Runtimes, file: &Path) -> Result<Arc<dyn Model>, PipelineError> {
    if runtimes.onnxruntime.is_none() {
        return Err(eval_err(format!(
            "optimize measures models on ONNX Runtime (the native engine and tract do not run MatMulInteger), which is not available: {}; set ORT_DYLIB_PATH or [runtime] onnxruntime_library",
            runtimes
                .onnxruntime_missing
                .as_deref()
                .unwrap_or("not found")
        )));
    }
    runtimes
        .load(
            file,
            &LoadOptions {
                backend: Backend::Onnxruntime,
                intra_op_threads: 1,
                instances: 1,
                ..LoadOptions::default()
            },
        )
        .map_err(|e| eval_err(format!("{}: {e}", file.display())))
}

/// The task a model's outputs say it does: a classifier has an INT64
/// output or a `probabilities` one; anything else is a regressor.
pub fn infer_task(sig: &Signature) -> Task {
    let classifier = sig.outputs.iter().any(|o| {
        o.datatype == DataType::Int64 || o.name == "probabilities" || o.name == "output_probability"
    });
    if classifier {
        Task::Classification
    } else {
        Task::Regression
    }
}

/// A model's answers on a batch of rows.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// Values per row: class probabilities (classifier) or 1 (regressor).
    pub width: usize,
    /// Row-major `[rows, width]`.
    pub values: Vec<f64>,
    /// Classifier: the predicted class of each row (the INT64 label output
    /// when the model has one, else the index of the largest probability).
    pub classes: Option<Vec<f64>>,
}

/// Run `model` on `x` (`[rows, cols]`) in batches of 1024.
pub fn predict(
    model: &dyn Model,
    x: &[f32],
    cols: usize,
    task: Task,
) -> Result<Predictions, PipelineError> {
    let sig = model.signature();
    let [input] = sig.inputs.as_slice() else {
        return Err(eval_err(format!(
            "the model takes {} inputs; optimize evaluates models with one FP32 [N, features] input",
            sig.inputs.len()
        )));
    };
    let float = |d: DataType| matches!(d, DataType::Fp32 | DataType::Fp64);
    let value_index = match task {
        Task::Classification => sig
            .outputs
            .iter()
            .position(|o| o.name == "probabilities" || o.name == "output_probability")
            .or_else(|| sig.outputs.iter().position(|o| float(o.datatype))),
        Task::Regression => sig.outputs.iter().position(|o| float(o.datatype)),
    }
    .ok_or_else(|| eval_err("the model has no floating-point output to evaluate"))?;
    let label_index = match task {
        Task::Classification => sig
            .outputs
            .iter()
            .position(|o| o.datatype == DataType::Int64),
        Task::Regression => None,
    };
    let cols = cols.max(1);
    let mut out = Predictions {
        width: 0,
        values: Vec::with_capacity(x.len() / cols),
        classes: label_index.map(|_| Vec::new()),
    };
    for chunk in x.chunks(cols * 1024) {
        let rows = chunk.len() / cols;
        let t = Tensor::new(
            input.name.clone(),
            vec![rows as i64, cols as i64],
            TensorData::Fp32(chunk.to_vec()),
        )
        .map_err(|e| eval_err(e.to_string()))?;
        let outputs = model.infer(&[t]).map_err(|e| eval_err(e.to_string()))?;
        let o = outputs
            .get(value_index)
            .ok_or_else(|| eval_err("the evaluated output is missing"))?;
        let values: Vec<f64> = match &o.data {
            TensorData::Fp32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::Fp64(v) => v.clone(),
            other => {
                return Err(eval_err(format!(
                    "output \"{}\" is {:?}, not floating point",
                    o.name,
                    other.datatype()
                )));
            }
        };
        let width = values.len() / rows.max(1);
        if width == 0 || values.len() != width * rows || (out.width != 0 && out.width != width) {
            return Err(eval_err(format!(
                "output \"{}\" has {} values for {rows} rows",
                o.name,
                values.len()
            )));
        }
        out.width = width;
        out.values.extend(values);
        if let (Some(i), Some(classes)) = (label_index, out.classes.as_mut()) {
            match outputs.get(i).map(|t| &t.data) {
                Some(TensorData::Int64(v)) if v.len() == rows => {
                    classes.extend(v.iter().map(|c| *c as f64));
                }
                _ => return Err(eval_err("the label output does not have one value per row")),
            }
        }
    }
    if task == Task::Classification && out.classes.is_none() {
        out.classes = Some(
            out.values
                .chunks(out.width.max(1))
                .map(|row| greenbelt_drift::model::argmax(row) as f64)
                .collect(),
        );
    }
    Ok(out)
}

/// Holdout metrics of `p`: for two-class probabilities and 0/1 labels every
/// binary metric (roc_auc, pr_auc, log_loss, accuracy, precision, recall,
/// f1); for more classes accuracy and (labels being class indices)
/// log_loss; for a regressor rmse and mae.
pub fn quality(
    task: Task,
    y: &[f64],
    p: &Predictions,
) -> Result<BTreeMap<String, f64>, PipelineError> {
    let fail = |e: greenbelt_train::TrainError| eval_err(e.to_string());
    let mut m = BTreeMap::new();
    match task {
        Task::Regression => {
            if p.width != 1 {
                return Err(eval_err(format!(
                    "a regressor must give one value per row; this one gives {}",
                    p.width
                )));
            }
            m.insert("rmse".into(), metrics::rmse(y, &p.values).map_err(fail)?);
            m.insert("mae".into(), metrics::mae(y, &p.values).map_err(fail)?);
        }
        Task::Classification => {
            let binary = p.width == 2 && y.iter().all(|v| *v == 0.0 || *v == 1.0);
            if binary {
                let p1: Vec<f64> = p.values.chunks(2).map(|r| r[1]).collect();
                let b = BinaryMetrics::evaluate(y, &p1).map_err(fail)?;
                m.extend([
                    ("roc_auc".to_string(), b.roc_auc),
                    ("pr_auc".to_string(), b.pr_auc),
                    ("log_loss".to_string(), b.log_loss),
                    ("accuracy".to_string(), b.accuracy),
                    ("precision".to_string(), b.precision),
                    ("recall".to_string(), b.recall),
                    ("f1".to_string(), b.f1),
                ]);
            } else {
                let classes = p.classes.as_deref().unwrap_or(&[]);
                m.insert(
                    "accuracy".into(),
                    metrics::multiclass_accuracy(y, classes).map_err(fail)?,
                );
                // log_loss needs the labels to be the probability columns' indices.
                if let Ok(l) = metrics::multiclass_log_loss(y, &p.values, p.width) {
                    m.insert("log_loss".into(), l);
                }
            }
        }
    }
    Ok(m)
}

/// How closely the derived model follows its parent on the same rows:
/// `agreement` (classifier: share of rows with the same predicted class)
/// and `max_abs_diff` (largest change of any probability or prediction).
pub fn agreement(parent: &Predictions, derived: &Predictions) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let max = parent
        .values
        .iter()
        .zip(&derived.values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    m.insert("max_abs_diff".into(), max);
    if let (Some(a), Some(b)) = (&parent.classes, &derived.classes)
        && !a.is_empty()
    {
        let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
        m.insert("agreement".into(), same as f64 / a.len() as f64);
    }
    m
}

/// The latency test: calls of `batch_sizes` rows each (batch 1 is the one
/// the gates see, as `p50_ms` / `p99_ms`; batch b > 1 is reported as
/// `p50_ms_batch<b>` / `p99_ms_batch<b>`), alternating between the two
/// models in blocks so that both see the same machine load.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySpec {
    /// Timed calls per model and batch size.
    pub requests: usize,
    /// Untimed calls per model and batch size first.
    pub warmup: usize,
    pub batch_sizes: Vec<usize>,
}

impl Default for LatencySpec {
    fn default() -> Self {
        LatencySpec {
            requests: 2000,
            warmup: 200,
            batch_sizes: vec![1],
        }
    }
}

/// Calls per block before switching to the other model.
const BLOCK: usize = 100;

/// The metric names of the latency at `batch` rows per call.
pub fn latency_keys(batch: usize) -> (String, String) {
    if batch == 1 {
        ("p50_ms".into(), "p99_ms".into())
    } else {
        (
            format!("p50_ms_batch{batch}"),
            format!("p99_ms_batch{batch}"),
        )
    }
}

/// Latency quantiles of each of `models` (same order), at every batch size
/// of `spec`, on inputs from [`latency_inputs`].
pub fn latency(
    models: &[&dyn Model],
    holdout: Option<&Holdout>,
    spec: &LatencySpec,
) -> Result<Vec<BTreeMap<String, f64>>, PipelineError> {
    let mut out = vec![BTreeMap::new(); models.len()];
    for &batch in &spec.batch_sizes {
        // Each model gets the same rows under its own input name.
        let inputs = models
            .iter()
            .map(|m| latency_inputs(m.signature(), holdout, batch))
            .collect::<Result<Vec<_>, _>>()?;
        let (p50, p99) = latency_keys(batch);
        for (m, samples) in out.iter_mut().zip(time_calls(models, &inputs, spec)?) {
            m.insert(p50.clone(), quantile(&samples, 0.5));
            m.insert(p99.clone(), quantile(&samples, 0.99));
        }
    }
    Ok(out)
}

/// Sorted milliseconds of `spec.requests` calls per model over its
/// `inputs` (round-robin), after `spec.warmup` untimed ones.
fn time_calls(
    models: &[&dyn Model],
    inputs: &[Vec<Tensor>],
    spec: &LatencySpec,
) -> Result<Vec<Vec<f64>>, PipelineError> {
    if inputs.iter().any(Vec::is_empty) || inputs.len() != models.len() {
        return Err(eval_err("no rows to time"));
    }
    let call = |m: &dyn Model, inputs: &[Tensor], i: usize| -> Result<(), PipelineError> {
        let t = inputs[i % inputs.len()].clone();
        m.infer(&[t])
            .map(|_| ())
            .map_err(|e| eval_err(format!("latency test: {e}")))
    };
    for (m, inputs) in models.iter().zip(inputs) {
        for i in 0..spec.warmup {
            call(*m, inputs, i)?;
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(spec.requests); models.len()];
    let mut done = 0;
    while done < spec.requests {
        let n = BLOCK.min(spec.requests - done);
        for ((m, inputs), out) in models.iter().zip(inputs).zip(samples.iter_mut()) {
            for i in done..done + n {
                let start = Instant::now();
                call(*m, inputs, i)?;
                out.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        done += n;
    }
    for s in &mut samples {
        s.sort_by(f64::total_cmp);
    }
    Ok(samples)
}

/// The nearest-rank quantile of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0.0)
}

/// Inputs of `batch` rows for the latency test: up to 64 different slices
/// of the holdout (its rows taken in a cycle), or one batch of zeros shaped
/// by the signature when there is no holdout.
pub fn latency_inputs(
    sig: &Signature,
    holdout: Option<&Holdout>,
    batch: usize,
) -> Result<Vec<Tensor>, PipelineError> {
    let [input] = sig.inputs.as_slice() else {
        return Err(eval_err(format!(
            "the model takes {} inputs; optimize times models with one FP32 input",
            sig.inputs.len()
        )));
    };
    if batch == 0 {
        return Err(eval_err("a batch size must be at least 1"));
    }
    if let Some(h) = holdout {
        let cols = h.features.len().max(1);
        let rows = h.rows();
        return (0..64.min(rows.max(1)))
            .map(|k| {
                let x: Vec<f32> = (0..batch)
                    .flat_map(|i| {
                        let r = (k * batch + i) % rows;
                        h.x[r * cols..(r + 1) * cols].iter().copied()
                    })
                    .collect();
                Tensor::new(
                    input.name.clone(),
                    vec![batch as i64, cols as i64],
                    TensorData::Fp32(x),
                )
                .map_err(|e| eval_err(e.to_string()))
            })
            .collect();
    }
    let shape: Vec<i64> = input
        .shape
        .iter()
        .enumerate()
        .map(|(i, d)| match (i, *d) {
            (0, d) if d < 0 => Ok(batch as i64),
            (_, d) if d >= 0 => Ok(d),
            _ => Err(eval_err(format!(
                "input \"{}\" has shape {:?} with a dynamic dimension besides the batch; pass --data so rows can be taken from it",
                input.name, input.shape
            ))),
        })
        .collect::<Result<_, _>>()?;
    if input.datatype != DataType::Fp32 {
        return Err(eval_err(format!(
            "input \"{}\" is {:?}; optimize times models with one FP32 input",
            input.name, input.datatype
        )));
    }
    let n = shape.iter().product::<i64>().max(0) as usize;
    let zeros = Tensor::new(input.name.clone(), shape, TensorData::Fp32(vec![0.0; n]))
        .map_err(|e| eval_err(e.to_string()))?;
    Ok(vec![zeros])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), 50.0);
        assert_eq!(quantile(&s, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }

    #[test]
    fn agreement_counts_same_classes_and_the_largest_change() {
        let a = Predictions {
            width: 2,
            values: vec![0.9, 0.1, 0.4, 0.6],
            classes: Some(vec![0.0, 1.0]),
        };
        let b = Predictions {
            width: 2,
            values: vec![0.8, 0.2, 0.55, 0.45],
            classes: Some(vec![0.0, 0.0]),
        };
        let m = agreement(&a, &b);
        assert_eq!(m["agreement"], 0.5);
        assert!((m["max_abs_diff"] - 0.15).abs() < 1e-12);
    }

    #[test]
    fn multiclass_quality_uses_accuracy_and_log_loss() {
        let p = Predictions {
            width: 3,
            values: vec![0.7, 0.2, 0.1, 0.1, 0.1, 0.8],
            classes: Some(vec![0.0, 2.0]),
        };
        let m = quality(Task::Classification, &[0.0, 1.0], &p).unwrap();
        assert_eq!(m["accuracy"], 0.5);
        let want = -(0.7f64.ln() + 0.1f64.ln()) / 2.0;
        assert!((m["log_loss"] - want).abs() < 1e-12);
        assert!(!m.contains_key("roc_auc"));
    }
}
