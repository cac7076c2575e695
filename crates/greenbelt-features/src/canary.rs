//! The synthetic freshness canaries. The push canary writes a sentinel
//! entity through the push path production data takes, reads it back
//! through the online API, and measures the end-to-end lag. The batch
//! canary covers source → materialize → online: every materialization that
//! writes a view to the online store also writes a batch sentinel carrying
//! the newest event time it delivered ([`batch_sentinel`]); the canary reads
//! that sentinel back through the online API and measures its age against
//! the view's freshness SLA, so a pipeline that stops (no materialization,
//! a source that stopped growing, a failing online write) shows up as an
//! ageing sentinel. `greenbelt features canary` runs both once; `serve`
//! runs them on a schedule and exports the results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::defs::{FeatureView, ValueType};
use crate::error::{FeatureError, Result};
use crate::online::service::{FieldStatus, OnlineRequest, OnlineService, PushRequest};
use crate::time::{format_ts, now_us, parse_ts};

/// Key value of the sentinel entity (never a real key: real string keys
/// cannot start with "__greenbelt").
pub const SENTINEL_KEY: &str = "__greenbelt_canary";

/// Key value of the batch path's sentinel entity.
pub const BATCH_SENTINEL_KEY: &str = "__greenbelt_batch_canary";

/// One canary run for one view.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryResult {
    pub view: String,
    /// Push → readable through the online API, in milliseconds.
    pub lag_ms: f64,
    /// The view's freshness SLA in seconds, if it has one.
    pub sla_seconds: Option<f64>,
    pub breach: bool,
    /// When the sentinel was written (UTC).
    pub at: String,
}

fn sentinel(t: ValueType, key: bool) -> Value {
    match (t, key) {
        (ValueType::String, true) => json!(SENTINEL_KEY),
        (ValueType::String, false) => json!("canary"),
        (ValueType::Int64, true) => json!(-424_242),
        (ValueType::Int64, false) => json!(0),
        (ValueType::Bool, k) => json!(k),
        (ValueType::Float64, _) => json!(0.0),
    }
}

