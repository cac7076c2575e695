//! `optimize`: derive a cheaper model from a registered one (int8 or
//! float16 by greenbelt-train's `quantize` rewrite, or a distilled student)
//! and judge it against the version it came from with the promotion
//! pipeline's gates (`pipeline::gates`, rules like `accuracy >=
//! parent.accuracy - 0.01`): holdout metrics and agreement, p50/p99 latency
//! of single-row calls on ONNX Runtime, artifact size. With a registry the
//! result is registered as a new version of the same model, with lineage to
//! its parent and the gate report; aliases never move (promotion stays a
//! deliberate step). Without one, plain files in and out.
//!
//! Both models are measured the same way in the same process: ONNX Runtime,
//! one intra-op thread, one session each; latency calls alternate between
//! them in blocks of 100 so both see the same machine load.

pub mod distill;
pub mod measure;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use greenbelt_core::Signature;
use greenbelt_registry::{ArtifactStore, ModelRef, ModelVersion, NewVersion, Registry};
use greenbelt_runtime::Runtimes;
use greenbelt_train::quantize::{CompressReport, MODE_FP16, MODE_INT8};
use serde::Serialize;
use serde_json::{Value, json};

use crate::pipeline::PipelineError;
use crate::pipeline::definition::Task;
use crate::pipeline::gates::{self, Rule, RuleResult};
pub use measure::{HoldoutSpec, LatencySpec};

/// A quantization mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// int8 dynamic quantization of MatMul/Gemm weights.
    Int8,
    /// float16 storage of float initializers.
    Fp16,
}

impl Quantization {
    /// The name in reports and lineage: `int8-dynamic` or `fp16`.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Int8 => MODE_INT8,
            Quantization::Fp16 => MODE_FP16,
        }
    }

    fn rewrite(self, bytes: &[u8]) -> Result<(Vec<u8>, CompressReport), PipelineError> {
        match self {
            Quantization::Int8 => greenbelt_train::quantize_int8(bytes),
            Quantization::Fp16 => greenbelt_train::to_fp16(bytes),
        }
        .map_err(PipelineError::Rewrite)
    }
}

/// How a derived model is judged.
#[derive(Debug, Clone, Default)]
pub struct Judge {
    /// Labelled rows for quality metrics and agreement; without them only
    /// size and latency are measured (on rows of zeros).
    pub holdout: Option<HoldoutSpec>,
    /// Default: read from the parent's outputs ([`measure::infer_task`]).
    pub task: Option<Task>,
    /// Gate rules; `None`: [`default_gates`].
    pub gates: Option<Vec<String>>,
    pub latency: LatencySpec,
}

/// The registry, artifact store and runtimes a registry run uses.
pub struct Context {
    pub registry: Registry,
    pub artifacts: ArtifactStore,
    pub runtimes: Runtimes,
    pub actor: String,
    /// Where model files are written while they are measured.
    pub workdir: PathBuf,
    pub progress: Arc<dyn Fn(&str) + Send + Sync>,
}

/// A model in a report: a registry version, or a file.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub sha256: String,
    pub size_bytes: usize,
}

impl Subject {
    fn version(v: &ModelVersion, size: usize) -> Subject {
        Subject {
            model: Some(v.model.clone()),
            version: Some(v.version),
            file: None,
            sha256: v.sha256.clone(),
            size_bytes: size,
        }
    }

    fn file(path: &Path, bytes: &[u8]) -> Subject {
        Subject {
            model: None,
            version: None,
            file: Some(path.display().to_string()),
            sha256: greenbelt_registry::artifacts::sha256_hex(bytes),
            size_bytes: bytes.len(),
        }
    }

    /// `model:version`, or the file.
    pub fn label(&self) -> String {
        match (&self.model, self.version, &self.file) {
            (Some(m), Some(v), _) => format!("{m}:{v}"),
            (_, _, Some(f)) => f.clone(),
            _ => "?".into(),
        }
    }
}

