//! Evaluation metrics, defined as scikit-learn 1.9 defines them, and checked
//! against it to 1e-9 by the golden tests (`tests/golden/make_golden.py`).
//!
//! Classification is binary: labels are 0.0 or 1.0, predictions are the
//! probability (or, for the ranking metrics, any finite score) of class 1.
//! Every function returns an error, never a panic or a NaN, for empty input,
//! length mismatch, non-finite values, labels other than 0/1, and
//! probabilities outside [0, 1].
//!
//! | here | scikit-learn |
//! | --- | --- |
//! | [`roc_auc`] | `roc_auc_score`; one class only: an error (sklearn warns, returns NaN) |
//! | [`pr_auc`] | `average_precision_score` (step-wise, not trapezoidal); no positives: an error |
//! | [`log_loss`] | `log_loss(labels=[0, 1])`, clipping to `[eps, 1 - eps]`, eps = `f64::EPSILON` |
//! | [`accuracy`], [`precision`], [`recall`], [`f1`] | the `*_score` functions on `p > 0.5`, `zero_division=0` |
//! | [`rmse`], [`mae`] | `root_mean_squared_error`, `mean_absolute_error` |
//! | [`multiclass_accuracy`] | `accuracy_score` on class indices |
//! | [`multiclass_log_loss`] | `log_loss(labels=range(k))` on an `[N, k]` probability matrix, clipping to `[eps, 1 - eps]` (no check that rows sum to 1) |

use serde::{Deserialize, Serialize};

use crate::data::{check_finite, check_labels, check_pair, require_both_classes};
use crate::error::TrainError;

/// The decision threshold of the threshold metrics: a row is predicted
/// positive when its probability is strictly greater (as scikit-learn's
/// `predict` does for logistic regression and gradient boosting).
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// Area under the ROC curve: the trapezoidal area over the points of the
/// distinct score thresholds, so tied scores count one half, exactly as
/// scikit-learn's `roc_auc_score`. Scores may be any finite numbers.
pub fn roc_auc(y_true: &[f64], y_score: &[f64]) -> Result<f64, TrainError> {
    const WHAT: &str = "roc_auc";
    let curve = Curve::new(WHAT, y_true, y_score)?;
    require_both_classes(WHAT, y_true.len(), curve.positives)?;
    let (p, n) = (curve.positives as f64, curve.negatives() as f64);
    let (mut area, mut prev_fpr, mut prev_tpr) = (0.0, 0.0, 0.0);
    for &(tps, fps) in &curve.points {
        let (tpr, fpr) = (tps / p, fps / n);
        area += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
        (prev_fpr, prev_tpr) = (fpr, tpr);
    }
    Ok(area)
}

