//! The registry inside a server and from the command line: opening it from
//! the project config, who is acting, mounting the `/registry` and
//! `/admin/rollouts` APIs with one controller task per `[[deployments]]`
//! entry, and registering a model file with its signature.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use greenbelt_registry::{ArtifactStore, ModelVersion, NewVersion, Registry, RegistryError};
use greenbelt_serve::auth::redact_url;
use greenbelt_serve::{Config, Server};
use serde_json::{Value, json};

use crate::error::{AppError, Result};
use crate::tasks::Tasks;

/// The project config: `path`, else `./greenbelt.toml` when it exists,
/// else the defaults.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let default = PathBuf::from("greenbelt.toml");
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None if default.is_file() => Some(default),
        None => None,
    };
    Ok(Config::load(path.as_deref())?)
}

/// Open the registry at `url` (default: `[registry] url`), creating the
/// directory of a SQLite file.
pub async fn open(config: &Config, url: Option<&str>) -> Result<Registry> {
    let url = url.unwrap_or(config.registry.url());
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(dir) = Path::new(path.split('?').next().unwrap_or(path)).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(AppError::io(format!("creating {}", dir.display())))?;
    }
    Ok(Registry::open(url).await?)
}

/// Who is making a change: `$GREENBELT_ACTOR`, else `[registry] actor`.
pub fn actor(config: &Config) -> String {
    std::env::var("GREENBELT_ACTOR")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| config.registry.actor.clone())
}

/// When the config names a registry or deployments: mount the registry and
/// rollout APIs on `server` and start one controller task per
/// `[[deployments]]` entry (follow the alias, run rollouts, keep shadows).
pub async fn attach(server: &mut Server, config: &Config, tasks: &mut Tasks) -> Result<()> {
    let deployments = config.deployments.clone();
    if deployments.is_empty() && config.registry.url.is_none() {
        return Ok(());
    }
    let on_disk = server.state.repository.on_disk();
    if let Some(r) = deployments.iter().find(|r| on_disk.contains(&r.name)) {
        return Err(AppError::Invalid(format!(
            "[[deployments]] name \"{}\" is also a model directory in the repository ({}); rename one of them",
            r.name,
            config.repository.path.join(&r.name).display()
        )));
    }
    for d in &deployments {
        greenbelt_control::rollout::analysis::conditions(&d.rollout.analysis).map_err(|e| {
            AppError::Invalid(format!(
                "[[deployments]] \"{}\": rollout.analysis: {e}",
                d.name
            ))
        })?;
    }
    let registry_config = &config.registry;
    let artifacts = ArtifactStore::open(&registry_config.artifacts)?;
    let cache = PathBuf::from(&registry_config.cache_dir);
    let startup = Duration::from_millis(registry_config.startup_timeout_ms);
    let registry = match tokio::time::timeout(startup, open(config, None)).await {
        Ok(Ok(r)) => r,
        Ok(Err(AppError::Registry(RegistryError::Db(e)))) => {
            return start_degraded(server, config, tasks, artifacts, cache, e).await;
        }
        Err(_) => {
            let why = format!("no answer within {} ms", startup.as_millis());
            return start_degraded(server, config, tasks, artifacts, cache, why).await;
        }
        Ok(Err(e)) => {
            return Err(AppError::Invalid(format!(
                "opening the registry {}: {e}",
                redact_url(registry_config.url())
            )));
        }
    };
    let late = LateApis::default();
    late.connect(
        server.state.clone(),
        config,
        registry,
        artifacts,
        cache,
        tasks,
    );
    server.merge(late.router());
    tracing::info!(registry = %redact_url(registry_config.url()), "registry API at /registry, rollouts at /admin/rollouts; deployments follow their aliases");
    Ok(())
}

/// The registry and rollout APIs, mounted before the registry database
/// answers: 503 with the reason until it does, then the real routers.
#[derive(Clone, Default)]
struct LateApis {
    routes: Arc<std::sync::OnceLock<axum::Router>>,
}

