//! The promotion pipeline: train → validate → evaluate (candidate and
//! champion on the same holdout, through the real runtime) → latency SLO →
//! gate → register → promote. Every decision is measured and stored with the
//! version; a failed gate leaves the champion untouched.

pub mod dataset;
pub mod definition;
pub mod gates;
pub mod lineage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use greenbelt_core::{Tensor, TensorData};
use greenbelt_registry::{ArtifactStore, NewVersion, Registry};
use greenbelt_runtime::{LoadOptions, Model, Runtimes};
use greenbelt_train::metrics::BinaryMetrics;
use greenbelt_train::{DenseMatrix, GbdtParams, LinRegParams, LogRegParams};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use definition::{PipelineDef, Promote, Task, TrainDef};
use gates::{Rule, RuleResult};
use greenbelt_serve::deployment::DeploymentConfig;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pipeline definition: {0}")]
    Definition(String),
    #[error("data check failed: {0}")]
    Data(String),
    #[error("training failed: {0}")]
    Train(String),
    #[error("evaluation failed: {0}")]
    Evaluate(String),
    #[error("registry: {0}")]
    Registry(#[from] greenbelt_registry::RegistryError),
    /// A model rewrite (`optimize quantize`) refused the model.
    #[error("model rewrite: {0}")]
    Rewrite(greenbelt_train::TrainError),
    /// A version passed its gates but could not be promoted as asked.
    #[error("promotion: {0}")]
    Promote(String),
}

/// Where a run keeps its files and how it reports progress.
pub struct RunContext {
    pub registry: Registry,
    pub artifacts: ArtifactStore,
    pub runtimes: Runtimes,
    pub actor: String,
    pub workdir: PathBuf,
    pub progress: Arc<dyn Fn(&str) + Send + Sync>,
    /// Point-in-time retrieval for `[data.historical]` (the feature store
    /// lives in another crate; the binary provides it). `None`: pipelines
    /// with `[data.historical]` are refused.
    pub historical: Option<Arc<dyn HistoricalRetrieval>>,
    /// The project's `[[deployments]]`: where `promote = "rollout"` releases.
    pub deployments: Vec<DeploymentConfig>,
}

/// Writes a feature service's point-in-time training set to a Parquet file.
pub trait HistoricalRetrieval: Send + Sync {
    /// Retrieve `def` into `out`; the feature column names, in order.
    fn retrieve<'a>(
        &'a self,
        def: &'a definition::HistoricalDef,
        out: &'a std::path::Path,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<String>, String>> + Send + 'a>>;
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pipeline: String,
    pub run_id: String,
    pub model: String,
    pub alias: String,
    pub dataset: Value,
    pub split: dataset::SplitInfo,
    pub trainer: Value,
    pub candidate_metrics: BTreeMap<String, f64>,
    pub champion: Option<ChampionInfo>,
    pub gates: Vec<RuleResult>,
    pub passed: bool,
    pub registered_version: i64,
    /// The alias points to the new version now.
    pub promoted: bool,
    /// How the version was promoted, or why not.
    pub promotion: Promotion,
    pub timings_ms: BTreeMap<String, f64>,
}

