//! Gradient-boosted decision trees for binary classification (log-loss) and
//! regression (squared error), histogram-based like LightGBM and
//! scikit-learn's `HistGradientBoostingClassifier` / `...Regressor`.
//!
//! Each round fits a depth-limited regression tree to the gradient and
//! hessian of the loss at the current raw scores, with Newton leaf values
//! `-learning_rate * G / (H + l2_regularization)`. Row subsampling (without
//! replacement, per tree) and feature subsampling (per tree) draw from a
//! [`SplitMix64`] seeded with `params.seed`, so a seed fixes the model bit for
//! bit.
//!
//! Thresholds, leaf values and the base score are `f32` values and features
//! are compared as `f32`, exactly what the exported ONNX graph does with its
//! `f32` input: [`GbdtModel::predict_proba`] and the exported model agree to
//! the rounding of the `f32` sum in the ONNX runtime.

mod bins;
mod tree;

use serde::{Deserialize, Serialize};

pub use tree::{Node, Tree};

use crate::data::{
    DenseMatrix, check_finite, check_labels, check_pair, require_both_classes, sigmoid,
};
use crate::error::TrainError;
use crate::rng::SplitMix64;
use bins::Binned;
use tree::GrowParams;

/// Training parameters; `Default` is a reasonable start for tabular data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GbdtParams {
    /// Boosting rounds (trees); >= 1.
    pub n_estimators: usize,
    /// Shrinkage applied to every leaf; in (0, 1].
    pub learning_rate: f64,
    /// Most splits from the root to a leaf; 1..=32.
    pub max_depth: usize,
    /// Fewest training rows (of the tree's sample) in a leaf; >= 1.
    pub min_samples_leaf: usize,
    /// Fewest summed hessian in a leaf (XGBoost's `min_child_weight`); >= 0.
    pub min_child_weight: f64,
    /// L2 penalty on leaf values (the `lambda` of XGBoost); >= 0.
    pub l2_regularization: f64,
    /// Fraction of rows each tree is grown on, drawn without replacement; in (0, 1].
    pub subsample: f64,
    /// Fraction of features each tree may split on; in (0, 1].
    pub colsample: f64,
    /// Most histogram bins per feature; 2..=256.
    pub max_bins: usize,
    /// Seed of the row and feature sampling.
    pub seed: u64,
}

impl Default for GbdtParams {
    fn default() -> Self {
        GbdtParams {
            n_estimators: 100,
            learning_rate: 0.1,
            max_depth: 3,
            min_samples_leaf: 20,
            min_child_weight: 1e-3,
            l2_regularization: 0.0,
            subsample: 1.0,
            colsample: 1.0,
            max_bins: 255,
            seed: 0,
        }
    }
}

impl GbdtParams {
    pub fn validate(&self) -> Result<(), TrainError> {
        let check = |ok: bool, name, value: String, reason| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::InvalidParam {
                    name,
                    value,
                    reason,
                })
            }
        };
        let fraction = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        check(
            self.n_estimators >= 1,
            "n_estimators",
            self.n_estimators.to_string(),
            "must be at least 1",
        )?;
        check(
            fraction(self.learning_rate),
            "learning_rate",
            self.learning_rate.to_string(),
            "must lie in (0, 1]",
        )?;
        check(
            (1..=32).contains(&self.max_depth),
            "max_depth",
            self.max_depth.to_string(),
            "must lie in 1..=32",
        )?;
        check(
            self.min_samples_leaf >= 1,
            "min_samples_leaf",
            self.min_samples_leaf.to_string(),
            "must be at least 1",
        )?;
        check(
            non_negative(self.min_child_weight),
            "min_child_weight",
            self.min_child_weight.to_string(),
            "must be a finite number >= 0",
        )?;
        check(
            non_negative(self.l2_regularization),
            "l2_regularization",
            self.l2_regularization.to_string(),
            "must be a finite number >= 0",
        )?;
        check(
            fraction(self.subsample),
            "subsample",
            self.subsample.to_string(),
            "must lie in (0, 1]",
        )?;
        check(
            fraction(self.colsample),
            "colsample",
            self.colsample.to_string(),
            "must lie in (0, 1]",
        )?;
        check(
            (2..=256).contains(&self.max_bins),
            "max_bins",
            self.max_bins.to_string(),
            "must lie in 2..=256",
        )
    }
}

