//! Exported models, loaded and run by greenbelt-runtime: probabilities must
//! equal `predict_proba` within 1e-5, regressors' predictions `predict`
//! within 1e-5 relative. Each test also leaves its model and
//! expectations in `target/tmp/greenbelt-train/` for
//! `make_golden.py --check-onnx` (Python onnxruntime + the ONNX checker).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use greenbelt_core::{DataType, Tensor, TensorData};
use greenbelt_runtime::{Backend, LoadOptions, Model, RuntimeError, Runtimes};
use greenbelt_train::{
    DenseMatrix, GbdtParams, LinRegParams, LogRegParams, export_gbdt, export_linreg, export_logreg,
    gbdt, linreg, logreg, synthetic,
};

use crate::out_dir;

const TOL: f64 = 1e-5;

/// ONNX Runtime allows one environment per process: probe once, share it.
fn ort() -> Option<Runtimes> {
    static PROBED: OnceLock<Runtimes> = OnceLock::new();
    let rt = PROBED.get_or_init(|| Runtimes::probe(None)).clone();
    if rt.onnxruntime.is_none() {
        eprintln!(
            "SKIP onnxruntime checks: {} (set ORT_DYLIB_PATH to libonnxruntime.so >= 1.31)",
            rt.onnxruntime_missing.as_deref().unwrap_or("not found")
        );
        return None;
    }
    Some(rt)
}

fn tract_only() -> Runtimes {
    Runtimes {
        onnxruntime: None,
        onnxruntime_missing: Some("disabled for this test".into()),
    }
}

fn load(rt: &Runtimes, path: &Path, backend: Backend) -> Result<Arc<dyn Model>, RuntimeError> {
    rt.load(
        path,
        &LoadOptions {
            backend,
            ..LoadOptions::default()
        },
    )
}

/// Rows rounded to f32, the type the graph takes, so that predict_proba
/// sees the very input the runtime sees.
fn as_f32_rows(x: &[f64]) -> (Vec<f32>, Vec<f64>) {
    let f32s: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let back = f32s.iter().map(|v| f64::from(*v)).collect();
    (f32s, back)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("feature_{i}")).collect()
}

/// Write the model and what it must answer; return the model's path.
fn save(name: &str, bytes: &[u8], rows: &[f64], cols: usize, want: &[f64]) -> PathBuf {
    let dir = out_dir();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, bytes).unwrap();
    let input: Vec<&[f64]> = rows.chunks(cols).collect();
    let expect = serde_json::json!({ "input": input, "predict_proba": want });
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec(&expect).unwrap(),
    )
    .unwrap();
    path
}

/// Like [`save`], for a regressor: the JSON holds `"prediction"`.
fn save_regressor(name: &str, bytes: &[u8], rows: &[f64], cols: usize, want: &[f64]) -> PathBuf {
    let dir = out_dir();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, bytes).unwrap();
    let input: Vec<&[f64]> = rows.chunks(cols).collect();
    let expect = serde_json::json!({ "input": input, "prediction": want });
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec(&expect).unwrap(),
    )
    .unwrap();
    path
}

/// Run a regressor on `x` and compare its one output, `prediction` FP32
/// `[N, 1]`, with `want`.
fn check_regressor(what: &str, model: &dyn Model, x: &[f32], cols: usize, want: &[f64]) {
    let n = want.len();
    let sig = model.signature();
    assert_eq!(sig.inputs.len(), 1, "{what}: {sig:?}");
    assert_eq!(sig.inputs[0].name, "input");
    assert_eq!(sig.inputs[0].shape, vec![-1, cols as i64], "{what}");
    assert_eq!(sig.outputs.len(), 1, "{what}: {sig:?}");
    assert_eq!(sig.outputs[0].name, "prediction");
    assert_eq!(sig.outputs[0].datatype, DataType::Fp32);
    assert_eq!(sig.outputs[0].shape, vec![-1, 1], "{what}");
    let input = Tensor::new(
        "input",
        vec![n as i64, cols as i64],
        TensorData::Fp32(x.to_vec()),
    )
    .unwrap();
    let out = model.infer(&[input]).unwrap();
    assert_eq!(out[0].shape, vec![n as i64, 1], "{what}");
    let TensorData::Fp32(p) = &out[0].data else {
        panic!("{what}: prediction is {:?}", out[0].data.datatype())
    };
    let mut worst = 0.0f64;
    for (i, w) in want.iter().enumerate() {
        let err = (f64::from(p[i]) - w).abs() / w.abs().max(1.0);
        worst = worst.max(err);
        assert!(err <= TOL, "{what} row {i}: runtime {}, predict {w}", p[i]);
    }
    eprintln!(
        "{what} ({:?}): {n} rows, max relative |runtime - predict| = {worst:.1e}",
        model.backend()
    );
}