impl LateApis {
    fn router(&self) -> axum::Router {
        use axum::extract::Request;
        use axum::response::IntoResponse;
        let routes = self.routes.clone();
        let handler = move |req: Request| {
            let routes = routes.clone();
            async move {
                use tower::ServiceExt;
                match routes.get() {
                    Some(r) => r.clone().oneshot(forwarded(req)).await.into_response(),
                    None => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [(axum::http::header::RETRY_AFTER, "5")],
                        axum::Json(json!({
                            "error": "the registry database is unreachable (it was down when this server started); the server serves its deployments from the artifact cache and connects when the database answers"
                        })),
                    )
                        .into_response(),
                }
            }
        };
        axum::Router::new()
            .route("/registry/{*rest}", axum::routing::any(handler.clone()))
            .route("/admin/rollouts/{*rest}", axum::routing::any(handler))
    }

    /// Mount the real APIs and start the controller, with one task per
    /// `[[deployments]]` entry.
    fn connect(
        &self,
        state: Arc<greenbelt_serve::infer::AppState>,
        config: &Config,
        registry: Registry,
        artifacts: ArtifactStore,
        cache: PathBuf,
        tasks: &mut Tasks,
    ) {
        let deployments = config.deployments.clone();
        // Who may write is the server's auth layer's business (greenbelt-auth).
        let api = Arc::new(greenbelt_registry::http::ApiState {
            registry: registry.clone(),
        });
        let routes = greenbelt_registry::http::router(api.clone()).merge(
            greenbelt_control::rollout::http::router(Arc::new(
                greenbelt_control::rollout::http::RolloutApi {
                    api,
                    deployments: deployments.clone(),
                },
            )),
        );
        let _ = self.routes.set(routes);
        {
            let (registry, artifacts) = (registry.clone(), artifacts.clone());
            let sizes = Arc::new(tokio::sync::Mutex::new(std::collections::HashMap::new()));
            crate::cost::spawn_store_scan(
                &state,
                tasks,
                greenbelt_core::cost::Store::Registry,
                false,
                move || {
                    let (registry, artifacts, sizes) =
                        (registry.clone(), artifacts.clone(), sizes.clone());
                    async move { crate::cost::registry_holdings(&registry, &artifacts, &sizes).await }
                },
            );
        }
        let controller = Arc::new(greenbelt_control::rollout::Controller::new(
            registry,
            artifacts,
            state,
            cache,
            Duration::from_millis(config.registry.poll_interval_ms),
        ));
        tasks.adopt(controller.spawn(deployments, None));
    }
}

/// `req` as the real routers must see it: the outer `{*rest}` route's path
/// parameter stays behind (axum would hand the inner handlers two
/// parameters where they extract one: every `/registry/models/{model}/...`
/// answered 500), the caller the auth layer found goes along.
fn forwarded(req: axum::extract::Request) -> axum::extract::Request {
    let (parts, body) = req.into_parts();
    let caller = parts
        .extensions
        .get::<greenbelt_serve::auth::Caller>()
        .cloned();
    let mut out = axum::extract::Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = parts.uri;
    *out.version_mut() = parts.version;
    *out.headers_mut() = parts.headers;
    if let Some(c) = caller {
        out.extensions_mut().insert(c);
    }
    out
}

