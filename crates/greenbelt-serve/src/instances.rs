//! In-process scaling: what one process can scale of a served version,
//! sized by the same recommender that sizes replicas
//! (`greenbelt_core::autoscale`, Knative KPA or HPA v2).
//!
//! - **Instances**: copies of the model. ONNX Runtime keeps a pool of
//!   sessions, each running one call at a time
//!   ([`greenbelt_runtime::Model::set_instances`]); the native engine and
//!   tract are one thread-safe object, so for them an instance is only a
//!   slot of concurrency.
//! - **Batcher concurrency**: how many batches of the version run at once,
//!   one per instance: a resizable semaphore ([`Width`]) the batcher takes
//!   a permit of before it dispatches a batch.
//!
//! `[deployments.instances]` ([`InstancesSpec`]) bounds them. Every
//! `[autoscale] interval` the autoscaler's evaluation (`autoscale.rs`)
//! hands each version's live counters to its [`VersionScaler`], which feeds
//! its recommender (concurrency per instance, this process only) and moves
//! the version's [`InstancePool`] toward the answer. Up: new sessions are
//! loaded on a blocking thread, off the request path and within
//! `load_timeout`, and only then does the width grow. Down: the width
//! shrinks first (batches running on the retired instances finish, no new
//! one starts), then the sessions beyond it are dropped once their last
//! call is done.
//!
//! The request path pays nothing new: a batch takes one permit as before,
//! and returning it reads one atomic (whether a shrink is owed a permit).
//! Unbatched calls run on the compute pool as before; for them the session
//! count is what scales.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenbelt_core::autoscale::{Metric, Observation, Policy, Recommender};
use greenbelt_runtime::{MAX_INSTANCES, Model};
use serde::{Deserialize, Serialize};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::live::LiveSnapshot;
use crate::metrics::{InstanceGauges, Metrics};
use crate::repository::ModelEntry;

/// `[deployments.instances]`: the bounds of in-process scaling for one
/// deployment's versions. Absent: each version keeps the
/// `[deployments.config] instances` it was loaded with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InstancesSpec {
    /// Fewest instances per version (1).
    pub min: usize,
    /// Most instances per version (at most 64). Default: the server's
    /// compute threads, since an instance runs one call at a time on one
    /// of them.
    pub max: Option<usize>,
    /// Requests in flight one instance should carry (1: one call at a
    /// time, Knative's `containerConcurrency = 1`). With batching, an
    /// instance carries a batch: raise it towards the rows a batch holds.
    pub target: f64,
    /// Share of `target` to aim for. Default: the deployment's
    /// `[deployments.autoscale] target_utilization` (0.7).
    pub target_utilization: Option<f64>,
    /// Longest that loading new instances may take (humantime). Past it
    /// the scale-up is given up, counted and retried at a later evaluation.
    pub load_timeout: String,
}

impl Default for InstancesSpec {
    fn default() -> Self {
        InstancesSpec {
            min: 1,
            max: None,
            target: 1.0,
            target_utilization: None,
            load_timeout: "30s".into(),
        }
    }
}

/// A deployment's validated in-process scaling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSettings {
    /// The replica policy with the instance bounds and target: same
    /// algorithm, windows, rates and latency objective.
    pub policy: Policy,
    pub load_timeout: Duration,
}

impl InstancesSpec {
    /// The largest count allowed (`max`, or the compute threads, never
    /// below `min`).
    pub fn max(&self, compute_threads: usize) -> usize {
        self.max.unwrap_or(compute_threads.max(self.min))
    }

    /// Validate against the deployment's replica `policy`; errors name the
    /// field (`max = 100 must be at most 64`).
    pub fn settings(
        &self,
        replicas: &Policy,
        compute_threads: usize,
    ) -> Result<InstanceSettings, String> {
        let max = self.max(compute_threads);
        if self.min == 0 {
            return Err("min must be >= 1 (a served version needs an instance)".into());
        }
        if max > MAX_INSTANCES {
            return Err(format!("max = {max} must be at most {MAX_INSTANCES}"));
        }
        if max < self.min {
            return Err(format!("max = {max} is below min = {}", self.min));
        }
        if !(self.target.is_finite() && self.target > 0.0) {
            return Err(format!("target = {} must be a number > 0", self.target));
        }
        let utilization = self
            .target_utilization
            .unwrap_or(replicas.target_utilization);
        if !(utilization > 0.0 && utilization <= 1.0) {
            return Err(format!(
                "target_utilization = {utilization} must be in (0, 1]"
            ));
        }
        let load_timeout = crate::deployment::duration("load_timeout", &self.load_timeout)?;
        if load_timeout < Duration::from_millis(1) {
            return Err(format!(
                "load_timeout = \"{}\" must be at least 1ms",
                self.load_timeout
            ));
        }
        let policy = Policy {
            metric: Metric::Concurrency,
            target: self.target,
            target_utilization: utilization,
            min_replicas: u32::try_from(self.min).unwrap_or(u32::MAX),
            max_replicas: u32::try_from(max).unwrap_or(u32::MAX),
            ..replicas.clone()
        };
        policy.validate()?;
        Ok(InstanceSettings {
            policy,
            load_timeout,
        })
    }
}

