//! The autoscaler's settings and its live state: `[autoscale]` (on or off,
//! how often, how many replicas this server is one of) and a deployment's
//! `[deployments.autoscale]` policy, parsed and validated here; and
//! [`Autoscaler`], which each evaluation reads every served model's live
//! counters (`live.rs`: answered requests and their latencies, busy time;
//! the per-outcome request counters for arrivals), turns the interval into
//! an [`Observation`] and asks that model's [`Recommender`]
//! (`greenbelt_core::autoscale`, pure). The result goes to
//! `greenbelt_autoscaler_*` on `/metrics` and `GET /admin/autoscaler`.
//! The same evaluation scales what one process can: for deployments with
//! `[deployments.instances]`, each version's model instances and batch
//! concurrency, from a recommender of its own (`instances.rs`).
//!
//! What it reads costs the request path nothing new but one atomic add
//! (`busy_us`). The loop that calls [`Autoscaler::evaluate`] is a
//! background task of `greenbelt-app`'s `App`; this module owns no task
//! and reads no clock (`now` is an argument).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenbelt_core::autoscale::{
    Algorithm, Metric, Observation, Policy, Recommendation, Recommender,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::instances::{InstanceSettings, VersionScaler};
use crate::live::LiveSnapshot;
use crate::metrics::{AutoscalerGauges, Metrics};
use crate::repository::Repository;

/// Fewest answers in an interval for its p99 to count.
const MIN_P99_SAMPLES: u64 = 10;

/// What an interval of `secs` whose counts are `delta` says of load: the
/// average requests in flight (Little's law on the time they spent in the
/// server) and the p99 in seconds (`None` under [`MIN_P99_SAMPLES`]
/// answers).
pub(crate) fn interval_load(delta: &LiveSnapshot, secs: f64) -> (f64, Option<f64>) {
    let concurrency = delta.busy_us as f64 / 1e6 / secs;
    let p99_s = (delta.requests >= MIN_P99_SAMPLES).then(|| delta.quantile_ms(0.99) / 1000.0);
    (concurrency, p99_s)
}

/// `[autoscale]`: the autoscaler of every served model.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleConfig {
    /// Evaluate at all (the replica recommendation is exported; in process
    /// only `[deployments.instances]` is acted on).
    pub enabled: bool,
    /// Time between evaluations (humantime; Knative's tick is 2s).
    pub interval: String,
    /// How many replicas of this server share the traffic (behind one
    /// Service). A server sees only its share, so its observation times
    /// this is the deployment total the recommendation is made from.
    pub replicas: u32,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            enabled: true,
            interval: "2s".into(),
            replicas: 1,
        }
    }
}

impl AutoscaleConfig {
    pub fn interval(&self) -> Result<Duration, String> {
        let d = crate::deployment::duration("[autoscale] interval", &self.interval)?;
        if d < Duration::from_millis(10) {
            return Err(format!(
                "[autoscale] interval = \"{}\" must be at least 10ms",
                self.interval
            ));
        }
        Ok(d)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.interval()?;
        if self.replicas == 0 {
            return Err("[autoscale] replicas must be >= 1".into());
        }
        Ok(())
    }
}

/// `[deployments.autoscale]`: one deployment's policy. Names follow
/// Knative's config-autoscaler keys and HPA's behavior fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleSpec {
    /// `kpa` (Knative, default) or `hpa` (Kubernetes HPA v2) for the load
    /// metric.
    pub algorithm: Algorithm,
    /// `concurrency` (default) or `rps`.
    pub metric: Metric,
    /// What one replica can take of the metric. Default: concurrency, the
    /// server's compute threads (each runs one request at a time); rps, 200
    /// (Knative's default).
    pub target: Option<f64>,
    /// Share of the target to aim for (default 0.7, Knative's).
    pub target_utilization: f64,
    /// Fewest replicas recommended.
    pub min_replicas: u32,
    /// Most replicas recommended.
    pub max_replicas: u32,
    /// KPA: the window the stable recommendation averages over (humantime;
    /// 60s).
    pub stable_window: String,
    /// KPA: the short window that can trigger panic mode (humantime; 6s,
    /// shorter than `stable_window`).
    pub panic_window: String,
    /// KPA: panic when the panic window wants this percentage of the ready
    /// replicas (200).
    pub panic_threshold_percentage: f64,
    /// KPA: per evaluation, the recommendation is at most this times the
    /// ready replicas (1000).
    pub max_scale_up_rate: f64,
    /// KPA: per evaluation, the recommendation is at least the ready
    /// replicas divided by this (2).
    pub max_scale_down_rate: f64,
    /// HPA and the latency metric: no change within 1 ± tolerance (0.1).
    pub tolerance: f64,
    /// HPA: scale-down stabilization window (humantime; 300s).
    pub scale_down_stabilization: String,
    /// The p99 objective in milliseconds. Default: the `threshold_ms` of the
    /// deployment's latency `[[slo]]`, if it has one; none: latency is not
    /// a metric.
    pub latency_slo_ms: Option<f64>,
}

