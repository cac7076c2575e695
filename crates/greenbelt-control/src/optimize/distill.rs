//! `optimize distill`: a student (greenbelt-train's `distill`: boosted
//! trees or a linear model fitted to the teacher's logits) trained on a
//! registered binary teacher's probabilities over a data set, judged
//! against the teacher exactly as a quantized version is judged against its
//! parent, and registered as a new version of the teacher's model with
//! lineage `{"teacher": {model, version, sha256}, "optimization":
//! "distill-gbdt" | "distill-logreg", "data": ...}`.

use std::path::PathBuf;

use greenbelt_registry::ModelRef;
use greenbelt_train::DenseMatrix;
use greenbelt_train::distill::{self, Distilled, Student};
use serde_json::json;

use super::measure::{self, HoldoutSpec};
use super::{Context, Derivation, Judge, Report, Subject};
use crate::pipeline::PipelineError;
use crate::pipeline::dataset;
use crate::pipeline::definition::Task;

/// Share of `data` kept out of training to judge the student when no
/// holdout file is given.
pub const HOLDOUT_FRACTION: f64 = 0.2;

/// Seed of that split.
pub const SPLIT_SEED: u64 = 7;

/// What to distill.
#[derive(Debug, Clone)]
pub struct DistillSpec {
    pub teacher: ModelRef,
    pub student: Student,
    /// Training rows (CSV or Parquet). The label column is used only to
    /// measure teacher and student on the holdout: the student learns the
    /// teacher's probabilities.
    pub data: HoldoutSpec,
    /// Rows to judge on; default: a seeded [`HOLDOUT_FRACTION`] of `data`,
    /// kept out of training.
    pub holdout: Option<PathBuf>,
    /// Gates and latency test (its holdout and task are set here).
    pub judge: Judge,
}

impl DistillSpec {
    fn optimization(&self) -> &'static str {
        match self.student {
            Student::Gbdt(_) => "distill-gbdt",
            Student::Logreg(_) => "distill-logreg",
        }
    }
}

/// The student and where the rows came from.
struct Fitted {
    distilled: Distilled,
    holdout: PathBuf,
    features: Vec<String>,
    data: serde_json::Value,
}

/// Distill a registered teacher: see the module docs.
pub async fn distill_registered(
    ctx: &Context,
    spec: &DistillSpec,
) -> Result<Report, PipelineError> {
    let say = |s: &str| (ctx.progress)(s);
    say(&format!("[1/5] resolve the teacher {}", spec.teacher));
    let teacher = ctx.registry.resolve(&spec.teacher).await?;
    let (bytes, teacher_file) = super::fetch(ctx, &teacher).await?;
    let with_features = super::with_parent_features(
        &Judge {
            holdout: Some(spec.data.clone()),
            ..Judge::default()
        },
        &teacher,
    );
    let data_spec = with_features.holdout.unwrap_or_else(|| spec.data.clone());
    say(&format!(
        "[2/5] read {} and the teacher's probabilities on it",
        data_spec.path.display()
    ));
    say(&format!(
        "[3/5] fit the {} student to the teacher's logits",
        spec.student.name()
    ));
    let fitted = {
        let (runtimes, teacher_file, workdir) = (
            ctx.runtimes.clone(),
            teacher_file.clone(),
            ctx.workdir.clone(),
        );
        let (spec, data_spec) = (spec.clone(), data_spec.clone());
        tokio::task::spawn_blocking(move || {
            fit(&runtimes, &teacher_file, &workdir, &spec, &data_spec)
        })
        .await
        .map_err(|e| PipelineError::Train(format!("distillation task failed: {e}")))??
    };
    let student_file = ctx.workdir.join(format!(
        "{}-{}-{}.onnx",
        teacher.model,
        teacher.version,
        spec.optimization()
    ));
    super::write(&student_file, &fitted.distilled.onnx)?;
    say(&format!(
        "[4/5] measure teacher and student on ONNX Runtime (holdout {})",
        fitted.holdout.display()
    ));
    let judge = Judge {
        holdout: Some(HoldoutSpec {
            path: fitted.holdout.clone(),
            label: data_spec.label.clone(),
            features: Some(fitted.features.clone()),
        }),
        task: Some(Task::Classification),
        ..spec.judge.clone()
    };
    let comparison =
        super::compare(&ctx.runtimes, &teacher_file, &student_file, &judge, false).await?;
    say("[5/5] register the student");
    let summary = serde_json::to_value(&fitted.distilled.summary).unwrap_or_default();
    let registered = super::register_derived(
        ctx,
        &teacher,
        fitted.distilled.onnx.clone(),
        Derivation {
            optimization: spec.optimization(),
            relation: "teacher",
            params: json!({ "optimization": spec.optimization(), "fit": summary }),
            lineage: json!({ "data": fitted.data }),
        },
        &comparison,
    )
    .await?;
    let _ = std::fs::remove_file(&teacher_file);
    let _ = std::fs::remove_file(&student_file);
    Ok(Report {
        optimization: spec.optimization().into(),
        parent: Subject::version(&teacher, bytes.len()),
        derived: Subject::version(&registered, fitted.distilled.onnx.len()),
        rewrite: None,
        training: Some(summary),
        comparison,
        registered: true,
    })
}

