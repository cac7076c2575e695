//! The one transport-neutral inference path. REST and gRPC admit the
//! request (before decoding its body), decode it into an [`InferRequest`],
//! call [`infer`], and encode what it returns. A single request is a batch
//! of one. The stages themselves live in [`crate::stages`]; this module
//! runs them in order:
//!
//! admit (transport, before decode) → route → limit → enrich → validate →
//! execute → observe, with everything from route to execute under the
//! request timeout, counted from when the request was decoded. Limit is the
//! model's adaptive concurrency limit (`stages/limit.rs`); execute sheds a
//! request whose wait for compute passes `[server] queue_budget_ms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use greenbelt_core::{InferRequest, InferResponse, Tensor};

use crate::auth::Auth;
use crate::compute::Compute;
use crate::config::Config;
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::repository::{Repository, Routed, ServedVersion};
use crate::reqlog::RequestLog;
use crate::routing::{TRACK_HEADER, Track};
use crate::shadow::Shadows;
pub use crate::stages::admit::{Admission, Permit};
pub use crate::stages::execute::{Executed, Executor};
use crate::stages::limit::{Limiters, Priority};
use crate::stages::observe::{Mirror, Observer, Seen};
pub use crate::stages::observe::{RequestContext, Stats};
use crate::stages::validate::{select_outputs, validate};

/// Everything the request path shares.
pub struct AppState {
    pub config: Config,
    pub repository: Arc<Repository>,
    pub metrics: Arc<Metrics>,
    /// Runs models: the compute pool and the request timeout.
    pub executor: Executor,
    /// The shadow mirror: queue and comparison state.
    pub shadows: Shadows,
    pub admission: Admission,
    /// The adaptive concurrency limit of each model (after route).
    pub limiters: Limiters,
    /// What must serve before the server is ready (see [`AppState::readiness`]).
    readiness: crate::readiness::Readiness,
    /// Tokens and roles (see `greenbelt-auth`).
    pub auth: Arc<Auth>,
    /// The request log's queue and writer.
    pub request_log: RequestLog,
    /// The sampled payload log's queue and sink.
    pub payload_log: crate::payloadlog::PayloadLog,
    /// In-process SLO burn-rate alerts (`[[slo]]`, `[alerts]`).
    pub alerts: Arc<crate::alerts::Alerts>,
    /// In-process budget burn-rate alerts and forecasts (`[[budget]]`;
    /// evaluated every `[cost] interval` by a background task of the app).
    pub budgets: Arc<crate::cost::budget::Budgets>,
    /// The built-in dashboard's minute of samples.
    pub dashboard: Arc<crate::dashboard::Sampler>,
    /// Each deployment's rollout as its controller last published it.
    pub rollouts: crate::dashboard::RolloutBoard,
    /// OpenTelemetry traces (off unless `[tracing] endpoint` is set).
    pub traces: Arc<crate::traces::Tracer>,
    /// Circuit breakers and retry budgets around dependencies (registry
    /// database, artifact store, online store), for `/metrics` and
    /// `/admin/breakers`.
    pub breakers: greenbelt_core::breaker::BreakerSet,
    /// Replica recommendations per served model (`[autoscale]`; evaluated
    /// by a background task of the app, shown on `/admin/autoscaler`).
    pub autoscaler: Arc<crate::autoscale::Autoscaler>,
    /// Live drift windows, delayed labels (`[drift]`; windows closed by a
    /// background task of the app, shown on `/admin/drift`).
    pub drift: Arc<crate::drift::DriftHub>,
    ready: AtomicBool,
}

