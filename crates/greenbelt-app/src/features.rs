//! The feature store inside a server: the serving path's [`FeatureSource`]
//! over the online store ([`StoreSource`]: typed lookups, contract checks
//! on feature vectors callers send themselves), opening the store from the
//! project config, the `/features` API, and the background freshness
//! gauges and canary. The store's behaviour lives in `greenbelt-features`;
//! this module adapts it to `greenbelt-serve`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_core::cost::Store;
use greenbelt_features::contracts::{Cell, RowRule};
use greenbelt_features::online::OnlineStore;
use greenbelt_features::online::service::{CacheOptions, OnlineService};
use greenbelt_features::{Definitions, FeatureError};
use greenbelt_serve::Config;
use greenbelt_serve::features::{FeatureRows, FeatureSource, LookupError, LookupFuture};
use greenbelt_serve::infer::AppState;
use greenbelt_serve::metrics::Metrics;

use crate::error::{AppError, Result};
use crate::tasks::{StopSignal, Tasks};

/// One feature of a service with the row-level rules of its view's contract.
#[derive(Debug, Clone)]
struct Checked {
    name: String,
    rules: Vec<RowRule>,
}

/// The online store as the serving path sees it.
pub struct StoreSource {
    svc: OnlineService,
    /// Per service: its features in order, each with its contract rules.
    checks: BTreeMap<String, Vec<Checked>>,
}

impl StoreSource {
    /// The serving view of `svc`; fails when a contract's rules do not compile.
    pub fn new(svc: OnlineService) -> Result<StoreSource> {
        let defs = svc.definitions().clone();
        let mut checks = BTreeMap::new();
        for (name, service) in &defs.services {
            let mut cols = Vec::with_capacity(service.features.len());
            for r in &service.features {
                let rules = match defs.views.get(&r.view).and_then(|v| v.contract.as_ref()) {
                    Some(c) => c
                        .row_rules()?
                        .into_iter()
                        .filter(|rule| rule.column == r.feature)
                        .collect(),
                    None => Vec::new(),
                };
                cols.push(Checked {
                    name: r.to_string(),
                    rules,
                });
            }
            checks.insert(name.clone(), cols);
        }
        Ok(StoreSource { svc, checks })
    }

    fn service(&self, name: &str) -> Result<&greenbelt_features::defs::FeatureService, String> {
        self.svc
            .definitions()
            .service(name)
            .map_err(|e| e.to_string())
    }
}

fn lookup_error(e: FeatureError) -> LookupError {
    match e {
        FeatureError::Online(m) | FeatureError::Io(m) => LookupError::Unavailable(m),
        other @ (FeatureError::Invalid(_)
        | FeatureError::NotFound(_)
        | FeatureError::Contract(_)
        | FeatureError::Data(_)) => LookupError::Invalid(other.to_string()),
    }
}

impl FeatureSource for StoreSource {
    fn check(&self, service: &str, width: usize, values: &[f64]) -> Result<(), String> {
        let Some(cols) = self.checks.get(service) else {
            return Ok(());
        };
        if width != cols.len() || width == 0 {
            // The signature check reports the shape.
            return Ok(());
        }
        for (i, x) in values.iter().enumerate() {
            let (row, col) = (i / width, i % width);
            let Some(c) = cols.get(col) else { continue };
            for rule in &c.rules {
                if let Some(value) = rule.broken_by(Cell::from_f64(*x)) {
                    return Err(format!(
                        "row {row}, column {col} (feature \"{}\"): {value} breaks the contract rule {}",
                        c.name, rule.label
                    ));
                }
            }
        }
        Ok(())
    }

    fn can_serve(&self, service: &str) -> Result<(), String> {
        let fallback = self.service(service)?.fallback;
        let read = self.svc.online_status().read.state;
        if fallback == greenbelt_features::defs::Fallback::Error
            && read == greenbelt_core::breaker::State::Open
        {
            return Err(
                "the online store is failing (its circuit breaker is open) and the service has no fallback (set fallback = \"last_value\" or \"default\" in features.toml)"
                    .into(),
            );
        }
        Ok(())
    }

