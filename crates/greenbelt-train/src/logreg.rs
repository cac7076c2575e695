//! L2-regularised binary logistic regression, fit by Newton's method with a
//! backtracking line search on (optionally) standardised features.
//!
//! The objective is scikit-learn's, divided by `C * n` (same minimiser):
//!
//! ```text
//! f(w, b) = 1/n * sum_i [ln(1 + exp(z_i)) - y_i z_i] + 1/(2 C n) * |w|^2,   z_i = x_i.w + b
//! ```
//!
//! The intercept is not penalised. With `standardize` the penalty applies to
//! the coefficients of the standardised features, as in scikit-learn's
//! `make_pipeline(StandardScaler(), LogisticRegression(C=C))`; the returned
//! coefficients are mapped back to the original feature space either way.
//! There is no randomness: the same input gives the same bits.

use serde::{Deserialize, Serialize};

use crate::data::{DenseMatrix, check_labels, check_pair, require_both_classes, sigmoid};
use crate::error::TrainError;

/// Training parameters. `Default` gives C = 1, like scikit-learn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogRegParams {
    /// Inverse L2 regularisation strength (scikit-learn's `C`); > 0.
    #[serde(alias = "C")]
    pub c: f64,
    /// Most Newton iterations.
    pub max_iter: usize,
    /// Converged when every component of the gradient of `f` (see the module
    /// docs) is at most `tol` in absolute value.
    pub tol: f64,
    /// Fit an (unpenalised) intercept.
    pub fit_intercept: bool,
    /// Scale features to unit variance (and centre them when fitting an
    /// intercept) before fitting. Changes what the penalty means; see the
    /// module docs.
    pub standardize: bool,
}

impl Default for LogRegParams {
    fn default() -> Self {
        LogRegParams {
            c: 1.0,
            max_iter: 100,
            tol: 1e-8,
            fit_intercept: true,
            standardize: true,
        }
    }
}

impl LogRegParams {
    pub fn validate(&self) -> Result<(), TrainError> {
        let invalid = |name, value: String, reason| {
            Err(TrainError::InvalidParam {
                name,
                value,
                reason,
            })
        };
        if !(self.c.is_finite() && self.c > 0.0) {
            return invalid("c", self.c.to_string(), "must be a finite number > 0");
        }
        if !(self.tol.is_finite() && self.tol > 0.0) {
            return invalid("tol", self.tol.to_string(), "must be a finite number > 0");
        }
        if self.max_iter == 0 {
            return invalid("max_iter", "0".into(), "must be at least 1");
        }
        Ok(())
    }
}

/// A fitted model, in the original feature space: `P(y = 1 | x) =
/// sigmoid(x . coefficients + intercept)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRegModel {
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    pub params: LogRegParams,
    /// Newton iterations taken.
    pub n_iter: usize,
    /// Whether the gradient reached `tol` within `max_iter`.
    pub converged: bool,
}

impl LogRegModel {
    pub fn n_features(&self) -> usize {
        self.coefficients.len()
    }

    /// `x . coefficients + intercept` per row (the log-odds of class 1).
    pub fn decision_function(&self, x: &DenseMatrix<'_>) -> Result<Vec<f64>, TrainError> {
        if x.cols() != self.n_features() {
            return Err(TrainError::FeatureCount {
                what: "logreg predict",
                expected: self.n_features(),
                got: x.cols(),
            });
        }
        Ok(x.iter_rows()
            .map(|row| dot(row, &self.coefficients) + self.intercept)
            .collect())
    }

    /// The probability of class 1 per row.
    pub fn predict_proba(&self, x: &DenseMatrix<'_>) -> Result<Vec<f64>, TrainError> {
        Ok(self
            .decision_function(x)?
            .into_iter()
            .map(sigmoid)
            .collect())
    }
}