impl AppState {
    pub fn new(
        config: Config,
        repository: Arc<Repository>,
        metrics: Arc<Metrics>,
        compute: Compute,
        auth: Arc<Auth>,
        traces: Arc<crate::traces::Tracer>,
    ) -> Self {
        let timeout = std::time::Duration::from_millis(config.server.request_timeout_ms);
        metrics.cost.configure(&config);
        AppState {
            autoscaler: Arc::new(crate::autoscale::Autoscaler::new(&config)),
            // Config::load validated it; a hand-built config that did not
            // gets the defaults.
            drift: Arc::new(crate::drift::DriftHub::new(
                config.drift.settings().unwrap_or_default(),
            )),
            shadows: Shadows::new(config.server.shadow_queue, metrics.clone()),
            admission: Admission::new(
                config.server.max_inflight,
                config.server.max_inflight_bytes,
                metrics.clone(),
            ),
            executor: Executor::new(compute, timeout),
            limiters: Limiters::new(
                config.server.concurrency.clone(),
                config.server.max_inflight,
                std::time::Duration::from_millis(config.server.queue_budget_ms),
                config
                    .deployments
                    .iter()
                    .map(|d| (d.name.clone(), d.priority))
                    .collect(),
                metrics.clone(),
            ),
            readiness: Default::default(),
            request_log: RequestLog::process(&config.telemetry, metrics.request_log.clone()),
            payload_log: crate::payloadlog::PayloadLog::start(
                &config.telemetry.payload_log,
                metrics.payload_log.clone(),
            ),
            dashboard: Arc::default(),
            rollouts: Default::default(),
            alerts: Arc::new(crate::alerts::Alerts::new(
                &config.slo,
                config.alerts.clone(),
            )),
            budgets: Arc::new(crate::cost::budget::Budgets::new(
                &config.budget,
                &config.alerts.runbook_url_base,
            )),
            auth,
            config,
            repository,
            metrics,
            traces,
            breakers: Default::default(),
            ready: AtomicBool::new(false),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Ready: start-up loading finished, every model that must serve has a
    /// ready version, and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the server is not ready, or None when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.admission.is_draining() {
            return Some("shutting down: draining in-flight requests".into());
        }
        if self.readiness.stopping() {
            return Some("shutting down: serving out [server] shutdown_delay".into());
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Some("start-up loading has not finished".into());
        }
        let waiting = self.readiness.waiting_for(&self.repository);
        (!waiting.is_empty()).then(|| {
            format!(
                "waiting for models that must serve and have no ready version: {}",
                waiting.join(", ")
            )
        })
    }

    /// What must serve for readiness (start-up models, deployments).
    pub fn readiness(&self) -> &crate::readiness::Readiness {
        &self.readiness
    }

    pub fn start_draining(&self) {
        self.admission.start_draining();
    }

    fn observer(&self) -> Observer<'_> {
        Observer {
            metrics: &self.metrics,
            log: &self.request_log,
            traces: &self.traces,
        }
    }

    /// Count and log a request refused before [`infer`] (admission, decode).
    pub fn reject(&self, ctx: &RequestContext, model: &str, err: &ServeError) {
        let served = self.repository.resolve(model, None).ok();
        let seen = Seen {
            model,
            served: served.as_deref(),
            track: served.as_ref().map(|_| Track::Stable),
            deployment: false,
        };
        self.observer()
            .finished(ctx, &seen, Err(err), &Stats::default());
    }
}

/// Route: the version that answers. A client may pin a version; forcing a
/// deployment's track (`x-greenbelt-track`) steers release analysis, so it
/// needs a token with the deployer role when tokens are configured.
fn route(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    ctx: &RequestContext,
) -> Result<Routed, ServeError> {
    if ctx.headers.contains_key(TRACK_HEADER) {
        state
            .auth
            .may_force_track(ctx.principal.as_ref())
            .map_err(ServeError::from)?;
    }
    state.repository.route(model, version, &ctx.headers)
}

/// What a transport says about an answer besides its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseMeta {
    /// The track that answered.
    pub track: Track,
    /// Built from feature fallbacks (the online store failed): the
    /// transport sets `x-greenbelt-degraded: features`.
    pub degraded: bool,
}