/// Run the model on `x` (f32, row-major) and compare with `want` (P(class 1)).
fn check_runs(what: &str, model: &dyn Model, x: &[f32], cols: usize, want: &[f64]) {
    let n = want.len();
    let sig = model.signature();
    assert_eq!(sig.inputs.len(), 1, "{what}: {sig:?}");
    assert_eq!(sig.inputs[0].name, "input");
    assert_eq!(sig.inputs[0].datatype, DataType::Fp32);
    assert_eq!(sig.inputs[0].shape, vec![-1, cols as i64], "{what}");
    let out_names: Vec<&str> = sig.outputs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(out_names, ["label", "probabilities"], "{what}");

    let input = Tensor::new(
        "input",
        vec![n as i64, cols as i64],
        TensorData::Fp32(x.to_vec()),
    )
    .unwrap();
    let out = model.infer(&[input]).unwrap();
    let find = |name: &str| out.iter().find(|t| t.name == name).unwrap();
    let (label, probs) = (find("label"), find("probabilities"));
    assert_eq!(label.shape, vec![n as i64], "{what}");
    assert_eq!(probs.shape, vec![n as i64, 2], "{what}");
    let TensorData::Int64(labels) = &label.data else {
        panic!("{what}: label is {:?}", label.data.datatype())
    };
    let TensorData::Fp32(p) = &probs.data else {
        panic!("{what}: probabilities are {:?}", probs.data.datatype())
    };
    let mut worst = 0.0f64;
    for (i, w) in want.iter().enumerate() {
        let (p0, p1) = (f64::from(p[2 * i]), f64::from(p[2 * i + 1]));
        worst = worst.max((p1 - w).abs());
        assert!(
            (p1 - w).abs() <= TOL,
            "{what} row {i}: runtime {p1}, predict_proba {w}"
        );
        assert!((p0 + p1 - 1.0).abs() <= 1e-6, "{what} row {i}: {p0} + {p1}");
        if (w - 0.5).abs() > 1e-4 {
            assert_eq!(labels[i], i64::from(*w > 0.5), "{what} row {i}: p = {w}");
        }
    }
    eprintln!(
        "{what} ({:?}): {n} rows, max |runtime - predict_proba| = {worst:.1e}",
        model.backend()
    );
}

#[test]
fn logreg_export_runs_on_tract_and_onnxruntime() {
    let cols = 5;
    let train = synthetic::linear(800, cols, 21);
    let model = logreg::fit(&train.matrix().unwrap(), &train.y, &LogRegParams::default()).unwrap();
    let bytes = export_logreg(&model, &names(cols)).unwrap();
    assert_eq!(
        bytes,
        export_logreg(&model, &names(cols)).unwrap(),
        "byte-deterministic"
    );

    let test = synthetic::linear(257, cols, 22);
    let (x32, x) = as_f32_rows(&test.x);
    let want = model
        .predict_proba(&DenseMatrix::new(&x, 257, cols).unwrap())
        .unwrap();
    let path = save("logreg", &bytes, &x, cols, &want);

    let tract = load(&tract_only(), &path, Backend::Tract).unwrap();
    check_runs("logreg", tract.as_ref(), &x32, cols, &want);
    // backend = auto picks the native engine for this graph.
    let auto = load(&tract_only(), &path, Backend::Auto).unwrap();
    assert_eq!(auto.backend(), Backend::Native);
    check_runs("logreg native", auto.as_ref(), &x32, cols, &want);
    // One row: the batch dimension is dynamic.
    check_runs(
        "logreg 1 row",
        tract.as_ref(),
        &x32[..cols],
        cols,
        &want[..1],
    );

    let Some(rt) = ort() else { return };
    let ort_model = load(&rt, &path, Backend::Onnxruntime).unwrap();
    check_runs("logreg", ort_model.as_ref(), &x32, cols, &want);
}