/// Fit a model to features `x` and 0/1 labels `y`. Both classes must occur.
pub fn fit(
    x: &DenseMatrix<'_>,
    y: &[f64],
    params: &LogRegParams,
) -> Result<LogRegModel, TrainError> {
    const WHAT: &str = "logreg fit";
    params.validate()?;
    check_pair(WHAT, "features", x.rows(), "labels", y.len())?;
    let positives = check_labels(WHAT, y)?;
    require_both_classes(WHAT, y.len(), positives)?;

    let (n, f) = (x.rows(), x.cols());
    let scaling = Scaling::of(x, params.standardize, params.fit_intercept);
    // Design matrix, row-major: the scaled features, then 1 for the intercept.
    let dim = f + usize::from(params.fit_intercept);
    let mut design = Vec::with_capacity(n * dim);
    for row in x.iter_rows() {
        design.extend(
            row.iter()
                .zip(scaling.mean.iter().zip(&scaling.scale))
                .map(|(v, (m, s))| (v - m) / s),
        );
        if params.fit_intercept {
            design.push(1.0);
        }
    }
    let problem = Problem {
        design: &design,
        y,
        n,
        dim,
        n_penalised: f,
        // 1 / (C n): the penalty's weight in the mean-scaled objective.
        alpha: 1.0 / (params.c * n as f64),
    };
    let solution = newton(&problem, params.max_iter, params.tol);

    // Back to the original feature space.
    let coefficients: Vec<f64> = (0..f).map(|j| solution.w[j] / scaling.scale[j]).collect();
    let intercept = if params.fit_intercept {
        solution.w[f] - dot(&coefficients, &scaling.mean)
    } else {
        0.0
    };
    Ok(LogRegModel {
        coefficients,
        intercept,
        params: params.clone(),
        n_iter: solution.n_iter,
        converged: solution.converged,
    })
}

/// Per-feature centring and scaling. Identity when not standardising.
struct Scaling {
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl Scaling {
    fn of(x: &DenseMatrix<'_>, standardize: bool, center: bool) -> Scaling {
        let (n, f) = (x.rows() as f64, x.cols());
        if !standardize {
            return Scaling {
                mean: vec![0.0; f],
                scale: vec![1.0; f],
            };
        }
        let mut mean = vec![0.0; f];
        for row in x.iter_rows() {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; f];
        for row in x.iter_rows() {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        let scale = var
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let sd = (s / n).sqrt();
                // A constant feature (up to rounding) is left unscaled, as
                // scikit-learn's StandardScaler does.
                if sd <= 10.0 * f64::EPSILON * m.abs().max(1.0) {
                    1.0
                } else {
                    sd
                }
            })
            .collect();
        if !center {
            // Without an intercept the model must stay linear through the
            // origin, so scale only.
            mean.iter_mut().for_each(|m| *m = 0.0);
        }
        Scaling { mean, scale }
    }
}

/// The mean-scaled penalised log-loss over a row-major design matrix whose
/// first `n_penalised` columns are penalised.
struct Problem<'a> {
    design: &'a [f64],
    y: &'a [f64],
    n: usize,
    dim: usize,
    n_penalised: usize,
    alpha: f64,
}

struct Solution {
    w: Vec<f64>,
    n_iter: usize,
    converged: bool,
}

impl Problem<'_> {
    fn rows(&self) -> impl Iterator<Item = (&[f64], f64)> {
        self.design
            .chunks_exact(self.dim.max(1))
            .zip(self.y.iter().copied())
    }

    fn penalty(&self, w: &[f64]) -> f64 {
        0.5 * self.alpha * w[..self.n_penalised].iter().map(|v| v * v).sum::<f64>()
    }

    fn objective(&self, w: &[f64]) -> f64 {
        let loss: f64 = self
            .rows()
            .map(|(row, y)| {
                let z = dot(row, w);
                // ln(1 + e^z) - y z, without overflow.
                softplus(z) - y * z
            })
            .sum();
        loss / self.n as f64 + self.penalty(w)
    }

    /// The gradient alone at `w`.
    fn gradient(&self, w: &[f64]) -> Vec<f64> {
        let mut grad = vec![0.0; self.dim];
        for (row, y) in self.rows() {
            let r = sigmoid(dot(row, w)) - y;
            for (g, xj) in grad.iter_mut().zip(row) {
                *g += r * xj;
            }
        }
        let inv_n = 1.0 / self.n as f64;
        for (j, g) in grad.iter_mut().enumerate() {
            *g *= inv_n;
            if j < self.n_penalised {
                *g += self.alpha * w[j];
            }
        }
        grad
    }

    /// Gradient and Hessian (dense, row-major `dim x dim`) at `w`.
    fn derivatives(&self, w: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let d = self.dim;
        let mut grad = vec![0.0; d];
        let mut hess = vec![0.0; d * d];
        for (row, y) in self.rows() {
            let p = sigmoid(dot(row, w));
            let r = p - y;
            let h = p * (1.0 - p);
            for (j, xj) in row.iter().enumerate() {
                grad[j] += r * xj;
                let hx = h * xj;
                // Upper triangle only; mirrored below.
                for (k, xk) in row.iter().enumerate().skip(j) {
                    hess[j * d + k] += hx * xk;
                }
            }
        }
        let inv_n = 1.0 / self.n as f64;
        for j in 0..d {
            grad[j] *= inv_n;
            for k in j..d {
                hess[j * d + k] *= inv_n;
                hess[k * d + j] = hess[j * d + k];
            }
        }
        for j in 0..self.n_penalised {
            grad[j] += self.alpha * w[j];
            hess[j * d + j] += self.alpha;
        }
        (grad, hess)
    }
}

