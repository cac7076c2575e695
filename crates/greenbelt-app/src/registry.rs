//! The registry inside a server and from the command line: opening it from
//! the project config, who is acting, mounting the `/registry` and
//! `/admin/rollouts` APIs with one controller task per `[[deployments]]`
//! entry, and registering a model file with its signature.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use greenbelt_registry::{ArtifactStore, ModelVersion, NewVersion, Registry};
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
    let registry = open(config, None).await.map_err(|e| {
        AppError::Invalid(format!(
            "opening the registry {}: {e}",
            redact_url(registry_config.url())
        ))
    })?;
    let artifacts = ArtifactStore::open(&registry_config.artifacts)?;
    // Who may write is the server's auth layer's business (greenbelt-auth).
    let api = Arc::new(greenbelt_registry::http::ApiState {
        registry: registry.clone(),
    });
    server.merge(greenbelt_registry::http::router(api.clone()));
    server.merge(greenbelt_control::rollout::http::router(Arc::new(
        greenbelt_control::rollout::http::RolloutApi {
            api,
            deployments: deployments.clone(),
        },
    )));
    let controller = Arc::new(greenbelt_control::rollout::Controller::new(
        registry,
        artifacts,
        server.state.clone(),
        PathBuf::from(".greenbelt/cache"),
        Duration::from_millis(registry_config.poll_interval_ms),
    ));
    tracing::info!(registry = %redact_url(registry_config.url()), "registry API at /registry, rollouts at /admin/rollouts; deployments follow their aliases");
    tasks.adopt(controller.spawn(deployments, None));
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
/// signature read by loading it, the bytes put in the artifact store.
pub async fn register_file(
    registry: &Registry,
    config: &Config,
    model: String,
    file: &Path,
    metrics: Value,
    tags: Value,
    who: String,
) -> Result<ModelVersion> {
    let bytes = std::fs::read(file).map_err(AppError::io(format!("reading {}", file.display())))?;
    let signature = model_signature(file, config).await?;
    let store = ArtifactStore::open(&config.registry.artifacts)?;
    let (uri, sha) = store.put(bytes.into(), "onnx").await?;
    Ok(registry
        .register(NewVersion {
            model,
            artifact_uri: uri,
            sha256: sha,
            format: "onnx".into(),
            signature,
            metrics,
            tags,
            lineage: json!({ "source_file": file.display().to_string() }),
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