    fn join_keys(&self, service: &str) -> Result<Vec<String>, String> {
        let defs = self.svc.definitions();
        let mut keys: Vec<String> = Vec::new();
        for r in &self.service(service)?.features {
            let view = defs.view(&r.view).map_err(|e| e.to_string())?;
            for k in &view.join_keys {
                if !keys.contains(&k.name) {
                    keys.push(k.name.clone());
                }
            }
        }
        Ok(keys)
    }

    fn feature_names(&self, service: &str) -> Result<Vec<String>, String> {
        Ok(self
            .service(service)?
            .features
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    fn lookup<'a>(
        &'a self,
        service: &'a str,
        entities: BTreeMap<String, Vec<serde_json::Value>>,
        deadline: Option<tokio::time::Instant>,
    ) -> LookupFuture<'a> {
        Box::pin(async move {
            let m = self
                .svc
                .lookup_by(service, &entities, deadline)
                .await
                .map_err(lookup_error)?;
            Ok(FeatureRows {
                names: m.names,
                values: m.values,
                statuses: m.statuses.into_iter().map(|s| s.as_str()).collect(),
                rows: m.rows,
            })
        })
    }
}

/// Where the definitions are: `[features] definitions`, else
/// `$GREENBELT_FEATURES`, else `./features.toml` when it exists.
pub fn definitions_path(config: &Config) -> Option<PathBuf> {
    if let Some(p) = &config.features.definitions {
        return Some(p.clone());
    }
    match std::env::var("GREENBELT_FEATURES") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => Some(PathBuf::from("features.toml")).filter(|p| p.is_file()),
    }
}

/// A `[features]` interval: humantime text, at least 100 ms.
pub fn interval(
    field: &str,
    text: Option<&str>,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    let Some(t) = text else {
        return Ok(default);
    };
    let d = humantime::parse_duration(t).map_err(|e| {
        AppError::Invalid(format!(
            "[features] {field} = \"{t}\" is not a duration ({e}); write e.g. \"30s\" or \"5m\""
        ))
    })?;
    if d < Duration::from_millis(100) {
        return Err(AppError::Invalid(format!(
            "[features] {field} = \"{t}\" is too short; use at least 100ms"
        )));
    }
    Ok(Some(d))
}

/// The feature store a server opened: definitions, the online service and
/// the schedules of its background checks.
pub struct FeatureStore {
    svc: OnlineService,
    source: Arc<StoreSource>,
    canary_every: Option<Duration>,
    freshness_every: Option<Duration>,
}