/// Damped Newton: solve `H s = g` by Cholesky and move to `w - t s`, halving
/// `t` from 1 until the Armijo condition holds. Near the optimum the predicted decrease falls
/// below the rounding of `f` itself; there a step is judged by whether it
/// shrinks the gradient instead.
fn newton(problem: &Problem<'_>, max_iter: usize, tol: f64) -> Solution {
    let mut w = vec![0.0; problem.dim];
    let mut value = problem.objective(&w);
    let (mut grad, mut hess) = problem.derivatives(&w);
    for iter in 0..max_iter {
        let grad_max = max_abs(&grad);
        if grad_max <= tol {
            return Solution {
                w,
                n_iter: iter,
                converged: true,
            };
        }
        let Some(step) = solve_spd(hess, &grad, problem.dim) else {
            return Solution {
                w,
                n_iter: iter,
                converged: false,
            };
        };
        let slope = -dot(&grad, &step);
        let flat = 64.0 * f64::EPSILON * value.abs().max(1.0);
        let mut t = 1.0;
        let mut next = None;
        for _ in 0..60 {
            let trial: Vec<f64> = w.iter().zip(&step).map(|(a, s)| a - t * s).collect();
            if trial == w {
                break; // the step vanished below the resolution of w
            }
            let trial_value = problem.objective(&trial);
            if trial_value <= value + 1e-4 * t * slope
                || ((trial_value - value).abs() <= flat
                    && max_abs(&problem.gradient(&trial)) < grad_max)
            {
                next = Some((trial, trial_value));
                break;
            }
            t *= 0.5;
        }
        let Some((trial, trial_value)) = next else {
            // No representable improvement: as close as f64 gets.
            return Solution {
                w,
                n_iter: iter + 1,
                converged: false,
            };
        };
        w = trial;
        value = trial_value;
        (grad, hess) = problem.derivatives(&w);
    }
    let converged = max_abs(&grad) <= tol;
    Solution {
        converged,
        w,
        n_iter: max_iter,
    }
}

/// Solve `a x = b` for symmetric positive definite `a` (row-major `d x d`)
/// by Cholesky. A nearly singular `a` (a saturated, unpenalised intercept) is
/// regularised by a growing multiple of its mean diagonal.
pub(crate) fn solve_spd(a: Vec<f64>, b: &[f64], d: usize) -> Option<Vec<f64>> {
    let mean_diag = (0..d).map(|i| a[i * d + i]).sum::<f64>() / d.max(1) as f64;
    let mut jitter = 0.0;
    for _ in 0..12 {
        let mut m = a.clone();
        for i in 0..d {
            m[i * d + i] += jitter;
        }
        if let Some(l) = cholesky(m, d) {
            // Forward then backward substitution with L and L^T.
            let mut z = vec![0.0; d];
            for i in 0..d {
                let s: f64 = (0..i).map(|k| l[i * d + k] * z[k]).sum();
                z[i] = (b[i] - s) / l[i * d + i];
            }
            let mut x = vec![0.0; d];
            for i in (0..d).rev() {
                let s: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
                x[i] = (z[i] - s) / l[i * d + i];
            }
            return Some(x);
        }
        jitter = if jitter == 0.0 {
            1e-12 * mean_diag.max(f64::MIN_POSITIVE)
        } else {
            jitter * 100.0
        };
    }
    None
}

