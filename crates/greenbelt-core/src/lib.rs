//! Shared types for every Greenbelt crate: tensors and their datatypes,
//! model signatures, inference requests and responses, and the core error.
//!
//! This crate owns no I/O and no runtime (the circuit breaker only reads
//! tokio's clock); it must stay cheap to compile
//! because every other crate depends on it.

pub mod autoscale;
pub mod breaker;
pub mod cost;
pub mod datatype;
pub mod duration;
pub mod error;
pub mod infer;
pub mod json;
pub mod limits;
pub mod raw;
pub mod retry;
pub mod signature;
pub mod spans;
pub mod tensor;

pub use datatype::DataType;
pub use error::CoreError;
pub use infer::{InferRequest, InferResponse, RequestedOutput};
pub use limits::{Budget, DecodeLimits};
pub use signature::{Signature, TensorSpec};
pub use tensor::{Tensor, TensorData};

/// Names of models, versions' aliases and routes: one plain path component of
/// letters, digits, `_`, `-` and `.`, not starting with `.`, at most 200 bytes.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
