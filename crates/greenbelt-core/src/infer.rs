//! Transport-neutral inference requests and responses. REST and gRPC both
//! decode into [`InferRequest`] and encode from [`InferResponse`].

use std::collections::HashSet;

use crate::error::CoreError;
use crate::tensor::Tensor;

/// An output the client asked for, and whether it wants it in binary form
/// (REST binary tensor extension; gRPC always answers raw).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: bool,
}

#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    /// The client's `id`, echoed in the response.
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Empty means every output of the model.
    pub outputs: Vec<RequestedOutput>,
    /// Request-level `binary_data_output`: every output in binary form.
    pub binary_output: bool,
}

impl InferRequest {
    /// Total rows in the batch dimension of the first input (1 for scalars).
    pub fn rows(&self) -> usize {
        self.inputs.first().map_or(0, Tensor::rows)
    }

    /// Every input name and every requested output name at most once: a
    /// duplicate is an error, found in one pass.
    pub fn check_unique_names(&self) -> Result<(), CoreError> {
        check_unique("input", self.inputs.iter().map(|t| t.name.as_str()))?;
        check_unique(
            "requested output",
            self.outputs.iter().map(|o| o.name.as_str()),
        )
    }

    /// Raw byte size of all inputs, for payload metrics.
    pub fn payload_bytes(&self) -> usize {
        self.inputs.iter().map(|t| t.data.byte_size()).sum()
    }
}

/// An error naming the first name that `names` holds twice.
pub fn check_unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), CoreError> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(duplicate(what, name));
        }
    }
    Ok(())
}

/// The error for a name given twice (`what` is "input" or "requested output").
pub fn duplicate(what: &str, name: &str) -> CoreError {
    CoreError::invalid(format!(
        "{what} \"{name}\" is given more than once; name each {what} once"
    ))
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
}

impl InferResponse {
    pub fn payload_bytes(&self) -> usize {
        self.outputs.iter().map(|t| t.data.byte_size()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorData;

    #[test]
    fn duplicate_names_are_errors() {
        let t = |n: &str| Tensor::new(n, vec![1], TensorData::Fp32(vec![0.0])).unwrap();
        let out = |n: &str| RequestedOutput {
            name: n.into(),
            binary: false,
        };
        let mut r = InferRequest {
            inputs: vec![t("a"), t("b")],
            outputs: vec![out("y"), out("z")],
            ..Default::default()
        };
        r.check_unique_names().unwrap();
        r.inputs.push(t("a"));
        let e = r.check_unique_names().unwrap_err().to_string();
        assert!(e.contains("input \"a\" is given more than once"), "{e}");
        r.inputs.pop();
        r.outputs.push(out("z"));
        let e = r.check_unique_names().unwrap_err().to_string();
        assert!(e.contains("requested output \"z\""), "{e}");
    }
}
