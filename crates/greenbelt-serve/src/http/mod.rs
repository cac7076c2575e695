//! The REST API: KServe / Open Inference Protocol V2, the model repository
//! extension, and `/metrics`. Handlers decode, call the shared
//! [`crate::infer::infer`], and encode.

pub mod codec;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use greenbelt_core::InferRequest;
use serde_json::json;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::error::ServeError;
use crate::infer::{AppState, Permit, RequestContext, infer};
use crate::metrics::Protocol;
use crate::repository::{ServedVersion, check_model_name};
/// The route templates of the infer endpoints (the server span's name).
const INFER_ROUTE: &str = "/v2/models/{model_name}/infer";
const INFER_VERSION_ROUTE: &str = "/v2/models/{model_name}/versions/{model_version}/infer";

pub const VERSION_HEADER: &str = "x-greenbelt-model-version";

/// The infer endpoints, apart from [`router`]'s: the per-route API metrics
/// layer goes on the others only (inference has metrics of its own), so a
/// request pays no middleware it does not use.
pub fn infer_router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_request_bytes;
    Router::new()
        .route("/v2/models/{model}/infer", post(infer_latest))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Every REST endpoint but inference ([`infer_router`]).
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_request_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(version_stats),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(version_config),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/metrics", get(metrics))
        .route("/admin/deployments/{model}", get(deployment_status))
        .route("/admin/shadow/{model}", get(shadow_report))
        .route("/admin/alerts", get(alerts_report))
        .route("/admin/cost", get(cost_report))
        .route("/admin/breakers", get(breakers_report))
        .route("/admin/autoscaler", get(autoscaler_report))
        .route("/dashboard", get(dashboard_page))
        .route("/dashboard/data", get(dashboard_data))
        .route("/admin/schema/{model}", get(schema_report))
        .route("/admin/drift/{model}", get(drift_report))
        .route("/v2/models/{model}/labels", post(post_labels))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A JSON `{"error": ...}` response with the error's status (and `Retry-After` when shed).
pub struct ApiError(pub ServeError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.http_status();
        let mut resp = (status, axum::Json(json!({ "error": self.0.to_string() }))).into_response();
        if let Some(secs) = self.0.retry_after()
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        ApiError(e)
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": "no such endpoint; see GET /v2, POST /v2/models/{model}/infer, GET /metrics" })),
    )
        .into_response()
}

async fn live() -> impl IntoResponse {
    axum::Json(json!({ "live": true }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let reason = state.not_ready_reason();
    let ready = reason.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = match reason {
        None => json!({ "ready": true }),
        Some(r) => json!({ "ready": false, "reason": r }),
    };
    (status, axum::Json(body)).into_response()
}

pub fn server_metadata_json() -> serde_json::Value {
    json!({
        "name": "greenbelt",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository", "statistics"],
    })
}

async fn server_metadata() -> impl IntoResponse {
    axum::Json(server_metadata_json())
}

fn metadata_json(served: &ServedVersion, versions: Vec<String>) -> serde_json::Value {
    let tensors = |specs: &[greenbelt_core::TensorSpec]| -> Vec<serde_json::Value> {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape }))
            .collect()
    };
    json!({
        "name": &*served.model_name,
        "versions": versions,
        "platform": served.platform,
        "inputs": tensors(&served.signature.inputs),
        "outputs": tensors(&served.signature.outputs),
    })
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let served = state.repository.resolve(&model, None)?;
    let versions = state
        .repository
        .get(&model)
        .map(|e| e.versions.keys().map(u64::to_string).collect())
        .unwrap_or_default();
    Ok(axum::Json(metadata_json(&served, versions)))
}

async fn version_metadata(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let served = state.repository.resolve(&model, Some(&version))?;
    Ok(axum::Json(metadata_json(
        &served,
        vec![served.version_label.to_string()],
    )))
}

