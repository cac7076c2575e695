//! The core error: what can go wrong while decoding or checking tensors.

/// Errors from tensor decoding and validation. Every message names the
/// tensor or field at fault and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// The client sent something malformed or inconsistent.
    #[error("{0}")]
    InvalidInput(String),
    /// The request is over a decode limit (`[limits]` in greenbelt.toml).
    #[error("{0}")]
    LimitExceeded(String),
}

impl CoreError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        CoreError::InvalidInput(msg.into())
    }
}
