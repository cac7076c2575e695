//! The deployment controller: one task per `[[deployments]]` entry that, on
//! every tick (the registry poll interval):
//!
//! 1. reads the deployment's rollout state from the registry database and
//!    advances it (timed pauses, analysis runs on the server's own live
//!    per-version metrics), writing it back compare-and-swap so replicas
//!    agree;
//! 2. moves registry aliases the rollout decided (promotion, switch back),
//!    with the reason in the audit history;
//! 3. computes the traffic plan (stable, canary weight, preview, shadows;
//!    without a rollout: the version the alias points to), loads and warms
//!    every version the plan needs **before** switching, and installs the
//!    plan atomically. The previous stable version stays warm.
//!
//! The controller is never on the request path: requests read the installed
//! plan; they never wait for the registry.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_core::breaker::{CallError, SharedBreaker};
use greenbelt_core::retry::{RetryBudget, RetryBudgetConfig};
use greenbelt_registry::{ArtifactStore, Registry, RegistryError};
use greenbelt_serve::deployment::{DeploymentConfig, RegistryErrorPolicy};
use greenbelt_serve::infer::AppState;
use greenbelt_serve::live::LiveSnapshot;
use greenbelt_serve::repository::ServedVersion;
use greenbelt_serve::routing::{FULL, Routing, ShadowRoute};
use greenbelt_serve::shadow::ShadowCounters;
use tokio::time::Instant;

use super::analysis::{self, Measurement};
use super::machine::{Phase, Rollout};

/// How long one tick's registry reads and writes may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a version that failed to load is left alone before a retry.
const FAILED_RETRY: Duration = Duration::from_secs(30);

/// How long one read of an artifact may take.
const ARTIFACT_TIMEOUT: Duration = Duration::from_secs(120);

/// Retries of a failed artifact read (under the retry budget), and the
/// first backoff (doubled each time).
const ARTIFACT_RETRIES: u32 = 2;
const ARTIFACT_BACKOFF: Duration = Duration::from_millis(200);

/// A change of the stable version, for logs and tests.
#[derive(Debug, Clone)]
pub struct Switch {
    pub route: String,
    pub from: Option<i64>,
    pub to: i64,
    /// Time from noticing the change to serving the new version.
    pub took: Duration,
    /// Whether the target was already loaded (e.g. the warm previous version).
    pub was_warm: bool,
}

pub struct Controller {
    registry: Registry,
    artifacts: ArtifactStore,
    state: Arc<AppState>,
    cache: PathBuf,
    /// Around every registry database call of a tick (`[registry.breaker]`).
    registry_breaker: SharedBreaker,
    /// Around artifact reads (`[registry.artifacts_breaker]`), with the
    /// retry budget of those reads.
    artifacts_breaker: SharedBreaker,
    artifact_retry: Arc<RetryBudget>,
    /// Around analysis queries to Prometheus.
    prometheus_breaker: SharedBreaker,
    poll: Duration,
    actor: String,
    /// Wall time at `base`, so a paused tokio clock drives rollout time in tests.
    base_wall_ms: i64,
    base: Instant,
}

/// Live counters at the start of the current analysis window.
struct Snap {
    rollout: String,
    candidate: LiveSnapshot,
    stable: LiveSnapshot,
    shadow: ShadowCounters,
}

/// What one deployment's task remembers between ticks.
#[derive(Default)]
struct Local {
    installed: Option<Routing>,
    stable: Option<i64>,
    previous: Option<i64>,
    failed: HashMap<i64, Instant>,
    snap: Option<Snap>,
    /// The rollout that was active at the last successful tick, and its
    /// stable version.
    active: Option<(String, i64)>,
    /// Since when ticks have failed on the registry database.
    registry_down_since: Option<Instant>,
    /// The 30-second period of that outage last logged.
    down_logged: u64,
    /// A rollout whose traffic the fail-safe sent back to stable while the
    /// registry was unreachable; aborted when it answers again.
    failsafe: Option<String>,
    /// Where each version this task loaded came from.
    provenance: HashMap<i64, Provenance>,
}