/// Average precision, the area under the precision-recall curve as a step
/// function: `sum_k (R_k - R_(k-1)) * P_k` over the distinct score thresholds
/// (scikit-learn's `average_precision_score`; not the trapezoidal rule, which
/// is optimistic). Undefined, so an error, when no label is positive.
pub fn pr_auc(y_true: &[f64], y_score: &[f64]) -> Result<f64, TrainError> {
    const WHAT: &str = "pr_auc";
    let curve = Curve::new(WHAT, y_true, y_score)?;
    if curve.positives == 0 {
        return Err(TrainError::SingleClass {
            what: WHAT,
            class: 0,
        });
    }
    let p = curve.positives as f64;
    let (mut ap, mut prev_recall) = (0.0, 0.0);
    for &(tps, fps) in &curve.points {
        let recall = tps / p;
        let precision = tps / (tps + fps);
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Ok(ap.max(0.0))
}

/// Mean binary cross-entropy (natural log). Each of `p` and `1 - p` is
/// clipped to `[eps, 1 - eps]` with `eps = f64::EPSILON` (2.22e-16), the
/// convention of scikit-learn >= 1.5 (earlier versions used eps = 1e-15), so a
/// confident mistake costs at most `-ln(eps)` = 36.04. Unlike scikit-learn
/// without `labels=`, a single class in `y_true` is accepted.
pub fn log_loss(y_true: &[f64], y_prob: &[f64]) -> Result<f64, TrainError> {
    const WHAT: &str = "log_loss";
    check_pair(WHAT, "y_true", y_true.len(), "y_prob", y_prob.len())?;
    check_labels(WHAT, y_true)?;
    check_probabilities(WHAT, y_prob)?;
    let eps = f64::EPSILON;
    let sum: f64 = y_true
        .iter()
        .zip(y_prob)
        .map(|(&y, &p)| {
            if y == 1.0 {
                -p.clamp(eps, 1.0 - eps).ln()
            } else {
                -(1.0 - p).clamp(eps, 1.0 - eps).ln()
            }
        })
        .sum();
    Ok(sum / y_true.len() as f64)
}

/// Fraction of rows whose prediction (`p > 0.5`) equals the label.
pub fn accuracy(y_true: &[f64], y_prob: &[f64]) -> Result<f64, TrainError> {
    ConfusionMatrix::at_threshold(y_true, y_prob, DEFAULT_THRESHOLD).map(|c| c.accuracy())
}

/// `tp / (tp + fp)` at `p > 0.5`; 0 when nothing is predicted positive.
pub fn precision(y_true: &[f64], y_prob: &[f64]) -> Result<f64, TrainError> {
    ConfusionMatrix::at_threshold(y_true, y_prob, DEFAULT_THRESHOLD).map(|c| c.precision())
}

/// `tp / (tp + fn)` at `p > 0.5`; 0 when no label is positive.
pub fn recall(y_true: &[f64], y_prob: &[f64]) -> Result<f64, TrainError> {
    ConfusionMatrix::at_threshold(y_true, y_prob, DEFAULT_THRESHOLD).map(|c| c.recall())
}

/// F1 of class 1 at `p > 0.5`: `2tp / (2tp + fp + fn)`; 0 when that is 0/0.
pub fn f1(y_true: &[f64], y_prob: &[f64]) -> Result<f64, TrainError> {
    ConfusionMatrix::at_threshold(y_true, y_prob, DEFAULT_THRESHOLD).map(|c| c.f1())
}

/// Root mean squared error.
pub fn rmse(y_true: &[f64], y_pred: &[f64]) -> Result<f64, TrainError> {
    let mse = regression_mean("rmse", y_true, y_pred, |d| d * d)?;
    Ok(mse.sqrt())
}

/// Mean absolute error.
pub fn mae(y_true: &[f64], y_pred: &[f64]) -> Result<f64, TrainError> {
    regression_mean("mae", y_true, y_pred, f64::abs)
}

/// Fraction of rows whose predicted class index equals the label (multiclass
/// or binary; both are class indices 0, 1, 2, ...).
pub fn multiclass_accuracy(y_true: &[f64], y_pred: &[f64]) -> Result<f64, TrainError> {
    const WHAT: &str = "accuracy";
    check_pair(WHAT, "y_true", y_true.len(), "y_pred", y_pred.len())?;
    check_finite(WHAT, y_true)?;
    check_finite(WHAT, y_pred)?;
    let same = y_true.iter().zip(y_pred).filter(|(t, p)| t == p).count();
    Ok(same as f64 / y_true.len() as f64)
}

/// Mean cross-entropy of `k`-class probabilities (`y_prob` row-major `[N,
/// k]`) against class indices `0..k`: `-ln p[y]` with `p` clipped to `[eps,
/// 1 - eps]`, eps = `f64::EPSILON`, as scikit-learn's `log_loss` with
/// `labels=range(k)`.
pub fn multiclass_log_loss(y_true: &[f64], y_prob: &[f64], k: usize) -> Result<f64, TrainError> {
    const WHAT: &str = "log_loss";
    if k < 2 {
        return Err(TrainError::InvalidParam {
            name: "n_classes",
            value: k.to_string(),
            reason: "a classifier has at least 2 classes",
        });
    }
    check_pair(
        WHAT,
        "y_true",
        y_true.len().saturating_mul(k),
        "y_prob",
        y_prob.len(),
    )?;
    check_probabilities(WHAT, y_prob)?;
    let eps = f64::EPSILON;
    let mut sum = 0.0;
    for (i, (y, row)) in y_true.iter().zip(y_prob.chunks_exact(k)).enumerate() {
        let class = class_index(*y, k).ok_or_else(|| TrainError::InvalidParam {
            name: "y_true",
            value: format!("{y} (row {i})"),
            reason: "labels must be class indices 0 .. n_classes - 1",
        })?;
        sum -= row[class].clamp(eps, 1.0 - eps).ln();
    }
    Ok(sum / y_true.len() as f64)
}

/// `y` as a class index below `k`, when it is one.
fn class_index(y: f64, k: usize) -> Option<usize> {
    (y >= 0.0 && y.fract() == 0.0 && y < k as f64).then_some(y as usize)
}

/// Counts of a binary prediction against the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl ConfusionMatrix {
    /// Count with a row predicted positive when `p > threshold`.
    pub fn at_threshold(
        y_true: &[f64],
        y_prob: &[f64],
        threshold: f64,
    ) -> Result<ConfusionMatrix, TrainError> {
        const WHAT: &str = "confusion matrix";
        check_pair(WHAT, "y_true", y_true.len(), "y_prob", y_prob.len())?;
        check_labels(WHAT, y_true)?;
        check_probabilities(WHAT, y_prob)?;
        if !threshold.is_finite() {
            return Err(TrainError::InvalidParam {
                name: "threshold",
                value: threshold.to_string(),
                reason: "must be a finite number",
            });
        }
        let mut c = ConfusionMatrix::default();
        for (&y, &p) in y_true.iter().zip(y_prob) {
            match (y == 1.0, p > threshold) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fn_ += 1,
            }
        }
        Ok(c)
    }

    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total())
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

