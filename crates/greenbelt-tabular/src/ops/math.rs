//! Standard-domain math: Gemm, MatMul, element-wise binary ops with numpy
//! broadcasting, Sigmoid, Relu, Softmax and ArgMax.

use greenbelt_core::TensorData;

use crate::attrs::NodeCtx;
use crate::error::EngineError;
use crate::num::{logistic_batch, softmax_rows};
use crate::ops::gemm::{Layout, matmul};
use crate::ops::{Kernel, input};
use crate::value::{Value, ValueRef};

/// The broadcast shape of two shapes, numpy's rules.
fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

/// A shape without its leading 1s.
fn trimmed(s: &[usize]) -> &[usize] {
    let first = s.iter().position(|d| *d != 1).unwrap_or(s.len());
    &s[first..]
}

/// Flat index into a broadcast operand for every output position.
fn offsets(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n = out.len();
    let total: usize = out.iter().product();
    let mut strides = vec![0usize; n];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let oi = i + n - shape.len();
        strides[oi] = if shape[i] == 1 { 0 } else { acc };
        acc *= shape[i];
    }
    let mut idx = vec![0usize; n];
    let mut offs = Vec::with_capacity(total);
    for _ in 0..total {
        offs.push(idx.iter().zip(&strides).map(|(i, s)| i * s).sum());
        for d in (0..n).rev() {
            idx[d] += 1;
            if idx[d] < out[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    offs
}

fn zip_broadcast<T: Copy>(
    a: &[T],
    sa: &[usize],
    b: &[T],
    sb: &[usize],
    f: impl Fn(T, T) -> T,
) -> Result<(Vec<usize>, Vec<T>), String> {
    let out = broadcast(sa, sb)?;
    if sa == sb {
        return Ok((out, a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()));
    }
    if b.len() == 1 {
        return Ok((out, a.iter().map(|x| f(*x, b[0])).collect()));
    }
    // b repeats along a's leading dimensions (a bias row): chunk by chunk.
    if out.as_slice() == sa
        && !b.is_empty()
        && a.len().is_multiple_of(b.len())
        && sa.ends_with(trimmed(sb))
    {
        let mut v = Vec::with_capacity(a.len());
        for chunk in a.chunks_exact(b.len()) {
            v.extend(chunk.iter().zip(b).map(|(x, y)| f(*x, *y)));
        }
        return Ok((out, v));
    }
    let oa = offsets(sa, &out);
    let ob = offsets(sb, &out);
    Ok((
        out,
        oa.iter().zip(&ob).map(|(i, j)| f(a[*i], b[*j])).collect(),
    ))
}

/// `a = f(a, b)` in place, when the result has a's shape and b is a's
/// shape, a scalar or a row repeated along a's leading dimensions (the
/// cases `zip_broadcast` walks without index tables); false otherwise.
fn zip_in_place<T: Copy>(
    a: &mut [T],
    sa: &[usize],
    b: &[T],
    sb: &[usize],
    f: impl Fn(T, T) -> T,
) -> bool {
    if broadcast(sa, sb).ok().as_deref() != Some(sa) {
        return false;
    }
    if sa == sb {
        a.iter_mut().zip(b).for_each(|(x, y)| *x = f(*x, *y));
    } else if b.len() == 1 {
        a.iter_mut().for_each(|x| *x = f(*x, b[0]));
    } else if !b.is_empty() && a.len().is_multiple_of(b.len()) && sa.ends_with(trimmed(sb)) {
        for chunk in a.chunks_exact_mut(b.len()) {
            chunk.iter_mut().zip(b).for_each(|(x, y)| *x = f(*x, *y));
        }
    } else {
        return false;
    }
    true
}

#[derive(Debug, Clone, Copy)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

pub struct Binary(pub BinaryOp);

impl Binary {
    fn in_place(&self, x: &mut Value, b: ValueRef<'_>) -> bool {
        match (&mut x.data, b.data) {
            (TensorData::Fp32(v), TensorData::Fp32(w)) => match self.0 {
                BinaryOp::Add => zip_in_place(v, &x.shape, w, b.shape, |p, q| p + q),
                BinaryOp::Sub => zip_in_place(v, &x.shape, w, b.shape, |p, q| p - q),
                BinaryOp::Mul => zip_in_place(v, &x.shape, w, b.shape, |p, q| p * q),
                BinaryOp::Div => zip_in_place(v, &x.shape, w, b.shape, |p, q| p / q),
            },
            (TensorData::Fp64(v), TensorData::Fp64(w)) => match self.0 {
                BinaryOp::Add => zip_in_place(v, &x.shape, w, b.shape, |p, q| p + q),
                BinaryOp::Sub => zip_in_place(v, &x.shape, w, b.shape, |p, q| p - q),
                BinaryOp::Mul => zip_in_place(v, &x.shape, w, b.shape, |p, q| p * q),
                BinaryOp::Div => zip_in_place(v, &x.shape, w, b.shape, |p, q| p / q),
            },
            _ => false,
        }
    }
}

impl Kernel for Binary {
    fn reuses_input(&self) -> bool {
        true
    }

    fn run_owned(
        &self,
        mut x: Value,
        inputs: &[Option<ValueRef<'_>>],
    ) -> Result<Vec<Value>, String> {
        let b = input(inputs, 1)?;
        if self.in_place(&mut x, b) {
            return Ok(vec![x]);
        }
        self.run(&[Some(x.as_ref()), Some(b)])
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let a = input(inputs, 0)?;
        let b = input(inputs, 1)?;
        macro_rules! apply {
            ($x:expr, $y:expr, $variant:ident) => {{
                let (shape, v) = match self.0 {
                    BinaryOp::Add => zip_broadcast($x, a.shape, $y, b.shape, |p, q| p + q)?,
                    BinaryOp::Sub => zip_broadcast($x, a.shape, $y, b.shape, |p, q| p - q)?,
                    BinaryOp::Mul => zip_broadcast($x, a.shape, $y, b.shape, |p, q| p * q)?,
                    BinaryOp::Div => zip_broadcast($x, a.shape, $y, b.shape, |p, q| p / q)?,
                };
                Value::new(shape, TensorData::$variant(v))
            }};
        }
        let v = match (a.data, b.data) {
            (TensorData::Fp32(x), TensorData::Fp32(y)) => apply!(x, y, Fp32),
            (TensorData::Fp64(x), TensorData::Fp64(y)) => apply!(x, y, Fp64),
            (TensorData::Int64(x), TensorData::Int64(y)) => {
                if matches!(self.0, BinaryOp::Div) && y.contains(&0) {
                    return Err("integer division by zero".into());
                }
                let (shape, v) = match self.0 {
                    BinaryOp::Add => zip_broadcast(x, a.shape, y, b.shape, i64::wrapping_add)?,
                    BinaryOp::Sub => zip_broadcast(x, a.shape, y, b.shape, i64::wrapping_sub)?,
                    BinaryOp::Mul => zip_broadcast(x, a.shape, y, b.shape, i64::wrapping_mul)?,
                    BinaryOp::Div => zip_broadcast(x, a.shape, y, b.shape, i64::wrapping_div)?,
                };
                Value::new(shape, TensorData::Int64(v))
            }
            (x, y) => {
                return Err(format!(
                    "takes two float, double or int64 tensors of one type, got {} and {}",
                    x.datatype(),
                    y.datatype()
                ));
            }
        };
        Ok(vec![v])
    }
}

pub enum Unary {
    Sigmoid,
    Relu,
}

impl Kernel for Unary {
    fn reuses_input(&self) -> bool {
        true
    }

    fn run_owned(
        &self,
        mut x: Value,
        inputs: &[Option<ValueRef<'_>>],
    ) -> Result<Vec<Value>, String> {
        match (self, &mut x.data) {
            (Unary::Sigmoid, TensorData::Fp32(v)) => logistic_batch(v),
            (Unary::Sigmoid, TensorData::Fp64(v)) => {
                v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()));
            }
            (Unary::Relu, TensorData::Fp32(v)) => {
                v.iter_mut()
                    .for_each(|x| *x = if *x < 0.0 { 0.0 } else { *x });
            }
            (Unary::Relu, TensorData::Fp64(v)) => {
                v.iter_mut()
                    .for_each(|x| *x = if *x < 0.0 { 0.0 } else { *x });
            }
            _ => {
                let mut all = inputs.to_vec();
                all[0] = Some(x.as_ref());
                return self.run(&all);
            }
        }
        Ok(vec![x])
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let data = match (self, x.data) {
            (Unary::Sigmoid, TensorData::Fp32(v)) => {
                let mut v = v.clone();
                logistic_batch(&mut v);
                TensorData::Fp32(v)
            }
            (Unary::Sigmoid, TensorData::Fp64(v)) => {
                TensorData::Fp64(v.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect())
            }
            // NaN stays NaN (f32::max would turn it into 0).
            (Unary::Relu, TensorData::Fp32(v)) => {
                TensorData::Fp32(v.iter().map(|x| if *x < 0.0 { 0.0 } else { *x }).collect())
            }
            (Unary::Relu, TensorData::Fp64(v)) => {
                TensorData::Fp64(v.iter().map(|x| if *x < 0.0 { 0.0 } else { *x }).collect())
            }
            (_, other) => return Err(format!("takes float or double, got {}", other.datatype())),
        };
        Ok(vec![Value::new(x.shape.to_vec(), data)])
    }
}

/// f32 or f64 matrix data as f64, with its kind.
fn float_data(v: &TensorData) -> Result<(Vec<f64>, bool), String> {
    match v {
        TensorData::Fp32(x) => Ok((x.iter().map(|v| f64::from(*v)).collect(), false)),
        TensorData::Fp64(x) => Ok((x.clone(), true)),
        other => Err(format!("takes float or double, got {}", other.datatype())),
    }
}

fn float_out(v: Vec<f64>, double: bool) -> TensorData {
    if double {
        TensorData::Fp64(v)
    } else {
        TensorData::Fp32(v.into_iter().map(|x| x as f32).collect())
    }
}

pub struct Gemm {
    alpha: f64,
    beta: f64,
    trans_a: bool,
    trans_b: bool,
}

impl Gemm {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<Gemm, EngineError> {
        Ok(Gemm {
            alpha: f64::from(ctx.float("alpha", 1.0)),
            beta: f64::from(ctx.float("beta", 1.0)),
            trans_a: ctx.int("transA", 0) != 0,
            trans_b: ctx.int("transB", 0) != 0,
        })
    }
}

impl Gemm {
    /// f32 A (not transposed) and B: dot products over B's rows when B is
    /// transposed (the linear-model layout), else row-wise accumulation.
    fn f32_path(
        &self,
        a: &[f32],
        b: &[f32],
        c: Option<ValueRef<'_>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Vec<Value>, String> {
        let cv: Option<(Vec<f64>, Vec<usize>)> = match c {
            Some(c) => {
                broadcast(c.shape, &[m, n])?;
                let (cv, _) = float_data(c.data)?;
                let (ro, co) = match (c.shape, cv.len()) {
                    (_, 1) => (0, 0),
                    ([_, 1], _) => (1, 0),
                    ([1, _] | [_], l) if l == n => (0, 1),
                    _ => (n, 1),
                };
                Some((cv, vec![ro, co]))
            }
            None => None,
        };
        let alpha = self.alpha as f32;
        let beta = self.beta as f32;
        let c32: Option<(Vec<f32>, [usize; 2])> =
            cv.map(|(v, s)| (v.into_iter().map(|x| x as f32).collect(), [s[0], s[1]]));
        let finish = |i: usize, j: usize, acc: f32| -> f32 {
            let v = if alpha == 1.0 { acc } else { alpha * acc };
            match &c32 {
                Some((c, s)) => v + beta * c[i * s[0] + j * s[1]],
                None => v,
            }
        };
        let layout = if self.trans_b { Layout::NK } else { Layout::KN };
        let mut out = matmul(a, m, k, b, layout, n, None);
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = finish(i, j, out[i * n + j]);
            }
        }
        Ok(vec![Value::new(vec![m, n], TensorData::Fp32(out))])
    }
}

