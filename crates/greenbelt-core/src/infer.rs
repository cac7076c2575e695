//! Transport-neutral inference requests and responses. REST and gRPC both
//! decode into [`InferRequest`] and encode from [`InferResponse`].

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

    /// Raw byte size of all inputs, for payload metrics.
    pub fn payload_bytes(&self) -> usize {
        self.inputs.iter().map(|t| t.data.byte_size()).sum()
    }
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
