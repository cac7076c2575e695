//! Preprocessing and plumbing: Scaler, Normalizer, Imputer, OneHotEncoder,
//! LabelEncoder, ZipMap, ArrayFeatureExtractor (ai.onnx.ml) and Cast, Concat,
//! Identity, Reshape, Flatten.

use std::collections::HashMap;

use bytes::Bytes;
use greenbelt_core::TensorData;

use crate::attrs::NodeCtx;
use crate::error::EngineError;
use crate::ops::tree::Labels;
use crate::ops::{Kernel, input};
use crate::proto::elem;
use crate::value::{Value, ValueRef, numeric_f32, numeric_f64};

/// A per-column parameter of length 1 (broadcast) or C.
fn per_column(v: &[f32], c: usize, what: &str) -> Result<(), String> {
    if v.len() == 1 || v.len() == c {
        Ok(())
    } else {
        Err(format!(
            "{what} has {} values, the input has {c} columns",
            v.len()
        ))
    }
}

pub struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Scaler {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<Scaler, EngineError> {
        Ok(Scaler {
            offset: ctx.floats("offset").to_vec(),
            scale: ctx.floats("scale").to_vec(),
        })
    }
}

impl Scaler {
    /// `(x - offset) * scale` per column, in place on `[N, c]` f32 data.
    fn apply(&self, v: &mut [f32], c: usize) -> Result<(), String> {
        per_column(&self.offset, c, "offset")?;
        per_column(&self.scale, c, "scale")?;
        let widen = |p: &[f32]| -> Vec<f32> {
            if p.len() == 1 {
                vec![p[0]; c]
            } else {
                p.to_vec()
            }
        };
        let (offset, scale) = (widen(&self.offset), widen(&self.scale));
        for row in v.chunks_exact_mut(c.max(1)) {
            for ((x, o), s) in row.iter_mut().zip(&offset).zip(&scale) {
                *x = (*x - o) * s;
            }
        }
        Ok(())
    }
}

impl Kernel for Scaler {
    fn reuses_input(&self) -> bool {
        true
    }

    fn run_owned(
        &self,
        mut x: Value,
        inputs: &[Option<ValueRef<'_>>],
    ) -> Result<Vec<Value>, String> {
        let (_, c) = x.as_ref().rows_cols()?;
        if let TensorData::Fp32(v) = &mut x.data {
            self.apply(v, c)?;
            return Ok(vec![x]);
        }
        let mut all = inputs.to_vec();
        all[0] = Some(x.as_ref());
        self.run(&all)
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let (_, c) = x.rows_cols()?;
        let mut v = numeric_f32(x.data).ok_or("takes numeric inputs")?;
        self.apply(&mut v, c)?;
        Ok(vec![Value::new(x.shape.to_vec(), TensorData::Fp32(v))])
    }
}

#[derive(Clone, Copy)]
enum Norm {
    Max,
    L1,
    L2,
}

pub struct Normalizer(Norm);

impl Normalizer {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<Normalizer, EngineError> {
        Ok(Normalizer(match ctx.string("norm", "MAX").as_str() {
            "MAX" => Norm::Max,
            "L1" => Norm::L1,
            "L2" => Norm::L2,
            other => return Err(ctx.unsupported(format!("norm \"{other}\""))),
        }))
    }
}

impl Kernel for Normalizer {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let (_, c) = x.rows_cols()?;
        // ONNX Runtime's arithmetic: squares in the input type, sums in f32,
        // L2 as sign(x)·sqrt(x²/Σx²) (so an overflowing sum gives NaN), and
        // a zero sum (or max) leaves the row as it is.
        let wide = numeric_f64(x.data).ok_or("takes numeric inputs")?;
        let mut out = Vec::with_capacity(wide.len());
        for row in wide.chunks(c.max(1)) {
            match self.0 {
                Norm::Max => {
                    let mut m = f32::MIN;
                    for v in row {
                        let v = *v as f32;
                        if m < v {
                            m = v;
                        }
                    }
                    if m != 0.0 {
                        out.extend(row.iter().map(|v| *v as f32 / m));
                    } else {
                        out.extend(row.iter().map(|v| *v as f32));
                    }
                }
                Norm::L1 => {
                    let mut s = 0f32;
                    for v in row {
                        s += v.abs() as f32;
                    }
                    if s != 0.0 {
                        out.extend(row.iter().map(|v| *v as f32 / s));
                    } else {
                        out.extend(row.iter().map(|v| *v as f32));
                    }
                }
                Norm::L2 => {
                    let sq: Vec<f32> = row
                        .iter()
                        .map(|v| match x.data {
                            TensorData::Fp32(_) => {
                                let f = *v as f32;
                                f * f
                            }
                            _ => (v * v) as f32,
                        })
                        .collect();
                    let mut s = 0f32;
                    for q in &sq {
                        s += q;
                    }
                    if s != 0.0 {
                        out.extend(row.iter().zip(&sq).map(|(v, q)| {
                            let r = (q / s).sqrt();
                            if *v < 0.0 { -r } else { r }
                        }));
                    } else {
                        out.extend(row.iter().map(|v| *v as f32));
                    }
                }
            }
        }
        Ok(vec![Value::new(x.shape.to_vec(), TensorData::Fp32(out))])
    }
}

