//! `greenbelt score`: batch scoring of a Parquet or CSV input with a model
//! from the registry or a file. The work is `greenbelt_app::score`; this
//! file parses flags, shows progress on a terminal, prints the summary and
//! picks the exit code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use greenbelt_app::registry::{load_config, open};
use greenbelt_app::score::{
    FeatureInput, Input, ModelRef, Progress, ScoreOptions, ScoringModel, Summary, score,
};
use greenbelt_features::defs::SourceFormat;
use greenbelt_runtime::Backend;

/// Exit status of an error (a file, a column, a type, a model).
pub const EXIT_ERROR: u8 = 2;

#[derive(clap::Args)]
pub struct Args {
    /// The model in the registry: NAME (newest version), NAME@ALIAS or NAME:VERSION.
    #[arg(
        long,
        short,
        required_unless_present = "model_file",
        conflicts_with = "model_file"
    )]
    model: Option<String>,
    /// Or an ONNX file (its profile is the `.profile.json` beside it).
    #[arg(long)]
    model_file: Option<PathBuf>,
    /// Parquet or CSV file (local or s3://), or a directory or glob of
    /// them: one partition each, skipped on a rerun when its output exists.
    #[arg(
        long,
        short,
        required_unless_present = "features",
        conflicts_with = "features"
    )]
    input: Option<String>,
    /// Output file (Parquet, or CSV for a .csv name); a directory for a
    /// partitioned input.
    #[arg(long, short)]
    output: PathBuf,
    /// The input's format (default: .csv is CSV, anything else Parquet).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The model's input columns, in order (default: the names in the
    /// model's profile, else every numeric column when the count fits).
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Leave the input columns out of the output.
    #[arg(long)]
    no_passthrough: bool,
    /// Put this before the model's output column names.
    #[arg(long, default_value = "")]
    output_prefix: String,
    /// The backend: auto (native engine when it runs the graph, else ONNX
    /// Runtime, else tract), native, onnxruntime or tract.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Threads scoring at once (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Rows per batch.
    #[arg(long, default_value_t = 8192)]
    batch_rows: usize,
    /// Score point-in-time features of this feature service (with --entities).
    #[arg(long, requires = "entities")]
    features: Option<String>,
    /// Entity rows for --features (Parquet or CSV): join keys and a timestamp.
    #[arg(long, requires = "features")]
    entities: Option<String>,
    /// Feature definitions for --features.
    #[arg(long, default_value = "features.toml")]
    definitions: PathBuf,
    /// The entity rows' timestamp column.
    #[arg(long, default_value = "event_timestamp")]
    entity_timestamp: String,
    /// Only feature values whose created timestamp is at or before the entity timestamp.
    #[arg(long)]
    as_of_known_time: bool,
    /// Read feature rows from the offline store instead of the views' sources.
    #[arg(long)]
    from_offline_store: bool,
    /// Memory the query engine may use before spilling to disk (MiB).
    #[arg(long, default_value_t = 512)]
    memory_limit_mb: usize,
    /// Project config file (default: ./greenbelt.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Registry URL (overrides [registry] url).
    #[arg(long)]
    url: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Parquet,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum BackendArg {
    Auto,
    Native,
    Onnxruntime,
    Tract,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Native => Backend::Native,
            BackendArg::Onnxruntime => Backend::Onnxruntime,
            BackendArg::Tract => Backend::Tract,
        }
    }
}

impl Args {
    fn options(&self) -> anyhow::Result<ScoreOptions> {
        if self.batch_rows == 0 || self.threads == Some(0) {
            bail!("--batch-rows and --threads must be at least 1");
        }
        let defaults = ScoreOptions::default();
        Ok(ScoreOptions {
            threads: self.threads.unwrap_or(defaults.threads),
            batch_rows: self.batch_rows,
            columns: self.columns.clone(),
            passthrough: !self.no_passthrough,
            output_prefix: self.output_prefix.clone(),
            format: self.format.map(|f| match f {
                Format::Parquet => SourceFormat::Parquet,
                Format::Csv => SourceFormat::Csv,
            }),
            memory_limit: self.memory_limit_mb.max(16) * 1024 * 1024,
            ..defaults
        })
    }

    fn input(&self) -> anyhow::Result<Input> {
        match (&self.input, &self.features, &self.entities) {
            (Some(i), None, None) => Ok(Input::Files(i.clone())),
            (None, Some(service), Some(entities)) => Ok(Input::Features(FeatureInput {
                definitions: self.definitions.clone(),
                service: service.clone(),
                entities: entities.clone(),
                entity_timestamp: self.entity_timestamp.clone(),
                as_of_known_time: self.as_of_known_time,
                from_offline_store: self.from_offline_store,
            })),
            _ => bail!("give --input FILE, or --features SERVICE with --entities FILE"),
        }
    }
}

/// Run the command; errors are printed here and exit with [`EXIT_ERROR`].
pub async fn run(args: Args) -> ExitCode {
    match score_cmd(&args).await {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                println!("{}", summary.line());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn score_cmd(args: &Args) -> anyhow::Result<Summary> {
    let opts = args.options()?;
    let input = args.input()?;
    let config = load_config(args.config.as_deref())?;
    let backend = Backend::from(args.backend);
    let model = match (&args.model, &args.model_file) {
        (_, Some(file)) => ScoringModel::from_file(&config, file, backend, opts.threads).await?,
        (Some(name), None) => {
            let reference: ModelRef = name.parse()?;
            let registry = open(&config, args.url.as_deref()).await?;
            ScoringModel::from_registry(&config, &registry, &reference, backend, opts.threads)
                .await?
        }
        (None, None) => bail!("give --model NAME[@ALIAS|:VERSION] or --model-file FILE"),
    };
    let progress = Arc::new(Progress::default());
    let shown = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(progress.clone(), model.label())));
    let result = score(&model, &input, &args.output, &opts, &progress).await;
    if let Some(task) = shown {
        task.abort();
        eprint!("\r\x1b[2K");
    }
    Ok(result?)
}

/// One line on stderr, rewritten four times a second: a bar when the row
/// count is known (Parquet), rows, rows/s, partitions.
async fn show_progress(progress: Arc<Progress>, model: String) {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let rows = progress.rows();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = rows as f64 / secs;
        let (done, all) = progress.partitions();
        let parts = if all > 1 {
            format!("  partition {}/{all}", (done + 1).min(all))
        } else {
            String::new()
        };
        let bar = match progress.total_rows() {
            Some(total) => {
                let share = (rows as f64 / total as f64).clamp(0.0, 1.0);
                let filled = (share * 30.0).round() as usize;
                let eta = if rate > 0.0 {
                    format!("  eta {:.0} s", (total.saturating_sub(rows)) as f64 / rate)
                } else {
                    String::new()
                };
                format!(
                    "[{}{}] {:>3.0}%  {rows}/{total} rows{eta}",
                    "#".repeat(filled),
                    "-".repeat(30 - filled),
                    share * 100.0
                )
            }
            None => format!("{rows} rows"),
        };
        eprint!("\r\x1b[2K{model}: {bar}  {rate:.0} rows/s  {secs:.0} s{parts}");
    }
}
