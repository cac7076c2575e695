//! Ridge (L2-regularised least-squares) linear regression, solved exactly by
//! a Cholesky factorisation of the normal equations.
//!
//! The objective is scikit-learn's `Ridge(alpha)`:
//!
//! ```text
//! f(w, b) = |y - X w - b|^2 + alpha |w|^2
//! ```
//!
//! The intercept is not penalised: with `fit_intercept`, `X` and `y` are
//! centred first and `b = mean(y) - mean(X) . w`. For conditioning the
//! system is solved in standardised coordinates with the penalty rescaled to
//! match (`alpha / scale_j^2` on coordinate `j`), which has the same
//! minimiser as the objective above. `alpha = 0` is ordinary least squares
//! (a singular design is regularised by the smallest workable jitter). There
//! is no randomness: the same input gives the same bits.

use serde::{Deserialize, Serialize};

use crate::data::{DenseMatrix, check_finite, check_pair};
use crate::error::TrainError;
use crate::logreg::solve_spd;

/// Training parameters. `Default` gives alpha = 1, like scikit-learn's `Ridge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinRegParams {
    /// L2 penalty on the coefficients (scikit-learn's `alpha`); >= 0.
    pub alpha: f64,
    /// Fit an (unpenalised) intercept.
    pub fit_intercept: bool,
}

impl Default for LinRegParams {
    fn default() -> Self {
        LinRegParams {
            alpha: 1.0,
            fit_intercept: true,
        }
    }
}

impl LinRegParams {
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(TrainError::InvalidParam {
                name: "alpha",
                value: self.alpha.to_string(),
                reason: "must be a finite number >= 0",
            });
        }
        Ok(())
    }
}

/// A fitted model: `y = x . coefficients + intercept`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinRegModel {
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    pub params: LinRegParams,
}

impl LinRegModel {
    pub fn n_features(&self) -> usize {
        self.coefficients.len()
    }

    /// The prediction per row.
    pub fn predict(&self, x: &DenseMatrix<'_>) -> Result<Vec<f64>, TrainError> {
        if x.cols() != self.n_features() {
            return Err(TrainError::FeatureCount {
                what: "linreg predict",
                expected: self.n_features(),
                got: x.cols(),
            });
        }
        Ok(x.iter_rows()
            .map(|row| {
                row.iter()
                    .zip(&self.coefficients)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    + self.intercept
            })
            .collect())
    }
}

