//! `[[deployments]]` in `greenbelt.toml` (also accepted as `[[routes]]`): a
//! name clients call, served from a registry model's alias, with the
//! release strategy `greenbelt rollout start` uses, the analysis that judges
//! a release, and standing shadows. Parsed here (serde, unknown keys are
//! errors) and checked by [`DeploymentConfig::validate`]; the rollout
//! controller in `greenbelt-control` executes it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Serve `name` from whatever version `model@alias` points to, and release
/// new versions of it safely.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The name clients use in `/v2/models/{name}`.
    pub name: String,
    /// Registry model; defaults to `name`.
    #[serde(default)]
    pub model: Option<String>,
    /// The alias the stable version follows.
    #[serde(default = "default_alias")]
    pub alias: String,
    /// Runtime settings for the versions this deployment loads.
    #[serde(default)]
    pub config: crate::repository::ModelConfig,
    /// Header whose value keeps a caller on one version during a canary
    /// (hashed; e.g. `x-user-id`). Unset: each request draws by weight.
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// How `greenbelt rollout start` releases a new version.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Standing shadows: versions that get a copy of live traffic.
    #[serde(default)]
    pub shadow: Vec<ShadowSpec>,
    /// Priority of requests without an `x-greenbelt-priority` header
    /// (low sheds first under overload).
    #[serde(default)]
    pub priority: crate::stages::limit::Priority,
    /// The autoscaler's policy for this deployment (`[deployments.autoscale]`;
    /// absent: the defaults, see `autoscale.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<crate::autoscale::AutoscaleSpec>,
    /// In-process scaling of each version's instances and batch
    /// concurrency (`[deployments.instances]`; absent: each version keeps
    /// `config.instances`, see `instances.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<crate::instances::InstancesSpec>,
    /// Requests outside the stable version's reference go to a challenger
    /// (`[deployments.drift_routing]`, see `drift/config.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_routing: Option<crate::drift::DriftRoutingSpec>,
}

fn default_alias() -> String {
    "champion".into()
}

impl DeploymentConfig {
    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or(&self.name)
    }

    /// `model = "models:/NAME@ALIAS"` (MLflow's model URI) is `model =
    /// "NAME"` with `alias = "ALIAS"`. A deployment follows an alias, so a
    /// URI naming a version or `latest` is refused, saying so.
    pub fn resolve_model_uri(&mut self) -> Result<(), String> {
        let Some(uri) = self.model.as_deref() else {
            return Ok(());
        };
        let Some(rest) = uri.strip_prefix("models:/") else {
            return Ok(());
        };
        let at = format!("[[deployments]] \"{}\": model \"{uri}\"", self.name);
        match rest.split_once('@') {
            Some((name, alias))
                if !name.is_empty()
                    && !alias.is_empty()
                    && !name.contains(['/', ':', '@'])
                    && !alias.contains(['/', ':', '@']) =>
            {
                let (name, alias) = (name.to_string(), alias.to_string());
                self.model = Some(name);
                self.alias = alias;
                Ok(())
            }
            _ => Err(format!(
                "{at}: a deployment follows an alias; write models:/NAME@ALIAS (e.g. models:/fraud@champion), or model = \"NAME\" with alias = \"ALIAS\""
            )),
        }
    }

    /// Check everything a typo could break, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let at = format!("[[deployments]] \"{}\"", self.name);
        if let Some(h) = &self.sticky_header
            && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(format!(
                "{at}: sticky_header \"{h}\" is not a valid header name"
            ));
        }
        for (i, s) in self.shadow.iter().enumerate() {
            s.validate()
                .map_err(|e| format!("{at}: shadow[{i}]: {e}"))?;
        }
        if let Some(r) = &self.drift_routing {
            r.validate(&self.shadow).map_err(|e| format!("{at}: {e}"))?;
        }
        let replicas = match &self.autoscale {
            // The defaults that depend on the server (target, SLO) are
            // filled in later; what is written is checked here.
            Some(a) => a
                .policy(1, None)
                .map_err(|e| format!("{at}: autoscale.{e}"))?,
            None => greenbelt_core::autoscale::Policy::default(),
        };
        let n = self.config.instances;
        if !(1..=greenbelt_runtime::MAX_INSTANCES).contains(&n) {
            return Err(format!(
                "{at}: config.instances = {n} must be between 1 and {}",
                greenbelt_runtime::MAX_INSTANCES
            ));
        }
        if let Some(i) = &self.instances {
            i.settings(&replicas, 1)
                .map_err(|e| format!("{at}: instances.{e}"))?;
            if let Some(max) = i.max.filter(|m| n > *m) {
                return Err(format!(
                    "{at}: config.instances = {n} is above instances.max = {max}; lower it or raise the bound"
                ));
            }
        }
        self.rollout
            .validate()
            .map_err(|e| format!("{at}: rollout.{e}"))
    }
}

