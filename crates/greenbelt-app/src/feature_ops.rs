//! The feature store from the command line: recording definitions in the
//! registry (plan and apply) and materializing views to the offline and
//! online stores with a report per view. Everything else the `features`
//! command does is one call into `greenbelt-features`.

use std::collections::BTreeMap;
use std::sync::Arc;

use greenbelt_features::Definitions;
use greenbelt_features::offline::{
    MaterializeOptions, MaterializeReport, OfflineStore, materialize, materialize_incremental,
};
use greenbelt_features::online::OnlineStore;
use greenbelt_features::online::service::{CacheOptions, OnlineService};
use greenbelt_features::plan::{Action, PlanEntry, plan, specs};
use greenbelt_features::source::EngineOptions;
use greenbelt_features::time::parse_ts;
use greenbelt_registry::{FeatureDefinition, Registry};
use serde_json::Value;

use crate::error::{AppError, Result};

/// The definitions the registry holds: (kind, name) → (version, spec).
pub async fn applied(registry: &Registry) -> Result<BTreeMap<(String, String), (i64, Value)>> {
    let mut map = BTreeMap::new();
    for d in registry.feature_definitions().await? {
        map.insert((d.kind, d.name), (d.version, d.spec));
    }
    Ok(map)
}

/// What `apply` would change.
pub async fn plan_against(registry: &Registry, defs: &Definitions) -> Result<Vec<PlanEntry>> {
    Ok(plan(&specs(defs)?, &applied(registry).await?))
}

/// What `apply` did: the plan, and the new versions it recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub plan: Vec<PlanEntry>,
    pub recorded: Vec<FeatureDefinition>,
    pub changed: usize,
}

/// Record `defs` in the registry (a changed definition is a new version).
pub async fn apply(registry: &Registry, defs: &Definitions, who: &str) -> Result<Applied> {
    let wanted = specs(defs)?;
    let p = plan(&wanted, &applied(registry).await?);
    let recorded = registry
        .apply_feature_definitions(
            &wanted
                .iter()
                .map(|d| (d.kind.clone(), d.name.clone(), d.spec.clone()))
                .collect::<Vec<_>>(),
            who,
        )
        .await?;
    let changed = p.iter().filter(|e| e.action != Action::Unchanged).count();
    Ok(Applied {
        plan: p,
        recorded,
        changed,
    })
}

/// The online service over the definitions' store (no cache: a command
/// reads once).
pub async fn online(defs: &Arc<Definitions>) -> Result<OnlineService> {
    let store = OnlineStore::open(&defs.online_url).await.map_err(|e| {
        AppError::Invalid(format!(
            "opening the online store {}: {e}",
            greenbelt_serve::auth::redact_url(&defs.online_url)
        ))
    })?;
    Ok(OnlineService::new(
        defs.clone(),
        store,
        CacheOptions {
            enabled: false,
            ..CacheOptions::default()
        },
    ))
}

/// The views named, or every view when none is.
pub fn views_or_all(defs: &Definitions, views: &[String]) -> Result<Vec<String>> {
    if views.is_empty() {
        return Ok(defs.views.keys().cloned().collect());
    }
    for v in views {
        defs.view(v)?;
    }
    Ok(views.to_vec())
}

/// Which rows to materialize.
#[derive(Debug, Clone, Copy)]
pub enum Range {
    /// [start, end) in µs UTC.
    Between(i64, i64),
    /// From each view's watermark to this time.
    Since(i64),
}

/// One view materialized.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Materialized {
    #[serde(flatten)]
    pub report: MaterializeReport,
    pub online_keys_written: u64,
    pub seconds: f64,
}

/// Materialize `views` to the offline store and, with `online`, their
/// newest values to the online store. `starting` and `done` hear about
/// each view.
pub async fn materialize_views(
    defs: &Arc<Definitions>,
    views: &[String],
    range: Range,
    engine: EngineOptions,
    online_too: bool,
    starting: &mut dyn FnMut(&str),
    done: &mut dyn FnMut(&Materialized),
) -> Result<Vec<Materialized>> {
    let store = OfflineStore::open(&defs.offline_path)?;
    let opts = MaterializeOptions {
        engine,
        now_us: None,
    };
    let svc = if online_too {
        Some(online(defs).await?)
    } else {
        None
    };
    let mut out = Vec::new();
    for v in views {
        let started = tokio::time::Instant::now();
        starting(v);
        let r = match range {
            Range::Between(s, e) => materialize(defs, &store, v, s, e, &opts).await,
            Range::Since(end) => materialize_incremental(defs, &store, v, end, &opts).await,
        }
        .map_err(|e| AppError::Invalid(format!("materializing feature view \"{v}\": {e}")))?;
        let mut online_keys_written = 0;
        if let Some(svc) = &svc
            && defs.view(v)?.online
            && r.rows > 0
        {
            let s = parse_ts("start", &r.start)?;
            let e = parse_ts("end", &r.end)?;
            online_keys_written = svc
                .materialize_online(&store, v, s, e, &opts.engine)
                .await?;
        }
        let m = Materialized {
            report: r,
            online_keys_written,
            seconds: started.elapsed().as_secs_f64(),
        };
        done(&m);
        out.push(m);
    }
    Ok(out)
}