/// What the promote step did.
#[derive(Debug, Clone, Serialize)]
pub struct Promotion {
    /// The pipeline's `promote`: "alias" or "rollout".
    pub mode: Promote,
    /// "alias_moved", "rollout_started", or "none" (a gate failed).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// In words.
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChampionInfo {
    pub version: i64,
    pub metrics: BTreeMap<String, f64>,
}

impl Report {
    /// The human-readable form.
    pub fn text(&self) -> String {
        let mut out = format!(
            "pipeline {} (run {}) for {}@{}\n  data: {} ({} split: {} train / {} holdout rows)\n  trainer: {}\n",
            self.pipeline,
            self.run_id,
            self.model,
            self.alias,
            self.dataset["path"].as_str().unwrap_or(""),
            self.split.kind,
            self.split.train_rows,
            self.split.holdout_rows,
            self.trainer
        );
        out.push_str("  metric        candidate   champion\n");
        for (k, v) in &self.candidate_metrics {
            let c = self
                .champion
                .as_ref()
                .and_then(|c| c.metrics.get(k))
                .map_or("-".to_string(), |c| format!("{c:.6}"));
            out.push_str(&format!("  {k:<12} {v:>10.6}  {c:>9}\n"));
        }
        out.push_str("  gates:\n");
        for g in &self.gates {
            out.push_str(&format!(
                "    [{}] {}  (value {}, threshold {}){}\n",
                g.outcome.to_uppercase(),
                g.rule,
                g.value.map_or("-".into(), |v| format!("{v:.6}")),
                g.threshold.map_or("-".into(), |v| format!("{v:.6}")),
                g.note
                    .as_deref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "  registered {} version {}; {}\n  timings (ms): {}",
            self.model,
            self.registered_version,
            if self.promoted || self.promotion.outcome == "rollout_started" {
                self.promotion.note.clone()
            } else if self.passed {
                "not promoted".to_string()
            } else {
                format!("NOT promoted: a gate failed; @{} unchanged", self.alias)
            },
            self.timings_ms
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out
    }
}

fn metrics_map(m: &BinaryMetrics) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("roc_auc".to_string(), m.roc_auc),
        ("pr_auc".to_string(), m.pr_auc),
        ("log_loss".to_string(), m.log_loss),
        ("accuracy".to_string(), m.accuracy),
        ("precision".to_string(), m.precision),
        ("recall".to_string(), m.recall),
        ("f1".to_string(), m.f1),
    ])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Run `def` end to end.
pub async fn run(def: &PipelineDef, ctx: &RunContext) -> Result<Report, PipelineError> {
    let started = Instant::now();
    let mut timings = BTreeMap::new();
    let run_id = format!("{:x}", greenbelt_registry::now_us());
    let say = |s: &str| (ctx.progress)(s);
    std::fs::create_dir_all(&ctx.workdir)
        .map_err(|e| PipelineError::Train(format!("workdir {}: {e}", ctx.workdir.display())))?;
    // Absolute, because external commands run in the pipeline file's directory.
    let workdir = std::fs::canonicalize(&ctx.workdir)
        .map_err(|e| PipelineError::Train(format!("workdir {}: {e}", ctx.workdir.display())))?;
    // Before any work: a rollout target that does not exist is a typo.
    let target = rollout_target(def, ctx)?;

    let mut data_def = def.data.clone();
    if let Some(h) = &def.data.historical {
        say(&format!(
            "[0/6] point-in-time retrieval: feature service \"{}\" for {} → {}",
            h.service,
            h.entities.display(),
            data_def.path.display()
        ));
        let t = Instant::now();
        let retrieval = ctx.historical.as_ref().ok_or_else(|| {
            PipelineError::Data(
                "[data.historical] needs the feature store; run the pipeline with `greenbelt pipeline run`".into(),
            )
        })?;
        if let Some(dir) = data_def.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| PipelineError::Data(format!("{}: {e}", dir.display())))?;
        }
        let features = retrieval
            .retrieve(h, &data_def.path)
            .await
            .map_err(|e| PipelineError::Data(format!("[data.historical]: {e}")))?;
        if data_def.features.is_none() {
            data_def.features = Some(features);
        }
        timings.insert("historical".to_string(), ms(t.elapsed()));
    }
    say(&format!("[1/6] load and check {}", def.data.path.display()));
    let t = Instant::now();
    let path = def.data.path.clone();
    let data_def_load = data_def.clone();
    let (table, prepared) = tokio::task::spawn_blocking(move || {
        let table = dataset::read(&path)?;
        let prepared = dataset::prepare(&table, &data_def_load)?;
        Ok::<_, PipelineError>((table, prepared))
    })
    .await
    .map_err(|e| PipelineError::Data(format!("load task failed: {e}")))??;
    let (table_sha, rows) = (table.sha256.clone(), table.rows);
    timings.insert("load".to_string(), ms(t.elapsed()));
    say(&format!(
        "      {rows} rows, {} features, {} split: {} train / {} holdout",
        prepared.features.len(),
        prepared.split.kind,
        prepared.split.train_rows,
        prepared.split.holdout_rows
    ));

