//! The offline store and batch materialization.
//!
//! Layout (readable by DuckDB, Spark, pandas):
//! `<root>/<view>/date=YYYY-MM-DD/part-0.parquet` holding the view's join
//! keys, `event_timestamp` and `created_timestamp` (timestamp µs UTC) and its
//! features; `<root>/<view>/_watermark.json` the materialization watermark;
//! `<root>/_quarantine/<view>/<start>_<end>.parquet` view rows a contract
//! set aside and `<root>/_quarantine/<view>.source/<start>_<end>.parquet`
//! source rows the source's contract set aside, each with a
//! `quarantine_reason` column. The root is a local directory or
//! `s3://bucket/prefix`. Files go through `object_store` and appear by
//! rename (S3: a server-side copy of a fully uploaded object, then the
//! temporary is deleted), so a failed run leaves the previous files in place.
//!
//! `materialize(view, start, end)` (end exclusive) rewrites every day
//! partition the range touches: rows of that day outside the range are
//! kept, rows inside it are replaced by the source's. Re-running a range
//! therefore gives the same files, never duplicates. Execution streams
//! record batches out of a DataFusion sort that spills to disk, so memory
//! stays bounded by the engine's limit, not the source size. The source's
//! contract (if any) judges the source rows of the range before the view's
//! transformation, the view's contract the view's rows after it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::object_store::buffered::BufWriter;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path as StorePath;
use datafusion::object_store::prefix::PrefixStore;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext, cast, col, ident, lit};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::contracts::{Checker, Policy, ValidationReport, run_may_continue};
use crate::defs::{Definitions, FeatureView, Location, Source};
use crate::error::{FeatureError, Result};
use crate::source::{
    CREATED, EngineOptions, TS, normalise, raw_source, s3_store, session, transform, ts_micros,
    view_frame,
};
use crate::time::{DAY_US, date_of, day_start, format_ts, now_us, parse_ts};

/// Event time column in the offline store.
pub const EVENT_TIMESTAMP: &str = "event_timestamp";
/// Created time column in the offline store.
pub const CREATED_TIMESTAMP: &str = "created_timestamp";
/// Reason column of the quarantine table.
pub const REASON: &str = "quarantine_reason";
/// The reason given for a row without an event time.
pub const NO_EVENT_TIME: &str = "event_timestamp is null: a row without an event time belongs to no partition; fix the source or the transformation";

