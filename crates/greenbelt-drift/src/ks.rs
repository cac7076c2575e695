//! Two-sample Kolmogorov–Smirnov, two-sided, equal to `scipy.stats.ks_2samp`
//! with `method='auto'`.
//!
//! **Statistic.** D = max over the pooled values x of |F_a(x) − F_b(x)|, the
//! empirical CDFs counting values `<= x` (scipy's `searchsorted(...,
//! side='right')`), so ties between the samples are handled as scipy does.
//! One merge pass over the two sorted samples; `ks_2samp` sorts copies first
//! (O(n log n) in all).
//!
//! **p-value.** scipy's `auto` rule: when max(n1, n2) <= 10 000 the exact
//! null distribution is used (D rounded to a multiple of 1/lcm(n1, n2), as
//! scipy rounds it, and that rounded D is the statistic reported): for
//! n1 = n2 the closed alternating sum for paths leaving the square band, else
//! the lattice-path recursion of Hodges / Viehmann, O(max(n)·D·min(n)). If
//! that result is not a probability (rounding), scipy falls back to the
//! asymptotic value, and so does this. Otherwise the p-value is
//! `kstwo.sf(D, round(n1·n2/(n1+n2)))`, the one-sample two-sided KS
//! distribution, computed as scipy computes it (see `kolmogorov.rs`).

use crate::kolmogorov::kstwo_sf;
use crate::{DriftError, Result};

/// scipy's `MAX_AUTO_N`: `auto` tries the exact p-value up to this size.
pub const MAX_EXACT_N: u64 = 10_000;

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
    check_sample(a, "first")?;
    check_sample(b, "second")?;
    let (a, b) = (sorted_copy(a), sorted_copy(b));
    ks_sorted_unchecked(&a, &b)
}

/// KS of two sorted samples of finite values.
pub fn ks_2samp_sorted(a: &[f64], b: &[f64]) -> Result<KsResult> {
    check_sample(a, "first")?;
    check_sample(b, "second")?;
    check_sorted(a, "first")?;
    check_sorted(b, "second")?;
    ks_sorted_unchecked(a, b)
}

/// The two-sided p-value of statistic `d` for sample sizes `n1`, `n2`, with
/// scipy's `auto` choice of method (for callers that computed D themselves,
/// e.g. from sorted streams). `d` is clamped to [0, 1]; a NaN `d` or an
/// empty sample (`n1` or `n2` = 0) has no p-value: NaN comes back.
pub fn ks_pvalue(d: f64, n1: u64, n2: u64) -> (f64, KsMethod) {
    if d.is_nan() || n1 == 0 || n2 == 0 {
        return (f64::NAN, KsMethod::Asymptotic);
    }
    let (_, p, method) = pvalue_auto(d.clamp(0.0, 1.0), n1, n2);
    (p, method)
}

fn ks_sorted_unchecked(a: &[f64], b: &[f64]) -> Result<KsResult> {
    let d = statistic_sorted(a, b);
    let (statistic, pvalue, method) = pvalue_auto(d, a.len() as u64, b.len() as u64);
    Ok(KsResult {
        statistic,
        pvalue,
        method,
    })
}

pub(crate) fn check_sample(x: &[f64], which: &'static str) -> Result<()> {
    if x.is_empty() {
        return Err(DriftError::Empty(which));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(DriftError::NotFinite(which));
    }
    Ok(())
}

pub(crate) fn check_sorted(x: &[f64], which: &'static str) -> Result<()> {
    match x.windows(2).position(|w| w[0] > w[1]) {
        None => Ok(()),
        Some(i) => Err(DriftError::Mismatch(format!(
            "{which} sample is not sorted ascending (index {} > index {}); \
             sort it or call the unsorted variant",
            i,
            i + 1
        ))),
    }
}

pub(crate) fn sorted_copy(x: &[f64]) -> Vec<f64> {
    let mut v = x.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v
}

/// D of two sorted, non-empty samples: one pass over the distinct pooled
/// values, F counting values `<= x`. Returns max(max diff, −min diff) with
/// scipy's tie-break (the larger side, positive side on equality).
fn statistic_sorted(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let (mut max_s, mut min_s) = (f64::NEG_INFINITY, f64::INFINITY);
    loop {
        let x = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.min(*y),
            (Some(x), None) => *x,
            (None, Some(y)) => *y,
            (None, None) => break,
        };
        while a.get(i).is_some_and(|v| *v <= x) {
            i += 1;
        }
        while b.get(j).is_some_and(|v| *v <= x) {
            j += 1;
        }
        let diff = i as f64 / n1 - j as f64 / n2;
        max_s = max_s.max(diff);
        min_s = min_s.min(diff);
    }
    let min_s = (-min_s).clamp(0.0, 1.0);
    if min_s > max_s { min_s } else { max_s }
}