pub struct Imputer {
    floats: Vec<f32>,
    replaced_f: f32,
    ints: Vec<i64>,
    replaced_i: i64,
}

impl Imputer {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<Imputer, EngineError> {
        let floats = ctx.floats("imputed_value_floats").to_vec();
        let ints = ctx.ints("imputed_value_int64s").to_vec();
        if floats.is_empty() && ints.is_empty() {
            return Err(ctx.invalid("needs imputed_value_floats or imputed_value_int64s"));
        }
        Ok(Imputer {
            floats,
            replaced_f: ctx.float("replaced_value_float", 0.0),
            ints,
            replaced_i: ctx.int("replaced_value_int64", 0),
        })
    }
}

impl Imputer {
    /// Replace the missing marker (NaN, or `replaced_value_float`) per
    /// column, in place on `[N, c]` f32 data.
    fn impute_floats(&self, v: &mut [f32], c: usize) -> Result<(), String> {
        per_column(&self.floats, c, "imputed_value_floats")?;
        let fill: Vec<f32> = if self.floats.len() == 1 {
            vec![self.floats[0]; c]
        } else {
            self.floats.clone()
        };
        let nan = self.replaced_f.is_nan();
        for row in v.chunks_exact_mut(c.max(1)) {
            for (x, f) in row.iter_mut().zip(&fill) {
                let hit = if nan {
                    x.is_nan()
                } else {
                    *x == self.replaced_f
                };
                if hit {
                    *x = *f;
                }
            }
        }
        Ok(())
    }
}

impl Kernel for Imputer {
    fn reuses_input(&self) -> bool {
        true
    }

    fn run_owned(
        &self,
        mut x: Value,
        inputs: &[Option<ValueRef<'_>>],
    ) -> Result<Vec<Value>, String> {
        let (_, c) = x.as_ref().rows_cols()?;
        if let (TensorData::Fp32(v), false) = (&mut x.data, self.floats.is_empty()) {
            self.impute_floats(v, c)?;
            return Ok(vec![x]);
        }
        let mut all = inputs.to_vec();
        all[0] = Some(x.as_ref());
        self.run(&all)
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let (_, c) = x.rows_cols()?;
        let data = match x.data {
            TensorData::Fp32(v) if !self.floats.is_empty() => {
                let mut v = v.clone();
                self.impute_floats(&mut v, c)?;
                TensorData::Fp32(v)
            }
            TensorData::Int64(v) if !self.ints.is_empty() => {
                if self.ints.len() != 1 && self.ints.len() != c {
                    return Err(format!(
                        "imputed_value_int64s has {} values, the input has {c} columns",
                        self.ints.len()
                    ));
                }
                TensorData::Int64(
                    v.iter()
                        .enumerate()
                        .map(|(i, x)| {
                            if *x == self.replaced_i {
                                if self.ints.len() == 1 {
                                    self.ints[0]
                                } else {
                                    self.ints[i % c]
                                }
                            } else {
                                *x
                            }
                        })
                        .collect(),
                )
            }
            other => {
                return Err(format!(
                    "cannot impute {} values with this node's attributes",
                    other.datatype()
                ));
            }
        };
        Ok(vec![Value::new(x.shape.to_vec(), data)])
    }
}

/// A hashable key for category lookups: strings, integers, or float bits
/// (NaN normalised so that NaN keys match NaN inputs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    S(Bytes),
    I(i64),
    F(u32),
}

