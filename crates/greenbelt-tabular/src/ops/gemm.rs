//! `A·B` in f32 as ONNX Runtime's GEMM computes it: every output element is
//! a chain of fused multiply-adds over k, in k order, starting from zero, so
//! results are bit-identical to ONNX Runtime's. The chains are independent,
//! so they run side by side in SIMD lanes (pulp picks AVX-512, AVX2+FMA or a
//! scalar fused fallback at run time; this crate stays free of `unsafe`).
//!
//! Lanes run across output columns: B is packed per call into column
//! vectors and each element of A broadcast, eight rows at a time, as MLAS's
//! SGEMM does. Narrow outputs (linear models, output layers) leave lanes
//! idle, which still beats transposing A to put rows in lanes: the
//! transpose's scattered scalar moves cost more than the idle lanes (a
//! kernel that did so was 1.6× slower on `logreg` at batch 1024).

use pulp::bytemuck;
use pulp::{Arch, Simd, WithSimd};

/// How B is stored, row-major.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Layout {
    /// `[k, n]`: MatMul, Gemm without transB.
    KN,
    /// `[n, k]`: linear models' coefficients, Gemm with transB.
    NK,
}

/// Rows of A that share one load of B in the wide kernel: eight independent
/// chains keep both FMA pipes busy despite each FMA's latency.
const ROWS: usize = 8;

/// `a` is `[m, k]` row-major; returns `[m, n]` row-major. With `bias`
/// (`[n]`, which the caller checks), bias[j] is added to each finished chain in f32, which is what a
/// separate Add (or ONNX Runtime's GEMM with C) computes, bit for bit.
pub(crate) fn matmul(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    layout: Layout,
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let product = Product {
        a,
        m,
        k,
        b,
        layout,
        n,
        bias,
        out: &mut out,
    };
    if m == 1 && n * k <= ONE_ROW_MAX {
        product.one_row();
    } else {
        Arch::new().dispatch(product);
    }
    out
}

/// Products (`n·k`) under which one row is computed chain by chain rather
/// than through the SIMD kernel, whose packing of B would cost more than
/// the products (a linear model answering one request: `n` is 1 or a few).
const ONE_ROW_MAX: usize = 1024;

struct Product<'a> {
    a: &'a [f32],
    m: usize,
    k: usize,
    b: &'a [f32],
    layout: Layout,
    n: usize,
    bias: Option<&'a [f32]>,
    out: &'a mut [f32],
}

impl Product<'_> {
    /// B's element at (p, j) whatever the layout.
    #[inline(always)]
    fn b_at(&self, p: usize, j: usize) -> f32 {
        match self.layout {
            Layout::KN => self.b[p * self.n + j],
            Layout::NK => self.b[j * self.k + p],
        }
    }

    /// One row of A (`m` is 1): each output's chain on its own, the same
    /// fused multiply-adds in the same order as the SIMD lanes compute (so
    /// the result is bit-identical), and the bias added after, in f32.
    fn one_row(self) {
        for j in 0..self.n {
            let mut acc = 0f32;
            for (q, x) in self.a[..self.k].iter().enumerate() {
                acc = x.mul_add(self.b_at(q, j), acc);
            }
            self.out[j] = match self.bias {
                Some(bias) => acc + bias[j],
                None => acc,
            };
        }
    }
}

impl WithSimd for Product<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        wide(simd, self)
    }
}

