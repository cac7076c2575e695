//! Promotion pipelines with the feature store: `[data.historical]` is read
//! by point-in-time retrieval, and [`run_pipeline`] wires a pipeline file
//! to the registry, the artifact store and the runtimes of a project.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use greenbelt_control::pipeline::definition::{HistoricalDef, PipelineDef};
use greenbelt_control::pipeline::{self, RunContext};
use greenbelt_features::Definitions;
use greenbelt_features::pit::{HistoricalOptions, historical_to_parquet};
use greenbelt_registry::ArtifactStore;
use greenbelt_serve::Config;

use crate::error::Result;

/// `[data.historical]` through the feature store: point-in-time retrieval
/// of the service's features for the entity rows.
pub struct FeatureStoreRetrieval;

impl pipeline::HistoricalRetrieval for FeatureStoreRetrieval {
    fn retrieve<'a>(
        &'a self,
        def: &'a HistoricalDef,
        out: &'a Path,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<String>, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let defs = Definitions::load(&def.definitions).map_err(|e| e.to_string())?;
            let refs = defs
                .service(&def.service)
                .map_err(|e| format!("service: {e}"))?
                .features
                .clone();
            let opts = HistoricalOptions {
                entity_timestamp: def
                    .entity_timestamp
                    .clone()
                    .unwrap_or_else(|| "event_timestamp".into()),
                as_of_known_time: def.as_of_known_time,
                from_offline_store: def.from_offline_store,
                ..HistoricalOptions::default()
            };
            historical_to_parquet(&defs, &refs, &def.entities, out, &opts)
                .await
                .map_err(|e| e.to_string())?;
            Ok(refs.into_iter().map(|r| r.feature).collect())
        })
    }
}

/// Run the pipeline in `file` for the project `config`; `progress` hears
/// each step.
pub async fn run_pipeline(
    file: &Path,
    config: &Config,
    progress: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<pipeline::Report> {
    let def = PipelineDef::read(file)?;
    let registry = crate::registry::open(config, None).await?;
    let artifacts = ArtifactStore::open(&config.registry.artifacts)?;
    let ort = config.runtime.onnxruntime_library.clone();
    let runtimes =
        tokio::task::spawn_blocking(move || greenbelt_runtime::Runtimes::probe(ort.as_deref()))
            .await?;
    let ctx = RunContext {
        registry,
        artifacts,
        runtimes,
        actor: crate::registry::actor(config),
        workdir: PathBuf::from(".greenbelt/pipelines").join(&def.name),
        progress,
        historical: Some(Arc::new(FeatureStoreRetrieval)),
        deployments: config.deployments.clone(),
    };
    Ok(pipeline::run(&def, &ctx).await?)
}
