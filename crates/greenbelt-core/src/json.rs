//! The JSON tensor encoding of the V2 REST protocol: `data` is a flat or
//! nested array in row-major order; BYTES elements are strings.

use std::fmt;

use bytes::Bytes;
use half::f16;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;

use crate::datatype::DataType;
use crate::error::CoreError;
use crate::limits::{Budget, DecodeLimits};
use crate::tensor::TensorData;

/// Decode a JSON `data` value (flat or nested array, or a single scalar) into
/// `datatype` elements. `name` is used in errors. No limits beyond nesting:
/// for trusted inputs; requests go through [`decode_text`].
pub fn decode(name: &str, datatype: DataType, data: &Value) -> Result<TensorData, CoreError> {
    let mut budget = Budget::new(&DecodeLimits::UNLIMITED);
    let mut sink = Sink::new(name, datatype, usize::MAX, 0, &mut budget);
    let result = Elements {
        sink: &mut sink,
        depth: 0,
    }
    .deserialize(data);
    sink.finish(result)
}

/// Decode the JSON text of a `data` value into the `count` elements a shape
/// declares, straight into a typed buffer: the elements are charged to
/// `budget` before any is decoded, decoding stops at the first element past
/// `count`, and BYTES payloads are charged as they are read. Fewer than
/// `count` elements is left to [`crate::Tensor::new`] to report.
pub fn decode_text(
    name: &str,
    datatype: DataType,
    count: usize,
    text: &str,
    budget: &mut Budget<'_>,
) -> Result<TensorData, CoreError> {
    let mut error = None;
    let mut de = serde_json::Deserializer::from_str(text);
    // Every element but the last takes at least two bytes of text ("0,"):
    // reserve no more than the text can hold, so a short body with a huge
    // shape costs nothing.
    let seed = DataSeed {
        name,
        datatype,
        count,
        text_len: text.len(),
        budget,
        error: &mut error,
    };
    match seed.deserialize(&mut de).and_then(|d| de.end().map(|()| d)) {
        Ok(d) => Ok(d),
        Err(e) => Err(error.unwrap_or_else(|| not_an_array(name, &e))),
    }
}

fn not_an_array(name: &str, e: &dyn fmt::Display) -> CoreError {
    CoreError::invalid(format!(
        "input \"{name}\": \"data\" is not a valid array of values: {e}"
    ))
}

/// [`decode_text`] as a seed, for a decoder that reads a request's `data`
/// in the same pass as the rest of its JSON: the value under the
/// deserializer is decoded into `count` elements of `datatype`, charged to
/// `budget` first. `text_len` bounds what is reserved up front (the text
/// the value lies in: its elements take two bytes each at least). On
/// failure `error` holds the error in full (serde's error is only text).
pub struct DataSeed<'b, 'l> {
    pub name: &'b str,
    pub datatype: DataType,
    pub count: usize,
    pub text_len: usize,
    pub budget: &'b mut Budget<'l>,
    pub error: &'b mut Option<CoreError>,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_, '_> {
    type Value = TensorData;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TensorData, D::Error> {
        if let Err(e) = self
            .budget
            .charge_elements(self.name, self.datatype, self.count)
        {
            let msg = e.to_string();
            *self.error = Some(e);
            return Err(de::Error::custom(msg));
        }
        let capacity = self.count.min(self.text_len / 2 + 1);
        let mut sink = Sink::new(self.name, self.datatype, self.count, capacity, self.budget);
        let result = Elements {
            sink: &mut sink,
            depth: 0,
        }
        .deserialize(d);
        match result {
            Ok(()) => Ok(sink.out),
            Err(e) => {
                *self.error = Some(
                    sink.error
                        .take()
                        .unwrap_or_else(|| not_an_array(self.name, &e)),
                );
                Err(e)
            }
        }
    }
}

/// Where decoded elements go, and the first error in full (serde's error
/// type carries only a string).
struct Sink<'b, 'l> {
    name: &'b str,
    datatype: DataType,
    max: usize,
    max_nesting: usize,
    out: TensorData,
    len: usize,
    budget: &'b mut Budget<'l>,
    error: Option<CoreError>,
}

impl<'b, 'l> Sink<'b, 'l> {
    fn new(
        name: &'b str,
        datatype: DataType,
        max: usize,
        capacity: usize,
        budget: &'b mut Budget<'l>,
    ) -> Self {
        Sink {
            name,
            datatype,
            max,
            max_nesting: budget.limits().max_nesting,
            out: TensorData::with_capacity(datatype, capacity),
            len: 0,
            budget,
            error: None,
        }
    }