/// Triton's statistics extension: `{"model_stats": [...]}` for the loaded
/// versions of every model, one model, or one version.
fn stats_json(versions: impl Iterator<Item = Arc<ServedVersion>>) -> serde_json::Value {
    let stats: Vec<_> = versions
        .map(|v| v.metrics.stats(&v.model_name, &v.version_label))
        .collect();
    json!({ "model_stats": stats })
}

async fn all_stats(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let versions = state
        .repository
        .loaded()
        .into_iter()
        .flat_map(|e| e.versions.values().cloned().collect::<Vec<_>>());
    axum::Json(stats_json(versions))
}

/// The loaded entry of `model`, or the error `resolve` gives for it (404,
/// or 503 while it is not ready).
fn entry(state: &AppState, model: &str) -> Result<Arc<crate::repository::ModelEntry>, ApiError> {
    match state.repository.get(model) {
        Some(e) => Ok(e),
        None => Err(ApiError(
            state
                .repository
                .resolve(model, None)
                .err()
                .unwrap_or_else(|| ServeError::ModelNotFound(model.to_string())),
        )),
    }
}

async fn model_stats(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let entry = entry(&state, &model)?;
    Ok(axum::Json(stats_json(entry.versions.values().cloned())))
}

async fn version_stats(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let served = state.repository.resolve(&model, Some(&version))?;
    Ok(axum::Json(stats_json(std::iter::once(served))))
}

/// The effective configuration of a model: what `config.toml` set with the
/// defaults filled in, the signature the server enforces (graph plus
/// overrides), and the Triton-style fields clients look for.
fn config_json(entry: &crate::repository::ModelEntry, served: &ServedVersion) -> serde_json::Value {
    let tensors = |specs: &[greenbelt_core::TensorSpec]| -> Vec<serde_json::Value> {
        specs
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "data_type": format!("TYPE_{}", s.datatype.as_str()),
                    "datatype": s.datatype.as_str(),
                    "dims": s.shape,
                })
            })
            .collect()
    };
    let batching = entry.config.batching.as_ref();
    json!({
        "name": &*served.model_name,
        "version": &*served.version_label,
        "platform": served.platform,
        "backend": served.runtime.backend().as_str(),
        "max_batch_size": batching.map_or(0, |b| b.max_batch_size),
        "input": tensors(&served.signature.inputs),
        "output": tensors(&served.signature.outputs),
        "dynamic_batching": batching.map(|b| json!({
            "max_queue_delay_microseconds": b.max_queue_delay_us,
            "preferred_batch_size": b.preferred_batch_sizes,
            "max_queue_size": b.max_queue_size,
        })),
        // In service now (in-process scaling may have moved it from config).
        "instance_group": [{
            "count": served.instances.instances(),
            "kind": if entry.config.device.is_gpu() { "KIND_GPU" } else { "KIND_CPU" },
        }],
        "version_policy": entry.config.version_policy,
        "default_version": entry.default().map(|v| v.version_label.to_string()),
        "deployment": entry.routing.is_some(),
        "greenbelt": entry.config,
    })
}

async fn model_config(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let entry = entry(&state, &model)?;
    let served = state.repository.resolve(&model, None)?;
    Ok(axum::Json(config_json(&entry, &served)))
}

async fn version_config(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let entry = entry(&state, &model)?;
    let served = state.repository.resolve(&model, Some(&version))?;
    Ok(axum::Json(config_json(&entry, &served)))
}

fn ready_response(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    match state.repository.resolve(model, version) {
        Ok(served) => {
            match crate::features::readiness(&served, state.repository.features().map(|f| &**f)) {
                Ok(()) => Ok((
                    StatusCode::OK,
                    axum::Json(json!({ "name": model, "ready": true })),
                )
                    .into_response()),
                Err(why) => Ok((
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({ "name": model, "ready": false, "error": why })),
                )
                    .into_response()),
            }
        }
        Err(e @ ServeError::ModelNotReady { .. }) => Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "name": model, "ready": false, "error": e.to_string() })),
        )
            .into_response()),
        Err(e) => Err(ApiError(e)),
    }
}