/// The loss a model was boosted on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Binary classification: the raw score is the log-odds of class 1.
    #[default]
    LogLoss,
    /// Regression: the raw score is the prediction.
    SquaredError,
}

/// A fitted ensemble. The raw score is `base_score + sum of leaf values`;
/// for [`Objective::LogLoss`] `P(y = 1 | x) = sigmoid(raw)`, for
/// [`Objective::SquaredError`] the raw score is the prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GbdtModel {
    pub params: GbdtParams,
    /// Absent in models saved before regression existed: log-loss.
    #[serde(default)]
    pub objective: Objective,
    pub n_features: usize,
    /// The log-odds of the training base rate (log-loss) or the mean target
    /// (squared error); an `f32` value held as `f64`.
    pub base_score: f64,
    pub trees: Vec<Tree>,
}

impl GbdtModel {
    /// Check the structure (needed for models that were deserialized).
    pub fn check(&self) -> Result<(), TrainError> {
        let broken = |reason: String| TrainError::InvalidParam {
            name: "trees",
            value: reason,
            reason: "the model is malformed",
        };
        if !self.base_score.is_finite() {
            return Err(broken(format!("base_score {}", self.base_score)));
        }
        for (t, tree) in self.trees.iter().enumerate() {
            tree.check(self.n_features)
                .map_err(|e| broken(format!("tree {t}: {e}")))?;
        }
        Ok(())
    }

    /// The raw score (log-odds of class 1) per row.
    pub fn decision_function(&self, x: &DenseMatrix<'_>) -> Result<Vec<f64>, TrainError> {
        if x.cols() != self.n_features {
            return Err(TrainError::FeatureCount {
                what: "gbdt predict",
                expected: self.n_features,
                got: x.cols(),
            });
        }
        self.check()?;
        Ok(x.iter_rows()
            .map(|row| {
                self.trees
                    .iter()
                    .fold(self.base_score, |s, t| s + t.predict_row(row))
            })
            .collect())
    }

    /// The prediction per row: the target (squared error) or the
    /// probability of class 1 (log-loss).
    pub fn predict(&self, x: &DenseMatrix<'_>) -> Result<Vec<f64>, TrainError> {
        match self.objective {
            Objective::SquaredError => self.decision_function(x),
            Objective::LogLoss => self.predict_proba(x),
        }
    }

    /// The probability of class 1 per row (log-loss models only).
    pub fn predict_proba(&self, x: &DenseMatrix<'_>) -> Result<Vec<f64>, TrainError> {
        if self.objective != Objective::LogLoss {
            return Err(TrainError::InvalidParam {
                name: "objective",
                value: "squared_error".into(),
                reason: "a regression model has no probabilities; use predict",
            });
        }
        Ok(self
            .decision_function(x)?
            .into_iter()
            .map(sigmoid)
            .collect())
    }
}

/// Fit an ensemble to features `x` and 0/1 labels `y` (log-loss). Both
/// classes must occur.
pub fn fit(x: &DenseMatrix<'_>, y: &[f64], params: &GbdtParams) -> Result<GbdtModel, TrainError> {
    const WHAT: &str = "gbdt fit";
    params.validate()?;
    check_pair(WHAT, "features", x.rows(), "labels", y.len())?;
    let positives = check_labels(WHAT, y)?;
    require_both_classes(WHAT, y.len(), positives)?;
    let rate = positives as f64 / y.len() as f64;
    let base_score = f64::from((rate / (1.0 - rate)).ln() as f32);
    Ok(boost(x, y, params, Objective::LogLoss, base_score))
}

/// Fit an ensemble to features `x` and real-valued targets `y` with the
/// squared error: gradient `raw - y`, hessian 1, starting from the mean
/// target. Leaf values are then `-learning_rate * sum(raw - y) / (n + l2)`.
pub fn fit_regression(
    x: &DenseMatrix<'_>,
    y: &[f64],
    params: &GbdtParams,
) -> Result<GbdtModel, TrainError> {
    const WHAT: &str = "gbdt regression fit";
    params.validate()?;
    check_pair(WHAT, "features", x.rows(), "targets", y.len())?;
    check_finite("targets", y)?;
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let base_score = f64::from(mean as f32);
    if !base_score.is_finite() {
        return Err(TrainError::InvalidParam {
            name: "targets",
            value: mean.to_string(),
            reason: "the mean target does not fit in f32; rescale the target",
        });
    }
    Ok(boost(x, y, params, Objective::SquaredError, base_score))
}

