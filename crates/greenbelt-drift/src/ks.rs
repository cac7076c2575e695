//! Two-sample Kolmogorov–Smirnov, two-sided, equal to `scipy.stats.ks_2samp`
//! with `method='auto'`.

use crate::Result;

/// How the p-value was computed (scipy's `method='auto'` rule chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KsMethod {
    Exact,
    Asymptotic,
}

/// The statistic D, its p-value and the method used.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KsResult {
    pub statistic: f64,
    pub pvalue: f64,
    pub method: KsMethod,
}

/// KS of two samples of finite values (any order).
pub fn ks_2samp(a: &[f64], b: &[f64]) -> Result<KsResult> {
    let _ = (a, b);
    todo!("helper: sort copies, call ks_2samp_sorted")
}

/// KS of two sorted samples of finite values.
pub fn ks_2samp_sorted(a: &[f64], b: &[f64]) -> Result<KsResult> {
    let _ = (a, b);
    todo!("helper")
}

/// The two-sided p-value of statistic `d` for sample sizes `n1`, `n2`, with
/// scipy's `auto` choice of method (for callers that computed D themselves,
/// e.g. from sorted streams).
pub fn ks_pvalue(d: f64, n1: u64, n2: u64) -> (f64, KsMethod) {
    let _ = (d, n1, n2);
    todo!("helper")
}
