//! Values flowing through a graph: a shape and typed row-major data.

use bytes::Bytes;
use greenbelt_core::TensorData;

use crate::proto::{TensorProto, elem};

/// An owned intermediate or output value.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// A borrowed value: a graph input, an initializer or an earlier node's output.
#[derive(Debug, Clone, Copy)]
pub struct ValueRef<'a> {
    pub shape: &'a [usize],
    pub data: &'a TensorData,
}

impl Value {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Value {
        Value { shape, data }
    }

    pub fn as_ref(&self) -> ValueRef<'_> {
        ValueRef {
            shape: &self.shape,
            data: &self.data,
        }
    }
}

impl ValueRef<'_> {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Rows and columns of a tabular input: `[N, C]`, or `[C]` as one row.
    pub fn rows_cols(&self) -> Result<(usize, usize), String> {
        match self.shape {
            [c] => Ok((1, *c)),
            [n, c] => Ok((*n, *c)),
            s => Err(format!("expects a 1-D or 2-D input, got shape {s:?}")),
        }
    }

    pub fn to_owned(self) -> Value {
        Value::new(self.shape.to_vec(), self.data.clone())
    }
}

/// The ONNX element type of tensor data.
pub fn elem_of(data: &TensorData) -> i32 {
    match data {
        TensorData::Bool(_) => elem::BOOL,
        TensorData::Uint8(_) => elem::UINT8,
        TensorData::Uint16(_) => elem::UINT16,
        TensorData::Uint32(_) => elem::UINT32,
        TensorData::Uint64(_) => elem::UINT64,
        TensorData::Int8(_) => elem::INT8,
        TensorData::Int16(_) => elem::INT16,
        TensorData::Int32(_) => elem::INT32,
        TensorData::Int64(_) => elem::INT64,
        TensorData::Fp16(_) => elem::FLOAT16,
        TensorData::Fp32(_) => elem::FLOAT,
        TensorData::Fp64(_) => elem::DOUBLE,
        TensorData::Bytes(_) => elem::STRING,
    }
}

/// Numeric data widened to f64 (what a cast to float goes through), or None
/// for strings.
pub fn numeric_f64(data: &TensorData) -> Option<Vec<f64>> {
    Some(match data {
        TensorData::Bool(v) => v.iter().map(|x| f64::from(u8::from(*x))).collect(),
        TensorData::Uint8(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Uint16(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Uint32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Uint64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorData::Int8(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int16(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| x.to_f64()).collect(),
        TensorData::Fp32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Fp64(v) => v.clone(),
        TensorData::Bytes(_) => return None,
    })
}

/// Numeric data as f32, converting each element the way a C++ `static_cast<float>` does.
pub fn numeric_f32(data: &TensorData) -> Option<Vec<f32>> {
    Some(match data {
        TensorData::Fp32(v) => v.clone(),
        TensorData::Fp64(v) => v.iter().map(|x| *x as f32).collect(),
        TensorData::Int64(v) => v.iter().map(|x| *x as f32).collect(),
        TensorData::Int32(v) => v.iter().map(|x| *x as f32).collect(),
        TensorData::Uint64(v) => v.iter().map(|x| *x as f32).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| x.to_f32()).collect(),
        other => numeric_f64(other)?.into_iter().map(|x| x as f32).collect(),
    })
}

/// Decode an initializer or attribute tensor.
pub fn from_proto(t: &TensorProto) -> Result<Value, String> {
    let name = t.name.as_deref().unwrap_or("");
    if t.data_location == Some(1) {
        return Err(format!(
            "tensor \"{name}\" keeps its data in an external file, which this engine does not read"
        ));
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|d| usize::try_from(*d).map_err(|_| format!("tensor \"{name}\" has dim {d}")))
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| format!("tensor \"{name}\" is too large"))?;
    let raw = t.raw_data.as_deref();
    let dt = t.data_type.unwrap_or(0);
    let data = match dt {
        elem::FLOAT => TensorData::Fp32(match raw {
            Some(r) => le_words(r, count, name, f32::from_le_bytes)?,
            None => t.float_data.clone(),
        }),
        elem::DOUBLE => TensorData::Fp64(match raw {
            Some(r) => le_words(r, count, name, f64::from_le_bytes)?,
            None => t.double_data.clone(),
        }),
        elem::INT64 => TensorData::Int64(match raw {
            Some(r) => le_words(r, count, name, i64::from_le_bytes)?,
            None => t.int64_data.clone(),
        }),
        elem::INT32 => TensorData::Int32(match raw {
            Some(r) => le_words(r, count, name, i32::from_le_bytes)?,
            None => t.int32_data.clone(),
        }),
        elem::UINT8 => TensorData::Uint8(match raw {
            Some(r) => r.to_vec(),
            None => t.int32_data.iter().map(|v| *v as u8).collect(),
        }),
        elem::BOOL => TensorData::Bool(match raw {
            Some(r) => r.iter().map(|b| *b != 0).collect(),
            None => t.int32_data.iter().map(|v| *v != 0).collect(),
        }),
        elem::STRING => TensorData::Bytes(
            t.string_data
                .iter()
                .map(|s| Bytes::copy_from_slice(s))
                .collect(),
        ),
        other => {
            return Err(format!(
                "tensor \"{name}\" holds {} values, which this engine does not read",
                elem::name(other)
            ));
        }
    };
    if data.len() != count {
        return Err(format!(
            "tensor \"{name}\": shape {shape:?} needs {count} values, the file holds {}",
            data.len()
        ));
    }
    Ok(Value::new(shape, data))
}

fn le_words<T, const N: usize>(
    raw: &[u8],
    count: usize,
    name: &str,
    f: fn([u8; N]) -> T,
) -> Result<Vec<T>, String> {
    if raw.len() != count * N {
        return Err(format!(
            "tensor \"{name}\": raw data holds {} bytes, its shape needs {}",
            raw.len(),
            count * N
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect())
}