    say("[2/6] train");
    let t = Instant::now();
    let (onnx, trainer) = train(def, &prepared, &workdir).await?;
    timings.insert("train".to_string(), ms(t.elapsed()));

    say("[3/6] evaluate candidate and champion on the holdout");
    let t = Instant::now();
    let candidate_file = workdir.join(format!("candidate-{run_id}.onnx"));
    std::fs::write(&candidate_file, &onnx).map_err(|e| PipelineError::Evaluate(e.to_string()))?;
    let candidate = load(&ctx.runtimes, &candidate_file)?;
    // As the runtime sees it: what the registry records and servers check.
    let candidate_signature = candidate.signature().clone();
    let mut candidate_metrics = evaluate(candidate.clone(), &prepared, def.data.task).await?;
    let profile = reference_profile(candidate.clone(), &prepared, def.data.task).await?;
    let champion = match ctx.registry.alias(&def.model, &def.alias).await? {
        None => None,
        Some(v) => {
            let record = ctx.registry.version(&def.model, v).await?;
            let bytes = ctx
                .artifacts
                .get(&record.artifact_uri, &record.sha256)
                .await?;
            let file = workdir.join(format!("champion-{}.onnx", record.sha256));
            std::fs::write(&file, &bytes).map_err(|e| PipelineError::Evaluate(e.to_string()))?;
            let model = load(&ctx.runtimes, &file)?;
            // The champion sees the same holdout rows through its own features.
            let features: Vec<String> = record.lineage["features"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .filter(|f: &Vec<String>| !f.is_empty())
                .unwrap_or_else(|| prepared.features.clone());
            let mut champ_data = prepared.clone();
            champ_data.holdout_x = dataset::matrix(&table, &features, &prepared.holdout_rows)?;
            champ_data.features = features;
            let mut metrics = evaluate(model.clone(), &champ_data, def.data.task).await?;
            let lat = latency(model, &champ_data, &def.latency).await?;
            metrics.extend(lat);
            Some(ChampionInfo {
                version: v,
                metrics,
            })
        }
    };
    timings.insert("evaluate".to_string(), ms(t.elapsed()));

    say(&format!(
        "[4/6] latency SLO: {} requests at concurrency {}",
        def.latency.requests, def.latency.concurrency
    ));
    let t = Instant::now();
    candidate_metrics.extend(latency(candidate, &prepared, &def.latency).await?);
    timings.insert("latency".to_string(), ms(t.elapsed()));

    say("[5/6] gate");
    let rules: Vec<Rule> = def
        .gates
        .iter()
        .map(|g| Rule::parse(g))
        .collect::<Result<_, _>>()?;
    let results = gates::evaluate(
        &rules,
        &candidate_metrics,
        champion.as_ref().map(|c| &c.metrics),
    );
    let passed = results.iter().all(|r| r.outcome != "fail");
    for r in &results {
        say(&format!("      [{}] {}", r.outcome.to_uppercase(), r.rule));
    }

    say("[6/6] register and promote");
    let t = Instant::now();
    let (uri, sha) = ctx.artifacts.put(onnx.into(), "onnx").await?;
    let (profile_uri, profile_sha) = ctx.artifacts.put(profile.into(), "json").await?;
    let gate_report = json!({
        "run_id": run_id,
        "pipeline": def.name,
        "passed": passed,
        "rules": results,
        "champion": champion.as_ref().map(|c| json!({"version": c.version, "metrics": c.metrics})),
    });
    let signature = json!({
        "inputs": candidate_signature.inputs,
        "outputs": candidate_signature.outputs,
        "features": prepared.features,
    });
    let code = lineage::code_reference(def, &trainer).await;
    let version = ctx
        .registry
        .register(NewVersion {
            model: def.model.clone(),
            artifact_uri: uri,
            sha256: sha,
            format: "onnx".into(),
            signature,
            params: trainer.clone(),
            metrics: serde_json::to_value(&candidate_metrics).unwrap_or_default(),
            gate_report: gate_report.clone(),
            lineage: json!({
                "dataset": def.data.path.display().to_string(),
                "historical": def.data.historical.as_ref().map(|h| json!({
                    "service": h.service,
                    "definitions": h.definitions.display().to_string(),
                    "entities": h.entities.display().to_string(),
                    "as_of_known_time": h.as_of_known_time,
                    "from_offline_store": h.from_offline_store,
                })),
                "dataset_sha256": table_sha,
                "rows": rows,
                "label": def.data.label,
                "features": prepared.features,
                "split": prepared.split,
                "pipeline": def.name,
                "run_id": run_id,
                "code": code,
                "parent": Value::Null,
                "profile": { "uri": profile_uri, "sha256": profile_sha },
            }),
            tags: json!({ "pipeline": def.name, "status": if passed { "passed" } else { "rejected" } }),
            created_by: ctx.actor.clone(),
        })
        .await?
        .version;
    if std::env::var("GREENBELT_PIPELINE_FAULT").as_deref() == Ok("after-register") {
        // Fault injection for the crash-consistency test: die between steps.
        say("      fault injected: aborting between register and promote");
        std::process::abort();
    }
    let promotion = if passed {
        let reason = format!(
            "pipeline {} run {run_id}: {}/{} gates passed",
            def.name,
            results.iter().filter(|r| r.outcome == "pass").count(),
            results.len()
        );
        let p = promote(def, ctx, target, version, &reason).await?;
        say(&format!("      {}", p.note));
        p
    } else {
        Promotion {
            mode: def.promote,
            outcome: "none".into(),
            deployment: target.map(|d| d.name.clone()),
            rollout_id: None,
            note: format!("a gate failed; @{} unchanged", def.alias),
        }
    };
    let promoted = promotion.outcome == "alias_moved";
    timings.insert("register_promote".to_string(), ms(t.elapsed()));
    timings.insert("total".to_string(), ms(started.elapsed()));
    let _ = std::fs::remove_file(&candidate_file);
    Ok(Report {
        pipeline: def.name.clone(),
        run_id,
        model: def.model.clone(),
        alias: def.alias.clone(),
        dataset: json!({ "path": def.data.path.display().to_string(), "sha256": table_sha, "rows": rows }),
        split: prepared.split.clone(),
        trainer,
        candidate_metrics,
        champion,
        gates: results,
        passed,
        registered_version: version,
        promoted,
        promotion,
        timings_ms: timings,
    })
}

/// With `promote = "rollout"`: the deployment to release on, checked
/// against the pipeline (same model, same alias).
fn rollout_target<'a>(
    def: &PipelineDef,
    ctx: &'a RunContext,
) -> Result<Option<&'a DeploymentConfig>, PipelineError> {
    let (Promote::Rollout, Some(name)) = (def.promote, &def.deployment) else {
        return Ok(None);
    };
    let dep = ctx
        .deployments
        .iter()
        .find(|d| &d.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = ctx.deployments.iter().map(|d| d.name.as_str()).collect();
            PipelineError::Definition(format!(
                "deployment = \"{name}\" is not a [[deployments]] entry of the project config (it has: {}); add it to greenbelt.toml or use promote = \"alias\"",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })?;
    if dep.model() != def.model || dep.alias != def.alias {
        return Err(PipelineError::Definition(format!(
            "deployment \"{name}\" serves {}@{}, but the pipeline promotes {}@{}; make model and alias agree",
            dep.model(),
            dep.alias,
            def.model,
            def.alias
        )));
    }
    Ok(Some(dep))
}