impl Kernel for Gemm {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let a = input(inputs, 0)?;
        let b = input(inputs, 1)?;
        let c = inputs.get(2).copied().flatten();
        let ([ar, ac], [br, bc]) = (a.shape, b.shape) else {
            return Err(format!(
                "takes 2-D A and B, got {:?} and {:?}",
                a.shape, b.shape
            ));
        };
        let (m, k) = if self.trans_a { (*ac, *ar) } else { (*ar, *ac) };
        let (k2, n) = if self.trans_b { (*bc, *br) } else { (*br, *bc) };
        if k != k2 {
            return Err(format!("A is {m}×{k} and B is {k2}×{n} after transposes"));
        }
        if let (TensorData::Fp32(av), TensorData::Fp32(bv), false) = (a.data, b.data, self.trans_a)
        {
            return self.f32_path(av, bv, c, m, k, n);
        }
        let (av, double) = float_data(a.data)?;
        let (bv, _) = float_data(b.data)?;
        let at = |i: usize, p: usize| {
            if self.trans_a {
                av[p * m + i]
            } else {
                av[i * k + p]
            }
        };
        let bt = |p: usize, j: usize| {
            if self.trans_b {
                bv[j * k + p]
            } else {
                bv[p * n + j]
            }
        };
        let cb = match c {
            Some(c) => {
                let (cv, _) = float_data(c.data)?;
                let (shape, off) = (c.shape, offsets(c.shape, &[m, n]));
                broadcast(shape, &[m, n])?;
                Some((cv, off))
            }
            None => None,
        };
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += at(i, p) * bt(p, j);
                }
                let mut v = self.alpha * s;
                if let Some((cv, off)) = &cb {
                    v += self.beta * cv[off[i * n + j]];
                }
                out.push(v);
            }
        }
        Ok(vec![Value::new(vec![m, n], float_out(out, double))])
    }
}

