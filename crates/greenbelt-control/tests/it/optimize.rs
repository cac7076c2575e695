//! `optimize quantize` against a real SQLite registry: the MLP fixture is
//! quantized to int8 and float16, measured against its parent on ONNX
//! Runtime, and registered as new versions with lineage and a gate report;
//! a tree model and a corrupt artifact are refused and leave the registry
//! as it was. Skipped with a SKIP line where ONNX Runtime is not found.
//!
//! The holdout is 600 rows of N(0, 2²) features labelled by the FP32 model
//! itself with every tenth label moved to the next class, so the parent's
//! accuracy is about 0.9 and a derived model's can be compared with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use greenbelt_control::optimize::{
    self, Context, HoldoutSpec, Judge, LatencySpec, Quantization, measure,
};
use greenbelt_control::pipeline::PipelineError;
use greenbelt_core::{Tensor, TensorData};
use greenbelt_registry::{ArtifactStore, ModelRef, NewVersion, Registry};
use greenbelt_runtime::Runtimes;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
        .join("1/model.onnx")
}

fn ort() -> Option<Runtimes> {
    let rt = Runtimes::probe(None);
    if rt.onnxruntime.is_none() {
        eprintln!(
            "SKIP optimize tests: {} (set ORT_DYLIB_PATH to libonnxruntime.so >= 1.31)",
            rt.onnxruntime_missing.as_deref().unwrap_or("not found")
        );
        return None;
    }
    Some(rt)
}

fn features() -> Vec<String> {
    (0..30).map(|i| format!("f{i:02}")).collect()
}