/// Promote `version`, which passed every gate: move the alias, or start a
/// canary rollout on `target` (the way `greenbelt rollout start` does). A
/// deployment whose alias points nowhere yet has nothing to canary
/// against: its first version gets the alias at once.
async fn promote(
    def: &PipelineDef,
    ctx: &RunContext,
    target: Option<&DeploymentConfig>,
    version: i64,
    reason: &str,
) -> Result<Promotion, PipelineError> {
    let alias_moved = |note: String| Promotion {
        mode: def.promote,
        outcome: "alias_moved".into(),
        deployment: target.map(|d| d.name.clone()),
        rollout_id: None,
        note,
    };
    let Some(dep) = target else {
        ctx.registry
            .set_alias(&def.model, &def.alias, version, &ctx.actor, reason)
            .await?;
        return Ok(alias_moved(format!("promoted to @{}", def.alias)));
    };
    if ctx.registry.alias(&def.model, &dep.alias).await?.is_none() {
        let reason = format!("{reason}; first version of deployment {}", dep.name);
        ctx.registry
            .set_alias(&def.model, &def.alias, version, &ctx.actor, &reason)
            .await?;
        return Ok(alias_moved(format!(
            "promoted to @{} at once: no version behind it yet to roll out against",
            def.alias
        )));
    }
    let now = crate::rollout::controller::wall_ms();
    let r = crate::rollout::start(&ctx.registry, dep, version, None, &ctx.actor, now)
        .await
        .map_err(|e| {
            PipelineError::Promote(format!(
                "{} version {version} passed every gate and is registered, but its rollout on \"{}\" did not start: {e}; start it with `greenbelt rollout start {} --version {version}`",
                def.model, dep.name, dep.name
            ))
        })?;
    Ok(Promotion {
        mode: def.promote,
        outcome: "rollout_started".into(),
        deployment: Some(dep.name.clone()),
        rollout_id: Some(r.id.clone()),
        note: format!(
            "canary rollout {} started on {}: v{} → v{}; @{} moves when it is promoted (`greenbelt rollout status {} --watch`)",
            r.id, dep.name, r.stable, r.candidate, def.alias, dep.name
        ),
    })
}

