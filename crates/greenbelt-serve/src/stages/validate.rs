//! Validate: a request against the chosen version's signature. Inputs come
//! out in signature order (so batched requests line up input by input);
//! requested outputs must be the model's and must be unique. Every check
//! is linear in the request.

use std::collections::HashMap;

use greenbelt_core::{InferRequest, RequestedOutput, Signature, Tensor};

use crate::error::ServeError;

/// A request that fits its version's signature.
#[derive(Debug)]
pub struct Validated {
    pub id: Option<String>,
    /// In signature order.
    pub inputs: Vec<Tensor>,
    /// Unique; empty means every output.
    pub outputs: Vec<RequestedOutput>,
}

pub fn validate(signature: &Signature, req: InferRequest) -> Result<Validated, ServeError> {
    signature.check_inputs(&req.inputs)?;
    let mut seen = std::collections::HashSet::with_capacity(req.outputs.len());
    for o in &req.outputs {
        if !seen.insert(o.name.as_str()) {
            return Err(ServeError::InvalidInput(format!(
                "output \"{}\" is requested more than once; name each output once",
                o.name.chars().take(200).collect::<String>()
            )));
        }
    }
    signature.check_outputs(req.outputs.iter().map(|o| o.name.as_str()))?;
    let mut inputs = req.inputs;
    inputs.sort_by_key(|t| {
        signature
            .inputs
            .iter()
            .position(|s| s.name == t.name)
            .unwrap_or(usize::MAX)
    });
    Ok(Validated {
        id: req.id,
        inputs,
        outputs: req.outputs,
    })
}

/// Keep the requested outputs, in the order asked; all when none were
/// named. `requested` is unique (see [`validate`]).
pub fn select_outputs(
    outputs: Vec<Tensor>,
    requested: &[RequestedOutput],
) -> Result<Vec<Tensor>, ServeError> {
    if requested.is_empty() {
        return Ok(outputs);
    }
    let mut by_name: HashMap<String, Tensor> =
        outputs.into_iter().map(|t| (t.name.clone(), t)).collect();
    requested
        .iter()
        .map(|r| {
            by_name.remove(&r.name).ok_or_else(|| {
                ServeError::Runtime(format!("runtime did not produce output \"{}\"", r.name))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::{DataType, TensorData, TensorSpec};

    fn sig() -> Signature {
        Signature {
            inputs: vec![
                TensorSpec::new("a", DataType::Fp32, vec![-1]),
                TensorSpec::new("b", DataType::Fp32, vec![-1]),
            ],
            outputs: vec![
                TensorSpec::new("y", DataType::Fp32, vec![-1]),
                TensorSpec::new("z", DataType::Fp32, vec![-1]),
            ],
        }
    }

    fn t(name: &str) -> Tensor {
        Tensor::new(name, vec![1], TensorData::Fp32(vec![1.0])).unwrap()
    }

    fn out(name: &str) -> RequestedOutput {
        RequestedOutput {
            name: name.into(),
            binary: false,
        }
    }

    #[test]
    fn inputs_come_out_in_signature_order() {
        let v = validate(
            &sig(),
            InferRequest {
                inputs: vec![t("b"), t("a")],
                outputs: vec![out("z")],
                ..Default::default()
            },
        )
        .unwrap();
        let names: Vec<&str> = v.inputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn duplicate_outputs_are_a_client_error() {
        let outputs = vec![out("y"); 200_000];
        let e = validate(
            &sig(),
            InferRequest {
                inputs: vec![t("a"), t("b")],
                outputs,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
        assert_eq!(e.http_status(), axum::http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn selection_keeps_the_asked_order_and_names_a_missing_output() {
        let got = select_outputs(vec![t("y"), t("z")], &[out("z"), out("y")]).unwrap();
        let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["z", "y"]);
        let e = select_outputs(vec![t("y")], &[out("z")]).unwrap_err();
        assert!(e.to_string().contains("\"z\""), "{e}");
        assert_eq!(select_outputs(vec![t("y")], &[]).unwrap().len(), 1);
    }
}