/// A semaphore whose size can change while permits are out: the batcher's
/// concurrency. Growing adds permits; shrinking forgets the free ones at
/// once and owes the rest, which are forgotten as they come back, so the
/// batches running on a retired instance finish and no new one starts.
#[derive(Debug)]
pub struct Width {
    sem: Arc<Semaphore>,
    /// The width asked for.
    target: AtomicUsize,
    /// Permits to forget as they come back.
    owed: AtomicUsize,
    /// One resize at a time (never taken by a batch).
    resize: Mutex<()>,
}

/// A permit of a [`Width`]; returned (or retired) on drop.
#[derive(Debug)]
pub struct WidthPermit {
    permit: Option<OwnedSemaphorePermit>,
    width: Arc<Width>,
}

impl Drop for WidthPermit {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take()
            && self
                .width
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1))
                .is_ok()
        {
            p.forget();
        }
    }
}

impl Width {
    /// `n` (at least 1) permits.
    pub fn new(n: usize) -> Arc<Width> {
        let n = n.max(1);
        Arc::new(Width {
            sem: Arc::new(Semaphore::new(n)),
            target: AtomicUsize::new(n),
            owed: AtomicUsize::new(0),
            resize: Mutex::new(()),
        })
    }

    /// Wait for a permit.
    pub async fn acquire(self: &Arc<Self>) -> Result<WidthPermit, AcquireError> {
        let permit = self.sem.clone().acquire_owned().await?;
        Ok(WidthPermit {
            permit: Some(permit),
            width: self.clone(),
        })
    }

    /// The width asked for.
    pub fn get(&self) -> usize {
        self.target.load(Ordering::Acquire)
    }

    /// Permits held now (a shrink's owed ones included until they return).
    pub fn in_use(&self) -> usize {
        (self.get() + self.owed.load(Ordering::Acquire))
            .saturating_sub(self.sem.available_permits())
    }

    /// Make the width `n` (at least 1).
    pub fn resize(&self, n: usize) {
        let n = n.max(1);
        let Ok(_one) = self.resize.lock() else {
            return;
        };
        let current = self.target.swap(n, Ordering::AcqRel);
        if n > current {
            // Cancel owed permits first: they are still out, and now stay.
            let grow = n - current;
            let owed = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                    Some(o.saturating_sub(grow))
                })
                .unwrap_or(0);
            self.sem.add_permits(grow - owed.min(grow));
        } else if n < current {
            let shrink = current - n;
            let forgotten = self.sem.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }
}

/// What one evaluation did to a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Already at the recommendation.
    Hold,
    /// Widened, or started loading instances (then widened when loaded).
    Up,
    /// Narrowed (running batches drain; retired sessions are dropped after).
    Down,
    /// A resize of the model's pool is still running: nothing changed.
    Busy,
}

