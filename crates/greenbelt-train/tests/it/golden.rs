//! Metrics and logistic regression against scikit-learn 1.9.1.

use greenbelt_train::metrics::{self, BinaryMetrics};
use greenbelt_train::{
    DenseMatrix, GbdtParams, LinRegParams, LogRegParams, TrainError, gbdt, linreg, logreg,
    synthetic,
};
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
    if let Some(want) = sum["positives"].as_u64() {
        let positives = data.y.iter().filter(|v| **v == 1.0).count() as u64;
        assert_eq!(positives, want);
    } else {
        let total: f64 = data.y.iter().sum();
        let want = sum["y_fsum"].as_f64().unwrap();
        assert!(
            (total - want).abs() <= 1e-9 * want.abs().max(1.0),
            "targets: {total} vs {want}"
        );
    }
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

#[test]
fn linreg_matches_sklearn_ridge() {
    let golden = golden_json();
    let g = &golden["linreg"];
    let d = &g["data"];
    let n = |k: &str| d[k].as_u64().unwrap();
    let train = synthetic::regression(n("rows") as usize, n("cols") as usize, n("seed"));
    let test = synthetic::regression(n("test_rows") as usize, n("cols") as usize, n("test_seed"));
    check_data(&train, &g["checksum"]);
    check_data(&test, &g["test_checksum"]);
    let x = train.matrix().unwrap();
    let xt = test.matrix().unwrap();
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let params = LinRegParams {
            alpha: case["alpha"].as_f64().unwrap(),
            fit_intercept: case["fit_intercept"].as_bool().unwrap(),
        };
        let model = linreg::fit(&x, &train.y, &params).unwrap();
        let want: Vec<f64> = serde_json::from_value(case["coefficients"].clone()).unwrap();
        let want_b = case["intercept"].as_f64().unwrap();
        let mut worst_rel = 0.0f64;
        for (got, want) in model
            .coefficients
            .iter()
            .chain([&model.intercept])
            .zip(want.iter().chain([&want_b]))
        {
            let rel = (got - want).abs() / want.abs().max(1e-300);
            worst_rel = worst_rel.max(if *want == 0.0 { got.abs() } else { rel });
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1e-6),
                "{name}: got {got}, sklearn {want}"
            );
        }
        let test_rmse = metrics::rmse(&test.y, &model.predict(&xt).unwrap()).unwrap();
        let want_rmse = case["test_rmse"].as_f64().unwrap();
        assert!(
            (test_rmse - want_rmse).abs() <= 1e-9 * want_rmse,
            "{name}: {test_rmse} vs {want_rmse}"
        );
        eprintln!(
            "linreg {name}: max relative coefficient difference from sklearn {worst_rel:.1e}, test RMSE {test_rmse:.6}"
        );
    }
}

#[test]
fn gbdt_regression_is_close_to_sklearn_hist_gradient_boosting() {
    let golden = golden_json();
    let g = &golden["gbdt_regression"];
    let d = &g["data"];
    let n = |k: &str| d[k].as_u64().unwrap();
    let train = synthetic::regression(n("rows") as usize, n("cols") as usize, n("seed"));
    let test = synthetic::regression(n("test_rows") as usize, n("cols") as usize, n("test_seed"));
    check_data(&train, &g["checksum"]);
    let p = &g["params"];
    let params = GbdtParams {
        n_estimators: p["n_estimators"].as_u64().unwrap() as usize,
        learning_rate: p["learning_rate"].as_f64().unwrap(),
        max_depth: p["max_depth"].as_u64().unwrap() as usize,
        min_samples_leaf: p["min_samples_leaf"].as_u64().unwrap() as usize,
        l2_regularization: p["l2_regularization"].as_f64().unwrap(),
        max_bins: p["max_bins"].as_u64().unwrap() as usize,
        ..GbdtParams::default()
    };
    let model = gbdt::fit_regression(&train.matrix().unwrap(), &train.y, &params).unwrap();
    let rmse = metrics::rmse(&test.y, &model.predict(&test.matrix().unwrap()).unwrap()).unwrap();
    let sklearn = g["sklearn_test_rmse"].as_f64().unwrap();
    eprintln!(
        "gbdt regression test RMSE {rmse:.6}, sklearn HistGradientBoostingRegressor {sklearn:.6}"
    );
    // Same algorithm family, different binning and tie-breaking: within 5%.
    assert!(rmse <= sklearn * 1.05, "{rmse} vs sklearn {sklearn}");
}
