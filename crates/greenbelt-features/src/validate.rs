//! `validate`: run the contracts of sources and feature views over their
//! current data, streaming, and report per rule (checked, failed count and
//! percentage, sample failures). Reports only; writes nothing.

use futures::StreamExt;

use crate::contracts::{Checker, ValidationReport};
use crate::defs::Definitions;
use crate::error::{FeatureError, Result};
use crate::offline::{EVENT_TIMESTAMP, offline_frame};
use crate::source::{EngineOptions, read_file, session};

async fn run(mut checker: Checker, df: datafusion::prelude::DataFrame) -> Result<ValidationReport> {
    let mut s = df.execute_stream().await?;
    while let Some(b) = s.next().await {
        checker.check(&b?)?;
    }
    Ok(checker.finish())
}

/// Validate one source's contract over the source as read.
pub async fn validate_source(
    defs: &Definitions,
    name: &str,
    now_us: i64,
    engine: &EngineOptions,
) -> Result<Option<ValidationReport>> {
    let source = defs
        .sources
        .get(name)
        .ok_or_else(|| FeatureError::NotFound(format!("source \"{name}\" is not defined")))?;
    let Some(contract) = &source.contract else {
        return Ok(None);
    };
    let ctx = session(engine)?;
    let df = read_file(&ctx, &source.location, source.format).await?;
    let checker = Checker::new(
        &format!("source \"{name}\""),
        contract,
        Some(&source.event_timestamp),
        now_us,
    )
    .await?;
    Ok(Some(run(checker, df).await?))
}

/// Validate one view's contract over all its data (offline layout: join
/// keys, `event_timestamp`, `created_timestamp`, features).
pub async fn validate_view(
    defs: &Definitions,
    name: &str,
    now_us: i64,
    engine: &EngineOptions,
) -> Result<Option<ValidationReport>> {
    let view = defs.view(name)?;
    let Some(contract) = &view.contract else {
        return Ok(None);
    };
    let ctx = session(engine)?;
    let df = offline_frame(&ctx, defs, view, i64::MIN, i64::MAX).await?;
    let checker = Checker::new(
        &format!("feature view \"{name}\""),
        contract,
        Some(EVENT_TIMESTAMP),
        now_us,
    )
    .await?;
    Ok(Some(run(checker, df).await?))
}

/// Validate every source and view that has a contract.
pub async fn validate_all(
    defs: &Definitions,
    now_us: i64,
    engine: &EngineOptions,
) -> Result<Vec<ValidationReport>> {
    let mut out = Vec::new();
    for name in defs.sources.keys() {
        if let Some(r) = validate_source(defs, name, now_us, engine).await? {
            out.push(r);
        }
    }
    for name in defs.views.keys() {
        if let Some(r) = validate_view(defs, name, now_us, engine).await? {
            out.push(r);
        }
    }
    Ok(out)
}