/// How often a server that started without its registry database tries
/// again (doubling from the first, up to the last).
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// The registry database did not answer at start-up: serve every
/// deployment's last recorded version from the artifact cache, mount the
/// APIs as 503 until the database answers, and keep trying to connect in
/// the background; once it answers, the controller takes over (each
/// deployment follows its alias again). A deployment with nothing cached
/// keeps readiness false until then.
async fn start_degraded(
    server: &mut Server,
    config: &Config,
    tasks: &mut Tasks,
    artifacts: ArtifactStore,
    cache: PathBuf,
    why: String,
) -> Result<()> {
    let url = redact_url(config.registry.url());
    tracing::warn!(registry = %url, error = %why, cache = %cache.display(), "the registry database is unreachable at start-up: serving deployments from the artifact cache, retrying the database in the background");
    for dep in &config.deployments {
        match greenbelt_control::rollout::serve_from_cache(&server.state, dep, &cache).await {
            Ok(plan) => tracing::warn!(
                deployment = %dep.name,
                version = plan.version,
                recorded = %greenbelt_registry::format_us(plan.written_at_ms.saturating_mul(1000)),
                "serving the last recorded version from the artifact cache (registry unreachable); no rollout runs until the registry answers"
            ),
            Err(e) => {
                tracing::error!(deployment = %dep.name, error = %e, "deployment cannot serve until the registry answers");
                server.state.repository.record_error(
                    &dep.name,
                    &format!("registry unreachable at start-up and {e}"),
                );
            }
        }
    }
    let late = LateApis::default();
    server.merge(late.router());
    let state = server.state.clone();
    let config = config.clone();
    tasks.spawn(move |mut stop| async move {
        let mut wait = RECONNECT_FIRST;
        let mut inner = Tasks::new();
        loop {
            tokio::select! {
                _ = stop.stopped() => {
                    inner.shutdown(Duration::ZERO).await;
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            let startup = Duration::from_millis(config.registry.startup_timeout_ms);
            match tokio::time::timeout(startup, open(&config, None)).await {
                Ok(Ok(registry)) => {
                    tracing::info!(registry = %redact_url(config.registry.url()), "the registry database answers: registry API mounted, deployments follow their aliases again");
                    late.connect(state.clone(), &config, registry, artifacts.clone(), cache.clone(), &mut inner);
                    stop.stopped().await;
                    inner.shutdown(Duration::ZERO).await;
                    return;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "registry still unreachable"),
                Err(_) => tracing::debug!("registry still unreachable (no answer)"),
            }
            wait = (wait * 2).min(RECONNECT_MAX);
        }
    });
    Ok(())
}

/// The inputs and outputs of the model in `file`, as the runtime that will
/// serve it sees them (loaded with `backend = "auto"`, so a file the
/// server could not load is refused before it is registered).
pub async fn model_signature(file: &Path, config: &Config) -> Result<Value> {
    let ort = config.runtime.onnxruntime_library.clone();
    let path = file.to_path_buf();
    let signature = tokio::task::spawn_blocking(move || {
        let runtimes = greenbelt_runtime::Runtimes::probe(ort.as_deref());
        runtimes
            .load(&path, &greenbelt_runtime::LoadOptions::default())
            .map(|m| m.signature().clone())
    })
    .await?
    .map_err(|e| {
        AppError::Invalid(format!(
            "{} does not load ({e}), so its signature cannot be recorded; register a valid ONNX model (tree ensembles need ONNX Runtime: set [runtime] onnxruntime_library or ORT_DYLIB_PATH)",
            file.display()
        ))
    })?;
    serde_json::to_value(signature).map_err(|e| AppError::Invalid(format!("signature: {e}")))
}

/// Register the ONNX model in `file` as a new version of `model`: its
/// signature read by loading it, the bytes put in the artifact store. A
/// reference profile beside it (`model.profile.json` for `model.onnx`) is
/// stored with it.
pub async fn register_file(
    registry: &Registry,
    config: &Config,
    model: String,
    file: &Path,
    metrics: Value,
    tags: Value,
    who: String,
) -> Result<ModelVersion> {
    let beside = greenbelt_serve::repository::profile_path(file);
    let profile = beside.exists().then_some(beside);
    register_file_with_profile(
        registry,
        config,
        model,
        file,
        profile.as_deref(),
        metrics,
        tags,
        who,
    )
    .await
}

/// [`register_file`] with the reference profile read from `profile`
/// (checked against the model's signature before anything is stored).
#[allow(clippy::too_many_arguments)]
pub async fn register_file_with_profile(
    registry: &Registry,
    config: &Config,
    model: String,
    file: &Path,
    profile: Option<&Path>,
    metrics: Value,
    tags: Value,
    who: String,
) -> Result<ModelVersion> {
    let facts = VersionFacts {
        profile,
        metrics,
        tags,
        ..VersionFacts::default()
    };
    register_file_facts(registry, config, model, file, facts, who).await
}

/// What is recorded with a version registered from a file, besides its
/// signature and bytes.
#[derive(Debug, Clone, Default)]
pub struct VersionFacts<'a> {
    /// A reference profile (drift), checked against the signature.
    pub profile: Option<&'a Path>,
    pub metrics: Value,
    pub params: Value,
    pub tags: Value,
    /// Fields added to the lineage (which always has `source_file`).
    pub lineage: Value,
}

/// Register the ONNX model in `file` as a new version of `model` with
/// `facts`: its signature read by loading it, the bytes (and the profile)
/// put in the artifact store.
pub async fn register_file_facts(
    registry: &Registry,
    config: &Config,
    model: String,
    file: &Path,
    facts: VersionFacts<'_>,
    who: String,
) -> Result<ModelVersion> {
    let bytes = std::fs::read(file).map_err(AppError::io(format!("reading {}", file.display())))?;
    let signature = model_signature(file, config).await?;
    let store = ArtifactStore::open(&config.registry.artifacts)?;
    let mut lineage = json!({ "source_file": file.display().to_string() });
    if let (Value::Object(extra), Some(l)) = (facts.lineage, lineage.as_object_mut()) {
        l.extend(extra);
    }
    if let Some(path) = facts.profile {
        let text = std::fs::read_to_string(path).map_err(AppError::io(format!(
            "reading the profile {}",
            path.display()
        )))?;
        let parsed = greenbelt_drift::model::ModelProfile::from_json(&text)
            .map_err(|e| AppError::Invalid(format!("{}: {e}", path.display())))?;
        let sig: greenbelt_core::Signature = serde_json::from_value(signature.clone())
            .map_err(|e| AppError::Invalid(format!("signature: {e}")))?;
        greenbelt_serve::drift::DriftMonitor::new(&parsed, &sig, 1, 0)
            .map_err(|e| AppError::Invalid(format!("{}: {e}", path.display())))?;
        let (p_uri, p_sha) = store.put(text.into_bytes().into(), "json").await?;
        lineage["profile"] = json!({ "uri": p_uri, "sha256": p_sha });
    }
    let (uri, sha) = store.put(bytes.into(), "onnx").await?;
    Ok(registry
        .register(NewVersion {
            model,
            artifact_uri: uri,
            sha256: sha,
            format: "onnx".into(),
            signature,
            metrics: facts.metrics,
            params: facts.params,
            tags: facts.tags,
            lineage,
            created_by: who,
            ..Default::default()
        })
        .await?)
}

/// The `[[deployments]]` entry named `name`.
pub fn deployment<'a>(
    config: &'a Config,
    name: &str,
) -> Result<&'a greenbelt_serve::deployment::DeploymentConfig> {
    config
        .deployments
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| {
            AppError::Invalid(format!(
                "deployment \"{name}\" is not declared in [[deployments]] of the config"
            ))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    fn get(uri: &str) -> Request<Body> {
        Request::builder().uri(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn the_late_apis_hand_inner_routes_only_their_own_path_parameters() {
        let late = LateApis::default();
        let r = late
            .router()
            .oneshot(get("/registry/models/m/versions"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let inner = axum::Router::new().route(
            "/registry/models/{model}/versions",
            axum::routing::get(|Path(model): Path<String>| async move { model }),
        );
        late.routes.set(inner).unwrap();
        // The outer `{*rest}` must not reach the handler as a second parameter.
        let r = late
            .router()
            .oneshot(get("/registry/models/m/versions"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"m");
    }
}