async fn train(
    def: &PipelineDef,
    data: &dataset::Prepared,
    workdir: &Path,
) -> Result<(Vec<u8>, Value), PipelineError> {
    match &def.train {
        TrainDef::Builtin { algorithm, params } => {
            let algorithm = algorithm.clone();
            let params = params.clone();
            let data = data.clone();
            let task = def.data.task;
            tokio::task::spawn_blocking(move || {
                let x = DenseMatrix::new(&data.train_x, data.train_y.len(), data.features.len())
                    .map_err(|e| PipelineError::Train(e.to_string()))?;
                let terr = |e: greenbelt_train::TrainError| PipelineError::Train(e.to_string());
                let gbdt_params = |params: toml::Table| -> Result<GbdtParams, PipelineError> {
                    toml::Value::Table(params)
                        .try_into()
                        .map_err(|e| PipelineError::Definition(format!("train.params for gbdt: {e}")))
                };
                match (task, algorithm.as_str()) {
                    (Task::Regression, "linreg") => {
                        let p: LinRegParams = toml::Value::Table(params)
                            .try_into()
                            .map_err(|e| PipelineError::Definition(format!("train.params for linreg: {e}")))?;
                        let m = greenbelt_train::linreg::fit(&x, &data.train_y, &p).map_err(terr)?;
                        let onnx = greenbelt_train::export_linreg(&m, &data.features).map_err(terr)?;
                        Ok((onnx, json!({"kind": "builtin", "algorithm": "linreg", "params": p})))
                    }
                    (Task::Regression, "gbdt") => {
                        let p = gbdt_params(params)?;
                        let m = greenbelt_train::gbdt::fit_regression(&x, &data.train_y, &p).map_err(terr)?;
                        let onnx = greenbelt_train::export_gbdt(&m, &data.features).map_err(terr)?;
                        Ok((onnx, json!({"kind": "builtin", "algorithm": "gbdt", "objective": m.objective, "params": p})))
                    }
                    (Task::Classification, "logreg") => {
                        let p: LogRegParams = toml::Value::Table(params)
                            .try_into()
                            .map_err(|e| PipelineError::Definition(format!("train.params for logreg: {e}")))?;
                        let m = greenbelt_train::logreg::fit(&x, &data.train_y, &p).map_err(terr)?;
                        let onnx = greenbelt_train::export_logreg(&m, &data.features).map_err(terr)?;
                        Ok((onnx, json!({"kind": "builtin", "algorithm": "logreg", "params": p, "converged": m.converged})))
                    }
                    (Task::Classification, "gbdt") => {
                        let p = gbdt_params(params)?;
                        let m = greenbelt_train::gbdt::fit(&x, &data.train_y, &p).map_err(terr)?;
                        let onnx = greenbelt_train::export_gbdt(&m, &data.features).map_err(terr)?;
                        Ok((onnx, json!({"kind": "builtin", "algorithm": "gbdt", "params": p})))
                    }
                    (task, other) => Err(PipelineError::Definition(format!(
                        "train.algorithm \"{other}\" is not a built-in trainer for task = {task:?}"
                    ))),
                }
            })
            .await
            .map_err(|e| PipelineError::Train(format!("training task failed: {e}")))?
        }
        TrainDef::Command { command, timeout_s } => {
            let train_csv = workdir.join("train.csv");
            let holdout_csv = workdir.join("holdout.csv");
            let output = workdir.join("model.onnx");
            let _ = std::fs::remove_file(&output);
            dataset::write_csv(
                &train_csv,
                &data.features,
                &def.data.label,
                &data.train_x,
                &data.train_y,
            )?;
            dataset::write_csv(
                &holdout_csv,
                &data.features,
                &def.data.label,
                &data.holdout_x,
                &data.holdout_y,
            )?;
            let fill = |arg: &str| {
                arg.replace("{train}", &train_csv.display().to_string())
                    .replace("{holdout}", &holdout_csv.display().to_string())
                    .replace("{output}", &output.display().to_string())
                    .replace("{features}", &data.features.join(","))
                    .replace("{label}", &def.data.label)
                    .replace("{workdir}", &workdir.display().to_string())
            };
            let mut args: Vec<String> = command.iter().map(|a| fill(a)).collect();
            // `python3` means the interpreter in $GREENBELT_PYTHON when set (a venv).
            if args.first().map(String::as_str) == Some("python3")
                && let Ok(py) = std::env::var("GREENBELT_PYTHON")
                && !py.is_empty()
            {
                args[0] = py;
            }
            let Some((program, rest)) = args.split_first() else {
                return Err(PipelineError::Definition("train.command is empty".into()));
            };
            let dir = if def.base_dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                def.base_dir.as_path()
            };
            let child = tokio::process::Command::new(program)
                .args(rest)
                .current_dir(dir)
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(*timeout_s), child)
                .await
                .map_err(|_| {
                    PipelineError::Train(format!(
                        "`{}` ran longer than {timeout_s} s",
                        args.join(" ")
                    ))
                })?
                .map_err(|e| PipelineError::Train(format!("cannot run `{program}`: {e}")))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(PipelineError::Train(format!(
                    "`{}` exited with {}:\n{tail}",
                    args.join(" "),
                    out.status
                )));
            }
            let onnx = std::fs::read(&output).map_err(|e| {
                PipelineError::Train(format!(
                    "`{}` succeeded but wrote no model at {}: {e}",
                    args.join(" "),
                    output.display()
                ))
            })?;
            Ok((onnx, json!({"kind": "command", "command": command})))
        }
    }
}