/// scipy's `auto` rule: `(statistic, p-value, method)`; the statistic is D
/// rounded to the lattice when the exact method was tried.
fn pvalue_auto(d: f64, n1: u64, n2: u64) -> (f64, f64, KsMethod) {
    if n1.max(n2) <= MAX_EXACT_N {
        let (d_lattice, p) = attempt_exact(n1, n2, d);
        match p {
            Some(p) => return (d_lattice, p, KsMethod::Exact),
            None => {
                return (
                    d_lattice,
                    asymptotic(d_lattice, n1, n2),
                    KsMethod::Asymptotic,
                );
            }
        }
    }
    (d, asymptotic(d, n1, n2), KsMethod::Asymptotic)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The asymptotic two-sided p-value of `d` whatever the sample sizes
/// (scipy's `method='asymp'`): for a D that is itself approximate (read off
/// a window sketch), where counting lattice paths exactly would cost
/// O(n1·n2) for nothing. NaN for a NaN `d` or an empty sample.
pub fn ks_pvalue_asymptotic(d: f64, n1: u64, n2: u64) -> f64 {
    if d.is_nan() || n1 == 0 || n2 == 0 {
        return f64::NAN;
    }
    asymptotic(d.clamp(0.0, 1.0), n1, n2)
}

/// `kstwo.sf(d, round(n1·n2/(n1+n2)))`, clipped to [0, 1].
fn asymptotic(d: f64, n1: u64, n2: u64) -> f64 {
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = (m * n / (m + n)).round_ties_even();
    kstwo_sf(en as u64, d).clamp(0.0, 1.0)
}

/// scipy's `_attempt_exact_2kssamp` (two-sided): D on the lattice of
/// multiples of 1/lcm, and the exact p-value unless it came out of range.
fn attempt_exact(n1: u64, n2: u64, d: f64) -> (f64, Option<f64>) {
    let g = gcd(n1, n2);
    let lcm = (n1 / g) * n2;
    let h = (d * lcm as f64).round_ties_even() as u64;
    let d = h as f64 / lcm as f64;
    if h == 0 {
        return (d, Some(1.0));
    }
    let p = if n1 == n2 {
        prob_outside_square(n1, h)
    } else {
        prob_outside_band(n1, n2, g, h)
    };
    if (0.0..=1.0).contains(&p) {
        (d, Some(p))
    } else {
        (d, None)
    }
}

/// Pr(D_{n,n} >= h/n): 2·Σ_k (−1)^k C(2n, n−kh)/C(2n, n), each ratio formed
/// as a product of h factors and the alternating sum nested Horner-like to
/// avoid cancellation (scipy's `_compute_prob_outside_square`).
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as i64, h as i64);
    let mut p = 0.0;
    let mut k = n / h;
    while k >= 0 {
        let mut p1 = 1.0;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// The share of lattice paths from (0,0) to (m,n) that leave the band
/// |x/m − y/n| < h/lcm (scipy's `_compute_outer_prob_inside_method`,
/// Viehmann's recursion for 1 − p inside Hodges' inside method): one column
/// of the path-count matrix at a time, over a sliding window.
fn prob_outside_band(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = (m.max(n) as i64, m.min(n) as i64);
    let (mg, ng, h) = ((m as u64 / g) as i64, (n as u64 / g) as i64, h as i64);
    let mut minj = 0i64;
    let mut maxj = ((h as f64 / mg as f64).ceil() as i64).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1).max(1) as usize;
    let mut a = vec![1.0f64; len_a];
    a.iter_mut()
        .take(maxj.max(0) as usize)
        .for_each(|v| *v = 0.0);
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = ((((ng * i - h) as f64 / mg as f64).floor() as i64) + 1).max(0);
        minj = minj.min(n);
        maxj = (((ng * i + h) as f64 / mg as f64).ceil() as i64).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        let fi = i as f64;
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            let prev = a
                .get((jj + minj - lastminj) as usize)
                .copied()
                .unwrap_or(1.0);
            val = (prev * fi + val * j as f64) / (i + j) as f64;
            if let Some(slot) = a.get_mut(jj as usize) {
                *slot = val;
            }
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            // The entries the window no longer covers are carried over as 1.
            a.iter_mut()
                .take(lastlen as usize)
                .skip(curlen as usize)
                .for_each(|v| *v = 1.0);
        }
    }
    a.get((maxj - minj - 1) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistic_uses_searchsorted_right_on_ties() {
        // scipy: ks_2samp([1, 2, 2, 3], [2, 2, 2, 4]).statistic == 0.25
        let r = ks_2samp(&[1.0, 2.0, 2.0, 3.0], &[2.0, 2.0, 2.0, 4.0]).unwrap();
        assert_eq!(r.statistic, 0.25);
        let r = ks_2samp(&[1.0, 1.0], &[1.0]).unwrap();
        assert_eq!(
            (r.statistic, r.pvalue, r.method),
            (0.0, 1.0, KsMethod::Exact)
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(ks_2samp(&[], &[1.0]), Err(DriftError::Empty("first")));
        assert_eq!(ks_2samp(&[1.0], &[]), Err(DriftError::Empty("second")));
        assert_eq!(
            ks_2samp(&[1.0, f64::NAN], &[1.0]),
            Err(DriftError::NotFinite("first"))
        );
        assert_eq!(
            ks_2samp(&[1.0], &[f64::INFINITY]),
            Err(DriftError::NotFinite("second"))
        );
        assert!(matches!(
            ks_2samp_sorted(&[2.0, 1.0], &[1.0]),
            Err(DriftError::Mismatch(_))
        ));
    }

    #[test]
    fn pvalue_edge_cases_do_not_panic() {
        assert!(ks_pvalue(f64::NAN, 3, 4).0.is_nan());
        assert!(ks_pvalue(0.5, 0, 4).0.is_nan());
        assert_eq!(ks_pvalue(-1.0, 3, 4), (1.0, KsMethod::Exact));
        let (p, m) = ks_pvalue(2.0, 3, 4);
        assert!((0.0..=1.0).contains(&p));
        assert_eq!(m, KsMethod::Exact);
        let (p, m) = ks_pvalue(1.0, 20_000, 1);
        assert_eq!(m, KsMethod::Asymptotic);
        assert!((0.0..=1.0).contains(&p));
        let (p, _) = ks_pvalue(0.0, u64::MAX, u64::MAX);
        assert!((0.0..=1.0).contains(&p));
    }

    #[test]
    fn exact_falls_back_where_scipy_does() {
        // scipy 1.17.1: _attempt_exact_2kssamp(10000, 10000, 10000, h/10000)
        // returns a "probability" of 1.0000000000000002 for these h, and
        // ks_2samp then uses the asymptotic p-value.
        let scipy_fails = [
            1, 3, 4, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 21, 23, 24, 25,
        ];
        for h in 1..60u64 {
            let (_, method) = ks_pvalue(h as f64 / 10_000.0, 10_000, 10_000);
            let want = if scipy_fails.contains(&h) {
                KsMethod::Asymptotic
            } else {
                KsMethod::Exact
            };
            assert_eq!(method, want, "h = {h}");
        }
    }

    #[test]
    fn exact_path_count_equals_brute_force() {
        // Enumerate all C(m+n, n) interleavings for small m, n and count
        // those with D >= d.
        for (m, n) in [(3u64, 2u64), (4, 4), (5, 3), (6, 4)] {
            let total = m + n;
            let mut hits = vec![0u64; (m * n + 1) as usize];
            let mut count = 0u64;
            for mask in 0u64..(1 << total) {
                if mask.count_ones() as u64 != n {
                    continue;
                }
                count += 1;
                let (mut i, mut j, mut dmax) = (0i64, 0i64, 0i64);
                for k in 0..total {
                    if mask >> k & 1 == 1 {
                        j += 1
                    } else {
                        i += 1
                    }
                    dmax = dmax.max((i * n as i64 - j * m as i64).abs());
                }
                hits[dmax as usize] += 1;
            }
            // D takes values h/(m·n) with h a multiple of gcd(m, n).
            for h in (gcd(m, n)..=m * n).step_by(gcd(m, n) as usize) {
                let tail: u64 = hits[h as usize..].iter().sum();
                let want = tail as f64 / count as f64;
                let got = ks_pvalue(h as f64 / (m * n) as f64, m, n).0;
                assert!(
                    (got - want).abs() < 1e-12,
                    "m={m} n={n} h={h}: {got} vs {want}"
                );
            }
        }
    }
}