/// The boosting loop shared by both objectives (inputs already checked).
fn boost(
    x: &DenseMatrix<'_>,
    y: &[f64],
    params: &GbdtParams,
    objective: Objective,
    base_score: f64,
) -> GbdtModel {
    let (n, f) = (x.rows(), x.cols());
    let binned = Binned::build(x, params.max_bins);
    let grow = GrowParams {
        max_depth: params.max_depth,
        min_samples_leaf: params.min_samples_leaf,
        min_child_weight: params.min_child_weight,
        l2: params.l2_regularization,
        learning_rate: params.learning_rate,
    };
    let n_rows = sample_size(n, params.subsample);
    let n_cols = sample_size(f, params.colsample);
    let mut rng = SplitMix64::new(params.seed);
    let mut raw = vec![base_score; n];
    let mut grad = vec![0.0; n];
    let mut hess = vec![0.0; n];
    let mut trees = Vec::with_capacity(params.n_estimators);
    for _ in 0..params.n_estimators {
        for i in 0..n {
            match objective {
                Objective::LogLoss => {
                    let p = sigmoid(raw[i]);
                    grad[i] = p - y[i];
                    hess[i] = p * (1.0 - p);
                }
                Objective::SquaredError => {
                    grad[i] = raw[i] - y[i];
                    hess[i] = 1.0;
                }
            }
        }
        let rows = if n_rows < n {
            rng.sample_indices(n, n_rows)
        } else {
            (0..n).collect()
        };
        let features = if n_cols < f {
            rng.sample_indices(f, n_cols)
        } else {
            (0..f).collect()
        };
        let grown = tree::grow(&binned, &grad, &hess, rows, &features, &grow);
        for (i, r) in raw.iter_mut().enumerate() {
            *r += grown.predict_binned(&binned, i);
        }
        trees.push(grown.tree);
    }
    GbdtModel {
        params: params.clone(),
        objective,
        n_features: f,
        base_score,
        trees,
    }
}