/// Read the data, split off the holdout (unless one is given), get the
/// teacher's probabilities on the training rows and fit the student.
fn fit(
    runtimes: &greenbelt_runtime::Runtimes,
    teacher_file: &std::path::Path,
    workdir: &std::path::Path,
    spec: &DistillSpec,
    data_spec: &HoldoutSpec,
) -> Result<Fitted, PipelineError> {
    let data = measure::read_holdout(data_spec)?;
    let cols = data.features.len();
    let rows = data.rows();
    let (train, holdout) = match &spec.holdout {
        Some(path) => ((0..rows).collect::<Vec<_>>(), path.clone()),
        None => {
            let n_holdout = ((rows as f64) * HOLDOUT_FRACTION).round() as usize;
            if n_holdout == 0 || n_holdout >= rows {
                return Err(PipelineError::Data(format!(
                    "{}: {rows} rows are too few to keep {HOLDOUT_FRACTION} of them as a holdout; give more rows or --holdout FILE",
                    data_spec.path.display()
                )));
            }
            let mut rng = greenbelt_train::rng::SplitMix64::new(SPLIT_SEED);
            let mut order: Vec<usize> = (0..rows).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let (held, kept) = order.split_at(n_holdout);
            let mut held = held.to_vec();
            held.sort_unstable();
            let mut kept = kept.to_vec();
            kept.sort_unstable();
            let x: Vec<f64> = held
                .iter()
                .flat_map(|r| {
                    data.x[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|v| f64::from(*v))
                })
                .collect();
            let y: Vec<f64> = held.iter().map(|r| data.y[*r]).collect();
            std::fs::create_dir_all(workdir)
                .map_err(|e| PipelineError::Data(format!("{}: {e}", workdir.display())))?;
            let path = workdir.join(format!(
                "distill-holdout-{}.csv",
                &data.sha256[..16.min(data.sha256.len())]
            ));
            dataset::write_csv(&path, &data.features, &data_spec.label, &x, &y)?;
            (kept, path)
        }
    };
    let x32: Vec<f32> = train
        .iter()
        .flat_map(|r| data.x[r * cols..(r + 1) * cols].iter().copied())
        .collect();
    let teacher = measure::load(runtimes, teacher_file)?;
    let width = teacher
        .signature()
        .inputs
        .first()
        .and_then(|i| i.shape.last().copied());
    if let Some(w) = width.filter(|w| *w >= 0 && *w as usize != cols) {
        return Err(PipelineError::Data(format!(
            "the teacher takes {w} features per row, {} gives {cols} ({}); name them with --features",
            data_spec.path.display(),
            data.features.join(", ")
        )));
    }
    let p = measure::predict(teacher.as_ref(), &x32, cols, Task::Classification)?;
    if p.width != 2 {
        return Err(PipelineError::Evaluate(format!(
            "distill needs a binary classifier teacher (probabilities [N, 2]); this one gives {} values per row",
            p.width
        )));
    }
    let p1: Vec<f64> = p.values.chunks(2).map(|r| r[1]).collect();
    let x: Vec<f64> = x32.iter().map(|v| f64::from(*v)).collect();
    let matrix =
        DenseMatrix::new(&x, train.len(), cols).map_err(|e| PipelineError::Train(e.to_string()))?;
    let distilled = distill::distill(&matrix, &p1, &data.features, &spec.student)
        .map_err(|e| PipelineError::Train(e.to_string()))?;
    Ok(Fitted {
        distilled,
        data: json!({
            "path": data_spec.path.display().to_string(),
            "sha256": data.sha256,
            "rows": rows,
            "train_rows": train.len(),
            "label": data_spec.label,
            "features": data.features,
            "holdout": if spec.holdout.is_some() { "file" } else { "split" },
            "split_seed": SPLIT_SEED,
        }),
        features: data.features,
        holdout,
    })
}
