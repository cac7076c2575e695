//! The two float types trees and scores are computed in (ONNX Runtime's
//! "threshold type": f64 for double inputs, f32 otherwise), and the
//! post-transforms ONNX-ML defines, in f32 as ONNX Runtime computes them.

use std::ops::{Add, AddAssign, Div, Neg, Sub};

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