/// `round(fraction * n)`, at least 1 (for n >= 1).
fn sample_size(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).clamp(1.min(n), n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{log_loss, roc_auc};
    use crate::synthetic;

    fn small() -> GbdtParams {
        GbdtParams {
            n_estimators: 30,
            ..GbdtParams::default()
        }
    }

    #[test]
    fn learns_a_nonlinear_boundary() {
        let train = synthetic::disc(3000, 1);
        let test = synthetic::disc(2000, 2);
        let model = fit(&train.matrix().unwrap(), &train.y, &GbdtParams::default()).unwrap();
        let p = model.predict_proba(&test.matrix().unwrap()).unwrap();
        let auc = roc_auc(&test.y, &p).unwrap();
        assert!(auc > 0.85, "auc {auc}");
    }

    #[test]
    fn prediction_reproduces_the_training_scores() {
        // predict_proba (by value) and training (by bin) route rows alike.
        let data = synthetic::linear(800, 5, 4);
        let x = data.matrix().unwrap();
        let model = fit(&x, &data.y, &small()).unwrap();
        let p = model.predict_proba(&x).unwrap();
        let loss = log_loss(&data.y, &p).unwrap();
        let base = log_loss(&data.y, &vec![sigmoid(model.base_score); 800]).unwrap();
        assert!(loss < base * 0.8, "{loss} vs {base}");
        // Every threshold and leaf value is an f32.
        for tree in &model.trees {
            for node in &tree.nodes {
                if let Node::Leaf { value } = node {
                    assert_eq!(*value, f64::from(*value as f32));
                }
            }
        }
    }

    #[test]
    fn regression_fits_a_nonlinear_target_deterministically() {
        use crate::metrics::rmse;
        // Target: the disc's squared radius, plus the label noise as a bump.
        let make = |rows, seed| {
            let d = synthetic::disc(rows, seed);
            let y: Vec<f64> =
                d.x.chunks(4)
                    .zip(&d.y)
                    .map(|(r, l)| 3.0 * (r[0] * r[0] + r[1] * r[1]) + 0.1 * l)
                    .collect();
            (d, y)
        };
        let (train, y) = make(2000, 1);
        let (test, yt) = make(1000, 2);
        let params = GbdtParams {
            n_estimators: 60,
            subsample: 0.8,
            seed: 3,
            ..GbdtParams::default()
        };
        let x = train.matrix().unwrap();
        let model = fit_regression(&x, &y, &params).unwrap();
        assert_eq!(model.objective, Objective::SquaredError);
        assert_eq!(model, fit_regression(&x, &y, &params).unwrap());
        let mean = y.iter().sum::<f64>() / y.len() as f64;
        assert_eq!(model.base_score, f64::from(mean as f32));
        let p = model.predict(&test.matrix().unwrap()).unwrap();
        let err = rmse(&yt, &p).unwrap();
        let base = rmse(&yt, &vec![mean; yt.len()]).unwrap();
        assert!(err < 0.25 * base, "rmse {err} vs constant {base}");
        assert!(model.predict_proba(&x).is_err());
        assert!(matches!(
            fit_regression(&x, &vec![f64::INFINITY; 2000], &params),
            Err(TrainError::NotFinite { .. })
        ));
        // Old saved models (no objective field) read as log-loss.
        let mut json = serde_json::to_value(&model).unwrap();
        json.as_object_mut().unwrap().remove("objective");
        let old: GbdtModel = serde_json::from_value(json).unwrap();
        assert_eq!(old.objective, Objective::LogLoss);
    }

    #[test]
    fn seeded_sampling_is_deterministic() {
        let data = synthetic::disc(1000, 5);
        let x = data.matrix().unwrap();
        let params = GbdtParams {
            subsample: 0.7,
            colsample: 0.5,
            seed: 42,
            ..small()
        };
        let a = fit(&x, &data.y, &params).unwrap();
        let b = fit(&x, &data.y, &params).unwrap();
        assert_eq!(a, b);
        let c = fit(&x, &data.y, &GbdtParams { seed: 43, ..params }).unwrap();
        assert_ne!(a.trees, c.trees);
    }

    #[test]
    fn respects_depth_and_leaf_size() {
        let data = synthetic::disc(500, 9);
        let x = data.matrix().unwrap();
        let params = GbdtParams {
            max_depth: 2,
            min_samples_leaf: 100,
            n_estimators: 5,
            ..GbdtParams::default()
        };
        let model = fit(&x, &data.y, &params).unwrap();
        for tree in &model.trees {
            // Depth 2: at most 3 splits and 4 leaves; with 500 rows and 100
            // per leaf, at most 5 leaves anyway.
            assert!(tree.nodes.len() <= 7, "{tree:?}");
        }
        let leaves: Vec<usize> = {
            // Count training rows per leaf of the first tree.
            let tree = &model.trees[0];
            let mut counts = vec![0; tree.nodes.len()];
            for row in x.iter_rows() {
                let mut i = 0;
                while let Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } = &tree.nodes[i]
                {
                    i = if (row[*feature] as f32) <= *threshold {
                        *left
                    } else {
                        *right
                    };
                }
                counts[i] += 1;
            }
            counts.into_iter().filter(|c| *c > 0).collect()
        };
        assert!(leaves.iter().all(|&c| c >= 100), "{leaves:?}");
    }

    #[test]
    fn rejects_bad_params_and_malformed_models() {
        let data = synthetic::disc(100, 1);
        let x = data.matrix().unwrap();
        for bad in [
            GbdtParams {
                learning_rate: 0.0,
                ..GbdtParams::default()
            },
            GbdtParams {
                subsample: 1.5,
                ..GbdtParams::default()
            },
            GbdtParams {
                max_bins: 1,
                ..GbdtParams::default()
            },
        ] {
            assert!(matches!(
                fit(&x, &data.y, &bad),
                Err(TrainError::InvalidParam { .. })
            ));
        }
        let mut model = fit(&x, &data.y, &small()).unwrap();
        model.trees[0].nodes[0] = Node::Split {
            feature: 0,
            threshold: 0.0,
            left: 0,
            right: 0,
        };
        assert!(model.predict_proba(&x).is_err(), "a cycle must be refused");
        let json = r#"{"n_estimators": 10, "depth": 3}"#;
        assert!(serde_json::from_str::<GbdtParams>(json).is_err());
    }
}
