//! REST encoding of V2 inference: JSON tensors, and the binary tensor data
//! extension (`Inference-Header-Content-Length`, `binary_data_size`,
//! `binary_data` / `binary_data_output`) that tritonclient uses by default.

use bytes::Bytes;
use greenbelt_core::json::JsonData;
use greenbelt_core::{DataType, InferRequest, InferResponse, RequestedOutput, Tensor, raw, tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ServeError;

pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct RestRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<RestInput>,
    #[serde(default)]
    outputs: Option<Vec<RestOutput>>,
}

#[derive(Deserialize)]
struct RestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RestOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn param_bool(p: &Option<Map<String, Value>>, key: &str) -> Option<bool> {
    p.as_ref().and_then(|m| m.get(key)).and_then(Value::as_bool)
}

/// Decode a REST infer body. `header_len` is the value of
/// `Inference-Header-Content-Length`, when present.
pub fn decode_request(body: &Bytes, header_len: Option<usize>) -> Result<InferRequest, ServeError> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(ServeError::InvalidInput(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => (body.slice(..n), body.slice(n..)),
        None => (body.clone(), Bytes::new()),
    };
    let req: RestRequest = serde_json::from_slice(&json).map_err(|e| {
        ServeError::InvalidInput(format!(
            "request body is not a valid V2 inference request: {e}"
        ))
    })?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let datatype: DataType =
            input
                .datatype
                .parse()
                .map_err(|e: greenbelt_core::CoreError| {
                    ServeError::InvalidInput(format!("input \"{}\": {e}", input.name))
                })?;
        let count = tensor::element_count(&input.name, &input.shape)?;
        let binary_size = input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
            .map(|v| {
                v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                    ServeError::InvalidInput(format!(
                        "input \"{}\": parameters.binary_data_size must be a non-negative integer",
                        input.name
                    ))
                })
            })
            .transpose()?;
        let data = match (binary_size, &input.data) {
            (Some(size), _) => {
                if size > binary.len() {
                    return Err(ServeError::InvalidInput(format!(
                        "input \"{}\": binary_data_size is {size} but only {} binary bytes remain in the body",
                        input.name,
                        binary.len()
                    )));
                }
                let chunk = binary.split_to(size);
                raw::decode(&input.name, datatype, count, &chunk)?
            }
            (None, Some(data)) => greenbelt_core::json::decode(&input.name, datatype, data)?,
            (None, None) => {
                return Err(ServeError::InvalidInput(format!(
                    "input \"{}\" has neither \"data\" nor parameters.binary_data_size",
                    input.name
                )));
            }
        };
        inputs.push(Tensor::new(input.name, input.shape, data)?);
    }
    if !binary.is_empty() {
        return Err(ServeError::InvalidInput(format!(
            "{} binary bytes after the JSON header were not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let binary_output = param_bool(&req.parameters, "binary_data_output").unwrap_or(false);
    let outputs = req
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| RequestedOutput {
            binary: param_bool(&o.parameters, "binary_data").unwrap_or(binary_output),
            name: o.name,
        })
        .collect();
    Ok(InferRequest {
        id: req.id,
        inputs,
        outputs,
        binary_output,
    })
}

#[derive(Serialize)]
struct RestResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<RestOutputTensor<'a>>,
}

#[derive(Serialize)]
struct RestOutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

/// An encoded REST response body; `header_len` is set when binary tensors follow the JSON.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_len: Option<usize>,
}