/// The artifact a loaded version came from.
#[derive(Debug, Clone)]
struct Provenance {
    sha256: String,
    fault: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Controller {
    pub fn new(
        registry: Registry,
        artifacts: ArtifactStore,
        state: Arc<AppState>,
        cache: PathBuf,
        poll: Duration,
    ) -> Controller {
        let registry_config = &state.config.registry;
        // Validated with the config; the defaults only if it was built by hand.
        let registry_breaker = state.breakers.get_or_insert(
            "registry",
            registry_config
                .breaker_config()
                .unwrap_or_else(|_| greenbelt_serve::config::RegistryConfig::default_breaker()),
        );
        let artifacts_breaker = state.breakers.get_or_insert(
            "artifacts",
            registry_config
                .artifacts_breaker_config()
                .unwrap_or_else(|_| {
                    greenbelt_serve::config::RegistryConfig::default_artifacts_breaker()
                }),
        );
        let artifact_retry = state
            .breakers
            .retry_budget("artifacts", RetryBudgetConfig::default());
        let prometheus_breaker = state.breakers.get_or_insert(
            "prometheus",
            greenbelt_core::breaker::BreakerConfig {
                slow_call_duration: Duration::from_secs(1),
                sliding_window_size: 10,
                minimum_number_of_calls: 3,
                wait_duration_in_open: Duration::from_secs(30),
                permitted_calls_in_half_open: 1,
                ..Default::default()
            },
        );
        Controller {
            registry,
            artifacts,
            state,
            cache,
            registry_breaker,
            artifacts_breaker,
            artifact_retry,
            prometheus_breaker,
            poll,
            actor: "rollout-controller".into(),
            base_wall_ms: wall_ms(),
            base: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.base_wall_ms
            .saturating_add(i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX))
    }

    /// Run every deployment until the returned handles are aborted;
    /// `on_switch` hears about each change of stable version.
    pub fn spawn(
        self: Arc<Self>,
        deployments: Vec<DeploymentConfig>,
        on_switch: Option<tokio::sync::mpsc::UnboundedSender<Switch>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = deployments
            .into_iter()
            .map(|dep| {
                let me = self.clone();
                let tx = on_switch.clone();
                let wake = wake.clone();
                tokio::spawn(async move { me.run(dep, tx, wake).await })
            })
            .collect();
        // On PostgreSQL, alias moves are also announced (LISTEN/NOTIFY): wake
        // every deployment at once instead of at its next poll.
        let registry = self.registry.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match registry.alias_listener().await {
                    Ok(None) => return,
                    Ok(Some(mut listener)) => {
                        wake.notify_waiters();
                        while listener.recv().await.is_ok() {
                            wake.notify_waiters();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "alias notifications unavailable; polling only")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
        tasks
    }

    async fn run(
        &self,
        dep: DeploymentConfig,
        tx: Option<tokio::sync::mpsc::UnboundedSender<Switch>>,
        wake: Arc<tokio::sync::Notify>,
    ) {
        let mut local = Local::default();
        let mut interval = tokio::time::interval(self.poll);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = wake.notified() => {}
            }
            let started = Instant::now();
            match self.tick(&dep, &mut local, tx.as_ref()).await {
                Ok(()) => {
                    if let Some(since) = local.registry_down_since.take() {
                        tracing::info!(deployment = %dep.name, down_ms = since.elapsed().as_millis() as u64, "registry reachable again");
                    }
                    local.down_logged = 0;
                }
                Err(RegistryError::Db(e)) => {
                    let first = local.registry_down_since.is_none();
                    let since = *local.registry_down_since.get_or_insert(started);
                    // Once when it starts, then at most every 30 s.
                    let down = since.elapsed();
                    if first || down.as_secs() / 30 != local.down_logged {
                        local.down_logged = down.as_secs() / 30;
                        tracing::warn!(deployment = %dep.name, error = %e, down_ms = down.as_millis() as u64, "registry unreachable; keeping the current plan");
                    }
                    self.fail_safe(&dep, &mut local, since.elapsed());
                }
                Err(e) => {
                    tracing::warn!(deployment = %dep.name, error = %e, "deployment tick failed; keeping the current plan");
                }
            }
        }
    }

    /// The registry has been unreachable for `down` in the middle of a
    /// rollout: nothing can be promoted (no decision can be stored). With
    /// `on_registry_error = "rollback"` and `down` past the grace, all
    /// traffic goes back to the stable version here and now; the rollout is
    /// aborted when the registry answers again (see `advance_rollout`).
    fn fail_safe(&self, dep: &DeploymentConfig, local: &mut Local, down: Duration) {
        let Some((id, stable)) = local.active.clone() else {
            return;
        };
        if dep.rollout.on_registry_error != RegistryErrorPolicy::Rollback
            || local.failsafe.as_ref() == Some(&id)
        {
            return;
        }
        let grace = greenbelt_serve::deployment::duration(
            "registry_error_grace",
            &dep.rollout.registry_error_grace,
        )
        .unwrap_or(Duration::from_secs(30));
        if down < grace {
            return;
        }
        let (Some(installed), Some(entry)) = (
            local.installed.clone(),
            self.state.repository.get(&dep.name),
        ) else {
            return;
        };
        // Blue/green after the switch: the old version is still warm.
        let stable = u64::try_from(stable)
            .ok()
            .filter(|k| entry.versions.contains_key(k))
            .unwrap_or(installed.stable);
        let routing = Routing {
            stable,
            canary: None,
            canary_bp: 0,
            preview: None,
            shadows: Vec::new(),
            ..installed
        };
        self.state.metrics.set_canary_weight(&dep.name, 0.0);
        self.state
            .metrics
            .rollout_event(&dep.name, "failsafe_rollback");
        self.state.repository.install_deployment(
            &dep.name,
            dep.config.clone(),
            entry.versions.clone(),
            routing.clone(),
        );
        tracing::error!(deployment = %dep.name, rollout = %id, down_ms = down.as_millis() as u64, "registry unreachable past registry_error_grace mid-rollout: all traffic back on the stable version (on_registry_error = \"rollback\"); the rollout is aborted when the registry answers");
        local.installed = Some(routing);
        local.failsafe = Some(id);
    }

    /// One reconciliation step (public for tests that drive it by hand).
    async fn tick(
        &self,
        dep: &DeploymentConfig,
        local: &mut Local,
        tx: Option<&tokio::sync::mpsc::UnboundedSender<Switch>>,
    ) -> Result<(), RegistryError> {
        let noticed = Instant::now();
        let model = dep.model();
        // The registry part of the tick is bounded: a database that stops
        // answering is an error here (and the fail-safe's clock starts at
        // this tick), not a controller stuck for the pool's timeout.
        let (mut rollout, alias_version) = self
            .registry_call(async {
                let mut rollout = self.advance_rollout(dep, local).await?;
                let alias_version = self.reconcile_aliases(dep, rollout.as_mut()).await?;
                Ok::<_, RegistryError>((rollout, alias_version))
            })
            .await?;
        if let Some((_, r)) = &rollout {
            self.state.rollouts.set(
                &dep.name,
                greenbelt_serve::dashboard::RolloutView {
                    id: r.id.clone(),
                    phase: format!("{:?}", r.phase).to_lowercase(),
                    stable: r.stable,
                    candidate: r.candidate,
                    step: r.step,
                    weight: r.weight / 100.0,
                    reason: r.reason.clone().or_else(|| r.pause_reason.clone()),
                },
            );
        }

        // The plan: a rollout that still owns the traffic, else the alias.
        let plan = match &rollout {
            Some((_, r)) if r.is_active() => Some(r.plan()),
            _ => None,
        };
        let (stable, canary, preview, mut shadows, mut warm) = match plan {
            Some(p) => (
                p.stable,
                p.canary,
                p.preview,
                p.shadow.into_iter().collect::<Vec<_>>(),
                p.warm,
            ),
            None => match alias_version {
                Some(v) => (v, None, None, Vec::new(), Vec::new()),
                None => return Ok(()),
            },
        };
        if local.stable.is_some_and(|s| s != stable) {
            local.previous = local.stable;
        }
        if let Some(p) = local.previous.filter(|p| *p != stable) {
            warm.push(p);
        }
        let mut challenger = None;
        for s in &dep.shadow {
            let v = match (&s.alias, s.version) {
                (Some(a), _) => self.registry.alias(model, a).await?,
                (None, v) => v,
            };
            if let Some(v) = v.filter(|v| *v != stable) {
                shadows.push((v, s.fraction));
                if dep.drift_routing.as_ref().is_some_and(|r| r.names(s)) {
                    challenger = Some(v);
                }
            }
        }

        // Load everything the plan needs before switching anything.
        let entry = self.state.repository.get(&dep.name);
        let mut needed: Vec<i64> = vec![stable];
        needed.extend(canary.map(|c| c.0));
        needed.extend(preview);
        needed.extend(shadows.iter().map(|s| s.0));
        needed.extend(warm.iter().copied());
        needed.sort_unstable();
        needed.dedup();
        let mut versions: BTreeMap<u64, Arc<ServedVersion>> = BTreeMap::new();
        let mut load_error: Option<(i64, String)> = None;
        let mut stable_was_warm = true;
        for v in needed {
            let Ok(key) = u64::try_from(v) else { continue };
            if let Some(s) = entry.as_ref().and_then(|e| e.versions.get(&key)) {
                versions.insert(key, s.clone());
                continue;
            }
            if v == stable {
                stable_was_warm = false;
            }
            if local
                .failed
                .get(&v)
                .is_some_and(|at| at.elapsed() < FAILED_RETRY)
            {
                continue;
            }
            match self.load(dep, v).await {
                Ok((s, provenance)) => {
                    local.failed.remove(&v);
                    local.provenance.insert(v, provenance);
                    versions.insert(key, Arc::new(s));
                }
                Err(e) => {
                    tracing::error!(deployment = %dep.name, version = v, error = %e, "version refused; traffic stays where it is");
                    self.state
                        .repository
                        .record_error(&dep.name, &format!("version {v}: {e}"));
                    local.failed.insert(v, Instant::now());
                    load_error = Some((v, e));
                }
            }
        }
        // A candidate that cannot load fails its rollout.
        if let (Some((v, e)), Some((rev, r))) = (&load_error, rollout.as_mut())
            && r.is_active()
            && *v == r.candidate
        {
            let _ = r.command(super::machine::Command::Abort, self.now_ms(), &self.actor);
            r.reason = Some(format!("candidate version {v} failed to load: {e}"));
            self.persist(dep, *rev, r).await?;
            return Ok(());
        }
        let Some(stable_key) = u64::try_from(stable)
            .ok()
            .filter(|k| versions.contains_key(k))
        else {
            return Ok(());
        };
        let has = |v: i64| u64::try_from(v).ok().filter(|k| versions.contains_key(k));
        let drift = drift_route(dep, challenger.and_then(has), versions.get(&stable_key));
        let routing = Routing {
            stable: stable_key,
            canary: canary.and_then(|(v, _)| has(v)),
            canary_bp: canary.map_or(0, |(_, w)| ((w * 100.0).round() as u32).min(FULL)),
            preview: preview.and_then(has),
            sticky_header: dep.sticky_header.clone(),
            shadows: shadows
                .iter()
                .filter_map(|(v, f)| {
                    has(*v).map(|version| ShadowRoute {
                        version,
                        fraction_bp: ((f * f64::from(FULL)).round() as u32).min(FULL),
                    })
                })
                .collect(),
            drift,
        };
        let same_versions = entry
            .as_ref()
            .is_some_and(|e| e.versions.keys().eq(versions.keys()));
        if local.installed.as_ref() == Some(&routing) && same_versions {
            return Ok(());
        }
        self.state
            .metrics
            .set_canary_weight(&dep.name, f64::from(routing.canary_bp) / f64::from(FULL));
        let from = local.stable;
        self.state.repository.install_deployment(
            &dep.name,
            dep.config.clone(),
            versions,
            routing.clone(),
        );
        local.installed = Some(routing);
        local.stable = Some(stable);
        if from != Some(stable) {
            self.remember(dep, local, stable);
            let sw = Switch {
                route: dep.name.clone(),
                from,
                to: stable,
                took: noticed.elapsed(),
                was_warm: stable_was_warm,
            };
            tracing::info!(
                deployment = %sw.route,
                from = ?sw.from,
                to = sw.to,
                switch_ms = sw.took.as_secs_f64() * 1000.0,
                was_warm = sw.was_warm,
                "deployment switched its stable version"
            );
            if let Some(tx) = tx {
                let _ = tx.send(sw);
            }
        }
        Ok(())
    }

    /// Registry database calls, through its breaker and cut at
    /// [`REGISTRY_TIMEOUT`]: only a database error or silence counts
    /// against it (a conflict or a bad stored rollout does not); while it is
    /// open a tick fails at once with a `Db` error, so the fail-safe's clock
    /// keeps running without waiting on a database known to be down.
    async fn registry_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        self.registry_breaker
            .call(REGISTRY_TIMEOUT, call, |e| matches!(e, RegistryError::Db(_)))
            .await
            .map_err(|e| match e {
                CallError::Failed(e) => e,
                CallError::Timeout(d) => RegistryError::Db(format!(
                    "the registry did not answer within {} s",
                    d.as_secs()
                )),
                CallError::Rejected(r) => RegistryError::Db(format!(
                    "the registry's circuit breaker is {} after repeated failures (next try in {} ms)",
                    r.state.as_str().replace('_', "-"),
                    r.retry_after.as_millis()
                )),
            })
    }

