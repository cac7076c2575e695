//! The serving error and its one mapping to HTTP statuses and gRPC codes.

use std::time::Duration;

use axum::http::StatusCode;
use greenbelt_core::CoreError;
use greenbelt_runtime::RuntimeError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed or does not match the model's signature.
    #[error("{0}")]
    InvalidInput(String),
    #[error("unknown model \"{0}\"")]
    ModelNotFound(String),
    #[error("model \"{model}\" has no version \"{version}\"; ready versions: {ready:?}")]
    VersionNotFound {
        model: String,
        version: String,
        ready: Vec<String>,
    },
    #[error("model \"{model}\" is not ready: {reason}")]
    ModelNotReady { model: String, reason: String },
    /// A model load (repository extension) failed; versions already serving keep serving.
    #[error("failed to load model \"{model}\": {reason}")]
    LoadFailed { model: String, reason: String },
    #[error(
        "request body is larger than the {limit}-byte limit; send smaller batches or raise [server] max_request_bytes"
    )]
    PayloadTooLarge { limit: usize },
    /// The request is over a decode limit; the message names the `[limits]` setting.
    #[error("{0}")]
    LimitExceeded(String),
    #[error("request timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Shed: a bounded queue or the in-flight limit is full.
    #[error("server is overloaded ({what}); retry after {retry_after_s} s")]
    Overloaded { what: String, retry_after_s: u64 },
    /// Shed: the request waited for compute past its queue budget and was
    /// dropped before it ran.
    #[error(
        "server is overloaded: the request waited {waited_ms} ms for compute, past its {budget_ms} ms queue budget ([server] queue_budget); retry after 1 s"
    )]
    QueueTimeout { waited_ms: u64, budget_ms: u64 },
    #[error("server is shutting down")]
    ShuttingDown,
    /// The runtime failed on inputs that passed validation.
    #[error("{0}")]
    Runtime(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// No token, or a token that matches none (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The token's role does not allow this, or the capability is off (403).
    #[error("{0}")]
    Forbidden(String),
}

impl ServeError {
    /// HTTP status for the REST API. Never a 5xx for a client's mistake.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ServeError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ServeError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ServeError::VersionNotFound { .. } => StatusCode::NOT_FOUND,
            ServeError::ModelNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::LoadFailed { .. } => StatusCode::BAD_REQUEST,
            ServeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::LimitExceeded(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Runtime(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServeError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServeError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// gRPC status code for the gRPC API.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ServeError::InvalidInput(_) => tonic::Code::InvalidArgument,
            ServeError::ModelNotFound(_) => tonic::Code::NotFound,
            ServeError::VersionNotFound { .. } => tonic::Code::NotFound,
            ServeError::ModelNotReady { .. } => tonic::Code::Unavailable,
            ServeError::LoadFailed { .. } => tonic::Code::InvalidArgument,
            ServeError::PayloadTooLarge { .. } => tonic::Code::ResourceExhausted,
            ServeError::LimitExceeded(_) => tonic::Code::ResourceExhausted,
            ServeError::Timeout(_) => tonic::Code::DeadlineExceeded,
            ServeError::Overloaded { .. } => tonic::Code::Unavailable,
            ServeError::QueueTimeout { .. } => tonic::Code::Unavailable,
            ServeError::ShuttingDown => tonic::Code::Unavailable,
            ServeError::Runtime(_) => tonic::Code::Internal,
            ServeError::Internal(_) => tonic::Code::Internal,
            ServeError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            ServeError::Forbidden(_) => tonic::Code::PermissionDenied,
        }
    }

    /// Seconds a client should wait before retrying, for shed responses.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ServeError::Overloaded { retry_after_s, .. } => Some(*retry_after_s),
            ServeError::ShuttingDown | ServeError::QueueTimeout { .. } => Some(1),
            _ => None,
        }
    }

    /// The bounded `outcome` label for metrics.
    pub fn outcome(&self) -> Outcome {
        match self {
            ServeError::InvalidInput(_)
            | ServeError::ModelNotFound(_)
            | ServeError::VersionNotFound { .. }
            | ServeError::PayloadTooLarge { .. }
            | ServeError::LimitExceeded(_)
            | ServeError::LoadFailed { .. }
            | ServeError::Unauthenticated(_)
            | ServeError::Forbidden(_) => Outcome::ClientError,
            ServeError::Timeout(_) => Outcome::Timeout,
            ServeError::Overloaded { .. }
            | ServeError::QueueTimeout { .. }
            | ServeError::ShuttingDown
            | ServeError::ModelNotReady { .. } => Outcome::Shed,
            ServeError::Runtime(_) | ServeError::Internal(_) => Outcome::ServerError,
        }
    }
}

/// Outcome of one request, a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    ClientError,
    ServerError,
    Timeout,
    Shed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::Shed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Shed => "shed",
        }
    }
}

impl From<CoreError> for ServeError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidInput(m) => ServeError::InvalidInput(m),
            CoreError::LimitExceeded(m) => ServeError::LimitExceeded(m),
        }
    }
}

impl From<greenbelt_auth::AuthError> for ServeError {
    fn from(e: greenbelt_auth::AuthError) -> Self {
        match e {
            greenbelt_auth::AuthError::Unauthenticated(m) => ServeError::Unauthenticated(m),
            greenbelt_auth::AuthError::Forbidden(m) => ServeError::Forbidden(m),
            greenbelt_auth::AuthError::Config(m) => ServeError::Internal(m),
        }
    }
}

impl From<RuntimeError> for ServeError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Input(m) => ServeError::InvalidInput(m),
            RuntimeError::Inference(_) => ServeError::Runtime(e.to_string()),
            RuntimeError::LibraryUnavailable(_)
            | RuntimeError::Load { .. }
            | RuntimeError::UnsupportedOperator { .. } => ServeError::Internal(e.to_string()),
        }
    }
}
