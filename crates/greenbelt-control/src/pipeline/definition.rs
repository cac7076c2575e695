//! A pipeline definition file (TOML). Every section is checked with
//! `deny_unknown_fields`, so a typo is an error with its line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PipelineError;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineDef {
    /// Pipeline name, recorded in lineage and audit reasons.
    pub name: String,
    /// Registry model the candidate is registered under.
    pub model: String,
    /// Alias promoted when every gate passes.
    #[serde(default = "champion")]
    pub alias: String,
    /// How a version that passed every gate is promoted: "alias" (the
    /// default) moves `alias` to it at once; "rollout" starts a canary
    /// rollout of it on `deployment` (with that deployment's
    /// `[deployments.rollout]` steps and analysis), which moves the alias
    /// when it is promoted.
    #[serde(default)]
    pub promote: Promote,
    /// With `promote = "rollout"`: the `[[deployments]]` entry of the
    /// project config (greenbelt.toml) to release on.
    #[serde(default)]
    pub deployment: Option<String>,
    /// The training data: file, label, features and the holdout split.
    pub data: DataDef,
    /// How the candidate is trained, chosen by `kind`.
    pub train: TrainDef,
    /// Gate rules, e.g. "auc >= 0.80", "auc >= champion.auc - 0.005",
    /// "log_loss <= champion.log_loss * 1.02", "p99_ms <= 5".
    #[serde(default)]
    pub gates: Vec<String>,
    /// The in-process load test behind `p50_ms` / `p99_ms` gates.
    #[serde(default)]
    pub latency: LatencyDef,
    /// The directory of the pipeline file; commands run there.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn champion() -> String {
    "champion".into()
}

/// How a pipeline promotes a version that passed its gates.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Promote {
    /// Move the alias at once.
    #[default]
    Alias,
    /// Start a canary rollout on a deployment.
    Rollout,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataDef {
    /// CSV or Parquet file, relative to the pipeline file. With
    /// `[data.historical]` it is where the retrieved training set is written.
    pub path: PathBuf,
    /// Build the training set by point-in-time retrieval from the feature
    /// store instead of reading `path` as given.
    #[serde(default)]
    pub historical: Option<HistoricalDef>,
    /// Label column: binary 0/1 (classification) or numeric (regression).
    pub label: String,
    /// Event-time column: when set, the split is by time (latest rows are the holdout).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Feature columns; default every numeric column but label, timestamp and `exclude`.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Columns never used as features (ids, keys).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Share of the rows held out to evaluate the candidate (and the
    /// champion) on, 0 < x < 1.
    #[serde(default = "holdout")]
    pub holdout_fraction: f64,
    /// Seed of the random split (used when there is no timestamp).
    #[serde(default)]
    pub seed: u64,
    /// "classification" (binary 0/1 label; the default) or "regression".
    #[serde(default)]
    pub task: Task,
}

/// `[data.historical]`: the training set is the feature service's values
/// for each entity row as of that row's time (`greenbelt features
/// historical`), joined to the entity rows, which carry the label.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoricalDef {
    /// Feature definitions (`features.toml`), relative to the pipeline file.
    pub definitions: PathBuf,
    /// The feature service; its features, in order, are the model's inputs.
    pub service: String,
    /// Entity rows (CSV or Parquet): join keys, event time, label.
    pub entities: PathBuf,
    /// Event-time column of the entity rows; default `data.timestamp`, else
    /// `event_timestamp`.
    #[serde(default)]
    pub entity_timestamp: Option<String>,
    /// Also require `created_ts <= entity time` (what was known then).
    #[serde(default)]
    pub as_of_known_time: bool,
    /// Read feature rows from the offline store (materialized, contracts
    /// applied, quarantined rows left out) instead of the views' sources.
    #[serde(default)]
    pub from_offline_store: bool,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A binary 0/1 label.
    #[default]
    Classification,
    /// A numeric label.
    Regression,
}

