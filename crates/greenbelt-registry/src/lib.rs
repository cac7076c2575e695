//! The model registry: models, auto-numbered versions, aliases that point at
//! exactly one version, and an append-only audit history of every alias
//! move. SQLite by default (a file in the project), PostgreSQL by URL for a
//! cluster; the same schema through versioned migrations. Artifacts live in a
//! content-addressed store (local directory, or S3 with the `s3` feature) and
//! are integrity-checked on every read.
//!
//! This crate owns the registry's storage and its HTTP API. It must not know
//! about serving or training.

pub mod artifacts;
pub mod feature_defs;
pub mod http;
pub mod mlflow;
pub mod notify;
pub mod reference;
pub mod rollouts;
mod schema;
pub mod store;

pub use artifacts::ArtifactStore;
pub use feature_defs::FeatureDefinition;
pub use notify::{AliasChange, AliasListener, Notice};
pub use reference::ModelRef;
pub use rollouts::{RolloutEvent, StoredRollout};
pub use store::{AliasEvent, ModelVersion, NewVersion, Registry};

/// Registry errors. Messages name the model, version or alias at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// The artifact store could not be read or written (unreachable,
    /// timed out): worth retrying.
    #[error("artifact: {0}")]
    Artifact(String),
    /// An artifact that fails its integrity check, or is not in this
    /// store: retrying cannot help.
    #[error("artifact: {0}")]
    Corrupt(String),
    #[error("registry database: {0}")]
    Db(String),
    /// The database refused a write because it is a read-only hot standby
    /// (SQLSTATE 25006): writes go to the primary, or promote this one.
    #[error(
        "registry database is a read-only standby: {0}; write to the primary region, or promote this database (pg_ctl promote) and retry"
    )]
    ReadOnly(String),
}

/// SQLSTATE `read_only_sql_transaction`: a write on a hot standby.
const READ_ONLY_SQL_TRANSACTION: &str = "25006";

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some(READ_ONLY_SQL_TRANSACTION) => {
                RegistryError::ReadOnly(d.message().to_string())
            }
            _ => RegistryError::Db(e.to_string()),
        }
    }
}

/// Microseconds since the Unix epoch, UTC.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// RFC 3339 text for a microsecond timestamp.
pub fn format_us(us: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Parse an RFC 3339 timestamp (UTC, `Z` or no offset) to microseconds.
pub fn parse_time(s: &str) -> Result<i64, RegistryError> {
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).map_err(|e| {
        RegistryError::Invalid(format!(
            "time \"{s}\" is not RFC 3339 like 2026-11-20T14:02:00Z: {e}"
        ))
    })?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .map_err(|_| RegistryError::Invalid(format!("time \"{s}\" is before 1970")))
}

/// Model and alias names: letters, digits, `_`, `-`, `.`; not starting with `.`.
pub fn check_name(kind: &str, name: &str) -> Result<(), RegistryError> {
    if greenbelt_core::is_valid_name(name) {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{kind} name \"{}\" is not valid: use letters, digits, '_', '-' and '.'",
            name.chars().take(200).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let us = parse_time("2026-11-20T14:02:00Z").unwrap();
        assert_eq!(format_us(us), "2026-11-20T14:02:00.000000Z");
        assert!(parse_time("last tuesday").is_err());
    }
}
