//! The as-of join behind point-in-time retrieval (the default mode), as a
//! merge of sorted streams.
//!
//! Views are grouped by their join keys. For each group, DataFusion sorts
//! the entity rows by (keys, entity time) and every view's rows by (keys,
//! event time, created time); sorts spill to disk under the session's
//! memory limit. One pass then walks the entity rows and moves a cursor
//! forward in each view: a view row with the same keys and an event time
//! at or before the entity row's becomes that view's candidate, so the
//! candidate is the latest such row, ties on event time going to the
//! newest created time. The TTL is checked on the candidate alone: when
//! the latest row is too old, every earlier one is too. The pass holds one
//! batch per input (and the batch of each candidate), so its memory does
//! not grow with the data.
//!
//! The group's output (row number, features) is sorted back by row number
//! (DataFusion, spilling again) and zipped, column-wise, with the entity
//! rows read again in their order. Every group yields exactly one row per
//! entity row; the zip checks the row numbers line up and fails rather
//! than misalign.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, new_null_array};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, col, ident, lit};
use futures::{StreamExt, TryStreamExt};

use crate::defs::{Column, FeatureView};
use crate::error::Result;
use crate::source::{CREATED, TS};

type DfResult<T> = std::result::Result<T, DataFusionError>;

/// The entity frame's row-number column.
pub(crate) const ROW: &str = "__gb_row";
/// The entity frame's time column (Int64 µs UTC).
pub(crate) const ET: &str = "__gb_et";

/// Views that share one list of join keys.
pub(crate) struct Group<'a> {
    keys: Vec<Column>,
    views: Vec<(&'a FeatureView, DataFrame, Vec<String>)>,
}

/// Group `(view, its rows, features asked of it)` by join keys (same
/// names and types, same order), groups in first-appearance order.
pub(crate) fn group_by_keys<'a>(
    views: Vec<(&'a FeatureView, DataFrame, Vec<String>)>,
) -> Vec<Group<'a>> {
    let mut groups: Vec<Group<'a>> = Vec::new();
    for (view, rows, fs) in views {
        let same = |g: &&mut Group<'a>| {
            g.keys.len() == view.join_keys.len()
                && g.keys
                    .iter()
                    .zip(&view.join_keys)
                    .all(|(a, b)| a.name == b.name && a.dtype == b.dtype)
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(g) => g.views.push((view, rows, fs)),
            None => groups.push(Group {
                keys: view.join_keys.clone(),
                views: vec![(view, rows, fs)],
            }),
        }
    }
    groups
}

fn key_col(i: usize) -> String {
    format!("__gb_k{i}")
}

fn feature_col(i: usize) -> String {
    format!("__gb_f{i}")
}

/// One view of a group, ready for the merge.
#[derive(Debug)]
struct ViewInput {
    /// Rows sorted by (keys, time, created): keys, `__gb_t`, `__gb_c`, features.
    sorted: DataFrame,
    ttl_us: Option<i64>,
    features: usize,
}

/// The merge pass of one group, as a partition DataFusion can read.
#[derive(Debug)]
struct Merge {
    /// Entity rows sorted by (keys, time): `__gb_row`, `__gb_et`, keys.
    entities: DataFrame,
    views: Vec<ViewInput>,
    key_types: Vec<DataType>,
    schema: SchemaRef,
}

fn internal(msg: String) -> DataFusionError {
    DataFusionError::Execution(msg)
}