pub struct MatMul;

impl Kernel for MatMul {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let a = input(inputs, 0)?;
        let b = input(inputs, 1)?;
        let (m, k, a_vec) = match a.shape {
            [k] => (1, *k, true),
            [m, k] => (*m, *k, false),
            s => return Err(format!("takes 1-D or 2-D A, got {s:?}")),
        };
        let (k2, n, b_vec) = match b.shape {
            [k] => (*k, 1, true),
            [k, n] => (*k, *n, false),
            s => return Err(format!("takes 1-D or 2-D B, got {s:?}")),
        };
        if k != k2 {
            return Err(format!("A is {m}×{k} and B is {k2}×{n}"));
        }
        let shape = match (a_vec, b_vec) {
            (true, true) => vec![],
            (true, false) => vec![n],
            (false, true) => vec![m],
            (false, false) => vec![m, n],
        };
        let data = match (a.data, b.data) {
            (TensorData::Fp32(av), TensorData::Fp32(bv)) => {
                TensorData::Fp32(matmul(av, m, k, bv, Layout::KN, n, None))
            }
            _ => {
                let (av, double) = float_data(a.data)?;
                let (bv, _) = float_data(b.data)?;
                let mut out = vec![0f64; m * n];
                for i in 0..m {
                    let row = &mut out[i * n..(i + 1) * n];
                    for p in 0..k {
                        let x = av[i * k + p];
                        for (o, w) in row.iter_mut().zip(&bv[p * n..(p + 1) * n]) {
                            *o += x * w;
                        }
                    }
                }
                float_out(out, double)
            }
        };
        Ok(vec![Value::new(shape, data)])
    }
}

