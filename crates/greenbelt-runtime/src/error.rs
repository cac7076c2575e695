use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The backend's native library is missing or unusable.
    #[error("ONNX Runtime is not available: {0}")]
    LibraryUnavailable(String),
    /// The model file could not be loaded.
    #[error("cannot load {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    /// The model uses an operator the chosen backend cannot run correctly.
    #[error("cannot load {}: operator \"{operator}\": {remedy}", path.display())]
    UnsupportedOperator {
        path: PathBuf,
        operator: String,
        remedy: String,
    },
    /// The inputs are valid V2 tensors the runtime still cannot take (e.g.
    /// non-UTF-8 BYTES for an ONNX string tensor). A client error.
    #[error("{0}")]
    Input(String),
    /// Inference failed inside the runtime.
    #[error("inference failed: {0}")]
    Inference(String),
}