async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    ready_response(&state, &model, None)
}

async fn version_ready(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    ready_response(&state, &model, Some(&version))
}

async fn infer_latest(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    req: axum::extract::Request,
) -> Response {
    handle_infer(state, model, None, req, INFER_ROUTE).await
}

async fn infer_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    handle_infer(state, model, Some(version), req, INFER_VERSION_ROUTE).await
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Admit (by the declared body size, before a byte of it is read), read
/// the body, decode.
async fn admit_and_decode(
    state: &AppState,
    ctx: &mut RequestContext,
    body: Body,
) -> Result<(Permit, InferRequest, usize), ServeError> {
    let limit = state.config.server.max_request_bytes;
    let declared = match header_str(&ctx.headers, "content-length") {
        None => None,
        Some(v) => Some(v.trim().parse::<usize>().map_err(|_| {
            ServeError::InvalidInput(format!("Content-Length \"{v}\" is not a byte count"))
        })?),
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(ServeError::PayloadTooLarge { limit });
    }
    // A body of unknown length (chunked) is admitted as if it were the largest.
    let permit = state.admission.admit(declared.unwrap_or(limit))?;
    ctx.admitted = Some(Instant::now());
    // The upload is bounded by the connection's idle timeout (no byte for
    // `idle_timeout_ms` closes it) and by admission; the request timeout
    // starts once the request is decoded.
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ServeError::PayloadTooLarge { limit }
        } else {
            ServeError::InvalidInput(format!("cannot read request body: {e}"))
        }
    })?;
    let header_len = match header_str(&ctx.headers, codec::HEADER_LENGTH) {
        None => None,
        Some(v) => Some(v.trim().parse::<usize>().map_err(|_| {
            ServeError::InvalidInput(format!(
                "Inference-Header-Content-Length \"{v}\" is not a byte count"
            ))
        })?),
    };
    let limits = state.config.limits.decode();
    let req = ctx
        .cpu
        .measure(|| codec::decode_request(&body, header_len, &limits))?;
    ctx.decoded = Some(Instant::now());
    Ok((permit, req, body.len()))
}

/// The request is taken whole, not through the `HeaderMap` and `Extension`
/// extractors: they clone, and its headers and caller move into the
/// request's context instead.
async fn handle_infer(
    state: Arc<AppState>,
    model: String,
    version: Option<String>,
    req: axum::extract::Request,
    route: &'static str,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let caller = parts.extensions.remove::<Caller>().and_then(|c| c.0);
    let mut ctx = RequestContext::new(Protocol::Rest, route, parts.headers, caller, &state.traces);
    let mut resp = match admit_and_decode(&state, &mut ctx, body).await {
        Err(e) => {
            state.reject(&ctx, &model, &e);
            ApiError(e).into_response()
        }
        Ok((permit, req, wire_len)) => {
            let requested = req.outputs.clone();
            let binary_output = req.binary_output;
            match infer(&state, permit, &model, version.as_deref(), req, &ctx).await {
                Err(e) => ApiError(e).into_response(),
                Ok((out, meta, served)) => {
                    let mut resp = ctx
                        .cpu
                        .measure(|| encode(&out, &requested, binary_output, meta.track));
                    if meta.degraded {
                        resp.headers_mut().insert(
                            HeaderName::from_static(crate::features::DEGRADED_HEADER),
                            HeaderValue::from_static("features"),
                        );
                    }
                    let sent = axum::body::HttpBody::size_hint(resp.body()).exact();
                    served.metrics.wire(wire_len, sent.unwrap_or(0) as usize);
                    served.metrics.cost().request_cpu(ctx.cpu.estimate_ns());
                    resp
                }
            }
        }
    };
    let h = resp.headers_mut();
    // The id's and the trace header's own buffers become the values: no copy.
    let id = Bytes::from(std::mem::take(&mut ctx.request_id));
    if let Ok(v) = HeaderValue::from_maybe_shared(id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    // `traceparent` as before (our span as the parent of what follows);
    // `traceresponse` per W3C Trace Context level 2.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(ctx.trace.header())) {
        h.insert(HeaderName::from_static("traceparent"), v.clone());
        h.insert(HeaderName::from_static("traceresponse"), v);
    }
    resp
}