    fn fail<E: de::Error>(&mut self, e: CoreError) -> E {
        let msg = e.to_string();
        self.error = Some(e);
        E::custom(msg)
    }

    /// The index of the next element, or an error when the shape is full.
    fn next_index<E: de::Error>(&mut self) -> Result<usize, E> {
        if self.len >= self.max {
            let msg = format!(
                "input \"{}\": \"data\" has more than the {} elements its shape holds",
                self.name, self.max
            );
            return Err(self.fail(CoreError::invalid(msg)));
        }
        self.len += 1;
        Ok(self.len - 1)
    }

    fn bad<E: de::Error>(&mut self, i: usize, shown: &dyn fmt::Display) -> E {
        let msg = format!(
            "input \"{}\": element {i} ({shown}) is not a valid {} value",
            self.name, self.datatype
        );
        self.fail(CoreError::invalid(msg))
    }

    /// An integer element (JSON has both signed and unsigned integers):
    /// range-checked into an integer tensor, converted into a float one.
    fn push_integer<E: de::Error, S>(&mut self, x: S, as_f64: f64) -> Result<(), E>
    where
        S: Copy + fmt::Display,
        u8: TryFrom<S>,
        u16: TryFrom<S>,
        u32: TryFrom<S>,
        u64: TryFrom<S>,
        i8: TryFrom<S>,
        i16: TryFrom<S>,
        i32: TryFrom<S>,
        i64: TryFrom<S>,
    {
        let i = self.next_index()?;
        let ok = match &mut self.out {
            TensorData::Uint8(v) => push_int(v, x),
            TensorData::Uint16(v) => push_int(v, x),
            TensorData::Uint32(v) => push_int(v, x),
            TensorData::Uint64(v) => push_int(v, x),
            TensorData::Int8(v) => push_int(v, x),
            TensorData::Int16(v) => push_int(v, x),
            TensorData::Int32(v) => push_int(v, x),
            TensorData::Int64(v) => push_int(v, x),
            TensorData::Fp16(v) => push(v, f16::from_f64(as_f64)),
            TensorData::Fp32(v) => push(v, as_f64 as f32),
            TensorData::Fp64(v) => push(v, as_f64),
            TensorData::Bool(_) | TensorData::Bytes(_) => false,
        };
        if ok { Ok(()) } else { Err(self.bad(i, &x)) }
    }

    fn push_f64<E: de::Error>(&mut self, x: f64) -> Result<(), E> {
        let i = self.next_index()?;
        let ok = match &mut self.out {
            TensorData::Fp16(v) => push(v, f16::from_f64(x)),
            TensorData::Fp32(v) => push(v, x as f32),
            TensorData::Fp64(v) => push(v, x),
            _ => false,
        };
        if ok { Ok(()) } else { Err(self.bad(i, &x)) }
    }

    fn push_bool<E: de::Error>(&mut self, x: bool) -> Result<(), E> {
        let i = self.next_index()?;
        match &mut self.out {
            TensorData::Bool(v) => {
                v.push(x);
                Ok(())
            }
            _ => Err(self.bad(i, &x)),
        }
    }

    fn push_str<E: de::Error>(&mut self, x: &str) -> Result<(), E> {
        let i = self.next_index()?;
        if !matches!(self.out, TensorData::Bytes(_)) {
            return Err(self.bad(i, &Shown(x)));
        }
        if let Err(e) = self.budget.charge_payload(self.name, x.len()) {
            return Err(self.fail(e));
        }
        if let TensorData::Bytes(v) = &mut self.out {
            v.push(Bytes::copy_from_slice(x.as_bytes()));
        }
        Ok(())
    }

    fn finish(mut self, result: Result<(), serde_json::Error>) -> Result<TensorData, CoreError> {
        match result {
            Ok(()) => Ok(self.out),
            Err(e) => Err(self
                .error
                .take()
                .unwrap_or_else(|| not_an_array(self.name, &e))),
        }
    }
}

fn push<T>(v: &mut Vec<T>, x: T) -> bool {
    v.push(x);
    true
}

fn push_int<S, T: TryFrom<S>>(v: &mut Vec<T>, x: S) -> bool {
    match T::try_from(x) {
        Ok(x) => push(v, x),
        Err(_) => false,
    }
}

/// A string element shown in an error, JSON-quoted and cut short.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut: String = self.0.chars().take(40).collect();
        let more = if cut.len() < self.0.len() { "..." } else { "" };
        write!(f, "{cut:?}{more}")
    }
}