/// Fit a model to features `x` and real-valued targets `y`.
pub fn fit(
    x: &DenseMatrix<'_>,
    y: &[f64],
    params: &LinRegParams,
) -> Result<LinRegModel, TrainError> {
    const WHAT: &str = "linreg fit";
    params.validate()?;
    check_pair(WHAT, "features", x.rows(), "targets", y.len())?;
    check_finite("targets", y)?;
    let (n, f) = (x.rows(), x.cols());
    let nf = n as f64;

    // Centre (with an intercept) and scale every column to unit variance.
    let mut mean = vec![0.0; f];
    let mut y_mean = 0.0;
    if params.fit_intercept {
        for row in x.iter_rows() {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= nf);
        y_mean = y.iter().sum::<f64>() / nf;
    }
    let mut scale = vec![0.0; f];
    for row in x.iter_rows() {
        for ((s, v), m) in scale.iter_mut().zip(row).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    for s in scale.iter_mut() {
        let sd = (*s / nf).sqrt();
        // A constant column (zero after centring) is left unscaled.
        *s = if sd > 0.0 && sd.is_finite() { sd } else { 1.0 };
    }

    // Normal equations in standardised coordinates z = (x - mean) / scale:
    // (Z^T Z + diag(alpha / scale^2)) v = Z^T (y - y_mean), w = v / scale.
    let mut gram = vec![0.0; f * f];
    let mut rhs = vec![0.0; f];
    let mut z = vec![0.0; f];
    for (row, &t) in x.iter_rows().zip(y) {
        for (j, zj) in z.iter_mut().enumerate() {
            *zj = (row[j] - mean[j]) / scale[j];
        }
        let r = t - y_mean;
        for j in 0..f {
            rhs[j] += z[j] * r;
            for k in j..f {
                gram[j * f + k] += z[j] * z[k];
            }
        }
    }
    for j in 0..f {
        for k in 0..j {
            gram[j * f + k] = gram[k * f + j];
        }
        gram[j * f + j] += params.alpha / (scale[j] * scale[j]);
    }
    let v = if f == 0 {
        Vec::new()
    } else {
        solve_spd(gram, &rhs, f).ok_or(TrainError::InvalidParam {
            name: "alpha",
            value: params.alpha.to_string(),
            reason: "the normal equations are singular even with jitter; use alpha > 0 or drop duplicate features",
        })?
    };
    let coefficients: Vec<f64> = v.iter().zip(&scale).map(|(v, s)| v / s).collect();
    let intercept = if params.fit_intercept {
        y_mean
            - coefficients
                .iter()
                .zip(&mean)
                .map(|(w, m)| w * m)
                .sum::<f64>()
    } else {
        0.0
    };
    if let Some(bad) = coefficients
        .iter()
        .chain([&intercept])
        .find(|v| !v.is_finite())
    {
        return Err(TrainError::InvalidParam {
            name: "alpha",
            value: params.alpha.to_string(),
            reason: if bad.is_nan() {
                "the fit produced NaN; check the data for extreme values"
            } else {
                "the fit overflowed; check the data for extreme values"
            },
        });
    }
    Ok(LinRegModel {
        coefficients,
        intercept,
        params: params.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::rmse;
    use crate::synthetic;

    #[test]
    fn recovers_the_generating_weights() {
        let data = synthetic::regression(4000, 4, 3);
        let x = data.matrix().unwrap();
        let params = LinRegParams {
            alpha: 0.0,
            ..LinRegParams::default()
        };
        let model = fit(&x, &data.y, &params).unwrap();
        // Features are s * SCALE + OFFSET, so the weight on x_j is w_j / SCALE_j.
        let scale = [1.0, 10.0, 0.1, 100.0];
        for (j, (c, w)) in model
            .coefficients
            .iter()
            .zip(synthetic::linear_weights(4))
            .enumerate()
        {
            // In draw units the standard error is about 0.012.
            assert!(
                (c * scale[j] - w).abs() < 0.06,
                "{j}: {c} vs {}",
                w / scale[j]
            );
        }
        let err = rmse(&data.y, &model.predict(&x).unwrap()).unwrap();
        // The noise has sd 1.5 * sqrt(4/12) = 0.866.
        assert!((0.8..0.93).contains(&err), "rmse {err}");
    }

    #[test]
    fn penalty_shrinks_and_no_intercept_goes_through_the_origin() {
        let data = synthetic::regression(300, 3, 5);
        let x = data.matrix().unwrap();
        let ols = fit(
            &x,
            &data.y,
            &LinRegParams {
                alpha: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let ridge = fit(
            &x,
            &data.y,
            &LinRegParams {
                alpha: 1e4,
                ..Default::default()
            },
        )
        .unwrap();
        let norm = |m: &LinRegModel| m.coefficients.iter().map(|c| c * c).sum::<f64>();
        assert!(norm(&ridge) < norm(&ols), "{ridge:?} vs {ols:?}");
        let a = fit(&x, &data.y, &LinRegParams::default()).unwrap();
        assert_eq!(a, fit(&x, &data.y, &LinRegParams::default()).unwrap());
        let origin = fit(
            &x,
            &data.y,
            &LinRegParams {
                fit_intercept: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(origin.intercept, 0.0);
    }

    #[test]
    fn constant_and_duplicate_columns_stay_finite() {
        let rows = 40;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..rows {
            let v = i as f64 / 4.0;
            x.extend([v, 7.0, v]); // a constant and a duplicate column
            y.push(2.0 * v + 1.0);
        }
        let m = DenseMatrix::new(&x, rows, 3).unwrap();
        let ols = fit(
            &m,
            &y,
            &LinRegParams {
                alpha: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let p = ols.predict(&m).unwrap();
        assert!(rmse(&y, &p).unwrap() < 1e-6, "{ols:?}");
    }

    #[test]
    fn rejects_bad_params_and_data() {
        let x = [0.0, 1.0];
        let m = DenseMatrix::new(&x, 2, 1).unwrap();
        assert!(matches!(
            fit(
                &m,
                &[0.0, 1.0],
                &LinRegParams {
                    alpha: -1.0,
                    ..Default::default()
                }
            ),
            Err(TrainError::InvalidParam { name: "alpha", .. })
        ));
        assert!(matches!(
            fit(&m, &[0.0, f64::NAN], &LinRegParams::default()),
            Err(TrainError::NotFinite {
                what: "targets",
                index: 1,
                ..
            })
        ));
        assert!(matches!(
            fit(&m, &[1.0], &LinRegParams::default()),
            Err(TrainError::LengthMismatch { .. })
        ));
        assert!(serde_json::from_str::<LinRegParams>(r#"{"alpah": 1}"#).is_err());
    }
}