/// The as-of join of `frame` (entity columns, [`ROW`], [`ET`], entity rows
/// in row-number order) with every group: the entity columns, then each
/// asked feature under its own name, in entity order.
pub(crate) async fn join(
    ctx: &SessionContext,
    frame: DataFrame,
    entity_cols: &[String],
    groups: Vec<Group<'_>>,
) -> Result<DataFrame> {
    let mut outputs = Vec::with_capacity(groups.len());
    for group in groups {
        let merged = merge_group(ctx, frame.clone(), group)?;
        outputs.push(merged.sort(vec![col(ROW).sort(true, false)])?);
    }
    let entity_schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut fields: Vec<Arc<Field>> = entity_cols
        .iter()
        .map(|c| entity_schema.field_with_name(c).cloned().map(Arc::new))
        .collect::<std::result::Result<_, _>>()?;
    for out in &outputs {
        fields.extend(
            out.schema()
                .fields()
                .iter()
                .filter(|f| f.name() != ROW)
                .cloned(),
        );
    }
    let zip = Zip {
        // In row order (declared by the entity table, so this costs no sort
        // unless the scan was split into partitions).
        entities: frame.sort(vec![col(ROW).sort(true, false)])?,
        entity_cols: entity_cols.to_vec(),
        groups: outputs,
        schema: Arc::new(Schema::new(fields)),
    };
    let schema = zip.schema.clone();
    let table = StreamingTable::try_new(schema, vec![Arc::new(zip)])?;
    Ok(ctx.read_table(Arc::new(table))?)
}

/// The group's merge as a frame of `__gb_row` and the asked features
/// (named by feature), in (keys, entity time) order.
fn merge_group(ctx: &SessionContext, frame: DataFrame, group: Group<'_>) -> Result<DataFrame> {
    let mut e_exprs: Vec<Expr> = vec![ident(ROW), ident(ET)];
    let mut e_sort = Vec::new();
    for (i, k) in group.keys.iter().enumerate() {
        e_exprs.push(cast(ident(&k.name), k.dtype.arrow()).alias(key_col(i)));
        e_sort.push(ident(key_col(i)).sort(true, true));
    }
    e_sort.push(ident(ET).sort(true, true));
    let entities = frame.select(e_exprs)?.sort(e_sort)?;

    let mut fields = vec![Arc::new(Field::new(ROW, DataType::Int64, false))];
    let mut views = Vec::with_capacity(group.views.len());
    for (view, rows, fs) in group.views {
        let mut keep = ident(TS).is_not_null();
        let mut exprs = Vec::new();
        let mut sort = Vec::new();
        for (i, k) in view.join_keys.iter().enumerate() {
            keep = keep.and(ident(&k.name).is_not_null());
            exprs.push(ident(&k.name).alias(key_col(i)));
            sort.push(ident(key_col(i)).sort(true, true));
        }
        exprs.push(ident(TS).alias("__gb_t"));
        exprs.push(coalesce(vec![ident(CREATED), lit(i64::MIN)]).alias("__gb_c"));
        sort.push(ident("__gb_t").sort(true, true));
        sort.push(ident("__gb_c").sort(true, true));
        for (i, f) in fs.iter().enumerate() {
            exprs.push(ident(f).alias(feature_col(i)));
        }
        let sorted = rows.filter(keep)?.select(exprs)?.sort(sort)?;
        let schema = sorted.schema().clone();
        for (i, f) in fs.iter().enumerate() {
            let dt = schema
                .field_with_unqualified_name(&feature_col(i))?
                .data_type()
                .clone();
            fields.push(Arc::new(Field::new(f, dt, true)));
        }
        views.push(ViewInput {
            sorted,
            ttl_us: view.ttl_us,
            features: fs.len(),
        });
    }
    let merge = Merge {
        entities,
        views,
        key_types: group.keys.iter().map(|k| k.dtype.arrow()).collect(),
        schema: Arc::new(Schema::new(fields)),
    };
    let table = StreamingTable::try_new(merge.schema.clone(), vec![Arc::new(merge)])?;
    Ok(ctx.read_table(Arc::new(table))?)
}

/// A sorted stream with its current batch (and the one before it, which
/// may hold a view's candidate row).
struct Cursor {
    stream: SendableRecordBatchStream,
    /// Id of the current batch (counts up from 1).
    id: u64,
    batch: Option<Loaded>,
    prev: Option<(u64, RecordBatch)>,
    pos: usize,
}