#[test]
fn gbdt_export_runs_on_the_native_engine_and_onnxruntime() {
    let train = synthetic::disc(3000, 31);
    let params = GbdtParams {
        n_estimators: 60,
        max_depth: 4,
        subsample: 0.8,
        seed: 5,
        ..GbdtParams::default()
    };
    let model = gbdt::fit(&train.matrix().unwrap(), &train.y, &params).unwrap();
    let cols = model.n_features;
    let bytes = export_gbdt(&model, &names(cols)).unwrap();
    assert_eq!(
        bytes,
        export_gbdt(&model, &names(cols)).unwrap(),
        "byte-deterministic"
    );

    // Test rows, plus rows that sit exactly on split thresholds (the
    // boundary case of BRANCH_LEQ).
    let test = synthetic::disc(500, 32);
    let mut rows = test.x.clone();
    for tree in model.trees.iter().take(20) {
        if let gbdt::Node::Split {
            feature, threshold, ..
        } = &tree.nodes[0]
        {
            let mut row = vec![0.25; cols];
            row[*feature] = f64::from(*threshold);
            rows.extend(row);
        }
    }
    let n = rows.len() / cols;
    let (x32, x) = as_f32_rows(&rows);
    let want = model
        .predict_proba(&DenseMatrix::new(&x, n, cols).unwrap())
        .unwrap();
    let path = save("gbdt", &bytes, &x, cols, &want);

    // backend = auto runs trees on the native engine, never on tract.
    let native = load(&tract_only(), &path, Backend::Auto).unwrap();
    assert_eq!(native.backend(), Backend::Native);
    check_runs("gbdt native", native.as_ref(), &x32, cols, &want);

    let Some(rt) = ort() else { return };
    let ort_model = load(&rt, &path, Backend::Onnxruntime).unwrap();
    check_runs("gbdt", ort_model.as_ref(), &x32, cols, &want);

    // Trees that are a single leaf (no split leaves 300 rows a side).
    let stumps = GbdtParams {
        n_estimators: 3,
        min_samples_leaf: 300,
        ..GbdtParams::default()
    };
    let small = synthetic::disc(400, 33);
    let model = gbdt::fit(&small.matrix().unwrap(), &small.y, &stumps).unwrap();
    assert!(model.trees.iter().all(|t| t.nodes.len() == 1));
    let bytes = export_gbdt(&model, &names(cols)).unwrap();
    let (x32, x) = as_f32_rows(&small.x[..40]);
    let want = model
        .predict_proba(&DenseMatrix::new(&x, 10, cols).unwrap())
        .unwrap();
    let path = save("gbdt_single_leaf", &bytes, &x, cols, &want);
    let native = load(&tract_only(), &path, Backend::Native).unwrap();
    check_runs(
        "gbdt single-leaf native",
        native.as_ref(),
        &x32,
        cols,
        &want,
    );
    let ort_model = load(&rt, &path, Backend::Onnxruntime).unwrap();
    check_runs(
        "gbdt single-leaf trees",
        ort_model.as_ref(),
        &x32,
        cols,
        &want,
    );
}

#[test]
fn linreg_export_runs_on_tract_and_onnxruntime() {
    let cols = 5;
    let train = synthetic::regression(800, cols, 41);
    let model = linreg::fit(&train.matrix().unwrap(), &train.y, &LinRegParams::default()).unwrap();
    let bytes = export_linreg(&model, &names(cols)).unwrap();
    assert_eq!(bytes, export_linreg(&model, &names(cols)).unwrap());
    let test = synthetic::regression(257, cols, 42);
    let (x32, x) = as_f32_rows(&test.x);
    let want = model
        .predict(&DenseMatrix::new(&x, 257, cols).unwrap())
        .unwrap();
    let path = save_regressor("linreg", &bytes, &x, cols, &want);
    let auto = load(&tract_only(), &path, Backend::Auto).unwrap();
    assert_eq!(auto.backend(), Backend::Native);
    check_regressor("linreg", auto.as_ref(), &x32, cols, &want);
    let tract = load(&tract_only(), &path, Backend::Tract).unwrap();
    check_regressor("linreg tract", tract.as_ref(), &x32, cols, &want);
    check_regressor(
        "linreg 1 row",
        auto.as_ref(),
        &x32[..cols],
        cols,
        &want[..1],
    );
    let Some(rt) = ort() else { return };
    let ort_model = load(&rt, &path, Backend::Onnxruntime).unwrap();
    check_regressor("linreg", ort_model.as_ref(), &x32, cols, &want);
}

#[test]
fn gbdt_regression_export_runs_on_onnxruntime() {
    let cols = 4;
    let train = synthetic::regression(3000, cols, 51);
    let params = GbdtParams {
        n_estimators: 50,
        max_depth: 4,
        subsample: 0.8,
        seed: 9,
        ..GbdtParams::default()
    };
    let model = gbdt::fit_regression(&train.matrix().unwrap(), &train.y, &params).unwrap();
    let bytes = export_gbdt(&model, &names(cols)).unwrap();
    assert_eq!(bytes, export_gbdt(&model, &names(cols)).unwrap());
    let test = synthetic::regression(500, cols, 52);
    let (x32, x) = as_f32_rows(&test.x);
    let want = model
        .predict(&DenseMatrix::new(&x, 500, cols).unwrap())
        .unwrap();
    let path = save_regressor("gbdt_regression", &bytes, &x, cols, &want);
    let native = load(&tract_only(), &path, Backend::Auto).unwrap();
    assert_eq!(native.backend(), Backend::Native);
    check_regressor("gbdt regression native", native.as_ref(), &x32, cols, &want);
    let Some(rt) = ort() else { return };
    let ort_model = load(&rt, &path, Backend::Onnxruntime).unwrap();
    check_regressor("gbdt regression", ort_model.as_ref(), &x32, cols, &want);
}
