//! The JSON tensor encoding of the V2 REST protocol: `data` is a flat or
//! nested array in row-major order; BYTES elements are strings.

use bytes::Bytes;
use half::f16;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;

use crate::datatype::DataType;
use crate::error::CoreError;
use crate::tensor::TensorData;

/// Decode a JSON `data` value (flat or nested array, or a single scalar) into
/// `datatype` elements. `name` is used in errors.
pub fn decode(name: &str, datatype: DataType, data: &Value) -> Result<TensorData, CoreError> {
    let mut flat: Vec<&Value> = Vec::new();
    flatten(data, &mut flat, 0)
        .map_err(|why| CoreError::invalid(format!("input \"{name}\": \"data\" {why}")))?;
    let bad = |i: usize, v: &Value| {
        CoreError::invalid(format!(
            "input \"{name}\": element {i} ({v}) is not a valid {datatype} value"
        ))
    };
    macro_rules! ints {
        ($ty:ty, $variant:ident) => {{
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                let x = if let Some(x) = v.as_i64() {
                    <$ty>::try_from(x).ok()
                } else {
                    v.as_u64().and_then(|x| <$ty>::try_from(x).ok())
                };
                out.push(x.ok_or_else(|| bad(i, v))?);
            }
            TensorData::$variant(out)
        }};
    }
    macro_rules! floats {
        ($conv:expr, $variant:ident) => {{
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                out.push($conv(v.as_f64().ok_or_else(|| bad(i, v))?));
            }
            TensorData::$variant(out)
        }};
    }
    Ok(match datatype {
        DataType::Bool => {
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                out.push(v.as_bool().ok_or_else(|| bad(i, v))?);
            }
            TensorData::Bool(out)
        }
        DataType::Uint8 => ints!(u8, Uint8),
        DataType::Uint16 => ints!(u16, Uint16),
        DataType::Uint32 => ints!(u32, Uint32),
        DataType::Uint64 => ints!(u64, Uint64),
        DataType::Int8 => ints!(i8, Int8),
        DataType::Int16 => ints!(i16, Int16),
        DataType::Int32 => ints!(i32, Int32),
        DataType::Int64 => ints!(i64, Int64),
        DataType::Fp16 => floats!(f16::from_f64, Fp16),
        DataType::Fp32 => floats!(|x: f64| x as f32, Fp32),
        DataType::Fp64 => floats!(|x: f64| x, Fp64),
        DataType::Bytes => {
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                let s = v.as_str().ok_or_else(|| bad(i, v))?;
                out.push(Bytes::copy_from_slice(s.as_bytes()));
            }
            TensorData::Bytes(out)
        }
    })
}

const MAX_NESTING: usize = 32;

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<(), String> {
    if depth > MAX_NESTING {
        return Err(format!("is nested more than {MAX_NESTING} levels deep"));
    }
    match v {
        Value::Array(items) => {
            for item in items {
                flatten(item, out, depth + 1)?;
            }
            Ok(())
        }
        Value::Object(_) => Err("must be an array of values, found an object".into()),
        Value::Null => Err("must be an array of values, found null".into()),
        scalar => {
            out.push(scalar);
            Ok(())
        }
    }
}

/// Serializes a tensor's elements as a flat JSON array.
pub struct JsonData<'a>(pub &'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        match self.0 {
            TensorData::Bool(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint8(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint16(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int8(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int16(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Fp16(v) => v
                .iter()
                .try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            TensorData::Fp32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Fp64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Bytes(v) => v
                .iter()
                .try_for_each(|x| seq.serialize_element(&String::from_utf8_lossy(x)))?,
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_decode_the_same() {
        let flat = decode("x", DataType::Fp32, &json!([1, 2.5, 3, 4])).unwrap();
        let nested = decode("x", DataType::Fp32, &json!([[1, 2.5], [3, 4]])).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat, TensorData::Fp32(vec![1.0, 2.5, 3.0, 4.0]));
    }

    #[test]
    fn range_and_type_errors_name_the_element() {
        let e = decode("x", DataType::Uint8, &json!([1, 256])).unwrap_err();
        assert!(
            e.to_string()
                .contains("element 1 (256) is not a valid UINT8"),
            "{e}"
        );
        let e = decode("x", DataType::Int32, &json!([1.5])).unwrap_err();
        assert!(e.to_string().contains("INT32"), "{e}");
        let e = decode("x", DataType::Bool, &json!([1])).unwrap_err();
        assert!(e.to_string().contains("BOOL"), "{e}");
        let e = decode("x", DataType::Fp32, &json!({"a": 1})).unwrap_err();
        assert!(e.to_string().contains("found an object"), "{e}");
        let e = decode("x", DataType::Bytes, &json!([1])).unwrap_err();
        assert!(e.to_string().contains("BYTES"), "{e}");
        let mut deep = json!([1.0]);
        for _ in 0..40 {
            deep = json!([deep]);
        }
        let e = decode("x", DataType::Fp32, &deep).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
    }

    #[test]
    fn extremes_decode() {
        let d = decode("x", DataType::Uint64, &json!([u64::MAX])).unwrap();
        assert_eq!(d, TensorData::Uint64(vec![u64::MAX]));
        let d = decode("x", DataType::Int64, &json!([i64::MIN])).unwrap();
        assert_eq!(d, TensorData::Int64(vec![i64::MIN]));
        let d = decode("x", DataType::Bytes, &json!(["héllo"])).unwrap();
        assert_eq!(d, TensorData::Bytes(vec![Bytes::from("héllo")]));
    }

    #[test]
    fn serializes_flat() {
        let s =
            serde_json::to_string(&JsonData(&TensorData::Fp16(vec![f16::from_f32(1.5)]))).unwrap();
        assert_eq!(s, "[1.5]");
        let s =
            serde_json::to_string(&JsonData(&TensorData::Bytes(vec![Bytes::from("a")]))).unwrap();
        assert_eq!(s, "[\"a\"]");
    }
}