/// A version that receives a copy of live traffic.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// Registry alias of the shadow (e.g. `challenger`); or set `version`.
    #[serde(default)]
    pub alias: Option<String>,
    /// A fixed registry version as the shadow; or set `alias`.
    #[serde(default)]
    pub version: Option<i64>,
    /// Share of requests copied, 0..=1.
    pub fraction: f64,
}

impl ShadowSpec {
    fn validate(&self) -> Result<(), String> {
        match (&self.alias, self.version) {
            (Some(_), Some(_)) | (None, None) => {
                return Err("set exactly one of alias or version".into());
            }
            (None, Some(v)) if v <= 0 => return Err(format!("version {v} must be >= 1")),
            _ => {}
        }
        fraction("fraction", self.fraction)
    }
}

fn fraction(field: &str, x: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&x) {
        Ok(())
    } else {
        Err(format!("{field} = {x} must be between 0 and 1"))
    }
}

/// Parse a duration like `30s`, `500ms`, `2m`.
pub fn duration(field: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{field} = \"{text}\" is not a duration like 30s or 500ms: {e}"))
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Shift traffic to the new version step by step (`steps`).
    #[default]
    Canary,
    /// Load the new version as a preview beside the active one, then
    /// switch all traffic at once.
    BlueGreen,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSpec {
    /// `canary` (traffic shifted by `steps`) or `blue_green` (a preview,
    /// then all traffic at once).
    pub strategy: Strategy,
    /// Canary steps, in order: `{ set_weight = 20 }` (percent),
    /// `{ pause = "30s" }` (or `{ pause = "" }`: until promoted by hand),
    /// `{ analysis = 3 }` (wait for 3 successful analysis runs).
    pub steps: Vec<StepSpec>,
    /// How each analysis run judges the release
    /// (`[deployments.rollout.analysis]`).
    pub analysis: AnalysisSpec,
    /// Blue/green: promote as soon as pre-promotion analysis passes (else
    /// wait for `greenbelt rollout promote`).
    pub auto_promote: bool,
    /// Blue/green: analysis runs this many times on the preview before
    /// promotion (0 = none).
    pub pre_promotion_analysis: u32,
    /// Blue/green: analysis runs this many times on the new active version
    /// after promotion; a failure switches back (0 = none).
    pub post_promotion_analysis: u32,
    /// Blue/green: how long the old version stays loaded after promotion.
    pub scale_down_delay: String,
    /// What a replica does when it cannot reach the registry database in
    /// the middle of a rollout (its analysis cannot be stored, so nothing
    /// can be promoted): `hold` keeps the traffic split as it is;
    /// `rollback` sends all traffic back to the stable version once the
    /// registry has been unreachable for `registry_error_grace`, and aborts
    /// the rollout when the registry answers again.
    pub on_registry_error: RegistryErrorPolicy,
    /// How long the registry may be unreachable before `rollback` acts.
    pub registry_error_grace: String,
}

/// [`RolloutSpec::on_registry_error`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RegistryErrorPolicy {
    /// Keep the traffic split as it is.
    #[default]
    Hold,
    /// Send all traffic back to the stable version after
    /// `registry_error_grace`.
    Rollback,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            strategy: Strategy::Canary,
            steps: vec![
                StepSpec::weight(10.0),
                StepSpec::analysis(2),
                StepSpec::weight(50.0),
                StepSpec::analysis(2),
            ],
            analysis: AnalysisSpec::default(),
            auto_promote: true,
            pre_promotion_analysis: 2,
            post_promotion_analysis: 2,
            scale_down_delay: "30s".into(),
            on_registry_error: RegistryErrorPolicy::Hold,
            registry_error_grace: "30s".into(),
        }
    }
}

