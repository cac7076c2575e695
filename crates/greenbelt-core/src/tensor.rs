//! Tensors: a name, a shape and a typed flat buffer in row-major order.

use bytes::Bytes;
use half::f16;

use crate::datatype::DataType;
use crate::error::CoreError;

/// The typed, flat (row-major) contents of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Bytes>),
}

/// Apply the same expression to whichever vector a `TensorData` holds.
#[macro_export]
macro_rules! for_each_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::Uint8($v) => $body,
            $crate::TensorData::Uint16($v) => $body,
            $crate::TensorData::Uint32($v) => $body,
            $crate::TensorData::Uint64($v) => $body,
            $crate::TensorData::Int8($v) => $body,
            $crate::TensorData::Int16($v) => $body,
            $crate::TensorData::Int32($v) => $body,
            $crate::TensorData::Int64($v) => $body,
            $crate::TensorData::Fp16($v) => $body,
            $crate::TensorData::Fp32($v) => $body,
            $crate::TensorData::Fp64($v) => $body,
            $crate::TensorData::Bytes($v) => $body,
        }
    };
}

/// Same as [`for_each_data!`] but rebuilds the same variant from the body's vector.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::Uint8($v) => TensorData::Uint8($body),
            TensorData::Uint16($v) => TensorData::Uint16($body),
            TensorData::Uint32($v) => TensorData::Uint32($body),
            TensorData::Uint64($v) => TensorData::Uint64($body),
            TensorData::Int8($v) => TensorData::Int8($body),
            TensorData::Int16($v) => TensorData::Int16($body),
            TensorData::Int32($v) => TensorData::Int32($body),
            TensorData::Int64($v) => TensorData::Int64($body),
            TensorData::Fp16($v) => TensorData::Fp16($body),
            TensorData::Fp32($v) => TensorData::Fp32($body),
            TensorData::Fp64($v) => TensorData::Fp64($body),
            TensorData::Bytes($v) => TensorData::Bytes($body),
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        for_each_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of the given datatype, with room for `cap` elements.
    pub fn with_capacity(datatype: DataType, cap: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(cap)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(cap)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(cap)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(cap)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(cap)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(cap)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(cap)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(cap)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(cap)),
            DataType::Fp16 => TensorData::Fp16(Vec::with_capacity(cap)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(cap)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(cap)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(cap)),
        }
    }

    /// Append the elements of `other`, which must hold the same datatype.
    fn extend_from(&mut self, other: &TensorData) -> Result<(), CoreError> {
        macro_rules! ext {
            ($($var:ident),*) => {
                match (self, other) {
                    $((TensorData::$var(a), TensorData::$var(b)) => a.extend_from_slice(b),)*
                    (a, b) => {
                        return Err(CoreError::invalid(format!(
                            "cannot merge {} with {}",
                            a.datatype(),
                            b.datatype()
                        )))
                    }
                }
            };
        }
        ext!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
        );
        Ok(())
    }

    /// Elements `start..end` as a new buffer.
    fn slice(&self, start: usize, end: usize) -> TensorData {
        map_data!(self, v => v.get(start..end).map(<[_]>::to_vec).unwrap_or_default())
    }

    /// Size in bytes of the raw encoding (BYTES elements count their 4-byte prefix).
    pub fn byte_size(&self) -> usize {
        match self {
            TensorData::Bytes(v) => v.iter().map(|b| b.len() + 4).sum(),
            other => other.len() * other.datatype().element_size().unwrap_or(1),
        }
    }
}

/// A named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// Number of elements a shape holds, or an error for negative or overflowing dims.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, CoreError> {
    shape.iter().try_fold(1usize, |acc, d| {
        let d = usize::try_from(*d).map_err(|_| {
            CoreError::invalid(format!(
                "tensor \"{name}\": shape {shape:?} has a negative dimension"
            ))
        })?;
        acc.checked_mul(d).ok_or_else(|| {
            CoreError::invalid(format!("tensor \"{name}\": shape {shape:?} is too large"))
        })
    })
}