fn encode(
    out: &greenbelt_core::InferResponse,
    requested: &[greenbelt_core::RequestedOutput],
    binary_output: bool,
    track: crate::routing::Track,
) -> Response {
    let enc = match codec::encode_response(out, requested, binary_output) {
        Ok(enc) => enc,
        Err(e) => return ApiError(e).into_response(),
    };
    let mut resp = Response::new(Body::from(enc.body));
    let h = resp.headers_mut();
    match enc.header_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
                h.insert(HeaderName::from_static(codec::HEADER_LENGTH), v);
            }
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    if let Ok(v) = HeaderValue::from_str(&out.model_version) {
        h.insert(HeaderName::from_static(VERSION_HEADER), v);
    }
    h.insert(
        HeaderName::from_static(crate::routing::TRACK_HEADER),
        HeaderValue::from_static(track.as_str()),
    );
    resp
}

async fn repository_index(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ready_only = if body.is_empty() {
        false
    } else {
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            ServeError::InvalidInput(format!("index request body is not JSON: {e}"))
        })?;
        v.get("ready")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    };
    Ok(axum::Json(state.repository.index(ready_only)).into_response())
}

async fn repository_load(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    check_model_name(&model)?;
    let repo = state.repository.clone();
    tokio::task::spawn_blocking(move || repo.load(&model))
        .await
        .map_err(|e| ServeError::Internal(format!("load task failed: {e}")))??;
    Ok(axum::Json(json!({})).into_response())
}

async fn repository_unload(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let repo = state.repository.clone();
    tokio::task::spawn_blocking(move || repo.unload(&model))
        .await
        .map_err(|e| ServeError::Internal(format!("unload task failed: {e}")))??;
    Ok(axum::Json(json!({})).into_response())
}

/// A deployment's installed routing plan and its versions' live counts.
async fn deployment_status(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let entry = state
        .repository
        .get(&model)
        .ok_or_else(|| ServeError::ModelNotFound(model.clone()))?;
    let versions: serde_json::Map<String, serde_json::Value> = entry
        .versions
        .iter()
        .map(|(v, s)| {
            let live = s.metrics.live();
            (
                v.to_string(),
                serde_json::json!({
                    "requests": live.requests,
                    "server_errors": live.server_errors,
                    "timeouts": live.timeouts,
                    "client_errors": live.client_errors,
                }),
            )
        })
        .collect();
    Ok(axum::Json(serde_json::json!({
        "name": model,
        "routing": entry.routing.as_deref(),
        "default_version": entry.default_version,
        "versions": versions,
        "last_error": entry.last_error,
    }))
    .into_response())
}

/// `greenbelt shadow report`: every shadow comparison of a deployment.
async fn shadow_report(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    if state.repository.get(&model).is_none() {
        return Err(ServeError::ModelNotFound(model).into());
    }
    Ok(axum::Json(state.shadows.reports(&model)).into_response())
}

/// `GET /admin/drift/{model}`: per loaded version, whether it is monitored,
/// its open window, the last closed window's statistics and its label
/// metrics.
async fn drift_report(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let versions = state
        .drift
        .view(&state.repository, &model)
        .ok_or(ServeError::ModelNotFound(model.clone()))?;
    Ok(axum::Json(json!({ "model": model, "versions": versions })).into_response())
}

/// The body of `POST /v2/models/{model}/labels`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsBody {
    labels: Vec<crate::drift::labels::Label>,
}

/// Most labels one request may carry.
const MAX_LABELS: usize = 100_000;

