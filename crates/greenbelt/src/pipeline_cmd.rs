//! `greenbelt pipeline run FILE`: train → validate → gate → register → promote,
//! with progress on stderr and the report on stdout (`--json` for machines).
//! Exits non-zero when a gate fails (the champion is left untouched).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use greenbelt_control::pipeline::definition::{HistoricalDef, PipelineDef};
use greenbelt_control::pipeline::{self, RunContext};
use greenbelt_features::Definitions;
use greenbelt_features::pit::{HistoricalOptions, historical_to_parquet};
use greenbelt_registry::ArtifactStore;

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

/// `[data.historical]` through the feature store: point-in-time retrieval
/// of the service's features for the entity rows.
struct FeatureStoreRetrieval;

impl pipeline::HistoricalRetrieval for FeatureStoreRetrieval {
    fn retrieve<'a>(
        &'a self,
        def: &'a HistoricalDef,
        out: &'a std::path::Path,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<String>, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let defs = Definitions::load(&def.definitions).map_err(|e| e.to_string())?;
            let refs = defs
                .service(&def.service)
                .map_err(|e| format!("service: {e}"))?
                .features
                .clone();
            let opts = HistoricalOptions {
                entity_timestamp: def
                    .entity_timestamp
                    .clone()
                    .unwrap_or_else(|| "event_timestamp".into()),
                as_of_known_time: def.as_of_known_time,
                from_offline_store: def.from_offline_store,
                ..HistoricalOptions::default()
            };
            historical_to_parquet(&defs, &refs, &def.entities, out, &opts)
                .await
                .map_err(|e| e.to_string())?;
            Ok(refs.into_iter().map(|r| r.feature).collect())
        })
    }
}

pub async fn run_pipeline(
    file: &std::path::Path,
    config: &greenbelt_serve::Config,
    quiet: bool,
) -> anyhow::Result<pipeline::Report> {
    let def = PipelineDef::read(file)?;
    let registry = crate::registry_cmd::open(config, None).await?;
    let artifacts = ArtifactStore::open(&config.registry.artifacts)?;
    let ort = config.runtime.onnxruntime_library.clone();
    let runtimes =
        tokio::task::spawn_blocking(move || greenbelt_runtime::Runtimes::probe(ort.as_deref()))
            .await
            .context("probing runtimes")?;
    let ctx = RunContext {
        registry,
        artifacts,
        runtimes,
        actor: crate::registry_cmd::actor(config),
        workdir: PathBuf::from(".greenbelt/pipelines").join(&def.name),
        progress: Arc::new(move |line: &str| {
            if !quiet {
                eprintln!("{line}");
            }
        }),
        historical: Some(Arc::new(FeatureStoreRetrieval)),
    };
    Ok(pipeline::run(&def, &ctx).await?)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Run { file, config, json } => {
            let config = crate::registry_cmd::load_config(config.as_ref())?;
            let report = run_pipeline(&file, &config, false).await?;
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