/// The holdout CSV: `id`, `y`, then the features in reverse order (the
/// parent's lineage names the order the model takes).
fn write_holdout(rt: &Runtimes, path: &Path) {
    let rows = 600;
    let mut rng = greenbelt_train::rng::SplitMix64::new(3);
    let x: Vec<f32> = (0..rows * 30)
        .map(|_| {
            let (u1, u2) = (rng.next_f64().max(1e-300), rng.next_f64());
            (2.0 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    let model = measure::load(rt, &fixture("mlp")).unwrap();
    let out = model
        .infer(&[Tensor::new("input", vec![rows as i64, 30], TensorData::Fp32(x.clone())).unwrap()])
        .unwrap();
    let TensorData::Int64(labels) = &out[0].data else {
        panic!("label output")
    };
    let mut csv = String::from("id,y");
    for f in features().iter().rev() {
        csv.push(',');
        csv.push_str(f);
    }
    csv.push('\n');
    for (i, row) in x.chunks(30).enumerate() {
        let y = if i % 10 == 0 {
            (labels[i] + 1) % 3
        } else {
            labels[i]
        };
        csv.push_str(&format!("{i},{y}"));
        for v in row.iter().rev() {
            csv.push_str(&format!(",{v}"));
        }
        csv.push('\n');
    }
    std::fs::write(path, csv).unwrap();
}

struct Project {
    dir: tempfile::TempDir,
    ctx: Context,
}

async fn project(rt: Runtimes) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&format!("sqlite://{}/registry.db", dir.path().display()))
        .await
        .unwrap();
    let artifacts = ArtifactStore::open(dir.path().join("artifacts").to_str().unwrap()).unwrap();
    let ctx = Context {
        registry,
        artifacts,
        runtimes: rt,
        actor: "test".into(),
        workdir: dir.path().join("work"),
        progress: Arc::new(|_| {}),
    };
    Project { dir, ctx }
}

impl Project {
    async fn register(&self, model: &str, bytes: Vec<u8>, lineage: serde_json::Value) -> i64 {
        let (uri, sha) = self.ctx.artifacts.put(bytes.into(), "onnx").await.unwrap();
        let v = self
            .ctx
            .registry
            .register(NewVersion {
                model: model.into(),
                artifact_uri: uri,
                sha256: sha,
                lineage,
                created_by: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .version;
        self.ctx
            .registry
            .set_alias(model, "champion", v, "test", "first")
            .await
            .unwrap();
        v
    }
}

fn judge(holdout: &Path) -> Judge {
    Judge {
        holdout: Some(HoldoutSpec {
            path: holdout.to_path_buf(),
            label: "y".into(),
            features: None,
        }),
        latency: LatencySpec {
            requests: 300,
            warmup: 30,
            batch_sizes: vec![1, 16],
        },
        ..Judge::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantized_versions_are_registered_with_lineage_and_gate_reports() {
    let Some(rt) = ort() else { return };
    let p = project(rt.clone()).await;
    let holdout = p.dir.path().join("holdout.csv");
    write_holdout(&rt, &holdout);
    let original = std::fs::read(fixture("mlp")).unwrap();
    let v1 = p
        .register("mlp", original.clone(), json!({ "features": features() }))
        .await;
    let parent = p.ctx.registry.version("mlp", v1).await.unwrap();

    let r = optimize::quantize_registered(
        &p.ctx,
        &"mlp@champion".parse::<ModelRef>().unwrap(),
        Quantization::Int8,
        &judge(&holdout),
    )
    .await
    .unwrap();
    eprintln!("{}", r.text());
    assert!(r.registered);
    assert_eq!((r.parent.version, r.derived.version), (Some(1), Some(2)));
    let (pm, dm) = (&r.comparison.parent_metrics, &r.comparison.derived_metrics);
    assert!((pm["accuracy"] - 0.9).abs() < 0.02, "{pm:?}");
    assert!((dm["accuracy"] - pm["accuracy"]).abs() <= 0.02, "{dm:?}");
    assert!(dm["agreement"] >= 0.95, "{dm:?}");
    assert!(dm["size_bytes"] < pm["size_bytes"]);
    for m in [
        "log_loss",
        "p50_ms",
        "p99_ms",
        "p50_ms_batch16",
        "p99_ms_batch16",
    ] {
        assert!(pm.contains_key(m) && dm.contains_key(m), "{m}");
    }
    let rules: Vec<(&str, &str)> = r
        .comparison
        .gates
        .iter()
        .map(|g| (g.rule.as_str(), g.outcome.as_str()))
        .collect();
    // Quality and size pass; the latency gate's outcome depends on the machine.
    assert_eq!(rules[0], ("accuracy >= parent.accuracy - 0.01", "pass"));
    assert_eq!(rules[1], ("size_bytes < parent.size_bytes", "pass"));
    assert_eq!(rules[2].0, "p99_ms <= parent.p99_ms * 1.25");

    let v2 = p.ctx.registry.version("mlp", 2).await.unwrap();
    assert_eq!(
        v2.lineage["parent"],
        json!({ "model": "mlp", "version": 1, "sha256": parent.sha256 })
    );
    assert_eq!(v2.lineage["optimization"], "int8-dynamic");
    assert_eq!(v2.lineage["features"], json!(features()));
    assert_eq!(v2.lineage["holdout"]["rows"], 600);
    assert_eq!(v2.gate_report["kind"], "optimize");
    assert_eq!(v2.gate_report["passed"], json!(r.comparison.passed));
    assert_eq!(v2.gate_report["rules"].as_array().unwrap().len(), 3);
    // Stored as JSON text: equal to the last bit or two.
    let near =
        |stored: &serde_json::Value, want: f64| (stored.as_f64().unwrap() - want).abs() < 1e-12;
    assert!(near(
        &v2.gate_report["parent"]["metrics"]["accuracy"],
        pm["accuracy"]
    ));
    assert!(near(&v2.metrics["agreement"], dm["agreement"]));
    assert_eq!(
        v2.params["rewrite"]["nodes_rewritten"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(v2.signature["inputs"][0]["name"], "input");
    let stored = p
        .ctx
        .artifacts
        .get(&v2.artifact_uri, &v2.sha256)
        .await
        .unwrap();
    assert_eq!(stored.len() as f64, dm["size_bytes"]);
    assert_eq!(
        p.ctx.registry.alias("mlp", "champion").await.unwrap(),
        Some(1),
        "aliases never move"
    );

    // float16 of version 1 by number: version 3, about the same predictions.
    let r = optimize::quantize_registered(
        &p.ctx,
        &"mlp:1".parse::<ModelRef>().unwrap(),
        Quantization::Fp16,
        &judge(&holdout),
    )
    .await
    .unwrap();
    assert_eq!(r.derived.version, Some(3));
    assert!(r.comparison.derived_metrics["max_abs_diff"] < 2e-3);
    assert_eq!(r.comparison.derived_metrics["agreement"], 1.0);
    let v3 = p.ctx.registry.version("mlp", 3).await.unwrap();
    assert_eq!(v3.lineage["parent"]["version"], 1);
    assert_eq!(v3.lineage["optimization"], "fp16");
    assert_eq!(v3.tags["optimization"], "fp16");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_with_nothing_to_quantize_and_corrupt_artifacts_are_refused() {
    let Some(rt) = ort() else { return };
    let p = project(rt).await;
    p.register(
        "trees",
        std::fs::read(fixture("forest")).unwrap(),
        json!({}),
    )
    .await;
    p.register("junk", b"not an onnx model".to_vec(), json!({}))
        .await;
    let quick = Judge {
        latency: LatencySpec {
            requests: 10,
            warmup: 1,
            ..LatencySpec::default()
        },
        ..Judge::default()
    };
    let run = |name: &'static str, mode| {
        let ctx = &p.ctx;
        let quick = quick.clone();
        async move {
            optimize::quantize_registered(ctx, &name.parse::<ModelRef>().unwrap(), mode, &quick)
                .await
        }
    };
    let err = run("trees@champion", Quantization::Int8).await.unwrap_err();
    assert!(matches!(err, PipelineError::Rewrite(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "model rewrite: nothing to quantize: no MatMul/Gemm with constant float weights"
    );
    let err = run("trees", Quantization::Fp16).await.unwrap_err();
    assert!(err.to_string().contains("no FLOAT initializers"), "{err}");
    let err = run("junk:1", Quantization::Int8).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("model rewrite: not a usable ONNX model"),
        "{err}"
    );
    let err = run("trees@prod", Quantization::Int8).await.unwrap_err();
    assert!(err.to_string().contains("has no alias \"prod\""), "{err}");
    for model in ["trees", "junk"] {
        assert_eq!(
            p.ctx.registry.versions(model).await.unwrap().len(),
            1,
            "{model}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_files_are_quantized_without_a_registry() {
    let Some(rt) = ort() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp-int8.onnx");
    let judge = Judge {
        gates: Some(vec!["size_bytes < parent.size_bytes".into()]),
        latency: LatencySpec {
            requests: 50,
            warmup: 5,
            ..LatencySpec::default()
        },
        ..Judge::default()
    };
    let r = optimize::quantize_file(
        &rt,
        &fixture("mlp"),
        &out,
        Quantization::Int8,
        &judge,
        &|_| {},
    )
    .await
    .unwrap();
    assert!(!r.registered && r.comparison.passed, "{}", r.text());
    assert_eq!(
        r.derived.size_bytes as u64,
        std::fs::metadata(&out).unwrap().len()
    );
    assert!(r.comparison.holdout.is_none());
    // No holdout: size and latency only (on a row of zeros).
    let keys: Vec<&str> = r
        .comparison
        .derived_metrics
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["p50_ms", "p99_ms", "size_bytes"]);
    let text = r.text();
    assert!(text.contains("quantized MatMul"), "{text}");
    assert!(
        text.contains("[PASS] size_bytes < parent.size_bytes"),
        "{text}"
    );
}

/// A teacher trained here (greenbelt-train's logistic regression on
/// `synthetic::linear`, 3 features, so its logits stay moderate) and 1,000
/// fresh rows of the same problem with their labels: `y`, `f0`, `f1`, `f2`.
fn teacher_and_data(path: &Path) -> Vec<u8> {
    use greenbelt_train::{logreg, synthetic};
    let names: Vec<String> = (0..3).map(|i| format!("f{i}")).collect();
    let train = synthetic::linear(2000, 3, 1);
    let model = logreg::fit(&train.matrix().unwrap(), &train.y, &Default::default()).unwrap();
    let data = synthetic::linear(1000, 3, 2);
    let mut csv = String::from("y,f0,f1,f2\n");
    for (row, y) in data.x.chunks(3).zip(&data.y) {
        csv.push_str(&format!("{y},{},{},{}\n", row[0], row[1], row[2]));
    }
    std::fs::write(path, csv).unwrap();
    greenbelt_train::export_logreg(&model, &names).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn students_are_distilled_from_a_registered_teacher() {
    use greenbelt_control::optimize::distill::{DistillSpec, distill_registered};
    use greenbelt_train::distill::Student;
    let Some(rt) = ort() else { return };
    let p = project(rt.clone()).await;
    let data = p.dir.path().join("data.csv");
    let teacher = teacher_and_data(&data);
    p.register("lr", teacher, json!({})).await;
    let parent = p.ctx.registry.version("lr", 1).await.unwrap();
    let spec = |student| DistillSpec {
        teacher: "lr@champion".parse().unwrap(),
        student,
        data: HoldoutSpec {
            path: data.clone(),
            label: "y".into(),
            features: None,
        },
        holdout: None,
        judge: Judge {
            latency: LatencySpec {
                requests: 100,
                warmup: 10,
                ..LatencySpec::default()
            },
            ..Judge::default()
        },
    };

    // A linear teacher: the linear student recovers it almost exactly.
    let r = distill_registered(
        &p.ctx,
        &spec(Student::Logreg(greenbelt_train::LinRegParams {
            alpha: 1e-6,
            ..Default::default()
        })),
    )
    .await
    .unwrap();
    eprintln!("{}", r.text());
    assert_eq!(r.optimization, "distill-logreg");
    assert_eq!(r.derived.version, Some(2));
    let dm = &r.comparison.derived_metrics;
    assert!(dm["max_abs_diff"] < 1e-3, "{dm:?}");
    assert_eq!(dm["agreement"], 1.0);
    assert_eq!(r.training.as_ref().unwrap()["rows"], 800, "80% trains");
    let h = r.comparison.holdout.as_ref().unwrap();
    assert_eq!(h["rows"], 200);
    let v2 = p.ctx.registry.version("lr", 2).await.unwrap();
    assert_eq!(
        v2.lineage["teacher"],
        json!({ "model": "lr", "version": 1, "sha256": parent.sha256 })
    );
    assert_eq!(v2.lineage["optimization"], "distill-logreg");
    assert_eq!(v2.lineage["data"]["train_rows"], 800);
    assert_eq!(v2.lineage["data"]["holdout"], "split");
    assert_eq!(v2.gate_report["teacher"]["version"], 1);

    // Trees approximate it: close, not exact.
    let r = distill_registered(
        &p.ctx,
        &spec(Student::Gbdt(greenbelt_train::GbdtParams {
            n_estimators: 60,
            ..Default::default()
        })),
    )
    .await
    .unwrap();
    eprintln!("{}", r.text());
    assert_eq!(r.derived.version, Some(3));
    let (pm, dm) = (&r.comparison.parent_metrics, &r.comparison.derived_metrics);
    assert!(dm["roc_auc"] > pm["roc_auc"] - 0.1, "{pm:?} {dm:?}");
    assert!(dm["agreement"] > 0.8, "{dm:?}");

    // A three-class teacher has no logit to match.
    p.register("mlp", std::fs::read(fixture("mlp")).unwrap(), json!({}))
        .await;
    let mut s = spec(Student::Logreg(Default::default()));
    s.teacher = "mlp:1".parse().unwrap();
    let err = distill_registered(&p.ctx, &s)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the teacher takes 30 features per row")
            && err.contains("gives 3 (f0, f1, f2)"),
        "{err}"
    );
    let wide = p.dir.path().join("wide.csv");
    let mut csv = (0..30)
        .map(|i| format!("f{i}"))
        .collect::<Vec<_>>()
        .join(",")
        + ",y\n";
    for r in 0..50 {
        csv += &(0..30)
            .map(|i| ((r * 7 + i) % 11).to_string())
            .collect::<Vec<_>>()
            .join(",");
        csv += &format!(",{}\n", r % 3);
    }
    std::fs::write(&wide, csv).unwrap();
    s.data.path = wide;
    let err = distill_registered(&p.ctx, &s)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("distill needs a binary classifier teacher"),
        "{err}"
    );
}
