//! The crate's one error type. Messages name the thing at fault and the fix;
//! `status_code` maps each variant to the HTTP status the API answers with.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::parquet::errors::ParquetError;

/// Everything that can go wrong in the feature store.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// A definition, request or argument is wrong (the caller can fix it).
    #[error("{0}")]
    Invalid(String),
    /// A named entity, view, service or feature does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A data contract with policy `fail` was violated.
    #[error("contract violated: {0}")]
    Contract(String),
    /// Reading, transforming or writing data failed.
    #[error("data: {0}")]
    Data(String),
    /// The online store failed (connection, timeout, storage).
    #[error("online store: {0}")]
    Online(String),
    /// A file-system or object-store operation failed.
    #[error("io: {0}")]
    Io(String),
}

impl FeatureError {
    /// The HTTP status for this error: 400 for the caller's mistakes, 404 for
    /// unknown names, 422 for a contract violation, 503 for a store outage,
    /// 500 otherwise.
    pub fn status_code(&self) -> u16 {
        match self {
            FeatureError::Invalid(_) => 400,
            FeatureError::NotFound(_) => 404,
            FeatureError::Contract(_) => 422,
            FeatureError::Online(_) => 503,
            FeatureError::Data(_) => 500,
            FeatureError::Io(_) => 500,
        }
    }
}

impl From<DataFusionError> for FeatureError {
    fn from(e: DataFusionError) -> Self {
        if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
            return FeatureError::Data(format!(
                "{e}; the query engine needs more memory than its limit for this data: raise --memory-limit-mb (the limit is shared by the engine's parallel partitions, and each needs room for a few record batches of the widest rows)"
            ));
        }
        FeatureError::Data(e.to_string())
    }
}

impl From<ArrowError> for FeatureError {
    fn from(e: ArrowError) -> Self {
        FeatureError::Data(e.to_string())
    }
}

impl From<ParquetError> for FeatureError {
    fn from(e: ParquetError) -> Self {
        FeatureError::Data(e.to_string())
    }
}

impl From<std::io::Error> for FeatureError {
    fn from(e: std::io::Error) -> Self {
        FeatureError::Io(e.to_string())
    }
}

impl From<datafusion::object_store::Error> for FeatureError {
    fn from(e: datafusion::object_store::Error) -> Self {
        FeatureError::Io(e.to_string())
    }
}

pub type Result<T, E = FeatureError> = std::result::Result<T, E>;
