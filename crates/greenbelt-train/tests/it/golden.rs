//! Metrics and logistic regression against scikit-learn 1.9.1.

use greenbelt_train::metrics::{self, BinaryMetrics};
use greenbelt_train::{DenseMatrix, LogRegParams, TrainError, logreg, synthetic};
use serde_json::Value;

use crate::golden_json;

const METRIC_TOL: f64 = 1e-9;

fn floats_from_bits(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| f64::from_bits(b.as_u64().unwrap()))
        .collect()
}

type MetricFn = fn(&[f64], &[f64]) -> Result<f64, TrainError>;

#[test]
fn binary_metrics_match_sklearn_to_1e_9() {
    let golden = golden_json();
    let metrics: [(&str, MetricFn); 7] = [
        ("roc_auc", metrics::roc_auc),
        ("pr_auc", metrics::pr_auc),
        ("log_loss", metrics::log_loss),
        ("accuracy", metrics::accuracy),
        ("precision", metrics::precision),
        ("recall", metrics::recall),
        ("f1", metrics::f1),
    ];
    let mut worst = vec![0.0f64; metrics.len()];
    let cases = golden["metrics"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let y = floats_from_bits(&case["y_true_bits"]);
        let p = floats_from_bits(&case["y_prob_bits"]);
        for (k, (metric, f)) in metrics.iter().enumerate() {
            let got = f(&y, &p);
            match case[metric].as_f64() {
                Some(want) => {
                    let got = got.unwrap_or_else(|e| panic!("{name} {metric}: {e}"));
                    let diff = (got - want).abs();
                    worst[k] = worst[k].max(diff);
                    assert!(
                        diff <= METRIC_TOL,
                        "{name} {metric}: got {got:.17}, sklearn {want:.17}"
                    );
                }
                None => assert!(
                    matches!(got, Err(TrainError::SingleClass { .. })),
                    "{name} {metric}: sklearn leaves it undefined, got {got:?}"
                ),
            }
        }
        if case["roc_auc"].is_f64() && case["pr_auc"].is_f64() {
            let all = BinaryMetrics::evaluate(&y, &p).unwrap();
            assert!((all.f1 - case["f1"].as_f64().unwrap()).abs() <= METRIC_TOL);
        }
    }
    for ((metric, _), w) in metrics.iter().zip(&worst) {
        eprintln!(
            "{metric}: max |greenbelt - sklearn| over {} cases = {w:.1e}",
            cases.len()
        );
    }
}

#[test]
fn regression_metrics_match_sklearn_to_1e_9() {
    let golden = golden_json();
    for case in golden["regression"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let t = floats_from_bits(&case["y_true_bits"]);
        let p = floats_from_bits(&case["y_pred_bits"]);
        for (metric, got) in [
            ("rmse", metrics::rmse(&t, &p).unwrap()),
            ("mae", metrics::mae(&t, &p).unwrap()),
        ] {
            let want = case[metric].as_f64().unwrap();
            // Relative for the 1e6 outliers, absolute near zero.
            let tol = METRIC_TOL * want.abs().max(1.0);
            assert!(
                (got - want).abs() <= tol,
                "{name} {metric}: got {got:.17}, sklearn {want:.17}"
            );
        }
    }
}

/// The generator is reproduced in Python; check both made the same data.
fn check_data(data: &synthetic::Dataset, sum: &Value) {
    assert_eq!(data.rows as u64, sum["rows"].as_u64().unwrap());
    assert_eq!(data.cols as u64, sum["cols"].as_u64().unwrap());
    let positives = data.y.iter().filter(|v| **v == 1.0).count() as u64;
    assert_eq!(positives, sum["positives"].as_u64().unwrap());
    let first = floats_from_bits(&sum["first_row_bits"]);
    assert_eq!(&data.x[..data.cols], first.as_slice(), "bit for bit");
    let total: f64 = data.x.iter().sum();
    let want = sum["x_fsum"].as_f64().unwrap();
    assert!(
        (total - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{total} vs {want}"
    );
}

#[test]
fn logreg_matches_sklearn_logistic_regression() {
    let golden = golden_json();
    let g = &golden["logreg"];
    let d = &g["data"];
    let n = |k: &str| d[k].as_u64().unwrap();
    let train = synthetic::linear(n("rows") as usize, n("cols") as usize, n("seed"));
    let test = synthetic::linear(n("test_rows") as usize, n("cols") as usize, n("test_seed"));
    check_data(&train, &g["checksum"]);
    check_data(&test, &g["test_checksum"]);
    let x = train.matrix().unwrap();
    let xt = test.matrix().unwrap();
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let params = LogRegParams {
            c: case["c"].as_f64().unwrap(),
            standardize: case["standardize"].as_bool().unwrap(),
            tol: 1e-10,
            ..LogRegParams::default()
        };
        let model = logreg::fit(&x, &train.y, &params).unwrap();
        assert!(model.converged, "{name}: {model:?}");
        let want: Vec<f64> = serde_json::from_value(case["coefficients"].clone()).unwrap();
        let want_b = case["intercept"].as_f64().unwrap();
        let mut worst_rel = 0.0f64;
        for (got, want) in model
            .coefficients
            .iter()
            .chain([&model.intercept])
            .zip(want.iter().chain([&want_b]))
        {
            let rel = (got - want).abs() / want.abs();
            worst_rel = worst_rel.max(rel);
            assert!(rel <= 1e-3, "{name}: got {got}, sklearn {want}");
        }
        let auc = |m: &DenseMatrix<'_>, y: &[f64]| {
            metrics::roc_auc(y, &model.predict_proba(m).unwrap()).unwrap()
        };
        let (train_auc, test_auc) = (auc(&x, &train.y), auc(&xt, &test.y));
        assert!((train_auc - case["train_auc"].as_f64().unwrap()).abs() <= 1e-4);
        assert!((test_auc - case["test_auc"].as_f64().unwrap()).abs() <= 1e-4);
        eprintln!(
            "logreg {name}: {} Newton steps (sklearn newton-cholesky {}), max relative coefficient difference {worst_rel:.1e}, test AUC {test_auc:.6}",
            model.n_iter, case["n_iter"]
        );
    }
}
