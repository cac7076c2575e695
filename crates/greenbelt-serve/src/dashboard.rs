//! The built-in dashboard: `GET /dashboard` (one HTML page embedded in the
//! binary, no CDN) reads `GET /dashboard/data`, a JSON view of the server's
//! own live windows, and refreshes itself. A sampler takes every version's
//! cumulative counts once a second and keeps a minute of them, so the page
//! shows rates and percentiles over the last `WINDOW` seconds without
//! Prometheus.
//!
//! Panels are drawn from the JSON by small functions in the page (see
//! `dashboard.html`: `PANELS`); a new panel is a field here and an entry there.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::infer::AppState;
use crate::live::LiveSnapshot;

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

/// Samples kept (one a second).
const KEEP: usize = 61;
/// The window the page shows, in seconds.
pub const WINDOW: u64 = 10;

/// (model, version).
type Key = (Arc<str>, Arc<str>);

/// A deployment's release as the rollout controller last saw it; the
/// controller (greenbelt-control) publishes it here every tick, so the
/// dashboard shows the rollout without reading the registry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutView {
    pub id: String,
    /// `progressing`, `paused`, `promoted`, `aborted`, ...
    pub phase: String,
    pub stable: i64,
    pub candidate: i64,
    /// Canary: the step being executed and the candidate's traffic share (0..=1).
    pub step: usize,
    pub weight: f64,
    /// Why it paused, was aborted or promoted.
    pub reason: Option<String>,
}

/// The latest [`RolloutView`] of each deployment.
#[derive(Default)]
pub struct RolloutBoard(Mutex<HashMap<String, RolloutView>>);

impl RolloutBoard {
    pub fn set(&self, deployment: &str, view: RolloutView) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(deployment.to_string(), view);
        }
    }

    pub fn get(&self, deployment: &str) -> Option<RolloutView> {
        self.0.lock().ok().and_then(|m| m.get(deployment).cloned())
    }
}

/// One version's cumulative counts at one instant.
#[derive(Clone)]
struct Sample {
    at: Instant,
    live: LiveSnapshot,
    queue_ns: u64,
    compute_ns: u64,
    timed: u64,
}

/// A minute of per-version samples.
#[derive(Default)]
pub struct Sampler {
    series: Mutex<HashMap<Key, VecDeque<Sample>>>,
}

impl Sampler {
    /// Sample every loaded version once a second until the process ends.
    pub fn spawn(self: Arc<Self>, state: std::sync::Weak<AppState>) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = state.upgrade() else { return };
                self.sample(&state, Instant::now());
            }
        });
    }

    fn sample(&self, state: &AppState, now: Instant) {
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let mut alive = Vec::new();
        for entry in state.repository.loaded() {
            for v in entry.versions.values() {
                let key = (v.model_name.clone(), v.version_label.clone());
                let stat = v.metrics.stats(&v.model_name, &v.version_label);
                let s = series.entry(key.clone()).or_default();
                if s.len() == KEEP {
                    s.pop_front();
                }
                s.push_back(Sample {
                    at: now,
                    live: v.metrics.live(),
                    queue_ns: stat.inference_stats.queue.ns,
                    compute_ns: stat.inference_stats.compute_infer.ns,
                    timed: stat.inference_stats.queue.count,
                });
                alive.push(key);
            }
        }
        series.retain(|k, _| alive.contains(k));
    }

    /// Per version over the last [`WINDOW`] seconds (or what there is).
    fn windows(&self) -> HashMap<Key, Value> {
        let Ok(series) = self.series.lock() else {
            return HashMap::new();
        };
        series
            .iter()
            .filter_map(|(k, s)| {
                let last = s.back()?;
                let first = s
                    .iter()
                    .rev()
                    .find(|x| last.at.duration_since(x.at) >= Duration::from_secs(WINDOW))
                    .or_else(|| s.front())?;
                let secs = last.at.duration_since(first.at).as_secs_f64();
                let w = last.live.since(&first.live);
                let timed = last.timed.saturating_sub(first.timed).max(1) as f64;
                let per_req_ms = |a: u64, b: u64| a.saturating_sub(b) as f64 / timed / 1e6;
                Some((
                    k.clone(),
                    json!({
                        "window_s": secs,
                        "rate_rps": if secs > 0.0 { w.requests as f64 / secs } else { 0.0 },
                        "p50_ms": w.p50_ms,
                        "p99_ms": w.p99_ms,
                        "error_rate": w.error_rate,
                        "queue_ms": per_req_ms(last.queue_ns, first.queue_ns),
                        "compute_ms": per_req_ms(last.compute_ns, first.compute_ns),
                    }),
                ))
            })
            .collect()
    }
}

