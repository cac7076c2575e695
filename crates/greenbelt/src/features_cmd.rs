//! `greenbelt features ...`: the feature store from the command line —
//! apply/plan definitions (versioned in the registry database), validate
//! contracts, materialize to the offline and online stores, historical
//! (point-in-time) retrieval, freshness, the synthetic canary, the demo
//! data, and importing a Feast repository's definitions.
//! Behaviour lives in greenbelt-features and `greenbelt_app::feature_ops`;
//! this file parses and prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use greenbelt_app::feature_ops::{self, Range, materialize_views, online, views_or_all};
use greenbelt_app::registry::{actor, load_config, open};
use greenbelt_features::Definitions;
use greenbelt_features::feast_import::{ImportOptions, ImportReport, import};
use greenbelt_features::offline::OfflineStore;
use greenbelt_features::pit::{HistoricalOptions, historical_to_parquet};
use greenbelt_features::plan::plan_text;
use greenbelt_features::source::EngineOptions;
use greenbelt_features::time::{now_us, parse_ts};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// Feature definitions file.
    #[arg(long, short = 'f', global = true, default_value = "features.toml")]
    file: PathBuf,
    /// Project config file (for the registry URL; default ./greenbelt.toml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Registry URL (overrides [registry] url).
    #[arg(long, global = true)]
    url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Memory the query engine may use before spilling to disk (MiB).
    #[arg(long, global = true, default_value_t = 512)]
    memory_limit_mb: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the definitions and record them in the registry (a changed definition is a new version).
    Apply,
    /// Show what apply would change.
    Plan,
    /// Run the data contracts over the sources and views; exits non-zero when a rule fails.
    Validate {
        /// Only this feature view.
        #[arg(long)]
        view: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Materialize [start, end) to the offline store (and the online store).
    Materialize {
        /// RFC 3339 (UTC), inclusive.
        #[arg(long)]
        start: String,
        /// RFC 3339 (UTC), exclusive.
        #[arg(long)]
        end: String,
        /// Views (default: all).
        #[arg(long = "view")]
        views: Vec<String>,
        /// Do not write the online store.
        #[arg(long)]
        no_online: bool,
    },
    /// Materialize from each view's watermark to --end (default now).
    MaterializeIncremental {
        #[arg(long)]
        end: Option<String>,
        #[arg(long = "view")]
        views: Vec<String>,
        #[arg(long)]
        no_online: bool,
    },
    /// Point-in-time-correct training data: one output row per entity row, in order.
    Historical {
        /// Entity rows (Parquet or CSV): join keys + a timestamp column.
        #[arg(long)]
        entities: PathBuf,
        /// A feature service.
        #[arg(long)]
        service: Option<String>,
        /// Or view:feature names, comma-separated.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Output Parquet file.
        #[arg(long)]
        out: PathBuf,
        /// The entity rows' timestamp column.
        #[arg(long, default_value = "event_timestamp")]
        entity_timestamp: String,
        /// Only values whose created timestamp is at or before the entity timestamp.
        #[arg(long)]
        as_of_known_time: bool,
        /// Read feature rows from the offline store (materialized, contracts
        /// applied, quarantined rows left out) instead of the views' sources.
        #[arg(long)]
        from_offline_store: bool,
    },
    /// Write a sentinel row through push, read it back online, report the lag vs the view's freshness SLA.
    Canary {
        /// Views (default: every online view).
        #[arg(long = "view")]
        views: Vec<String>,
        /// Give up on a read-back after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// The batch path instead (source → materialize → online): read the
        /// sentinel the last materialization wrote and judge its age.
        #[arg(long)]
        batch: bool,
    },
    /// Per view: watermark, newest offline event, age vs the freshness SLA; exits non-zero on a breach.
    Freshness {
        /// Prometheus text exposition instead of the report.
        #[arg(long)]
        prometheus: bool,
    },
    /// Convert a Feast repository's definitions into features.toml; prints what was not imported and why.
    ImportFeast {
        /// The JSON `feast registry-dump` prints, or a Feast repository
        /// (a directory with feature_store.yaml: `feast -c DIR registry-dump` is run).
        source: PathBuf,
        /// The features.toml to write (default: --file).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The directory Feast's relative file paths are relative to
        /// (default: the repository, or the JSON file's directory).
        #[arg(long)]
        repo_dir: Option<PathBuf>,
        /// The feast program to run for a repository directory.
        #[arg(long, env = "GREENBELT_FEAST", default_value = "feast")]
        feast: String,
        /// Replace the output file when it exists.
        #[arg(long)]
        force: bool,
    },
    /// Write the fraud demo's transactions CSV (greenbelt_control::demo::fraud_csv).
    DemoData {
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Output path (default: data/transactions.csv beside the definitions file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn print(json_mode: bool, value: &Value, text: &str) {
    if json_mode {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{text}");
    }
}

fn engine(args: &Args) -> EngineOptions {
    EngineOptions {
        memory_limit: args.memory_limit_mb.max(16) * 1024 * 1024,
        ..EngineOptions::default()
    }
}

async fn registry(args: &Args) -> anyhow::Result<(greenbelt_registry::Registry, String)> {
    let config = load_config(args.config.as_deref())?;
    let reg = open(&config, args.url.as_deref()).await?;
    Ok((reg, actor(&config)))
}

/// `import-feast`'s report as text: what was written, then what was not.
fn import_text(r: &ImportReport) -> String {
    let mut text = format!(
        "wrote {}: {} entities, {} sources, {} feature views, {} feature services\n",
        r.output.display(),
        r.entities.len(),
        r.sources.len(),
        r.feature_views.len(),
        r.feature_services.len()
    );
    if r.skipped.is_empty() {
        text.push_str("everything in the Feast registry was imported\n");
    } else {
        text.push_str(&format!("not imported ({}):\n", r.skipped.len()));
        for s in &r.skipped {
            text.push_str(&format!("  - {}: {}\n", s.what, s.why));
        }
    }
    text
}

async fn run_materialize(
    args: &Args,
    defs: &Arc<Definitions>,
    views: &[String],
    range: Range,
    no_online: bool,
) -> anyhow::Result<()> {
    let progress = crate::progress::Progress::bar(views.len() as u64, "views");
    let reports = materialize_views(
        defs,
        views,
        range,
        engine(args),
        !no_online,
        &mut |v| progress.line(&format!("materializing {v} ...")),
        &mut |m| {
            let r = &m.report;
            progress.inc();
            progress.line(&format!(
                "  {}: {} rows in {:.2}s ({:.0} rows/s), {} partitions, {} quarantined, {} online keys, watermark {}",
                r.view,
                r.rows,
                m.seconds,
                r.rows as f64 / m.seconds.max(1e-9),
                r.partitions_written.len(),
                r.quarantined,
                m.online_keys_written,
                r.watermark
            ));
        },
    )
    .await;
    progress.finish();
    let reports = reports?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}

async fn batch_canary(
    args: &Args,
    svc: &greenbelt_features::online::service::OnlineService,
    views: &[String],
) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for v in views {
        let r = greenbelt_features::canary::run_batch(svc, v, now_us())
            .await
            .with_context(|| format!("batch canary for \"{v}\""))?;
        results.push(r);
    }
    let text: String = results
        .iter()
        .map(|r| {
            format!(
                "{} {}: newest event online {}, age {:.1} s (sla {})\n",
                if r.breach { "BREACH" } else { "ok    " },
                r.view,
                r.newest_event,
                r.age_seconds,
                r.sla_seconds.map_or("none".into(), |s| format!("{s:.0}s"))
            )
        })
        .collect();
    print(args.json, &serde_json::to_value(&results)?, &text);
    let breaches = results.iter().filter(|r| r.breach).count();
    if breaches > 0 {
        bail!("{breaches} feature views: the batch path is past their freshness SLA");
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Cmd::DemoData { rows, seed, out } = &args.command {
        let out = out.clone().unwrap_or_else(|| {
            args.file
                .parent()
                .unwrap_or(Path::new("."))
                .join("data/transactions.csv")
        });
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, greenbelt_control::demo::fraud_csv(*rows, *seed, 0.0))
            .with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {rows} transactions to {}", out.display());
        return Ok(());
    }
    if let Cmd::ImportFeast {
        source,
        output,
        repo_dir,
        feast,
        force,
    } = &args.command
    {
        let report = import(&ImportOptions {
            source: source.clone(),
            output: output.clone().unwrap_or_else(|| args.file.clone()),
            repo_dir: repo_dir.clone(),
            feast_program: feast.clone(),
            overwrite: *force,
        })?;
        print(
            args.json,
            &serde_json::to_value(&report)?,
            &import_text(&report),
        );
        return Ok(());
    }
    let defs = Arc::new(Definitions::load(&args.file)?);
    match &args.command {
        Cmd::DemoData { .. } | Cmd::ImportFeast { .. } => Ok(()),
        Cmd::Plan => {
            let (reg, _) = registry(&args).await?;
            let p = feature_ops::plan_against(&reg, &defs).await?;
            print(args.json, &serde_json::to_value(&p)?, &plan_text(&p));
            Ok(())
        }
        Cmd::Apply => {
            let (reg, who) = registry(&args).await?;
            let a = feature_ops::apply(&reg, &defs, &who).await?;
            let mut text = plan_text(&a.plan);
            if a.recorded.is_empty() {
                text.push_str("nothing to apply\n");
            }
            for r in &a.recorded {
                text.push_str(&format!(
                    "recorded {} \"{}\" v{}{}\n",
                    r.kind,
                    r.name,
                    r.version,
                    if r.spec.is_null() { " (removed)" } else { "" }
                ));
            }
            print(args.json, &serde_json::to_value(&a)?, &text);
            Ok(())
        }
        Cmd::Validate { view, source } => {
            use greenbelt_features::validate::{validate_all, validate_source, validate_view};
            let e = engine(&args);
            let now = now_us();
            let reports = match (view, source) {
                (Some(v), _) => validate_view(&defs, v, now, &e)
                    .await?
                    .into_iter()
                    .collect(),
                (None, Some(s)) => validate_source(&defs, s, now, &e)
                    .await?
                    .into_iter()
                    .collect(),
                (None, None) => validate_all(&defs, now, &e).await?,
            };
            let text: String = reports.iter().map(|r| r.text()).collect();
            let text = if text.is_empty() {
                "no contracts to check\n".to_string()
            } else {
                text
            };
            print(args.json, &serde_json::to_value(&reports)?, &text);
            if reports.iter().any(|r| !r.passed) {
                bail!(
                    "{} of {} contracts failed",
                    reports.iter().filter(|r| !r.passed).count(),
                    reports.len()
                );
            }
            Ok(())
        }
        Cmd::Materialize {
            start,
            end,
            views,
            no_online,
        } => {
            let s = parse_ts("--start", start)?;
            let e = parse_ts("--end", end)?;
            let views = views_or_all(&defs, views)?;
            run_materialize(&args, &defs, &views, Range::Between(s, e), *no_online).await
        }
        Cmd::MaterializeIncremental {
            end,
            views,
            no_online,
        } => {
            let e = match end {
                Some(t) => parse_ts("--end", t)?,
                None => now_us(),
            };
            let views = views_or_all(&defs, views)?;
            run_materialize(&args, &defs, &views, Range::Since(e), *no_online).await
        }
        Cmd::Historical {
            entities,
            service,
            features,
            out,
            entity_timestamp,
            as_of_known_time,
            from_offline_store,
        } => {
            let refs = match (service, features.is_empty()) {
                (Some(s), true) => defs.service(s)?.features.clone(),
                (None, false) => defs.resolve_features(features)?,
                _ => bail!("give --service or --features (view:feature,...), not both or neither"),
            };
            let opts = HistoricalOptions {
                entity_timestamp: entity_timestamp.clone(),
                as_of_known_time: *as_of_known_time,
                from_offline_store: *from_offline_store,
                engine: engine(&args),
            };
            let started = tokio::time::Instant::now();
            let progress = crate::progress::Progress::spinner("historical retrieval");
            progress.message(&format!(
                "{} features as of each row of {} → {}",
                refs.len(),
                entities.display(),
                out.display()
            ));
            let rows = historical_to_parquet(&defs, &refs, entities, out, &opts).await;
            progress.finish();
            let rows = rows?;
            let secs = started.elapsed().as_secs_f64();
            print(
                args.json,
                &json!({ "rows": rows, "out": out, "features": refs.iter().map(|r| r.to_string()).collect::<Vec<_>>(), "seconds": secs }),
                &format!(
                    "wrote {rows} rows with {} features to {} in {secs:.2}s\n",
                    refs.len(),
                    out.display()
                ),
            );
            Ok(())
        }
        Cmd::Freshness { prometheus } => {
            let store = OfflineStore::open(&defs.offline_path)?;
            let f = greenbelt_features::freshness::freshness(&defs, &store, now_us()).await?;
            if *prometheus {
                print!("{}", greenbelt_features::freshness::prometheus_text(&f));
            } else {
                let text: String = f
                    .iter()
                    .map(|v| {
                        format!(
                            "{} {}: newest event {}, age {}, watermark {}, sla {}\n",
                            if v.breach { "BREACH" } else { "ok    " },
                            v.view,
                            v.newest_event.as_deref().unwrap_or("none"),
                            v.age_seconds.map_or("-".into(), |a| format!("{a:.0}s")),
                            v.watermark.as_deref().unwrap_or("none"),
                            v.sla_seconds.map_or("none".into(), |s| format!("{s:.0}s")),
                        )
                    })
                    .collect();
                print(args.json, &serde_json::to_value(&f)?, &text);
            }
            if f.iter().any(|v| v.breach) {
                bail!(
                    "{} feature views are staler than their freshness SLA",
                    f.iter().filter(|v| v.breach).count()
                );
            }
            Ok(())
        }
        Cmd::Canary {
            views,
            timeout_ms,
            batch,
        } => {
            let svc = online(&defs).await?;
            let views: Vec<String> = if views.is_empty() {
                greenbelt_features::canary::default_views(&svc)
            } else {
                views.clone()
            };
            if *batch {
                return batch_canary(&args, &svc, &views).await;
            }
            let mut results = Vec::new();
            for v in &views {
                let r = greenbelt_features::canary::run(
                    &svc,
                    v,
                    std::time::Duration::from_millis(*timeout_ms),
                )
                .await
                .with_context(|| format!("canary for \"{v}\""))?;
                results.push(r);
            }
            let text: String = results
                .iter()
                .map(|r| {
                    format!(
                        "{} {}: lag {:.1} ms (sla {})\n",
                        if r.breach { "BREACH" } else { "ok    " },
                        r.view,
                        r.lag_ms,
                        r.sla_seconds.map_or("none".into(), |s| format!("{s:.0}s"))
                    )
                })
                .collect();
            print(args.json, &serde_json::to_value(&results)?, &text);
            let breaches = results.iter().filter(|r| r.breach).count();
            if breaches > 0 {
                bail!("{breaches} feature views breached their freshness SLA");
            }
            Ok(())
        }
    }
}
