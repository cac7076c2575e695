//! The feature store's HTTP API, as an axum `Router` the server mounts:
//! `POST /features/online` (Feast-shaped feature values for entity rows) and
//! `POST /features/push` (validated writes to the online store) and
//! `GET /features/online/status` (the online store's circuit breakers and
//! degraded-read counters, JSON); Feast's `POST /get-online-features` and
//! `POST /push` (`push_source_name`, `df`, `to`) beside them. A read answered from fallbacks carries
//! `"degraded"` in its body and the `x-greenbelt-degraded: features`
//! header. Errors are
//! `{"error": "..."}` with 400 for a bad body or value (naming the field),
//! 404 for an unknown view, service or feature, 503 when the store fails.
//! This module only decodes, calls `OnlineService` and encodes.

pub use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::error::FeatureError;
use crate::online::service::{OnlineRequest, OnlineService, PushRequest};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

fn error(status: u16, msg: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

fn fail(e: &FeatureError) -> Response {
    // A contract violation on push is the caller's bad data: 400.
    let status = match e {
        FeatureError::Contract(_) => 400,
        other => other.status_code(),
    };
    error(status, &e.to_string())
}

fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(error(400, &format!("request body: {e}"))))
}

async fn online(State(svc): State<OnlineService>, body: Bytes) -> Response {
    let req: OnlineRequest = match decode(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match svc.get_online_features(&req).await {
        Ok(resp) => {
            let degraded = resp.degraded.is_some();
            let mut r = axum::Json(resp).into_response();
            if degraded {
                r.headers_mut().insert(
                    DEGRADED_HEADER,
                    axum::http::HeaderValue::from_static("features"),
                );
            }
            r
        }
        Err(e) => fail(&e),
    }
}

/// Set on a response built with feature fallbacks (value `features`).
pub const DEGRADED_HEADER: &str = "x-greenbelt-degraded";

async fn online_status(State(svc): State<OnlineService>) -> Response {
    axum::Json(svc.online_status()).into_response()
}

async fn push(State(svc): State<OnlineService>, body: Bytes) -> Response {
    let req: PushRequest = match decode(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match svc.push(&req).await {
        Ok(resp) => axum::Json(resp).into_response(),
        Err(e) => fail(&e),
    }
}

/// Feast's feature server `POST /push` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FeastPush {
    push_source_name: String,
    df: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
    /// `online` (the default), `offline` or `online_and_offline`.
    #[serde(default)]
    to: Option<String>,
    /// Feast clients send it; nothing to cache here.
    #[serde(default, rename = "allow_registry_cache")]
    _allow_registry_cache: Option<bool>,
}

/// Feast's `POST /push`: the rows go to every view fed by the push source
/// named (a view of that name, or the views whose `source` it is), as
/// Feast writes a push to all the views of a push source.
async fn feast_push(State(svc): State<OnlineService>, body: Bytes) -> Response {
    let req: FeastPush = match decode(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match req.to.as_deref() {
        None | Some("online") => {}
        Some("offline") | Some("online_and_offline") => {
            return error(
                400,
                &format!(
                    "to \"{}\": Greenbelt pushes to the online store only; the offline store is written by `greenbelt features materialize` from the view's source (send \"to\": \"online\")",
                    req.to.as_deref().unwrap_or_default()
                ),
            );
        }
        Some(other) => {
            return error(
                400,
                &format!("to \"{other}\": expected online, offline or online_and_offline"),
            );
        }
    }
    let defs = svc.definitions();
    let views: Vec<String> = if defs.views.contains_key(&req.push_source_name) {
        vec![req.push_source_name.clone()]
    } else {
        defs.views
            .values()
            .filter(|v| v.source == req.push_source_name)
            .map(|v| v.name.clone())
            .collect()
    };
    if views.is_empty() {
        let known: Vec<&String> = defs.views.keys().collect();
        return error(
            404,
            &format!(
                "push_source_name \"{}\" is neither a feature view nor the source of one; views: {known:?}",
                req.push_source_name
            ),
        );
    }
    let mut pushed = Vec::new();
    for view in views {
        let one = PushRequest {
            feature_view: view,
            df: req.df.clone(),
        };
        match svc.push(&one).await {
            Ok(r) => pushed.push(r),
            Err(e) => return fail(&e),
        }
    }
    axum::Json(serde_json::json!({ "pushed": pushed })).into_response()
}

/// The `/features/*` routes over `svc`, and Feast's feature-server routes
/// (`POST /get-online-features`, `POST /push`) so a Feast client works by
/// changing its URL.
pub fn router(svc: OnlineService) -> Router {
    Router::new()
        .route("/features/online", post(online))
        .route("/get-online-features", post(online))
        .route("/push", post(feast_push))
        .route("/features/push", post(push))
        .route("/features/online/status", get(online_status))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(svc)
}
