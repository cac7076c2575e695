//! `greenbelt drift ...`: compare two datasets column by column. The work
//! is `greenbelt_features::drift`; this file parses flags, prints and picks
//! the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use greenbelt_features::drift::{
    CategoricalTest, CompareOptions, NumericTest, Report, Thresholds, compare, html, render_text,
};
use greenbelt_features::source::EngineOptions;

/// Exit status when `--fail-share` is exceeded.
pub const EXIT_DRIFT: u8 = 3;
/// Exit status of an error (a file, a column, a flag).
pub const EXIT_ERROR: u8 = 2;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Compare a current dataset with a reference one, column by column
    /// (Parquet or CSV, local or s3://). Exit 0, 3 when the share of drifted
    /// columns exceeds --fail-share, 2 on an error.
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    /// The reference dataset (training data, last month).
    #[arg(long, short)]
    reference: String,
    /// The dataset to check against it.
    #[arg(long, short)]
    current: String,
    /// Only these columns (comma-separated; each must be in both files).
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report with a chart per column.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Exit 3 when the share of drifted columns is above this (0 to 1).
    #[arg(long)]
    fail_share: Option<f64>,
    /// Test deciding numeric columns: auto (KS up to --small-rows reference
    /// values, normed Wasserstein above), ks, wasserstein or psi.
    #[arg(long, default_value = "auto")]
    numeric_test: NumericTest,
    /// Test deciding categorical columns: auto (chi-square up to
    /// --small-rows, Jensen-Shannon above), chisquare, jensenshannon or psi.
    #[arg(long, default_value = "auto")]
    categorical_test: CategoricalTest,
    /// `auto` uses the p-value tests up to this many reference values.
    #[arg(long, default_value_t = 1000)]
    small_rows: u64,
    /// KS drifts below this p-value.
    #[arg(long, default_value_t = 0.05)]
    ks_pvalue: f64,
    /// Chi-square drifts below this p-value.
    #[arg(long, default_value_t = 0.05)]
    chisquare_pvalue: f64,
    /// Wasserstein-1 / reference std drifts at or above this.
    #[arg(long, default_value_t = 0.1)]
    wasserstein: f64,
    /// Jensen-Shannon distance drifts at or above this.
    #[arg(long, default_value_t = 0.1)]
    jensenshannon: f64,
    /// PSI drifts at or above this.
    #[arg(long, default_value_t = 0.1)]
    psi: f64,
    /// The dataset drifts when at least this share of columns does.
    #[arg(long, default_value_t = 0.5)]
    drift_share: f64,
    /// PSI bins for numeric columns (reference quantiles).
    #[arg(long, default_value_t = 10)]
    psi_bins: usize,
    /// Categorical columns with more distinct values are not compared.
    #[arg(long, default_value_t = 1000)]
    max_categories: usize,
    /// Memory the query engine may use before its sorts spill to disk (MiB).
    #[arg(long, default_value_t = 512)]
    memory_limit_mb: usize,
    /// Columns compared at once (default: the number of CPUs).
    #[arg(long)]
    parallel: Option<usize>,
}

impl CompareArgs {
    fn options(&self) -> anyhow::Result<CompareOptions> {
        for (flag, v) in [
            ("--ks-pvalue", self.ks_pvalue),
            ("--chisquare-pvalue", self.chisquare_pvalue),
            ("--drift-share", self.drift_share),
            ("--fail-share", self.fail_share.unwrap_or(0.0)),
        ] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("{flag} is {v}; give a number from 0 to 1");
            }
        }
        let engine = EngineOptions {
            memory_limit: self.memory_limit_mb.max(16) * 1024 * 1024,
            ..EngineOptions::default()
        };
        Ok(CompareOptions {
            columns: self.columns.clone(),
            thresholds: Thresholds {
                numeric_test: self.numeric_test,
                categorical_test: self.categorical_test,
                small_rows: self.small_rows,
                ks_pvalue: self.ks_pvalue,
                chisquare_pvalue: self.chisquare_pvalue,
                wasserstein: self.wasserstein,
                jensenshannon: self.jensenshannon,
                psi: self.psi,
                drift_share: self.drift_share,
            },
            parallel_columns: self.parallel.unwrap_or(engine.target_partitions),
            engine,
            psi_bins: self.psi_bins,
            max_categories: self.max_categories,
            ..CompareOptions::default()
        })
    }
}

/// Run the command; errors are printed here and exit with [`EXIT_ERROR`].
pub async fn run(args: Args) -> ExitCode {
    let Command::Compare(args) = args.command;
    match compare_cmd(&args).await {
        Ok(report) => {
            if args.fail_share.is_some_and(|s| report.exceeds(s)) {
                ExitCode::from(EXIT_DRIFT)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn compare_cmd(args: &CompareArgs) -> anyhow::Result<Report> {
    let report = compare(&args.reference, &args.current, &args.options()?).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&report))
            .map_err(|e| anyhow::anyhow!("writing the HTML report {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(report)
}