struct Loaded {
    batch: RecordBatch,
    keys: Rows,
}

impl Cursor {
    async fn open(
        df: DataFrame,
        converter: &RowConverter,
        keys: usize,
        first_key: usize,
    ) -> DfResult<Cursor> {
        let stream = df.execute_stream().await?;
        let mut c = Cursor {
            stream,
            id: 0,
            batch: None,
            prev: None,
            pos: 0,
        };
        c.load(converter, keys, first_key).await?;
        Ok(c)
    }

    /// Load the next non-empty batch (none at the end).
    async fn load(
        &mut self,
        converter: &RowConverter,
        keys: usize,
        first_key: usize,
    ) -> DfResult<()> {
        if let Some(l) = self.batch.take() {
            self.prev = Some((self.id, l.batch));
        }
        self.pos = 0;
        while let Some(b) = self.stream.next().await {
            let b = b?;
            if b.num_rows() == 0 {
                continue;
            }
            let cols: Vec<ArrayRef> = b.columns()[first_key..first_key + keys].to_vec();
            let keys = converter.convert_columns(&cols)?;
            self.id += 1;
            self.batch = Some(Loaded { batch: b, keys });
            return Ok(());
        }
        Ok(())
    }

    /// The batch with id `id`, when it is the current or the previous one.
    fn batch_of(&self, id: u64) -> Option<&RecordBatch> {
        match (&self.batch, &self.prev) {
            (Some(l), _) if self.id == id => Some(&l.batch),
            (_, Some((p, b))) if *p == id => Some(b),
            _ => None,
        }
    }
}

/// A view's state in the merge.
struct ViewCursor {
    cursor: Cursor,
    ttl_us: Option<i64>,
    features: usize,
    /// The latest row so far with the current entity key and a time at or
    /// before the current entity time: (batch id, row, event time). The
    /// rows passed since were all of this key, so the batch is the cursor's
    /// current one or the one before.
    candidate: Option<(u64, usize, i64)>,
    /// One row of nulls per feature (the "no value" source).
    nulls: Vec<ArrayRef>,
}

/// Columns of a view frame: keys, `__gb_t`, `__gb_c`, then features.
fn view_ts(b: &RecordBatch, keys: usize) -> &Int64Array {
    b.column(keys).as_primitive::<Int64Type>()
}

impl PartitionStream for Merge {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let entities = self.entities.clone();
        let views: Vec<(DataFrame, Option<i64>, usize)> = self
            .views
            .iter()
            .map(|v| (v.sorted.clone(), v.ttl_us, v.features))
            .collect();
        let key_types = self.key_types.clone();
        let schema = self.schema.clone();
        let out_schema = schema.clone();
        let run = async move {
            let fields = key_types.iter().cloned().map(SortField::new).collect();
            let converter = RowConverter::new(fields)?;
            let nkeys = key_types.len();
            let entity = Cursor::open(entities, &converter, nkeys, 2).await?;
            let mut cursors = Vec::with_capacity(views.len());
            for (df, ttl_us, features) in views {
                let cursor = Cursor::open(df, &converter, nkeys, 0).await?;
                let nulls = cursor.stream.schema().fields()[nkeys + 2..]
                    .iter()
                    .map(|f| new_null_array(f.data_type(), 1))
                    .collect();
                cursors.push(ViewCursor {
                    cursor,
                    ttl_us,
                    features,
                    candidate: None,
                    nulls,
                });
            }
            let state = MergeState {
                converter,
                nkeys,
                entity,
                views: cursors,
                last_key: None,
                schema,
            };
            Ok::<_, DataFusionError>(futures::stream::try_unfold(state, |mut s| async move {
                Ok(s.next_batch().await?.map(|b| (b, s)))
            }))
        };
        let stream = futures::stream::once(run).try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(out_schema, stream))
    }
}

