//! The offline store and batch materialization.
//!
//! Layout (readable by DuckDB, Spark, pandas):
//! `<root>/<view>/date=YYYY-MM-DD/part-0.parquet` holding the view's join
//! keys, `event_timestamp` and `created_timestamp` (timestamp µs UTC) and its
//! features; `<root>/<view>/_watermark.json` the materialization watermark;
//! `<root>/_quarantine/<view>/<start>_<end>.parquet` rows a contract set
//! aside, with a `quarantine_reason` column. Files go through `object_store`
//! (local file system) and appear by rename, so a failed run leaves the
//! previous files in place.
//!
//! `materialize(view, start, end)` (end exclusive) rewrites every day
//! partition the range touches: rows of that day outside the range are
//! kept, rows inside it are replaced by the source's. Re-running a range
//! therefore gives the same files, never duplicates. Execution streams
//! record batches out of a DataFusion sort that spills to disk, so memory
//! stays bounded by the engine's limit, not the source size.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::object_store::buffered::BufWriter;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path as StorePath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::{DataFrame, SessionContext, cast, col, ident, lit};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::contracts::{Checker, Policy, ValidationReport, run_may_continue};
use crate::defs::{Definitions, FeatureView};
use crate::error::{FeatureError, Result};
use crate::source::{CREATED, EngineOptions, TS, session, view_frame};
use crate::time::{DAY_US, date_of, day_start, format_ts, now_us, parse_ts};

/// Event time column in the offline store.
pub const EVENT_TIMESTAMP: &str = "event_timestamp";
/// Created time column in the offline store.
pub const CREATED_TIMESTAMP: &str = "created_timestamp";
/// Reason column of the quarantine table.
pub const REASON: &str = "quarantine_reason";