impl Tensor {
    /// Build a tensor, checking that the shape holds exactly the data's elements.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<i64>,
        data: TensorData,
    ) -> Result<Tensor, CoreError> {
        let name = name.into();
        let want = element_count(&name, &shape)?;
        if want != data.len() {
            return Err(CoreError::invalid(format!(
                "tensor \"{name}\": shape {shape:?} holds {want} elements but {} were given",
                data.len()
            )));
        }
        Ok(Tensor { name, shape, data })
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// Size of the first dimension (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape
            .first()
            .map_or(1, |d| usize::try_from(*d).unwrap_or(0))
    }

    /// Concatenate tensors of one name along the first dimension. Every part
    /// must share datatype and the trailing dimensions.
    pub fn concat(parts: &[&Tensor]) -> Result<Tensor, CoreError> {
        let Some(first) = parts.first() else {
            return Err(CoreError::invalid("nothing to concatenate"));
        };
        if first.shape.is_empty() {
            return Err(CoreError::invalid(format!(
                "tensor \"{}\" is a scalar and cannot be batched",
                first.name
            )));
        }
        let total: usize = parts.iter().map(|p| p.data.len()).sum();
        let mut data = TensorData::with_capacity(first.datatype(), total);
        let mut rows: i64 = 0;
        for p in parts {
            if p.shape.get(1..) != first.shape.get(1..) {
                return Err(CoreError::invalid(format!(
                    "tensor \"{}\": shapes {:?} and {:?} cannot be batched",
                    first.name, first.shape, p.shape
                )));
            }
            data.extend_from(&p.data)?;
            rows += p.shape.first().copied().unwrap_or(0);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Tensor::new(first.name.clone(), shape, data)
    }

    /// Split along the first dimension into consecutive parts of `rows[i]` rows.
    pub fn split(&self, rows: &[usize]) -> Result<Vec<Tensor>, CoreError> {
        let total_rows = self.rows();
        if rows.iter().sum::<usize>() != total_rows {
            return Err(CoreError::invalid(format!(
                "output \"{}\" has {total_rows} rows, the batch expected {}",
                self.name,
                rows.iter().sum::<usize>()
            )));
        }
        let row_len = self.data.len().checked_div(total_rows).unwrap_or(0);
        let mut out = Vec::with_capacity(rows.len());
        let mut at = 0;
        for &r in rows {
            let mut shape = self.shape.clone();
            if let Some(d) = shape.first_mut() {
                *d = r as i64;
            }
            out.push(Tensor {
                name: self.name.clone(),
                shape,
                data: self.data.slice(at * row_len, (at + r) * row_len),
            });
            at += r;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_element_count() {
        assert!(Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![1.0; 4])).is_ok());
        let e = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![1.0; 4])).unwrap_err();
        assert!(e.to_string().contains("holds 6 elements but 4"), "{e}");
        let e = Tensor::new("x", vec![-1, 3], TensorData::Fp32(vec![])).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        let e = Tensor::new("x", vec![i64::MAX, i64::MAX], TensorData::Fp32(vec![])).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn concat_then_split_round_trips() {
        let a = Tensor::new("x", vec![1, 2], TensorData::Int64(vec![1, 2])).unwrap();
        let b = Tensor::new("x", vec![2, 2], TensorData::Int64(vec![3, 4, 5, 6])).unwrap();
        let c = Tensor::concat(&[&a, &b]).unwrap();
        assert_eq!(c.shape, vec![3, 2]);
        assert_eq!(c.data, TensorData::Int64(vec![1, 2, 3, 4, 5, 6]));
        let parts = c.split(&[1, 2]).unwrap();
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn concat_rejects_mismatches() {
        let a = Tensor::new("x", vec![1, 2], TensorData::Int64(vec![1, 2])).unwrap();
        let b = Tensor::new("x", vec![1, 3], TensorData::Int64(vec![3, 4, 5])).unwrap();
        assert!(Tensor::concat(&[&a, &b]).is_err());
        let c = Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![1.0, 2.0])).unwrap();
        assert!(Tensor::concat(&[&a, &c]).is_err());
        assert!(a.split(&[2]).is_err());
    }
}
