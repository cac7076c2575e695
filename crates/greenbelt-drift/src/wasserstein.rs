//! Wasserstein-1 distance between two samples (scipy `wasserstein_distance`).
//!
//! W1 = ∫ |F_a(x) − F_b(x)| dx over the pooled sorted values: between two
//! consecutive pooled values the empirical CDFs (counting values `<= x`) are
//! constant, so the integral is a sum of |ΔF|·gap. One merge pass over the
//! sorted samples; the sum is compensated (Neumaier), so it is at least as
//! accurate as scipy's dot product.

use crate::Result;
use crate::ks::{check_sample, check_sorted, sorted_copy};

/// W1 of two samples of finite values (any order).
pub fn wasserstein_distance(a: &[f64], b: &[f64]) -> Result<f64> {
    check_sample(a, "first")?;
    check_sample(b, "second")?;
    Ok(w1_sorted_unchecked(&sorted_copy(a), &sorted_copy(b)))
}

/// W1 of two sorted samples of finite values.
pub fn wasserstein_sorted(a: &[f64], b: &[f64]) -> Result<f64> {
    check_sample(a, "first")?;
    check_sample(b, "second")?;
    check_sorted(a, "first")?;
    check_sorted(b, "second")?;
    Ok(w1_sorted_unchecked(a, b))
}

fn w1_sorted_unchecked(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut sum = NeumaierSum::default();
    let mut prev: Option<(f64, f64)> = None; // (value, |F_a − F_b| there)
    loop {
        let x = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.min(*y),
            (Some(x), None) => *x,
            (None, Some(y)) => *y,
            (None, None) => break,
        };
        if let Some((px, pdiff)) = prev {
            sum.add(pdiff * (x - px));
        }
        while a.get(i).is_some_and(|v| *v <= x) {
            i += 1;
        }
        while b.get(j).is_some_and(|v| *v <= x) {
            j += 1;
        }
        prev = Some((x, (i as f64 / n1 - j as f64 / n2).abs()));
    }
    sum.value()
}

/// Neumaier's compensated sum.
#[derive(Default)]
struct NeumaierSum {
    sum: f64,
    comp: f64,
}

impl NeumaierSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }
    fn value(&self) -> f64 {
        self.sum + self.comp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DriftError;

    #[test]
    fn known_values() {
        // scipy docs: wasserstein_distance([0, 1, 3], [5, 6, 8]) == 5.0
        assert_eq!(
            wasserstein_distance(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]).unwrap(),
            5.0
        );
        assert_eq!(wasserstein_distance(&[1.0, 2.0], &[2.0, 1.0]).unwrap(), 0.0);
        assert_eq!(wasserstein_distance(&[0.0], &[2.5]).unwrap(), 2.5);
    }

    #[test]
    fn errors() {
        assert_eq!(
            wasserstein_distance(&[], &[1.0]),
            Err(DriftError::Empty("first"))
        );
        assert_eq!(
            wasserstein_distance(&[1.0], &[f64::NEG_INFINITY]),
            Err(DriftError::NotFinite("second"))
        );
        assert!(matches!(
            wasserstein_sorted(&[1.0], &[3.0, 2.0]),
            Err(DriftError::Mismatch(_))
        ));
    }
}