/// Push a sentinel row for `view` and poll it back (every 20 ms, at most
/// `timeout`). Contract rules apply to the push as to any other.
pub async fn run(svc: &OnlineService, view_name: &str, timeout: Duration) -> Result<CanaryResult> {
    let defs = svc.definitions().clone();
    let view = defs.view(view_name)?;
    let written_at = now_us();
    let mut df = BTreeMap::new();
    let mut entities = BTreeMap::new();
    for k in &view.join_keys {
        let v = sentinel(k.dtype, true);
        df.insert(k.name.clone(), vec![v.clone()]);
        entities.insert(k.name.clone(), vec![v]);
    }
    df.insert("event_timestamp".into(), vec![json!(format_ts(written_at))]);
    for f in &view.features {
        df.insert(f.name.clone(), vec![sentinel(f.dtype, false)]);
    }
    svc.push(&PushRequest {
        feature_view: view_name.to_string(),
        df,
    })
    .await?;
    let req = OnlineRequest {
        entities,
        feature_service: None,
        features: Some(
            view.features
                .iter()
                .map(|f| format!("{view_name}:{}", f.name))
                .collect(),
        ),
        full_feature_names: false,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let want = format_ts(written_at);
    loop {
        let resp = svc.get_online_features(&req).await?;
        let seen = resp
            .results
            .last()
            .and_then(|c| c.event_timestamps.first())
            .is_some_and(|t| *t >= want);
        if seen {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(FeatureError::Online(format!(
                "canary for \"{view_name}\": the sentinel was not readable within {} ms",
                timeout.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lag_us = now_us() - written_at;
    Ok(CanaryResult {
        view: view_name.to_string(),
        lag_ms: lag_us as f64 / 1000.0,
        sla_seconds: view.freshness_sla_us.map(|s| s as f64 / 1e6),
        breach: view.freshness_sla_us.is_some_and(|s| lag_us > s),
        at: format_ts(written_at),
    })
}

/// One batch-canary reading for one view.
#[derive(Debug, Clone, Serialize)]
pub struct BatchCanaryResult {
    pub view: String,
    /// The newest event time the batch path has delivered online (UTC).
    pub newest_event: String,
    /// Seconds since that event.
    pub age_seconds: f64,
    /// The view's freshness SLA in seconds, if it has one.
    pub sla_seconds: Option<f64>,
    pub breach: bool,
}

fn batch_key(t: ValueType) -> Option<Value> {
    match t {
        ValueType::String => Some(json!(BATCH_SENTINEL_KEY)),
        ValueType::Int64 => Some(json!(-424_243)),
        // Both booleans are real keys; a bool-keyed view has no batch canary.
        ValueType::Bool | ValueType::Float64 => None,
    }
}

/// The batch sentinel row of `view` at `event_us` (the newest event a
/// materialization delivered), in push (`df`) shape; `None` for a view
/// keyed by a bool, which has no spare key value.
pub fn batch_sentinel(view: &FeatureView, event_us: i64) -> Option<BTreeMap<String, Vec<Value>>> {
    let mut df = BTreeMap::new();
    for k in &view.join_keys {
        df.insert(k.name.clone(), vec![batch_key(k.dtype)?]);
    }
    df.insert("event_timestamp".into(), vec![json!(format_ts(event_us))]);
    df.insert("created_timestamp".into(), vec![json!(format_ts(now_us()))]);
    for f in &view.features {
        df.insert(f.name.clone(), vec![sentinel(f.dtype, false)]);
    }
    Some(df)
}

/// Read `view`'s batch sentinel back through the online API and judge its
/// age at `now_us` against the view's freshness SLA. Fails when the view
/// has no batch sentinel (never materialized online since this canary
/// existed, or keyed by a bool).
pub async fn run_batch(
    svc: &OnlineService,
    view_name: &str,
    now_us: i64,
) -> Result<BatchCanaryResult> {
    let view = svc.definitions().view(view_name)?.clone();
    let mut entities = BTreeMap::new();
    for k in &view.join_keys {
        let v = batch_key(k.dtype).ok_or_else(|| {
            FeatureError::Invalid(format!(
                "batch canary for \"{view_name}\": join key \"{}\" is a bool, which leaves no spare sentinel key",
                k.name
            ))
        })?;
        entities.insert(k.name.clone(), vec![v]);
    }
    let req = OnlineRequest {
        entities,
        feature_service: None,
        features: Some(
            view.features
                .iter()
                .map(|f| format!("{view_name}:{}", f.name))
                .collect(),
        ),
        full_feature_names: false,
    };
    let resp = svc.get_online_features(&req).await?;
    let found = resp
        .results
        .last()
        .filter(|c| {
            c.statuses
                .first()
                .is_some_and(|s| *s != FieldStatus::NotFound)
        })
        .and_then(|c| c.event_timestamps.first())
        .cloned();
    let Some(newest) = found else {
        return Err(FeatureError::NotFound(format!(
            "batch canary for \"{view_name}\": no batch sentinel in the online store; materialize the view (greenbelt features materialize-incremental --view {view_name})"
        )));
    };
    let event_us = parse_ts("batch sentinel event_timestamp", &newest)?;
    let age_us = now_us - event_us;
    Ok(BatchCanaryResult {
        view: view_name.to_string(),
        newest_event: newest,
        age_seconds: age_us as f64 / 1e6,
        sla_seconds: view.freshness_sla_us.map(|s| s as f64 / 1e6),
        breach: view.freshness_sla_us.is_some_and(|s| age_us > s),
    })
}

/// Batch canary results as Prometheus text; a view whose reading failed
/// (`Err`) is reported with `greenbelt_feature_batch_canary_success 0`.
pub fn batch_prometheus_text(
    results: &[(String, std::result::Result<BatchCanaryResult, String>)],
) -> String {
    gauges_text(
        results,
        (
            "greenbelt_feature_batch_canary_age_seconds",
            "Age of the newest event the batch path (source, materialize, online) delivered online.",
            |r| r.age_seconds,
        ),
        (
            "greenbelt_feature_batch_canary_success",
            "1 when the batch path delivered data online within the view's freshness SLA.",
            |r| !r.breach,
        ),
    )
}

/// One gauge of a value per view (from the views whose run succeeded) and
/// one of success per view (0 for a failed run), as Prometheus text.
fn gauges_text<R>(
    results: &[(String, std::result::Result<R, String>)],
    value: (&str, &str, fn(&R) -> f64),
    success: (&str, &str, fn(&R) -> bool),
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP {} {}\n# TYPE {} gauge",
        value.0, value.1, value.0
    );
    for (view, r) in results {
        if let Ok(r) = r {
            let _ = writeln!(out, "{}{{view=\"{view}\"}} {}", value.0, (value.2)(r));
        }
    }
    let _ = writeln!(
        out,
        "# HELP {} {}\n# TYPE {} gauge",
        success.0, success.1, success.0
    );
    for (view, r) in results {
        let ok = r.as_ref().is_ok_and(success.2);
        let _ = writeln!(out, "{}{{view=\"{view}\"}} {}", success.0, u8::from(ok));
    }
    out
}

/// The views a canary covers by default: every online view.
pub fn default_views(svc: &OnlineService) -> Vec<String> {
    svc.definitions()
        .views
        .values()
        .filter(|v| v.online)
        .map(|v| v.name.clone())
        .collect()
}

/// Canary results as Prometheus text; a view whose run failed (`Err`) is
/// reported with `greenbelt_feature_canary_success 0`.
pub fn prometheus_text(results: &[(String, std::result::Result<CanaryResult, String>)]) -> String {
    gauges_text(
        results,
        (
            "greenbelt_feature_canary_lag_seconds",
            "Push to online-readable lag of the synthetic canary.",
            |r| r.lag_ms / 1000.0,
        ),
        (
            "greenbelt_feature_canary_success",
            "1 when the last canary run read its sentinel back within the SLA.",
            |r| !r.breach,
        ),
    )
}
