//! The population stability index and its one binning convention.
//!
//! Bins: `bins` (default 10) at the reference's quantiles `i/bins`, computed
//! as numpy's default (`method="linear"`) quantile; the outer edges are open
//! (−∞ and +∞); a value equal to an edge goes to the upper bin. A bin's share
//! of zero is replaced by [`PSI_EPS`]. PSI = Σ (c − r)·ln(c / r) over bins,
//! with r the reference share and c the current share.

use crate::{DriftError, Result};

/// The share an empty bin is given so that the logarithm stays finite.
pub const PSI_EPS: f64 = 1e-4;

/// numpy's default (linear) quantile of sorted, finite values, `q` in [0, 1].
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let (lo, hi, frac) = quantile_ranks(n, q);
    lerp(sorted[lo], sorted[hi], frac)
}

/// Where numpy's linear quantile `q` of `n > 0` sorted values lies: the
/// ranks (0-based) of the two values it interpolates between and the
/// fraction of the way from the first to the second. For callers that
/// stream sorted values instead of holding them (the feature contracts).
pub fn quantile_ranks(n: usize, q: f64) -> (usize, usize, f64) {
    let h = n.saturating_sub(1) as f64 * q.clamp(0.0, 1.0);
    let lo = (h.floor() as usize).min(n.saturating_sub(1));
    let hi = (lo + 1).min(n.saturating_sub(1));
    (lo, hi, h - lo as f64)
}

/// numpy's `_lerp`: a + (b − a)·t, computed as b − (b − a)·(1 − t) when
/// t ≥ 0.5 (so the result is exact at both ends).
pub fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// The inner edges of `bins` bins at the quantiles `i/bins` (i = 1..bins) of
/// sorted, finite values; equal edges are kept once.
pub fn quantile_edges(sorted: &[f64], bins: usize) -> Vec<f64> {
    let mut edges: Vec<f64> = (1..bins)
        .map(|i| quantile(sorted, i as f64 / bins as f64))
        .collect();
    edges.dedup();
    edges
}

/// The bin of `x` for inner `edges` (sorted): a value equal to an edge goes
/// to the upper bin. Returns 0..=edges.len().
pub fn bin_of(edges: &[f64], x: f64) -> usize {
    edges.partition_point(|e| *e <= x)
}

/// PSI of two share vectors over the same bins (each sums to 1). Callers
/// with an empty current sample have no PSI to report and should not call.
pub fn psi(reference: &[f64], current: &[f64]) -> Result<f64> {
    if reference.len() != current.len() {
        return Err(DriftError::Mismatch(format!(
            "psi: the reference has {} bins and the current sample {}",
            reference.len(),
            current.len()
        )));
    }
    Ok(reference
        .iter()
        .zip(current)
        .map(|(r, c)| {
            let (r, c) = (r.max(PSI_EPS), c.max(PSI_EPS));
            (c - r) * (c / r).ln()
        })
        .sum())
}
