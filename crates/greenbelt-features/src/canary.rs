//! The synthetic freshness canary: write a sentinel entity through the push
//! path production data takes, read it back through the online API, and
//! measure the end-to-end lag. `greenbelt features canary` runs it once;
//! `serve` runs it on a schedule and exports the result.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::defs::ValueType;
use crate::error::{FeatureError, Result};
use crate::online::service::{OnlineRequest, OnlineService, PushRequest};
use crate::time::{format_ts, now_us};

/// Key value of the sentinel entity (never a real key: real string keys
/// cannot start with "__greenbelt").
pub const SENTINEL_KEY: &str = "__greenbelt_canary";

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
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP greenbelt_feature_canary_lag_seconds Push to online-readable lag of the synthetic canary.\n# TYPE greenbelt_feature_canary_lag_seconds gauge"
    );
    for (view, r) in results {
        if let Ok(r) = r {
            let _ = writeln!(
                out,
                "greenbelt_feature_canary_lag_seconds{{view=\"{view}\"}} {}",
                r.lag_ms / 1000.0
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP greenbelt_feature_canary_success 1 when the last canary run read its sentinel back within the SLA.\n# TYPE greenbelt_feature_canary_success gauge"
    );
    for (view, r) in results {
        let ok = matches!(r, Ok(r) if !r.breach);
        let _ = writeln!(
            out,
            "greenbelt_feature_canary_success{{view=\"{view}\"}} {}",
            u8::from(ok)
        );
    }
    out
}