/// Every binary classification metric of one set of predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub roc_auc: f64,
    pub pr_auc: f64,
    pub log_loss: f64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub confusion: ConfusionMatrix,
}

impl BinaryMetrics {
    /// Evaluate probabilities of class 1 against 0/1 labels. Needs both
    /// classes in `y_true` (for the AUCs).
    pub fn evaluate(y_true: &[f64], y_prob: &[f64]) -> Result<BinaryMetrics, TrainError> {
        let confusion = ConfusionMatrix::at_threshold(y_true, y_prob, DEFAULT_THRESHOLD)?;
        Ok(BinaryMetrics {
            roc_auc: roc_auc(y_true, y_prob)?,
            pr_auc: pr_auc(y_true, y_prob)?,
            log_loss: log_loss(y_true, y_prob)?,
            accuracy: confusion.accuracy(),
            precision: confusion.precision(),
            recall: confusion.recall(),
            f1: confusion.f1(),
            confusion,
        })
    }
}

/// Every regression metric of one set of predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub rmse: f64,
    pub mae: f64,
}

impl RegressionMetrics {
    pub fn evaluate(y_true: &[f64], y_pred: &[f64]) -> Result<RegressionMetrics, TrainError> {
        Ok(RegressionMetrics {
            rmse: rmse(y_true, y_pred)?,
            mae: mae(y_true, y_pred)?,
        })
    }
}

/// `num / den`, or 0 for 0/0 (scikit-learn's `zero_division=0`).
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn check_probabilities(what: &'static str, p: &[f64]) -> Result<(), TrainError> {
    check_finite(what, p)?;
    match p.iter().position(|v| !(0.0..=1.0).contains(v)) {
        Some(index) => Err(TrainError::ProbabilityOutOfRange {
            what,
            index,
            value: p[index],
        }),
        None => Ok(()),
    }
}

fn regression_mean(
    what: &'static str,
    y_true: &[f64],
    y_pred: &[f64],
    f: impl Fn(f64) -> f64,
) -> Result<f64, TrainError> {
    check_pair(what, "y_true", y_true.len(), "y_pred", y_pred.len())?;
    check_finite(what, y_true)?;
    check_finite(what, y_pred)?;
    let sum: f64 = y_true.iter().zip(y_pred).map(|(t, p)| f(t - p)).sum();
    Ok(sum / y_true.len() as f64)
}

