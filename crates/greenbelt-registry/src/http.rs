//! The registry's JSON API, mounted under `/registry` by `greenbelt serve`
//! when a registry is configured. The server's auth layer guards writes
//! (deployer role; admin for fault-tagged versions); the token's name is
//! the actor recorded in the audit history.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use greenbelt_auth::{Caller, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{NewVersion, Registry, RegistryError, parse_time};

pub struct ApiState {
    pub registry: Registry,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/registry/models", get(list_models))
        .route(
            "/registry/models/{model}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/registry/models/{model}/versions/{version}",
            get(show_version),
        )
        .route("/registry/models/{model}/aliases", get(list_aliases))
        .route(
            "/registry/models/{model}/aliases/{alias}",
            get(show_alias).put(set_alias).delete(delete_alias),
        )
        .route(
            "/registry/models/{model}/aliases/{alias}/rollback",
            post(rollback),
        )
        .route("/registry/models/{model}/history", get(history))
        .route("/registry/models/{model}/compare", get(compare))
        .with_state(state)
}

/// A JSON `{"error": ...}` response with its status.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::Conflict(_) => StatusCode::CONFLICT,
            RegistryError::Artifact(_) | RegistryError::Corrupt(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            RegistryError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RegistryError::ReadOnly(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

/// The audit actor of a write: the name of the caller's token, as the
/// server's auth layer (`greenbelt-auth`) found it — never a header the
/// client sets. The layer has already refused callers without the role.
pub fn actor(caller: &Option<Extension<Caller>>) -> String {
    caller
        .as_ref()
        .map_or_else(|| "anonymous".to_string(), |Extension(c)| c.actor())
}

fn parse_version(v: &str) -> Result<i64, ApiError> {
    v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("version \"{v}\" is not a positive integer"),
        )
    })
}

async fn list_models(State(s): State<Arc<ApiState>>) -> ApiResult {
    ok(json!({ "models": s.registry.models().await? }))
}

async fn list_versions(State(s): State<Arc<ApiState>>, Path(model): Path<String>) -> ApiResult {
    ok(json!({ "versions": s.registry.versions(&model).await? }))
}

async fn show_version(
    State(s): State<Arc<ApiState>>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    ok(s.registry.version(&model, parse_version(&version)?).await?)
}

async fn register(
    State(s): State<Arc<ApiState>>,
    Path(model): Path<String>,
    caller: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let who = actor(&caller);
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")))?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".into(), json!(model));
        obj.insert("created_by".into(), json!(who));
    }
    let new: NewVersion = serde_json::from_value(v).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("not a version registration: {e}"),
        )
    })?;
    // A `fault` tag makes a server that allows fault injection break the
    // version on purpose (drills): only an admin may register one.
    let has_admin = caller
        .as_ref()
        .is_some_and(|Extension(c)| c.has(Role::Admin));
    if new.tags.get("fault").is_some() && !has_admin {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "registering a version tagged \"fault\" (fault injection for drills) needs a token of role admin".into(),
        ));
    }
    let created = s.registry.register(new).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

async fn list_aliases(State(s): State<Arc<ApiState>>, Path(model): Path<String>) -> ApiResult {
    let aliases: serde_json::Map<String, Value> = s
        .registry
        .aliases(&model)
        .await?
        .into_iter()
        .map(|(a, v)| (a, json!(v)))
        .collect();
    ok(json!({ "aliases": aliases }))
}

async fn show_alias(
    State(s): State<Arc<ApiState>>,
    Path((model, alias)): Path<(String, String)>,
) -> ApiResult {
    let v = s.registry.alias(&model, &alias).await?.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("model \"{model}\" has no alias \"{alias}\""),
        )
    })?;
    ok(s.registry.version(&model, v).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAlias {
    version: i64,
    #[serde(default)]
    reason: String,
}

async fn set_alias(
    State(s): State<Arc<ApiState>>,
    Path((model, alias)): Path<(String, String)>,
    caller: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let who = actor(&caller);
    let req: SetAlias = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"version\": N, \"reason\": \"...\"}}: {e}"),
        )
    })?;
    let event = s
        .registry
        .set_alias(&model, &alias, req.version, &who, &req.reason)
        .await?;
    ok(json!({ "event": event }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reason {
    #[serde(default)]
    reason: String,
}

fn reason(body: &[u8]) -> Result<String, ApiError> {
    if body.is_empty() {
        return Ok(String::new());
    }
    serde_json::from_slice::<Reason>(body)
        .map(|r| r.reason)
        .map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"reason\": \"...\"}}: {e}"),
            )
        })
}

async fn delete_alias(
    State(s): State<Arc<ApiState>>,
    Path((model, alias)): Path<(String, String)>,
    caller: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let who = actor(&caller);
    let event = s
        .registry
        .delete_alias(&model, &alias, &who, &reason(&body)?)
        .await?;
    ok(json!({ "event": event }))
}

async fn rollback(
    State(s): State<Arc<ApiState>>,
    Path((model, alias)): Path<(String, String)>,
    caller: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let who = actor(&caller);
    let event = s
        .registry
        .rollback(&model, &alias, &who, &reason(&body)?)
        .await?;
    ok(json!({ "event": event }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    alias: Option<String>,
    /// RFC 3339: answer which version the alias pointed to then.
    at: Option<String>,
}

async fn history(
    State(s): State<Arc<ApiState>>,
    Path(model): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    if let Some(at) = &q.at {
        let alias = q.alias.as_deref().ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "`at` needs `alias` too (e.g. ?alias=champion&at=...)".into(),
            )
        })?;
        let t = parse_time(at)?;
        let version = s.registry.alias_at(&model, alias, t).await?;
        return ok(json!({ "model": model, "alias": alias, "at": at, "version": version }));
    }
    ok(json!({ "events": s.registry.history(&model, q.alias.as_deref()).await? }))
}

#[derive(Deserialize)]
struct CompareQuery {
    a: String,
    b: String,
}

async fn compare(
    State(s): State<Arc<ApiState>>,
    Path(model): Path<String>,
    Query(q): Query<CompareQuery>,
) -> ApiResult {
    let a = s.registry.version(&model, parse_version(&q.a)?).await?;
    let b = s.registry.version(&model, parse_version(&q.b)?).await?;
    ok(crate::store::compare(&a, &b))
}
