//! Distillation students: a small model fitted to a binary teacher's
//! probabilities (soft targets) instead of the labels, exported as a
//! classifier with the repository's signature (`input` -> `label`,
//! `probabilities` `[N, 2]`).
//!
//! Both students match the teacher's **logit**, `z = ln(p / (1 - p))` with
//! `p` clipped to `[1e-6, 1 - 1e-6]` (so `|z| <= 13.8`), by least squares —
//! logit matching, the regression form of distillation (Ba & Caruana,
//! "Do deep nets really need to be deep?", 2014):
//!
//! - `gbdt`: boosted regression trees on `z` (squared error), exported with
//!   the log-loss graph, so the student's probability is `sigmoid(trees)`;
//! - `logreg`: ridge regression on `z`, exported as a logistic regression
//!   (`LinearClassifier`, `LOGISTIC`): `sigmoid(w . x + b)`.
//!
//! The labels are not used: a student learns the teacher's function,
//! mistakes included. Pure: data in, ONNX bytes and a summary out.

use serde::Serialize;

use crate::data::{DenseMatrix, check_finite, check_pair};
use crate::error::TrainError;
use crate::gbdt::{self, GbdtParams, Objective};
use crate::linreg::{self, LinRegParams};
use crate::logreg::{LogRegModel, LogRegParams};
use crate::onnx::{export_gbdt, export_logreg};

/// Teacher probabilities are clipped to `[P_CLIP, 1 - P_CLIP]` before the logit.
pub const P_CLIP: f64 = 1e-6;

/// The student to fit, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "student", content = "params", rename_all = "lowercase")]
pub enum Student {
    Gbdt(GbdtParams),
    Logreg(LinRegParams),
}

impl Student {
    pub fn name(&self) -> &'static str {
        match self {
            Student::Gbdt(_) => "gbdt",
            Student::Logreg(_) => "logreg",
        }
    }
}

/// A fitted student.
#[derive(Debug, Clone)]
pub struct Distilled {
    /// The student as an ONNX classifier.
    pub onnx: Vec<u8>,
    pub summary: FitSummary,
}

/// How closely the student follows the teacher on its training rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitSummary {
    pub student: Student,
    pub rows: usize,
    /// RMSE between student and teacher logits.
    pub logit_rmse: f64,
    /// Mean |student p - teacher p|.
    pub probability_mae: f64,
    /// Largest |student p - teacher p|.
    pub probability_max_abs: f64,
}

/// The teacher's logit of `p`, clipped.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(P_CLIP, 1.0 - P_CLIP);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    crate::data::sigmoid(z)
}

/// Fit `student` to the teacher's probabilities of class 1 on `x`.
pub fn distill(
    x: &DenseMatrix<'_>,
    teacher_p1: &[f64],
    feature_names: &[String],
    student: &Student,
) -> Result<Distilled, TrainError> {
    const WHAT: &str = "distill";
    check_pair(
        WHAT,
        "rows",
        x.rows(),
        "teacher probabilities",
        teacher_p1.len(),
    )?;
    check_finite(WHAT, teacher_p1)?;
    if let Some(index) = teacher_p1.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(TrainError::ProbabilityOutOfRange {
            what: WHAT,
            index,
            value: teacher_p1[index],
        });
    }
    let z: Vec<f64> = teacher_p1.iter().map(|p| logit(*p)).collect();
    let (onnx, student_z) = match student {
        Student::Gbdt(params) => {
            let mut model = gbdt::fit_regression(x, &z, params)?;
            let fitted = model.decision_function(x)?;
            // Same trees and base score; exported with the sigmoid head.
            model.objective = Objective::LogLoss;
            (export_gbdt(&model, feature_names)?, fitted)
        }
        Student::Logreg(params) => {
            let ridge = linreg::fit(x, &z, params)?;
            let fitted = ridge.predict(x)?;
            let model = LogRegModel {
                coefficients: ridge.coefficients,
                intercept: ridge.intercept,
                // Not fitted by Newton's method: the file's params say so.
                params: LogRegParams {
                    max_iter: 0,
                    ..LogRegParams::default()
                },
                n_iter: 0,
                converged: true,
            };
            (export_logreg(&model, feature_names)?, fitted)
        }
    };
    let n = z.len() as f64;
    let logit_rmse = (z
        .iter()
        .zip(&student_z)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let diffs: Vec<f64> = teacher_p1
        .iter()
        .zip(&student_z)
        .map(|(p, s)| (p - sigmoid(*s)).abs())
        .collect();
    Ok(Distilled {
        onnx,
        summary: FitSummary {
            student: student.clone(),
            rows: z.len(),
            logit_rmse,
            probability_mae: diffs.iter().sum::<f64>() / n,
            probability_max_abs: diffs.iter().copied().fold(0.0, f64::max),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic;

    #[test]
    fn students_follow_a_smooth_teacher() {
        let data = synthetic::regression(800, 4, 5);
        let x = data.matrix().unwrap();
        // A teacher whose logit is a smooth function of the features.
        let p: Vec<f64> = x
            .iter_rows()
            .map(|r| sigmoid(1.5 * r[0] - r[1] + 0.5 * r[2] * r[3]))
            .collect();
        let names: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
        let gbdt = distill(
            &x,
            &p,
            &names,
            &Student::Gbdt(GbdtParams {
                n_estimators: 200,
                max_depth: 4,
                ..GbdtParams::default()
            }),
        )
        .unwrap();
        assert!(gbdt.summary.probability_mae < 0.03, "{:?}", gbdt.summary);
        let lin = distill(&x, &p, &names, &Student::Logreg(LinRegParams::default())).unwrap();
        // The linear student cannot express r2 * r3, the trees can.
        assert!(
            lin.summary.logit_rmse > gbdt.summary.logit_rmse,
            "{:?}",
            lin.summary
        );
        assert!(!gbdt.onnx.is_empty() && !lin.onnx.is_empty());
    }

    #[test]
    fn bad_soft_targets_are_refused() {
        let data = synthetic::regression(10, 2, 1);
        let x = data.matrix().unwrap();
        let names = vec!["a".to_string(), "b".to_string()];
        let s = Student::Logreg(LinRegParams::default());
        assert!(distill(&x, &[0.5; 9], &names, &s).is_err());
        let mut p = vec![0.5; 10];
        p[3] = 1.5;
        assert!(matches!(
            distill(&x, &p, &names, &s),
            Err(TrainError::ProbabilityOutOfRange { index: 3, .. })
        ));
        assert_eq!(logit(0.0), logit(P_CLIP));
        assert!((logit(0.5)).abs() < 1e-15);
    }
}