/// The cumulative (true positives, false positives) at each distinct score,
/// highest score first: the points of the ROC and precision-recall curves.
struct Curve {
    points: Vec<(f64, f64)>,
    positives: usize,
    total: usize,
}

impl Curve {
    fn new(what: &'static str, y_true: &[f64], y_score: &[f64]) -> Result<Curve, TrainError> {
        check_pair(what, "y_true", y_true.len(), "y_score", y_score.len())?;
        let positives = check_labels(what, y_true)?;
        check_finite(what, y_score)?;
        let mut order: Vec<usize> = (0..y_score.len()).collect();
        order.sort_unstable_by(|&a, &b| y_score[b].total_cmp(&y_score[a]));
        let mut points = Vec::new();
        let (mut tps, mut fps) = (0.0, 0.0);
        for (k, &i) in order.iter().enumerate() {
            if y_true[i] == 1.0 {
                tps += 1.0;
            } else {
                fps += 1.0;
            }
            // -0.0 and 0.0 are one threshold, as numpy's diff sees them.
            let last_of_threshold = order
                .get(k + 1)
                .is_none_or(|&next| y_score[next] != y_score[i]);
            if last_of_threshold {
                points.push((tps, fps));
            }
        }
        Ok(Curve {
            points,
            positives,
            total: y_true.len(),
        })
    }

    fn negatives(&self) -> usize {
        self.total - self.positives
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12
    }

    #[test]
    fn multiclass_metrics_match_scikit_learn() {
        // sklearn 1.9: log_loss([0, 2, 1, 2], p, labels=[0, 1, 2]) and
        // accuracy_score([0, 2, 1, 2], [0, 2, 1, 0]).
        let p = [0.7, 0.2, 0.1, 0.1, 0.1, 0.8, 0.3, 0.4, 0.3, 0.5, 0.5, 0.0];
        let y = [0.0, 2.0, 1.0, 2.0];
        let got = multiclass_log_loss(&y, &p, 3).unwrap();
        assert!((got - 9.384940654061063).abs() <= 1e-12, "{got}");
        assert_eq!(
            multiclass_accuracy(&y, &[0.0, 2.0, 1.0, 0.0]).unwrap(),
            0.75
        );
        assert!(multiclass_log_loss(&[3.0], &[0.2, 0.3, 0.5], 3).is_err());
        assert!(multiclass_log_loss(&[0.5], &[0.2, 0.3, 0.5], 3).is_err());
        assert!(multiclass_log_loss(&[0.0], &[0.2, 0.3], 3).is_err());
    }

    #[test]
    fn roc_auc_counts_ties_as_half() {
        // One positive and one negative with the same score: 0.5.
        assert!(close(roc_auc(&[0.0, 1.0], &[0.3, 0.3]).unwrap(), 0.5));
        // The scikit-learn documentation example.
        let y = [0.0, 0.0, 1.0, 1.0];
        let s = [0.1, 0.4, 0.35, 0.8];
        assert!(close(roc_auc(&y, &s).unwrap(), 0.75));
        assert!(close(pr_auc(&y, &s).unwrap(), 0.833_333_333_333_333_4));
        // Perfect separation and perfect inversion.
        assert!(close(roc_auc(&y, &[0.0, 0.1, 0.9, 1.0]).unwrap(), 1.0));
        assert!(close(roc_auc(&y, &[1.0, 0.9, 0.1, 0.0]).unwrap(), 0.0));
        // -0.0 and 0.0 are the same threshold.
        assert!(close(roc_auc(&[0.0, 1.0], &[-0.0, 0.0]).unwrap(), 0.5));
    }

