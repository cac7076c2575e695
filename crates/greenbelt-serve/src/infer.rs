//! The one transport-neutral inference path. REST and gRPC decode into an
//! [`InferRequest`], call [`infer`], and encode what it returns. A single
//! request is a batch of one.
//!
//! Path: admission (in-flight bound) → route (pinned version, or the
//! deployment's stable/canary/preview choice) → validate against the
//! signature → batcher or compute pool, under the request timeout → select
//! requested outputs → metrics and one log line → shadow copies offered to
//! the mirror queue (never waited for).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greenbelt_core::{InferRequest, InferResponse, Tensor};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::compute::Compute;
use crate::config::Config;
use crate::error::{Outcome, ServeError};
use crate::metrics::{Metrics, Protocol};
use crate::repository::{Repository, ServedVersion};
use crate::routing::Track;
use crate::shadow::{ShadowJob, Shadows};

/// Everything the request path shares.
pub struct AppState {
    pub config: Config,
    pub repository: Arc<Repository>,
    pub metrics: Arc<Metrics>,
    pub compute: Compute,
    /// The shadow mirror: queue and comparison state.
    pub shadows: Shadows,
    admission: Arc<Semaphore>,
    ready: AtomicBool,
    draining: AtomicBool,
    pub request_timeout: Duration,
}

impl AppState {
    pub fn new(
        config: Config,
        repository: Arc<Repository>,
        metrics: Arc<Metrics>,
        compute: Compute,
    ) -> Self {
        AppState {
            shadows: Shadows::new(config.server.shadow_queue, metrics.clone()),
            admission: Arc::new(Semaphore::new(config.server.max_inflight)),
            request_timeout: Duration::from_millis(config.server.request_timeout_ms),
            config,
            repository,
            metrics,
            compute,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Ready: start-up loading finished and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Count and log a request that failed before reaching [`infer`] (decode errors).
    pub fn reject(&self, ctx: &RequestContext, model: &str, err: &ServeError) {
        let served = self.repository.resolve(model, None).ok();
        let track = served.as_ref().map(|_| Track::Stable);
        match &served {
            Some(v) => v
                .metrics
                .request(ctx.protocol, err.outcome(), ctx.started.elapsed()),
            None => self.metrics.unresolved(ctx.protocol, err.outcome()),
        }
        self.log(
            ctx,
            model,
            served.as_deref().map(|v| &*v.version_label),
            track,
            Err(err),
            &Stats::default(),
        );
    }

    fn log(
        &self,
        ctx: &RequestContext,
        model: &str,
        version: Option<&str>,
        track: Option<Track>,
        result: Result<(), &ServeError>,
        stats: &Stats,
    ) {
        let track = track.map_or("", Track::as_str);
        if !self.config.telemetry.log_requests {
            return;
        }
        let latency_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(()) => tracing::info!(
                target: "greenbelt::request",
                request_id = %ctx.request_id,
                trace_id = %ctx.trace_id,
                protocol = ctx.protocol.as_str(),
                model,
                version = version.unwrap_or(""),
                track,
                outcome = "success",
                latency_ms,
                queue_ms = stats.queue.as_secs_f64() * 1000.0,
                compute_ms = stats.compute.as_secs_f64() * 1000.0,
                rows = stats.rows,
                batch_rows = stats.batch_rows,
                request_bytes = stats.request_bytes,
                response_bytes = stats.response_bytes,
                "infer"
            ),
            Err(e) => tracing::info!(
                target: "greenbelt::request",
                request_id = %ctx.request_id,
                trace_id = %ctx.trace_id,
                protocol = ctx.protocol.as_str(),
                model = model.chars().take(200).collect::<String>(),
                version = version.unwrap_or(""),
                track,
                outcome = e.outcome().as_str(),
                status = e.http_status().as_u16(),
                latency_ms,
                error = %e,
                "infer"
            ),
        }
    }
}

/// Per-request identity and timing, filled in by the transport.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub trace_id: String,
    pub protocol: Protocol,
    pub started: Instant,
    /// Request headers (gRPC metadata), for routing: the track header and
    /// a deployment's sticky-key header.
    pub headers: axum::http::HeaderMap,
}

/// What one request measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub queue: Duration,
    pub compute: Duration,
    pub rows: usize,
    pub batch_rows: usize,
    pub request_bytes: usize,
    pub response_bytes: usize,
}

