//! `LinearClassifier` and `LinearRegressor` (ai.onnx.ml): scores = X·Wᵀ + b in
//! f32 (each dot product the fused multiply-add chain of `gemm`), with ONNX
//! Runtime's label and post-transform rules.

use std::borrow::Cow;

use greenbelt_core::TensorData;

use crate::attrs::NodeCtx;
use crate::error::EngineError;
use crate::num::{Post, logistic_batch, probit, transform_row};
use crate::ops::gemm::{Layout, matmul};
use crate::ops::tree::Labels;
use crate::ops::{Kernel, input};
use crate::value::{Value, ValueRef, numeric_f32};

/// X·Wᵀ + b for every row; `w` is `[k, f]` row-major. The bias is added to
/// the finished chain in f32, as ONNX Runtime adds C to the GEMM result.
pub(crate) fn affine(
    x: &[f32],
    n: usize,
    f: usize,
    w: &[f32],
    b: Option<&[f32]>,
    k: usize,
) -> Vec<f32> {
    matmul(x, n, f, w, Layout::NK, k, b.filter(|b| b.len() == k))
}

/// The post-transform of two or more scores per row, as ONNX Runtime's
/// `batched_update_scores_inplace` applies it: LOGISTIC over the whole
/// buffer with MLAS's batched logistic, the others row by row.
fn batched_transform(post: Post, z: &mut [f32], k: usize) {
    if post == Post::Logistic {
        logistic_batch(z);
    } else {
        for row in z.chunks_exact_mut(k) {
            transform_row(post, row);
        }
    }
}

fn float_rows(x: ValueRef<'_>) -> Result<(usize, usize, Cow<'_, [f32]>), String> {
    let (n, f) = x.rows_cols()?;
    if let TensorData::Fp32(v) = x.data {
        return Ok((n, f, Cow::Borrowed(v.as_slice())));
    }
    let v = numeric_f32(x.data)
        .ok_or_else(|| format!("takes numeric inputs, got {}", x.data.datatype()))?;
    Ok((n, f, Cow::Owned(v)))
}

pub struct LinearClassifier {
    coef: Vec<f32>,
    intercepts: Vec<f32>,
    k: usize,
    labels: Labels,
    post: Post,
}

impl LinearClassifier {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<LinearClassifier, EngineError> {
        let intercepts = ctx.floats("intercepts").to_vec();
        let coef = ctx.floats("coefficients").to_vec();
        let k = intercepts.len();
        if k == 0 || !coef.len().is_multiple_of(k) {
            return Err(ctx.invalid(format!(
                "{} coefficients do not split into {k} classes",
                coef.len()
            )));
        }
        Ok(LinearClassifier {
            coef,
            intercepts,
            k,
            labels: Labels::from_ctx(ctx, "classlabels_ints")?,
            post: Post::parse(&ctx.string("post_transform", "NONE"))
                .ok_or_else(|| ctx.unsupported("post_transform"))?,
        })
    }
}

impl Kernel for LinearClassifier {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let (n, f, x) = float_rows(input(inputs, 0)?)?;
        if f * self.k != self.coef.len() {
            return Err(format!(
                "the input has {f} features, the model has {} coefficients per class",
                self.coef.len() / self.k
            ));
        }
        let scores = affine(&x, n, f, &self.coef, Some(&self.intercepts), self.k);
        let two = self.labels.len() == 2;
        // Int labels are picked directly; string labels by index, then named.
        let label_of: Vec<i64> = match &self.labels {
            Labels::Int(v) => v.clone(),
            Labels::Str(v) => (0..v.len() as i64).collect(),
        };
        let label = |c: usize| label_of.get(c).copied().unwrap_or(c as i64);
        let picks: Vec<i64> = if self.k == 1 {
            scores
                .iter()
                .map(|s| match (two, *s > 0.0) {
                    (true, true) => label(1),
                    (true, false) => label(0),
                    (false, true) => 1,
                    (false, false) => 0,
                })
                .collect()
        } else {
            let last = label_of.len().saturating_sub(1);
            scores
                .chunks_exact(self.k)
                .map(|row| {
                    let mut best = 0;
                    for (j, s) in row.iter().enumerate().skip(1) {
                        if *s > row[best] {
                            best = j;
                        }
                    }
                    label(best.min(last))
                })
                .collect()
        };
        let picks = match &self.labels {
            Labels::Int(_) => TensorData::Int64(picks),
            Labels::Str(_) => self.labels.tensor(&picks),
        };
        let (cols, z) = if self.k == 1 {
            if self.post == Post::Probit {
                (1, scores.iter().map(|s| probit(*s)).collect())
            } else if two {
                (2, scores.iter().flat_map(|s| [1.0 - *s, *s]).collect())
            } else {
                (1, scores)
            }
        } else {
            let mut z = scores;
            batched_transform(self.post, &mut z, self.k);
            (self.k, z)
        };
        Ok(vec![
            Value::new(vec![n], picks),
            Value::new(vec![n, cols], TensorData::Fp32(z)),
        ])
    }
}

pub struct LinearRegressor {
    coef: Vec<f32>,
    intercepts: Option<Vec<f32>>,
    k: usize,
    post: Post,
}

impl LinearRegressor {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<LinearRegressor, EngineError> {
        let k = ctx.index("targets", ctx.int("targets", 1))?;
        let coef = ctx.floats("coefficients").to_vec();
        if k == 0 || !coef.len().is_multiple_of(k) {
            return Err(ctx.invalid(format!(
                "{} coefficients do not split into {k} targets",
                coef.len()
            )));
        }
        let intercepts = ctx.floats("intercepts");
        Ok(LinearRegressor {
            coef,
            intercepts: (intercepts.len() == k).then(|| intercepts.to_vec()),
            k,
            post: Post::parse(&ctx.string("post_transform", "NONE"))
                .ok_or_else(|| ctx.unsupported("post_transform"))?,
        })
    }
}

impl Kernel for LinearRegressor {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        if !matches!(x.data, TensorData::Fp32(_)) {
            return Err(format!("takes float inputs, got {}", x.data.datatype()));
        }
        let (n, f, x) = float_rows(x)?;
        if f * self.k != self.coef.len() {
            return Err(format!(
                "the input has {f} features, the model has {} coefficients per target",
                self.coef.len() / self.k
            ));
        }
        let mut z = affine(&x, n, f, &self.coef, self.intercepts.as_deref(), self.k);
        if self.k == 1 {
            if self.post == Post::Probit {
                z.iter_mut().for_each(|v| *v = probit(*v));
            }
        } else {
            batched_transform(self.post, &mut z, self.k);
        }
        Ok(vec![Value::new(vec![n, self.k], TensorData::Fp32(z))])
    }
}
