//! Statistics over category counts: chi-square goodness of fit and the
//! Jensen–Shannon distance.

use crate::Result;

/// `scipy.stats.chisquare` result.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChiSquare {
    pub statistic: f64,
    pub pvalue: f64,
    /// Degrees of freedom: categories − 1.
    pub dof: u64,
}

/// Chi-square of current counts against reference proportions (scipy
/// `chisquare(observed, f_exp=proportions·Σobserved)`), categories aligned.
pub fn chisquare(observed: &[f64], reference_proportions: &[f64]) -> Result<ChiSquare> {
    let _ = (observed, reference_proportions);
    todo!("helper")
}

/// Jensen–Shannon distance (scipy `jensenshannon`, natural log) of two
/// non-negative weight vectors over the same categories (each normalised).
pub fn jensenshannon(p: &[f64], q: &[f64]) -> Result<f64> {
    let _ = (p, q);
    todo!("helper")
}