fn load(runtimes: &Runtimes, file: &Path) -> Result<Arc<dyn Model>, PipelineError> {
    let model = runtimes
        .load(file, &LoadOptions::default())
        .map_err(|e| PipelineError::Evaluate(e.to_string()))?;
    let sig = model.signature();
    if sig.inputs.len() != 1 {
        return Err(PipelineError::Evaluate(format!(
            "the model must take one FP32 [N, features] input; it takes {:?}",
            sig.inputs
        )));
    }
    Ok(model)
}

/// Per row, through the runtime: the probability of class 1
/// (classification) or the prediction (regression).
/// The output evaluated (and profiled): class probabilities for a
/// classifier, the first floating-point output for a regressor.
fn prediction_output(sig: &greenbelt_core::Signature, task: definition::Task) -> Option<usize> {
    use greenbelt_core::DataType;
    let float = |d: DataType| matches!(d, DataType::Fp32 | DataType::Fp64);
    match task {
        definition::Task::Classification => sig
            .outputs
            .iter()
            .position(|o| o.name == "probabilities" || o.name == "output_probability")
            .or_else(|| {
                sig.outputs
                    .iter()
                    .position(|o| o.datatype == DataType::Fp32)
            }),
        definition::Task::Regression => sig.outputs.iter().position(|o| float(o.datatype)),
    }
}

