//! Feature binning. Each feature's values are rounded to `f32` (the ONNX
//! input type) and cut at up to `max_bins - 1` thresholds that are themselves
//! `f32`, so "bin <= b" is exactly "`x as f32 <= threshold[b]`": the test the
//! exported `BRANCH_LEQ` nodes make on the same `f32` input.

use crate::data::DenseMatrix;

/// Bin codes of every training value plus the thresholds that define them.
pub(crate) struct Binned {
    /// Column-major: `codes[f * rows + i]` is the bin of row `i`, feature `f`.
    codes: Vec<u8>,
    /// Per feature, ascending. Bin `b` holds `(thresholds[b - 1], thresholds[b]]`.
    thresholds: Vec<Vec<f32>>,
    rows: usize,
}

impl Binned {
    /// `max_bins` must lie in 2..=256 (checked by the caller).
    pub(crate) fn build(x: &DenseMatrix<'_>, max_bins: usize) -> Binned {
        let rows = x.rows();
        let mut codes = Vec::with_capacity(rows * x.cols());
        let mut thresholds = Vec::with_capacity(x.cols());
        let mut column: Vec<f32> = Vec::with_capacity(rows);
        for f in 0..x.cols() {
            column.clear();
            column.extend(x.iter_rows().map(|r| r[f] as f32));
            let cuts = cut_points(&column, max_bins);
            codes.extend(column.iter().map(|&v| bin_of(&cuts, v)));
            thresholds.push(cuts);
        }
        Binned {
            codes,
            thresholds,
            rows,
        }
    }

    pub(crate) fn column(&self, feature: usize) -> &[u8] {
        &self.codes[feature * self.rows..(feature + 1) * self.rows]
    }

    pub(crate) fn n_bins(&self, feature: usize) -> usize {
        self.thresholds[feature].len() + 1
    }

    /// The upper edge of `bin` (bins below the last only).
    pub(crate) fn threshold(&self, feature: usize, bin: u8) -> f32 {
        self.thresholds[feature][usize::from(bin)]
    }
}

/// The bin of `v`: how many thresholds lie strictly below it.
fn bin_of(thresholds: &[f32], v: f32) -> u8 {
    // At most 255 thresholds, so this fits.
    thresholds.partition_point(|t| *t < v) as u8
}

/// Thresholds between distinct values: every gap when there are at most
/// `max_bins` distinct values, else at (approximate) quantiles, never
/// splitting a run of equal values.
fn cut_points(values: &[f32], max_bins: usize) -> Vec<f32> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    // (value, count) of each distinct value; -0.0 and 0.0 are one value.
    let mut distinct: Vec<(f32, usize)> = Vec::new();
    for v in sorted {
        match distinct.last_mut() {
            Some((last, count)) if *last == v => *count += 1,
            _ => distinct.push((v, 1)),
        }
    }
    let gaps = distinct.windows(2).map(|w| (w[0].0, w[1].0));
    if distinct.len() <= max_bins {
        return gaps.map(|(a, b)| midpoint(a, b)).collect();
    }
    let n = values.len() as f64;
    let per_bin = n / max_bins as f64;
    let mut cuts = Vec::with_capacity(max_bins - 1);
    let mut seen = 0usize;
    let mut next_target = per_bin;
    for (k, (a, b)) in gaps.enumerate() {
        seen += distinct[k].1;
        if seen as f64 >= next_target {
            cuts.push(midpoint(a, b));
            if cuts.len() == max_bins - 1 {
                break;
            }
            while next_target <= seen as f64 {
                next_target += per_bin;
            }
        }
    }
    cuts
}

/// An `f32` threshold `t` with `a <= t < b`, near the middle (`a < b`).
fn midpoint(a: f32, b: f32) -> f32 {
    let m = ((f64::from(a) + f64::from(b)) * 0.5) as f32;
    if a <= m && m < b { m } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_distinct_values_get_one_bin_each() {
        let cuts = cut_points(&[3.0, 1.0, 2.0, 1.0, 3.0], 255);
        assert_eq!(cuts, vec![1.5, 2.5]);
        assert_eq!(bin_of(&cuts, 1.0), 0);
        assert_eq!(bin_of(&cuts, 1.5), 0, "a value on a threshold goes left");
        assert_eq!(bin_of(&cuts, 2.0), 1);
        assert_eq!(bin_of(&cuts, 3.0), 2);
        assert!(cut_points(&[7.0, 7.0], 255).is_empty());
    }

    #[test]
    fn many_values_get_quantile_bins_within_the_limit() {
        let values: Vec<f32> = (0..10_000).map(|i| (i % 1000) as f32).collect();
        let cuts = cut_points(&values, 16);
        assert!(cuts.len() <= 15 && cuts.len() >= 12, "{cuts:?}");
        assert!(cuts.windows(2).all(|w| w[0] < w[1]));
        let mut counts = [0usize; 16];
        for &v in &values {
            counts[usize::from(bin_of(&cuts, v))] += 1;
        }
        assert!(
            counts.iter().take(cuts.len()).all(|&c| c > 400),
            "{counts:?}"
        );
    }

    #[test]
    fn adjacent_floats_keep_a_valid_threshold() {
        let a = 1.0f32;
        let b = f32::from_bits(a.to_bits() + 1);
        let t = midpoint(a, b);
        assert!(a <= t && t < b);
    }

    #[test]
    fn bins_agree_with_the_f32_comparison() {
        let data: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 / 7.3).collect();
        let x = DenseMatrix::new(&data, 200, 1).unwrap();
        let binned = Binned::build(&x, 8);
        for (i, v) in data.iter().enumerate() {
            let code = binned.column(0)[i];
            for b in 0..binned.n_bins(0) - 1 {
                let b = b as u8;
                assert_eq!(code <= b, (*v as f32) <= binned.threshold(0, b));
            }
        }
    }
}
