//! `greenbelt optimize`: the project's registry, artifact store and
//! runtimes wired to `greenbelt_control::optimize` (quantized and distilled
//! versions judged by the promotion gates).

use std::path::PathBuf;
use std::sync::Arc;

use greenbelt_control::optimize::Context;
use greenbelt_registry::ArtifactStore;
use greenbelt_runtime::Runtimes;
use greenbelt_serve::Config;

use crate::error::Result;

/// Where optimize runs keep the model files they measure.
pub const WORKDIR: &str = ".greenbelt/optimize";

/// The runtimes of the project (`[runtime] onnxruntime_library`, else the
/// usual places).
pub async fn runtimes(config: &Config) -> Result<Runtimes> {
    let ort = config.runtime.onnxruntime_library.clone();
    Ok(tokio::task::spawn_blocking(move || Runtimes::probe(ort.as_deref())).await?)
}

/// The registry at `registry_url` (default `[registry] url`), the artifact
/// store and the runtimes of `config`.
pub async fn context(
    config: &Config,
    registry_url: Option<&str>,
    progress: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<Context> {
    Ok(Context {
        registry: crate::registry::open(config, registry_url).await?,
        artifacts: ArtifactStore::open(&config.registry.artifacts)?,
        runtimes: runtimes(config).await?,
        actor: crate::registry::actor(config),
        workdir: PathBuf::from(WORKDIR),
        progress,
    })
}
