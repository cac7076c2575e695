//! Batch scoring (`greenbelt score`): a model from the registry or a file
//! run over a Parquet or CSV input (local or `s3://`, or point-in-time
//! features from the feature store), written to Parquet or CSV with the
//! model's name and version on every row.
//!
//! The run streams: record batches are read one at a time (DataFusion,
//! one partition so rows keep their order), scored on at most `threads`
//! blocking threads, and written in input order by one writer thread. At
//! most `in_flight` batches are being read or scored and [`WRITE_QUEUE`]
//! wait for the writer, so memory depends on the batch size and the thread
//! count, never on the file size ([`Progress::max_in_flight`] counts it).
//!
//! A directory or glob of files is scored partition by partition, each
//! into a file of the same name in the output directory, written as
//! `NAME.tmp` and renamed when complete; a rerun skips the partitions whose
//! output exists, so a killed run resumes where it stopped.
//!
//! This module owns reading, column mapping ([`columns`]), scoring and
//! writing ([`output`]); it does not print (the binary shows
//! [`Progress`] and the [`Summary`]).

pub mod columns;
pub mod model;
pub mod output;
pub mod partitions;
mod remote;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt};
use greenbelt_features::Definitions;
use greenbelt_features::defs::{Location, SourceFormat};
use greenbelt_features::pit::{Entities, HistoricalOptions, historical_of};
use greenbelt_features::source::{EngineOptions, read_file, session};
use greenbelt_runtime::Model;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

pub use greenbelt_registry::ModelRef;
pub use model::ScoringModel;

use crate::error::{AppError, Result};
use columns::InputPlan;
use output::{OutputSpec, Sink};
use partitions::{Layout, Part};

/// Scored batches waiting for the writer at most.
pub const WRITE_QUEUE: usize = 2;

/// How to score.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Blocking threads scoring batches at once.
    pub threads: usize,
    /// Rows per record batch.
    pub batch_rows: usize,
    /// Batches read or being scored at once (0: twice `threads`).
    pub in_flight: usize,
    /// The columns of a one-input model (see [`columns`]).
    pub columns: Option<Vec<String>>,
    /// Keep the input columns in the output.
    pub passthrough: bool,
    /// Put before the model's output column names.
    pub output_prefix: String,
    /// The input's format (default: by extension).
    pub format: Option<SourceFormat>,
    /// Memory DataFusion may use before spilling (the feature store's
    /// point-in-time join), in bytes.
    pub memory_limit: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            batch_rows: 8192,
            in_flight: 0,
            columns: None,
            passthrough: true,
            output_prefix: String::new(),
            format: None,
            memory_limit: 512 * 1024 * 1024,
        }
    }
}

impl ScoreOptions {
    fn in_flight(&self) -> usize {
        match self.in_flight {
            0 => self.threads.max(1) * 2,
            n => n,
        }
    }

    /// The most batches held at once: in flight, queued for the writer,
    /// one being written and one waiting to be queued.
    pub fn batch_bound(&self) -> usize {
        self.in_flight() + WRITE_QUEUE + 2
    }
}

/// What is scored.
#[derive(Debug, Clone)]
pub enum Input {
    /// A file (local or `s3://`), a directory or a glob of files.
    Files(String),
    /// Point-in-time features of a feature service for entity rows.
    Features(FeatureInput),
}

/// `--features SERVICE --entities FILE`: the rows `greenbelt features
/// historical` would write, scored as they stream.
#[derive(Debug, Clone)]
pub struct FeatureInput {
    /// The feature definitions (features.toml).
    pub definitions: PathBuf,
    pub service: String,
    /// Entity rows (Parquet or CSV, local or `s3://`).
    pub entities: String,
    /// The entity rows' timestamp column.
    pub entity_timestamp: String,
    pub as_of_known_time: bool,
    pub from_offline_store: bool,
}