/// Encode a response; outputs go binary when the request asked for it.
pub fn encode_response(
    resp: &InferResponse,
    requested: &[RequestedOutput],
    binary_output: bool,
) -> Result<EncodedResponse, ServeError> {
    let wants_binary = |name: &str| {
        requested
            .iter()
            .find(|r| r.name == name)
            .map_or(binary_output, |r| r.binary)
    };
    let mut binary: Vec<u8> = Vec::new();
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    for t in &resp.outputs {
        if wants_binary(&t.name) {
            let before = binary.len();
            raw::encode_into(&t.data, &mut binary);
            outputs.push(RestOutputTensor {
                name: &t.name,
                datatype: t.datatype().as_str(),
                shape: &t.shape,
                parameters: Some(BinaryParams {
                    binary_data_size: binary.len() - before,
                }),
                data: None,
            });
        } else {
            outputs.push(RestOutputTensor {
                name: &t.name,
                datatype: t.datatype().as_str(),
                shape: &t.shape,
                parameters: None,
                data: Some(JsonData(&t.data)),
            });
        }
    }
    let mut body = serde_json::to_vec(&RestResponse {
        model_name: &resp.model_name,
        model_version: &resp.model_version,
        id: resp.id.as_deref(),
        outputs,
    })
    .map_err(|e| ServeError::Internal(format!("encoding response: {e}")))?;
    if binary.is_empty() && !resp.outputs.iter().any(|t| wants_binary(&t.name)) {
        return Ok(EncodedResponse {
            body,
            header_len: None,
        });
    }
    let header_len = body.len();
    body.extend_from_slice(&binary);
    Ok(EncodedResponse {
        body,
        header_len: Some(header_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::TensorData;

    #[test]
    fn json_request_decodes() {
        let body = Bytes::from(
            r#"{"id":"7","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1,2]]}],
                "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#,
        );
        let r = decode_request(&body, None).unwrap();
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0]));
        assert_eq!(
            r.outputs,
            vec![RequestedOutput {
                name: "y".into(),
                binary: true
            }]
        );
    }

    #[test]
    fn binary_request_decodes() {
        let header = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1i32.to_le_bytes());
        body.extend_from_slice(&(-2i32).to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"hi");
        let r = decode_request(&Bytes::from(body), Some(header.len())).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Int32(vec![1, -2]));
        assert_eq!(r.inputs[1].data, TensorData::Bytes(vec![Bytes::from("hi")]));
        assert!(r.binary_output);
    }

    #[test]
    fn garbage_gets_named_errors() {
        let cases: &[(&str, Option<usize>, &str)] = &[
            ("not json", None, "not a valid V2 inference request"),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
                None,
                "unknown datatype \"FLOAT\"",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#,
                None,
                "holds 2 elements but 1",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                None,
                "neither \"data\"",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[-3],"datatype":"FP32","data":[]}]}"#,
                None,
                "negative",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
                Some(1000),
                "Inference-Header-Content-Length is 1000",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-1}}]}"#,
                None,
                "binary_data_size must be",
            ),
        ];
        for (body, hl, want) in cases {
            let e = decode_request(&Bytes::from(body.to_string()), *hl)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{body}: got {e:?}, want {want:?}");
        }
        // binary size larger than what follows the header
        let header = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let e = decode_request(&Bytes::from(header.to_vec()), Some(header.len())).unwrap_err();
        assert!(e.to_string().contains("only 0 binary bytes remain"), "{e}");
        // extra unclaimed bytes
        let mut body = header.to_vec();
        body.extend_from_slice(&[0u8; 9]);
        let e = decode_request(&Bytes::from(body), Some(header.len())).unwrap_err();
        assert!(e.to_string().contains("not claimed"), "{e}");
    }

    #[test]
    fn response_mixes_binary_and_json() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            outputs: vec![
                Tensor::new("a", vec![1], TensorData::Fp32(vec![1.5])).unwrap(),
                Tensor::new("b", vec![1], TensorData::Int64(vec![3])).unwrap(),
            ],
        };
        let requested = vec![
            RequestedOutput {
                name: "a".into(),
                binary: true,
            },
            RequestedOutput {
                name: "b".into(),
                binary: false,
            },
        ];
        let enc = encode_response(&resp, &requested, false).unwrap();
        let n = enc.header_len.unwrap();
        let json: Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 4);
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([3]));
        assert_eq!(&enc.body[n..], &1.5f32.to_le_bytes());
        let enc = encode_response(&resp, &[], false).unwrap();
        assert!(enc.header_len.is_none());
    }
}