impl RolloutSpec {
    pub fn validate(&self) -> Result<(), String> {
        for (i, s) in self.steps.iter().enumerate() {
            s.validate().map_err(|e| format!("steps[{i}]: {e}"))?;
        }
        if self.strategy == Strategy::Canary && self.steps.is_empty() {
            return Err("steps: a canary needs at least one step, e.g. { set_weight = 20 }".into());
        }
        duration("scale_down_delay", &self.scale_down_delay)?;
        duration("registry_error_grace", &self.registry_error_grace)?;
        self.analysis
            .validate()
            .map_err(|e| format!("analysis.{e}"))
    }
}

/// One canary step; exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Send this percentage (0..=100) of the traffic to the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<f64>,
    /// Wait this long (humantime); `""`: until promoted by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    /// Wait for this many successful analysis runs (>= 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<u32>,
}

impl StepSpec {
    pub fn weight(percent: f64) -> StepSpec {
        StepSpec {
            set_weight: Some(percent),
            ..StepSpec::default()
        }
    }

    pub fn analysis(count: u32) -> StepSpec {
        StepSpec {
            analysis: Some(count),
            ..StepSpec::default()
        }
    }

    pub fn pause(text: &str) -> StepSpec {
        StepSpec {
            pause: Some(text.to_string()),
            ..StepSpec::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        let set = [
            self.set_weight.is_some(),
            self.pause.is_some(),
            self.analysis.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            return Err("set exactly one of set_weight, pause, analysis".into());
        }
        if let Some(w) = self.set_weight
            && !(0.0..=100.0).contains(&w)
        {
            return Err(format!("set_weight = {w} must be a percentage 0..=100"));
        }
        if let Some(p) = &self.pause
            && !p.trim().is_empty()
        {
            duration("pause", p)?;
        }
        if self.analysis == Some(0) {
            return Err(
                "analysis = 0: give the number of successful runs to wait for (>= 1)".into(),
            );
        }
        Ok(())
    }
}

/// How a release is judged, on each version's own live metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisSpec {
    /// Time between analysis runs.
    pub interval: String,
    /// Failed runs tolerated; one more aborts the rollout.
    pub failure_limit: u32,
    /// Fewest requests the candidate must have served in an interval for a
    /// run to count; fewer = inconclusive, and the rollout pauses.
    pub min_samples: u64,
    /// Conditions every run must meet, e.g. `error_rate <= 0.01`,
    /// `p99_ms <= stable.p99_ms * 1.5 + 5`, `shadow_agreement >= 0.99`,
    /// `prom.my_query < 3`. Metrics: requests, errors, error_rate, p50_ms,
    /// p99_ms, shadow_agreement, shadow_error_rate, shadow_compared; each
    /// also as `stable.<metric>`.
    pub conditions: Vec<String>,
    /// Conditions that fail a run when they hold (Argo Rollouts'
    /// `failureCondition`), e.g. `error_rate > 0.05`: checked before
    /// `conditions`, and a failure even in a window below `min_samples`.
    pub failure_conditions: Vec<String>,
    /// Copy this share of the stable version's traffic to the candidate
    /// during the rollout, so its outputs can be compared (0 = no shadow).
    pub shadow_fraction: f64,
    /// Prometheus base URL for `prom.<name>` conditions.
    pub prometheus_url: Option<String>,
    /// Named PromQL queries; `{deployment}` and `{version}` are replaced.
    pub queries: BTreeMap<String, String>,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        AnalysisSpec {
            interval: "10s".into(),
            failure_limit: 0,
            min_samples: 50,
            conditions: vec!["error_rate <= 0.01".into()],
            failure_conditions: Vec::new(),
            shadow_fraction: 0.0,
            prometheus_url: None,
            queries: BTreeMap::new(),
        }
    }
}

impl AnalysisSpec {
    pub fn interval(&self) -> Result<Duration, String> {
        let d = duration("interval", &self.interval)?;
        if d < Duration::from_millis(10) {
            return Err(format!(
                "interval = \"{}\" must be at least 10ms",
                self.interval
            ));
        }
        Ok(d)
    }

    fn validate(&self) -> Result<(), String> {
        self.interval()?;
        fraction("shadow_fraction", self.shadow_fraction)?;
        if !self.queries.is_empty() && self.prometheus_url.is_none() {
            return Err("queries: set prometheus_url to use PromQL queries".into());
        }
        Ok(())
    }
}