/// Run one inference request end to end. Returns the response and the
/// track that answered.
pub async fn infer(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    req: InferRequest,
    ctx: &RequestContext,
) -> Result<(InferResponse, Track), ServeError> {
    let routed = match state.repository.route(model, version, &ctx.headers) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.unresolved(ctx.protocol, e.outcome());
            state.log(ctx, model, version, None, Err(&e), &Stats::default());
            return Err(e);
        }
    };
    let served = routed.served;
    let track = routed.track;
    let _inflight = served.metrics.inflight();
    let (req, assembled) =
        match crate::features::assemble(&served, state.repository.features().map(|f| &**f), req)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                served
                    .metrics
                    .request(ctx.protocol, e.outcome(), ctx.started.elapsed());
                state.log(
                    ctx,
                    model,
                    Some(&served.version_label),
                    Some(track),
                    Err(&e),
                    &Stats::default(),
                );
                return Err(e);
            }
        };
    let mut stats = Stats {
        rows: req.rows(),
        request_bytes: req.payload_bytes(),
        ..Stats::default()
    };
    // Live traffic of a deployment is mirrored; pinned and preview requests
    // are someone testing, not traffic to compare.
    let shadows: Vec<Arc<ServedVersion>> = match (&routed.entry.routing, track) {
        (Some(r), Track::Stable | Track::Canary) if !r.shadows.is_empty() => r
            .mirror_to()
            .filter(|v| *v != served.version)
            .filter_map(|v| routed.entry.versions.get(&v).cloned())
            .collect(),
        _ => Vec::new(),
    };
    let mirrored_inputs = (!shadows.is_empty()).then(|| req.inputs.clone());
    let mut result = run(state, &served, req, &mut stats, mirrored_inputs.is_some()).await;
    if let (Ok((resp, _)), Some(a)) = (&mut result, assembled)
        && !a.hide
    {
        resp.outputs.push(a.statuses);
    }
    let took = ctx.started.elapsed();
    match &result {
        Ok((resp, all_outputs)) => {
            stats.response_bytes = resp.payload_bytes();
            served.metrics.request(ctx.protocol, Outcome::Success, took);
            served.metrics.queue(stats.queue);
            served.metrics.compute(stats.compute);
            served
                .metrics
                .payload(stats.request_bytes, stats.response_bytes);
            if routed.entry.routing.is_some() {
                served.metrics.routed(track);
            }
            state.log(
                ctx,
                model,
                Some(&served.version_label),
                Some(track),
                Ok(()),
                &stats,
            );
            if let (Some(inputs), Some(primary)) = (mirrored_inputs, all_outputs) {
                for shadow in shadows {
                    state.shadows.offer(ShadowJob {
                        deployment: served.model_name.clone(),
                        shadow,
                        inputs: inputs.clone(),
                        primary: primary.clone(),
                        primary_latency: took,
                        request_id: ctx.request_id.clone(),
                    });
                }
            }
        }
        Err(e) => {
            served.metrics.request(ctx.protocol, e.outcome(), took);
            if let ServeError::Overloaded { .. } = e {
                state.metrics.shed("overloaded");
            }
            state.log(
                ctx,
                model,
                Some(&served.version_label),
                Some(track),
                Err(e),
                &stats,
            );
        }
    }
    result.map(|(resp, _)| (resp, track))
}

/// What a runtime call returned, with its timing.
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub compute: Duration,
    pub batch_rows: usize,
}

/// Run `inputs` (already validated, in signature order) on `served` through
/// its batcher or the compute pool, under the request timeout. Used by the
/// request path and by shadow workers.
pub async fn execute(
    state: &AppState,
    served: &Arc<ServedVersion>,
    inputs: Vec<Tensor>,
) -> Result<Executed, ServeError> {
    let rows = inputs.first().map_or(0, Tensor::rows);
    let work = async {
        match &served.batcher {
            Some(batcher) => {
                let reply = batcher.infer(inputs).await?;
                Ok::<_, ServeError>(Executed {
                    outputs: reply.outputs,
                    queue: reply.queue,
                    compute: reply.compute,
                    batch_rows: reply.batch_rows,
                })
            }
            None => {
                let runtime = served.runtime.clone();
                let (result, timing) = state.compute.run(move || runtime.infer(&inputs)).await?;
                Ok(Executed {
                    outputs: result?,
                    queue: timing.wait,
                    compute: timing.compute,
                    batch_rows: rows,
                })
            }
        }
    };
    tokio::time::timeout(state.request_timeout, work)
        .await
        .map_err(|_| ServeError::Timeout(state.request_timeout))?
}

/// The response, and every output the model produced when a shadow needs
/// them for comparison.
type RunResult = Result<(InferResponse, Option<Vec<Tensor>>), ServeError>;

async fn run(
    state: &AppState,
    served: &Arc<ServedVersion>,
    req: InferRequest,
    stats: &mut Stats,
    keep_all_outputs: bool,
) -> RunResult {
    if state.draining.load(Ordering::SeqCst) {
        return Err(ServeError::ShuttingDown);
    }
    let _permit = state.admission.clone().try_acquire_owned().map_err(|_| {
        state.metrics.shed("inflight");
        ServeError::Overloaded {
            what: format!("{} requests in flight", state.config.server.max_inflight),
            retry_after_s: 1,
        }
    })?;
    let signature = &served.signature;
    signature.check_inputs(&req.inputs)?;
    signature.check_outputs(req.outputs.iter().map(|o| o.name.as_str()))?;
    // Signature order, so batched requests line up input by input.
    let mut inputs = req.inputs;
    inputs.sort_by_key(|t| {
        signature
            .inputs
            .iter()
            .position(|s| s.name == t.name)
            .unwrap_or(usize::MAX)
    });
    let done = execute(state, served, inputs).await?;
    stats.queue = done.queue;
    stats.compute = done.compute;
    stats.batch_rows = done.batch_rows;
    let all = keep_all_outputs.then(|| done.outputs.clone());
    Ok((
        InferResponse {
            model_name: served.model_name.to_string(),
            model_version: served.version_label.to_string(),
            id: req.id,
            outputs: select_outputs(done.outputs, &req.outputs)?,
        },
        all,
    ))
}

/// Keep the requested outputs, in the order asked; all when none were named.
fn select_outputs(
    mut outputs: Vec<Tensor>,
    requested: &[greenbelt_core::RequestedOutput],
) -> Result<Vec<Tensor>, ServeError> {
    if requested.is_empty() {
        return Ok(outputs);
    }
    requested
        .iter()
        .map(|r| {
            let i = outputs
                .iter()
                .position(|t| t.name == r.name)
                .ok_or_else(|| {
                    ServeError::Runtime(format!("runtime did not produce output \"{}\"", r.name))
                })?;
            Ok(
                if requested.iter().filter(|x| x.name == r.name).count() > 1 {
                    outputs[i].clone()
                } else {
                    outputs.swap_remove(i)
                },
            )
        })
        .collect()
}