impl FeatureStore {
    /// Open the feature store when one is configured (before the server is
    /// built, so models are checked against it at load). `None`: no store.
    pub async fn open(config: &Config) -> Result<Option<FeatureStore>> {
        let Some(path) = definitions_path(config) else {
            let wanted: Vec<&str> = config
                .deployments
                .iter()
                .filter(|d| d.config.features.is_some())
                .map(|d| d.name.as_str())
                .collect();
            if !wanted.is_empty() {
                return Err(AppError::Invalid(format!(
                    "[[deployments]] {wanted:?} read a feature service but no feature store is configured: set [features] definitions = \"features.toml\""
                )));
            }
            return Ok(None);
        };
        let defs = Arc::new(Definitions::load(&path).map_err(|e| {
            AppError::Invalid(format!(
                "loading feature definitions {}: {e}",
                path.display()
            ))
        })?);
        for d in &config.deployments {
            if let Some(f) = &d.config.features {
                defs.service(&f.service).map_err(|e| {
                    AppError::Invalid(format!(
                        "[[deployments]] \"{}\": config.features.service (see {}): {e}",
                        d.name,
                        path.display()
                    ))
                })?;
            }
        }
        let canary_every = interval(
            "canary_interval",
            config.features.canary_interval.as_deref(),
            None,
        )?;
        let freshness_every = interval(
            "freshness_interval",
            config.features.freshness_interval.as_deref(),
            Some(Duration::from_secs(30)),
        )?;
        let store = OnlineStore::open(&defs.online_url).await.map_err(|e| {
            AppError::Invalid(format!(
                "opening the online store {}: {e}",
                greenbelt_serve::auth::redact_url(&defs.online_url)
            ))
        })?;
        let cache = CacheOptions {
            enabled: !defs.online.cache_ttl.is_zero(),
            ttl: defs.online.cache_ttl,
            ..CacheOptions::default()
        };
        let svc = OnlineService::new(defs.clone(), store, cache);
        let source = Arc::new(StoreSource::new(svc.clone())?);
        tracing::info!(definitions = %path.display(), online = %greenbelt_serve::auth::redact_url(&defs.online_url), "feature store at /features; models with [features] accept entity keys");
        Ok(Some(FeatureStore {
            svc,
            source,
            canary_every,
            freshness_every,
        }))
    }

    /// The serving path's view of the online store.
    pub fn source(&self) -> Arc<dyn FeatureSource> {
        self.source.clone()
    }

    /// The online service (reads, pushes).
    pub fn service(&self) -> &OnlineService {
        &self.svc
    }

    /// The `/features/*` routes.
    pub fn router(&self) -> axum::Router {
        greenbelt_features::http::router(self.svc.clone())
    }

    /// Start the freshness gauges, the scheduled canary (when configured)
    /// and the online store's breaker and degraded-read metrics; all export
    /// to `metrics` and stop with `tasks`.
    pub fn spawn_tasks(&self, metrics: Arc<Metrics>, tasks: &mut Tasks) {
        {
            let svc = self.svc.clone();
            let metrics = metrics.clone();
            tasks.spawn(move |stop| online_status_task(svc, metrics, ONLINE_STATUS_EVERY, stop));
        }
        if let Some(every) = self.freshness_every {
            let svc = self.svc.clone();
            let metrics = metrics.clone();
            tasks.spawn(move |stop| freshness_task(svc, metrics, every, stop));
        }
        if let Some(every) = self.canary_every {
            let svc = self.svc.clone();
            tasks.spawn(move |stop| canary_task(svc, metrics, every, stop));
        }
    }
}

impl FeatureStore {
    /// Measure what the offline store (files by view) and the online store
    /// (keys by view) hold, every `[cost] storage_interval`, for the cost
    /// ledger.
    pub fn spawn_cost_scans(&self, state: &Arc<AppState>, tasks: &mut Tasks) -> Result<()> {
        let defs = self.svc.definitions().clone();
        let offline = Arc::new(
            greenbelt_features::offline::OfflineStore::open_location(&defs.offline).map_err(
                |e| {
                    AppError::Invalid(format!(
                        "opening the offline store for the cost ledger: {e}"
                    ))
                },
            )?,
        );
        let views: Arc<Vec<String>> = Arc::new(defs.views.keys().cloned().collect());
        crate::cost::spawn_store_scan(state, tasks, Store::Offline, false, move || {
            let (offline, views) = (offline.clone(), views.clone());
            async move { crate::cost::offline_holdings(&offline, &views).await }
        });
        let online = self.svc.store().clone();
        let in_memory = online.in_memory();
        crate::cost::spawn_store_scan(state, tasks, Store::Online, in_memory, move || {
            let online = online.clone();
            async move { crate::cost::online_holdings(&online).await }
        });
        Ok(())
    }
}

/// How often the online store's breaker state and degraded-read counters
/// are copied to `/metrics`.
pub const ONLINE_STATUS_EVERY: Duration = Duration::from_secs(1);

