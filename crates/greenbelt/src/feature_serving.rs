//! The feature store inside `serve`: the `/features` API, entity-key
//! inference requests (the serving crate's `FeatureSource` over the online
//! store), freshness gauges on /metrics, and the scheduled canary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use greenbelt_features::online::OnlineStore;
use greenbelt_features::online::service::{
    CacheOptions, FieldStatus, OnlineRequest, OnlineService,
};
use greenbelt_features::{Definitions, FeatureError};
use greenbelt_serve::features::{FeatureRows, FeatureSource, LookupError, LookupFuture};
use greenbelt_serve::{Config, Server};

/// The online store as the serving path sees it.
pub struct StoreSource {
    svc: OnlineService,
    /// Per service: each feature's name and its contract's row-level rules.
    checks: BTreeMap<String, Vec<(String, Vec<RowRule>)>>,
}

/// A contract rule one value can break on its own (rules with `mostly`
/// judge a whole data set, so a single request cannot break them).
#[derive(Debug, Clone)]
enum RowRule {
    NotNull,
    Range(Option<f64>, Option<f64>),
    Allowed(Vec<f64>),
}

impl RowRule {
    fn broken_by(&self, x: f64) -> Option<String> {
        match self {
            RowRule::NotNull if x.is_nan() => {
                Some("is null (NaN); the contract says not_null".into())
            }
            RowRule::Range(min, max)
                if !x.is_nan() && (min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m)) =>
            {
                Some(format!(
                    "{x} is outside the contract's range [{}, {}]",
                    min.map_or("-inf".into(), |v| v.to_string()),
                    max.map_or("inf".into(), |v| v.to_string())
                ))
            }
            RowRule::Allowed(values) if !x.is_nan() && !values.contains(&x) => Some(format!(
                "{x} is not one of the contract's allowed values {values:?}"
            )),
            _ => None,
        }
    }
}

/// The row-level rules of every service's features, from the views' contracts.
fn row_rules(defs: &Definitions) -> BTreeMap<String, Vec<(String, Vec<RowRule>)>> {
    use greenbelt_features::contracts::RuleSpec;
    let mut out = BTreeMap::new();
    for (name, service) in &defs.services {
        let mut cols = Vec::new();
        for r in &service.features {
            let mut rules = Vec::new();
            if let Some(c) = defs.views.get(&r.view).and_then(|v| v.contract.as_ref()) {
                for rule in &c.rules {
                    match rule {
                        RuleSpec::NotNull {
                            column,
                            mostly: None,
                        } if *column == r.feature => {
                            rules.push(RowRule::NotNull);
                        }
                        RuleSpec::Range {
                            column,
                            min,
                            max,
                            mostly: None,
                        } if *column == r.feature => rules.push(RowRule::Range(*min, *max)),
                        RuleSpec::Allowed { column, values } if *column == r.feature => {
                            let nums: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
                            if nums.len() == values.len() {
                                rules.push(RowRule::Allowed(nums));
                            }
                        }
                        _ => {}
                    }
                }
            }
            cols.push((r.to_string(), rules));
        }
        out.insert(name.clone(), cols);
    }
    out
}

impl StoreSource {
    pub fn new(svc: OnlineService) -> StoreSource {
        let checks = row_rules(svc.definitions());
        StoreSource { svc, checks }
    }

    fn service(&self, name: &str) -> Result<&greenbelt_features::defs::FeatureService, String> {
        self.svc
            .definitions()
            .service(name)
            .map_err(|e| e.to_string())
    }
}

fn status(s: FieldStatus) -> &'static str {
    match s {
        FieldStatus::Present => "PRESENT",
        FieldStatus::NullValue => "NULL_VALUE",
        FieldStatus::NotFound => "NOT_FOUND",
        FieldStatus::OutsideMaxAge => "OUTSIDE_MAX_AGE",
    }
}

