//! Requests generated with structure, so most get past the parsers and
//! reach the limits, the duplicate checks and the typed decoders (byte
//! mutation alone rarely builds a well-formed request).

use greenbelt_serve::grpc::pb;
use proptest::prelude::*;
use prost::Message;
use serde_json::{Value, json};

use crate::{bounded, lock};

const DATATYPES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES", "NOPE",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|x| json!(x)),
        any::<u64>().prop_map(|x| json!(x)),
        (-1e6f64..1e6).prop_map(|x| json!(x)),
        any::<bool>().prop_map(|x| json!(x)),
        "[a-z]{0,3}".prop_map(|x| json!(x)),
        Just(Value::Null),
    ]
}

fn data() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 64, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(Value::Array)
    })
}

fn rest_input() -> impl Strategy<Value = Value> {
    (
        "[ab]",
        prop::collection::vec(-1i64..5, 0..6),
        prop::sample::select(&DATATYPES[..]),
        data(),
        prop::option::of(0u64..16),
    )
        .prop_map(|(name, shape, datatype, data, binary)| {
            let mut v = json!({"name": name, "shape": shape, "datatype": datatype, "data": data});
            if let Some(n) = binary {
                v["parameters"] = json!({"binary_data_size": n});
            }
            v
        })
}

fn rest_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(rest_input(), 0..6),
        prop::collection::vec("[ab]", 0..6),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(inputs, outputs, binary_out, tail)| {
            let outputs: Vec<Value> = outputs.iter().map(|n| json!({"name": n})).collect();
            let body = json!({
                "id": "p",
                "inputs": inputs,
                "outputs": outputs,
                "parameters": {"binary_data_output": binary_out},
            });
            let header = serde_json::to_vec(&body).unwrap();
            if tail.is_empty() {
                return header;
            }
            // With binary data after the header: `B` + header length + body.
            let n = u16::try_from(header.len()).unwrap_or(u16::MAX);
            let mut out = vec![b'B'];
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&header);
            out.extend_from_slice(&tail);
            out
        })
}

fn contents() -> impl Strategy<Value = pb::InferTensorContents> {
    (
        prop::collection::vec(any::<bool>(), 0..8),
        prop::collection::vec(any::<i32>(), 0..8),
        prop::collection::vec(any::<i64>(), 0..8),
        prop::collection::vec(any::<u32>(), 0..8),
        prop::collection::vec(any::<f32>(), 0..8),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..8),
    )
        .prop_map(|(b, i, i64s, u, f, bytes)| pb::InferTensorContents {
            bool_contents: b,
            int_contents: i,
            int64_contents: i64s,
            uint_contents: u,
            fp32_contents: f,
            bytes_contents: bytes.into_iter().map(Into::into).collect(),
            ..Default::default()
        })
}

fn grpc_message() -> impl Strategy<Value = Vec<u8>> {
    let input = (
        "[ab]",
        prop::sample::select(&DATATYPES[..]),
        prop::collection::vec(-1i64..5, 0..6),
        prop::option::of(contents()),
    )
        .prop_map(|(name, datatype, shape, contents)| {
            pb::model_infer_request::InferInputTensor {
                name,
                datatype: datatype.into(),
                shape,
                parameters: Default::default(),
                contents,
            }
        });
    (
        prop::collection::vec(input, 0..6),
        prop::collection::vec("[ab]", 0..6),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..6),
    )
        .prop_map(|(inputs, outputs, raw)| {
            pb::ModelInferRequest {
                model_name: "m".into(),
                inputs,
                outputs: outputs
                    .into_iter()
                    .map(|name| pb::model_infer_request::InferRequestedOutputTensor {
                        name,
                        parameters: Default::default(),
                    })
                    .collect(),
                raw_input_contents: raw.into_iter().map(Into::into).collect(),
                ..Default::default()
            }
            .encode_to_vec()
        })
}

proptest! {
    #[test]
    fn structured_rest_requests(body in rest_body()) {
        let _g = lock();
        prop_assert!(bounded("rest_request", &body).is_ok());
    }

    #[test]
    fn structured_grpc_requests(msg in grpc_message()) {
        let _g = lock();
        prop_assert!(bounded("grpc_request", &msg).is_ok());
    }
}