/// Copy the online store's breaker and fallback metrics to `metrics` every
/// `every` until stopped.
async fn online_status_task(
    svc: OnlineService,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: StopSignal,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.stopped() => return,
            _ = tick.tick() => {}
        }
        metrics.set_external(
            "feature_online_store",
            svc.online_status().prometheus_text(),
        );
    }
}

/// Refresh the freshness gauges every `every` until stopped, and tell the
/// online service which views are past their freshness SLA (their reads
/// are then flagged, never silently stale).
async fn freshness_task(
    svc: OnlineService,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: StopSignal,
) {
    let defs = svc.definitions().clone();
    let store = match greenbelt_features::offline::OfflineStore::open(&defs.offline_path) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "freshness gauges off: cannot open the offline store");
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.stopped() => return,
            _ = tick.tick() => {}
        }
        let now = greenbelt_features::time::now_us();
        let check = greenbelt_features::freshness::freshness(&defs, &store, now);
        tokio::select! {
            _ = stop.stopped() => return,
            r = tokio::time::timeout(every, check) => match r {
                Ok(Ok(f)) => {
                    svc.set_freshness(&f);
                    metrics.set_external(
                        "feature_freshness",
                        greenbelt_features::freshness::prometheus_text(&f),
                    );
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "feature freshness check failed"),
                Err(_) => tracing::warn!("feature freshness check timed out"),
            }
        }
    }
}

