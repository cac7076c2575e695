//! Point-in-time-correct historical retrieval (the training-set join).
//!
//! For every entity row (join keys + an event timestamp) and every feature
//! view asked for, the value is the view's latest row with the same keys and
//! `event_ts <= entity_ts` and, when the view has a TTL,
//! `event_ts >= entity_ts - ttl`. Ties on event time are broken by the
//! created timestamp (a missing created timestamp counts as oldest); rows
//! equal in both are interchangeable. With `as_of_known_time` a row also
//! needs `created_ts <= entity_ts` (a missing created timestamp counts as
//! known at its event time). No match gives null. Every entity row is kept,
//! in input order, duplicates included. All timestamps are UTC (naive input
//! is UTC).
//!
//! The default mode is an as-of join done as a merge of sorted streams, not
//! a range join (see [`crate::asof`]): entity rows and view rows are sorted
//! by keys and time on DataFusion (spilling to disk under the session's
//! memory limit) and one pass picks each entity row's latest view row.
//! `as_of_known_time` needs a two-dimensional condition and runs as a
//! keyed range join ranked by `ROW_NUMBER`.
//! An entity file is read through DataFusion as a one-partition stream that
//! numbers its rows in file order (re-read, not held, when a plan reads it
//! twice); the final sort by that number restores the input order.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::logical_expr::JoinType;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, col, ident, lit};
use futures::{StreamExt, TryStreamExt};

use crate::defs::{Definitions, FeatureRef, FeatureView, Location};
use crate::error::{FeatureError, Result};
use crate::source::{
    CREATED, EngineOptions, TS, format_of, read_file, session, ts_micros, view_frame,
};

use crate::asof::{self, ET, ROW};

/// How to run a historical retrieval.
#[derive(Debug, Clone)]
pub struct HistoricalOptions {
    /// The entity rows' timestamp column.
    pub entity_timestamp: String,
    /// Also require `created_ts <= entity_ts` (no value that was not yet known).
    pub as_of_known_time: bool,
    /// Read each view's rows from the offline store (what materialization
    /// wrote: contracts applied, quarantined rows left out) rather than from
    /// its source. Event times outside the materialized ranges then have no
    /// rows.
    pub from_offline_store: bool,
    pub engine: EngineOptions,
}

impl Default for HistoricalOptions {
    fn default() -> Self {
        HistoricalOptions {
            entity_timestamp: "event_timestamp".into(),
            as_of_known_time: false,
            from_offline_store: false,
            engine: EngineOptions::default(),
        }
    }
}

/// Entity rows held in memory, in order (for callers that have them;
/// files go through [`historical_to_parquet`], which streams them).
pub struct EntityRows {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// One session with one partition: a file scan then yields rows in file order.
fn file_order_session() -> Result<SessionContext> {
    session(&EngineOptions {
        target_partitions: 1,
        ..EngineOptions::default()
    })
}

/// Read entity rows (CSV or Parquet, local or `s3://`) into memory, in file order.
pub async fn read_entities(path: &Path) -> Result<EntityRows> {
    let ctx = file_order_session()?;
    let loc = Location::from_path(path)?;
    let df = read_file(&ctx, &loc, format_of(&loc)).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    Ok(EntityRows { schema, batches })
}

/// `schema` with the row-number column added; entity columns may not use
/// the reserved prefix.
fn with_row_number(schema: &SchemaRef) -> Result<SchemaRef> {
    if let Some(f) = schema
        .fields()
        .iter()
        .find(|f| f.name().starts_with("__gb"))
    {
        return Err(FeatureError::Invalid(format!(
            "entity column \"{}\" uses the reserved prefix __gb; rename it",
            f.name()
        )));
    }
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(ROW, DataType::Int64, false)));
    Ok(Arc::new(Schema::new(fields)))
}

/// `batch` with row numbers from `first` on.
fn numbered(schema: &SchemaRef, batch: &RecordBatch, first: i64) -> Result<RecordBatch> {
    let n = batch.num_rows() as i64;
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(Int64Array::from_iter_values(first..first + n)));
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// An entity file as a stream of numbered rows in file order. Each
/// execution reads the file again from the start (in a one-partition
/// session of its own), so the numbering is the same every time.
struct EntityFile {
    location: Location,
    format: crate::defs::SourceFormat,
    /// The file's schema with the row number.
    schema: SchemaRef,
}