/// Run one admitted inference request end to end. Returns the response and
/// what answered it. `permit` is held until the answer is ready.
pub async fn infer(
    state: &AppState,
    permit: Permit,
    model: &str,
    version: Option<&str>,
    req: InferRequest,
    ctx: &RequestContext,
) -> Result<(InferResponse, ResponseMeta, Arc<ServedVersion>), ServeError> {
    let _permit = permit;
    let observer = state.observer();
    let routed = match route(state, model, version, ctx) {
        Ok(r) => r,
        Err(e) => {
            let seen = Seen {
                model,
                served: None,
                track: None,
                deployment: false,
            };
            observer.finished(ctx, &seen, Err(&e), &Stats::default());
            return Err(e);
        }
    };
    let seen = Seen {
        model,
        served: Some(&*routed.served),
        track: Some(routed.track),
        deployment: routed.entry.routing.is_some(),
    };
    let (priority, mut limit) = match limit(state, &routed, ctx) {
        Ok(l) => l,
        Err(e) => {
            observer.finished(ctx, &seen, Err(&e), &Stats::default());
            return Err(e);
        }
    };
    let _inflight = routed.served.metrics.inflight();
    let mut stats = Stats::default();
    // The deadline counts from here: the body has been read and decoded
    // (an upload is bounded by the connection's idle timeout instead).
    let deadline = tokio::time::Instant::now() + state.executor.timeout;
    let log = state.payload_log.wants(ctx.trace.low64());
    let result = tokio::time::timeout_at(
        deadline,
        answer(
            state,
            &routed,
            req,
            &mut stats,
            deadline,
            log,
            &ctx.request_id,
        ),
    )
    .await
    .unwrap_or(Err(ServeError::Timeout(state.executor.timeout)));
    match (&result, limit.as_mut()) {
        (Ok(_), Some(p)) => p.set_sample(stats.queue + stats.compute, stats.queue),
        (Err(e), p) => overload_outcome(state, &routed, priority, e, p),
        (Ok(_), None) => {}
    }
    drop(limit);
    match result {
        Ok(mut answered) => {
            stats.response_bytes = answered.response.payload_bytes();
            observer.finished(ctx, &seen, Ok(()), &stats);
            if let Some(inputs) = answered.logged_inputs.take() {
                let track = routed.track.as_str();
                state
                    .payload_log
                    .answered(ctx, track, inputs, &answered.response);
            }
            if let Some((mirror, primary)) = answered.mirror {
                mirror.offer(&state.shadows, &primary, ctx);
            }
            Ok((
                answered.response,
                ResponseMeta {
                    track: routed.track,
                    degraded: answered.degraded,
                },
                routed.served.clone(),
            ))
        }
        Err(e) => {
            observer.finished(ctx, &seen, Err(&e), &stats);
            Err(e)
        }
    }
}

/// Limit: the request's priority, and a place inside its model's adaptive
/// concurrency limit (or a 503 now).
fn limit(
    state: &AppState,
    routed: &Routed,
    ctx: &RequestContext,
) -> Result<(Priority, Option<crate::stages::limit::LimitPermit>), ServeError> {
    let name = &routed.entry.name;
    let priority = state.limiters.priority(name, &ctx.headers)?;
    let permit = state.limiters.acquire(name, priority)?;
    Ok((priority, permit))
}

/// What a failed request tells the limiter: a client's mistake says
/// nothing about load (no sample); a queue-time shed is counted.
fn overload_outcome(
    state: &AppState,
    routed: &Routed,
    priority: Priority,
    e: &ServeError,
    permit: Option<&mut crate::stages::limit::LimitPermit>,
) {
    if let ServeError::QueueTimeout { waited_ms, .. } = e {
        state.metrics.shed("queue_time");
        state
            .metrics
            .overload_shed(&routed.entry.name, "queue_time", priority.as_str());
        if let Some(p) = permit {
            // It waited this long for the model: a sample of the queue.
            let waited = std::time::Duration::from_millis(*waited_ms);
            p.set_sample(waited, waited);
        }
        return;
    }
    if e.outcome() == crate::error::Outcome::ClientError
        && let Some(p) = permit
    {
        p.ignore();
    }
}

/// The response, and the shadow copies it owes (with every output the
/// primary produced, for comparison).
struct Answered {
    response: InferResponse,
    mirror: Option<(Mirror, Vec<Tensor>)>,
    degraded: bool,
    /// A copy of the validated inputs when the payload log samples this request.
    logged_inputs: Option<Vec<Tensor>>,
}