struct MergeState {
    converter: RowConverter,
    nkeys: usize,
    entity: Cursor,
    views: Vec<ViewCursor>,
    /// Key of the last entity row seen (candidates belong to it).
    last_key: Option<OwnedRow>,
    schema: SchemaRef,
}

impl MergeState {
    /// The output for the next batch of entity rows (none at the end).
    async fn next_batch(&mut self) -> DfResult<Option<RecordBatch>> {
        let Some(loaded) = self.entity.batch.take() else {
            return Ok(None);
        };
        let n = loaded.batch.num_rows();
        let rows = loaded.batch.column(0).clone();
        let times = loaded.batch.column(1).as_primitive::<Int64Type>().clone();
        let key_cols: Vec<ArrayRef> = loaded.batch.columns()[2..2 + self.nkeys].to_vec();
        // (view, entity row) → (source, row): source 0 is the row of
        // nulls, source s > 0 the candidate batch `sources[view][s - 1]`.
        let mut picks: Vec<Vec<(usize, usize)>> = vec![Vec::with_capacity(n); self.views.len()];
        // Batches candidates point into, per view, by id.
        let mut sources: Vec<Vec<(u64, RecordBatch)>> = vec![Vec::new(); self.views.len()];
        for i in 0..n {
            let key = loaded.keys.row(i);
            let null_key = key_cols.iter().any(|c| c.is_null(i));
            if self.last_key.as_ref().is_none_or(|k| k.row() != key) {
                for v in &mut self.views {
                    v.candidate = None;
                }
                self.last_key = Some(key.owned());
            }
            if null_key || times.is_null(i) {
                for p in &mut picks {
                    p.push((0, 0));
                }
                continue;
            }
            let et = times.value(i);
            for (j, v) in self.views.iter_mut().enumerate() {
                advance(v, &self.converter, self.nkeys, key, et).await?;
                let pick = match v.candidate {
                    Some((id, row, t))
                        if v.ttl_us.is_none_or(|ttl| t >= et.saturating_sub(ttl)) =>
                    {
                        let s = match sources[j].iter().position(|(s, _)| *s == id) {
                            Some(s) => s,
                            None => {
                                let batch = v.cursor.batch_of(id).ok_or_else(|| {
                                    internal(
                                        "point-in-time join: lost a candidate row's batch".into(),
                                    )
                                })?;
                                sources[j].push((id, batch.clone()));
                                sources[j].len() - 1
                            }
                        };
                        (s + 1, row)
                    }
                    _ => (0, 0),
                };
                picks[j].push(pick);
            }
        }
        let mut columns: Vec<ArrayRef> = vec![rows];
        for (j, v) in self.views.iter().enumerate() {
            let src = &sources[j];
            let indices = &picks[j];
            for f in 0..v.features {
                let c = self.nkeys + 2 + f;
                let mut arrays: Vec<&dyn Array> = vec![v.nulls[f].as_ref()];
                arrays.extend(src.iter().map(|(_, b)| b.column(c).as_ref()));
                columns.push(interleave(&arrays, indices)?);
            }
        }
        self.entity.load(&self.converter, self.nkeys, 2).await?;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }
}

/// Move `v`'s cursor past every row with a key below `key`, and past every
/// row with `key` and a time at or before `et` (the last of those becomes
/// the candidate).
async fn advance(
    v: &mut ViewCursor,
    converter: &RowConverter,
    nkeys: usize,
    key: datafusion::arrow::row::Row<'_>,
    et: i64,
) -> DfResult<()> {
    loop {
        let Some(l) = &v.cursor.batch else {
            return Ok(());
        };
        let pos = v.cursor.pos;
        match l.keys.row(pos).cmp(&key) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                let t = view_ts(&l.batch, nkeys).value(pos);
                if t > et {
                    return Ok(());
                }
                v.candidate = Some((v.cursor.id, pos, t));
            }
            std::cmp::Ordering::Greater => return Ok(()),
        }
        if pos + 1 < l.batch.num_rows() {
            v.cursor.pos = pos + 1;
        } else {
            v.cursor.load(converter, nkeys, 0).await?;
        }
    }
}

