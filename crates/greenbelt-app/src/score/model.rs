//! The model a scoring run uses: named in the registry (`NAME`,
//! `NAME@ALIAS`, `NAME:VERSION`; the artifact fetched from the artifact
//! store and its sha256 checked) or a plain ONNX file, loaded through
//! [`greenbelt_runtime::Runtimes::load`], with the feature names of its
//! reference profile when it has one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use greenbelt_drift::model::ModelProfile;
use greenbelt_registry::{ArtifactStore, ModelRef, ModelVersion, Registry};
use greenbelt_runtime::{Backend, LoadOptions, Model, Runtimes};
use greenbelt_serve::Config;

use crate::error::{AppError, Result};

/// A loaded model and what the output says about it.
pub struct ScoringModel {
    /// The registry's model name, or the file's (see [`ScoringModel::from_file`]).
    pub name: String,
    /// The registry version; for a file in a `NAME/VERSION/model.onnx`
    /// layout, that version; else none.
    pub version: Option<i64>,
    /// sha256 of the model file.
    pub sha256: String,
    pub model: Arc<dyn Model>,
    /// Input tensor → the feature in each column of its last dimension,
    /// from the reference profile (empty without one).
    pub features: BTreeMap<String, Vec<String>>,
}

impl ScoringModel {
    /// `name:version`, or the name alone.
    pub fn label(&self) -> String {
        match self.version {
            Some(v) => format!("{}:{v}", self.name),
            None => self.name.clone(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.model.backend()
    }

    /// Load the ONNX file at `path`; its profile is `model.profile.json`
    /// beside `model.onnx` when it exists. The name and version come from a
    /// `NAME/VERSION/model.onnx` layout (a model repository's), else the
    /// name is the file's stem.
    pub async fn from_file(
        config: &Config,
        path: &Path,
        backend: Backend,
        threads: usize,
    ) -> Result<ScoringModel> {
        let bytes = std::fs::read(path).map_err(AppError::io(format!(
            "reading the model file {}",
            path.display()
        )))?;
        let sha256 = greenbelt_registry::artifacts::sha256_hex(&bytes);
        drop(bytes);
        let (name, version) = name_from_path(path);
        let profile = greenbelt_serve::repository::profile_path(path);
        let features = match std::fs::read_to_string(&profile) {
            Ok(text) => profile_features(&text, &profile.display().to_string())?,
            Err(_) => BTreeMap::new(),
        };
        let model = load(config, path, backend, threads, &path.display().to_string()).await?;
        Ok(ScoringModel {
            name,
            version,
            sha256,
            model,
            features,
        })
    }

    /// Resolve `reference` in `registry`, fetch its artifact (sha256
    /// checked) and its profile from the artifact store of `config`, and
    /// load it.
    pub async fn from_registry(
        config: &Config,
        registry: &Registry,
        reference: &ModelRef,
        backend: Backend,
        threads: usize,
    ) -> Result<ScoringModel> {
        let record = registry.resolve(reference).await?;
        let label = format!("{}:{}", record.model, record.version);
        let store = ArtifactStore::open(&config.registry.artifacts)?;
        let bytes = store
            .get(&record.artifact_uri, &record.sha256)
            .await
            .map_err(|e| AppError::Invalid(format!("model {label}: {e}")))?;
        let dir = tempfile::tempdir().map_err(AppError::io("creating a temporary directory"))?;
        let file = dir.path().join("model.onnx");
        std::fs::write(&file, &bytes)
            .map_err(AppError::io(format!("writing {}", file.display())))?;
        drop(bytes);
        let features = match profile_of(&store, &record).await? {
            Some(text) => profile_features(&text, &format!("the profile of {label}"))?,
            None => BTreeMap::new(),
        };
        let model = load(config, &file, backend, threads, &label).await?;
        Ok(ScoringModel {
            name: record.model,
            version: Some(record.version),
            sha256: record.sha256,
            model,
            features,
        })
    }
}

/// The version's reference profile (JSON text), when its lineage has one.
async fn profile_of(store: &ArtifactStore, record: &ModelVersion) -> Result<Option<String>> {
    let p = &record.lineage["profile"];
    let (Some(uri), Some(sha)) = (p["uri"].as_str(), p["sha256"].as_str()) else {
        return Ok(None);
    };
    let bytes = store.get(uri, sha).await?;
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
        AppError::Invalid(format!(
            "the profile of {}:{} ({uri}) is not UTF-8 text",
            record.model, record.version
        ))
    })?;
    Ok(Some(text))
}

fn profile_features(text: &str, what: &str) -> Result<BTreeMap<String, Vec<String>>> {
    ModelProfile::from_json(text)
        .map(|p| p.inputs)
        .map_err(|e| AppError::Invalid(format!("{what}: {e}")))
}

/// `NAME/VERSION/file.onnx` → (NAME, Some(VERSION)); else (file stem, None).
fn name_from_path(path: &Path) -> (String, Option<i64>) {
    let parent = path.parent();
    let version = parent
        .and_then(Path::file_name)
        .and_then(|v| v.to_str())
        .and_then(|v| v.parse::<i64>().ok());
    let repo_name = parent
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    match (version, repo_name) {
        (Some(v), Some(n)) => (n.to_string(), Some(v)),
        _ => (
            path.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model")
                .to_string(),
            None,
        ),
    }
}

/// Load `file` with `backend`: ONNX Runtime gets one session per scoring
/// thread, the native engine and tract share one model between threads.
async fn load(
    config: &Config,
    file: &Path,
    backend: Backend,
    threads: usize,
    label: &str,
) -> Result<Arc<dyn Model>> {
    let ort = config.runtime.onnxruntime_library.clone();
    let path = file.to_path_buf();
    let opts = LoadOptions {
        backend,
        intra_op_threads: 1,
        instances: threads.max(1),
        ..LoadOptions::default()
    };
    tokio::task::spawn_blocking(move || Runtimes::probe(ort.as_deref()).load(&path, &opts))
        .await?
        .map_err(|e| {
            AppError::Invalid(format!("model {label} (backend {}): {e}", backend.as_str()))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn model_references_parse_and_bad_ones_say_the_forms() {
        assert_eq!(
            "fraud".parse::<ModelRef>().unwrap(),
            ModelRef::Latest("fraud".into())
        );
        assert_eq!(
            "fraud@champion".parse::<ModelRef>().unwrap(),
            ModelRef::Alias("fraud".into(), "champion".into())
        );
        assert_eq!(
            "fraud:3".parse::<ModelRef>().unwrap(),
            ModelRef::Version("fraud".into(), 3)
        );
        for bad in [
            "fraud:x",
            "fraud:0",
            "fraud@",
            "@champion",
            ":3",
            "",
            "a@b:1",
        ] {
            let e = bad.parse::<ModelRef>().unwrap_err().to_string();
            assert!(e.contains("NAME@ALIAS"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_repository_layout_names_the_model_and_version() {
        assert_eq!(
            name_from_path(Path::new("fixtures/models/logreg/1/model.onnx")),
            ("logreg".to_string(), Some(1))
        );
        assert_eq!(
            name_from_path(Path::new("/tmp/churn.onnx")),
            ("churn".to_string(), None)
        );
        assert_eq!(
            name_from_path(Path::new("churn.onnx")),
            ("churn".to_string(), None)
        );
    }
}
