//! The raw (binary) tensor encoding shared by the gRPC `raw_input_contents`
//! field and the REST binary tensor extension: little-endian elements in
//! row-major order; BYTES elements each preceded by a 4-byte little-endian length.

use bytes::Bytes;
use half::f16;

use crate::datatype::DataType;
use crate::error::CoreError;
use crate::limits::{Budget, DecodeLimits};
use crate::tensor::TensorData;

macro_rules! decode_le {
    ($raw:expr, $ty:ty, $n:expr) => {{
        let raw: &[u8] = $raw;
        raw.chunks_exact($n)
            .map(|c| {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                <$ty>::from_le_bytes(a)
            })
            .collect::<Vec<$ty>>()
    }};
}

/// Decode `raw` as `count` elements of `datatype`. `name` is used in errors.
/// No limits: for trusted inputs; requests go through [`decode_limited`].
pub fn decode(
    name: &str,
    datatype: DataType,
    count: usize,
    raw: &[u8],
) -> Result<TensorData, CoreError> {
    decode_limited(
        name,
        datatype,
        count,
        raw,
        &mut Budget::new(&DecodeLimits::UNLIMITED),
    )
}

/// Decode `raw` as `count` elements of `datatype`, charging them to `budget`
/// before anything is allocated (BYTES payloads as they are read).
pub fn decode_limited(
    name: &str,
    datatype: DataType,
    count: usize,
    raw: &[u8],
    budget: &mut Budget<'_>,
) -> Result<TensorData, CoreError> {
    if let Some(size) = datatype.element_size() {
        let want = count.saturating_mul(size);
        if raw.len() != want {
            return Err(CoreError::invalid(format!(
                "input \"{name}\": raw data is {} bytes, but {count} {datatype} elements need {want}",
                raw.len()
            )));
        }
    }
    budget.charge_elements(name, datatype, count)?;
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(raw.iter().map(|b| *b != 0).collect()),
        DataType::Uint8 => TensorData::Uint8(raw.to_vec()),
        DataType::Int8 => TensorData::Int8(raw.iter().map(|b| *b as i8).collect()),
        DataType::Uint16 => TensorData::Uint16(decode_le!(raw, u16, 2)),
        DataType::Int16 => TensorData::Int16(decode_le!(raw, i16, 2)),
        DataType::Fp16 => TensorData::Fp16(
            decode_le!(raw, u16, 2)
                .into_iter()
                .map(f16::from_bits)
                .collect(),
        ),
        DataType::Uint32 => TensorData::Uint32(decode_le!(raw, u32, 4)),
        DataType::Int32 => TensorData::Int32(decode_le!(raw, i32, 4)),
        DataType::Fp32 => TensorData::Fp32(decode_le!(raw, f32, 4)),
        DataType::Uint64 => TensorData::Uint64(decode_le!(raw, u64, 8)),
        DataType::Int64 => TensorData::Int64(decode_le!(raw, i64, 8)),
        DataType::Fp64 => TensorData::Fp64(decode_le!(raw, f64, 8)),
        DataType::Bytes => TensorData::Bytes(decode_bytes(name, count, raw, budget)?),
    })
}

fn decode_bytes(
    name: &str,
    count: usize,
    raw: &[u8],
    budget: &mut Budget<'_>,
) -> Result<Vec<Bytes>, CoreError> {
    let mut out = Vec::with_capacity(count.min(raw.len() / 4));
    let mut rest = raw;
    while !rest.is_empty() {
        if out.len() == count {
            return Err(CoreError::invalid(format!(
                "input \"{name}\": raw data holds more than the {count} BYTES elements its shape holds"
            )));
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(CoreError::invalid(format!(
                "input \"{name}\": BYTES element {} has a truncated 4-byte length prefix",
                out.len()
            )));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(CoreError::invalid(format!(
                "input \"{name}\": BYTES element {} claims {len} bytes but only {} remain",
                out.len(),
                tail.len()
            )));
        }
        budget.charge_payload(name, len)?;
        let (item, tail) = tail.split_at(len);
        out.push(Bytes::copy_from_slice(item));
        rest = tail;
    }
    if out.len() != count {
        return Err(CoreError::invalid(format!(
            "input \"{name}\": raw data holds {} BYTES elements, shape needs {count}",
            out.len()
        )));
    }
    Ok(out)
}