/// The candidate's reference profile: its training features and its
/// predictions on the holdout (see `greenbelt_drift::model`), as the JSON
/// the registry stores as an artifact and servers read beside the model.
async fn reference_profile(
    model: Arc<dyn Model>,
    data: &dataset::Prepared,
    task: definition::Task,
) -> Result<Vec<u8>, PipelineError> {
    let data = data.clone();
    tokio::task::spawn_blocking(move || {
        let sig = model.signature();
        let fail = |e: String| PipelineError::Evaluate(format!("reference profile: {e}"));
        let input = sig
            .inputs
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let output = prediction_output(sig, task)
            .and_then(|i| sig.outputs.get(i))
            .map(|o| o.name.clone())
            .ok_or_else(|| fail("the model has no floating-point output".into()))?;
        let cols = data.features.len();
        let scores = predict(model.as_ref(), &data.holdout_x, cols, task)?;
        let task = match task {
            definition::Task::Classification => greenbelt_drift::model::Task::Classification,
            definition::Task::Regression => greenbelt_drift::model::Task::Regression,
        };
        // `predict` gives one value per row (P(class 1), or the value).
        let profile = greenbelt_drift::model::ModelProfile::build(
            task,
            &input,
            &data.features,
            &data.train_x,
            &output,
            &scores,
            1,
        )
        .map_err(|e| fail(e.to_string()))?;
        serde_json::to_vec(&profile).map_err(|e| fail(e.to_string()))
    })
    .await
    .map_err(|e| PipelineError::Evaluate(format!("profile task failed: {e}")))?
}

fn predict(
    model: &dyn Model,
    x: &[f64],
    cols: usize,
    task: definition::Task,
) -> Result<Vec<f64>, PipelineError> {
    let sig = model.signature();
    let input = sig
        .inputs
        .first()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let index = prediction_output(sig, task).ok_or_else(|| {
        PipelineError::Evaluate("the model has no floating-point output to evaluate".into())
    })?;
    let mut out = Vec::with_capacity(x.len() / cols.max(1));
    for chunk in x.chunks(cols.max(1) * 1024) {
        let rows = chunk.len() / cols.max(1);
        let t = Tensor::new(
            input.clone(),
            vec![rows as i64, cols as i64],
            TensorData::Fp32(chunk.iter().map(|v| *v as f32).collect()),
        )
        .map_err(|e| PipelineError::Evaluate(e.to_string()))?;
        let outputs = model
            .infer(&[t])
            .map_err(|e| PipelineError::Evaluate(e.to_string()))?;
        let o = outputs
            .get(index)
            .ok_or_else(|| PipelineError::Evaluate("the evaluated output is missing".into()))?;
        let values: Vec<f64> = match &o.data {
            TensorData::Fp32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            TensorData::Fp64(v) => v.clone(),
            _ => {
                return Err(PipelineError::Evaluate(format!(
                    "output \"{}\" is not floating point",
                    o.name
                )));
            }
        };
        let width = (values.len() / rows.max(1)).max(1);
        // Classification: the last column is P(class 1); regression: one value per row.
        out.extend(
            values
                .chunks(width)
                .map(|row| row.last().copied().unwrap_or(0.0)),
        );
    }
    Ok(out)
}