fn float_key(v: f32) -> Key {
    if v.is_nan() {
        Key::F(f32::NAN.to_bits())
    } else if v == 0.0 {
        Key::F(0)
    } else {
        Key::F(v.to_bits())
    }
}

pub struct OneHotEncoder {
    index: HashMap<Key, usize>,
    n: usize,
    zeros: bool,
    strings: bool,
}

impl OneHotEncoder {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<OneHotEncoder, EngineError> {
        let strings = ctx.strings("cats_strings");
        let ints = ctx.ints("cats_int64s");
        let (index, n, is_str): (HashMap<Key, usize>, usize, bool) = if !strings.is_empty() {
            let n = strings.len();
            (
                strings
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| (Key::S(s), i))
                    .collect(),
                n,
                true,
            )
        } else if !ints.is_empty() {
            (
                ints.iter()
                    .enumerate()
                    .map(|(i, v)| (Key::I(*v), i))
                    .collect(),
                ints.len(),
                false,
            )
        } else {
            return Err(ctx.invalid("needs cats_strings or cats_int64s"));
        };
        Ok(OneHotEncoder {
            index,
            n,
            zeros: ctx.int("zeros", 1) != 0,
            strings: is_str,
        })
    }
}

impl Kernel for OneHotEncoder {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let keys: Vec<Key> = match (x.data, self.strings) {
            (TensorData::Bytes(v), true) => v.iter().cloned().map(Key::S).collect(),
            (TensorData::Int64(v), false) => v.iter().map(|x| Key::I(*x)).collect(),
            (TensorData::Int32(v), false) => v.iter().map(|x| Key::I(i64::from(*x))).collect(),
            (TensorData::Fp32(v), false) => v.iter().map(|x| Key::I(*x as i64)).collect(),
            (TensorData::Fp64(v), false) => v.iter().map(|x| Key::I(*x as i64)).collect(),
            (other, _) => {
                return Err(format!(
                    "the categories are {}, the input is {}",
                    if self.strings { "strings" } else { "integers" },
                    other.datatype()
                ));
            }
        };
        let mut out = vec![0f32; keys.len() * self.n];
        for (i, k) in keys.iter().enumerate() {
            match self.index.get(k) {
                Some(j) => out[i * self.n + j] = 1.0,
                None if self.zeros => {}
                None => return Err(format!("unknown category {k:?} and zeros = 0")),
            }
        }
        let mut shape = x.shape.to_vec();
        shape.push(self.n);
        Ok(vec![Value::new(shape, TensorData::Fp32(out))])
    }
}

#[derive(Debug, Clone)]
enum Out {
    S(Vec<Bytes>, Bytes),
    I(Vec<i64>, i64),
    F(Vec<f32>, f32),
    V1 {
        classes: Vec<Bytes>,
        default_int: i64,
        default_str: Bytes,
    },
}

pub struct LabelEncoder {
    index: HashMap<Key, usize>,
    values: Out,
}