/// Parent and derived model measured the same way, and the gates.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub task: Task,
    /// The holdout (path, sha256, rows, label, features), when there is one.
    pub holdout: Option<Value>,
    /// The latency test.
    pub latency: Value,
    pub parent_metrics: BTreeMap<String, f64>,
    pub derived_metrics: BTreeMap<String, f64>,
    pub gates: Vec<RuleResult>,
    pub passed: bool,
    /// The derived model's inputs and outputs as ONNX Runtime reads them.
    #[serde(skip)]
    pub derived_signature: Option<Signature>,
}

/// The outcome of an optimization.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `int8-dynamic`, `fp16`, `distill-gbdt`, `distill-logreg`.
    pub optimization: String,
    pub parent: Subject,
    pub derived: Subject,
    /// The graph rewrite (quantization).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<CompressReport>,
    /// How the student was trained (distillation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<Value>,
    #[serde(flatten)]
    pub comparison: Comparison,
    /// Registered as a new version (aliases untouched).
    pub registered: bool,
}

/// The gates used when none are given: quality within a small margin of
/// the parent's (AUC 0.005, accuracy 0.01, RMSE 2%), p99 latency within
/// 25% of the parent's, and, for quantization, a smaller artifact.
pub fn default_gates(parent: &BTreeMap<String, f64>, smaller: bool) -> Vec<String> {
    let mut g = Vec::new();
    if parent.contains_key("roc_auc") {
        g.push("roc_auc >= parent.roc_auc - 0.005".to_string());
    }
    if parent.contains_key("accuracy") {
        g.push("accuracy >= parent.accuracy - 0.01".to_string());
    }
    if parent.contains_key("rmse") {
        g.push("rmse <= parent.rmse * 1.02".to_string());
    }
    if smaller {
        g.push("size_bytes < parent.size_bytes".to_string());
    }
    g.push("p99_ms <= parent.p99_ms * 1.25".to_string());
    g
}

/// Measure `parent` and `derived` (model files) and apply the gates.
/// `smaller`: the default gates require a smaller artifact.
pub async fn compare(
    runtimes: &Runtimes,
    parent: &Path,
    derived: &Path,
    judge: &Judge,
    smaller: bool,
) -> Result<Comparison, PipelineError> {
    let (runtimes, parent, derived, judge) = (
        runtimes.clone(),
        parent.to_path_buf(),
        derived.to_path_buf(),
        judge.clone(),
    );
    tokio::task::spawn_blocking(move || {
        compare_blocking(&runtimes, &parent, &derived, &judge, smaller)
    })
    .await
    .map_err(|e| PipelineError::Evaluate(format!("measuring task failed: {e}")))?
}

fn file_size(path: &Path) -> Result<f64, PipelineError> {
    std::fs::metadata(path)
        .map(|m| m.len() as f64)
        .map_err(|e| PipelineError::Evaluate(format!("{}: {e}", path.display())))
}