/// Run the synthetic canaries (push and batch) over every online view every
/// `every` until stopped.
async fn canary_task(
    svc: OnlineService,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: StopSignal,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.stopped() => return,
            _ = tick.tick() => {}
        }
        let round = async {
            let mut results = Vec::new();
            for view in greenbelt_features::canary::default_views(&svc) {
                let r = greenbelt_features::canary::run(
                    &svc,
                    &view,
                    every.min(Duration::from_secs(10)),
                )
                .await
                .map_err(|e| e.to_string());
                match &r {
                    Ok(c) if c.breach => {
                        tracing::warn!(view = %view, lag_ms = c.lag_ms, "feature canary breached its freshness SLA")
                    }
                    Ok(c) => tracing::debug!(view = %view, lag_ms = c.lag_ms, "feature canary"),
                    Err(e) => tracing::warn!(view = %view, error = %e, "feature canary failed"),
                }
                results.push((view, r));
            }
            let mut batch = Vec::new();
            for view in greenbelt_features::canary::default_views(&svc) {
                let now = greenbelt_features::time::now_us();
                let r = match greenbelt_features::canary::run_batch(&svc, &view, now).await {
                    // No sentinel: the view was never materialized online
                    // (fed by push only), so there is no batch path to
                    // judge; reporting 0 would page for nothing.
                    Err(greenbelt_features::FeatureError::NotFound(e)) => {
                        tracing::debug!(view = %view, error = %e, "batch feature canary: not materialized online; skipped");
                        continue;
                    }
                    r => r.map_err(|e| e.to_string()),
                };
                match &r {
                    Ok(c) if c.breach => {
                        tracing::warn!(view = %view, age_s = c.age_seconds, "batch feature canary: the batch path is past its freshness SLA")
                    }
                    Ok(c) => {
                        tracing::debug!(view = %view, age_s = c.age_seconds, "batch feature canary")
                    }
                    Err(e) => tracing::debug!(view = %view, error = %e, "batch feature canary"),
                }
                batch.push((view, r));
            }
            (results, batch)
        };
        tokio::select! {
            _ = stop.stopped() => return,
            (results, batch) = round => {
                let mut text = greenbelt_features::canary::prometheus_text(&results);
                text.push_str(&greenbelt_features::canary::batch_prometheus_text(&batch));
                metrics.set_external("feature_canary", text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    const DEFS: &str = r#"
[[entity]]
name = "user"
join_keys = [{ name = "user_id", type = "string" }]
[[source]]
name = "tx"
path = "tx.csv"
event_timestamp = "event_ts"
[[feature_view]]
name = "stats"
entities = ["user"]
source = "tx"
ttl = "1h"
features = [{ name = "amount", type = "float64" }, { name = "count", type = "int64" }, { name = "flag", type = "bool" }]
[feature_view.contract]
rules = [
  { check = "range", column = "amount", min = 0.0, max = 100.0 },
  { check = "not_null", column = "count" },
  { check = "range", column = "count", min = 0.0, mostly = 0.5 },
]
[[feature_service]]
name = "scoring"
features = ["stats:*"]
"#;

    async fn source(dir: &std::path::Path) -> (StoreSource, OnlineService) {
        let defs = Arc::new(Definitions::parse(DEFS, dir).unwrap());
        let store = OnlineStore::open(dir.join("o.redb").to_str().unwrap())
            .await
            .unwrap();
        let svc = OnlineService::new(defs, store, CacheOptions::default());
        (StoreSource::new(svc.clone()).unwrap(), svc)
    }

    #[tokio::test]
    async fn lookup_gives_a_row_major_matrix_with_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let (src, svc) = source(dir.path()).await;
        let now = greenbelt_features::time::format_ts(greenbelt_features::time::now_us());
        svc.push(&serde_json::from_value(json!({
            "feature_view": "stats",
            "df": {"user_id": ["u1"], "event_timestamp": [now], "amount": [2.5], "count": [3], "flag": [true]}
        })).unwrap())
        .await
        .unwrap();
        let mut entities = BTreeMap::new();
        entities.insert("user_id".to_string(), vec![json!("u1"), json!("nobody")]);
        let rows = src.lookup("scoring", entities, None).await.unwrap();
        assert_eq!(rows.names, ["stats:amount", "stats:count", "stats:flag"]);
        assert_eq!(rows.rows, 2);
        assert_eq!(
            rows.values,
            [Some(2.5), Some(3.0), Some(1.0), None, None, None]
        );
        assert_eq!(
            rows.statuses,
            [
                "PRESENT",
                "PRESENT",
                "PRESENT",
                "NOT_FOUND",
                "NOT_FOUND",
                "NOT_FOUND"
            ]
        );
        assert_eq!(src.join_keys("scoring").unwrap(), ["user_id"]);
    }

    #[tokio::test]
    async fn lookup_errors_map_to_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let (src, _) = source(dir.path()).await;
        let mut entities = BTreeMap::new();
        entities.insert("user_id".to_string(), vec![json!(5)]);
        match src.lookup("scoring", entities, None).await {
            Err(LookupError::Invalid(m)) => assert!(m.contains("entities.user_id[0]"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(src.feature_names("nope").unwrap_err().contains("\"nope\""));
    }

    #[tokio::test]
    async fn check_names_row_feature_and_rule() {
        let dir = tempfile::tempdir().unwrap();
        let (src, _) = source(dir.path()).await;
        assert!(
            src.check("scoring", 3, &[1.0, 2.0, 0.0, 99.0, 0.0, 1.0])
                .is_ok()
        );
        let e = src
            .check("scoring", 3, &[1.0, 2.0, 0.0, 101.0, 0.0, 1.0])
            .unwrap_err();
        assert!(
            e.contains("row 1, column 0 (feature \"stats:amount\")")
                && e.contains("101")
                && e.contains("range(amount in [0, 100])"),
            "{e}"
        );
        let e = src.check("scoring", 3, &[1.0, f64::NAN, 0.0]).unwrap_err();
        assert!(e.contains("not_null(count)"), "{e}");
        // `mostly` rules judge a data set, not one value.
        assert!(src.check("scoring", 3, &[1.0, -5.0, 0.0]).is_ok());
        // A width that does not fit is the signature check's to report.
        assert!(src.check("scoring", 2, &[-1.0, -1.0]).is_ok());
    }
}