/// The entity rows (in order) beside every group's output (sorted by row
/// number), column by column.
#[derive(Debug)]
struct Zip {
    entities: DataFrame,
    entity_cols: Vec<String>,
    groups: Vec<DataFrame>,
    schema: SchemaRef,
}

/// A stream read in slices of any length.
struct Slicer {
    stream: SendableRecordBatchStream,
    batch: Option<RecordBatch>,
    pos: usize,
}

impl Slicer {
    async fn open(df: DataFrame) -> DfResult<Slicer> {
        Ok(Slicer {
            stream: df.execute_stream().await?,
            batch: None,
            pos: 0,
        })
    }

    /// Rows left in the current batch, loading the next when it is used up
    /// (0 at the end).
    async fn available(&mut self) -> DfResult<usize> {
        loop {
            if let Some(b) = &self.batch
                && self.pos < b.num_rows()
            {
                return Ok(b.num_rows() - self.pos);
            }
            match self.stream.next().await {
                Some(b) => {
                    self.batch = Some(b?);
                    self.pos = 0;
                }
                None => {
                    self.batch = None;
                    return Ok(0);
                }
            }
        }
    }

    fn take(&mut self, len: usize) -> RecordBatch {
        let out = match &self.batch {
            Some(b) => b.slice(self.pos, len),
            None => RecordBatch::new_empty(self.stream.schema()),
        };
        self.pos += len;
        out
    }
}

fn row_numbers(b: &RecordBatch) -> DfResult<&Int64Array> {
    let i = b.schema().index_of(ROW)?;
    Ok(b.column(i).as_primitive::<Int64Type>())
}

impl PartitionStream for Zip {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let entities = self.entities.clone();
        let groups = self.groups.clone();
        let entity_cols = self.entity_cols.clone();
        let schema = self.schema.clone();
        let out_schema = schema.clone();
        let run = async move {
            let mut inputs = vec![Slicer::open(entities).await?];
            for g in groups {
                inputs.push(Slicer::open(g).await?);
            }
            Ok::<_, DataFusionError>(futures::stream::try_unfold(
                (inputs, entity_cols, schema),
                |(mut inputs, entity_cols, schema)| async move {
                    let mut len = usize::MAX;
                    let mut ended = 0;
                    for s in inputs.iter_mut() {
                        let a = s.available().await?;
                        if a == 0 {
                            ended += 1;
                        }
                        len = len.min(a);
                    }
                    if ended == inputs.len() {
                        return Ok(None);
                    }
                    if ended > 0 {
                        return Err(internal(
                            "point-in-time join: a feature view's output ended before the entity rows did".into(),
                        ));
                    }
                    let parts: Vec<RecordBatch> = inputs.iter_mut().map(|s| s.take(len)).collect();
                    let rows = row_numbers(&parts[0])?;
                    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
                    for c in &entity_cols {
                        columns.push(parts[0].column(parts[0].schema().index_of(c)?).clone());
                    }
                    for p in &parts[1..] {
                        if row_numbers(p)? != rows {
                            return Err(internal(
                                "point-in-time join: a feature view's output is out of step with the entity rows".into(),
                            ));
                        }
                        for (f, c) in p.schema().fields().iter().zip(p.columns()) {
                            if f.name() != ROW {
                                columns.push(c.clone());
                            }
                        }
                    }
                    let batch = RecordBatch::try_new(schema.clone(), columns)?;
                    Ok(Some((batch, (inputs, entity_cols, schema))))
                },
            ))
        };
        let stream = futures::stream::once(run).try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(out_schema, stream))
    }
}