/// A `data` value at nesting `depth`: an array whose items are visited in
/// turn, or one scalar element.
struct Elements<'s, 'b, 'l> {
    sink: &'s mut Sink<'b, 'l>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Elements<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let sink = self.sink;
        if self.depth >= sink.max_nesting {
            let msg = format!(
                "input \"{}\": \"data\" is nested more than {} levels deep",
                sink.name, sink.max_nesting
            );
            return Err(sink.fail(CoreError::invalid(msg)));
        }
        while seq
            .next_element_seed(Elements {
                sink: &mut *sink,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        let msg = format!(
            "input \"{}\": \"data\" must be an array of values, found an object",
            self.sink.name
        );
        Err(self.sink.fail(CoreError::invalid(msg)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        let msg = format!(
            "input \"{}\": \"data\" must be an array of values, found null",
            self.sink.name
        );
        Err(self.sink.fail(CoreError::invalid(msg)))
    }

    fn visit_bool<E: de::Error>(self, x: bool) -> Result<(), E> {
        self.sink.push_bool(x)
    }

    fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
        self.sink.push_integer(x, x as f64)
    }

    fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
        self.sink.push_integer(x, x as f64)
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
        self.sink.push_f64(x)
    }

    fn visit_str<E: de::Error>(self, x: &str) -> Result<(), E> {
        self.sink.push_str(x)
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

    fn text(
        dt: DataType,
        count: usize,
        t: &str,
        limits: &DecodeLimits,
    ) -> Result<TensorData, CoreError> {
        decode_text("x", dt, count, t, &mut Budget::new(limits))
    }

    #[test]
    fn text_decodes_like_values() {
        let l = DecodeLimits::default();
        assert_eq!(
            text(DataType::Fp32, 4, "[[1, 2.5], [3, 4]]", &l).unwrap(),
            TensorData::Fp32(vec![1.0, 2.5, 3.0, 4.0])
        );
        assert_eq!(
            text(DataType::Int8, 1, " -3 ", &l).unwrap(),
            TensorData::Int8(vec![-3])
        );
        assert_eq!(
            text(DataType::Bytes, 2, r#"["a\u00e9", ""]"#, &l).unwrap(),
            TensorData::Bytes(vec![Bytes::from("aé"), Bytes::new()])
        );
        assert_eq!(
            text(DataType::Bool, 2, "[true,false]", &l).unwrap(),
            TensorData::Bool(vec![true, false])
        );
        // fewer elements than the shape is left to Tensor::new
        assert_eq!(
            text(DataType::Uint64, 3, "[1]", &l).unwrap(),
            TensorData::Uint64(vec![1])
        );
    }

    #[test]
    fn text_stops_at_the_shape_and_the_limits() {
        let l = DecodeLimits::default();
        let e = text(DataType::Fp32, 2, "[1, 2, 3, 4]", &l).unwrap_err();
        assert!(e.to_string().contains("more than the 2 elements"), "{e}");
        let e = text(DataType::Fp32, 1, "[1] x", &l).unwrap_err();
        assert!(e.to_string().contains("not a valid array"), "{e}");
        let e = text(DataType::Fp32, 1, "[1.0, 2", &l).unwrap_err();
        assert!(e.to_string().contains("more than the 1"), "{e}");
        let small = DecodeLimits {
            max_elements: 3,
            ..l
        };
        let e = text(DataType::Fp32, 4, "[1, 2, 3, 4]", &small).unwrap_err();
        assert!(matches!(e, CoreError::LimitExceeded(_)), "{e}");
        assert!(e.to_string().contains("[limits] max_elements"), "{e}");
        let small = DecodeLimits {
            max_decoded_bytes: 2 * crate::limits::BYTES_ELEMENT_OVERHEAD + 3,
            ..l
        };
        let e = text(DataType::Bytes, 2, r#"["ab", "cd"]"#, &small).unwrap_err();
        assert!(e.to_string().contains("max_decoded_bytes"), "{e}");
        let shallow = DecodeLimits {
            max_nesting: 2,
            ..l
        };
        let e = text(DataType::Fp32, 1, "[[[1]]]", &shallow).unwrap_err();
        assert!(e.to_string().contains("nested more than 2"), "{e}");
        let e = text(DataType::Bytes, 1, &format!("[{:?}]", 7), &l).unwrap_err();
        assert!(e.to_string().contains("not a valid BYTES"), "{e}");
        let e = text(
            DataType::Uint8,
            1,
            &format!("[\"{}\"]", "z".repeat(100)),
            &l,
        )
        .unwrap_err();
        assert!(e.to_string().contains("...) is not a valid UINT8"), "{e}");
        let e = text(DataType::Fp32, 1, "null", &l).unwrap_err();
        assert!(e.to_string().contains("found null"), "{e}");
    }
}
