//! `greenbelt registry import-mlflow`: an MLflow file store's registered
//! models into the registry. Each version with an ONNX model becomes a
//! Greenbelt version (in MLflow's version order, its run's metrics and
//! parameters, the model's and the version's tags, the descriptions as
//! `mlflow.description` / `mlflow.model_description` tags, provenance in
//! `lineage.mlflow`); aliases follow. Versions without an ONNX model are
//! listed with the reason. A version already imported (its
//! [`SOURCE_VERSION_TAG`]) is recognised, not registered again, so a
//! re-run adds nothing; tags changed in MLflow since are brought up to date.
//! Reading the store is `greenbelt_registry::mlflow`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use greenbelt_registry::mlflow::{MlflowModel, MlflowVersion, read_store};
use greenbelt_registry::{Registry, RegistryError, check_name, format_us};
use greenbelt_serve::Config;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{AppError, Result};
use crate::registry::{VersionFacts, register_file_facts};

/// The tag that records which MLflow version a Greenbelt version came from.
pub const SOURCE_VERSION_TAG: &str = "mlflow.source_version";

/// The reason recorded with imported alias moves.
const ALIAS_REASON: &str = "imported from MLflow";

/// What one MLflow version became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Registered now.
    Imported,
    /// Registered by an earlier import; nothing changed.
    AlreadyImported,
    /// Registered by an earlier import; tags brought up to date.
    TagsUpdated,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportedVersion {
    pub model: String,
    pub mlflow_version: i64,
    /// The Greenbelt version.
    pub version: i64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportedAlias {
    pub model: String,
    pub alias: String,
    pub mlflow_version: i64,
    pub version: i64,
    /// False when the alias already pointed there.
    pub moved: bool,
}

/// Something in the store that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub what: String,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The `mlruns` directory read.
    pub store: PathBuf,
    pub versions: Vec<ImportedVersion>,
    pub aliases: Vec<ImportedAlias>,
    pub skipped: Vec<Skipped>,
}

impl ImportReport {
    /// How many versions this run registered.
    pub fn imported(&self) -> usize {
        self.versions
            .iter()
            .filter(|v| v.outcome == Outcome::Imported)
            .count()
    }
}

/// Import every registered model of the file store at `dir`.
pub async fn import_mlflow(
    registry: &Registry,
    config: &Config,
    dir: &Path,
    who: &str,
) -> Result<ImportReport> {
    let store = read_store(dir)?;
    let mut report = ImportReport {
        store: store.root.clone(),
        versions: Vec::new(),
        aliases: Vec::new(),
        skipped: Vec::new(),
    };
    for model in &store.models {
        if let Err(e) = check_name("model", &model.name) {
            report.skipped.push(Skipped {
                what: format!("model \"{}\"", model.name),
                why: format!("{e}; rename it in MLflow or register its files by hand"),
            });
            continue;
        }
        import_model(registry, config, model, who, &mut report).await?;
    }
    Ok(report)
}

/// The tags a version carries in Greenbelt: the model's, the version's
/// (which win), the descriptions and the source version.
fn tags_for(model: &MlflowModel, v: &MlflowVersion) -> BTreeMap<String, String> {
    let mut tags = model.tags.clone();
    tags.extend(v.tags.clone());
    if let Some(d) = &model.description {
        tags.insert("mlflow.model_description".into(), d.clone());
    }
    if let Some(d) = &v.description {
        tags.insert("mlflow.description".into(), d.clone());
    }
    tags.insert(SOURCE_VERSION_TAG.into(), v.version.to_string());
    tags
}