const ROWS_PER_GROUP: usize = 64 * 1024;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The offline store on a local path.
#[derive(Clone)]
pub struct OfflineStore {
    root: PathBuf,
    store: Arc<dyn ObjectStore>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Watermark {
    watermark: String,
    watermark_us: i64,
    updated: String,
}

impl OfflineStore {
    pub fn open(root: &Path) -> Result<OfflineStore> {
        std::fs::create_dir_all(root).map_err(|e| {
            FeatureError::Io(format!(
                "cannot create offline store {}: {e}",
                root.display()
            ))
        })?;
        let store = LocalFileSystem::new_with_prefix(root)?;
        Ok(OfflineStore {
            root: root.to_path_buf(),
            store: Arc::new(store),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding a view's partitions.
    pub fn view_dir(&self, view: &str) -> PathBuf {
        self.root.join(view)
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

    /// The dates (`YYYY-MM-DD`) that have a partition for `view`.
    pub async fn partitions(&self, view: &str) -> Result<Vec<String>> {
        let dir = self.view_dir(view);
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(d) = name.strip_prefix("date=")
                && e.path().join("part-0.parquet").exists()
            {
                out.push(d.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// A view's offline data as a DataFrame (empty views are an error).
    pub async fn read_view(&self, ctx: &SessionContext, view: &str) -> Result<DataFrame> {
        let dir = self.view_dir(view);
        if self.partitions(view).await?.is_empty() {
            return Err(FeatureError::NotFound(format!(
                "feature view \"{view}\" has no offline data in {}; run greenbelt features materialize first",
                self.root.display()
            )));
        }
        Ok(ctx
            .read_parquet(
                format!("{}/", dir.display()),
                datafusion::prelude::ParquetReadOptions::default().file_extension(".parquet"),
            )
            .await?)
    }

    /// The Parquet file of one quarantine run.
    pub fn quarantine_file(&self, view: &str, start: i64, end: i64) -> PathBuf {
        self.root
            .join("_quarantine")
            .join(view)
            .join(format!("{start}_{end}.parquet"))
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
    pub quarantined: u64,
    pub quarantine_file: Option<String>,
    pub watermark: String,
    pub validation: Option<ValidationReport>,
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

/// A view's source rows in the offline layout, event time in [start, end),
/// sorted by event time.
pub async fn offline_frame(
    ctx: &SessionContext,
    defs: &Definitions,
    view: &FeatureView,
    start: i64,
    end: i64,
) -> Result<DataFrame> {
    let df = view_frame(ctx, defs, view).await?;
    let df = df.filter(col(TS).gt_eq(lit(start)).and(col(TS).lt(lit(end))))?;
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
        let existing = self
            .store
            .root
            .join(self.view)
            .join(format!("date={date}"))
            .join("part-0.parquet");
        if !fully_covered && existing.exists() {
            let old = self
                .ctx
                .read_parquet(
                    existing.to_string_lossy().into_owned(),
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
    if start >= end {
        return Err(FeatureError::Invalid(format!(
            "materialize: start {} is not before end {}; the range is [start, end)",
            format_ts(start),
            format_ts(end)
        )));
    }
    let view = defs.view(view_name)?;
    let ctx = session(&opts.engine)?;
    let schema = offline_schema(view);
    let df = offline_frame(&ctx, defs, view, start, end).await?;
    let mut stream = df.execute_stream().await?;
    let mut checker = match &view.contract {
        Some(c) => Some(
            Checker::new(
                &format!("feature view \"{view_name}\""),
                c,
                Some(EVENT_TIMESTAMP),
                opts.now_us.unwrap_or_else(now_us),
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
        run_id: format!("{}", now_us()),
        done: Vec::new(),
    };
    let qfile = store.quarantine_file(view_name, start, end);
    let qtmp = qfile.with_extension("parquet.tmp");
    let mut quarantine: Option<datafusion::parquet::arrow::ArrowWriter<std::fs::File>> = None;
    let mut current: Option<PartWriter> = None;
    let mut rows = 0u64;
    let result: Result<()> = async {
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            // Cast to the declared offline schema (field nullability).
            let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
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
                        let bad_rows = filter_record_batch(&batch, &bad)?;
                        let why: ArrayRef = Arc::new(StringArray::from(reasons.iter().flatten().cloned().collect::<Vec<_>>()));
                        let mut cols = bad_rows.columns().to_vec();
                        cols.push(why);
                        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                        fields.push(Field::new(REASON, DataType::Utf8, false));
                        let qschema = Arc::new(Schema::new(fields));
                        let qb = RecordBatch::try_new(qschema.clone(), cols)?;
                        if quarantine.is_none() {
                            if let Some(dir) = qtmp.parent() {
                                std::fs::create_dir_all(dir)?;
                            }
                            let f = std::fs::File::create(&qtmp)?;
                            quarantine = Some(datafusion::parquet::arrow::ArrowWriter::try_new(f, qschema, None)?);
                        }
                        if let Some(q) = quarantine.as_mut() {
                            q.write(&qb)?;
                        }
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
    if let Err(e) = result {
        run.abort(current).await;
        let _ = std::fs::remove_file(&qtmp);
        return Err(e);
    }
    let report = checker.map(Checker::finish);
    if let (Some(r), Some(c)) = (&report, &view.contract)
        && !run_may_continue(c, r)
    {
        run.abort(None).await;
        let _ = std::fs::remove_file(&qtmp);
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
            let _ = std::fs::remove_dir(store.root.join(view_name).join(format!("date={date}")));
            partitions_removed.push(date);
        } else {
            store.store.rename(&tmp, &fin).await?;
            partitions_written.push(date);
        }
    }
    let mut quarantine_file = None;
    let quarantined = report.as_ref().map_or(0, |r| r.quarantined);
    match quarantine {
        Some(q) => {
            q.close()?;
            std::fs::rename(&qtmp, &qfile)?;
            quarantine_file = Some(qfile.to_string_lossy().into_owned());
        }
        None => {
            let _ = std::fs::remove_file(&qfile);
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
        quarantined,
        quarantine_file,
        watermark: format_ts(wm),
        validation: report,
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