/// Enrich → validate → execute → select outputs.
async fn answer(
    state: &AppState,
    routed: &Routed,
    req: InferRequest,
    stats: &mut Stats,
    deadline: tokio::time::Instant,
    log_payload: bool,
    request_id: &str,
) -> Result<Answered, ServeError> {
    let mut served = &routed.served;
    let lookup = tokio::time::Instant::now();
    let (req, assembled) = crate::features::assemble(
        served,
        state.repository.features().map(|f| &**f),
        req,
        Some(deadline),
    )
    .await?;
    if assembled.is_some() {
        stats.features = Some((lookup, tokio::time::Instant::now()));
    }
    let degraded = assembled.as_ref().is_some_and(|a| a.degraded);
    stats.rows = req.rows();
    stats.request_bytes = req.payload_bytes();
    let valid = validate(&served.signature, req)?;
    served.schema.observe_inputs(&valid.inputs);
    state.drift.inputs(
        served,
        &valid.inputs,
        assembled.as_ref().map(|a| &a.statuses),
    );
    let drifted = drift_check(state, routed, &valid.inputs);
    if let Some(route) = drifted.filter(|d| d.action == crate::drift::DriftAction::Route)
        && let Some(challenger) = routed.entry.versions.get(&route.version)
    {
        served = challenger;
    }
    let mirror = mirror_for(routed, &valid.inputs, drifted);
    let logged_inputs = log_payload.then(|| valid.inputs.clone());
    let executed = tokio::time::Instant::now();
    stats.executed = Some(executed);
    let budget = crate::compute::QueueBudget::new(
        executed,
        std::time::Duration::from_millis(state.config.server.queue_budget_ms),
        deadline,
    );
    let done = state
        .executor
        .execute_within(served, valid.inputs, Some(budget))
        .await?;
    stats.queue = done.queue;
    stats.compute = done.compute;
    stats.compute_cpu = done.cpu;
    stats.batch_rows = done.batch_rows;
    let id = valid
        .id
        .as_deref()
        .filter(|i| !i.is_empty())
        .unwrap_or(request_id);
    state
        .drift
        .outputs(&state.metrics, served, id, &done.outputs);
    let primary = mirror.is_some().then(|| done.outputs.clone());
    let mut outputs = select_outputs(done.outputs, &valid.outputs)?;
    if let Some(a) = assembled
        && !a.hide
    {
        outputs.push(a.statuses);
    }
    served.schema.observe_outputs(&outputs);
    Ok(Answered {
        response: InferResponse {
            model_name: served.model_name.to_string(),
            model_version: served.version_label.to_string(),
            id: valid.id,
            outputs,
        },
        mirror: mirror.zip(primary),
        degraded,
        logged_inputs,
    })
}

/// Drift routing: whether this live request is outside the stable
/// version's reference, counted by slice; the rule when it is (None when
/// the deployment has no drift routing or the request is in distribution).
fn drift_check<'a>(
    state: &AppState,
    routed: &'a Routed,
    inputs: &[Tensor],
) -> Option<&'a crate::routing::DriftRoute> {
    let route = routed.entry.routing.as_ref()?.drift.as_ref()?;
    if !matches!(routed.track, Track::Stable | Track::Canary) {
        return None;
    }
    let rows = state.drift.settings().max_rows_per_request;
    let drifted = route.bounds.drifted(inputs, route.min_features, rows);
    let (slice, action) = match (drifted, route.action) {
        (false, _) => ("in_distribution", "none"),
        (true, crate::drift::DriftAction::Mirror) => ("drifted", "mirrored"),
        (true, crate::drift::DriftAction::Route) => ("drifted", "routed"),
    };
    state
        .metrics
        .drift
        .routed(&routed.entry.name, slice, action);
    drifted.then_some(route)
}

/// Live traffic of a deployment is mirrored to its shadows; pinned and
/// preview requests are someone testing, not traffic to compare. A drifted
/// request is also mirrored to the drift-routing challenger (which gets
/// nothing else).
fn mirror_for(
    routed: &Routed,
    inputs: &[Tensor],
    drifted: Option<&crate::routing::DriftRoute>,
) -> Option<Mirror> {
    let routing = routed.entry.routing.as_ref()?;
    if routing.shadows.is_empty() || !matches!(routed.track, Track::Stable | Track::Canary) {
        return None;
    }
    let challenger = drifted
        .filter(|d| d.action == crate::drift::DriftAction::Mirror)
        .map(|d| d.version);
    let shadows: Vec<_> = routing
        .mirror_to()
        .chain(challenger)
        .filter(|v| *v != routed.served.version)
        .filter_map(|v| routed.entry.versions.get(&v).cloned())
        .collect();
    (!shadows.is_empty()).then(|| Mirror {
        deployment: routed.served.model_name.clone(),
        shadows,
        inputs: inputs.to_vec(),
    })
}