impl LabelEncoder {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<LabelEncoder, EngineError> {
        if ctx.opset <= 1 || ctx.has("classes_strings") {
            // Opset 1: a string maps to its position in classes_strings, an
            // integer to the string at that position.
            let classes = ctx.strings("classes_strings");
            let index = classes
                .iter()
                .enumerate()
                .map(|(i, s)| (Key::S(s.clone()), i))
                .collect();
            return Ok(LabelEncoder {
                index,
                values: Out::V1 {
                    classes,
                    default_int: ctx.int("default_int64", -1),
                    default_str: Bytes::from(ctx.string("default_string", "_Unused")),
                },
            });
        }
        let tensor_keys = ctx.tensor("keys_tensor")?;
        let tensor_values = ctx.tensor("values_tensor")?;
        let keys: Vec<Key> = match tensor_keys {
            Some(t) => keys_of(&t.data).ok_or_else(|| ctx.unsupported("keys_tensor type"))?,
            None => {
                let s = ctx.strings("keys_strings");
                if !s.is_empty() {
                    s.into_iter().map(Key::S).collect()
                } else if ctx.has("keys_int64s") {
                    ctx.ints("keys_int64s").iter().map(|v| Key::I(*v)).collect()
                } else {
                    ctx.floats("keys_floats")
                        .iter()
                        .map(|v| float_key(*v))
                        .collect()
                }
            }
        };
        let default = ctx.tensor("default_tensor")?;
        let values = match tensor_values {
            Some(t) => match t.data {
                TensorData::Bytes(v) => Out::S(
                    v,
                    match default.map(|d| d.data) {
                        Some(TensorData::Bytes(d)) => d.first().cloned().unwrap_or_default(),
                        _ => Bytes::from_static(b"_Unused"),
                    },
                ),
                TensorData::Int64(v) => Out::I(
                    v,
                    match default.map(|d| d.data) {
                        Some(TensorData::Int64(d)) => d.first().copied().unwrap_or(-1),
                        _ => -1,
                    },
                ),
                TensorData::Fp32(v) => Out::F(
                    v,
                    match default.map(|d| d.data) {
                        Some(TensorData::Fp32(d)) => d.first().copied().unwrap_or(-0.0),
                        _ => -0.0,
                    },
                ),
                _ => return Err(ctx.unsupported("values_tensor type")),
            },
            None => {
                let s = ctx.strings("values_strings");
                if !s.is_empty() {
                    Out::S(s, Bytes::from(ctx.string("default_string", "_Unused")))
                } else if ctx.has("values_int64s") {
                    Out::I(
                        ctx.ints("values_int64s").to_vec(),
                        ctx.int("default_int64", -1),
                    )
                } else {
                    Out::F(
                        ctx.floats("values_floats").to_vec(),
                        ctx.float("default_float", -0.0),
                    )
                }
            }
        };
        let n_values = match &values {
            Out::S(v, _) => v.len(),
            Out::I(v, _) => v.len(),
            Out::F(v, _) => v.len(),
            Out::V1 { classes, .. } => classes.len(),
        };
        if n_values != keys.len() {
            return Err(ctx.invalid(format!("{} keys but {n_values} values", keys.len())));
        }
        let mut index = HashMap::with_capacity(keys.len());
        for (i, k) in keys.into_iter().enumerate() {
            index.entry(k).or_insert(i);
        }
        Ok(LabelEncoder { index, values })
    }
}

fn keys_of(data: &TensorData) -> Option<Vec<Key>> {
    Some(match data {
        TensorData::Bytes(v) => v.iter().cloned().map(Key::S).collect(),
        TensorData::Int64(v) => v.iter().map(|x| Key::I(*x)).collect(),
        TensorData::Fp32(v) => v.iter().map(|x| float_key(*x)).collect(),
        _ => return None,
    })
}

impl Kernel for LabelEncoder {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let keys = keys_of(x.data).ok_or_else(|| {
            format!(
                "takes string, int64 or float inputs, got {}",
                x.data.datatype()
            )
        })?;
        let data = match &self.values {
            Out::S(v, d) => TensorData::Bytes(
                keys.iter()
                    .map(|k| {
                        self.index
                            .get(k)
                            .map_or_else(|| d.clone(), |i| v[*i].clone())
                    })
                    .collect(),
            ),
            Out::I(v, d) => TensorData::Int64(
                keys.iter()
                    .map(|k| self.index.get(k).map_or(*d, |i| v[*i]))
                    .collect(),
            ),
            Out::F(v, d) => TensorData::Fp32(
                keys.iter()
                    .map(|k| self.index.get(k).map_or(*d, |i| v[*i]))
                    .collect(),
            ),
            Out::V1 {
                classes,
                default_int,
                default_str,
            } => match x.data {
                TensorData::Bytes(_) => TensorData::Int64(
                    keys.iter()
                        .map(|k| self.index.get(k).map_or(*default_int, |i| *i as i64))
                        .collect(),
                ),
                _ => TensorData::Bytes(
                    keys.iter()
                        .map(|k| match k {
                            Key::I(i) => usize::try_from(*i)
                                .ok()
                                .and_then(|i| classes.get(i))
                                .cloned()
                                .unwrap_or_else(|| default_str.clone()),
                            _ => default_str.clone(),
                        })
                        .collect(),
                ),
            },
        };
        Ok(vec![Value::new(x.shape.to_vec(), data)])
    }
}

/// ZipMap, returned dense: `[N, classes]` FP32 with the columns in sorted key
/// order (the order the ONNX Runtime backend flattens its maps in).
pub struct ZipMap {
    order: Vec<usize>,
}

impl ZipMap {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<ZipMap, EngineError> {
        let labels = Labels::from_ctx(ctx, "classlabels_int64s")?;
        let mut order: Vec<usize> = (0..labels.len()).collect();
        match &labels {
            Labels::Int(v) => order.sort_by_key(|i| v[*i]),
            Labels::Str(v) => order.sort_by(|a, b| v[*a].cmp(&v[*b])),
        }
        Ok(ZipMap { order })
    }
}