impl FeatureSource for StoreSource {
    fn check(&self, service: &str, width: usize, values: &[f64]) -> Result<(), String> {
        let Some(cols) = self.checks.get(service) else {
            return Ok(());
        };
        if width != cols.len() {
            // The signature check reports the shape.
            return Ok(());
        }
        for (i, x) in values.iter().enumerate() {
            let (row, col) = (i / width.max(1), i % width.max(1));
            if let Some((name, rules)) = cols.get(col) {
                for rule in rules {
                    if let Some(why) = rule.broken_by(*x) {
                        return Err(format!(
                            "row {row}, column {col} (feature \"{name}\"): {why}"
                        ));
                    }
                }
            }
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
            .map(|r| r.to_string())
            .collect())
    }

    fn lookup<'a>(
        &'a self,
        service: &'a str,
        entities: BTreeMap<String, Vec<serde_json::Value>>,
    ) -> LookupFuture<'a> {
        Box::pin(async move {
            let names = self.feature_names(service).map_err(LookupError::Invalid)?;
            let rows = entities.values().next().map_or(0, Vec::len);
            let req = OnlineRequest {
                entities,
                feature_service: Some(service.to_string()),
                features: None,
                full_feature_names: true,
            };
            let resp = self
                .svc
                .get_online_features(&req)
                .await
                .map_err(|e| match e {
                    FeatureError::Online(m) | FeatureError::Io(m) => LookupError::Unavailable(m),
                    other => LookupError::Invalid(other.to_string()),
                })?;
            // Columns: the join keys first, then the service's features.
            let skip = resp.results.len().saturating_sub(names.len());
            let cols = &resp.results[skip..];
            let mut out = FeatureRows {
                values: Vec::with_capacity(rows * names.len()),
                statuses: Vec::with_capacity(rows * names.len()),
                names,
                rows,
            };
            for row in 0..rows {
                for (c, col) in cols.iter().enumerate() {
                    let st = col
                        .statuses
                        .get(row)
                        .copied()
                        .unwrap_or(FieldStatus::NotFound);
                    let v = col.values.get(row).unwrap_or(&serde_json::Value::Null);
                    let x = match (st, v) {
                        (FieldStatus::Present, serde_json::Value::Number(n)) => n.as_f64(),
                        (FieldStatus::Present, serde_json::Value::Bool(b)) => {
                            Some(f64::from(u8::from(*b)))
                        }
                        (FieldStatus::Present, serde_json::Value::Null) => None,
                        (FieldStatus::Present, other) => {
                            return Err(LookupError::Invalid(format!(
                                "feature \"{}\" is not numeric ({other}); a model input can only take numbers",
                                out.names.get(c).map_or("?", String::as_str)
                            )));
                        }
                        _ => None,
                    };
                    out.values.push(x);
                    out.statuses
                        .push(if x.is_none() && st == FieldStatus::Present {
                            "NULL_VALUE"
                        } else {
                            status(st)
                        });
                }
            }
            Ok(out)
        })
    }
}

/// Where the definitions are: `[features] definitions`, else
/// `$GREENBELT_FEATURES`, else `./features.toml` when it exists.
fn definitions_path(config: &Config) -> Option<PathBuf> {
    if let Some(p) = &config.features.definitions {
        return Some(p.clone());
    }
    match std::env::var("GREENBELT_FEATURES") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => Some(PathBuf::from("features.toml")).filter(|p| p.is_file()),
    }
}

fn interval(
    field: &str,
    text: Option<&str>,
    default: Option<Duration>,
) -> anyhow::Result<Option<Duration>> {
    match text {
        None => Ok(default),
        Some(t) => {
            let d = humantime::parse_duration(t).with_context(|| {
                format!(
                    "[features] {field} = \"{t}\" is not a duration; write e.g. \"30s\" or \"5m\""
                )
            })?;
            if d < Duration::from_millis(100) {
                bail!("[features] {field} = \"{t}\" is too short; use at least 100ms");
            }
            Ok(Some(d))
        }
    }
}

/// The feature store `serve` opened: definitions, the online service and
/// the schedules of its background checks.
pub struct Opened {
    defs: Arc<Definitions>,
    svc: OnlineService,
    canary_every: Option<Duration>,
    freshness_every: Option<Duration>,
}

