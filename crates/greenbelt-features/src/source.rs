//! Reading a feature view's data: its source file(s) (CSV or Parquet, on
//! local disk or S3) read by DataFusion, the view's SQL transformation
//! applied, and the columns normalised to the declared types. Event and
//! created timestamps become `__gb_ts` / `__gb_created`: Int64 microseconds
//! since the epoch, UTC (naive source timestamps are UTC). This module owns
//! the DataFusion session settings (memory limit, spilling) and the S3
//! clients registered with a session.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::object_store::path::Path as StorePath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::prelude::{
    CsvReadOptions, DataFrame, Expr, ParquetReadOptions, SessionConfig, SessionContext, cast,
    ident, lit,
};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;

use crate::defs::{Definitions, FeatureView, Location, Source, SourceFormat};
use crate::error::{FeatureError, Result};

/// Event time column of a normalised view frame (Int64 µs UTC).
pub const TS: &str = "__gb_ts";
/// Created time column of a normalised view frame (Int64 µs UTC, nullable).
pub const CREATED: &str = "__gb_created";

/// DataFusion settings for feature-store queries.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Memory the query engine may use before spilling to disk (bytes).
    pub memory_limit: usize,
    /// Parallel partitions (default: the number of CPUs).
    pub target_partitions: usize,
    /// Rows per record batch.
    pub batch_size: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            memory_limit: 512 * 1024 * 1024,
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            batch_size: 8192,
        }
    }
}

/// A session with a bounded memory pool that spills sorts to temporary files.
pub fn session(opts: &EngineOptions) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(opts.memory_limit)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::OsTmpDirectory),
        )
        .build_arc()?;
    let config = SessionConfig::new()
        .with_target_partitions(opts.target_partitions.max(1))
        .with_batch_size(opts.batch_size.max(1))
        // The merge phase of a spilling sort reserves this up front; keep it
        // a small fraction of the limit so small limits still work, also
        // when several sorts run at once (a point-in-time join has three:
        // entity rows, view rows, and the result back into entity order).
        .with_sort_spill_reservation_bytes(
            (opts.memory_limit / 32).clamp(64 * 1024, 10 * 1024 * 1024),
        )
        .with_information_schema(false)
        // A global sort (materialization's by event time, retrieval's by
        // entity row) is one sort over the coalesced input, not a sort per
        // partition merged afterwards: sorts running side by side share the
        // pool, and one partition's spill merge can take the memory another
        // still needs to sort (seen as "Resources exhausted" at 64 MiB with
        // two partitions and 0.5 KB rows). The scan stays parallel.
        .with_repartition_sorts(false)
        // A round-robin repartition above a sort-preserving merge loses the
        // order when the partitions are coalesced again; the feature store
        // relies on ordered streams (entity order, sorted partitions).
        .with_round_robin_repartition(false);
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// The S3 client for `bucket`, configured from the standard AWS environment:
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (`AWS_SESSION_TOKEN`),
/// `AWS_REGION` (default `us-east-1`), `AWS_ENDPOINT_URL` for an
/// S3-compatible service and `AWS_ALLOW_HTTP=true` for a plain-HTTP one
/// (every `AWS_*` name object_store knows is read). Without credentials in
/// the environment the client asks the instance/container metadata service.
#[cfg(feature = "s3")]
pub fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    use datafusion::object_store::aws::AmazonS3Builder;
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| {
            FeatureError::Invalid(format!(
                "s3://{bucket}: {e}; set AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a non-AWS service)"
            ))
        })?;
    Ok(Arc::new(s3))
}

/// Without the `s3` feature: an error saying how to get it.
#[cfg(not(feature = "s3"))]
pub fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    Err(FeatureError::Invalid(format!(
        "s3://{bucket}: this build has no S3 support; rebuild with `--features greenbelt-features/s3` (the greenbelt binary has it by default)"
    )))
}

/// The S3 client for `bucket` registered with `ctx` (registered on first use,
/// so DataFusion can read `s3://bucket/...` URLs in this session).
pub fn bucket_store(ctx: &SessionContext, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let url = ObjectStoreUrl::parse(format!("s3://{bucket}"))?;
    if let Ok(store) = ctx.runtime_env().object_store(&url) {
        return Ok(store);
    }
    let store = s3_store(bucket)?;
    ctx.register_object_store(url.as_ref(), store.clone());
    Ok(store)
}

/// Make `ctx` able to read `loc` (registers the S3 client of its bucket).
pub fn register_location(ctx: &SessionContext, loc: &Location) -> Result<()> {
    if let Location::S3 { bucket, .. } = loc {
        bucket_store(ctx, bucket)?;
    }
    Ok(())
}

/// The URL DataFusion reads `loc` by, and whether it is a directory
/// (prefix); errors when nothing is there.
async fn resolve(ctx: &SessionContext, loc: &Location) -> Result<(String, bool)> {
    match loc {
        Location::Local(path) => {
            let p = path.to_string_lossy().into_owned();
            if !path.exists() {
                return Err(FeatureError::NotFound(format!("file {p} does not exist")));
            }
            Ok((p, path.is_dir()))
        }
        Location::S3 { bucket, key } => {
            let store = bucket_store(ctx, bucket)?;
            let trimmed = key.trim_end_matches('/');
            let is_file = if key.is_empty() || key.ends_with('/') {
                false
            } else {
                match store.head(&StorePath::from(trimmed)).await {
                    Ok(_) => true,
                    Err(datafusion::object_store::Error::NotFound { .. }) => false,
                    Err(e) => return Err(FeatureError::Io(format!("{loc}: {e}"))),
                }
            };
            if is_file {
                return Ok((format!("s3://{bucket}/{trimmed}"), false));
            }
            let prefix = (!trimmed.is_empty()).then(|| StorePath::from(trimmed));
            match store.list(prefix.as_ref()).next().await {
                Some(Ok(_)) => Ok((
                    if trimmed.is_empty() {
                        format!("s3://{bucket}/")
                    } else {
                        format!("s3://{bucket}/{trimmed}/")
                    },
                    true,
                )),
                Some(Err(e)) => Err(FeatureError::Io(format!("{loc}: {e}"))),
                None => Err(FeatureError::NotFound(format!(
                    "{loc} does not exist (no object with that key or prefix)"
                ))),
            }
        }
    }
}