/// One served version's instances: its model (for the session pool) and
/// its width (the batcher's concurrency).
pub struct InstancePool {
    model: Arc<dyn Model>,
    width: Arc<Width>,
    batched: bool,
    /// A resize of the model's pool is running (one at a time).
    busy: AtomicBool,
    /// Scale-ups that failed or ran past their load timeout.
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl InstancePool {
    /// `model` loaded with `instances` copies; `batched`: the version has a
    /// batcher that takes [`InstancePool::width`] permits.
    pub fn new(model: Arc<dyn Model>, instances: usize, batched: bool) -> InstancePool {
        InstancePool {
            model,
            width: Width::new(instances),
            batched,
            busy: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The batcher's concurrency.
    pub fn width(&self) -> &Arc<Width> {
        &self.width
    }

    /// Instances in service.
    pub fn instances(&self) -> usize {
        self.width.get()
    }

    /// Model copies loaded (ONNX Runtime sessions); `None`: one thread-safe
    /// object.
    pub fn sessions(&self) -> Option<usize> {
        self.model.instances()
    }

    /// Whether changing the count changes anything: the version has a
    /// batcher (whose concurrency it is) or a pool of sessions.
    pub fn scalable(&self) -> bool {
        self.batched || self.sessions().is_some()
    }

    pub fn batched(&self) -> bool {
        self.batched
    }

    /// Scale-ups that failed or timed out, and the last reason.
    pub fn failures(&self) -> (u64, Option<String>) {
        (
            self.failures.load(Ordering::Relaxed),
            self.last_error.lock().ok().and_then(|e| e.clone()),
        )
    }

    fn fail(&self, why: String) {
        tracing::warn!(error = %why, "in-process scale-up failed");
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why);
        }
    }

    /// Move toward `n` instances (clamped to `1..=64`). Never blocks: loads
    /// and drains run on a blocking thread (this needs a tokio runtime).
    pub fn scale_to(self: &Arc<Self>, n: usize, load_timeout: Duration) -> Step {
        let n = n.clamp(1, MAX_INSTANCES);
        if self.busy.load(Ordering::Acquire) {
            return Step::Busy;
        }
        let current = self.width.get();
        let Some(loaded) = self.sessions() else {
            // One thread-safe object: the width is all there is.
            self.width.resize(n);
            return direction(current, n);
        };
        if n <= current || loaded >= n {
            // Narrow first, so no new batch starts on a retired session;
            // then drop the sessions beyond `n` once their calls are done.
            self.width.resize(n);
            if loaded > n {
                self.spawn_resize(n, None);
            }
            return direction(current, n);
        }
        self.spawn_resize(n, Some(load_timeout));
        Step::Up
    }

    /// Resize the model's pool to `n` on a blocking thread; with `widen`,
    /// a scale-up: widen to what loaded, unless it took longer than that.
    fn spawn_resize(self: &Arc<Self>, n: usize, widen: Option<Duration>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.fail("no async runtime to load instances on".into());
            return;
        };
        self.busy.store(true, Ordering::Release);
        let pool = self.clone();
        rt.spawn(async move {
            let model = pool.model.clone();
            let mut job = tokio::task::spawn_blocking(move || model.set_instances(n));
            let done = match widen {
                None => Some((&mut job).await),
                Some(limit) => match tokio::time::timeout(limit, &mut job).await {
                    Ok(r) => Some(r),
                    Err(_) => {
                        pool.fail(format!(
                            "loading instances up to {n} took longer than load_timeout ({limit:?}); the width stays {}",
                            pool.width.get()
                        ));
                        // Keep the pool busy until the load ends; a later
                        // evaluation uses what it loaded.
                        let _ = job.await;
                        None
                    }
                },
            };
            let finished = done.is_some();
            match done {
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err(e))) => pool.fail(format!("loading instances up to {n}: {e}")),
                Some(Err(e)) => pool.fail(format!("instance resize task failed: {e}")),
                None => {}
            }
            if widen.is_some() && finished {
                // Widen to what is loaded (all of it, or what loaded before
                // an error).
                let loaded = pool.sessions().unwrap_or(n).min(n);
                if loaded > pool.width.get() {
                    pool.width.resize(loaded);
                }
            }
            pool.busy.store(false, Ordering::Release);
        });
    }
}

fn direction(from: usize, to: usize) -> Step {
    match to.cmp(&from) {
        std::cmp::Ordering::Greater => Step::Up,
        std::cmp::Ordering::Less => Step::Down,
        std::cmp::Ordering::Equal => Step::Hold,
    }
}

/// What `/admin/autoscaler` shows of one version's instances.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    pub min: u32,
    pub max: u32,
    /// Requests in flight per instance aimed for (target × utilization).
    pub effective_target: f64,
    /// What the recommender asked for at the last evaluation.
    pub desired: u32,
    /// Instances in service after the last evaluation's step.
    pub instances: usize,
    /// Batches that may run at once (`null`: the version has no batcher).
    pub batch_concurrency: Option<usize>,
    /// ONNX Runtime sessions loaded (`null`: one thread-safe instance).
    pub sessions: Option<usize>,
    /// Instances running a call now (batched versions).
    pub in_use: usize,
    pub step: Step,
    /// The interval's average requests in flight and their p99.
    pub observed_concurrency: f64,
    pub observed_p99_ms: Option<f64>,
    pub stable_value: f64,
    pub panic_value: f64,
    pub panic_mode: bool,
    pub failures: u64,
    pub last_error: Option<String>,
    /// Why nothing is scaled, when nothing can be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