fn compare_blocking(
    runtimes: &Runtimes,
    parent_path: &Path,
    derived_path: &Path,
    judge: &Judge,
    smaller: bool,
) -> Result<Comparison, PipelineError> {
    let parent = measure::load(runtimes, parent_path)?;
    let derived = measure::load(runtimes, derived_path)?;
    // Names may differ (a student's input is `input`); types and shapes may not.
    let shapes = |m: &dyn greenbelt_runtime::Model| -> Vec<(greenbelt_core::DataType, Vec<i64>)> {
        m.signature()
            .inputs
            .iter()
            .map(|i| (i.datatype, i.shape.clone()))
            .collect()
    };
    if shapes(parent.as_ref()) != shapes(derived.as_ref()) {
        return Err(PipelineError::Evaluate(format!(
            "the derived model takes {:?}, its parent {:?}; they must take the same inputs to be compared",
            derived.signature().inputs,
            parent.signature().inputs
        )));
    }
    let task = judge
        .task
        .unwrap_or_else(|| measure::infer_task(parent.signature()));
    let holdout = judge
        .holdout
        .as_ref()
        .map(measure::read_holdout)
        .transpose()?;
    let mut pm = BTreeMap::from([("size_bytes".to_string(), file_size(parent_path)?)]);
    let mut dm = BTreeMap::from([("size_bytes".to_string(), file_size(derived_path)?)]);
    if let Some(h) = &holdout {
        let cols = h.features.len();
        let width = parent
            .signature()
            .inputs
            .first()
            .and_then(|i| i.shape.last().copied());
        if let Some(w) = width.filter(|w| *w >= 0 && *w as usize != cols) {
            return Err(PipelineError::Data(format!(
                "the model takes {w} features per row, the holdout gives {cols} ({}); name them with --features or the parent's lineage",
                h.features.join(", ")
            )));
        }
        let pp = measure::predict(parent.as_ref(), &h.x, cols, task)?;
        let dp = measure::predict(derived.as_ref(), &h.x, cols, task)?;
        pm.extend(measure::quality(task, &h.y, &pp)?);
        dm.extend(measure::quality(task, &h.y, &dp)?);
        dm.extend(measure::agreement(&pp, &dp));
    }
    let lat = measure::latency(
        &[parent.as_ref(), derived.as_ref()],
        holdout.as_ref(),
        &judge.latency,
    )?;
    for (m, l) in [&mut pm, &mut dm].into_iter().zip(lat) {
        m.extend(l);
    }
    let texts = judge
        .gates
        .clone()
        .unwrap_or_else(|| default_gates(&pm, smaller));
    let rules: Vec<Rule> = texts
        .iter()
        .map(|g| Rule::parse(g))
        .collect::<Result<_, _>>()?;
    let results = gates::evaluate(&rules, &dm, Some(&pm));
    let passed = results.iter().all(|r| r.outcome != "fail");
    Ok(Comparison {
        task,
        holdout: holdout.as_ref().map(measure::Holdout::describe),
        latency: json!({
            "backend": "onnxruntime",
            "intra_op_threads": 1,
            "batch_sizes": judge.latency.batch_sizes,
            "requests": judge.latency.requests,
            "warmup": judge.latency.warmup,
            "inputs": if holdout.is_some() { "holdout rows" } else { "zeros" },
        }),
        parent_metrics: pm,
        derived_metrics: dm,
        gates: results,
        passed,
        derived_signature: Some(derived.signature().clone()),
    })
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| PipelineError::Evaluate(format!("{}: {e}", dir.display())))?;
    }
    std::fs::write(path, bytes)
        .map_err(|e| PipelineError::Evaluate(format!("writing {}: {e}", path.display())))
}