/// The lower Cholesky factor, or `None` when `m` is not positive definite.
fn cholesky(mut m: Vec<f64>, d: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let s: f64 = (0..j).map(|k| m[j * d + k] * m[j * d + k]).sum();
        let pivot = m[j * d + j] - s;
        if !(pivot > 0.0 && pivot.is_finite()) {
            return None;
        }
        let ljj = pivot.sqrt();
        m[j * d + j] = ljj;
        for i in j + 1..d {
            let s: f64 = (0..j).map(|k| m[i * d + k] * m[j * d + k]).sum();
            m[i * d + j] = (m[i * d + j] - s) / ljj;
        }
    }
    Some(m)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `ln(1 + e^z)` without overflow or loss of precision.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::roc_auc;
    use crate::synthetic;

    #[test]
    fn recovers_a_separating_direction_and_converges() {
        let data = synthetic::linear(2000, 4, 3);
        let x = data.matrix().unwrap();
        let model = fit(&x, &data.y, &LogRegParams::default()).unwrap();
        assert!(model.converged, "{model:?}");
        assert!(model.n_iter < 15, "Newton should need few steps: {model:?}");
        let auc = roc_auc(&data.y, &model.predict_proba(&x).unwrap()).unwrap();
        assert!(auc > 0.85, "auc {auc}");
        // Signs follow the generating weights.
        for (c, w) in model.coefficients.iter().zip(synthetic::linear_weights(4)) {
            assert_eq!(c.signum(), w.signum(), "{model:?}");
        }
    }

    #[test]
    fn standardisation_does_not_change_an_unpenalised_fit() {
        // With almost no penalty, scaling the features cannot change the
        // optimum in the original space.
        let data = synthetic::linear(500, 3, 11);
        let x = data.matrix().unwrap();
        let params = LogRegParams {
            c: 1e8,
            tol: 1e-10,
            ..LogRegParams::default()
        };
        let a = fit(&x, &data.y, &params).unwrap();
        let b = fit(
            &x,
            &data.y,
            &LogRegParams {
                standardize: false,
                ..params
            },
        )
        .unwrap();
        for (p, q) in a.coefficients.iter().zip(&b.coefficients) {
            assert!((p - q).abs() <= 1e-6 * q.abs().max(1.0), "{a:?} {b:?}");
        }
        assert!((a.intercept - b.intercept).abs() <= 1e-6 * b.intercept.abs().max(1.0));
    }

    #[test]
    fn deterministic_and_handles_constant_features_and_no_intercept() {
        let rows = 50;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..rows {
            x.extend([i as f64 / 10.0, 3.0]); // second feature constant
            y.push(if (i * 7) % 10 < 4 + i / 10 { 1.0 } else { 0.0 });
        }
        let m = DenseMatrix::new(&x, rows, 2).unwrap();
        let a = fit(&m, &y, &LogRegParams::default()).unwrap();
        let b = fit(&m, &y, &LogRegParams::default()).unwrap();
        assert_eq!(a, b);
        assert!(a.converged);
        assert!(a.coefficients.iter().all(|c| c.is_finite()));
        let no_b = LogRegParams {
            fit_intercept: false,
            ..LogRegParams::default()
        };
        let c = fit(&m, &y, &no_b).unwrap();
        assert_eq!(c.intercept, 0.0);
        assert!(c.converged, "{c:?}");
    }

    #[test]
    fn separable_data_stays_finite() {
        let x = [0.0, 1.0, 2.0, 3.0];
        let y = [0.0, 0.0, 1.0, 1.0];
        let m = DenseMatrix::new(&x, 4, 1).unwrap();
        let params = LogRegParams {
            c: 1e12,
            ..LogRegParams::default()
        };
        let model = fit(&m, &y, &params).unwrap();
        let p = model.predict_proba(&m).unwrap();
        assert!(p.iter().all(|v| v.is_finite()), "{model:?}");
        assert!(p[0] < 0.01 && p[3] > 0.99, "{p:?}");
    }

    #[test]
    fn rejects_bad_params_and_data() {
        let x = [0.0, 1.0];
        let m = DenseMatrix::new(&x, 2, 1).unwrap();
        let bad = LogRegParams {
            c: 0.0,
            ..LogRegParams::default()
        };
        assert!(matches!(
            fit(&m, &[0.0, 1.0], &bad),
            Err(TrainError::InvalidParam { name: "c", .. })
        ));
        assert!(matches!(
            fit(&m, &[1.0, 1.0], &LogRegParams::default()),
            Err(TrainError::SingleClass { .. })
        ));
        assert!(matches!(
            fit(&m, &[1.0], &LogRegParams::default()),
            Err(TrainError::LengthMismatch { .. })
        ));
        let model = fit(&m, &[0.0, 1.0], &LogRegParams::default()).unwrap();
        let wide = DenseMatrix::new(&[0.0, 1.0], 1, 2).unwrap();
        assert!(matches!(
            model.predict_proba(&wide),
            Err(TrainError::FeatureCount {
                expected: 1,
                got: 2,
                ..
            })
        ));
    }

    #[test]
    fn params_parse_with_defaults_and_reject_unknown_fields() {
        let p: LogRegParams = serde_json::from_str(r#"{"C": 0.5}"#).unwrap();
        assert_eq!(p.c, 0.5);
        assert_eq!(p.max_iter, 100);
        assert!(serde_json::from_str::<LogRegParams>(r#"{"cc": 1}"#).is_err());
    }
}