/// Append the raw encoding of `data` to `out`.
pub fn encode_into(data: &TensorData, out: &mut Vec<u8>) {
    macro_rules! le {
        ($v:expr) => {{
            out.reserve(data.byte_size());
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }};
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Int8(v) => out.extend(v.iter().map(|b| *b as u8)),
        TensorData::Uint16(v) => le!(v),
        TensorData::Int16(v) => le!(v),
        TensorData::Fp16(v) => le!(v.iter().map(|x| x.to_bits())),
        TensorData::Uint32(v) => le!(v),
        TensorData::Int32(v) => le!(v),
        TensorData::Fp32(v) => le!(v),
        TensorData::Uint64(v) => le!(v),
        TensorData::Int64(v) => le!(v),
        TensorData::Fp64(v) => le!(v),
        TensorData::Bytes(v) => {
            out.reserve(data.byte_size());
            for b in v {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
}

/// The raw encoding of `data` as a new buffer.
pub fn encode(data: &TensorData) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.byte_size());
    encode_into(data, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<TensorData> {
        vec![
            TensorData::Bool(vec![true, false, true]),
            TensorData::Uint8(vec![0, 1, 255]),
            TensorData::Uint16(vec![0, 1, u16::MAX]),
            TensorData::Uint32(vec![0, 1, u32::MAX]),
            TensorData::Uint64(vec![0, 1, u64::MAX]),
            TensorData::Int8(vec![i8::MIN, 0, i8::MAX]),
            TensorData::Int16(vec![i16::MIN, 0, i16::MAX]),
            TensorData::Int32(vec![i32::MIN, 0, i32::MAX]),
            TensorData::Int64(vec![i64::MIN, 0, i64::MAX]),
            TensorData::Fp16(vec![f16::from_f32(-1.5), f16::ZERO, f16::MAX]),
            TensorData::Fp32(vec![-1.5, 0.0, f32::MAX]),
            TensorData::Fp64(vec![-1.5, 0.0, f64::MAX]),
            TensorData::Bytes(vec![
                Bytes::from_static(b"a"),
                Bytes::new(),
                Bytes::from("héllo"),
            ]),
        ]
    }

    #[test]
    fn every_datatype_round_trips() {
        for d in samples() {
            let raw = encode(&d);
            assert_eq!(raw.len(), d.byte_size());
            let back = decode("t", d.datatype(), d.len(), &raw).unwrap();
            assert_eq!(back, d);
        }
    }

    #[test]
    fn fp32_is_little_endian() {
        assert_eq!(
            encode(&TensorData::Fp32(vec![1.0])),
            1.0f32.to_le_bytes().to_vec()
        );
    }

    #[test]
    fn bad_sizes_are_named_errors() {
        let e = decode("x", DataType::Fp32, 2, &[0u8; 7]).unwrap_err();
        assert!(
            e.to_string().contains("input \"x\": raw data is 7 bytes"),
            "{e}"
        );
        let e = decode("s", DataType::Bytes, 1, &[5, 0, 0, 0, b'a']).unwrap_err();
        assert!(e.to_string().contains("claims 5 bytes"), "{e}");
        let e = decode("s", DataType::Bytes, 1, &[1, 0]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = decode("s", DataType::Bytes, 2, &[1, 0, 0, 0, b'a']).unwrap_err();
        assert!(
            e.to_string()
                .contains("holds 1 BYTES elements, shape needs 2"),
            "{e}"
        );
        let e = decode("x", DataType::Fp64, usize::MAX, &[]).unwrap_err();
        assert!(e.to_string().contains("input \"x\""), "{e}");
    }

    #[test]
    fn limits_apply_before_allocating() {
        let limits = DecodeLimits {
            max_bytes_elements: 2,
            ..DecodeLimits::default()
        };
        let e = decode_limited(
            "s",
            DataType::Bytes,
            3,
            &[0u8; 12],
            &mut Budget::new(&limits),
        )
        .unwrap_err();
        assert!(matches!(e, CoreError::LimitExceeded(_)), "{e}");
        // more prefixes than the shape holds stop at the first extra one
        let e = decode("s", DataType::Bytes, 1, &[0u8; 4000]).unwrap_err();
        assert!(e.to_string().contains("more than the 1 BYTES"), "{e}");
        let limits = DecodeLimits {
            max_elements: 1,
            ..DecodeLimits::default()
        };
        let e = decode_limited("x", DataType::Fp32, 2, &[0u8; 8], &mut Budget::new(&limits))
            .unwrap_err();
        assert!(e.to_string().contains("max_elements"), "{e}");
    }
}
