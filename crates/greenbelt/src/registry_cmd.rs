//! `greenbelt registry ...`: the registry from the command line. Talks to the
//! registry database directly (the same one `serve` reads); parses
//! arguments, calls the registry and `greenbelt_app::registry`, prints.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use greenbelt_app::registry::{actor, load_config, open, register_file_with_profile};
use greenbelt_registry::{format_us, parse_time};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// Project config file (default: ./greenbelt.toml when it exists).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Registry URL (overrides [registry] url).
    #[arg(long, global = true)]
    url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List models.
    Models,
    /// List a model's versions with their metrics.
    Versions { model: String },
    /// Show one version.
    Show { model: String, version: i64 },
    /// Register an ONNX file as a new version.
    Register {
        model: String,
        #[arg(long)]
        file: PathBuf,
        /// Metrics as a JSON object.
        #[arg(long)]
        metrics: Option<String>,
        /// Tags as a JSON object.
        #[arg(long)]
        tags: Option<String>,
        /// Reference profile of the training data and holdout predictions
        /// (drift monitoring; default: `<file stem>.profile.json` beside
        /// the model when it exists).
        #[arg(long)]
        profile: Option<PathBuf>,
    },
    /// Move or delete an alias.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Alias history; with --at, which version the alias pointed to then.
    History {
        model: String,
        #[arg(long)]
        alias: Option<String>,
        /// RFC 3339 time, e.g. 2026-11-20T14:02:00Z.
        #[arg(long)]
        at: Option<String>,
    },
    /// Move an alias back to the version it pointed to before.
    Rollback {
        model: String,
        #[arg(long, default_value = "champion")]
        alias: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Compare two versions' metrics.
    Compare { model: String, a: i64, b: i64 },
}

#[derive(Subcommand)]
enum AliasCmd {
    Set {
        model: String,
        alias: String,
        version: i64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    Delete {
        model: String,
        alias: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn parse_json(what: &str, s: Option<&str>) -> anyhow::Result<Value> {
    match s {
        None => Ok(json!({})),
        Some(s) => {
            let v: Value =
                serde_json::from_str(s).with_context(|| format!("--{what} is not JSON"))?;
            if !v.is_object() {
                bail!("--{what} must be a JSON object like {{\"auc\": 0.9}}");
            }
            Ok(v)
        }
    }
}

fn print(json_mode: bool, value: &Value, text: impl FnOnce() -> String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn event_line(e: &greenbelt_registry::AliasEvent) -> String {
    let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    format!(
        "{}  {}@{}  {} -> {}  by {}  {}",
        e.at,
        e.model,
        e.alias,
        show(e.from_version),
        show(e.to_version),
        e.actor,
        e.reason
    )
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let reg = open(&config, args.url.as_deref()).await?;
    let who = actor(&config);
    let j = args.json;
    match args.command {
        Cmd::Models => {
            let models = reg.models().await?;
            print(j, &json!({ "models": models }), || models.join("\n"));
        }
        Cmd::Versions { model } => {
            let versions = reg.versions(&model).await?;
            let aliases = reg.aliases(&model).await?;
            print(
                j,
                &json!({ "versions": versions, "aliases": aliases }),
                || {
                    let mut out = String::new();
                    for v in &versions {
                        let names: Vec<&str> = aliases
                            .iter()
                            .filter(|(_, n)| *n == v.version)
                            .map(|(a, _)| a.as_str())
                            .collect();
                        out.push_str(&format!(
                            "{:>4}  {}  {}  {}  {}\n",
                            v.version,
                            format_us(v.created_us),
                            &v.sha256[..12],
                            v.metrics,
                            if names.is_empty() {
                                String::new()
                            } else {
                                format!("@{}", names.join(",@"))
                            }
                        ));
                    }
                    out.trim_end().to_string()
                },
            );
        }
        Cmd::Show { model, version } => {
            let v = reg.version(&model, version).await?;
            let value = serde_json::to_value(&v)?;
            print(j, &value, || {
                serde_json::to_string_pretty(&value).unwrap_or_default()
            });
        }
        Cmd::Register {
            model,
            file,
            metrics,
            tags,
            profile,
        } => {
            let beside = greenbelt_serve::repository::profile_path(&file);
            let profile = profile.or_else(|| beside.exists().then_some(beside));
            let v = register_file_with_profile(
                &reg,
                &config,
                model,
                &file,
                profile.as_deref(),
                parse_json("metrics", metrics.as_deref())?,
                parse_json("tags", tags.as_deref())?,
                who,
            )
            .await?;
            print(j, &serde_json::to_value(&v)?, || {
                format!("registered {} version {}", v.model, v.version)
            });
        }
        Cmd::Alias(AliasCmd::Set {
            model,
            alias,
            version,
            reason,
        }) => {
            let e = reg
                .set_alias(&model, &alias, version, &who, &reason)
                .await?;
            print(j, &json!({ "event": e }), || match &e {
                Some(e) => event_line(e),
                None => format!("{model}@{alias} already points to {version}"),
            });
        }
        Cmd::Alias(AliasCmd::Delete {
            model,
            alias,
            reason,
        }) => {
            let e = reg.delete_alias(&model, &alias, &who, &reason).await?;
            print(j, &json!({ "event": e }), || event_line(&e));
        }
        Cmd::History { model, alias, at } => match at {
            Some(at) => {
                let Some(alias) = alias else {
                    bail!("--at needs --alias (which alias to look up)");
                };
                let t = parse_time(&at)?;
                let v = reg.alias_at(&model, &alias, t).await?;
                print(
                    j,
                    &json!({ "model": model, "alias": alias, "at": at, "version": v }),
                    || match v {
                        Some(v) => format!("{model}@{alias} pointed to version {v} at {at}"),
                        None => format!("{model}@{alias} did not exist at {at}"),
                    },
                );
            }
            None => {
                let events = reg.history(&model, alias.as_deref()).await?;
                print(j, &json!({ "events": events }), || {
                    events.iter().map(event_line).collect::<Vec<_>>().join("\n")
                });
            }
        },
        Cmd::Rollback {
            model,
            alias,
            reason,
        } => {
            let started = tokio::time::Instant::now();
            let e = reg.rollback(&model, &alias, &who, &reason).await?;
            let took_ms = started.elapsed().as_secs_f64() * 1000.0;
            print(j, &json!({ "event": e, "took_ms": took_ms }), || {
                format!(
                    "{}\nrolled back in {took_ms:.1} ms; servers following {model}@{alias} switch within their poll interval",
                    event_line(&e)
                )
            });
        }
        Cmd::Compare { model, a, b } => {
            let va = reg.version(&model, a).await?;
            let vb = reg.version(&model, b).await?;
            let c = greenbelt_registry::store::compare(&va, &vb);
            print(j, &c, || {
                serde_json::to_string_pretty(&c).unwrap_or_default()
            });
        }
    }
    Ok(())
}