/// The Greenbelt versions of `model` already imported: MLflow version →
/// (Greenbelt version, its tags).
async fn already_imported(registry: &Registry, model: &str) -> Result<BTreeMap<i64, (i64, Value)>> {
    let versions = match registry.versions(model).await {
        Ok(v) => v,
        Err(RegistryError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(versions
        .into_iter()
        .filter_map(|v| {
            let source = v.tags.get(SOURCE_VERSION_TAG)?.as_str()?.parse().ok()?;
            Some((source, (v.version, v.tags)))
        })
        .collect())
}

async fn import_model(
    registry: &Registry,
    config: &Config,
    model: &MlflowModel,
    who: &str,
    report: &mut ImportReport,
) -> Result<()> {
    let name = &model.name;
    let mut done = already_imported(registry, name).await?;
    for v in &model.versions {
        let tags = tags_for(model, v);
        let outcome = match done.get(&v.version) {
            Some((gb, have)) => {
                let updated = update_tags(registry, name, *gb, have, &tags).await?;
                report.versions.push(ImportedVersion {
                    model: name.clone(),
                    mlflow_version: v.version,
                    version: *gb,
                    outcome: if updated {
                        Outcome::TagsUpdated
                    } else {
                        Outcome::AlreadyImported
                    },
                });
                continue;
            }
            None => register(registry, config, model, v, tags, who).await?,
        };
        match outcome {
            Ok(gb) => {
                done.insert(v.version, (gb, Value::Null));
                report.versions.push(ImportedVersion {
                    model: name.clone(),
                    mlflow_version: v.version,
                    version: gb,
                    outcome: Outcome::Imported,
                });
            }
            Err(why) => report.skipped.push(Skipped {
                what: format!("{name} version {}", v.version),
                why,
            }),
        }
    }
    for (alias, mlflow_version) in &model.aliases {
        let what = format!("{name}@{alias}");
        let Some((gb, _)) = done.get(mlflow_version) else {
            report.skipped.push(Skipped {
                what,
                why: format!("points to MLflow version {mlflow_version}, which was not imported"),
            });
            continue;
        };
        if let Err(e) = check_name("alias", alias) {
            report.skipped.push(Skipped {
                what,
                why: e.to_string(),
            });
            continue;
        }
        let event = registry
            .set_alias(name, alias, *gb, who, ALIAS_REASON)
            .await?;
        report.aliases.push(ImportedAlias {
            model: name.clone(),
            alias: alias.clone(),
            mlflow_version: *mlflow_version,
            version: *gb,
            moved: event.is_some(),
        });
    }
    Ok(())
}

/// Register one version; `Err(why)` when it cannot be (no ONNX model, or
/// one that does not load). Registry failures are errors of the import.
async fn register(
    registry: &Registry,
    config: &Config,
    model: &MlflowModel,
    v: &MlflowVersion,
    tags: BTreeMap<String, String>,
    who: &str,
) -> Result<std::result::Result<i64, String>> {
    let onnx = match &v.onnx {
        Ok(p) => p,
        Err(why) => return Ok(Err(why.clone())),
    };
    let mut mlflow = json!({ "model": model.name, "version": v.version, "source": v.source });
    if let Some(run) = &v.run_id {
        mlflow["run_id"] = json!(run);
    }
    if let Some(ms) = v.created_ms {
        mlflow["created"] = json!(format_us(ms.saturating_mul(1000)));
    }
    let facts = VersionFacts {
        profile: None,
        metrics: json!(v.metrics),
        params: json!(v.params),
        tags: json!(tags),
        lineage: json!({ "mlflow": mlflow }),
    };
    match register_file_facts(
        registry,
        config,
        model.name.clone(),
        onnx,
        facts,
        who.into(),
    )
    .await
    {
        Ok(version) => Ok(Ok(version.version)),
        Err(AppError::Invalid(why)) => Ok(Err(why)),
        Err(e) => Err(e),
    }
}

/// Set the tags of `version` that differ from `want`; true when any did.
async fn update_tags(
    registry: &Registry,
    model: &str,
    version: i64,
    have: &Value,
    want: &BTreeMap<String, String>,
) -> Result<bool> {
    let mut changed = false;
    for (k, v) in want {
        if have.get(k).and_then(Value::as_str) != Some(v.as_str()) {
            registry.set_tag(model, version, k, Some(v)).await?;
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mlflow/mlruns")
    }

    async fn setup() -> (tempfile::TempDir, Registry, Config) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        let registry = Registry::open(&url).await.unwrap();
        let mut config = Config::default();
        config.registry.artifacts = dir.path().join("artifacts").display().to_string();
        (dir, registry, config)
    }

    #[tokio::test]
    async fn versions_aliases_and_tags_come_over_once() {
        let (_dir, registry, config) = setup().await;
        let r = import_mlflow(&registry, &config, &fixture(), "tester")
            .await
            .unwrap();
        assert_eq!(r.imported(), 2, "{r:?}");
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        assert_eq!(r.skipped[0].what, "fraud version 3");
        let versions = registry.versions("fraud").await.unwrap();
        assert_eq!(versions.len(), 2);
        let v2 = &versions[1];
        assert_eq!(v2.tags[SOURCE_VERSION_TAG], "2");
        assert_eq!(v2.tags["team"], "risk");
        assert_eq!(v2.tags["dataset"], "tx-2026-11");
        assert_eq!(v2.tags["mlflow.description"], "Retrained with C=0.5");
        assert_eq!(v2.tags["mlflow.model_description"], "Card fraud classifier");
        assert_eq!(v2.metrics["auc"], 0.95);
        assert_eq!(v2.params["C"], "0.5");
        assert_eq!(v2.lineage["mlflow"]["version"], 2);
        assert_eq!(v2.created_by, "tester");
        assert_eq!(registry.alias("fraud", "champion").await.unwrap(), Some(2));
        assert_eq!(
            registry.alias("fraud", "challenger").await.unwrap(),
            Some(1)
        );

        let again = import_mlflow(&registry, &config, &fixture(), "tester")
            .await
            .unwrap();
        assert_eq!(again.imported(), 0, "{again:?}");
        assert!(
            again
                .versions
                .iter()
                .all(|v| v.outcome == Outcome::AlreadyImported)
        );
        assert!(again.aliases.iter().all(|a| !a.moved));
        assert_eq!(registry.versions("fraud").await.unwrap().len(), 2);
        assert_eq!(registry.history("fraud", None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn versions_keep_their_order_after_existing_ones() {
        let (_dir, registry, config) = setup().await;
        // A version registered by hand first: MLflow's 1 and 2 become 2 and 3.
        let file =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
        register_file_facts(
            &registry,
            &config,
            "fraud".into(),
            &file,
            VersionFacts::default(),
            "me".into(),
        )
        .await
        .unwrap();
        let r = import_mlflow(&registry, &config, &fixture(), "tester")
            .await
            .unwrap();
        let pairs: Vec<(i64, i64)> = r
            .versions
            .iter()
            .map(|v| (v.mlflow_version, v.version))
            .collect();
        assert_eq!(pairs, [(1, 2), (2, 3)]);
        assert_eq!(registry.alias("fraud", "champion").await.unwrap(), Some(3));
        // A tag removed in Greenbelt comes back on the next import.
        registry.set_tag("fraud", 3, "dataset", None).await.unwrap();
        let again = import_mlflow(&registry, &config, &fixture(), "tester")
            .await
            .unwrap();
        assert_eq!(again.versions[1].outcome, Outcome::TagsUpdated);
        assert_eq!(
            registry.version("fraud", 3).await.unwrap().tags["dataset"],
            "tx-2026-11"
        );
    }

    #[tokio::test]
    async fn a_missing_store_is_a_clear_error() {
        let (dir, registry, config) = setup().await;
        let e = import_mlflow(&registry, &config, &dir.path().join("mlruns"), "t")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("mlruns does not exist"), "{e}");
    }
}
