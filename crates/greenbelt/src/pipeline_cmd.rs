//! `greenbelt pipeline run FILE`: train → validate → gate → register → promote,
//! with progress on stderr and the report on stdout (`--json` for machines).
//! Exits non-zero when a gate fails (the champion is left untouched).

use std::path::PathBuf;

use anyhow::{Context, bail};
use greenbelt_app::pipeline::run_pipeline;
use greenbelt_app::registry::load_config;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Run a pipeline file (e.g. examples/fraud/pipeline.toml).
    Run {
        file: PathBuf,
        /// Project config file (default: ./greenbelt.toml when it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the demo's synthetic transactions (CSV).
    DemoData {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// 0 = no drift, 1 = strong drift.
        #[arg(long, default_value_t = 0.0)]
        drift: f64,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Run { file, config, json } => {
            let config = load_config(config.as_deref())?;
            let report = {
                let progress = crate::progress::Progress::spinner("pipeline");
                let r = run_pipeline(&file, &config, progress.lines()).await;
                progress.finish();
                r?
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.text());
            }
            if !report.passed {
                bail!(
                    "gate failed: {} version {} was registered but not promoted",
                    report.model,
                    report.registered_version
                );
            }
            Ok(())
        }
        Cmd::DemoData {
            out,
            rows,
            seed,
            drift,
        } => {
            if !(0.0..=1.0).contains(&drift) || rows < 100 {
                bail!("--rows must be >= 100 and --drift between 0 and 1");
            }
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, greenbelt_control::demo::fraud_csv(rows, seed, drift))
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {rows} transactions to {}", out.display());
            Ok(())
        }
    }
}