/// `GET /dashboard/data`.
pub fn data(state: &AppState) -> Value {
    let windows = state.dashboard.windows();
    let mut inflight = 0i64;
    let models: Vec<Value> = state
        .repository
        .loaded()
        .iter()
        .map(|e| {
            let routing = e.routing.as_deref();
            let versions: Vec<Value> = e
                .versions
                .values()
                .map(|v| {
                    let track = match routing {
                        Some(r) if r.stable == v.version => "stable",
                        Some(r) if r.canary == Some(v.version) => "canary",
                        Some(r) if r.preview == Some(v.version) => "preview",
                        Some(r) if r.shadows.iter().any(|s| s.version == v.version) => "shadow",
                        Some(_) => "loaded",
                        None => "serving",
                    };
                    let key = (v.model_name.clone(), v.version_label.clone());
                    json!({
                        "version": &*v.version_label,
                        "track": track,
                        "window": windows.get(&key).cloned().unwrap_or(Value::Null),
                        "total": v.metrics.live().requests,
                        "drift": state.drift.summary(&e.name, v.version),
                    })
                })
                .collect();
            // agreement only: the shadow reports' worst samples are request data
            let shadows: Vec<Value> = if routing.is_some_and(|r| !r.shadows.is_empty()) {
                state
                    .shadows
                    .reports(&e.name)
                    .into_iter()
                    .map(|rep| {
                        json!({
                            "version": rep.version,
                            "compared": rep.counters.compared,
                            "agreement": rep.agreement,
                            "error_rate": rep.error_rate,
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            // in flight is counted per model
            let model_inflight = e
                .versions
                .values()
                .next()
                .map_or(0, |v| v.metrics.inflight_now());
            inflight += model_inflight;
            json!({
                "name": e.name,
                "inflight": model_inflight,
                "deployment": routing.is_some(),
                "canary_weight": routing.map(|r| f64::from(r.canary_bp) / 10_000.0),
                "rollout": state.rollouts.get(&e.name),
                "versions": versions,
                "shadows": shadows,
                "last_error": e.last_error,
            })
        })
        .collect();
    json!({
        "window_s": WINDOW,
        "server": {
            "ready": state.is_ready(),
            "inflight": inflight,
            "inflight_limit": state.config.server.max_inflight,
        },
        "models": models,
        "features": freshness(&state.metrics.external_text()),
        "alerts": state.alerts.report(),
        "cost": cost(state),
    })
}

/// Dollars per model since start (overhead apart), $ per hour and per 1M
/// predictions, and the budgets.
fn cost(state: &AppState) -> Value {
    let (report, now) = state
        .metrics
        .cost
        .report(None, greenbelt_core::cost::GroupBy::Model);
    let hours = now.at_seconds / 3600.0;
    let groups: Vec<Value> = report
        .groups
        .iter()
        .map(|g| {
            json!({
                "key": g.key,
                "dollars": g.dollars,
                "per_hour": if hours > 0.0 { g.dollars / hours } else { 0.0 },
                "per_million": g.dollars_per_million,
                "share": g.share,
            })
        })
        .collect();
    json!({
        "total": report.total_dollars,
        "per_million": report.dollars_per_million,
        "groups": groups,
        "budgets": state.budgets.report(),
    })
}

/// Feature views' age and breach, read from the freshness block the
/// feature store keeps on `/metrics`.
fn freshness(text: &str) -> Vec<Value> {
    let mut views: std::collections::BTreeMap<String, (Option<f64>, Option<f64>)> =
        Default::default();
    for line in text.lines() {
        for (metric, slot) in [
            ("greenbelt_feature_view_age_seconds{", 0),
            ("greenbelt_feature_view_freshness_breach{", 1),
        ] {
            let Some(rest) = line.strip_prefix(metric) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Some(view) = labels
                .strip_prefix("view=\"")
                .and_then(|v| v.strip_suffix('"'))
            else {
                continue;
            };
            let e = views.entry(view.to_string()).or_default();
            let v = value.trim().parse::<f64>().ok();
            if slot == 0 {
                e.0 = v;
            } else {
                e.1 = v;
            }
        }
    }
    views
        .into_iter()
        .map(|(view, (age, breach))| {
            json!({ "view": view, "age_s": age, "breach": breach.is_some_and(|b| b > 0.0) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_read_from_the_metrics_block() {
        let text = "# TYPE greenbelt_feature_view_age_seconds gauge\ngreenbelt_feature_view_age_seconds{view=\"tx\"} 12.5\ngreenbelt_feature_view_freshness_breach{view=\"tx\"} 1\ngreenbelt_feature_view_age_seconds{view=\"users\"} 3\n";
        let f = freshness(text);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0], json!({"view": "tx", "age_s": 12.5, "breach": true}));
        assert_eq!(
            f[1],
            json!({"view": "users", "age_s": 3.0, "breach": false})
        );
    }
}