impl std::fmt::Debug for EntityFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityFile")
            .field("location", &self.location.to_string())
            .finish_non_exhaustive()
    }
}

impl PartitionStream for EntityFile {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let location = self.location.clone();
        let format = self.format;
        let schema = self.schema.clone();
        let open = async move {
            let ctx = file_order_session().map_err(external)?;
            let df = read_file(&ctx, &location, format).await.map_err(external)?;
            df.execute_stream().await
        };
        let mut next: i64 = 0;
        let numbering = schema.clone();
        let rows = futures::stream::once(open).try_flatten().map(move |b| {
            let b = b?;
            let out = numbered(&numbering, &b, next).map_err(external)?;
            next += b.num_rows() as i64;
            Ok(out)
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, rows))
    }
}

fn external(e: FeatureError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Entity rows to retrieve features for.
pub enum Entities {
    /// Rows in memory, in order.
    Rows(EntityRows),
    /// A CSV or Parquet file (local or `s3://`), streamed in file order.
    File(Location),
}

/// The entity rows as a frame with their position in `__gb_row`.
async fn entity_frame(ctx: &SessionContext, entities: Entities) -> Result<(SchemaRef, DataFrame)> {
    match entities {
        Entities::Rows(rows) => {
            let with_row = with_row_number(&rows.schema)?;
            let mut batches = Vec::with_capacity(rows.batches.len());
            let mut next: i64 = 0;
            for b in rows.batches {
                batches.push(numbered(&with_row, &b, next)?);
                next += b.num_rows() as i64;
            }
            let table = MemTable::try_new(with_row, vec![batches])?
                .with_sort_order(vec![vec![col(ROW).sort(true, false)]]);
            Ok((rows.schema, ctx.read_table(Arc::new(table))?))
        }
        Entities::File(location) => {
            let format = format_of(&location);
            // The schema as the file scan will yield it.
            let probe = file_order_session()?;
            let schema: SchemaRef = Arc::new(
                read_file(&probe, &location, format)
                    .await?
                    .schema()
                    .as_arrow()
                    .clone(),
            );
            let with_row = with_row_number(&schema)?;
            let file = EntityFile {
                location,
                format,
                schema: with_row.clone(),
            };
            let file: Arc<dyn PartitionStream> = Arc::new(file);
            let table = StreamingTable::try_new(with_row, vec![file])?
                .with_sort_order(vec![col(ROW).sort(true, false)]);
            Ok((schema, ctx.read_table(Arc::new(table))?))
        }
    }
}

/// A view's rows, normalised (see `source::view_frame`): from its source,
/// or from the offline store.
async fn view_rows(
    ctx: &SessionContext,
    defs: &Definitions,
    view: &FeatureView,
    opts: &HistoricalOptions,
) -> Result<DataFrame> {
    if opts.from_offline_store {
        crate::offline::stored_view_frame(ctx, defs, view).await
    } else {
        view_frame(ctx, defs, view).await
    }
}

/// Group feature references by view, views in first-appearance order.
fn by_view(features: &[FeatureRef]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in features {
        match out.iter_mut().find(|(v, _)| *v == r.view) {
            Some((_, fs)) => {
                if !fs.contains(&r.feature) {
                    fs.push(r.feature.clone())
                }
            }
            None => out.push((r.view.clone(), vec![r.feature.clone()])),
        }
    }
    out
}

/// The historical retrieval as a DataFrame: the entity columns, then one
/// column per feature (named by the feature), rows in entity order.
pub async fn historical(
    ctx: &SessionContext,
    defs: &Definitions,
    features: &[FeatureRef],
    entities: EntityRows,
    opts: &HistoricalOptions,
) -> Result<DataFrame> {
    historical_of(ctx, defs, features, Entities::Rows(entities), opts).await
}

/// [`historical`] for entity rows in memory or in a file (streamed).
pub async fn historical_of(
    ctx: &SessionContext,
    defs: &Definitions,
    features: &[FeatureRef],
    entities: Entities,
    opts: &HistoricalOptions,
) -> Result<DataFrame> {
    if features.is_empty() {
        return Err(FeatureError::Invalid(
            "no features asked for; name a feature service or view:feature list".into(),
        ));
    }
    let (schema, frame) = entity_frame(ctx, entities).await?;
    let entity_cols: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    if !entity_cols.contains(&opts.entity_timestamp) {
        return Err(FeatureError::Invalid(format!(
            "entity rows have no column \"{}\" (columns: {}); name the timestamp column with --entity-timestamp",
            opts.entity_timestamp,
            entity_cols.join(", ")
        )));
    }
    let groups = by_view(features);
    for (view, fs) in &groups {
        let v = defs.view(view)?;
        for k in &v.join_keys {
            if !entity_cols.contains(&k.name) {
                return Err(FeatureError::Invalid(format!(
                    "entity rows have no column \"{}\", the join key of feature view \"{view}\"; add it to the entity rows",
                    k.name
                )));
            }
        }
        for f in fs {
            if v.feature(f).is_none() {
                return Err(FeatureError::NotFound(format!(
                    "feature \"{f}\" is not in feature view \"{view}\""
                )));
            }
            if entity_cols.contains(f) {
                return Err(FeatureError::Invalid(format!(
                    "feature \"{view}:{f}\" has the name of an entity column; rename that column in the entity rows"
                )));
            }
        }
    }
    for r in features {
        if let Some(o) = features
            .iter()
            .find(|o| o.view != r.view && o.feature == r.feature)
        {
            return Err(FeatureError::Invalid(format!(
                "feature name \"{}\" is asked for from two views ({r} and {o}); output columns are named by feature, ask for one of them",
                r.feature
            )));
        }
    }

    let frame = frame.with_column(ET, ts_micros(ident(&opts.entity_timestamp)))?;
    let mut out: Vec<Expr> = entity_cols.iter().map(ident).collect();
    for r in features {
        out.push(ident(&r.feature));
    }

    if !opts.as_of_known_time {
        let mut views = Vec::with_capacity(groups.len());
        for (view_name, fs) in &groups {
            let view = defs.view(view_name)?;
            views.push((view, view_rows(ctx, defs, view, opts).await?, fs.clone()));
        }
        let joined = asof::join(ctx, frame, &entity_cols, asof::group_by_keys(views)).await?;
        return Ok(joined.select(out)?);
    }

    let mut frame = frame;
    for (i, (view_name, fs)) in groups.iter().enumerate() {
        let view = defs.view(view_name)?;
        let src = view_rows(ctx, defs, view, opts).await?;
        frame = join_known_time(ctx, frame, src, view, fs, i).await?;
    }
    Ok(frame.sort(vec![col(ROW).sort(true, false)])?.select(out)?)
}

/// `as_of_known_time` mode: keyed range join ranked by ROW_NUMBER.
async fn join_known_time(
    ctx: &SessionContext,
    frame: DataFrame,
    src: DataFrame,
    view: &FeatureView,
    fs: &[String],
    n: usize,
) -> Result<DataFrame> {
    let mut e_exprs = vec![ident(ROW).alias("__gb_erow"), ident(ET).alias("__gb_eet")];
    for (i, k) in view.join_keys.iter().enumerate() {
        e_exprs.push(cast(ident(&k.name), k.dtype.arrow()).alias(format!("__gb_ek{i}")));
    }
    let e_side = frame.clone().select(e_exprs)?;
    let mut s_exprs = vec![
        ident(TS).alias("__gb_st"),
        coalesce(vec![ident(CREATED), lit(i64::MIN)]).alias("__gb_sc"),
        coalesce(vec![ident(CREATED), ident(TS)]).alias("__gb_sknown"),
    ];
    for (i, k) in view.join_keys.iter().enumerate() {
        s_exprs.push(ident(&k.name).alias(format!("__gb_sk{i}")));
    }
    for (i, f) in fs.iter().enumerate() {
        s_exprs.push(ident(f).alias(format!("__gb_f{i}")));
    }
    let s_side = src.filter(ident(TS).is_not_null())?.select(s_exprs)?;
    let et = format!("__gb_e{n}");
    let st = format!("__gb_s{n}");
    ctx.register_table(et.as_str(), e_side.into_view())?;
    ctx.register_table(st.as_str(), s_side.into_view())?;
    let mut on: Vec<String> = (0..view.join_keys.len())
        .map(|i| format!("e.__gb_ek{i} = s.__gb_sk{i}"))
        .collect();
    on.push("s.__gb_st <= e.__gb_eet".into());
    on.push("s.__gb_sknown <= e.__gb_eet".into());
    if let Some(ttl) = view.ttl_us {
        on.push(format!("s.__gb_st >= e.__gb_eet - {ttl}"));
    }
    let fcols: Vec<String> = (0..fs.len()).map(|i| format!("s.__gb_f{i}")).collect();
    let fnames: Vec<String> = (0..fs.len()).map(|i| format!("__gb_f{i}")).collect();
    let sql = format!(
        "SELECT __gb_erow, {fnames} FROM (SELECT e.__gb_erow, {fcols}, ROW_NUMBER() OVER (PARTITION BY e.__gb_erow ORDER BY s.__gb_st DESC, s.__gb_sc DESC) AS __gb_rn FROM {et} e JOIN {st} s ON {on}) WHERE __gb_rn = 1",
        fnames = fnames.join(", "),
        fcols = fcols.join(", "),
        on = on.join(" AND "),
    );
    let ranked = ctx.sql(&sql).await;
    ctx.deregister_table(et.as_str())?;
    ctx.deregister_table(st.as_str())?;
    let ranked = ranked?;
    let joined = frame.join(ranked, JoinType::Left, &[ROW], &["__gb_erow"], None)?;
    let cols: Vec<String> = joined
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|c| !c.starts_with("__gb_f") && c != "__gb_erow")
        .collect();
    let mut out: Vec<Expr> = cols.iter().map(ident).collect();
    for (i, f) in fs.iter().enumerate() {
        out.push(ident(format!("__gb_f{i}")).alias(f));
    }
    Ok(joined.select(out)?)
}