impl Kernel for ZipMap {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let (n, c) = x.rows_cols()?;
        let TensorData::Fp32(v) = x.data else {
            return Err(format!("takes float scores, got {}", x.data.datatype()));
        };
        if c != self.order.len() {
            return Err(format!(
                "{c} score columns for {} class labels",
                self.order.len()
            ));
        }
        let mut out = Vec::with_capacity(n * c);
        for row in v.chunks_exact(c.max(1)) {
            out.extend(self.order.iter().map(|j| row[*j]));
        }
        Ok(vec![Value::new(vec![n, c], TensorData::Fp32(out))])
    }
}

pub struct ArrayFeatureExtractor;

impl Kernel for ArrayFeatureExtractor {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let idx = input(inputs, 1)?;
        let TensorData::Int64(ids) = idx.data else {
            return Err("indices must be int64".into());
        };
        let last = *x.shape.last().ok_or("takes a tensor of rank ≥ 1")?;
        if let Some(bad) = ids
            .iter()
            .find(|i| !matches!(usize::try_from(**i), Ok(i) if i < last))
        {
            return Err(format!(
                "index {bad} is outside the last dimension ({last})"
            ));
        }
        let rows = x.len() / last.max(1);
        macro_rules! pick {
            ($v:expr, $variant:ident) => {{
                let mut out = Vec::with_capacity(rows * ids.len());
                for row in $v.chunks_exact(last.max(1)).take(rows) {
                    // Every index was checked to lie in [0, last).
                    out.extend(ids.iter().map(|i| row[*i as usize].clone()));
                }
                TensorData::$variant(out)
            }};
        }
        let data = match x.data {
            TensorData::Fp32(v) => pick!(v, Fp32),
            TensorData::Fp64(v) => pick!(v, Fp64),
            TensorData::Int64(v) => pick!(v, Int64),
            TensorData::Int32(v) => pick!(v, Int32),
            TensorData::Bytes(v) => pick!(v, Bytes),
            other => return Err(format!("does not take {}", other.datatype())),
        };
        let mut shape = x.shape.to_vec();
        if shape.len() == 1 {
            shape = vec![1, ids.len()];
        } else if let Some(l) = shape.last_mut() {
            *l = ids.len();
        }
        Ok(vec![Value::new(shape, data)])
    }
}

pub struct Cast {
    to: i32,
}

impl Cast {
    pub fn new(ctx: &NodeCtx<'_>) -> Result<Cast, EngineError> {
        let to = ctx.int("to", 0) as i32;
        match to {
            elem::FLOAT | elem::DOUBLE | elem::INT64 | elem::INT32 | elem::BOOL => Ok(Cast { to }),
            other => Err(ctx.unsupported(format!("cast to {}", elem::name(other)))),
        }
    }
}

impl Kernel for Cast {
    fn passes_through(&self, input_elem: Option<i32>) -> bool {
        input_elem == Some(self.to)
    }

    fn reuses_input(&self) -> bool {
        true
    }

    fn run_owned(&self, x: Value, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        if crate::value::elem_of(&x.data) == self.to {
            return Ok(vec![x]);
        }
        let mut all = inputs.to_vec();
        all[0] = Some(x.as_ref());
        self.run(&all)
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let exact = |d: &TensorData| -> Option<TensorData> {
            match (self.to, d) {
                (elem::FLOAT, TensorData::Fp32(_))
                | (elem::DOUBLE, TensorData::Fp64(_))
                | (elem::INT64, TensorData::Int64(_))
                | (elem::INT32, TensorData::Int32(_))
                | (elem::BOOL, TensorData::Bool(_)) => Some(d.clone()),
                _ => None,
            }
        };
        let data = if let Some(d) = exact(x.data) {
            d
        } else {
            match self.to {
                elem::FLOAT => TensorData::Fp32(numeric_f32(x.data).ok_or("cannot cast strings")?),
                _ => {
                    let v = numeric_f64(x.data).ok_or("cannot cast strings")?;
                    match self.to {
                        elem::DOUBLE => TensorData::Fp64(v),
                        elem::INT64 => TensorData::Int64(match x.data {
                            TensorData::Int32(i) => i.iter().map(|x| i64::from(*x)).collect(),
                            TensorData::Uint64(i) => i.iter().map(|x| *x as i64).collect(),
                            _ => v.iter().map(|x| *x as i64).collect(),
                        }),
                        elem::INT32 => TensorData::Int32(match x.data {
                            TensorData::Int64(i) => i.iter().map(|x| *x as i32).collect(),
                            _ => v.iter().map(|x| *x as i32).collect(),
                        }),
                        _ => TensorData::Bool(v.iter().map(|x| *x != 0.0).collect()),
                    }
                }
            }
        };
        Ok(vec![Value::new(x.shape.to_vec(), data)])
    }
}