/// `POST /v2/models/{model}/labels`: true labels for answered requests, by
/// request id; joined with the recorded predictions into the version's
/// rolling accuracy / AUC / RMSE.
async fn post_labels(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if state.repository.get(&model).is_none() {
        return Err(ServeError::ModelNotFound(model).into());
    }
    let parsed: LabelsBody = serde_json::from_slice(&body).map_err(|e| {
        ServeError::InvalidInput(format!(
            "labels body: {e}; expected {{\"labels\": [{{\"id\": \"<request id>\", \"label\": 1}}, ...]}} (label: a number, or one per row)"
        ))
    })?;
    if parsed.labels.len() > MAX_LABELS {
        return Err(ServeError::InvalidInput(format!(
            "labels: {} labels in one request; send at most {MAX_LABELS} per request",
            parsed.labels.len()
        ))
        .into());
    }
    let got = state.drift.ingest(&state.metrics, &model, &parsed.labels);
    Ok(axum::Json(got).into_response())
}

/// Count and time every API request outside inference (inference has its
/// own per-version metrics). Labelled by the matched route template, so a
/// client cannot create label values; unmatched paths are not counted.
pub async fn api_metrics(
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Inference is routed without this layer ([`infer_router`]).
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(route) = route else {
        return next.run(req).await;
    };
    let method = req.method().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics.api_request(
        &route,
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// The payload schema each loaded version of `model` has seen, with its
/// recent schema-change events.
async fn schema_report(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let entry = entry(&state, &model)?;
    let versions: serde_json::Map<String, serde_json::Value> = entry
        .versions
        .values()
        .map(|v| (v.version_label.to_string(), v.schema.report()))
        .collect();
    Ok(axum::Json(json!({ "model": model, "versions": versions })))
}

/// The dashboard page (static; its data needs a viewer token when tokens
/// are configured).
async fn dashboard_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        crate::dashboard::PAGE,
    )
}

async fn dashboard_data(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(crate::dashboard::data(&state)),
    )
}

/// The in-process SLO evaluation: error ratios, burn rates, alert states.
/// `GET /admin/breakers`: every circuit breaker around a dependency (state,
/// rates over its window, counts) and every retry budget.
async fn breakers_report(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(state.breakers.report())
}

/// `GET /admin/autoscaler`: each served model's replica recommendation
/// and the observations behind it.
async fn autoscaler_report(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(state.autoscaler.report())
}

async fn alerts_report(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut report = state.alerts.report();
    if let Some(o) = report.as_object_mut() {
        o.insert("budgets".into(), state.budgets.report());
    }
    axum::Json(report)
}

/// `GET /admin/cost?since=1h&by=model`: the cost report over the window
/// (`greenbelt cost report`), the ledger's cumulative snapshot (what
/// `greenbelt bench` diffs), and the budgets. Aggregates only, no request
/// data: public like `/metrics`.
async fn cost_report(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut since = None;
    let mut by = greenbelt_core::cost::GroupBy::default();
    for (k, v) in &query {
        match k.as_str() {
            "since" => {
                since = Some(humantime::parse_duration(v).map_err(|e| {
                    ServeError::InvalidInput(format!("since \"{v}\": {e} (e.g. \"1h\")"))
                })?);
            }
            "by" => by = v.parse().map_err(ServeError::InvalidInput)?,
            _ => {
                return Err(ServeError::InvalidInput(format!(
                    "unknown parameter \"{k}\"; /admin/cost takes since (e.g. 1h) and by (model, version, deployment, resource)"
                ))
                .into());
            }
        }
    }
    let (report, snapshot) = state.metrics.cost.report(since, by);
    Ok(axum::Json(json!({
        "report": report,
        "snapshot": snapshot,
        "budgets": state.budgets.report(),
    }))
    .into_response())
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    use crate::exposition::{OPENMETRICS, PROMETHEUS_TEXT, openmetrics, to_prometheus_text};
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let body = openmetrics(&state);
    if crate::exposition::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&body),
        )
            .into_response()
    }
}