    /// The model file of `record`: from the local artifact cache when it is
    /// there and intact, else from the artifact store (through its breaker,
    /// retried with backoff under the retry budget) and written to the
    /// cache. Returns the cached file.
    async fn fetch_artifact(
        &self,
        record: &greenbelt_registry::ModelVersion,
    ) -> Result<PathBuf, String> {
        let file = self.cache.join(format!("{}.onnx", record.sha256));
        if cached_intact(&file, &record.sha256).await {
            self.fetch_profile(record, &file).await;
            return Ok(file);
        }
        self.artifact_retry.deposit();
        let mut backoff = ARTIFACT_BACKOFF;
        let mut attempt = 0;
        let bytes = loop {
            let got = self
                .artifacts_breaker
                .call(
                    ARTIFACT_TIMEOUT,
                    self.artifacts.get(&record.artifact_uri, &record.sha256),
                    |e| matches!(e, RegistryError::Artifact(_)),
                )
                .await;
            match got {
                Ok(b) => break b,
                Err(CallError::Failed(e @ RegistryError::Artifact(_)))
                    if attempt < ARTIFACT_RETRIES && self.artifact_retry.try_withdraw() =>
                {
                    tracing::warn!(uri = %record.artifact_uri, error = %e, retry_in_ms = backoff.as_millis() as u64, "artifact read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(CallError::Failed(e)) => return Err(e.to_string()),
                Err(other) => {
                    return Err(format!("artifact store ({}): {other}", record.artifact_uri));
                }
            }
        };
        std::fs::create_dir_all(&self.cache)
            .map_err(|e| format!("cache {}: {e}", self.cache.display()))?;
        let tmp = self.cache.join(format!("{}.onnx.tmp", record.sha256));
        std::fs::write(&tmp, &bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &file).map_err(|e| format!("writing {}: {e}", file.display()))?;
        self.fetch_profile(record, &file).await;
        Ok(file)
    }

    /// The version's reference profile (`lineage.profile`), written beside
    /// its cached model file where the server's loader looks for it. A
    /// profile that cannot be read only costs the drift monitor: warned,
    /// not fatal.
    async fn fetch_profile(
        &self,
        record: &greenbelt_registry::ModelVersion,
        model_file: &std::path::Path,
    ) {
        let p = &record.lineage["profile"];
        let (Some(uri), Some(sha)) = (p["uri"].as_str(), p["sha256"].as_str()) else {
            return;
        };
        let file = greenbelt_serve::repository::profile_path(model_file);
        if cached_intact(&file, sha).await {
            return;
        }
        let got = tokio::time::timeout(ARTIFACT_TIMEOUT, self.artifacts.get(uri, sha)).await;
        let written = match got {
            Ok(Ok(bytes)) => {
                let tmp = file.with_extension("json.tmp");
                std::fs::write(&tmp, &bytes)
                    .and_then(|()| std::fs::rename(&tmp, &file))
                    .map_err(|e| format!("writing {}: {e}", file.display()))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer from the artifact store in {ARTIFACT_TIMEOUT:?}"
            )),
        };
        if let Err(e) = written {
            tracing::warn!(model = %record.model, version = record.version, uri, error = %e, "reference profile not fetched; the version serves without drift monitoring");
        }
    }

    /// Remember what `dep` serves now, so a restart while the registry
    /// database is down serves it again (see [`serve_from_cache`]).
    fn remember(&self, dep: &DeploymentConfig, local: &Local, stable: i64) {
        let Some(p) = local.provenance.get(&stable) else {
            return;
        };
        let plan = CachedPlan {
            deployment: dep.name.clone(),
            model: dep.model().to_string(),
            version: stable,
            sha256: p.sha256.clone(),
            fault: p.fault.clone(),
            written_at_ms: wall_ms(),
        };
        if let Err(e) = plan.write(&self.cache) {
            tracing::warn!(deployment = %dep.name, error = %e, "could not record the served version in the artifact cache; a restart while the registry is down will not serve it");
        }
    }

    /// Read, advance and store the deployment's rollout.
    async fn advance_rollout(
        &self,
        dep: &DeploymentConfig,
        local: &mut Local,
    ) -> Result<Option<(i64, Rollout)>, RegistryError> {
        let Some(stored) = self.registry.rollout(&dep.name).await? else {
            local.active = None;
            return Ok(None);
        };
        let mut r: Rollout = match serde_json::from_value(stored.state) {
            Ok(r) => r,
            Err(e) => {
                return Err(RegistryError::Invalid(format!(
                    "stored rollout of \"{}\" is unreadable ({e}); start a new one",
                    dep.name
                )));
            }
        };
        if !r.is_active() {
            local.snap = None;
            local.active = None;
            local.failsafe = None;
            return Ok(Some((stored.rev, r)));
        }
        let now = self.now_ms();
        if local.failsafe.as_ref() == Some(&r.id) {
            // The fail-safe took its traffic away while the registry was
            // down: the rollout ends here, never promoted.
            let _ = r.command(super::machine::Command::Abort, now, &self.actor);
            r.reason = Some(
                "the registry database was unreachable past registry_error_grace mid-rollout; traffic went back to stable (on_registry_error = \"rollback\")".into(),
            );
            local.failsafe = None;
            local.active = None;
            let rev = self.persist(dep, stored.rev, &mut r).await?;
            return Ok(Some((rev, r)));
        }
        local.active = Some((r.id.clone(), r.stable));
        let mut changed = r.tick(now);
        let (cand_v, stable_v) = r.analysed();
        let counters = self.counters(&dep.name, cand_v, stable_v);
        let fresh = local.snap.as_ref().is_none_or(|s| s.rollout != r.id);
        if fresh {
            local.snap = counters.map(|(candidate, stable, shadow)| Snap {
                rollout: r.id.clone(),
                candidate,
                stable,
                shadow,
            });
        } else if r.analysis_due(now)
            && let (Some(snap), Some((candidate, stable, shadow))) = (&local.snap, counters)
        {
            let conditions =
                analysis::conditions(&r.spec.analysis).map_err(RegistryError::Invalid)?;
            let prom = match &r.spec.analysis.prometheus_url {
                Some(url) => {
                    analysis::prometheus(
                        url,
                        &r.spec.analysis.queries,
                        &dep.name,
                        cand_v,
                        self.poll.max(Duration::from_secs(2)),
                        &self.prometheus_breaker,
                    )
                    .await
                }
                None => BTreeMap::new(),
            };
            let mut m = Measurement {
                candidate: candidate.since(&snap.candidate),
                stable: stable.since(&snap.stable),
                shadow: r.plan().shadow.map(|_| shadow.since(&snap.shadow)),
                prom,
                stable_baseline_at_ms: None,
            };
            m.carry_stable(&r.runs);
            let run = analysis::judge(&conditions, r.spec.analysis.min_samples, &m, now);
            tracing::info!(deployment = %dep.name, rollout = %r.id, verdict = ?run.verdict, notes = ?run.notes, "analysis run");
            r.record(now, run);
            local.snap = Some(Snap {
                rollout: r.id.clone(),
                candidate,
                stable,
                shadow,
            });
            changed = true;
        }
        if changed {
            match self.persist(dep, stored.rev, &mut r).await {
                Ok(rev) => return Ok(Some((rev, r))),
                Err(RegistryError::Conflict(_)) => {
                    // Another replica or a person wrote first: use theirs next tick.
                    local.snap = None;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some((stored.rev, r)))
    }

    /// Store `r` over revision `rev`, with its pending events.
    async fn persist(
        &self,
        dep: &DeploymentConfig,
        rev: i64,
        r: &mut Rollout,
    ) -> Result<i64, RegistryError> {
        let attrs = vec![
            greenbelt_core::spans::attr("greenbelt.deployment", dep.name.clone()),
            greenbelt_core::spans::attr("greenbelt.rollout", r.id.clone()),
            greenbelt_core::spans::attr("greenbelt.phase", format!("{:?}", r.phase)),
            greenbelt_core::spans::int("greenbelt.candidate", r.candidate),
        ];
        greenbelt_core::spans::traced("rollout.step", attrs, self.persist_untraced(dep, rev, r))
            .await
    }

    async fn persist_untraced(
        &self,
        dep: &DeploymentConfig,
        rev: i64,
        r: &mut Rollout,
    ) -> Result<i64, RegistryError> {
        let events = std::mem::take(&mut r.pending);
        let state = serde_json::to_value(&*r).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let new_rev = self
            .registry
            .put_rollout(&dep.name, Some(rev), &state, &r.id, &events)
            .await?;
        for (event, detail) in &events {
            self.state.metrics.rollout_event(&dep.name, event);
            tracing::info!(deployment = %dep.name, rollout = %r.id, event = %event, detail = %detail, "rollout event");
        }
        Ok(new_rev)
    }

    /// Live counters of the candidate, the stable version, and the
    /// candidate's shadow comparison, when both versions are loaded.
    fn counters(
        &self,
        deployment: &str,
        candidate: i64,
        stable: i64,
    ) -> Option<(LiveSnapshot, LiveSnapshot, ShadowCounters)> {
        let entry = self.state.repository.get(deployment)?;
        let c = u64::try_from(candidate).ok()?;
        let s = u64::try_from(stable).ok()?;
        let cand = entry.versions.get(&c)?.metrics.live();
        let stab = entry.versions.get(&s)?.metrics.live();
        let shadow = self.state.shadows.stats(deployment, c).counters();
        Some((cand, stab, shadow))
    }

    /// Move the aliases a rollout decided; returns where the stable alias
    /// points afterwards.
    async fn reconcile_aliases(
        &self,
        dep: &DeploymentConfig,
        rollout: Option<&mut (i64, Rollout)>,
    ) -> Result<Option<i64>, RegistryError> {
        let model = dep.model();
        let mut current = self.registry.alias(model, &dep.alias).await?;
        let Some((rev, r)) = rollout else {
            return Ok(current);
        };
        if r.alias_done {
            return Ok(current);
        }
        let target = match r.phase {
            Phase::Promoted | Phase::PostPromotion => Some(r.candidate),
            Phase::Aborted if r.switched_ms.is_some() => Some(r.stable),
            _ => None,
        };
        if let Some(t) = target
            && current != Some(t)
        {
            let why = match r.phase {
                Phase::Aborted => format!(
                    "rollout {} rolled back: {}",
                    r.id,
                    r.reason.clone().unwrap_or_default()
                ),
                _ => format!("rollout {} promoted version {t}", r.id),
            };
            self.registry
                .set_alias(model, &dep.alias, t, &self.actor, &why)
                .await?;
            current = Some(t);
        }
        // The `canary` alias names the candidate while a rollout runs.
        let canary = self.registry.alias(model, "canary").await?;
        if r.is_active() && canary != Some(r.candidate) {
            self.registry
                .set_alias(
                    model,
                    "canary",
                    r.candidate,
                    &self.actor,
                    &format!("rollout {} started", r.id),
                )
                .await?;
        }
        if !r.is_active() {
            if canary == Some(r.candidate) {
                let why = match r.phase {
                    Phase::Aborted => format!(
                        "rollout {} aborted: {}",
                        r.id,
                        r.reason.clone().unwrap_or_default()
                    ),
                    _ => format!("rollout {} promoted", r.id),
                };
                self.registry
                    .delete_alias(model, "canary", &self.actor, &why)
                    .await?;
            }
            r.alias_done = true;
            match self.persist(dep, *rev, r).await {
                Ok(new) => *rev = new,
                Err(RegistryError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(current)
    }

    async fn load(
        &self,
        dep: &DeploymentConfig,
        target: i64,
    ) -> Result<(ServedVersion, Provenance), String> {
        let attrs = vec![
            greenbelt_core::spans::attr("greenbelt.deployment", dep.name.clone()),
            greenbelt_core::spans::int("greenbelt.model_version", target),
        ];
        greenbelt_core::spans::traced(
            "rollout.load_version",
            attrs,
            self.load_untraced(dep, target),
        )
        .await
    }

    async fn load_untraced(
        &self,
        dep: &DeploymentConfig,
        target: i64,
    ) -> Result<(ServedVersion, Provenance), String> {
        let record = self
            .registry_call(self.registry.version(dep.model(), target))
            .await
            .map_err(|e| e.to_string())?;
        if record.format != "onnx" {
            return Err(format!(
                "format \"{}\" is not servable (onnx only)",
                record.format
            ));
        }
        let file = self.fetch_artifact(&record).await?;
        let provenance = Provenance {
            sha256: record.sha256.clone(),
            fault: record
                .tags
                .get("fault")
                .and_then(|f| f.as_str())
                .map(str::to_string),
        };
        let v = u64::try_from(target).map_err(|_| format!("version {target} is not positive"))?;
        let served = load_file(&self.state, dep, v, file, provenance.fault.clone()).await?;
        Ok((served, provenance))
    }
}

/// Load `file` as version `v` of `dep` (with its drill fault, when the
/// server allows faults) and warm it, on a blocking thread.
async fn load_file(
    state: &Arc<AppState>,
    dep: &DeploymentConfig,
    v: u64,
    file: PathBuf,
    fault: Option<String>,
) -> Result<ServedVersion, String> {
    let repo = state.repository.clone();
    let name = dep.name.clone();
    let config = dep.config.clone();
    let allow_faults = state.config.server.allow_fault_injection;
    tokio::task::spawn_blocking(move || {
        let served = match fault {
            None => repo.load_file(&name, v, &file, &config)?,
            Some(f) if allow_faults => {
                let fault = greenbelt_serve::fault::Fault::parse(&f)?;
                repo.load_file_with_fault(&name, v, &file, &config, fault)?
            }
            Some(f) => {
                return Err(format!(
                    "version {v} carries the drill tag fault=\"{f}\"; set [server] allow_fault_injection = true to serve it (drills only)"
                ));
            }
        };
        served.warm()?;
        Ok::<_, String>(served)
    })
    .await
    .map_err(|e| format!("load task failed: {e}"))?
}

/// Whether `file` exists and hashes to `sha256` (read on a blocking thread).
async fn cached_intact(file: &std::path::Path, sha256: &str) -> bool {
    let file = file.to_path_buf();
    let want = sha256.to_string();
    tokio::task::spawn_blocking(move || match std::fs::read(&file) {
        Ok(bytes) => greenbelt_registry::artifacts::sha256_hex(&bytes) == want,
        Err(_) => false,
    })
    .await
    .unwrap_or(false)
}

/// What a deployment last served, recorded in the artifact cache
/// (`<cache_dir>/deployments/<name>.json`) each time its stable version
/// changes: what [`serve_from_cache`] starts from when the registry
/// database is down at start-up.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CachedPlan {
    pub deployment: String,
    pub model: String,
    pub version: i64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// When it was recorded, ms since the Unix epoch.
    pub written_at_ms: i64,
}

impl CachedPlan {
    fn path(cache: &std::path::Path, deployment: &str) -> PathBuf {
        cache.join("deployments").join(format!("{deployment}.json"))
    }

    /// Write it atomically (a temporary file renamed over the old one).
    pub fn write(&self, cache: &std::path::Path) -> Result<(), String> {
        let path = Self::path(cache, &self.deployment);
        let dir = cache.join("deployments");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The plan recorded for `deployment`, if any; an unreadable record is
    /// an error naming the file.
    pub fn read(cache: &std::path::Path, deployment: &str) -> Result<Option<CachedPlan>, String> {
        let path = Self::path(cache, deployment);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a cached plan ({e}); delete it", path.display()))
    }
}

/// The registry database is down at start-up: serve `dep`'s last recorded
/// version from the artifact cache (integrity-checked), stable only, with
/// no rollout (nothing can be decided without the registry). Returns the
/// plan served; an error says why the deployment cannot serve yet (the
/// controller loads it once the registry answers).
pub async fn serve_from_cache(
    state: &Arc<AppState>,
    dep: &DeploymentConfig,
    cache: &std::path::Path,
) -> Result<CachedPlan, String> {
    let plan = CachedPlan::read(cache, &dep.name)?.ok_or_else(|| {
        format!(
            "nothing cached for deployment \"{}\" in {} (it has never been served from this directory)",
            dep.name,
            cache.display()
        )
    })?;
    if plan.model != dep.model() {
        return Err(format!(
            "the cached plan of \"{}\" is for model \"{}\", the deployment now serves \"{}\"",
            dep.name,
            plan.model,
            dep.model()
        ));
    }
    let file = cache.join(format!("{}.onnx", plan.sha256));
    if !cached_intact(&file, &plan.sha256).await {
        return Err(format!(
            "the cached artifact {} is missing or does not match sha256 {}",
            file.display(),
            plan.sha256
        ));
    }
    let v = u64::try_from(plan.version)
        .map_err(|_| format!("cached version {} is not positive", plan.version))?;
    let served = load_file(state, dep, v, file, plan.fault.clone()).await?;
    let routing = Routing {
        stable: v,
        canary: None,
        canary_bp: 0,
        preview: None,
        sticky_header: dep.sticky_header.clone(),
        shadows: Vec::new(),
        drift: None,
    };
    state.metrics.set_canary_weight(&dep.name, 0.0);
    state.repository.install_deployment(
        &dep.name,
        dep.config.clone(),
        BTreeMap::from([(v, Arc::new(served))]),
        routing,
    );
    Ok(plan)
}

/// The plan's drift-routing rule: the loaded challenger and the stable
/// version's in-distribution bounds (none when the stable version has no
/// reference profile: nothing can be judged drifted, which is logged).
fn drift_route(
    dep: &DeploymentConfig,
    challenger: Option<u64>,
    stable: Option<&Arc<ServedVersion>>,
) -> Option<greenbelt_serve::routing::DriftRoute> {
    let spec = dep.drift_routing.as_ref()?;
    let (Some(version), Some(stable)) = (challenger, stable) else {
        return None;
    };
    let Some(monitor) = &stable.drift else {
        tracing::warn!(deployment = %dep.name, version = stable.version, "drift_routing is set but the stable version has no reference profile; no request is routed to the challenger");
        return None;
    };
    Some(greenbelt_serve::routing::DriftRoute {
        version,
        action: spec.action,
        bounds: Arc::new(monitor.bounds(spec.lower_quantile, spec.upper_quantile)),
        min_features: spec.min_features,
    })
}