/// Read a CSV or Parquet file (or directory), local or on S3, as a DataFrame.
pub async fn read_file(
    ctx: &SessionContext,
    loc: &Location,
    format: SourceFormat,
) -> Result<DataFrame> {
    let (url, is_dir) = resolve(ctx, loc).await?;
    let ext = loc.extension().map(|e| format!(".{e}"));
    let df = match format {
        SourceFormat::Csv => {
            let ext = ext.unwrap_or_else(|| ".csv".into());
            ctx.read_csv(
                url,
                CsvReadOptions::new().has_header(true).file_extension(&ext),
            )
            .await?
        }
        SourceFormat::Parquet => {
            let ext = if is_dir {
                ".parquet".to_string()
            } else {
                ext.unwrap_or_default()
            };
            ctx.read_parquet(url, ParquetReadOptions::default().file_extension(&ext))
                .await?
        }
    };
    Ok(df)
}

/// Format from a location's extension (`.csv`, else Parquet).
pub fn format_of(loc: &Location) -> SourceFormat {
    match loc.extension() {
        Some(e) if e.eq_ignore_ascii_case("csv") => SourceFormat::Csv,
        _ => SourceFormat::Parquet,
    }
}

/// An expression turning any timestamp-like column (RFC 3339 text,
/// timestamps of any unit, dates) into Int64 µs UTC.
pub fn ts_micros(e: Expr) -> Expr {
    cast(
        cast(
            e,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ),
        DataType::Int64,
    )
}

/// A view's source as read (no transformation).
pub async fn raw_source(
    ctx: &SessionContext,
    source: &Source,
    view: &FeatureView,
) -> Result<DataFrame> {
    read_file(ctx, &source.location, source.format)
        .await
        .map_err(|e| {
            FeatureError::Invalid(format!(
                "feature view \"{}\": source \"{}\": {e}",
                view.name, source.name
            ))
        })
}

/// The source as read, after the view's transformation (if any).
pub async fn transformed(
    ctx: &SessionContext,
    source: &Source,
    view: &FeatureView,
) -> Result<DataFrame> {
    let raw = raw_source(ctx, source, view).await?;
    transform(ctx, raw, view).await
}

/// Apply the view's transformation (if any) to its source rows `raw`.
pub async fn transform(
    ctx: &SessionContext,
    raw: DataFrame,
    view: &FeatureView,
) -> Result<DataFrame> {
    match &view.transformation {
        None => Ok(raw),
        Some(sql) => {
            // The logical plan keeps the table provider, so the name can be
            // released right after planning.
            ctx.register_table("source", raw.into_view())?;
            let out = ctx.sql(sql).await;
            ctx.deregister_table("source")?;
            out.map_err(|e| {
                FeatureError::Invalid(format!(
                    "feature view \"{}\": transformation failed: {e}",
                    view.name
                ))
            })
        }
    }
}

/// A view's rows normalised: join keys and features cast to their declared
/// types, `__gb_ts` and `__gb_created` as Int64 µs UTC.
pub async fn view_frame(
    ctx: &SessionContext,
    defs: &Definitions,
    view: &FeatureView,
) -> Result<DataFrame> {
    let source = defs.source_of(view)?;
    let df = transformed(ctx, source, view).await?;
    normalise(df, source, view)
}

/// Select and cast a view's columns from a frame with the source's column names.
pub fn normalise(df: DataFrame, source: &Source, view: &FeatureView) -> Result<DataFrame> {
    let schema = df.schema().clone();
    let has = |c: &str| schema.fields().iter().any(|f| f.name() == c);
    let missing = |c: &str| {
        FeatureError::Invalid(format!(
            "feature view \"{}\": column \"{c}\" is not in its data (columns: {}); fix the name or the transformation",
            view.name,
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    let mut exprs = Vec::new();
    for k in &view.join_keys {
        if !has(&k.name) {
            return Err(missing(&k.name));
        }
        exprs.push(cast(ident(&k.name), k.dtype.arrow()).alias(&k.name));
    }
    if !has(&source.event_timestamp) {
        return Err(missing(&source.event_timestamp));
    }
    exprs.push(ts_micros(ident(&source.event_timestamp)).alias(TS));
    match &source.created_timestamp {
        Some(c) if has(c) => exprs.push(ts_micros(ident(c)).alias(CREATED)),
        Some(c) => return Err(missing(c)),
        None => exprs.push(lit(ScalarValue::Int64(None)).alias(CREATED)),
    }
    for f in &view.features {
        if !has(&f.name) {
            return Err(missing(&f.name));
        }
        exprs.push(cast(ident(&f.name), f.dtype.arrow()).alias(&f.name));
    }
    Ok(df.select(exprs)?)
}

/// Quote an identifier for DataFusion SQL.
pub fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
