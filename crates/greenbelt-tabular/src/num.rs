//! The two float types trees and scores are computed in (ONNX Runtime's
//! "threshold type": f64 for double inputs, f32 otherwise), and the
//! post-transforms ONNX-ML defines, in f32 as ONNX Runtime computes them.
//! The batched forms ([`logistic_batch`], [`softmax_rows`]) run in SIMD
//! lanes through `pulp`, like the GEMM.

use std::ops::{Add, AddAssign, Div, Neg, Sub};

use pulp::{Arch, Simd, WithSimd};

pub trait Num:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + AddAssign
    + Sub<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Default
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const HALF: Self;
    fn from_f32(v: f32) -> Self;
    fn from_f64(v: f64) -> Self;
    fn from_usize(v: usize) -> Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    fn to_usize(self) -> usize;
    fn is_nan(self) -> bool;
}

impl Num for f32 {
    const ZERO: f32 = 0.0;
    const HALF: f32 = 0.5;
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn from_usize(v: usize) -> f32 {
        v as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn to_usize(self) -> usize {
        self as usize
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Num for f64 {
    const ZERO: f64 = 0.0;
    const HALF: f64 = 0.5;
    fn from_f32(v: f32) -> f64 {
        f64::from(v)
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn from_usize(v: usize) -> f64 {
        v as f64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn to_usize(self) -> usize {
        self as usize
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// `post_transform` of the ONNX-ML operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl Post {
    /// From the string attribute (opset ≤ 3 operators).
    pub fn parse(s: &str) -> Option<Post> {
        Some(match s {
            "NONE" => Post::None,
            "LOGISTIC" => Post::Logistic,
            "SOFTMAX" => Post::Softmax,
            "SOFTMAX_ZERO" => Post::SoftmaxZero,
            "PROBIT" => Post::Probit,
            _ => return None,
        })
    }
}

/// The logistic function, computed on |x| for stability, in f32.
pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

/// The inverse error function by Winitzki's approximation (a = 0.147), in
/// f32, which is what ONNX-ML's PROBIT is defined through in ONNX Runtime.
fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

pub fn probit(x: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * x - 1.0)
}

/// Softmax in place, in f32: exp(x - max) / sum.
pub fn softmax(v: &mut [f32]) {
    let mut max = -f32::MAX;
    for x in v.iter() {
        if *x > max {
            max = *x;
        }
    }
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// SOFTMAX_ZERO: like softmax, but values within 1e-7 of zero stay (scaled) zero.
pub fn softmax_zero(v: &mut [f32]) {
    let mut max = -f32::MAX;
    for x in v.iter() {
        if *x > max {
            max = *x;
        }
    }
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        if *x > 0.000_000_1 || *x < -0.000_000_1 {
            *x = (*x - max).exp();
            sum += *x;
        } else {
            *x *= exp_neg_max;
        }
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// ONNX Runtime's batched logistic (MLAS `MlasComputeLogistic`, which its
/// `LinearClassifier`, `LinearRegressor` and `Sigmoid` use): a rational
/// approximation (Eigen's coefficients) on x clamped to [-18, 18], each step
/// a fused multiply-add as in MLAS's FMA3 kernel, the result clamped to
/// [0, 1]. NaN stays NaN. Computing the same steps keeps the engine at ONNX
/// Runtime's bits rather than within an approximation's error of them.
pub fn logistic_batch(v: &mut [f32]) {
    struct Logistic;
    impl LaneOp for Logistic {
        #[inline(always)]
        fn apply<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
            logistic_lanes(simd, x)
        }
    }
    map_lanes::<Logistic>(v);
}

/// An element-wise function over SIMD lanes.
trait LaneOp {
    fn apply<S: Simd>(simd: S, x: S::f32s) -> S::f32s;
}

/// `O` over every element of `v` in place: whole vectors, then the tail
/// through a partial load and store, on the best instruction set here.
fn map_lanes<O: LaneOp>(v: &mut [f32]) {
    struct Run<'a, O>(&'a mut [f32], std::marker::PhantomData<O>);
    impl<O: LaneOp> WithSimd for Run<'_, O> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            let (head, tail) = S::as_mut_simd_f32s(self.0);
            for x in head {
                *x = O::apply(simd, *x);
            }
            if !tail.is_empty() {
                let x = simd.partial_load_f32s(tail);
                simd.partial_store_f32s(tail, O::apply(simd, x));
            }
        }
    }
    Arch::new().dispatch(Run::<O>(v, std::marker::PhantomData));
}

#[inline(always)]
fn logistic_lanes<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    const A9: f32 = 4.370_31e-11;
    const A7: f32 = 1.156_273_2e-7;
    const A5: f32 = 6.085_749e-5;
    const A3: f32 = 8.513_771e-3;
    const A1: f32 = 2.482_879_5e-1;
    const B10: f32 = 6.102_473_7e-13;
    const B8: f32 = 5.761_021_4e-9;
    const B6: f32 = 6.291_068e-6;
    const B4: f32 = 1.701_988_2e-3;
    const B2: f32 = 1.168_176_5e-1;
    const B0: f32 = 9.931_519e-1;
    let c = |v: f32| simd.splat_f32s(v);
    // Clamp by compare-and-select, which leaves NaN alone.
    let lo = c(-18.0);
    let hi = c(18.0);
    let x = simd.select_f32s(simd.less_than_f32s(x, lo), lo, x);
    let x = simd.select_f32s(simd.greater_than_f32s(x, hi), hi, x);
    let x2 = simd.mul_f32s(x, x);
    let p = simd.mul_add_f32s(x2, c(A9), c(A7));
    let p = simd.mul_add_f32s(p, x2, c(A5));
    let p = simd.mul_add_f32s(p, x2, c(A3));
    let p = simd.mul_add_f32s(p, x2, c(A1));
    let p = simd.mul_f32s(p, x);
    let q = simd.mul_add_f32s(x2, c(B10), c(B8));
    let q = simd.mul_add_f32s(q, x2, c(B6));
    let q = simd.mul_add_f32s(q, x2, c(B4));
    let q = simd.mul_add_f32s(q, x2, c(B2));
    let q = simd.mul_add_f32s(q, x2, c(B0));
    let y = simd.add_f32s(simd.div_f32s(p, q), c(0.5));
    let y = simd.select_f32s(simd.less_than_f32s(y, c(0.0)), c(0.0), y);
    simd.select_f32s(simd.greater_than_f32s(y, c(1.0)), c(1.0), y)
}

/// e^x for x ≤ 0 (or NaN) in SIMD lanes: x = m·ln2 + r with m an integer
/// and |r| ≤ ln2/2 (ln2 split in two for the reduction), e^r by a degree-6
/// polynomial (Eigen's and MLAS's coefficients), scaled by 2^m built in the
/// exponent bits. Results below f32's normal range (x < -87.33) flush to 0;
/// within 2 ulp of the correctly rounded value elsewhere (tested).
#[inline(always)]
fn exp_nonpositive<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 6.931_457_5e-1;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const P0: f32 = 1.378_059_4e-3; // 0x1.694000p-10
    const P1: f32 = 8.373_124_5e-3; // 0x1.125edcp-7
    const P2: f32 = 4.166_953_6e-2; // 0x1.555b5ap-5
    const P3: f32 = 1.666_647_2e-1; // 0x1.555450p-3
    const P4: f32 = 4.999_998_5e-1; // 0x1.fffff6p-2
    /// 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
    const BIAS: f32 = 12_582_912.0;
    /// Below this, e^x is not a normal f32.
    const LOWEST: f32 = -87.336_55;
    let c = |v: f32| simd.splat_f32s(v);
    let tiny = simd.less_than_f32s(x, c(LOWEST));
    let xc = simd.select_f32s(tiny, c(0.0), x);
    let biased = simd.mul_add_f32s(xc, c(LOG2E), c(BIAS));
    let m = simd.sub_f32s(biased, c(BIAS));
    let r = simd.mul_add_f32s(m, c(-LN2_HI), xc);
    let r = simd.mul_add_f32s(m, c(-LN2_LO), r);
    let p = simd.mul_add_f32s(c(P0), r, c(P1));
    let p = simd.mul_add_f32s(p, r, c(P2));
    let p = simd.mul_add_f32s(p, r, c(P3));
    let p = simd.mul_add_f32s(p, r, c(P4));
    let p = simd.mul_add_f32s(p, r, c(1.0));
    let p = simd.mul_add_f32s(p, r, c(1.0));
    // m sits in the low bits of `biased`; shifted into the exponent field
    // and added to 1.0's bits it gives 2^m (m ≥ -126 here).
    let bits = simd.transmute_u32s_f32s(biased);
    let shifted = simd.wrapping_dyn_shl_u32s(bits, simd.splat_u32s(23));
    let scale = simd.transmute_f32s_u32s(simd.add_u32s(shifted, simd.splat_u32s(0x3f80_0000)));
    let y = simd.mul_f32s(p, scale);
    simd.select_f32s(tiny, c(0.0), y)
}

/// Softmax over each row of `len` contiguous values, in f32: exp(x - max)
/// with the exponentials in SIMD lanes across the whole buffer, then each
/// row scaled by the reciprocal of its sum (summed in order). A row whose max is NaN or
/// infinite comes out NaN where the scalar form would.
pub fn softmax_rows(v: &mut [f32], len: usize) {
    if len == 0 {
        return;
    }
    for row in v.chunks_exact_mut(len) {
        let mut max = f32::NEG_INFINITY;
        for x in row.iter() {
            if *x > max || x.is_nan() {
                max = *x;
            }
        }
        for x in row.iter_mut() {
            *x -= max;
        }
    }
    struct Exp;
    impl LaneOp for Exp {
        #[inline(always)]
        fn apply<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
            exp_nonpositive(simd, x)
        }
    }
    map_lanes::<Exp>(v);
    for row in v.chunks_exact_mut(len) {
        let sum: f32 = row.iter().sum();
        // One division per row, as MLAS's softmax scales by 1/sum.
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// Apply a post-transform to one row of two or more scores.
pub fn transform_row(post: Post, row: &mut [f32]) {
    match post {
        Post::None => {}
        Post::Logistic => row.iter_mut().for_each(|x| *x = logistic(*x)),
        Post::Probit => row.iter_mut().for_each(|x| *x = probit(*x)),
        Post::Softmax => softmax(row),
        Post::SoftmaxZero => softmax_zero(row),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One element of MLAS's FMA3 logistic kernel, with its constants as
    /// written in `logistic.cpp` (parsed here, so a mistyped constant above
    /// shows as a bit difference).
    fn mlas_logistic(x: f32) -> f32 {
        let k = |s: &str| -> f32 { s.parse().unwrap_or(f32::NAN) };
        let x = if x < -18.0 { -18.0 } else { x };
        let x = if x > 18.0 { 18.0 } else { x };
        let x2 = x * x;
        let p = x2.mul_add(k("4.37031012579801e-11"), k("1.15627324459942e-07"));
        let p = p.mul_add(x2, k("6.08574864600143e-05"));
        let p = p.mul_add(x2, k("8.51377133304701e-03"));
        let p = p.mul_add(x2, k("2.48287947061529e-01"));
        let p = p * x;
        let q = x2.mul_add(k("6.10247389755681e-13"), k("5.76102136993427e-09"));
        let q = q.mul_add(x2, k("6.29106785017040e-06"));
        let q = q.mul_add(x2, k("1.70198817374094e-03"));
        let q = q.mul_add(x2, k("1.16817656904453e-01"));
        let q = q.mul_add(x2, k("9.93151921023180e-01"));
        (p / q + 0.5).clamp(0.0, 1.0)
    }

    /// Edge values: zeros, subnormals, the clamp points, large, infinite, NaN.
    fn edges() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE / 3.0,
            1e-30,
            18.0,
            -18.0,
            17.999,
            -17.999,
            18.5,
            -18.5,
            88.0,
            -88.0,
            -87.336_55,
            -87.4,
            -103.0,
            -150.0,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        for i in -4000..=4000 {
            v.push(i as f32 * 0.0137);
        }
        v
    }

    #[test]
    fn batched_logistic_is_mlas_bit_for_bit_at_every_length() {
        let all = edges();
        for len in [1, 3, 7, 8, 15, 16, 17, 33, all.len()] {
            for start in [0, 5] {
                let src: Vec<f32> = all.iter().cycle().skip(start).take(len).copied().collect();
                let mut got = src.clone();
                logistic_batch(&mut got);
                for (x, g) in src.iter().zip(&got) {
                    let want = mlas_logistic(*x);
                    assert!(
                        g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                        "logistic({x:e}) = {g:e}, MLAS gives {want:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn batched_logistic_is_within_1e6_of_the_exact_logistic() {
        let src = edges();
        let mut got = src.clone();
        logistic_batch(&mut got);
        for (x, g) in src.iter().zip(&got) {
            if x.is_nan() {
                assert!(g.is_nan(), "logistic(NaN) = {g}");
                continue;
            }
            let exact = 1.0 / (1.0 + (-f64::from(*x)).exp());
            assert!(
                (f64::from(*g) - exact).abs() <= 1e-6,
                "logistic({x:e}) = {g:e}, exactly {exact:e}"
            );
            assert!((0.0..=1.0).contains(g));
        }
    }

    /// Distance in ulps between two finite f32 of one sign.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn lane_exp_is_within_two_ulps_on_the_normal_range() {
        let mut src: Vec<f32> = (0..200_000).map(|i| -(i as f32) * 4.366e-4).collect();
        src.extend([0.0, -0.0, -f32::from_bits(1), -87.336_55, -1e-20]);
        struct Run<'a>(&'a mut [f32]);
        impl WithSimd for Run<'_> {
            type Output = ();
            fn with_simd<S: Simd>(self, simd: S) {
                let (head, tail) = S::as_mut_simd_f32s(self.0);
                for x in head {
                    *x = exp_nonpositive(simd, *x);
                }
                let x = simd.partial_load_f32s(tail);
                simd.partial_store_f32s(tail, exp_nonpositive(simd, x));
            }
        }
        let mut got = src.clone();
        Arch::new().dispatch(Run(&mut got));
        for (x, g) in src.iter().zip(&got) {
            let want = f64::from(*x).exp() as f32;
            assert!(ulps(*g, want) <= 2, "exp({x:e}) = {g:e}, want {want:e}");
        }
        let mut below = [-87.4f32, -100.0, -1e30, f32::NEG_INFINITY, f32::NAN];
        Arch::new().dispatch(Run(&mut below));
        assert_eq!(below[..4], [0.0; 4]);
        assert!(below[4].is_nan());
    }

    /// The softmax the f64 path computes, rounded to f32.
    fn softmax_f64(row: &[f32]) -> Vec<f32> {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, x| m.max(f64::from(*x)));
        let e: Vec<f64> = row.iter().map(|x| (f64::from(*x) - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|x| (x / sum) as f32).collect()
    }

    #[test]
    fn softmax_rows_is_within_1e6_of_the_f64_softmax() {
        let vals = edges();
        for len in [1, 2, 3, 5, 16, 19] {
            let finite: Vec<f32> = vals
                .iter()
                .copied()
                .filter(|x| x.is_finite() && x.abs() < 200.0)
                .take(len * 97)
                .collect();
            let mut got = finite.clone();
            softmax_rows(&mut got, len);
            for (row, g) in finite.chunks_exact(len).zip(got.chunks_exact(len)) {
                for (w, g) in softmax_f64(row).iter().zip(g) {
                    assert!((w - g).abs() <= 1e-6, "softmax of {row:?}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn softmax_rows_with_nan_or_infinities_go_nan_as_the_f64_path_does() {
        for row in [
            vec![1.0, f32::NAN, 2.0],
            vec![f32::INFINITY, 1.0, 2.0],
            vec![f32::NEG_INFINITY; 3],
        ] {
            let mut got = row.clone();
            softmax_rows(&mut got, 3);
            let want = softmax_f64(&row);
            for (g, w) in got.iter().zip(&want) {
                assert!(g.is_nan() && w.is_nan(), "{row:?}: {got:?} vs {want:?}");
            }
        }
        let mut got = vec![f32::NEG_INFINITY, 0.0, -1e30];
        softmax_rows(&mut got, 3);
        assert_eq!(got, [0.0, 1.0, 0.0]);
    }
}