fn holdout() -> f64 {
    0.2
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TrainDef {
    /// Greenbelt's own trainers, exported to ONNX.
    Builtin {
        /// Classification: "logreg" or "gbdt" (log-loss); regression:
        /// "linreg" (ridge) or "gbdt" (squared error).
        algorithm: String,
        /// The trainer's parameters (scikit-learn's names), e.g. logreg
        /// `{ c = 1.0, max_iter = 100 }`, linreg `{ alpha = 1.0 }`, gbdt
        /// `{ n_estimators = 100, max_depth = 3, learning_rate = 0.1 }`.
        #[serde(default)]
        #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
        params: toml::Table,
    },
    /// Any program that writes an ONNX model. Placeholders: {train}, {holdout}
    /// (CSV files: features then label), {output} (ONNX to write), {features}
    /// (comma-separated names), {label}, {workdir}.
    Command {
        /// The program and its arguments, with placeholders.
        command: Vec<String>,
        /// The longest the command may run.
        #[serde(default = "command_timeout")]
        /// (Old key `timeout_s`, an integer in seconds, is still accepted.)
        #[serde(
            rename = "timeout",
            alias = "timeout_s",
            with = "greenbelt_core::duration::secs"
        )]
        #[schemars(with = "String")]
        timeout_s: u64,
    },
}

fn command_timeout() -> u64 {
    600
}

/// The in-process load test behind `p50_ms` / `p99_ms` gates.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyDef {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests sent in all.
    pub requests: usize,
}

impl Default for LatencyDef {
    fn default() -> Self {
        LatencyDef {
            concurrency: 4,
            requests: 2000,
        }
    }
}

impl PipelineDef {
    /// Read a pipeline file; relative data paths resolve against its directory.
    pub fn read(path: &Path) -> Result<PipelineDef, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PipelineError::Definition(format!("cannot read {}: {e}", path.display()))
        })?;
        let mut def: PipelineDef = toml::from_str(&text)
            .map_err(|e| PipelineError::Definition(format!("{}: {e}", path.display())))?;
        def.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if def.data.path.is_relative() {
            def.data.path = def.base_dir.join(&def.data.path);
        }
        if let Some(h) = &mut def.data.historical {
            for p in [&mut h.definitions, &mut h.entities] {
                if p.is_relative() {
                    *p = def.base_dir.join(&*p);
                }
            }
            if h.entity_timestamp.is_none() {
                h.entity_timestamp = Some(
                    def.data
                        .timestamp
                        .clone()
                        .unwrap_or_else(|| "event_timestamp".into()),
                );
            }
        }
        if let TrainDef::Builtin { algorithm, .. } = &def.train {
            let (task, allowed) = match def.data.task {
                Task::Classification => ("classification", ["logreg", "gbdt"]),
                Task::Regression => ("regression", ["linreg", "gbdt"]),
            };
            if !allowed.contains(&algorithm.as_str()) {
                return Err(PipelineError::Definition(format!(
                    "{}: train.algorithm \"{algorithm}\" is not a built-in trainer for task = \"{task}\"; use \"{}\" or \"{}\" (or [train] kind = \"command\")",
                    path.display(),
                    allowed[0],
                    allowed[1]
                )));
            }
        }
        if def.latency.concurrency == 0 || def.latency.requests == 0 {
            return Err(PipelineError::Definition(format!(
                "{}: latency.concurrency and latency.requests must be > 0",
                path.display()
            )));
        }
        for rule in &def.gates {
            super::gates::Rule::parse(rule)?;
        }
        match (def.promote, &def.deployment) {
            (Promote::Rollout, None) => {
                return Err(PipelineError::Definition(format!(
                    "{}: promote = \"rollout\" needs deployment = \"<name>\", the [[deployments]] entry of greenbelt.toml to release on",
                    path.display()
                )));
            }
            (Promote::Alias, Some(d)) => {
                return Err(PipelineError::Definition(format!(
                    "{}: deployment = \"{d}\" is only used with promote = \"rollout\"; add that, or remove deployment",
                    path.display()
                )));
            }
            _ => {}
        }
        Ok(def)
    }
}