/// Quantize the model file `input` into `output` and compare the two.
pub async fn quantize_file(
    runtimes: &Runtimes,
    input: &Path,
    output: &Path,
    mode: Quantization,
    judge: &Judge,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Report, PipelineError> {
    let bytes = std::fs::read(input)
        .map_err(|e| PipelineError::Data(format!("reading {}: {e}", input.display())))?;
    progress(&format!(
        "[1/2] rewrite {}: {}",
        input.display(),
        mode.name()
    ));
    let (derived, rewrite) = mode.rewrite(&bytes)?;
    write(output, &derived)?;
    progress(&format!(
        "[2/2] measure {} and {} on ONNX Runtime ({} single-row calls each)",
        input.display(),
        output.display(),
        judge.latency.requests
    ));
    let comparison = compare(runtimes, input, output, judge, true).await?;
    Ok(Report {
        optimization: mode.name().into(),
        parent: Subject::file(input, &bytes),
        derived: Subject::file(output, &derived),
        rewrite: Some(rewrite),
        training: None,
        comparison,
        registered: false,
    })
}

/// The parent's artifact, fetched (sha256 checked) into the work directory.
pub(crate) async fn fetch(
    ctx: &Context,
    v: &ModelVersion,
) -> Result<(Vec<u8>, PathBuf), PipelineError> {
    let bytes = ctx
        .artifacts
        .get(&v.artifact_uri, &v.sha256)
        .await?
        .to_vec();
    let path = ctx
        .workdir
        .join(format!("{}-{}-{}.onnx", v.model, v.version, &v.sha256));
    write(&path, &bytes)?;
    Ok((bytes, path))
}

/// The parent's feature columns (from its lineage) when the holdout names none.
pub(crate) fn with_parent_features(judge: &Judge, parent: &ModelVersion) -> Judge {
    let mut judge = judge.clone();
    if let Some(h) = judge.holdout.as_mut()
        && h.features.is_none()
        && let Some(list) = parent.lineage["features"].as_array()
    {
        let names: Vec<String> = list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if !names.is_empty() {
            h.features = Some(names);
        }
    }
    judge
}

/// Quantize a registered version: resolve `reference`, rewrite its
/// artifact, measure both, register the result as a new version of the
/// same model with lineage `{"parent": {model, version, sha256},
/// "optimization": ...}` and the gate report.
pub async fn quantize_registered(
    ctx: &Context,
    reference: &ModelRef,
    mode: Quantization,
    judge: &Judge,
) -> Result<Report, PipelineError> {
    let say = |s: &str| (ctx.progress)(s);
    say(&format!("[1/4] resolve {reference}"));
    let parent = ctx.registry.resolve(reference).await?;
    let (bytes, parent_file) = fetch(ctx, &parent).await?;
    say(&format!(
        "[2/4] rewrite {}:{} ({} bytes): {}",
        parent.model,
        parent.version,
        bytes.len(),
        mode.name()
    ));
    let (derived, rewrite) = mode.rewrite(&bytes)?;
    let derived_file = ctx.workdir.join(format!(
        "{}-{}-{}.onnx",
        parent.model,
        parent.version,
        mode.name()
    ));
    write(&derived_file, &derived)?;
    say(&format!(
        "[3/4] measure parent and derived on ONNX Runtime ({} single-row calls each{})",
        judge.latency.requests,
        judge
            .holdout
            .as_ref()
            .map(|h| format!(", holdout {}", h.path.display()))
            .unwrap_or_default()
    ));
    let judge = with_parent_features(judge, &parent);
    let comparison = compare(&ctx.runtimes, &parent_file, &derived_file, &judge, true).await?;
    say("[4/4] register the derived version");
    let params = json!({ "optimization": mode.name(), "rewrite": rewrite });
    let registered = register_derived(
        ctx,
        &parent,
        derived.clone(),
        Derivation {
            optimization: mode.name(),
            relation: "parent",
            params,
            lineage: json!({}),
        },
        &comparison,
    )
    .await?;
    let _ = std::fs::remove_file(&parent_file);
    let _ = std::fs::remove_file(&derived_file);
    Ok(Report {
        optimization: mode.name().into(),
        parent: Subject::version(&parent, bytes.len()),
        derived: Subject::version(&registered, derived.len()),
        rewrite: Some(rewrite),
        training: None,
        comparison,
        registered: true,
    })
}

/// How a derived version came about.
pub(crate) struct Derivation {
    /// `int8-dynamic`, `fp16`, `distill-gbdt`, ...
    pub(crate) optimization: &'static str,
    /// The lineage key naming the source version: `parent` or `teacher`.
    pub(crate) relation: &'static str,
    /// Stored as the version's params.
    pub(crate) params: Value,
    /// More lineage entries (an object), e.g. the training data of a student.
    pub(crate) lineage: Value,
}

/// Register `bytes` as a new version of `source`'s model.
pub(crate) async fn register_derived(
    ctx: &Context,
    source: &ModelVersion,
    bytes: Vec<u8>,
    how: Derivation,
    cmp: &Comparison,
) -> Result<ModelVersion, PipelineError> {
    let (uri, sha) = ctx.artifacts.put(bytes.into(), "onnx").await?;
    let mut signature = match &cmp.derived_signature {
        Some(s) => json!({ "inputs": s.inputs, "outputs": s.outputs }),
        None => json!({}),
    };
    if !source.signature["features"].is_null() {
        signature["features"] = source.signature["features"].clone();
    }
    let mut lineage = json!({
        "optimization": how.optimization,
        "holdout": cmp.holdout,
    });
    lineage[how.relation] = json!({
        "model": source.model,
        "version": source.version,
        "sha256": source.sha256,
    });
    if !source.lineage["features"].is_null() {
        lineage["features"] = source.lineage["features"].clone();
    }
    if let Value::Object(extra) = how.lineage {
        for (k, v) in extra {
            lineage[k.as_str()] = v;
        }
    }
    // Same inputs, (nearly) the same predictions: the source's drift
    // reference stays the one to monitor against.
    if !source.lineage["profile"].is_null() {
        lineage["profile"] = source.lineage["profile"].clone();
        lineage["profile_from"] = json!(format!("{}:{}", source.model, source.version));
    }
    let mut gate_report = json!({
        "kind": "optimize",
        "optimization": how.optimization,
        "passed": cmp.passed,
        "rules": cmp.gates,
        "holdout": cmp.holdout,
        "latency": cmp.latency,
    });
    gate_report[how.relation] = json!({
        "model": source.model,
        "version": source.version,
        "metrics": cmp.parent_metrics,
    });
    Ok(ctx
        .registry
        .register(NewVersion {
            model: source.model.clone(),
            artifact_uri: uri,
            sha256: sha,
            format: "onnx".into(),
            signature,
            params: how.params,
            metrics: serde_json::to_value(&cmp.derived_metrics).unwrap_or_default(),
            gate_report,
            lineage,
            tags: json!({
                "optimization": how.optimization,
                "status": if cmp.passed { "passed" } else { "rejected" },
            }),
            created_by: ctx.actor.clone(),
        })
        .await?)
}

impl Report {
    /// The human-readable form: parent and derived side by side.
    pub fn text(&self) -> String {
        let c = &self.comparison;
        let mut out = format!(
            "{}: {} -> {}{}\n",
            self.optimization,
            self.parent.label(),
            self.derived.label(),
            if self.registered {
                " (registered; aliases unchanged)"
            } else {
                ""
            }
        );
        if let Some(r) = &self.rewrite {
            if r.nodes_rewritten.is_empty() {
                out.push_str(&format!(
                    "  rewrite: {} initializers stored as float16 ({} values clamped)",
                    r.initializers_converted, r.values_clamped
                ));
            } else {
                let nodes: Vec<String> = r
                    .nodes_rewritten
                    .iter()
                    .map(|n| {
                        format!(
                            "{} \"{}\" [{}x{}]",
                            n.op_type, n.node, n.shape[0], n.shape[1]
                        )
                    })
                    .collect();
                out.push_str(&format!("  rewrite: quantized {}", nodes.join(", ")));
            }
            out.push_str(&format!(
                "; opset {} -> {}; {} left alone\n",
                r.opset_before,
                r.opset_after,
                r.skipped.len()
            ));
            for s in &r.skipped {
                out.push_str(&format!(
                    "    left alone: {} \"{}\": {}\n",
                    s.kind, s.name, s.reason
                ));
            }
        }
        if let Some(t) = &self.training {
            out.push_str(&format!(
                "  student: {} {}; fitted to the teacher's logits on {} rows: logit RMSE {:.4}, mean |Δp| {:.4}, max |Δp| {:.4}\n",
                t["student"]["student"].as_str().unwrap_or("?"),
                t["student"]["params"],
                t["rows"],
                t["logit_rmse"].as_f64().unwrap_or(f64::NAN),
                t["probability_mae"].as_f64().unwrap_or(f64::NAN),
                t["probability_max_abs"].as_f64().unwrap_or(f64::NAN),
            ));
        }
        match &c.holdout {
            Some(h) => out.push_str(&format!(
                "  holdout: {} ({} rows, label \"{}\"); task {}\n",
                h["path"].as_str().unwrap_or(""),
                h["rows"],
                h["label"].as_str().unwrap_or(""),
                format!("{:?}", c.task).to_lowercase()
            )),
            None => {
                out.push_str("  holdout: none (quality not measured; latency on rows of zeros)\n")
            }
        }
        out.push_str(&format!(
            "  latency: {} calls per model and batch size {} after {} warm-up, ONNX Runtime, 1 thread, alternating in blocks\n",
            c.latency["requests"], c.latency["batch_sizes"], c.latency["warmup"]
        ));
        out.push_str(&format!(
            "  {:<14} {:>14} {:>14} {:>12}\n",
            "metric", "parent", "derived", "change"
        ));
        let keys: std::collections::BTreeSet<&String> = c
            .parent_metrics
            .keys()
            .chain(c.derived_metrics.keys())
            .collect();
        for k in keys {
            let p = c.parent_metrics.get(k).copied();
            let d = c.derived_metrics.get(k).copied();
            out.push_str(&format!(
                "  {k:<14} {:>14} {:>14} {:>12}\n",
                p.map_or("-".into(), |v| number(k, v)),
                d.map_or("-".into(), |v| number(k, v)),
                change(k, p, d)
            ));
        }
        out.push_str("  gates:\n");
        for g in &c.gates {
            out.push_str(&format!(
                "    [{}] {}  (value {}, threshold {}){}\n",
                g.outcome.to_uppercase(),
                g.rule,
                g.value.map_or("-".into(), |v| number(&g.metric, v)),
                g.threshold.map_or("-".into(), |v| number(&g.metric, v)),
                g.note
                    .as_deref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default()
            ));
        }
        out.push_str(if c.passed {
            "  every gate passed"
        } else {
            "  a gate FAILED"
        });
        out
    }
}

fn number(metric: &str, v: f64) -> String {
    match metric {
        "size_bytes" => format!("{v:.0}"),
        m if m.contains("_ms") => format!("{v:.4}"),
        _ => format!("{v:.6}"),
    }
}

/// Relative change for size and latency, absolute for quality metrics.
fn change(metric: &str, parent: Option<f64>, derived: Option<f64>) -> String {
    let (Some(p), Some(d)) = (parent, derived) else {
        return String::new();
    };
    if metric == "size_bytes" || metric.contains("_ms") {
        if p == 0.0 {
            return String::new();
        }
        format!("{:+.1}%", 100.0 * (d - p) / p)
    } else {
        format!("{:+.6}", d - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gates_follow_what_the_parent_has() {
        let m = |keys: &[&str]| -> BTreeMap<String, f64> {
            keys.iter().map(|k| (k.to_string(), 1.0)).collect()
        };
        assert_eq!(
            default_gates(&m(&["roc_auc", "accuracy", "p99_ms"]), true),
            [
                "roc_auc >= parent.roc_auc - 0.005",
                "accuracy >= parent.accuracy - 0.01",
                "size_bytes < parent.size_bytes",
                "p99_ms <= parent.p99_ms * 1.25"
            ]
        );
        assert_eq!(
            default_gates(&m(&["rmse"]), false),
            [
                "rmse <= parent.rmse * 1.02",
                "p99_ms <= parent.p99_ms * 1.25"
            ]
        );
        for g in default_gates(&m(&["roc_auc", "accuracy", "rmse"]), true) {
            Rule::parse(&g).unwrap();
        }
    }

    #[test]
    fn changes_are_relative_for_costs_and_absolute_for_quality() {
        assert_eq!(change("size_bytes", Some(200.0), Some(100.0)), "-50.0%");
        assert_eq!(change("p99_ms", Some(1.0), Some(1.1)), "+10.0%");
        assert_eq!(change("p50_ms_batch64", Some(2.0), Some(1.0)), "-50.0%");
        assert_eq!(change("accuracy", Some(0.9), Some(0.89)), "-0.010000");
        assert_eq!(change("accuracy", None, Some(0.89)), "");
    }
}