/// Counters a progress display reads while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    rows: AtomicU64,
    /// Rows of the partitions to score, when their Parquet footers say (0: unknown).
    total_rows: AtomicU64,
    partitions: AtomicUsize,
    partitions_done: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Progress {
    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Rows the run will score, when known before it starts (local
    /// Parquet inputs); `None` for CSV, `s3://` and features.
    pub fn total_rows(&self) -> Option<u64> {
        Some(self.total_rows.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }

    /// (done or skipped, all) partitions.
    pub fn partitions(&self) -> (usize, usize) {
        (
            self.partitions_done.load(Ordering::Relaxed),
            self.partitions.load(Ordering::Relaxed),
        )
    }

    /// The most batches held at once (read, scoring, or waiting to be
    /// written) since the run started.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    fn enter(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    fn leave(&self, rows: u64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }
}

/// The outcome of a run (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Rows scored by this run (skipped partitions not counted).
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub model: String,
    pub model_version: Option<i64>,
    pub model_sha256: String,
    pub backend: &'static str,
    pub output: String,
    pub partitioned: bool,
    pub partitions_scored: usize,
    /// Partitions whose output was already complete.
    pub partitions_skipped: usize,
    pub max_batches_in_flight: usize,
}

impl Summary {
    /// The one line a person reads at the end.
    pub fn line(&self) -> String {
        let model = match self.model_version {
            Some(v) => format!("{}:{v}", self.model),
            None => self.model.clone(),
        };
        let mut s = format!(
            "scored {} rows in {:.2} s ({:.0} rows/s) with {model} ({}) into {}",
            self.rows, self.seconds, self.rows_per_second, self.backend, self.output
        );
        if self.partitioned {
            s.push_str(&format!(
                "; partitions: {} scored, {} skipped (already complete)",
                self.partitions_scored, self.partitions_skipped
            ));
        }
        s
    }
}

/// Score `input` with `model` into `output` (a file, or a directory for
/// partitioned input).
pub async fn score(
    model: &ScoringModel,
    input: &Input,
    output: &Path,
    opts: &ScoreOptions,
    progress: &Arc<Progress>,
) -> Result<Summary> {
    let started = tokio::time::Instant::now();
    let (mut rows, mut scored, mut skipped, mut partitioned) = (0u64, 0usize, 0usize, false);
    match input {
        Input::Files(path) => {
            let layout = partitions::layout(path, output, opts.format)?;
            partitioned = matches!(layout, Layout::Partitioned(_));
            progress
                .partitions
                .store(layout.parts().len(), Ordering::Relaxed);
            let mut done = Vec::with_capacity(layout.parts().len());
            for p in layout.parts() {
                done.push(partitioned && remote::exists(&p.output).await?);
            }
            let todo = layout.parts().iter().zip(&done).filter(|(_, d)| !**d);
            if let Some(total) = todo.map(|(p, _)| parquet_rows(p)).sum::<Option<u64>>() {
                progress.total_rows.store(total, Ordering::Relaxed);
            }
            for (part, done) in layout.parts().iter().zip(done) {
                if done {
                    skipped += 1;
                } else {
                    let label = part.input.to_string();
                    let stream = read(part, &label, opts).await?;
                    rows +=
                        score_stream(model, stream, &part.output, &label, opts, progress).await?;
                    scored += 1;
                }
                progress.partitions_done.fetch_add(1, Ordering::Relaxed);
            }
        }
        Input::Features(f) => {
            progress.partitions.store(1, Ordering::Relaxed);
            let label = format!(
                "the features of service \"{}\" for {}",
                f.service, f.entities
            );
            let stream = features(f, opts).await?;
            rows = score_stream(model, stream, output, &label, opts, progress).await?;
            scored = 1;
            progress.partitions_done.store(1, Ordering::Relaxed);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary {
        rows,
        seconds,
        rows_per_second: rows as f64 / seconds.max(1e-9),
        model: model.name.clone(),
        model_version: model.version,
        model_sha256: model.sha256.clone(),
        backend: model.backend().as_str(),
        output: output.display().to_string(),
        partitioned,
        partitions_scored: scored,
        partitions_skipped: skipped,
        max_batches_in_flight: progress.max_in_flight(),
    })
}

/// The rows of a local Parquet input, from its footer.
fn parquet_rows(part: &Part) -> Option<u64> {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let Location::Local(path) = &part.input else {
        return None;
    };
    if part.format != SourceFormat::Parquet {
        return None;
    }
    let reader = SerializedFileReader::new(std::fs::File::open(path).ok()?).ok()?;
    u64::try_from(reader.metadata().file_metadata().num_rows()).ok()
}

/// The engine that reads: one partition (rows keep the file's order),
/// `batch_rows` rows per batch.
fn engine(opts: &ScoreOptions, partitions: usize) -> EngineOptions {
    EngineOptions {
        memory_limit: opts.memory_limit.max(16 * 1024 * 1024),
        target_partitions: partitions,
        batch_size: opts.batch_rows.max(1),
    }
}

/// Stream one input file's record batches, in file order.
async fn read(part: &Part, label: &str, opts: &ScoreOptions) -> Result<SendableRecordBatchStream> {
    let ctx = session(&engine(opts, 1))?;
    let df = read_file(&ctx, &part.input, part.format)
        .await
        .map_err(|e| {
            AppError::Invalid(format!(
                "reading {label}: {e}; it must be Parquet, or CSV with a header row (a .csv name or --format csv)"
            ))
        })?;
    df.execute_stream()
        .await
        .map_err(|e| AppError::Invalid(format!("reading {label}: {e}")))
}

/// Stream the point-in-time features of `f` (entity order).
async fn features(f: &FeatureInput, opts: &ScoreOptions) -> Result<SendableRecordBatchStream> {
    let defs = Definitions::load(&f.definitions).map_err(|e| {
        AppError::Invalid(format!(
            "--features needs the feature definitions (--definitions, default features.toml): {e}"
        ))
    })?;
    let refs = defs.service(&f.service)?.features.clone();
    let hopts = HistoricalOptions {
        entity_timestamp: f.entity_timestamp.clone(),
        as_of_known_time: f.as_of_known_time,
        from_offline_store: f.from_offline_store,
        engine: engine(opts, EngineOptions::default().target_partitions),
    };
    let ctx = session(&hopts.engine)?;
    let entities = Entities::File(Location::from_path(Path::new(&f.entities))?);
    let df = historical_of(&ctx, &defs, &refs, entities, &hopts).await?;
    df.execute_stream().await.map_err(|e| {
        AppError::Invalid(format!(
            "the features of service \"{}\" for {}: {e}",
            f.service, f.entities
        ))
    })
}

/// One batch's work: tensors from columns, the model, the output columns.
struct Scorer {
    model: Arc<dyn Model>,
    plan: InputPlan,
    spec: OutputSpec,
    label: String,
}

impl Scorer {
    fn score(&self, batch: &RecordBatch, first_row: u64) -> Result<RecordBatch> {
        let inputs = self.plan.tensors(batch, first_row, &self.label)?;
        let outputs = self.model.infer(&inputs).map_err(|e| {
            AppError::Invalid(format!(
                "scoring rows {}..{} of {}: {e}",
                first_row + 1,
                first_row + batch.num_rows() as u64,
                self.label
            ))
        })?;
        self.spec.batch(batch, &outputs, &self.label)
    }
}

/// Score `stream` into `output`; returns the rows written. Nothing is left
/// at `output` unless every row was scored and written.
async fn score_stream(
    model: &ScoringModel,
    stream: SendableRecordBatchStream,
    output: &Path,
    label: &str,
    opts: &ScoreOptions,
    progress: &Arc<Progress>,
) -> Result<u64> {
    let schema = stream.schema();
    let signature = model.model.signature();
    let plan = columns::plan(
        signature,
        &schema,
        &model.features,
        opts.columns.as_deref(),
        label,
    )?;
    let spec = OutputSpec {
        passthrough: opts.passthrough,
        prefix: opts.output_prefix.clone(),
        model_name: model.name.clone(),
        model_version: model.version,
    };
    let empty = spec.empty_schema(&schema, signature);
    let scorer = Arc::new(Scorer {
        model: model.model.clone(),
        plan,
        spec,
        label: label.to_string(),
    });
    // An s3:// output is written to a local file, then uploaded.
    let upload = remote::Upload::for_output(output)?;
    let sink = Sink::new(
        upload.as_ref().map_or(output, |u| u.local()),
        metadata(model),
    );
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let writer = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || write_all(sink, rx, &progress))
    };
    let sent = forward(scored(stream, scorer, opts, progress.clone()), tx).await;
    match (sent, writer.await?) {
        (Ok(()), Ok((sink, rows))) => {
            tokio::task::spawn_blocking(move || sink.finish(empty)).await??;
            if let Some(u) = upload {
                u.send().await?;
            }
            Ok(rows)
        }
        (Err(e), Ok((sink, _))) => {
            sink.abort();
            Err(e)
        }
        (_, Err(e)) => Err(e),
    }
}

