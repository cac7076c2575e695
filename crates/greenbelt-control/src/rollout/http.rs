//! The rollout admin API, mounted beside the registry API:
//!
//! - `GET  /admin/rollouts/{deployment}`: state and recent events
//! - `POST /admin/rollouts/{deployment}/start` with `{"version": N, "strategy": "canary"|"blue_green"}`
//! - `POST /admin/rollouts/{deployment}/{promote|promote-full|abort|pause|resume}`
//!
//! The server's auth layer guards writes (deployer role); the token's name
//! is the actor.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use greenbelt_registry::http::{ApiError, ApiState, actor};
use greenbelt_serve::deployment::{DeploymentConfig, Strategy};
use serde::Deserialize;

use super::{Command, command, controller::wall_ms, start, status};

pub struct RolloutApi {
    pub api: Arc<ApiState>,
    pub deployments: Vec<DeploymentConfig>,
}

pub fn router(state: Arc<RolloutApi>) -> Router {
    Router::new()
        .route("/admin/rollouts/{deployment}", get(show))
        .route("/admin/rollouts/{deployment}/start", post(start_rollout))
        .route("/admin/rollouts/{deployment}/{action}", post(act))
        .with_state(state)
}

fn fail(e: impl Into<ApiError>) -> Response {
    e.into().into_response()
}

async fn show(State(s): State<Arc<RolloutApi>>, Path(dep): Path<String>) -> Response {
    match status(&s.api.registry, &dep).await {
        Ok(st) => axum::Json(st).into_response(),
        Err(e) => fail(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    version: i64,
    #[serde(default)]
    strategy: Option<Strategy>,
}

async fn start_rollout(
    State(s): State<Arc<RolloutApi>>,
    Path(dep): Path<String>,
    caller: Option<axum::Extension<greenbelt_serve::auth::Caller>>,
    body: axum::body::Bytes,
) -> Response {
    let who = actor(&caller);
    let body: StartBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "body: {e}; send {{\"version\": N, \"strategy\": \"canary\" | \"blue_green\"}}"
                ),
            )
            .into_response();
        }
    };
    let Some(d) = s.deployments.iter().find(|d| d.name == dep) else {
        return ApiError(
            StatusCode::NOT_FOUND,
            format!("deployment \"{dep}\" is not in this server's [[deployments]]"),
        )
        .into_response();
    };
    match start(
        &s.api.registry,
        d,
        body.version,
        body.strategy,
        &who,
        wall_ms(),
    )
    .await
    {
        Ok(r) => (StatusCode::CREATED, axum::Json(r)).into_response(),
        Err(e) => fail(e),
    }
}

async fn act(
    State(s): State<Arc<RolloutApi>>,
    Path((dep, action)): Path<(String, String)>,
    caller: Option<axum::Extension<greenbelt_serve::auth::Caller>>,
) -> Response {
    let who = actor(&caller);
    let cmd = match action.as_str() {
        "promote" => Command::Promote,
        "promote-full" => Command::PromoteFull,
        "abort" => Command::Abort,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        other => {
            return ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "\"{}\" is not a rollout action; use start, promote, promote-full, abort, pause or resume",
                    other.chars().take(40).collect::<String>()
                ),
            )
            .into_response();
        }
    };
    match command(&s.api.registry, &dep, cmd, &who, wall_ms()).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => fail(e),
    }
}
