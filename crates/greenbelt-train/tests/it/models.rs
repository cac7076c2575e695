//! Boosted trees on a problem a linear model cannot solve, against
//! scikit-learn's HistGradientBoostingClassifier as a reference point.

use greenbelt_train::metrics::roc_auc;
use greenbelt_train::{GbdtParams, LogRegParams, gbdt, logreg, synthetic};

use crate::golden_json;

fn params_from_golden() -> GbdtParams {
    let golden = golden_json();
    let p = &golden["gbdt"]["params"];
    let u = |k: &str| p[k].as_u64().unwrap() as usize;
    let f = |k: &str| p[k].as_f64().unwrap();
    GbdtParams {
        n_estimators: u("n_estimators"),
        learning_rate: f("learning_rate"),
        max_depth: u("max_depth"),
        min_samples_leaf: u("min_samples_leaf"),
        l2_regularization: f("l2_regularization"),
        max_bins: u("max_bins"),
        ..GbdtParams::default()
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // wall time of a blocking computation, not async code
fn gbdt_beats_chance_and_a_linear_model_on_a_disc_close_to_sklearn() {
    let golden = golden_json();
    let g = &golden["gbdt"];
    let train = synthetic::disc(3000, 1);
    let test = synthetic::disc(2000, 2);
    assert_eq!(
        train.y.iter().filter(|v| **v == 1.0).count() as u64,
        g["checksum"]["positives"].as_u64().unwrap()
    );
    let (x, xt) = (train.matrix().unwrap(), test.matrix().unwrap());

    let params = params_from_golden();
    let start = std::time::Instant::now();
    let model = gbdt::fit(&x, &train.y, &params).unwrap();
    let took = start.elapsed();
    let auc = roc_auc(&test.y, &model.predict_proba(&xt).unwrap()).unwrap();
    let sklearn_auc = g["sklearn_test_auc"].as_f64().unwrap();

    let start = std::time::Instant::now();
    let linear = logreg::fit(&x, &train.y, &LogRegParams::default()).unwrap();
    let took_lr = start.elapsed();
    let linear_auc = roc_auc(&test.y, &linear.predict_proba(&xt).unwrap()).unwrap();
    eprintln!(
        "gbdt: 3000 x 4, {} trees of depth {}: fit {took:?}, test AUC {auc:.4} (sklearn HistGradientBoosting {sklearn_auc:.4}); logreg fit {took_lr:?}, AUC {linear_auc:.4}",
        params.n_estimators, params.max_depth
    );
    assert!(auc > 0.85, "gbdt AUC {auc}");
    assert!(
        (auc - sklearn_auc).abs() < 0.02,
        "{auc} vs sklearn {sklearn_auc}"
    );
    assert!(auc > linear_auc + 0.2, "{auc} vs linear {linear_auc}");
}

#[test]
fn gbdt_is_deterministic_per_seed() {
    let data = synthetic::disc(2000, 3);
    let x = data.matrix().unwrap();
    let params = GbdtParams {
        n_estimators: 40,
        subsample: 0.8,
        colsample: 0.75,
        seed: 7,
        ..GbdtParams::default()
    };
    let a = gbdt::fit(&x, &data.y, &params).unwrap();
    let b = gbdt::fit(&x, &data.y, &params).unwrap();
    assert_eq!(a, b, "same seed, same model");
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    let pa = a.predict_proba(&x).unwrap();
    assert_eq!(pa, b.predict_proba(&x).unwrap());
    let c = gbdt::fit(&x, &data.y, &GbdtParams { seed: 8, ..params }).unwrap();
    assert_ne!(
        pa,
        c.predict_proba(&x).unwrap(),
        "another seed, another model"
    );
    // A model survives a JSON round trip.
    let back: gbdt::GbdtModel = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back.predict_proba(&x).unwrap(), pa);
}

#[test]
#[allow(clippy::disallowed_methods)] // wall time of a blocking computation, not async code
fn training_times_on_small_data() {
    for (rows, cols) in [(1_000, 10), (10_000, 20)] {
        let data = synthetic::linear(rows, cols, 1);
        let x = data.matrix().unwrap();
        let start = std::time::Instant::now();
        let lr = logreg::fit(&x, &data.y, &LogRegParams::default()).unwrap();
        let t_lr = start.elapsed();
        let start = std::time::Instant::now();
        let gb = gbdt::fit(&x, &data.y, &GbdtParams::default()).unwrap();
        let t_gb = start.elapsed();
        eprintln!(
            "{rows} x {cols}: logreg {t_lr:?} ({} steps), gbdt 100 trees depth 3 {t_gb:?} ({} nodes)",
            lr.n_iter,
            gb.trees.iter().map(|t| t.nodes.len()).sum::<usize>()
        );
    }
}