/// A MatMul whose only reader is an Add of a constant f32 row (`[n]` or
/// `[1, n]`), fused by the graph at load: the row is added to each finished
/// chain as it is stored, which is what the two nodes compute, bit for bit,
/// without a second pass over the product.
pub struct MatMulBias {
    bias: Vec<f32>,
    bias_shape: Vec<usize>,
}

impl MatMulBias {
    pub fn new(bias: Vec<f32>, bias_shape: Vec<usize>) -> MatMulBias {
        MatMulBias { bias, bias_shape }
    }
}

impl Kernel for MatMulBias {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let a = input(inputs, 0)?;
        let b = input(inputs, 1)?;
        if let ([m, k], [k2, n], TensorData::Fp32(av), TensorData::Fp32(bv)) =
            (a.shape, b.shape, a.data, b.data)
            && k == k2
            && *n == self.bias.len()
        {
            let out = matmul(av, *m, *k, bv, Layout::KN, *n, Some(&self.bias));
            return Ok(vec![Value::new(vec![*m, *n], TensorData::Fp32(out))]);
        }
        // Any other shapes or types: the two nodes one after the other.
        let product = MatMul
            .run(inputs)?
            .into_iter()
            .next()
            .ok_or("MatMul gave no output")?;
        let bias = Value::new(self.bias_shape.clone(), TensorData::Fp32(self.bias.clone()));
        Binary(BinaryOp::Add).run(&[Some(product.as_ref()), Some(bias.as_ref())])
    }
}

/// Split a shape around `axis` into (outer, axis length, inner).
fn around(shape: &[usize], axis: i64) -> Result<(usize, usize, usize, usize), String> {
    let r = shape.len() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(format!("axis {axis} is out of range for shape {shape:?}"));
    }
    let a = a as usize;
    let outer = shape[..a].iter().product();
    let len = shape.get(a).copied().unwrap_or(1);
    let inner = shape.get(a + 1..).map_or(1, |s| s.iter().product());
    Ok((a, outer, len, inner))
}