impl Opened {
    /// The serving path's view of the online store (in place before models load).
    pub fn source(&self) -> Arc<dyn FeatureSource> {
        Arc::new(StoreSource::new(self.svc.clone()))
    }
}

/// Open the feature store when one is configured (before the server is
/// built, so models are checked against it at load).
pub async fn open(config: &Config) -> anyhow::Result<Option<Opened>> {
    let Some(path) = definitions_path(config) else {
        let wanted: Vec<&str> = config
            .deployments
            .iter()
            .filter(|d| d.config.features.is_some())
            .map(|d| d.name.as_str())
            .collect();
        if !wanted.is_empty() {
            bail!(
                "[[deployments]] {wanted:?} read a feature service but no feature store is configured: set [features] definitions = \"features.toml\""
            );
        }
        return Ok(None);
    };
    let defs = Arc::new(
        Definitions::load(&path)
            .with_context(|| format!("loading feature definitions {}", path.display()))?,
    );
    for d in &config.deployments {
        if let Some(f) = &d.config.features {
            defs.service(&f.service).with_context(|| {
                format!(
                    "[[deployments]] \"{}\": config.features.service (see {})",
                    d.name,
                    path.display()
                )
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
    let store = OnlineStore::open(&defs.online_url).await.with_context(|| {
        format!(
            "opening the online store {}",
            greenbelt_serve::auth::redact_url(&defs.online_url)
        )
    })?;
    let svc = OnlineService::new(defs.clone(), store, CacheOptions::default());
    tracing::info!(definitions = %path.display(), online = %greenbelt_serve::auth::redact_url(&defs.online_url), "feature store at /features; models with [features] accept entity keys");
    Ok(Some(Opened {
        defs,
        svc,
        canary_every,
        freshness_every,
    }))
}

/// Mount the opened feature store on `server`: the API, freshness gauges
/// and the scheduled canary. The returned tasks run until aborted.
pub fn attach(server: &mut Server, opened: Opened) -> Vec<tokio::task::JoinHandle<()>> {
    let Opened {
        defs,
        svc,
        canary_every,
        freshness_every,
    } = opened;
    server.merge(greenbelt_features::http::router(svc.clone()));

    let mut tasks = Vec::new();
    let metrics = server.state.metrics.clone();
    if let Some(every) = freshness_every {
        let defs = defs.clone();
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            let store = match greenbelt_features::offline::OfflineStore::open(&defs.offline_path) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "freshness gauges off: cannot open the offline store");
                    return;
                }
            };
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let now = greenbelt_features::time::now_us();
                match tokio::time::timeout(every, greenbelt_features::freshness::freshness(&defs, &store, now)).await {
                    Ok(Ok(f)) => metrics.set_external(
                        "feature_freshness",
                        greenbelt_features::freshness::prometheus_text(&f),
                    ),
                    Ok(Err(e)) => tracing::warn!(error = %e, "feature freshness check failed"),
                    Err(_) => tracing::warn!("feature freshness check timed out"),
                }
            }
        }));
    }
    if let Some(every) = canary_every {
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let mut results = Vec::new();
                for view in greenbelt_features::canary::default_views(&svc) {
                    let r = greenbelt_features::canary::run(&svc, &view, every.min(Duration::from_secs(10)))
                        .await
                        .map_err(|e| e.to_string());
                    match &r {
                        Ok(c) if c.breach => tracing::warn!(view = %view, lag_ms = c.lag_ms, "feature canary breached its freshness SLA"),
                        Ok(c) => tracing::debug!(view = %view, lag_ms = c.lag_ms, "feature canary"),
                        Err(e) => tracing::warn!(view = %view, error = %e, "feature canary failed"),
                    }
                    results.push((view, r));
                }
                metrics.set_external(
                    "feature_canary",
                    greenbelt_features::canary::prometheus_text(&results),
                );
            }
        }));
    }
    tasks
}