const ROWS_PER_GROUP: usize = 64 * 1024;
/// Marks the source rows of the run's range while a source contract is checked.
const IN_RANGE: &str = "__gb_in_range";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The offline store: a local directory or an S3 prefix.
#[derive(Clone)]
pub struct OfflineStore {
    location: Location,
    root: PathBuf,
    /// Keys are relative to the store's root.
    store: Arc<dyn ObjectStore>,
    /// S3: the bucket and its client, registered with the sessions that read
    /// the store's files.
    bucket: Option<(String, Arc<dyn ObjectStore>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Watermark {
    watermark: String,
    watermark_us: i64,
    updated: String,
}

impl OfflineStore {
    /// Open the store at a directory, or at the `s3://bucket/prefix` a path
    /// value holds (as [`Definitions::offline_path`] does).
    pub fn open(root: &Path) -> Result<OfflineStore> {
        OfflineStore::open_location(&Location::from_path(root)?)
    }

    /// Open the store at `location` (a local directory is created).
    pub fn open_location(location: &Location) -> Result<OfflineStore> {
        match location {
            Location::Local(root) => {
                std::fs::create_dir_all(root).map_err(|e| {
                    FeatureError::Io(format!(
                        "cannot create offline store {}: {e}",
                        root.display()
                    ))
                })?;
                let store = LocalFileSystem::new_with_prefix(root)?;
                Ok(OfflineStore {
                    location: location.clone(),
                    root: root.clone(),
                    store: Arc::new(store),
                    bucket: None,
                })
            }
            Location::S3 { bucket, key } => {
                let s3 = s3_store(bucket)?;
                let prefix = key.trim_matches('/');
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    s3.clone()
                } else {
                    Arc::new(PrefixStore::new(s3.clone(), prefix))
                };
                let location = Location::S3 {
                    bucket: bucket.clone(),
                    key: prefix.to_string(),
                };
                Ok(OfflineStore {
                    root: location.to_path(),
                    location,
                    store,
                    bucket: Some((bucket.clone(), s3)),
                })
            }
        }
    }

    /// The root as a path value (for S3, the `s3://` URL text).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Let `ctx` read this store's files (registers the S3 client).
    pub fn register(&self, ctx: &SessionContext) -> Result<()> {
        if let Some((bucket, s3)) = &self.bucket {
            let url = ObjectStoreUrl::parse(format!("s3://{bucket}"))?;
            ctx.register_object_store(url.as_ref(), s3.clone());
        }
        Ok(())
    }

    /// The URL (or local path) DataFusion reads `rel` under the root by.
    fn url(&self, rel: &str) -> String {
        self.location.join(rel).to_string()
    }

    /// The directory holding a view's partitions (for S3, its URL text).
    pub fn view_dir(&self, view: &str) -> PathBuf {
        self.location.join(view).to_path()
    }

    fn part(view: &str, date: &str) -> StorePath {
        StorePath::from(format!("{view}/date={date}/part-0.parquet"))
    }

    fn part_tmp(view: &str, date: &str, run: &str) -> StorePath {
        StorePath::from(format!("{view}/date={date}/.part-0.{run}.tmp"))
    }

    /// The materialization watermark of a view (end of the last run).
    pub async fn watermark(&self, view: &str) -> Result<Option<i64>> {
        match self
            .store
            .get(&StorePath::from(format!("{view}/_watermark.json")))
            .await
        {
            Ok(r) => {
                let bytes = r.bytes().await?;
                let w: Watermark = serde_json::from_slice(&bytes).map_err(|e| {
                    FeatureError::Data(format!("watermark of \"{view}\" is not valid JSON: {e}"))
                })?;
                Ok(Some(w.watermark_us))
            }
            Err(datafusion::object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_watermark(&self, view: &str, us: i64) -> Result<()> {
        let w = Watermark {
            watermark: format_ts(us),
            watermark_us: us,
            updated: format_ts(now_us()),
        };
        let body = serde_json::to_vec_pretty(&w).map_err(|e| FeatureError::Data(e.to_string()))?;
        self.store
            .put(
                &StorePath::from(format!("{view}/_watermark.json")),
                body.into(),
            )
            .await?;
        Ok(())
    }

    /// What `view` takes in the store: (bytes, files), every object under
    /// its directory counted (partitions, watermark, quarantined rows).
    pub async fn view_usage(&self, view: &str) -> Result<(u64, u64)> {
        let (mut bytes, mut files) = (0u64, 0u64);
        let mut listing = self.store.list(Some(&StorePath::from(view)));
        while let Some(meta) = listing.next().await {
            match meta {
                Ok(m) => {
                    bytes += m.size;
                    files += 1;
                }
                Err(datafusion::object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok((bytes, files))
    }

    /// The dates (`YYYY-MM-DD`) that have a partition for `view`.
    pub async fn partitions(&self, view: &str) -> Result<Vec<String>> {
        let mut out = BTreeSet::new();
        let mut listing = self.store.list(Some(&StorePath::from(view)));
        while let Some(meta) = listing.next().await {
            let meta = match meta {
                Ok(m) => m,
                Err(datafusion::object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            let parts: Vec<_> = meta.location.parts().collect();
            if let [v, d, f] = parts.as_slice()
                && v.as_ref() == view
                && f.as_ref() == "part-0.parquet"
                && let Some(date) = d.as_ref().strip_prefix("date=")
            {
                out.insert(date.to_string());
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A view's offline data as a DataFrame (empty views are an error).
    pub async fn read_view(&self, ctx: &SessionContext, view: &str) -> Result<DataFrame> {
        if self.partitions(view).await?.is_empty() {
            return Err(FeatureError::NotFound(format!(
                "feature view \"{view}\" has no offline data in {}; run greenbelt features materialize first",
                self.location
            )));
        }
        self.register(ctx)?;
        Ok(ctx
            .read_parquet(
                format!("{}/", self.url(view)),
                datafusion::prelude::ParquetReadOptions::default().file_extension(".parquet"),
            )
            .await?)
    }

    fn quarantine_key(view: &str, start: i64, end: i64) -> String {
        format!("_quarantine/{view}/{start}_{end}.parquet")
    }

    fn source_quarantine_key(view: &str, start: i64, end: i64) -> String {
        format!("_quarantine/{view}.source/{start}_{end}.parquet")
    }

    /// The Parquet file of one quarantine run's view rows (for S3, its URL text).
    pub fn quarantine_file(&self, view: &str, start: i64, end: i64) -> PathBuf {
        self.location
            .join(&OfflineStore::quarantine_key(view, start, end))
            .to_path()
    }

    /// The Parquet file of one quarantine run's source rows (for S3, its URL text).
    pub fn source_quarantine_file(&self, view: &str, start: i64, end: i64) -> PathBuf {
        self.location
            .join(&OfflineStore::source_quarantine_key(view, start, end))
            .to_path()
    }
}

/// A side table of rows set aside with their reason, written to a temporary
/// object and renamed into place when the run commits.
struct SideTable {
    store: Arc<dyn ObjectStore>,
    key: StorePath,
    tmp: StorePath,
    writer: Option<AsyncArrowWriter<BufWriter>>,
    rows: u64,
}

impl SideTable {
    fn new(store: Arc<dyn ObjectStore>, key: &str, run: &str) -> SideTable {
        SideTable {
            store,
            key: StorePath::from(key),
            tmp: StorePath::from(format!("{key}.{run}.tmp")),
            writer: None,
            rows: 0,
        }
    }

    /// Append `rows` with one reason each.
    async fn write(&mut self, rows: &RecordBatch, reasons: Vec<String>) -> Result<()> {
        let why: ArrayRef = Arc::new(StringArray::from(reasons));
        let mut fields: Vec<Field> = rows
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(REASON, DataType::Utf8, false));
        let schema = Arc::new(Schema::new(fields));
        let mut cols = rows.columns().to_vec();
        cols.push(why);
        let batch = RecordBatch::try_new(schema.clone(), cols)?;
        if self.writer.is_none() {
            let obj = BufWriter::new(self.store.clone(), self.tmp.clone());
            self.writer = Some(AsyncArrowWriter::try_new(obj, schema, None)?);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(&batch).await?;
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Move the table into place, or remove a stale one of an earlier run of
    /// the same range when nothing was set aside; returns whether it exists.
    async fn commit(self) -> Result<bool> {
        match self.writer {
            Some(w) => {
                w.close().await?;
                self.store.rename(&self.tmp, &self.key).await?;
                Ok(true)
            }
            None => {
                match self.store.delete(&self.key).await {
                    Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                Ok(false)
            }
        }
    }

    async fn abort(self) {
        if let Some(w) = self.writer {
            let _ = w.close().await;
            let _ = self.store.delete(&self.tmp).await;
        }
    }
}

/// How to materialize.
#[derive(Debug, Clone, Default)]
pub struct MaterializeOptions {
    pub engine: EngineOptions,
    /// Time freshness rules are measured against (default: now).
    pub now_us: Option<i64>,
}

/// What a materialization did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaterializeReport {
    pub view: String,
    pub start: String,
    pub end: String,
    pub rows: u64,
    pub partitions_written: Vec<String>,
    pub partitions_removed: Vec<String>,
    /// Rows set aside in all: view rows plus source rows.
    pub quarantined: u64,
    /// The side table of view rows, when any were set aside.
    pub quarantine_file: Option<String>,
    /// Source rows the source's contract set aside.
    #[serde(default)]
    pub source_quarantined: u64,
    #[serde(default)]
    pub source_quarantine_file: Option<String>,
    pub watermark: String,
    /// The view contract's report.
    pub validation: Option<ValidationReport>,
    /// The source contract's report (over the source rows of the range).
    #[serde(default)]
    pub source_validation: Option<ValidationReport>,
}

/// The offline schema of a view.
pub fn offline_schema(view: &FeatureView) -> SchemaRef {
    let mut fields = Vec::new();
    for k in &view.join_keys {
        fields.push(Field::new(&k.name, k.dtype.arrow(), true));
    }
    fields.push(Field::new(EVENT_TIMESTAMP, ts_type(), true));
    fields.push(Field::new(CREATED_TIMESTAMP, ts_type(), true));
    for f in &view.features {
        fields.push(Field::new(&f.name, f.dtype.arrow(), true));
    }
    Arc::new(Schema::new(fields))
}

/// A view's materialized rows (every partition of the offline store),
/// normalised like `source::view_frame`: join keys, `__gb_ts`,
/// `__gb_created` (Int64 µs UTC), features.
pub async fn stored_view_frame(
    ctx: &SessionContext,
    defs: &Definitions,
    view: &FeatureView,
) -> Result<DataFrame> {
    let store = OfflineStore::open_location(&defs.offline)?;
    let df = store.read_view(ctx, &view.name).await?;
    let mut exprs = Vec::new();
    for k in &view.join_keys {
        exprs.push(cast(ident(&k.name), k.dtype.arrow()).alias(&k.name));
    }
    exprs.push(ts_micros(ident(EVENT_TIMESTAMP)).alias(TS));
    exprs.push(ts_micros(ident(CREATED_TIMESTAMP)).alias(CREATED));
    for f in &view.features {
        exprs.push(cast(ident(&f.name), f.dtype.arrow()).alias(&f.name));
    }
    Ok(df.select(exprs)?)
}

/// A view's source rows in the offline layout, event time in [start, end)
/// or none, sorted by event time (rows without one last).
pub async fn offline_frame(
    ctx: &SessionContext,
    defs: &Definitions,
    view: &FeatureView,
    start: i64,
    end: i64,
) -> Result<DataFrame> {
    let df = view_frame(ctx, defs, view).await?;
    offline_layout(df, view, start, end)
}

/// A normalised view frame (see `source::normalise`) in the offline layout,
/// event time in [start, end), sorted by event time. Rows without an event
/// time are kept (they sort last): materialization quarantines them and
/// validation checks them; they are never dropped unseen.
fn offline_layout(df: DataFrame, view: &FeatureView, start: i64, end: i64) -> Result<DataFrame> {
    let df = df.filter(
        col(TS)
            .is_null()
            .or(col(TS).gt_eq(lit(start)).and(col(TS).lt(lit(end)))),
    )?;
    let mut exprs = Vec::new();
    for k in &view.join_keys {
        exprs.push(ident(&k.name));
    }
    exprs.push(cast(col(TS), ts_type()).alias(EVENT_TIMESTAMP));
    exprs.push(cast(col(CREATED), ts_type()).alias(CREATED_TIMESTAMP));
    for f in &view.features {
        exprs.push(ident(&f.name));
    }
    Ok(df
        .select(exprs)?
        .sort(vec![col(EVENT_TIMESTAMP).sort(true, false)])?)
}

// ---------- the source contract at materialization ----------

/// Checks the source rows of the run's range against the source's contract
/// as they stream into the view's transformation: under `fail` the first
/// offending row stops the run; under `quarantine` offending rows go to the
/// side table with their reason and do not reach the view.
struct SourceGate {
    target: String,
    checker: Option<Checker>,
    table: Option<SideTable>,
    /// Column of the input that says whether a row is in the range (absent:
    /// every row is).
    flag: Option<usize>,
    /// The error that stopped the stream, kept with its kind.
    failure: Option<FeatureError>,
}

impl SourceGate {
    async fn pass(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let (data, in_range) = match self.flag {
            Some(i) => {
                let flags = batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .cloned()
                    .ok_or_else(|| FeatureError::Data("range flag is not boolean".into()))?;
                let keep: Vec<usize> = (0..batch.num_columns()).filter(|c| *c != i).collect();
                (batch.project(&keep)?, Some(flags))
            }
            None => (batch, None),
        };
        let checked = match &in_range {
            Some(flags) => filter_record_batch(&data, flags)?,
            None => data.clone(),
        };
        let checker = self
            .checker
            .as_mut()
            .ok_or_else(|| FeatureError::Data("the source was read twice".into()))?;
        let reasons = checker.check(&checked)?;
        if reasons.iter().all(Option::is_none) {
            return Ok(data);
        }
        if checker.policy() == Policy::Fail {
            let first = reasons.iter().flatten().next().cloned().unwrap_or_default();
            return Err(FeatureError::Contract(format!(
                "{}: rule {first} failed (policy fail; nothing was written)",
                self.target
            )));
        }
        let bad = BooleanArray::from(reasons.iter().map(Option::is_some).collect::<Vec<_>>());
        let table = self
            .table
            .as_mut()
            .ok_or_else(|| FeatureError::Data("the source was read twice".into()))?;
        table
            .write(
                &filter_record_batch(&checked, &bad)?,
                reasons.iter().flatten().cloned().collect(),
            )
            .await?;
        let mut verdicts = reasons.iter();
        let keep: BooleanArray = (0..data.num_rows())
            .map(|i| {
                let checked_row = in_range
                    .as_ref()
                    .is_none_or(|f| f.is_valid(i) && f.value(i));
                Some(!checked_row || verdicts.next().is_none_or(Option::is_none))
            })
            .collect();
        Ok(filter_record_batch(&data, &keep)?)
    }
}

/// The source rows as a one-shot stream through a [`SourceGate`], for the
/// view's transformation to read as its table `source`.
struct GatedSource {
    schema: SchemaRef,
    input: std::sync::Mutex<Option<SendableRecordBatchStream>>,
    gate: Arc<tokio::sync::Mutex<SourceGate>>,
}

impl std::fmt::Debug for GatedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedSource")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PartitionStream for GatedSource {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let input = self.input.lock().ok().and_then(|mut i| i.take());
        let schema = self.schema.clone();
        let Some(input) = input else {
            return Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::once(async {
                    Err(DataFusionError::Internal(
                        "the checked source can be read once".into(),
                    ))
                }),
            ));
        };
        let gate = self.gate.clone();
        let out = input.then(move |batch| {
            let gate = gate.clone();
            async move {
                let batch = batch?;
                let mut g = gate.lock().await;
                match g.pass(batch).await {
                    Ok(b) => Ok(b),
                    Err(e) => {
                        let msg = e.to_string();
                        g.failure.get_or_insert(e);
                        Err(DataFusionError::Execution(msg))
                    }
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, out))
    }
}

/// The view's source as a table whose rows of [start, end) pass the source
/// contract (see [`SourceGate`]). A view without a transformation reads only
/// the range; one with a transformation reads every source row, and rows
/// outside the range pass unchecked. A source without its event-time column
/// (a transformation makes it) is checked whole.
async fn gated_source(
    ctx: &SessionContext,
    source: &Source,
    view: &FeatureView,
    start: i64,
    end: i64,
    checker: Checker,
    table: SideTable,
) -> Result<(DataFrame, Arc<tokio::sync::Mutex<SourceGate>>)> {
    let raw = raw_source(ctx, source, view).await?;
    let has_ts = raw
        .schema()
        .fields()
        .iter()
        .any(|f| f.name() == &source.event_timestamp);
    let ts = || ts_micros(ident(&source.event_timestamp));
    // A row without an event time is checked and passed on: the view's
    // step quarantines it (it belongs to no range, but is not dropped).
    let in_range = ts()
        .is_null()
        .or(ts().gt_eq(lit(start)).and(ts().lt(lit(end))));
    let (raw, flagged) = match (has_ts, &view.transformation) {
        (false, _) => (raw, false),
        (true, None) => (raw.filter(in_range)?, false),
        (true, Some(_)) => (raw.with_column(IN_RANGE, in_range)?, true),
    };
    let input = raw.execute_stream().await?;
    let in_schema = input.schema();
    let (flag, schema) = if flagged {
        let i = in_schema.index_of(IN_RANGE)?;
        let keep: Vec<usize> = (0..in_schema.fields().len()).filter(|c| *c != i).collect();
        (Some(i), Arc::new(in_schema.project(&keep)?))
    } else {
        (None, in_schema)
    };
    let gate = Arc::new(tokio::sync::Mutex::new(SourceGate {
        target: format!("source \"{}\"", source.name),
        checker: Some(checker),
        table: Some(table),
        flag,
        failure: None,
    }));
    let part = GatedSource {
        schema: schema.clone(),
        input: std::sync::Mutex::new(Some(input)),
        gate: gate.clone(),
    };
    let part: Arc<dyn PartitionStream> = Arc::new(part);
    let table = StreamingTable::try_new(schema, vec![part])?;
    Ok((ctx.read_table(Arc::new(table))?, gate))
}

// ---------- writing partitions ----------

struct PartWriter {
    date: String,
    tmp: StorePath,
    writer: AsyncArrowWriter<BufWriter>,
    rows: u64,
}

fn props() -> WriterProperties {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        .build()
}

fn event_times(batch: &RecordBatch) -> Result<TimestampMicrosecondArray> {
    let a = batch
        .column_by_name(EVENT_TIMESTAMP)
        .ok_or_else(|| FeatureError::Data("event_timestamp column missing".into()))?;
    a.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| FeatureError::Data("event_timestamp is not timestamp(µs)".into()))
}

struct Run<'a> {
    store: &'a OfflineStore,
    ctx: &'a SessionContext,
    view: &'a str,
    schema: SchemaRef,
    start: i64,
    end: i64,
    run_id: String,
    done: Vec<(String, StorePath, u64)>,
}

impl Run<'_> {
    /// Open a day's writer, first copying the day's existing rows that lie
    /// outside [start, end).
    async fn open(&self, date: &str) -> Result<PartWriter> {
        let tmp = OfflineStore::part_tmp(self.view, date, &self.run_id);
        let obj = BufWriter::new(self.store.store.clone(), tmp.clone());
        let mut writer = AsyncArrowWriter::try_new(obj, self.schema.clone(), Some(props()))?;
        let mut rows = 0;
        let day0 = parse_ts("date", date)?;
        let fully_covered = day0 >= self.start && day0 + DAY_US <= self.end;
        let existing = OfflineStore::part(self.view, date);
        let exists = if fully_covered {
            false
        } else {
            match self.store.store.head(&existing).await {
                Ok(_) => true,
                Err(datafusion::object_store::Error::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            }
        };
        if exists {
            let old = self
                .ctx
                .read_parquet(
                    self.store.url(existing.as_ref()),
                    datafusion::prelude::ParquetReadOptions::default(),
                )
                .await?;
            let keep = old.filter(
                col(EVENT_TIMESTAMP)
                    .lt(cast(lit(self.start), ts_type()))
                    .or(col(EVENT_TIMESTAMP).gt_eq(cast(lit(self.end), ts_type()))),
            )?;
            let mut s = keep.execute_stream().await?;
            while let Some(b) = s.next().await {
                let b = b?;
                rows += b.num_rows() as u64;
                writer.write(&b).await?;
            }
        }
        Ok(PartWriter {
            date: date.to_string(),
            tmp,
            writer,
            rows,
        })
    }

    async fn close(&mut self, w: PartWriter) -> Result<()> {
        w.writer.close().await?;
        self.done.push((w.date, w.tmp, w.rows));
        Ok(())
    }

    async fn abort(&self, current: Option<PartWriter>) {
        if let Some(w) = current {
            let _ = w.writer.close().await;
            let _ = self.store.store.delete(&w.tmp).await;
        }
        for (_, tmp, _) in &self.done {
            let _ = self.store.store.delete(tmp).await;
        }
    }
}

/// Everything a failed run leaves behind is removed: temporary partitions
/// and side tables. The store is as it was.
async fn abandon(
    run: &Run<'_>,
    current: Option<PartWriter>,
    view_q: SideTable,
    gate: Option<&Arc<tokio::sync::Mutex<SourceGate>>>,
) {
    run.abort(current).await;
    view_q.abort().await;
    if let Some(g) = gate
        && let Some(t) = g.lock().await.table.take()
    {
        t.abort().await;
    }
}

/// Materialize `view` for event times in [start, end) into the offline store
/// (see the module docs for the guarantees).
pub async fn materialize(
    defs: &Definitions,
    store: &OfflineStore,
    view_name: &str,
    start: i64,
    end: i64,
    opts: &MaterializeOptions,
) -> Result<MaterializeReport> {
    let attrs = vec![
        greenbelt_core::spans::attr("greenbelt.feature_view", view_name),
        greenbelt_core::spans::int("greenbelt.start_us", start),
        greenbelt_core::spans::int("greenbelt.end_us", end),
    ];
    greenbelt_core::spans::traced(
        "features.materialize",
        attrs,
        materialize_untraced(defs, store, view_name, start, end, opts),
    )
    .await
}

async fn materialize_untraced(
    defs: &Definitions,
    store: &OfflineStore,
    view_name: &str,
    start: i64,
    end: i64,
    opts: &MaterializeOptions,
) -> Result<MaterializeReport> {
    if start >= end {
        return Err(FeatureError::Invalid(format!(
            "materialize: start {} is not before end {}; the range is [start, end)",
            format_ts(start),
            format_ts(end)
        )));
    }
    let view = defs.view(view_name)?;
    let source = defs.source_of(view)?;
    let ctx = session(&opts.engine)?;
    store.register(&ctx)?;
    let now = opts.now_us.unwrap_or_else(now_us);
    let run_id = format!("{}", now_us());
    let schema = offline_schema(view);
    let (df, gate) = match &source.contract {
        None => (offline_frame(&ctx, defs, view, start, end).await?, None),
        Some(contract) => {
            let checker = Checker::new(
                &format!("source \"{}\"", source.name),
                contract,
                Some(&source.event_timestamp),
                now,
            )
            .await?;
            let table = SideTable::new(
                store.store.clone(),
                &OfflineStore::source_quarantine_key(view_name, start, end),
                &run_id,
            );
            let (checked, gate) =
                gated_source(&ctx, source, view, start, end, checker, table).await?;
            let df = normalise(transform(&ctx, checked, view).await?, source, view)?;
            (offline_layout(df, view, start, end)?, Some(gate))
        }
    };
    let mut stream = df.execute_stream().await?;
    let mut checker = match &view.contract {
        Some(c) => Some(
            Checker::new(
                &format!("feature view \"{view_name}\""),
                c,
                Some(EVENT_TIMESTAMP),
                now,
            )
            .await?,
        ),
        None => None,
    };
    let mut run = Run {
        store,
        ctx: &ctx,
        view: view_name,
        schema: schema.clone(),
        start,
        end,
        run_id: run_id.clone(),
        done: Vec::new(),
    };
    let mut view_q = SideTable::new(
        store.store.clone(),
        &OfflineStore::quarantine_key(view_name, start, end),
        &run_id,
    );
    let mut current: Option<PartWriter> = None;
    let mut rows = 0u64;
    let result: Result<()> = async {
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            // Cast to the declared offline schema (field nullability).
            let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
            // Rows without an event time (after the transformation) fit no
            // partition: set aside with the reason, before the contract.
            let ts = event_times(&batch)?;
            let missing = ts.null_count();
            let batch = if missing == 0 {
                batch
            } else {
                let bad = datafusion::arrow::compute::is_null(&ts)?;
                let good = datafusion::arrow::compute::is_not_null(&ts)?;
                view_q
                    .write(&filter_record_batch(&batch, &bad)?, vec![NO_EVENT_TIME.to_string(); missing])
                    .await?;
                filter_record_batch(&batch, &good)?
            };
            let batch = match checker.as_mut() {
                None => batch,
                Some(ch) => {
                    let reasons = ch.check(&batch)?;
                    if reasons.iter().any(Option::is_some) {
                        if ch.policy() == Policy::Fail {
                            let first = reasons.iter().flatten().next().cloned().unwrap_or_default();
                            return Err(FeatureError::Contract(format!(
                                "feature view \"{view_name}\": rule {first} failed (policy fail; nothing was written)"
                            )));
                        }
                        let bad = BooleanArray::from(reasons.iter().map(|r| r.is_some()).collect::<Vec<_>>());
                        let good = BooleanArray::from(reasons.iter().map(|r| r.is_none()).collect::<Vec<_>>());
                        view_q
                            .write(&filter_record_batch(&batch, &bad)?, reasons.iter().flatten().cloned().collect())
                            .await?;
                        filter_record_batch(&batch, &good)?
                    } else {
                        batch
                    }
                }
            };
            rows += batch.num_rows() as u64;
            let ts = event_times(&batch)?;
            let mut at = 0;
            while at < batch.num_rows() {
                let day = day_start(ts.value(at));
                let mut to = at + 1;
                while to < batch.num_rows() && day_start(ts.value(to)) == day {
                    to += 1;
                }
                let date = date_of(day);
                if current.as_ref().is_none_or(|w| w.date != date) {
                    if let Some(w) = current.take() {
                        run.close(w).await?;
                    }
                    if run.done.iter().any(|(d, _, _)| *d == date) {
                        return Err(FeatureError::Data(format!(
                            "rows of {date} arrived after a later day; the sorted stream is out of order (nothing was written)"
                        )));
                    }
                    current = Some(run.open(&date).await?);
                }
                if let Some(w) = current.as_mut() {
                    let slice = batch.slice(at, to - at);
                    w.rows += slice.num_rows() as u64;
                    w.writer.write(&slice).await?;
                }
                at = to;
            }
        }
        if let Some(w) = current.take() {
            run.close(w).await?;
        }
        Ok(())
    }
    .await;
    drop(stream);
    if let Err(e) = result {
        // A contract failure inside the source stream comes back as a
        // DataFusion error; report the failure itself.
        let e = match &gate {
            Some(g) => g.lock().await.failure.take().unwrap_or(e),
            None => e,
        };
        abandon(&run, current, view_q, gate.as_ref()).await;
        return Err(e);
    }

    // Dataset-level rules: the source's first, then the view's.
    let mut source_table = None;
    let mut source_report = None;
    if let (Some(g), Some(contract)) = (&gate, &source.contract) {
        let mut g = g.lock().await;
        source_table = g.table.take();
        if let Some(ch) = g.checker.take() {
            let r = ch.finish();
            if !run_may_continue(contract, &r) {
                drop(g);
                if let Some(t) = source_table {
                    t.abort().await;
                }
                abandon(&run, None, view_q, None).await;
                return Err(FeatureError::Contract(format!(
                    "{} (nothing was written)",
                    r.failure().unwrap_or_else(|| "a rule failed".into())
                )));
            }
            source_report = Some(r);
        }
    }
    let report = checker.map(Checker::finish);
    if let (Some(r), Some(c)) = (&report, &view.contract)
        && !run_may_continue(c, r)
    {
        if let Some(t) = source_table {
            t.abort().await;
        }
        abandon(&run, None, view_q, None).await;
        return Err(FeatureError::Contract(format!(
            "{} (nothing was written)",
            r.failure().unwrap_or_else(|| "a rule failed".into())
        )));
    }

    // Existing partitions in the range that got no new rows.
    let written: BTreeSet<String> = run.done.iter().map(|(d, _, _)| d.clone()).collect();
    let first_day = date_of(day_start(start));
    let last_day = date_of(end - 1);
    for date in store.partitions(view_name).await? {
        if date >= first_day && date <= last_day && !written.contains(&date) {
            let w = run.open(&date).await?;
            run.close(w).await?;
        }
    }

    // Commit: rename into place; a day left with no rows is removed.
    let mut partitions_written = Vec::new();
    let mut partitions_removed = Vec::new();
    for (date, tmp, n) in std::mem::take(&mut run.done) {
        let fin = OfflineStore::part(view_name, &date);
        if n == 0 {
            store.store.delete(&tmp).await?;
            match store.store.delete(&fin).await {
                Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            if let Location::Local(root) = &store.location {
                let _ = std::fs::remove_dir(root.join(view_name).join(format!("date={date}")));
            }
            partitions_removed.push(date);
        } else {
            store.store.rename(&tmp, &fin).await?;
            partitions_written.push(date);
        }
    }
    let view_quarantined = view_q.rows;
    let quarantine_file = view_q.commit().await?.then(|| {
        store
            .quarantine_file(view_name, start, end)
            .to_string_lossy()
            .into_owned()
    });
    let mut source_quarantined = 0;
    let mut source_quarantine_file = None;
    if let Some(t) = source_table {
        source_quarantined = t.rows;
        if t.commit().await? {
            source_quarantine_file = Some(
                store
                    .source_quarantine_file(view_name, start, end)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    } else {
        // No source contract (any more): no side table for this range.
        match store
            .store
            .delete(&StorePath::from(OfflineStore::source_quarantine_key(
                view_name, start, end,
            )))
            .await
        {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let wm = store
        .watermark(view_name)
        .await?
        .map_or(end, |w| w.max(end));
    store.set_watermark(view_name, wm).await?;
    Ok(MaterializeReport {
        view: view_name.to_string(),
        start: format_ts(start),
        end: format_ts(end),
        rows,
        partitions_written,
        partitions_removed,
        quarantined: view_quarantined + source_quarantined,
        quarantine_file,
        source_quarantined,
        source_quarantine_file,
        watermark: format_ts(wm),
        validation: report,
        source_validation: source_report,
    })
}

/// Materialize from the view's watermark (or the beginning of its data when
/// it has none) up to `end` (exclusive).
pub async fn materialize_incremental(
    defs: &Definitions,
    store: &OfflineStore,
    view_name: &str,
    end: i64,
    opts: &MaterializeOptions,
) -> Result<MaterializeReport> {
    let start = match store.watermark(view_name).await? {
        Some(w) => w,
        None => {
            let view = defs.view(view_name)?;
            let ctx = session(&opts.engine)?;
            let df = view_frame(&ctx, defs, view).await?;
            let min = df
                .aggregate(
                    vec![],
                    vec![datafusion::functions_aggregate::expr_fn::min(col(TS)).alias("m")],
                )?
                .collect()
                .await?;
            let first = min.first().and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .filter(|a| a.len() == 1 && a.is_valid(0))
                    .map(|a| a.value(0))
            });
            match first {
                Some(t) => day_start(t),
                None => end - 1,
            }
        }
    };
    if start >= end {
        return Err(FeatureError::Invalid(format!(
            "feature view \"{view_name}\" is materialized up to {}; nothing to do before {}",
            format_ts(start),
            format_ts(end)
        )));
    }
    materialize(defs, store, view_name, start, end, opts).await
}