impl Default for AutoscaleSpec {
    fn default() -> Self {
        let p = Policy::default();
        AutoscaleSpec {
            algorithm: p.algorithm,
            metric: p.metric,
            target: None,
            target_utilization: p.target_utilization,
            min_replicas: p.min_replicas,
            max_replicas: p.max_replicas,
            stable_window: "60s".into(),
            panic_window: "6s".into(),
            panic_threshold_percentage: p.panic_threshold * 100.0,
            max_scale_up_rate: p.max_scale_up_rate,
            max_scale_down_rate: p.max_scale_down_rate,
            tolerance: p.tolerance,
            scale_down_stabilization: "300s".into(),
            latency_slo_ms: None,
        }
    }
}

impl AutoscaleSpec {
    /// The validated policy; `compute_threads` gives the default
    /// concurrency target and `slo_ms` the default latency objective.
    /// Errors name the field (`target = 0 must be a number > 0`).
    pub fn policy(&self, compute_threads: usize, slo_ms: Option<f64>) -> Result<Policy, String> {
        let target = self.target.unwrap_or(match self.metric {
            Metric::Concurrency => compute_threads.max(1) as f64,
            Metric::Rps => 200.0,
        });
        let latency_slo = match self.latency_slo_ms.or(slo_ms) {
            None => None,
            Some(ms) if ms.is_finite() && ms > 0.0 => Some(Duration::from_secs_f64(ms / 1000.0)),
            Some(ms) => return Err(format!("latency_slo_ms = {ms} must be > 0")),
        };
        let policy = Policy {
            algorithm: self.algorithm,
            metric: self.metric,
            target,
            target_utilization: self.target_utilization,
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            stable_window: crate::deployment::duration("stable_window", &self.stable_window)?,
            panic_window: crate::deployment::duration("panic_window", &self.panic_window)?,
            panic_threshold: self.panic_threshold_percentage / 100.0,
            max_scale_up_rate: self.max_scale_up_rate,
            max_scale_down_rate: self.max_scale_down_rate,
            tolerance: self.tolerance,
            scale_down_stabilization: crate::deployment::duration(
                "scale_down_stabilization",
                &self.scale_down_stabilization,
            )?,
            latency_slo,
            ..Policy::default()
        };
        if !(self.panic_threshold_percentage.is_finite() && self.panic_threshold_percentage > 100.0)
        {
            return Err(format!(
                "panic_threshold_percentage = {} must be > 100 (200 is Knative's default)",
                self.panic_threshold_percentage
            ));
        }
        if policy.stable_window > Duration::from_secs(3600) {
            return Err(format!(
                "stable_window = \"{}\" must be at most 1h",
                self.stable_window
            ));
        }
        policy.validate()?;
        Ok(policy)
    }
}

/// The latency objective of `deployment`: its latency `[[slo]]`'s threshold.
pub fn slo_ms(config: &crate::Config, deployment: &str) -> Option<f64> {
    config
        .slo
        .iter()
        .find(|s| s.deployment == deployment && s.kind == crate::slo::SloKind::Latency)
        .and_then(|s| s.threshold_ms)
}

/// One served model's cumulative counts at one evaluation.
#[derive(Debug, Clone, Default)]
struct Counts {
    live: LiveSnapshot,
    /// Every request by outcome (shed and client errors too): arrivals.
    arrivals: u64,
}

struct Entry {
    recommender: Recommender,
    /// Per version label, the counts at the last evaluation.
    last: HashMap<String, Counts>,
    last_at: Instant,
    latest: Option<Report>,
}

/// What `/admin/autoscaler` shows of one deployment.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub algorithm: Algorithm,
    pub metric: Metric,
    /// Target per replica × utilization.
    pub effective_target: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub latency_slo_ms: Option<f64>,
    /// This process's last interval.
    pub interval_s: f64,
    pub observed_concurrency: f64,
    pub observed_rps: f64,
    pub observed_p99_ms: Option<f64>,
    #[serde(flatten)]
    pub recommendation: Recommendation,
}

