//! Statistics over category counts: chi-square goodness of fit and the
//! Jensen–Shannon distance.

use crate::gamma::chi2_sf;
use crate::{DriftError, PSI_EPS, Result};

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
///
/// The proportions are normalised to sum to 1 first (so they may be raw
/// reference counts), then f_exp = proportion·Σobserved; statistic =
/// Σ (observed − f_exp)²/f_exp and p-value = chi2.sf(statistic, k − 1), with
/// the regularised upper incomplete gamma function computed here (Cephes
/// `igamc`; about 1e-14 relative).
///
/// Categories the reference never saw (proportion 0), where scipy would
/// divide by zero:
/// - observed 0 as well: the category is left out (it is in neither
///   distribution) and does not count in k;
/// - observed > 0: the proportion is floored at [`PSI_EPS`] (1e-4, the same
///   floor PSI uses) and all proportions are renormalised, so a new category
///   weighs as "rarer than one in ten thousand" and the statistic stays
///   finite; equal to scipy given those floored proportions.
///
/// Errors: lengths differ, no categories, NaN/infinite or negative values,
/// no observations (Σobserved = 0), proportions summing to 0, fewer than two
/// categories left (scipy returns NaN there).
pub fn chisquare(observed: &[f64], reference_proportions: &[f64]) -> Result<ChiSquare> {
    check_pair(
        observed,
        reference_proportions,
        ["observed", "reference"],
        "chisquare",
    )?;
    let total: f64 = observed.iter().sum();
    if total <= 0.0 {
        return Err(DriftError::Empty("observed"));
    }
    let kept: Vec<(f64, f64)> = observed
        .iter()
        .zip(reference_proportions)
        .filter(|(o, p)| **o > 0.0 || **p > 0.0)
        .map(|(o, p)| (*o, if *p > 0.0 { *p } else { PSI_EPS }))
        .collect();
    if kept.len() < 2 {
        return Err(DriftError::Mismatch(format!(
            "chisquare: {} category(ies) with a count or a reference share; the test needs at least two",
            kept.len()
        )));
    }
    let psum: f64 = kept.iter().map(|(_, p)| p).sum();
    let statistic: f64 = kept
        .iter()
        .map(|(o, p)| {
            let expected = p / psum * total;
            (o - expected) * (o - expected) / expected
        })
        .sum();
    let dof = kept.len() as u64 - 1;
    Ok(ChiSquare {
        statistic,
        pvalue: chi2_sf(statistic, dof as f64),
        dof,
    })
}

/// Jensen–Shannon distance (scipy `jensenshannon`, natural log) of two
/// non-negative weight vectors over the same categories (each normalised).
///
/// sqrt((KL(p‖m) + KL(q‖m))/2) with m = (p+q)/2, so in [0, √ln 2]. Where
/// rounding would make the sum a hair below zero (p ≈ q) the distance is 0
/// (scipy returns NaN there). Errors: lengths differ, no categories,
/// NaN/infinite or negative weights, a vector summing to 0.
pub fn jensenshannon(p: &[f64], q: &[f64]) -> Result<f64> {
    check_pair(p, q, ["first", "second"], "jensenshannon")?;
    let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if ps <= 0.0 {
        return Err(DriftError::Empty("first"));
    }
    if qs <= 0.0 {
        return Err(DriftError::Empty("second"));
    }
    let (mut left, mut right) = (0.0, 0.0);
    for (pi, qi) in p.iter().zip(q) {
        let (pi, qi) = (pi / ps, qi / qs);
        let m = (pi + qi) / 2.0;
        left += rel_entr(pi, m);
        right += rel_entr(qi, m);
    }
    Ok(((left + right) / 2.0).max(0.0).sqrt())
}

/// scipy's `rel_entr`: x·ln(x/y), 0 at x = 0.
fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Same length, non-empty, finite and non-negative.
fn check_pair(a: &[f64], b: &[f64], names: [&'static str; 2], what: &str) -> Result<()> {
    if a.len() != b.len() {
        return Err(DriftError::Mismatch(format!(
            "{what}: {} categories on one side and {} on the other; align them first",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() {
        return Err(DriftError::Empty(names[0]));
    }
    for (which, x) in [(names[0], a), (names[1], b)] {
        if x.iter().any(|v| !v.is_finite()) {
            return Err(DriftError::NotFinite(which));
        }
        if let Some(i) = x.iter().position(|v| *v < 0.0) {
            return Err(DriftError::Mismatch(format!(
                "{what}: the {which} vector has a negative count ({}) at category {i}",
                x[i]
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chisquare_uniform_is_zero() {
        let r = chisquare(&[5.0, 5.0, 5.0], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!((r.statistic, r.pvalue, r.dof), (0.0, 1.0, 2));
    }

    #[test]
    fn chisquare_new_category_is_floored() {
        // The new category gets proportion 1e-4 before renormalising.
        let r = chisquare(&[10.0, 10.0, 1.0], &[0.5, 0.5, 0.0]).unwrap();
        let psum = 1.0 + PSI_EPS;
        let e = [0.5 / psum * 21.0, 0.5 / psum * 21.0, PSI_EPS / psum * 21.0];
        let want: f64 = [10.0, 10.0, 1.0]
            .iter()
            .zip(e)
            .map(|(o, e)| (o - e) * (o - e) / e)
            .sum();
        assert_eq!(r.statistic, want);
        assert_eq!(r.dof, 2);
        // Both zero: left out.
        let r = chisquare(&[10.0, 0.0, 10.0], &[0.5, 0.0, 0.5]).unwrap();
        assert_eq!((r.statistic, r.dof), (0.0, 1));
    }

    #[test]
    fn chisquare_errors() {
        assert!(matches!(
            chisquare(&[1.0], &[1.0, 2.0]),
            Err(DriftError::Mismatch(_))
        ));
        assert_eq!(chisquare(&[], &[]), Err(DriftError::Empty("observed")));
        assert_eq!(
            chisquare(&[0.0, 0.0], &[1.0, 1.0]),
            Err(DriftError::Empty("observed"))
        );
        assert_eq!(
            chisquare(&[1.0, f64::NAN], &[1.0, 1.0]),
            Err(DriftError::NotFinite("observed"))
        );
        assert!(matches!(
            chisquare(&[1.0, -1.0], &[1.0, 1.0]),
            Err(DriftError::Mismatch(_))
        ));
        assert!(matches!(
            chisquare(&[3.0, 0.0], &[1.0, 0.0]),
            Err(DriftError::Mismatch(_))
        ));
    }

    #[test]
    fn jensenshannon_bounds() {
        assert_eq!(jensenshannon(&[1.0, 2.0], &[2.0, 4.0]).unwrap(), 0.0);
        let d = jensenshannon(&[1.0, 0.0], &[0.0, 1.0]).unwrap();
        assert!((d - 2f64.ln().sqrt()).abs() < 1e-15);
        assert_eq!(
            jensenshannon(&[0.0], &[1.0]),
            Err(DriftError::Empty("first"))
        );
        assert!(matches!(
            jensenshannon(&[1.0], &[1.0, 1.0]),
            Err(DriftError::Mismatch(_))
        ));
    }
}