const NOT_SCALABLE: &str = "one thread-safe model instance and no batcher: its calls run on the compute pool (up to compute_threads at once); give the deployment [deployments.config.batching] to scale its batch concurrency";

/// One served version's in-process scaler: its recommender and the counts
/// at the last evaluation. Time is an argument.
pub struct VersionScaler {
    recommender: Recommender,
    load_timeout: Duration,
    started: Instant,
    last: LiveSnapshot,
    last_at: Instant,
    latest: Option<InstanceReport>,
}

impl VersionScaler {
    /// Start from the version's counts `live` at `now`.
    pub fn new(settings: &InstanceSettings, live: LiveSnapshot, now: Instant) -> VersionScaler {
        VersionScaler {
            recommender: Recommender::new(settings.policy.clone()),
            load_timeout: settings.load_timeout,
            started: now,
            last: live,
            last_at: now,
            latest: None,
        }
    }

    /// The last evaluation's report.
    pub fn latest(&self) -> Option<&InstanceReport> {
        self.latest.as_ref()
    }

    /// Feed the interval since the last call (the version's cumulative
    /// counts `live` at `now`), ask the recommender, and move `pool`
    /// toward its answer.
    pub fn evaluate(
        &mut self,
        live: LiveSnapshot,
        pool: &Arc<InstancePool>,
        now: Instant,
    ) -> Option<&InstanceReport> {
        let elapsed = now.saturating_duration_since(self.last_at);
        if elapsed.is_zero() {
            return self.latest.as_ref();
        }
        let delta = live.minus(&self.last);
        let secs = elapsed.as_secs_f64();
        let (concurrency, p99_s) = crate::autoscale::interval_load(&delta, secs);
        let at = now.saturating_duration_since(self.started);
        self.recommender.observe(
            at,
            Observation {
                concurrency,
                rps: delta.requests as f64 / secs,
                p99_s,
            },
        );
        let current = u32::try_from(pool.instances()).unwrap_or(u32::MAX);
        let rec = self.recommender.recommend(at, current);
        let scalable = pool.scalable();
        let step = if scalable {
            pool.scale_to(rec.desired_replicas as usize, self.load_timeout)
        } else {
            Step::Hold
        };
        let policy = self.recommender.policy();
        let (failures, last_error) = pool.failures();
        self.latest = Some(InstanceReport {
            min: policy.min_replicas,
            max: policy.max_replicas,
            effective_target: policy.effective_target(),
            desired: rec.desired_replicas,
            instances: pool.instances(),
            batch_concurrency: pool.batched().then(|| pool.instances()),
            sessions: pool.sessions(),
            in_use: pool.width().in_use(),
            step,
            observed_concurrency: concurrency,
            observed_p99_ms: p99_s.map(|s| s * 1000.0),
            stable_value: rec.stable_value,
            panic_value: rec.panic_value,
            panic_mode: rec.panic_mode,
            failures,
            last_error,
            note: (!scalable).then_some(NOT_SCALABLE),
        });
        self.last = live;
        self.last_at = now;
        self.latest.as_ref()
    }
}