/// B packed as `[column vector][k]`; each output vector a chain of FMAs.
#[inline(always)]
fn wide<S: Simd>(simd: S, p: Product<'_>) {
    let lanes = S::F32_LANES;
    let (m, k, n) = (p.m, p.k, p.n);
    let vectors = n.div_ceil(lanes);
    let mut packed = vec![simd.splat_f32s(0.0); vectors * k];
    {
        let flat: &mut [f32] = bytemuck::cast_slice_mut(&mut packed);
        for v in 0..vectors {
            for q in 0..k {
                let dst = &mut flat[(v * k + q) * lanes..(v * k + q + 1) * lanes];
                for (l, d) in dst.iter_mut().enumerate() {
                    let j = v * lanes + l;
                    if j < n {
                        *d = p.b_at(q, j);
                    }
                }
            }
        }
    }
    let bias: Vec<S::f32s> = match p.bias {
        Some(b) => (0..vectors)
            .map(|v| simd.partial_load_f32s(&b[v * lanes..((v + 1) * lanes).min(n)]))
            .collect(),
        None => Vec::new(),
    };
    let finish = |acc: S::f32s, v: usize| match bias.get(v) {
        Some(b) => simd.add_f32s(acc, *b),
        None => acc,
    };
    let a = p.a;
    let out = p.out;
    let mut i = 0;
    while i + ROWS <= m {
        // Eight named slices, each exactly k long, so that the loop over q
        // carries no bounds checks (an array of slices keeps them).
        let row = |r: usize| &a[(i + r) * k..][..k];
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
        for v in 0..vectors {
            let col = &packed[v * k..][..k];
            let mut acc = [simd.splat_f32s(0.0); ROWS];
            for (q, bv) in col.iter().enumerate() {
                let x: [f32; ROWS] = [r0[q], r1[q], r2[q], r3[q], r4[q], r5[q], r6[q], r7[q]];
                for (acc, x) in acc.iter_mut().zip(x) {
                    *acc = simd.mul_add_f32s(simd.splat_f32s(x), *bv, *acc);
                }
            }
            let (c0, c1) = (v * lanes, ((v + 1) * lanes).min(n));
            for (r, acc) in acc.iter().enumerate() {
                let o = &mut out[(i + r) * n + c0..(i + r) * n + c1];
                simd.partial_store_f32s(o, finish(*acc, v));
            }
        }
        i += ROWS;
    }
    for i in i..m {
        let row = &a[i * k..(i + 1) * k];
        for v in 0..vectors {
            let col = &packed[v * k..(v + 1) * k];
            let mut acc = simd.splat_f32s(0.0);
            for (x, bv) in row.iter().zip(col) {
                acc = simd.mul_add_f32s(simd.splat_f32s(*x), *bv, acc);
            }
            let (c0, c1) = (v * lanes, ((v + 1) * lanes).min(n));
            simd.partial_store_f32s(&mut out[i * n + c0..i * n + c1], finish(acc, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain the kernels must reproduce, one element at a time.
    fn reference(a: &[f32], m: usize, k: usize, b: &[f32], layout: Layout, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for q in 0..k {
                    let w = match layout {
                        Layout::KN => b[q * n + j],
                        Layout::NK => b[j * k + q],
                    };
                    acc = a[i * k + q].mul_add(w, acc);
                }
                out[i * n + j] = acc;
            }
        }
        out
    }

    /// Values whose products and sums round (so an unfused or reordered
    /// chain would show), with a few special values.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                match i % 97 {
                    13 => f32::NAN,
                    41 => -0.0,
                    71 => 1e30,
                    _ => (s as f32 / u32::MAX as f32 - 0.5) * 7.3,
                }
            })
            .collect()
    }

    #[test]
    fn every_shape_is_the_fused_chain_bit_for_bit() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 20, 1),
            (1, 30, 3),
            (1, 64, 20),
            (3, 7, 2),
            (17, 20, 3),
            (64, 30, 16),
            (65, 30, 16),
            (33, 16, 9),
            (5, 3, 40),
            (1024, 20, 8),
            (1024, 30, 16),
            (8, 30, 16),
            (15, 30, 33),
            (7, 0, 4),
        ] {
            let a = values(m * k, 1 + m as u32);
            for layout in [Layout::KN, Layout::NK] {
                let b = values(k * n, 7 + n as u32);
                let want = reference(&a, m, k, &b, layout, n);
                let got = matmul(&a, m, k, &b, layout, n, None);
                assert_eq!(got.len(), want.len());
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{m}x{k}x{n} {layout:?} at {idx}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_bias_is_the_chain_plus_bias_bit_for_bit() {
        for &(m, k, n) in &[
            (1, 20, 2),
            (17, 20, 3),
            (1024, 16, 3),
            (33, 30, 16),
            (9, 5, 40),
        ] {
            let a = values(m * k, 3 + m as u32);
            let b = values(k * n, 11 + n as u32);
            let bias = values(n, 5);
            for layout in [Layout::KN, Layout::NK] {
                let plain = reference(&a, m, k, &b, layout, n);
                let got = matmul(&a, m, k, &b, layout, n, Some(&bias));
                for (idx, (g, w)) in got.iter().zip(&plain).enumerate() {
                    let w = w + bias[idx % n];
                    assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{m}x{k}x{n} {layout:?} at {idx}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_row_by_chains_is_the_simd_kernel_bit_for_bit() {
        for &(k, n) in &[(1, 1), (20, 1), (20, 2), (30, 5), (50, 10), (7, 33)] {
            let a = values(k, 17 + k as u32);
            let b = values(k * n, 23 + n as u32);
            let bias = values(n, 9);
            for layout in [Layout::KN, Layout::NK] {
                for bias in [None, Some(bias.as_slice())] {
                    let mut chains = vec![0f32; n];
                    Product {
                        a: &a,
                        m: 1,
                        k,
                        b: &b,
                        layout,
                        n,
                        bias,
                        out: &mut chains,
                    }
                    .one_row();
                    let mut simd = vec![0f32; n];
                    Arch::new().dispatch(Product {
                        a: &a,
                        m: 1,
                        k,
                        b: &b,
                        layout,
                        n,
                        bias,
                        out: &mut simd,
                    });
                    for (g, w) in chains.iter().zip(&simd) {
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "1x{k}x{n} {layout:?}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn empty_products_are_empty_or_zero() {
        assert!(matmul(&[], 0, 3, &[1.0; 6], Layout::KN, 2, None).is_empty());
        assert_eq!(matmul(&[], 2, 0, &[], Layout::NK, 3, None), vec![0.0; 6]);
    }
}