pub struct Concat {
    axis: i64,
}

impl Concat {
    pub fn new(ctx: &NodeCtx<'_>) -> Concat {
        Concat {
            axis: ctx.int("axis", 1),
        }
    }
}

impl Kernel for Concat {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let parts: Vec<ValueRef<'_>> = inputs.iter().flatten().copied().collect();
        let first = parts.first().ok_or("no inputs")?;
        let r = first.shape.len() as i64;
        let axis = if self.axis < 0 {
            self.axis + r
        } else {
            self.axis
        };
        if axis < 0 || axis >= r {
            return Err(format!("axis {} is out of range for rank {r}", self.axis));
        }
        let axis = axis as usize;
        let outer: usize = first.shape[..axis].iter().product();
        let mut shape = first.shape.to_vec();
        shape[axis] = 0;
        for p in &parts {
            if p.shape.len() != first.shape.len()
                || p.shape
                    .iter()
                    .enumerate()
                    .any(|(i, d)| i != axis && *d != first.shape[i])
            {
                return Err(format!(
                    "shapes {:?} and {:?} do not concatenate on axis {axis}",
                    first.shape, p.shape
                ));
            }
            shape[axis] += p.shape[axis];
        }
        let chunk = |p: &ValueRef<'_>| p.shape[axis..].iter().product::<usize>();
        macro_rules! cat {
            ($variant:ident) => {{
                let mut out = Vec::with_capacity(shape.iter().product());
                for o in 0..outer {
                    for p in &parts {
                        let TensorData::$variant(v) = p.data else {
                            return Err("inputs of different types".into());
                        };
                        let c = chunk(p);
                        out.extend_from_slice(&v[o * c..(o + 1) * c]);
                    }
                }
                TensorData::$variant(out)
            }};
        }
        let data = match first.data {
            TensorData::Fp32(_) => cat!(Fp32),
            TensorData::Fp64(_) => cat!(Fp64),
            TensorData::Int64(_) => cat!(Int64),
            TensorData::Int32(_) => cat!(Int32),
            TensorData::Bytes(_) => cat!(Bytes),
            other => return Err(format!("does not take {}", other.datatype())),
        };
        Ok(vec![Value::new(shape, data)])
    }
}

pub struct Identity;

impl Kernel for Identity {
    fn passes_through(&self, _input_elem: Option<i32>) -> bool {
        true
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        Ok(vec![input(inputs, 0)?.to_owned()])
    }
}

pub struct Reshape {
    allow_zero: bool,
}

impl Reshape {
    pub fn new(ctx: &NodeCtx<'_>) -> Reshape {
        Reshape {
            allow_zero: ctx.int("allowzero", 0) != 0,
        }
    }
}

impl Kernel for Reshape {
    fn reuses_input(&self) -> bool {
        true
    }

    fn run_owned(&self, x: Value, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let shape = self.shape(x.as_ref(), input(inputs, 1)?)?;
        Ok(vec![Value::new(shape, x.data)])
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let shape = self.shape(x, input(inputs, 1)?)?;
        Ok(vec![Value::new(shape, x.data.clone())])
    }
}

impl Reshape {
    /// The output shape for `x` and the shape input `s`.
    fn shape(&self, x: ValueRef<'_>, s: ValueRef<'_>) -> Result<Vec<usize>, String> {
        let TensorData::Int64(want) = s.data else {
            return Err("the shape input must be int64".into());
        };
        let mut shape = Vec::with_capacity(want.len());
        let mut infer = None;
        for (i, d) in want.iter().enumerate() {
            shape.push(match *d {
                -1 if infer.is_none() => {
                    infer = Some(i);
                    1
                }
                0 if !self.allow_zero => *x.shape.get(i).ok_or("a 0 dim past the input's rank")?,
                d => usize::try_from(d).map_err(|_| format!("bad dim {d}"))?,
            });
        }
        let known = shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or_else(|| format!("cannot reshape {:?} to {want:?}: too large", x.shape))?;
        if let Some(i) = infer {
            if known == 0 || !x.len().is_multiple_of(known) {
                return Err(format!("cannot reshape {:?} to {want:?}", x.shape));
            }
            shape[i] = x.len() / known;
        } else if known != x.len() {
            return Err(format!("cannot reshape {:?} to {want:?}", x.shape));
        }
        Ok(shape)
    }
}