pub struct Softmax {
    axis: i64,
    /// Opset < 13: the input is coerced to 2-D at `axis`.
    coerce: bool,
}

impl Softmax {
    pub fn new(ctx: &NodeCtx<'_>) -> Softmax {
        let coerce = ctx.opset < 13;
        Softmax {
            axis: ctx.int("axis", if coerce { 1 } else { -1 }),
            coerce,
        }
    }
}

impl Softmax {
    /// (outer, axis length, inner) of the normalised axis.
    fn split(&self, shape: &[usize]) -> Result<(usize, usize, usize), String> {
        let (_, outer, len, inner) = around(shape, self.axis)?;
        Ok(if self.coerce {
            (outer, len * inner, 1)
        } else {
            (outer, len, inner)
        })
    }
}

impl Kernel for Softmax {
    fn reuses_input(&self) -> bool {
        true
    }

    fn run_owned(
        &self,
        mut x: Value,
        inputs: &[Option<ValueRef<'_>>],
    ) -> Result<Vec<Value>, String> {
        let (_, len, inner) = self.split(&x.shape)?;
        if let (TensorData::Fp32(v), 1) = (&mut x.data, inner) {
            softmax_rows(v, len);
            return Ok(vec![x]);
        }
        let mut all = inputs.to_vec();
        all[0] = Some(x.as_ref());
        self.run(&all)
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let (outer, len, inner) = self.split(x.shape)?;
        if let (TensorData::Fp32(v), 1) = (x.data, inner) {
            let mut v = v.clone();
            softmax_rows(&mut v, len);
            return Ok(vec![Value::new(x.shape.to_vec(), TensorData::Fp32(v))]);
        }
        let (mut v, double) = float_data(x.data)?;
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| o * len * inner + j * inner + i;
                let mut max = f64::NEG_INFINITY;
                for j in 0..len {
                    max = max.max(v[at(j)]);
                }
                let mut sum = 0.0;
                for j in 0..len {
                    let e = (v[at(j)] - max).exp();
                    v[at(j)] = e;
                    sum += e;
                }
                for j in 0..len {
                    v[at(j)] /= sum;
                }
            }
        }
        Ok(vec![Value::new(x.shape.to_vec(), float_out(v, double))])
    }
}

pub struct ArgMax {
    axis: i64,
    keepdims: bool,
    last: bool,
}

impl ArgMax {
    pub fn new(ctx: &NodeCtx<'_>) -> ArgMax {
        ArgMax {
            axis: ctx.int("axis", 0),
            keepdims: ctx.int("keepdims", 1) != 0,
            last: ctx.int("select_last_index", 0) != 0,
        }
    }
}

impl ArgMax {
    /// The index of the largest value along the axis, for every other
    /// position; the first (or with `select_last_index` the last) of ties.
    fn pick<T: PartialOrd>(&self, v: &[T], outer: usize, len: usize, inner: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let mut best = 0usize;
                for j in 1..len {
                    let cur = &v[o * len * inner + j * inner + i];
                    let top = &v[o * len * inner + best * inner + i];
                    if cur > top || (self.last && cur == top) {
                        best = j;
                    }
                }
                out.push(best as i64);
            }
        }
        out
    }
}

impl ArgMax {
    /// `pick` for the last axis: one contiguous row per output.
    fn pick_rows(&self, v: &[f32], len: usize) -> Vec<i64> {
        v.chunks_exact(len)
            .map(|row| {
                let mut best = 0usize;
                let mut top = row[0];
                for (j, cur) in row.iter().enumerate().skip(1) {
                    if *cur > top || (self.last && *cur == top) {
                        best = j;
                        top = *cur;
                    }
                }
                best as i64
            })
            .collect()
    }
}

impl Kernel for ArgMax {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let (a, outer, len, inner) = around(x.shape, self.axis)?;
        let out = match x.data {
            TensorData::Fp32(v) if inner == 1 && len > 0 => self.pick_rows(v, len),
            TensorData::Fp32(v) => self.pick(v, outer, len, inner),
            TensorData::Fp64(v) => self.pick(v, outer, len, inner),
            TensorData::Int64(v) => self.pick(v, outer, len, inner),
            TensorData::Int32(v) => self.pick(v, outer, len, inner),
            other => return Err(format!("takes float or double, got {}", other.datatype())),
        };
        let mut shape = x.shape.to_vec();
        if self.keepdims {
            shape[a] = 1;
        } else {
            shape.remove(a);
        }
        Ok(vec![Value::new(shape, TensorData::Int64(out))])
    }
}