/// Every served model's recommender and its latest answer.
pub struct Autoscaler {
    config: AutoscaleConfig,
    /// Policies by deployment name (those with a `[[deployments]]` entry);
    /// every other served model gets `default_policy`.
    policies: BTreeMap<String, Policy>,
    default_policy: Policy,
    /// Latency `[[slo]]` thresholds (ms) by model, for models without a
    /// `[[deployments]]` entry.
    slo_ms: BTreeMap<String, f64>,
    started: Instant,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// `[deployments.instances]` by deployment name: those whose versions
    /// are scaled in process (`instances.rs`).
    instances: BTreeMap<String, InstanceSettings>,
    /// Their scalers, by deployment and version label.
    scalers: Mutex<BTreeMap<String, BTreeMap<String, VersionScaler>>>,
}

impl Autoscaler {
    /// Build from a validated config (a policy that fails validation here
    /// falls back to the defaults; [`crate::Config::load`] refuses it first).
    pub fn new(config: &crate::Config) -> Autoscaler {
        let threads = config.compute_threads();
        let default_policy = AutoscaleSpec::default()
            .policy(threads, None)
            .unwrap_or_default();
        let policies: BTreeMap<String, Policy> = config
            .deployments
            .iter()
            .map(|d| {
                let spec = d.autoscale.clone().unwrap_or_default();
                let policy = spec
                    .policy(threads, slo_ms(config, &d.name))
                    .unwrap_or_else(|_| default_policy.clone());
                (d.name.clone(), policy)
            })
            .collect();
        let slo_ms = config
            .slo
            .iter()
            .filter(|s| s.kind == crate::slo::SloKind::Latency)
            .filter_map(|s| s.threshold_ms.map(|t| (s.deployment.clone(), t)))
            .collect();
        let instances = config
            .deployments
            .iter()
            .filter_map(|d| {
                let spec = d.instances.as_ref()?;
                let replicas = policies.get(&d.name).unwrap_or(&default_policy);
                match spec.settings(replicas, threads) {
                    Ok(s) => Some((d.name.clone(), s)),
                    Err(e) => {
                        tracing::warn!(deployment = %d.name, error = %e, "[deployments.instances] ignored");
                        None
                    }
                }
            })
            .collect();
        Autoscaler {
            config: config.autoscale.clone(),
            policies,
            default_policy,
            slo_ms,
            started: Instant::now(),
            entries: Mutex::new(BTreeMap::new()),
            instances,
            scalers: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Time between evaluations.
    pub fn interval(&self) -> Duration {
        self.config.interval().unwrap_or(Duration::from_secs(2))
    }

    fn policy_for(&self, model: &str) -> Policy {
        self.policies.get(model).cloned().unwrap_or_else(|| {
            let mut p = self.default_policy.clone();
            p.latency_slo = self
                .slo_ms
                .get(model)
                .filter(|ms| ms.is_finite() && **ms > 0.0)
                .map(|ms| Duration::from_secs_f64(ms / 1000.0));
            p
        })
    }

    /// Evaluate every served model at `now`: read its counters, feed its
    /// recommender the interval since the last evaluation, publish the
    /// answer. A model seen for the first time only records its counts.
    /// Models no longer served are forgotten (with their series).
    pub fn evaluate(&self, repository: &Repository, metrics: &Metrics, now: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let loaded = repository.loaded();
        let names: Vec<String> = loaded.iter().map(|e| e.name.clone()).collect();
        self.scale_instances(&loaded, metrics, now);
        entries.retain(|name, _| {
            let keep = names.contains(name);
            if !keep {
                metrics.forget_autoscaler(name);
            }
            keep
        });
        for model in &loaded {
            let counts: HashMap<String, Counts> = model
                .versions
                .values()
                .map(|v| {
                    let arrivals = v.metrics.outcome_counts().iter().map(|(_, n)| n).sum();
                    (
                        v.version_label.to_string(),
                        Counts {
                            live: v.metrics.live(),
                            arrivals,
                        },
                    )
                })
                .collect();
            let Some(entry) = entries.get_mut(&model.name) else {
                entries.insert(
                    model.name.clone(),
                    Entry {
                        recommender: Recommender::new(self.policy_for(&model.name)),
                        last: counts,
                        last_at: now,
                        latest: None,
                    },
                );
                continue;
            };
            let elapsed = now.saturating_duration_since(entry.last_at);
            if elapsed.is_zero() {
                continue;
            }
            let mut delta = LiveSnapshot::default();
            let mut arrivals = 0u64;
            for (label, c) in &counts {
                let before = entry.last.get(label).cloned().unwrap_or_default();
                delta.add(&c.live.minus(&before.live));
                arrivals += c.arrivals.saturating_sub(before.arrivals);
            }
            let secs = elapsed.as_secs_f64();
            let (concurrency, p99_s) = interval_load(&delta, secs);
            let rps = arrivals as f64 / secs;
            let replicas = self.config.replicas.max(1);
            let total = f64::from(replicas);
            let at = now.saturating_duration_since(self.started);
            entry.recommender.observe(
                at,
                Observation {
                    concurrency: concurrency * total,
                    rps: rps * total,
                    p99_s,
                },
            );
            let rec = entry.recommender.recommend(at, replicas);
            let policy = entry.recommender.policy();
            metrics.set_autoscaler(
                &model.name,
                &AutoscalerGauges {
                    desired_replicas: rec.desired_replicas,
                    current_replicas: rec.current_replicas,
                    observed_concurrency: concurrency,
                    observed_rps: rps,
                    observed_p99_seconds: p99_s,
                    stable_value: rec.stable_value,
                    panic_value: rec.panic_value,
                    panic_mode: rec.panic_mode,
                    latency_ratio: rec.latency_ratio,
                },
            );
            entry.latest = Some(Report {
                algorithm: policy.algorithm,
                metric: policy.metric,
                effective_target: policy.effective_target(),
                min_replicas: policy.min_replicas,
                max_replicas: policy.max_replicas,
                latency_slo_ms: policy.latency_slo.map(|d| d.as_secs_f64() * 1000.0),
                interval_s: secs,
                observed_concurrency: concurrency,
                observed_rps: rps,
                observed_p99_ms: p99_s.map(|s| s * 1000.0),
                recommendation: rec,
            });
            entry.last = counts;
            entry.last_at = now;
        }
    }

    /// In-process scaling: every version of the deployments with
    /// `[deployments.instances]` (see `instances.rs`).
    fn scale_instances(
        &self,
        loaded: &[Arc<crate::repository::ModelEntry>],
        metrics: &Metrics,
        now: Instant,
    ) {
        if self.instances.is_empty() {
            return;
        }
        let Ok(mut scalers) = self.scalers.lock() else {
            return;
        };
        scalers.retain(|name, versions| {
            let keep = loaded.iter().any(|m| &m.name == name);
            if !keep {
                for label in versions.keys() {
                    metrics.forget_instances(name, label);
                }
            }
            keep
        });
        for model in loaded {
            if let Some(settings) = self.instances.get(&model.name) {
                let versions = scalers.entry(model.name.clone()).or_default();
                crate::instances::evaluate_deployment(versions, settings, model, metrics, now);
            }
        }
    }

    /// The latest recommendation of one deployment.
    pub fn latest(&self, deployment: &str) -> Option<Report> {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(deployment).and_then(|x| x.latest.clone()))
    }

    /// `GET /admin/autoscaler`.
    pub fn report(&self) -> serde_json::Value {
        let deployments: BTreeMap<String, Option<Report>> = self
            .entries
            .lock()
            .map(|e| {
                e.iter()
                    .map(|(k, v)| (k.clone(), v.latest.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let instances: BTreeMap<
            String,
            BTreeMap<String, Option<crate::instances::InstanceReport>>,
        > = self
            .scalers
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(d, versions)| {
                        let v = versions
                            .iter()
                            .map(|(label, scaler)| (label.clone(), scaler.latest().cloned()))
                            .collect();
                        (d.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({
            "enabled": self.config.enabled,
            "interval_s": self.interval().as_secs_f64(),
            "replicas": self.config.replicas,
            "deployments": deployments,
            "instances": instances,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_are_knatives_and_bad_values_name_the_field() {
        let p = AutoscaleSpec::default().policy(4, Some(100.0)).unwrap();
        assert_eq!(p.target, 4.0);
        assert_eq!(p.stable_window, Duration::from_secs(60));
        assert_eq!(p.panic_window, Duration::from_secs(6));
        assert_eq!(p.panic_threshold, 2.0);
        assert_eq!(p.latency_slo, Some(Duration::from_millis(100)));
        let rps = AutoscaleSpec {
            metric: Metric::Rps,
            ..Default::default()
        };
        assert_eq!(rps.policy(4, None).unwrap().target, 200.0);
        for (spec, field) in [
            (
                AutoscaleSpec {
                    target: Some(-1.0),
                    ..Default::default()
                },
                "target",
            ),
            (
                AutoscaleSpec {
                    stable_window: "forever".into(),
                    ..Default::default()
                },
                "stable_window",
            ),
            (
                AutoscaleSpec {
                    panic_threshold_percentage: 50.0,
                    ..Default::default()
                },
                "panic_threshold_percentage",
            ),
            (
                AutoscaleSpec {
                    min_replicas: 0,
                    ..Default::default()
                },
                "min_replicas",
            ),
            (
                AutoscaleSpec {
                    latency_slo_ms: Some(0.0),
                    ..Default::default()
                },
                "latency_slo_ms",
            ),
        ] {
            let e = spec.policy(4, None).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
