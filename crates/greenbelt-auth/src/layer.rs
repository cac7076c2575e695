//! The one auth layer in front of every REST route, and the policy table
//! it applies. Reads are open (health, metadata, metrics, inference);
//! what changes state or shows request data needs a role; a method and
//! path the table does not know needs admin, so a new write endpoint is
//! closed until someone decides otherwise.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};

use crate::{Auth, AuthError, Principal, Role};

/// The caller as the layer saw it, put in the request's extensions for
/// handlers (the audit actor, finer checks such as fault-tagged versions).
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Principal>);

impl Caller {
    /// The audit actor: the token's name (`anonymous` on an open server).
    pub fn actor(&self) -> String {
        self.0
            .as_ref()
            .map_or_else(|| "anonymous".to_string(), |p| p.name.clone())
    }

    pub fn has(&self, role: Role) -> bool {
        self.0.as_ref().is_some_and(|p| p.role.grants(role))
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Public,
    Role(Role),
    /// The repository's load/unload: switched on by config, then deployer.
    ModelControl,
}

/// Which role `method path` needs.
pub fn policy(method: &Method, path: &str) -> Need {
    if path.starts_with("/v2/repository/models/")
        && (path.ends_with("/load") || path.ends_with("/unload"))
    {
        return Need::ModelControl;
    }
    // Shadow reports carry samples of live request inputs; the dashboard's
    // data shows live traffic of every deployment (the page itself is static).
    if path.starts_with("/admin/shadow/") || path == "/dashboard/data" {
        return Need::Role(Role::Viewer);
    }
    if method == Method::GET || method == Method::HEAD {
        return Need::Public;
    }
    let infer = path.starts_with("/v2/models/") && path.ends_with("/infer");
    match path {
        _ if infer => Need::Public,
        // Feast's feature-server routes are the same reads and pushes.
        "/v2/repository/index" | "/features/online" | "/get-online-features" => Need::Public,
        "/features/push" | "/push" => Need::Role(Role::FeatureWriter),
        // Delayed labels are data, written by the same pipelines as features.
        _ if path.starts_with("/v2/models/") && path.ends_with("/labels") => {
            Need::Role(Role::FeatureWriter)
        }
        _ if path.starts_with("/registry/") || path.starts_with("/admin/rollouts") => {
            Need::Role(Role::Deployer)
        }
        _ => Need::Role(Role::Admin),
    }
}

/// `401`/`403` as the JSON error every API answers.
pub fn reject(e: &AuthError) -> Response {
    let status = match e {
        AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        AuthError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut resp = (
        status,
        axum::Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// The layer as an axum `from_fn` middleware (for routers built apart).
pub async fn middleware(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    match admit(&auth, &mut req) {
        Ok(()) => next.run(req).await,
        Err(e) => reject(&e),
    }
}

/// The layer as a plain tower layer: the check is synchronous, so a
/// request pays no boxed future and no clone of the service behind it.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Auth>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            auth: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    auth: Arc<Auth>,
    inner: S,
}

impl<S> tower::Service<Request> for AuthService<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match admit(&self.auth, &mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Ok(reject(&e)))),
        }
    }
}

/// Authenticate, apply [`policy`], hand the [`Caller`] on: the request
/// goes on (`Ok`), or is refused ([`reject`] is the answer).
fn admit(auth: &Auth, req: &mut Request) -> Result<(), AuthError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("<not text>"));
    let who = auth.authenticate(presented)?;
    let checked = match policy(req.method(), req.uri().path()) {
        Need::Public => Ok(()),
        Need::Role(role) => auth.require(who.as_ref(), role).map(|_| ()),
        Need::ModelControl => auth.may_control_models(who.as_ref()).map(|_| ()),
    };
    if let Err(e) = checked {
        tracing::info!(
            target: "greenbelt::auth",
            method = %req.method(),
            path = req.uri().path(),
            caller = who.as_ref().map_or("", |p| p.name.as_str()),
            error = %e,
            "refused"
        );
        return Err(e);
    }
    let caller = match who {
        Some(p) => Some(p),
        None if !auth.enabled() => Some(Principal::anonymous()),
        None => None,
    };
    req.extensions_mut().insert(Caller(caller));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_table() {
        let cases = [
            (Method::GET, "/v2/models/m", Need::Public),
            (Method::GET, "/metrics", Need::Public),
            (Method::POST, "/v2/models/m/infer", Need::Public),
            (Method::POST, "/v2/models/m/versions/2/infer", Need::Public),
            (Method::POST, "/v2/repository/index", Need::Public),
            (
                Method::POST,
                "/v2/repository/models/m/load",
                Need::ModelControl,
            ),
            (
                Method::POST,
                "/v2/repository/models/m/unload",
                Need::ModelControl,
            ),
            (Method::GET, "/admin/shadow/m", Need::Role(Role::Viewer)),
            (Method::GET, "/dashboard/data", Need::Role(Role::Viewer)),
            (Method::GET, "/dashboard", Need::Public),
            (Method::GET, "/admin/deployments/m", Need::Public),
            (Method::GET, "/admin/autoscaler", Need::Public),
            (Method::GET, "/admin/cost", Need::Public),
            (Method::GET, "/admin/drift/m", Need::Public),
            (
                Method::POST,
                "/v2/models/m/labels",
                Need::Role(Role::FeatureWriter),
            ),
            (
                Method::POST,
                "/features/push",
                Need::Role(Role::FeatureWriter),
            ),
            (Method::POST, "/features/online", Need::Public),
            (Method::POST, "/get-online-features", Need::Public),
            (Method::POST, "/push", Need::Role(Role::FeatureWriter)),
            (
                Method::POST,
                "/registry/models/m/versions",
                Need::Role(Role::Deployer),
            ),
            (
                Method::PUT,
                "/registry/models/m/aliases/a",
                Need::Role(Role::Deployer),
            ),
            (
                Method::DELETE,
                "/registry/models/m/aliases/a",
                Need::Role(Role::Deployer),
            ),
            (Method::GET, "/registry/models", Need::Public),
            (
                Method::POST,
                "/admin/rollouts/m/promote",
                Need::Role(Role::Deployer),
            ),
            (Method::POST, "/something/new", Need::Role(Role::Admin)),
        ];
        for (m, p, want) in cases {
            assert_eq!(policy(&m, p), want, "{m} {p}");
        }
    }
}
