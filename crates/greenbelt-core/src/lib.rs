//! Shared types for every Greenbelt crate: tensors and their datatypes,
//! model signatures, inference requests and responses, and the core error.
//!
//! This crate owns no I/O and no runtime; it must stay cheap to compile
//! because every other crate depends on it.

pub mod datatype;
pub mod error;
pub mod infer;
pub mod json;
pub mod raw;
pub mod signature;
pub mod tensor;

pub use datatype::DataType;
pub use error::CoreError;
pub use infer::{InferRequest, InferResponse, RequestedOutput};
pub use signature::{Signature, TensorSpec};
pub use tensor::{Tensor, TensorData};