/// Batches of `stream` scored on at most `threads` blocking threads, at
/// most `in_flight` at once, in input order.
fn scored(
    stream: SendableRecordBatchStream,
    scorer: Arc<Scorer>,
    opts: &ScoreOptions,
    progress: Arc<Progress>,
) -> impl Stream<Item = Result<RecordBatch>> {
    let threads = Arc::new(Semaphore::new(opts.threads.max(1)));
    let mut next_row = 0u64;
    stream
        .filter(|b| std::future::ready(!matches!(b, Ok(b) if b.num_rows() == 0)))
        .map(move |batch| {
            let first_row = next_row;
            if let Ok(b) = &batch {
                next_row += b.num_rows() as u64;
            }
            progress.enter();
            let (scorer, threads) = (scorer.clone(), threads.clone());
            async move {
                let batch = batch
                    .map_err(|e| AppError::Invalid(format!("reading {}: {e}", scorer.label)))?;
                let _permit = threads
                    .acquire_owned()
                    .await
                    .map_err(|e| AppError::Task(e.to_string()))?;
                tokio::task::spawn_blocking(move || scorer.score(&batch, first_row)).await?
            }
        })
        .buffered(opts.in_flight())
}

/// Hand scored batches to the writer in order; stops at the first error,
/// or when the writer stopped (its error is the one reported).
async fn forward(
    scored: impl Stream<Item = Result<RecordBatch>>,
    tx: mpsc::Sender<RecordBatch>,
) -> Result<()> {
    let mut scored = std::pin::pin!(scored);
    while let Some(batch) = scored.next().await {
        if tx.send(batch?).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// The writer thread: every batch into `sink`, in the order received.
fn write_all(
    mut sink: Sink,
    mut rx: mpsc::Receiver<RecordBatch>,
    progress: &Progress,
) -> Result<(Sink, u64)> {
    let mut rows = 0u64;
    while let Some(batch) = rx.blocking_recv() {
        if let Err(e) = sink.write(&batch) {
            sink.abort();
            return Err(e);
        }
        let n = batch.num_rows() as u64;
        rows += n;
        progress.leave(n);
    }
    Ok((sink, rows))
}

/// Parquet key-value metadata naming the model.
fn metadata(model: &ScoringModel) -> Vec<(String, String)> {
    let mut m = vec![
        ("greenbelt.model".to_string(), model.name.clone()),
        ("greenbelt.model_sha256".to_string(), model.sha256.clone()),
        (
            "greenbelt.backend".to_string(),
            model.backend().as_str().to_string(),
        ),
    ];
    if let Some(v) = model.version {
        m.push(("greenbelt.model_version".to_string(), v.to_string()));
    }
    m
}
