//! `greenbelt registry ...`: the registry from the command line. Talks to the
//! registry database directly (the same one `serve` reads); parses
//! arguments, calls the registry and `greenbelt_app::registry`, prints.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use greenbelt_app::mlflow_import::{ImportReport, Outcome, import_mlflow};
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
    /// Set or delete a version's tags (MLflow's model version tags).
    #[command(subcommand)]
    Tag(TagCmd),
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
    /// Import an MLflow file store's registered models: versions with an
    /// ONNX model, aliases, tags, descriptions; a re-run adds only what is new.
    ImportMlflow {
        /// The MLflow tracking directory (the file store, usually mlruns/).
        source: PathBuf,
    },
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

/// A JSON value on one line: objects as `k=v` pairs, `-` when empty.
fn compact(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Number(n) => match n.as_f64() {
                    Some(f) if n.is_f64() => format!("{k}={f:.4}"),
                    _ => format!("{k}={n}"),
                },
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// `greenbelt_app::table::columns` without the trailing newline
/// (`print` adds one).
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    greenbelt_app::table::columns(head, rows)
        .trim_end()
        .to_string()
}

/// `registry show` as text: the version's facts, then its metrics, tags
/// and lineage one per line.
fn show_text(v: &greenbelt_registry::ModelVersion, aliases: &[(String, i64)]) -> String {
    let names: Vec<String> = aliases
        .iter()
        .filter(|(_, n)| *n == v.version)
        .map(|(a, _)| format!("@{a}"))
        .collect();
    let mut rows = vec![
        vec!["model".into(), v.model.clone()],
        vec!["version".into(), v.version.to_string()],
        vec!["aliases".into(), names.join(",")],
        vec!["created".into(), format_us(v.created_us)],
        vec!["created by".into(), v.created_by.clone()],
        vec!["format".into(), v.format.clone()],
        vec!["artifact".into(), v.artifact_uri.clone()],
        vec!["sha256".into(), v.sha256.clone()],
    ];
    for (section, value) in [
        ("metrics", &v.metrics),
        ("params", &v.params),
        ("tags", &v.tags),
        ("lineage", &v.lineage),
    ] {
        if let Value::Object(m) = value {
            for (k, x) in m {
                let shown = match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                rows.push(vec![format!("{section}.{k}"), shown]);
            }
        }
    }
    if let Some(passed) = v.gate_report.get("passed") {
        rows.push(vec!["gates passed".into(), passed.to_string()]);
    }
    let io = |key: &str| -> String {
        v.signature
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|t| {
                        format!(
                            "{} {} {}",
                            t["name"].as_str().unwrap_or("?"),
                            t["datatype"].as_str().unwrap_or("?"),
                            t["shape"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    };
    rows.push(vec!["inputs".into(), io("inputs")]);
    rows.push(vec!["outputs".into(), io("outputs")]);
    table(&["FIELD", "VALUE"], &rows)
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

/// `import-mlflow`'s report as text: one line per version and alias, then
/// what was not imported and why.
fn import_text(r: &ImportReport) -> String {
    let mut rows: Vec<Vec<String>> = r
        .versions
        .iter()
        .map(|v| {
            let what = match v.outcome {
                Outcome::Imported => "imported",
                Outcome::AlreadyImported => "already imported",
                Outcome::TagsUpdated => "already imported, tags updated",
            };
            vec![
                v.model.clone(),
                v.mlflow_version.to_string(),
                v.version.to_string(),
                what.to_string(),
            ]
        })
        .collect();
    rows.extend(r.aliases.iter().map(|a| {
        vec![
            format!("{}@{}", a.model, a.alias),
            a.mlflow_version.to_string(),
            a.version.to_string(),
            if a.moved {
                "alias set"
            } else {
                "alias unchanged"
            }
            .to_string(),
        ]
    }));
    let mut text = format!(
        "{} (imported {} versions)\n",
        r.store.display(),
        r.imported()
    );
    if !rows.is_empty() {
        text.push_str(&table(&["MODEL", "MLFLOW", "VERSION", "RESULT"], &rows));
        text.push('\n');
    }
    if !r.skipped.is_empty() {
        text.push_str(&format!("not imported ({}):\n", r.skipped.len()));
        for s in &r.skipped {
            text.push_str(&format!("  - {}: {}\n", s.what, s.why));
        }
    }
    text.trim_end().to_string()
}

#[derive(Subcommand)]
enum TagCmd {
    /// Set KEY to VALUE on MODEL:VERSION.
    Set {
        model: String,
        version: i64,
        key: String,
        value: String,
    },
    /// Delete KEY from MODEL:VERSION.
    Delete {
        model: String,
        version: i64,
        key: String,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let reg = open(&config, args.url.as_deref()).await?;
    let who = actor(&config);
    let j = args.json;
    match args.command {
        Cmd::Models => {
            let models = reg.models().await?;
            print(j, &json!({ "models": models }), || {
                let rows: Vec<Vec<String>> = models.iter().map(|m| vec![m.clone()]).collect();
                table(&["MODEL"], &rows)
            });
        }
        Cmd::Versions { model } => {
            let versions = reg.versions(&model).await?;
            let aliases = reg.aliases(&model).await?;
            print(
                j,
                &json!({ "versions": versions, "aliases": aliases }),
                || {
                    let rows: Vec<Vec<String>> = versions
                        .iter()
                        .map(|v| {
                            let names: Vec<String> = aliases
                                .iter()
                                .filter(|(_, n)| *n == v.version)
                                .map(|(a, _)| format!("@{a}"))
                                .collect();
                            vec![
                                v.version.to_string(),
                                format_us(v.created_us),
                                v.sha256.chars().take(12).collect(),
                                compact(&v.metrics),
                                names.join(","),
                            ]
                        })
                        .collect();
                    table(
                        &["VERSION", "CREATED", "SHA256", "METRICS", "ALIASES"],
                        &rows,
                    )
                },
            );
        }
        Cmd::Show { model, version } => {
            let v = reg.version(&model, version).await?;
            let value = serde_json::to_value(&v)?;
            let aliases = reg.aliases(&model).await?;
            print(j, &value, || show_text(&v, &aliases));
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
        Cmd::Tag(t) => {
            let (model, version, tags) = match t {
                TagCmd::Set {
                    model,
                    version,
                    key,
                    value,
                } => {
                    let tags = reg.set_tag(&model, version, &key, Some(&value)).await?;
                    (model, version, tags)
                }
                TagCmd::Delete {
                    model,
                    version,
                    key,
                } => {
                    let tags = reg.set_tag(&model, version, &key, None).await?;
                    (model, version, tags)
                }
            };
            print(
                j,
                &json!({ "model": model, "version": version, "tags": tags }),
                || format!("{model}:{version} tags: {}", compact(&tags)),
            );
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
                    let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
                    let rows: Vec<Vec<String>> = events
                        .iter()
                        .map(|e| {
                            vec![
                                e.at.clone(),
                                format!("{}@{}", e.model, e.alias),
                                show(e.from_version),
                                show(e.to_version),
                                e.actor.clone(),
                                e.reason.clone(),
                            ]
                        })
                        .collect();
                    table(&["AT", "ALIAS", "FROM", "TO", "BY", "REASON"], &rows)
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
        Cmd::ImportMlflow { source } => {
            let r = import_mlflow(&reg, &config, &source, &who).await?;
            print(j, &serde_json::to_value(&r)?, || import_text(&r));
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