/// Evaluate every version of one deployment (`model`): new versions get a
/// scaler, versions no longer served lose theirs and their series.
pub fn evaluate_deployment(
    scalers: &mut BTreeMap<String, VersionScaler>,
    settings: &InstanceSettings,
    model: &ModelEntry,
    metrics: &Metrics,
    now: Instant,
) {
    scalers.retain(|label, _| {
        let keep = model
            .versions
            .values()
            .any(|v| v.version_label.as_ref() == label);
        if !keep {
            metrics.forget_instances(&model.name, label);
        }
        keep
    });
    for v in model.versions.values() {
        let live = v.metrics.live();
        let Some(scaler) = scalers.get_mut(v.version_label.as_ref()) else {
            scalers.insert(
                v.version_label.to_string(),
                VersionScaler::new(settings, live, now),
            );
            continue;
        };
        if let Some(r) = scaler.evaluate(live, &v.instances, now) {
            metrics.set_instances(
                &model.name,
                &v.version_label,
                &InstanceGauges {
                    instances: r.instances,
                    desired: r.desired,
                    sessions: r.sessions,
                    batch_concurrency: r.batch_concurrency,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::{Signature, Tensor};
    use greenbelt_runtime::{Backend, RuntimeError};

    #[test]
    fn spec_defaults_and_bad_values_name_the_field() {
        let replicas = Policy::default();
        let s = InstancesSpec::default().settings(&replicas, 4).unwrap();
        assert_eq!((s.policy.min_replicas, s.policy.max_replicas), (1, 4));
        assert_eq!(s.policy.metric, Metric::Concurrency);
        assert_eq!(s.policy.target, 1.0);
        assert_eq!(s.policy.target_utilization, replicas.target_utilization);
        assert_eq!(s.policy.stable_window, replicas.stable_window);
        assert_eq!(s.load_timeout, Duration::from_secs(30));
        // The default max never falls below min.
        let s = InstancesSpec {
            min: 6,
            ..Default::default()
        };
        assert_eq!(s.settings(&replicas, 2).unwrap().policy.max_replicas, 6);
        for (spec, field) in [
            (
                InstancesSpec {
                    min: 0,
                    ..Default::default()
                },
                "min",
            ),
            (
                InstancesSpec {
                    min: 3,
                    max: Some(2),
                    ..Default::default()
                },
                "max = 2 is below min = 3",
            ),
            (
                InstancesSpec {
                    max: Some(65),
                    ..Default::default()
                },
                "max = 65 must be at most 64",
            ),
            (
                InstancesSpec {
                    target: 0.0,
                    ..Default::default()
                },
                "target",
            ),
            (
                InstancesSpec {
                    target_utilization: Some(1.5),
                    ..Default::default()
                },
                "target_utilization",
            ),
            (
                InstancesSpec {
                    load_timeout: "soon".into(),
                    ..Default::default()
                },
                "load_timeout",
            ),
        ] {
            let e = spec.settings(&replicas, 4).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn width_grows_at_once_and_shrinks_as_permits_come_back() {
        let w = Width::new(2);
        let a = w.acquire().await.unwrap();
        let b = w.acquire().await.unwrap();
        assert_eq!(w.in_use(), 2);
        // Full: a third waits.
        let third = tokio::time::timeout(Duration::from_millis(10), w.acquire()).await;
        assert!(third.is_err());
        // Grow: the third gets one at once.
        w.resize(3);
        let c = w.acquire().await.unwrap();
        // Shrink to 1 with three out: nothing is taken away, two are owed.
        w.resize(1);
        assert_eq!((w.get(), w.in_use()), (1, 3));
        drop(a);
        drop(b);
        // Both retired on return: still full with one out.
        assert_eq!(w.in_use(), 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), w.acquire())
                .await
                .is_err()
        );
        drop(c);
        let d = w.acquire().await.unwrap();
        assert_eq!(w.in_use(), 1);
        // Shrink then grow before the owed permit returns: the debt is
        // cancelled, not paid and re-added.
        w.resize(3);
        let e = w.acquire().await.unwrap();
        w.resize(1);
        assert_eq!(w.in_use(), 2);
        w.resize(2);
        assert_eq!(w.in_use(), 2);
        drop(d);
        drop(e);
        assert_eq!((w.get(), w.in_use()), (2, 0));
        let _x = w.acquire().await.unwrap();
        let _y = w.acquire().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), w.acquire())
                .await
                .is_err()
        );
    }

    /// A model with a pool of "sessions" that only counts them; loading
    /// one takes real time on the blocking thread.
    struct Pooled {
        sig: Signature,
        sessions: AtomicUsize,
        most: AtomicUsize,
    }

    impl Model for Pooled {
        fn signature(&self) -> &Signature {
            &self.sig
        }
        fn backend(&self) -> Backend {
            Backend::Onnxruntime
        }
        fn infer(&self, _: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            Ok(Vec::new())
        }
        fn instances(&self) -> Option<usize> {
            Some(self.sessions.load(Ordering::SeqCst))
        }
        fn set_instances(&self, n: usize) -> Result<Option<usize>, RuntimeError> {
            let n = n.clamp(1, MAX_INSTANCES);
            self.sessions.store(n, Ordering::SeqCst);
            self.most.fetch_max(n, Ordering::SeqCst);
            Ok(Some(n))
        }
    }

    /// A load step on the paused clock, through the whole loop: requests
    /// hold a permit of the version's width for 10 ms of service (what a
    /// batch holds while it runs), the version's live counters see them,
    /// the scaler feeds the recommender every 100 ms and resizes the pool
    /// (sessions loaded on a blocking thread, then the width). 20 req/s for
    /// 5 s, then 300 req/s for 10 s (3 instances' worth, ~4.3 at 70 %),
    /// then nothing.
    #[tokio::test(start_paused = true)]
    async fn a_load_step_scales_instances_up_within_the_windows_and_back_down() {
        let settings = InstancesSpec {
            min: 1,
            max: Some(6),
            ..Default::default()
        }
        .settings(
            &Policy {
                stable_window: Duration::from_secs(6),
                panic_window: Duration::from_millis(600),
                ..Policy::default()
            },
            2,
        )
        .unwrap();
        let model = Arc::new(Pooled {
            sig: Signature::default(),
            sessions: AtomicUsize::new(1),
            most: AtomicUsize::new(1),
        });
        let pool = Arc::new(InstancePool::new(model.clone(), 1, true));
        let metrics = Metrics::new().version("scorer", "1");
        let start = Instant::now();
        let mut scaler = VersionScaler::new(&settings, metrics.live(), start);

        // Open-loop arrivals; each request waits for a permit, holds it
        // 10 ms, and is recorded with its time in the server.
        let load = {
            let pool = pool.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut requests = Vec::new();
                for (rate, secs) in [(20.0, 5u64), (300.0, 10)] {
                    let gap = Duration::from_secs_f64(1.0 / rate);
                    let until = Instant::now() + Duration::from_secs(secs);
                    while Instant::now() < until {
                        let width = pool.width().clone();
                        let metrics = metrics.clone();
                        requests.push(tokio::spawn(async move {
                            let t0 = Instant::now();
                            let permit = width.acquire().await.unwrap();
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            drop(permit);
                            metrics.request(
                                crate::metrics::Protocol::Rest,
                                crate::error::Outcome::Success,
                                t0.elapsed(),
                                None,
                            );
                        }));
                        tokio::time::sleep(gap).await;
                    }
                }
                for r in requests {
                    r.await.unwrap();
                }
            })
        };

        // The control loop, every 100 ms for 40 s; (seconds, instances).
        let mut seen: Vec<(f64, usize)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while start.elapsed() < Duration::from_secs(40) {
            tick.tick().await;
            scaler.evaluate(metrics.live(), &pool, Instant::now());
            let n = pool.instances();
            assert!((1..=6).contains(&n), "left the bounds: {n}");
            assert!(
                model.sessions.load(Ordering::SeqCst) >= n,
                "the width never runs ahead of the loaded sessions"
            );
            seen.push((start.elapsed().as_secs_f64(), n));
        }
        load.await.unwrap();
        let at = |from: f64, to: f64| -> Vec<usize> {
            seen.iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|(_, n)| *n)
                .collect()
        };
        // Before the step: 20 req/s × 10 ms = 0.2 in flight: one instance.
        assert!(at(0.0, 5.0).iter().all(|n| *n == 1), "{seen:?}");
        // After the step (at 5 s): up within the panic window and a load.
        let rose = seen
            .iter()
            .find(|(t, n)| *t >= 5.0 && *n >= 4)
            .map(|(t, _)| *t)
            .unwrap_or(f64::MAX);
        assert!(rose < 6.5, "instances reached 4 at {rose} s: {seen:?}");
        // Holding the load: 300 req/s needs 3 busy instances; 70 % of each
        // asks for 5 (4.3 rounded up), bounded by max 6.
        let held = at(8.0, 15.0);
        assert!(held.iter().all(|n| (4..=6).contains(n)), "{seen:?}");
        assert!((4..=6).contains(&model.most.load(Ordering::SeqCst)));
        // The load stops at 15 s; the stable window (6 s) forgets it and
        // KPA halves per evaluation: back to the minimum well within 10 s.
        let fell = seen
            .iter()
            .find(|(t, n)| *t >= 15.0 && *n == 1)
            .map(|(t, _)| *t)
            .unwrap_or(f64::MAX);
        assert!(fell < 25.0, "back to 1 at {fell} s: {seen:?}");
        assert!(at(25.0, 40.0).iter().all(|n| *n == 1), "{seen:?}");
        // Sessions follow the width down once drained.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(model.sessions.load(Ordering::SeqCst), 1);
        let r = scaler.latest().unwrap();
        assert_eq!(
            (r.instances, r.sessions, r.batch_concurrency),
            (1, Some(1), Some(1))
        );
        assert_eq!(r.failures, 0);
    }
}