    #[test]
    fn ranking_metrics_reject_single_class_and_bad_input() {
        let err = roc_auc(&[1.0, 1.0], &[0.2, 0.3]).unwrap_err();
        assert_eq!(
            err,
            TrainError::SingleClass {
                what: "roc_auc",
                class: 1
            }
        );
        assert!(err.to_string().contains("both classes"), "{err}");
        assert!(matches!(
            pr_auc(&[0.0, 0.0], &[0.2, 0.3]),
            Err(TrainError::SingleClass { class: 0, .. })
        ));
        // All positive: precision is 1 everywhere.
        assert!(close(pr_auc(&[1.0, 1.0], &[0.2, 0.3]).unwrap(), 1.0));
        assert!(matches!(roc_auc(&[], &[]), Err(TrainError::Empty { .. })));
        assert!(matches!(
            roc_auc(&[0.0, 1.0], &[0.5]),
            Err(TrainError::LengthMismatch {
                left: 2,
                right: 1,
                ..
            })
        ));
        assert!(matches!(
            roc_auc(&[0.0, 1.0], &[0.5, f64::NAN]),
            Err(TrainError::NotFinite { index: 1, .. })
        ));
        assert!(matches!(
            roc_auc(&[0.0, 0.5], &[0.5, 0.2]),
            Err(TrainError::InvalidLabel { index: 1, .. })
        ));
    }

    #[test]
    fn log_loss_clips_at_machine_epsilon() {
        // A certain, wrong prediction costs -ln(eps), not infinity.
        let worst = log_loss(&[1.0], &[0.0]).unwrap();
        assert!(close(worst, -f64::EPSILON.ln()), "{worst}");
        assert!(close(log_loss(&[0.0], &[1.0]).unwrap(), -f64::EPSILON.ln()));
        // A certain, right prediction costs -ln(1 - eps), not 0.
        assert!(log_loss(&[1.0], &[1.0]).unwrap() > 0.0);
        assert!(close(
            log_loss(&[1.0, 0.0], &[0.8, 0.4]).unwrap(),
            -(0.8f64.ln() + 0.6f64.ln()) / 2.0
        ));
        assert!(matches!(
            log_loss(&[1.0], &[1.5]),
            Err(TrainError::ProbabilityOutOfRange { .. })
        ));
    }

    #[test]
    fn threshold_metrics_use_strictly_greater_and_zero_division_zero() {
        let y = [1.0, 1.0, 0.0, 0.0, 1.0];
        let p = [0.9, 0.5, 0.6, 0.1, 0.7];
        let c = ConfusionMatrix::at_threshold(&y, &p, 0.5).unwrap();
        assert_eq!(
            c,
            ConfusionMatrix {
                tp: 2,
                fp: 1,
                tn: 1,
                fn_: 1
            }
        );
        assert!(close(accuracy(&y, &p).unwrap(), 0.6));
        assert!(close(precision(&y, &p).unwrap(), 2.0 / 3.0));
        assert!(close(recall(&y, &p).unwrap(), 2.0 / 3.0));
        assert!(close(f1(&y, &p).unwrap(), 2.0 / 3.0));
        // Nothing predicted positive and nothing positive: all zero, no NaN.
        let zeros = [0.0, 0.0];
        assert_eq!(precision(&zeros, &[0.1, 0.2]).unwrap(), 0.0);
        assert_eq!(recall(&zeros, &[0.1, 0.2]).unwrap(), 0.0);
        assert_eq!(f1(&zeros, &[0.1, 0.2]).unwrap(), 0.0);
    }

    #[test]
    fn regression_metrics() {
        let t = [1.0, 2.0, 3.0];
        let p = [1.5, 2.0, 1.0];
        assert!(close(mae(&t, &p).unwrap(), 2.5 / 3.0));
        assert!(close(rmse(&t, &p).unwrap(), (4.25f64 / 3.0).sqrt()));
        assert!(matches!(
            rmse(&t, &[1.0, f64::INFINITY, 0.0]),
            Err(TrainError::NotFinite { index: 1, .. })
        ));
    }

    #[test]
    fn evaluate_collects_everything() {
        let y = [0.0, 0.0, 1.0, 1.0];
        let p = [0.1, 0.4, 0.35, 0.8];
        let m = BinaryMetrics::evaluate(&y, &p).unwrap();
        assert!(close(m.roc_auc, 0.75));
        assert_eq!(m.confusion.total(), 4);
        let json = serde_json::to_value(m).unwrap();
        assert_eq!(json["confusion"]["fn"], 1);
    }
}
