//! Deterministic synthetic data sets (binary classification and regression), for tests, demos
//! and benchmarks. They use only `+ - * /` and comparisons on `f64` over
//! [`SplitMix64`] draws, so any IEEE-754 implementation (the golden script's
//! Python included) reproduces them bit for bit.

use crate::data::DenseMatrix;
use crate::error::TrainError;
use crate::rng::SplitMix64;

/// An owned row-major feature matrix with 0/1 labels (or real targets).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub rows: usize,
    pub cols: usize,
}

impl Dataset {
    pub fn matrix(&self) -> Result<DenseMatrix<'_>, TrainError> {
        DenseMatrix::new(&self.x, self.rows, self.cols)
    }
}

/// The generating weights of [`linear`] (on the unscaled draws).
pub fn linear_weights(cols: usize) -> Vec<f64> {
    const W: [f64; 5] = [1.5, -1.0, 0.5, 2.0, -0.75];
    (0..cols).map(|j| W[j % W.len()]).collect()
}

/// A noisy linear problem. Per row and feature `j`, `s = 4u - 2` for a
/// uniform draw `u`, and the feature is `s * SCALE[j % 4] + OFFSET[j % 4]`
/// (scales from 0.1 to 100, to exercise standardisation). The label is
/// `0.25 + sum_j w_j s_j + 1.5 (u1 + u2 + u3 + u4 - 2) > 0`, four more draws
/// giving a bell-shaped noise.
pub fn linear(rows: usize, cols: usize, seed: u64) -> Dataset {
    const SCALE: [f64; 4] = [1.0, 10.0, 0.1, 100.0];
    const OFFSET: [f64; 4] = [0.0, 5.0, -1.0, 50.0];
    let w = linear_weights(cols);
    let mut rng = SplitMix64::new(seed);
    let mut x = Vec::with_capacity(rows * cols);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut z = 0.25;
        for (j, wj) in w.iter().enumerate() {
            let s = rng.next_f64() * 4.0 - 2.0;
            x.push(s * SCALE[j % 4] + OFFSET[j % 4]);
            z += wj * s;
        }
        let noise = (rng.next_f64() + rng.next_f64() + rng.next_f64() + rng.next_f64() - 2.0) * 1.5;
        y.push(if z + noise > 0.0 { 1.0 } else { 0.0 });
    }
    Dataset { x, y, rows, cols }
}

/// A noisy linear regression problem: the features of [`linear`] (same draws
/// for the same seed), and the target is the score itself,
/// `0.25 + sum_j w_j s_j + 1.5 (u1 + u2 + u3 + u4 - 2)`, not thresholded.
pub fn regression(rows: usize, cols: usize, seed: u64) -> Dataset {
    const SCALE: [f64; 4] = [1.0, 10.0, 0.1, 100.0];
    const OFFSET: [f64; 4] = [0.0, 5.0, -1.0, 50.0];
    let w = linear_weights(cols);
    let mut rng = SplitMix64::new(seed);
    let mut x = Vec::with_capacity(rows * cols);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut z = 0.25;
        for (j, wj) in w.iter().enumerate() {
            let s = rng.next_f64() * 4.0 - 2.0;
            x.push(s * SCALE[j % 4] + OFFSET[j % 4]);
            z += wj * s;
        }
        let noise = (rng.next_f64() + rng.next_f64() + rng.next_f64() + rng.next_f64() - 2.0) * 1.5;
        y.push(z + noise);
    }
    Dataset { x, y, rows, cols }
}

/// A problem no linear model separates: four features uniform in [-1, 1);
/// the label is 1 inside the disc `x0^2 + x1^2 < 0.5`, then flipped with
/// probability 0.1 (a fifth draw `< 0.1`). Features 2 and 3 are noise. The
/// best possible ROC AUC is about 0.9; a linear model gets about 0.5.
pub fn disc(rows: usize, seed: u64) -> Dataset {
    let cols = 4;
    let mut rng = SplitMix64::new(seed);
    let mut x = Vec::with_capacity(rows * cols);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let start = x.len();
        for _ in 0..cols {
            x.push(rng.next_f64() * 2.0 - 1.0);
        }
        let inside = x[start] * x[start] + x[start + 1] * x[start + 1] < 0.5;
        let flip = rng.next_f64() < 0.1;
        y.push(if inside != flip { 1.0 } else { 0.0 });
    }
    Dataset { x, y, rows, cols }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_balanced_enough() {
        let a = linear(1000, 5, 1);
        assert_eq!(a, linear(1000, 5, 1));
        assert_ne!(a.x, linear(1000, 5, 2).x);
        let pos = a.y.iter().sum::<f64>() / 1000.0;
        assert!((0.3..0.7).contains(&pos), "{pos}");
        let d = disc(1000, 1);
        let pos = d.y.iter().sum::<f64>() / 1000.0;
        assert!((0.3..0.6).contains(&pos), "{pos}");
        assert_eq!(d.matrix().unwrap().cols(), 4);
    }
}