async fn evaluate(
    model: Arc<dyn Model>,
    data: &dataset::Prepared,
    task: definition::Task,
) -> Result<BTreeMap<String, f64>, PipelineError> {
    let x = data.holdout_x.clone();
    let y = data.holdout_y.clone();
    let cols = data.features.len();
    tokio::task::spawn_blocking(move || {
        let p = predict(model.as_ref(), &x, cols, task)?;
        let fail = |e: greenbelt_train::TrainError| PipelineError::Evaluate(e.to_string());
        match task {
            definition::Task::Classification => {
                Ok(metrics_map(&BinaryMetrics::evaluate(&y, &p).map_err(fail)?))
            }
            definition::Task::Regression => Ok(BTreeMap::from([
                (
                    "rmse".to_string(),
                    greenbelt_train::metrics::rmse(&y, &p).map_err(fail)?,
                ),
                (
                    "mae".to_string(),
                    greenbelt_train::metrics::mae(&y, &p).map_err(fail)?,
                ),
            ])),
        }
    })
    .await
    .map_err(|e| PipelineError::Evaluate(format!("evaluation task failed: {e}")))?
}

/// In-process load test: `requests` single-row inferences from `concurrency`
/// workers on the blocking pool; returns p50_ms and p99_ms.
async fn latency(
    model: Arc<dyn Model>,
    data: &dataset::Prepared,
    def: &definition::LatencyDef,
) -> Result<BTreeMap<String, f64>, PipelineError> {
    let cols = data.features.len();
    let input = model
        .signature()
        .inputs
        .first()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let rows: Arc<Vec<Tensor>> = Arc::new(
        data.holdout_x
            .chunks(cols.max(1))
            .take(256)
            .map(|r| {
                Tensor::new(
                    input.clone(),
                    vec![1, cols as i64],
                    TensorData::Fp32(r.iter().map(|v| *v as f32).collect()),
                )
                .map_err(|e| PipelineError::Evaluate(e.to_string()))
            })
            .collect::<Result<_, _>>()?,
    );
    let per_worker = def.requests.div_ceil(def.concurrency);
    let mut workers = Vec::new();
    for w in 0..def.concurrency {
        let model = model.clone();
        let rows = rows.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let t = rows[(w * per_worker + i) % rows.len().max(1)].clone();
                let m = model.clone();
                let start = Instant::now();
                let r = tokio::task::spawn_blocking(move || m.infer(&[t])).await;
                lat.push(start.elapsed());
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        return Err(PipelineError::Evaluate(format!("latency test: {e}")));
                    }
                    Err(e) => return Err(PipelineError::Evaluate(format!("latency test: {e}"))),
                }
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(def.requests);
    for w in workers {
        all.extend(
            w.await
                .map_err(|e| PipelineError::Evaluate(e.to_string()))??,
        );
    }
    all.sort();
    let q = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(all.len().saturating_sub(1));
        all.get(i).map_or(0.0, |d| ms(*d))
    };
    Ok(BTreeMap::from([
        ("p50_ms".to_string(), q(0.5)),
        ("p99_ms".to_string(), q(0.99)),
    ]))
}
