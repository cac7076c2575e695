//! The crate's one error type. Each variant says which part of assembling
//! or running the application failed; messages name the thing and the fix.

use greenbelt_control::pipeline::PipelineError;
use greenbelt_features::FeatureError;
use greenbelt_registry::RegistryError;
use greenbelt_serve::config::ConfigError;
use greenbelt_serve::server::StartError;

/// Everything that can go wrong in `greenbelt-app`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The project config is unreadable or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting or argument is wrong in a way the config parser cannot see
    /// (a deployment that clashes with a model, a bad interval, ...).
    #[error("{0}")]
    Invalid(String),
    /// The registry or its artifact store failed.
    #[error("{0}")]
    Registry(#[from] RegistryError),
    /// The feature store failed.
    #[error("feature store: {0}")]
    Features(#[from] FeatureError),
    /// A promotion pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The server could not start or serve.
    #[error("server: {0}")]
    Start(#[from] StartError),
    /// A remote server (bench, drill) answered wrongly or not at all.
    #[error("{0}")]
    Remote(String),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A background task panicked or was cancelled.
    #[error("task: {0}")]
    Task(String),
}

impl AppError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
        let what = what.into();
        move |source| AppError::Io { what, source }
    }
}

impl From<tokio::task::JoinError> for AppError {
    fn from(e: tokio::task::JoinError) -> Self {
        AppError::Task(e.to_string())
    }
}

impl From<reqwest::Error> for AppError {
    fn from(e: reqwest::Error) -> Self {
        AppError::Remote(e.to_string())
    }
}

pub type Result<T, E = AppError> = std::result::Result<T, E>;