pub struct Flatten {
    axis: i64,
}

impl Flatten {
    pub fn new(ctx: &NodeCtx<'_>) -> Flatten {
        Flatten {
            axis: ctx.int("axis", 1),
        }
    }
}

impl Kernel for Flatten {
    fn reuses_input(&self) -> bool {
        true
    }

    fn run_owned(&self, x: Value, _inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let shape = self.shape(&x.shape)?;
        Ok(vec![Value::new(shape, x.data)])
    }

    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let shape = self.shape(x.shape)?;
        Ok(vec![Value::new(shape, x.data.clone())])
    }
}

impl Flatten {
    /// `[outer, inner]` around the axis.
    fn shape(&self, shape: &[usize]) -> Result<Vec<usize>, String> {
        let r = shape.len() as i64;
        let a = if self.axis < 0 {
            self.axis + r
        } else {
            self.axis
        };
        if a < 0 || a > r {
            return Err(format!("axis {} is out of range for rank {r}", self.axis));
        }
        let a = a as usize;
        let outer: usize = shape[..a].iter().product();
        let inner: usize = shape[a..].iter().product();
        Ok(vec![outer, inner])
    }
}

/// Gather along `axis`: `data[..., indices[...], ...]`, negative indices
/// counting from the end.
pub struct Gather {
    axis: i64,
}

impl Gather {
    pub fn new(ctx: &NodeCtx<'_>) -> Gather {
        Gather {
            axis: ctx.int("axis", 0),
        }
    }
}

impl Kernel for Gather {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let idx = input(inputs, 1)?;
        let r = x.shape.len() as i64;
        let a = if self.axis < 0 {
            self.axis + r
        } else {
            self.axis
        };
        if a < 0 || a >= r {
            return Err(format!("axis {} is out of range for rank {r}", self.axis));
        }
        let a = a as usize;
        let len = x.shape[a] as i64;
        let raw: Vec<i64> = match idx.data {
            TensorData::Int64(v) => v.clone(),
            TensorData::Int32(v) => v.iter().map(|i| i64::from(*i)).collect(),
            other => {
                return Err(format!(
                    "indices must be int64 or int32, got {}",
                    other.datatype()
                ));
            }
        };
        let ids: Vec<usize> = raw
            .iter()
            .map(|i| {
                let j = if *i < 0 { i + len } else { *i };
                usize::try_from(j)
                    .ok()
                    .filter(|j| (*j as i64) < len)
                    .ok_or_else(|| format!("index {i} is outside axis {a} of length {len}"))
            })
            .collect::<Result<_, _>>()?;
        let outer: usize = x.shape[..a].iter().product();
        let inner: usize = x.shape[a + 1..].iter().product();
        let dim = x.shape[a];
        macro_rules! gather {
            ($v:expr, $variant:ident) => {{
                let mut out = Vec::with_capacity(outer * ids.len() * inner);
                for o in 0..outer {
                    for i in &ids {
                        let start = (o * dim + i) * inner;
                        out.extend_from_slice(&$v[start..start + inner]);
                    }
                }
                TensorData::$variant(out)
            }};
        }
        let data = match x.data {
            TensorData::Fp32(v) => gather!(v, Fp32),
            TensorData::Fp64(v) => gather!(v, Fp64),
            TensorData::Int64(v) => gather!(v, Int64),
            TensorData::Int32(v) => gather!(v, Int32),
            TensorData::Bytes(v) => gather!(v, Bytes),
            TensorData::Bool(v) => gather!(v, Bool),
            other => return Err(format!("does not take {}", other.datatype())),
        };
        let mut shape = x.shape[..a].to_vec();
        shape.extend_from_slice(idx.shape);
        shape.extend_from_slice(&x.shape[a + 1..]);
        Ok(vec![Value::new(shape, data)])
    }
}