/// Run a historical retrieval from an entity file into a Parquet file;
/// returns the number of rows written.
pub async fn historical_to_parquet(
    defs: &Definitions,
    features: &[FeatureRef],
    entities_path: &Path,
    out: &Path,
    opts: &HistoricalOptions,
) -> Result<u64> {
    let ctx = session(&opts.engine)?;
    let entities = Entities::File(Location::from_path(entities_path)?);
    let df = historical_of(&ctx, defs, features, entities, opts).await?;
    write_parquet(df, out).await
}

/// Stream a DataFrame into one Parquet file: a local path (written beside
/// it, then renamed) or `s3://bucket/key` (uploaded, then copied into place).
pub async fn write_parquet(df: DataFrame, out: &Path) -> Result<u64> {
    use datafusion::parquet::arrow::{ArrowWriter, AsyncArrowWriter};
    let mut stream = df.execute_stream().await?;
    let mut rows = 0u64;
    match Location::from_path(out)? {
        Location::Local(out) => {
            let tmp = out.with_extension("parquet.tmp");
            if let Some(dir) = out.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::File::create(&tmp)?;
            let mut writer = ArrowWriter::try_new(file, stream.schema(), None)?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                writer.write(&batch)?;
            }
            writer.close()?;
            std::fs::rename(&tmp, out)?;
        }
        Location::S3 { bucket, key } => {
            use datafusion::object_store::ObjectStoreExt;
            use datafusion::object_store::buffered::BufWriter;
            use datafusion::object_store::path::Path as StorePath;
            if key.is_empty() || key.ends_with('/') {
                return Err(FeatureError::Invalid(format!(
                    "s3://{bucket}/{key} names a prefix; give the output object's key, e.g. s3://{bucket}/{key}train.parquet"
                )));
            }
            let s3 = crate::source::s3_store(&bucket)?;
            let fin = StorePath::from(key.as_str());
            let tmp = StorePath::from(format!("{key}.tmp"));
            let obj = BufWriter::new(s3.clone(), tmp.clone());
            let mut writer = AsyncArrowWriter::try_new(obj, stream.schema(), None)?;
            let written: Result<()> = async {
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    rows += batch.num_rows() as u64;
                    writer.write(&batch).await?;
                }
                writer.close().await?;
                Ok(())
            }
            .await;
            if let Err(e) = written {
                let _ = s3.delete(&tmp).await;
                return Err(e);
            }
            s3.rename(&tmp, &fin).await?;
        }
    }
    Ok(rows)
}
