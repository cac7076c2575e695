//! The REST API: KServe / Open Inference Protocol V2, the model repository
//! extension, and `/metrics`. Handlers decode, call the shared
//! [`crate::infer::infer`], and encode.

pub mod codec;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
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
use crate::telemetry::{TraceContext, request_id};

pub const VERSION_HEADER: &str = "x-greenbelt-model-version";

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_request_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer_latest))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
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
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
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
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Body,
) -> Response {
    handle_infer(state, model, None, headers, caller, body).await
}

async fn infer_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Body,
) -> Response {
    handle_infer(state, model, Some(version), headers, caller, body).await
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Admit (by the declared body size, before a byte of it is read), read
/// the body, decode.
async fn admit_and_decode(
    state: &AppState,
    ctx: &RequestContext,
    body: Body,
) -> Result<(Permit, InferRequest), ServeError> {
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
    let req = codec::decode_request(&body, header_len, &state.config.limits.decode())?;
    Ok((permit, req))
}

async fn handle_infer(
    state: Arc<AppState>,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Body,
) -> Response {
    let trace = TraceContext::from_header(header_str(&headers, "traceparent"));
    let ctx = RequestContext {
        request_id: request_id(header_str(&headers, "x-request-id")),
        trace_id: trace.trace_id.clone(),
        protocol: Protocol::Rest,
        started: Instant::now(),
        headers,
        principal: caller.and_then(|Extension(c)| c.0),
    };
    let mut resp = match admit_and_decode(&state, &ctx, body).await {
        Err(e) => {
            state.reject(&ctx, &model, &e);
            ApiError(e).into_response()
        }
        Ok((permit, req)) => {
            let requested = req.outputs.clone();
            let binary_output = req.binary_output;
            match infer(&state, permit, &model, version.as_deref(), req, &ctx).await {
                Err(e) => ApiError(e).into_response(),
                Ok((out, meta)) => {
                    let mut resp = encode(&out, &requested, binary_output, meta.track);
                    if meta.degraded {
                        resp.headers_mut().insert(
                            HeaderName::from_static(crate::features::DEGRADED_HEADER),
                            HeaderValue::from_static("features"),
                        );
                    }
                    resp
                }
            }
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&trace.header()) {
        h.insert(HeaderName::from_static("traceparent"), v);
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

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
