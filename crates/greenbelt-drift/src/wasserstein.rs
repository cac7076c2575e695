//! Wasserstein-1 distance between two samples (scipy `wasserstein_distance`).

use crate::Result;

/// W1 of two samples of finite values (any order).
pub fn wasserstein_distance(a: &[f64], b: &[f64]) -> Result<f64> {
    let _ = (a, b);
    todo!("helper")
}

/// W1 of two sorted samples of finite values.
pub fn wasserstein_sorted(a: &[f64], b: &[f64]) -> Result<f64> {
    let _ = (a, b);
    todo!("helper")
}
