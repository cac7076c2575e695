//! Serve models from registry aliases. For every `[[routes]]` entry a task
//! polls `model@alias`; when the alias moves, it fetches the artifact (sha256
//! checked), loads and warms the new version **before** switching, then
//! swaps the route atomically. The previous version stays loaded and warm, so
//! a rollback to it switches without loading anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_registry::{ArtifactStore, Registry};
use greenbelt_serve::config::RouteConfig;
use greenbelt_serve::repository::{Repository, ServedVersion};
use tokio::time::Instant;

/// How long a version that failed to load is left alone before a retry.
const FAILED_RETRY: Duration = Duration::from_secs(30);

/// What one switch measured, for logs and tests.
#[derive(Debug, Clone)]
pub struct Switch {
    pub route: String,
    pub from: Option<i64>,
    pub to: i64,
    /// Time from noticing the alias move to serving the new version.
    pub took: Duration,
    /// Whether the target was already loaded (a rollback to the warm previous version).
    pub was_warm: bool,
}

pub struct Watcher {
    registry: Registry,
    artifacts: ArtifactStore,
    repository: Arc<Repository>,
    cache: PathBuf,
    poll: Duration,
}

impl Watcher {
    pub fn new(
        registry: Registry,
        artifacts: ArtifactStore,
        repository: Arc<Repository>,
        cache: PathBuf,
        poll: Duration,
    ) -> Watcher {
        Watcher {
            registry,
            artifacts,
            repository,
            cache,
            poll,
        }
    }

    /// Watch every route until the returned handles are aborted. `on_switch`
    /// is told about each switch.
    pub fn spawn(
        self: Arc<Self>,
        routes: Vec<RouteConfig>,
        on_switch: Option<tokio::sync::mpsc::UnboundedSender<Switch>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        routes
            .into_iter()
            .map(|route| {
                let me = self.clone();
                let tx = on_switch.clone();
                tokio::spawn(async move { me.watch(route, tx).await })
            })
            .collect()
    }

    async fn watch(
        &self,
        route: RouteConfig,
        tx: Option<tokio::sync::mpsc::UnboundedSender<Switch>>,
    ) {
        let mut current: Option<i64> = None;
        // A version that failed to load, and when; retried after FAILED_RETRY
        // (the failure may have been transient: a registry or store hiccup).
        let mut failed: Option<(i64, Instant)> = None;
        let mut interval = tokio::time::interval(self.poll);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let target = match self.registry.alias(route.model(), &route.alias).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(route = %route.name, error = %e, "registry poll failed; keeping the served version");
                    continue;
                }
            };
            let Some(target) = target else { continue };
            if Some(target) == current
                || failed.is_some_and(|(v, at)| v == target && at.elapsed() < FAILED_RETRY)
            {
                continue;
            }
            match self.switch(&route, current, target).await {
                Ok(sw) => {
                    tracing::info!(
                        route = %sw.route,
                        from = ?sw.from,
                        to = sw.to,
                        switch_ms = sw.took.as_secs_f64() * 1000.0,
                        was_warm = sw.was_warm,
                        "route switched to a new version"
                    );
                    current = Some(target);
                    failed = None;
                    if let Some(tx) = &tx {
                        let _ = tx.send(sw);
                    }
                }
                Err(e) => {
                    tracing::error!(route = %route.name, version = target, error = %e, "new version refused; still serving the previous one");
                    self.repository
                        .record_error(&route.name, &format!("version {target}: {e}"));
                    failed = Some((target, Instant::now()));
                }
            }
        }
    }

    /// Load (or reuse) `target`, warm it, then switch the route to it,
    /// keeping `from` loaded.
    pub async fn switch(
        &self,
        route: &RouteConfig,
        from: Option<i64>,
        target: i64,
    ) -> Result<Switch, String> {
        let started = Instant::now();
        let v = u64::try_from(target).map_err(|_| format!("version {target} is not positive"))?;
        let existing = self.repository.get(&route.name);
        let warm = existing.as_ref().and_then(|e| e.versions.get(&v).cloned());
        let was_warm = warm.is_some();
        let served: Arc<ServedVersion> = match warm {
            Some(s) => s,
            None => Arc::new(self.load(route, target).await?),
        };
        let mut versions = BTreeMap::new();
        versions.insert(v, served);
        // Keep the version we switch away from, warm, for a fast rollback.
        if let (Some(prev), Some(entry)) = (from.and_then(|f| u64::try_from(f).ok()), &existing)
            && let Some(p) = entry.versions.get(&prev)
            && prev != v
        {
            versions.insert(prev, p.clone());
        }
        self.repository
            .install(&route.name, route.config.clone(), versions, Some(v));
        Ok(Switch {
            route: route.name.clone(),
            from,
            to: target,
            took: started.elapsed(),
            was_warm,
        })
    }

    async fn load(&self, route: &RouteConfig, target: i64) -> Result<ServedVersion, String> {
        let record = self
            .registry
            .version(route.model(), target)
            .await
            .map_err(|e| e.to_string())?;
        if record.format != "onnx" {
            return Err(format!(
                "format \"{}\" is not servable (onnx only)",
                record.format
            ));
        }
        let bytes = self
            .artifacts
            .get(&record.artifact_uri, &record.sha256)
            .await
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.cache)
            .map_err(|e| format!("cache {}: {e}", self.cache.display()))?;
        let file = self.cache.join(format!("{}.onnx", record.sha256));
        let tmp = self.cache.join(format!("{}.onnx.tmp", record.sha256));
        std::fs::write(&tmp, &bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &file).map_err(|e| format!("writing {}: {e}", file.display()))?;
        let repo = self.repository.clone();
        let name = route.name.clone();
        let config = route.config.clone();
        let v = u64::try_from(target).map_err(|_| format!("version {target} is not positive"))?;
        tokio::task::spawn_blocking(move || {
            let served = repo.load_file(&name, v, &file, &config)?;
            served.warm()?;
            Ok::<_, String>(served)
        })
        .await
        .map_err(|e| format!("load task failed: {e}"))?
    }
}
