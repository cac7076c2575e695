//! Feature-store definitions recorded by `greenbelt features apply`: every
//! entity, source, feature view and feature service as JSON, versioned per
//! (kind, name). A changed definition is a new version, never an update of
//! the old row; a definition dropped from the file gets a version whose spec
//! is JSON `null`. The diff itself is computed by greenbelt-features.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::schema::Dialect;
use crate::store::Registry;
use crate::{RegistryError, now_us};

/// One recorded version of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDefinition {
    pub kind: String,
    pub name: String,
    pub version: i64,
    /// The definition; `null` when it was removed.
    pub spec: Value,
    pub applied_us: i64,
    pub applied_by: String,
}

fn from_row(row: &AnyRow) -> Result<FeatureDefinition, RegistryError> {
    let spec: String = row.try_get("spec")?;
    Ok(FeatureDefinition {
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| RegistryError::Db(format!("feature definition spec is not JSON: {e}")))?,
        applied_us: row.try_get("applied_us")?,
        applied_by: row.try_get("applied_by")?,
    })
}

const LATEST: &str = "SELECT kind, name, version, spec, applied_us, applied_by FROM gb_feature_definitions d \
     WHERE version = (SELECT MAX(version) FROM gb_feature_definitions x WHERE x.kind = d.kind AND x.name = d.name) \
     ORDER BY kind, name";

impl Registry {
    /// The latest version of every definition ever applied (removed ones
    /// have a `null` spec).
    pub async fn feature_definitions(&self) -> Result<Vec<FeatureDefinition>, RegistryError> {
        let rows = sqlx::query(LATEST).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// Every version of one definition, oldest first.
    pub async fn feature_definition_history(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Vec<FeatureDefinition>, RegistryError> {
        let rows = sqlx::query(
            "SELECT kind, name, version, spec, applied_us, applied_by FROM gb_feature_definitions \
             WHERE kind = $1 AND name = $2 ORDER BY version",
        )
        .bind(kind)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Record `wanted` (kind, name, spec) as the current definitions: a new
    /// version for each one that differs from its latest, a `null` version
    /// for each one no longer wanted. Returns the versions recorded.
    pub async fn apply_feature_definitions(
        &self,
        wanted: &[(String, String, Value)],
        actor: &str,
    ) -> Result<Vec<FeatureDefinition>, RegistryError> {
        let mut tx = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => {
                let mut tx = self.pool.begin().await?;
                // One applier at a time (an arbitrary fixed lock key).
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(0x0067_625f_6665_6174_i64)
                    .execute(&mut *tx)
                    .await?;
                tx
            }
        };
        let latest: Vec<FeatureDefinition> = sqlx::query(LATEST)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(from_row)
            .collect::<Result<_, _>>()?;
        let now = now_us();
        let mut changes: Vec<(String, String, Value, i64)> = Vec::new();
        for (kind, name, spec) in wanted {
            let cur = latest.iter().find(|d| d.kind == *kind && d.name == *name);
            match cur {
                Some(d) if d.spec == *spec => {}
                Some(d) => changes.push((kind.clone(), name.clone(), spec.clone(), d.version + 1)),
                None => changes.push((kind.clone(), name.clone(), spec.clone(), 1)),
            }
        }
        for d in &latest {
            let still = wanted.iter().any(|(k, n, _)| *k == d.kind && *n == d.name);
            if !still && !d.spec.is_null() {
                changes.push((d.kind.clone(), d.name.clone(), Value::Null, d.version + 1));
            }
        }
        let mut out = Vec::new();
        for (kind, name, spec, version) in changes {
            sqlx::query(
                "INSERT INTO gb_feature_definitions (kind, name, version, spec, applied_us, applied_by) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&kind)
            .bind(&name)
            .bind(version)
            .bind(spec.to_string())
            .bind(now)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            out.push(FeatureDefinition {
                kind,
                name,
                version,
                spec,
                applied_us: now,
                applied_by: actor.to_string(),
            });
        }
        tx.commit().await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Registry;

    fn d(kind: &str, name: &str, spec: serde_json::Value) -> (String, String, serde_json::Value) {
        (kind.to_string(), name.to_string(), spec)
    }

    #[tokio::test]
    async fn changes_are_new_versions_and_removals_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let reg = Registry::open(&url).await.unwrap();
        let v1 = vec![
            d("entity", "user", json!({"name": "user"})),
            d(
                "feature_view",
                "stats",
                json!({"name": "stats", "ttl": "1d"}),
            ),
        ];
        let rec = reg.apply_feature_definitions(&v1, "alice").await.unwrap();
        assert_eq!(rec.len(), 2);
        // Re-applying the same definitions records nothing.
        assert!(
            reg.apply_feature_definitions(&v1, "alice")
                .await
                .unwrap()
                .is_empty()
        );
        // A change is a new version; the old one stays.
        let v2 = vec![d(
            "feature_view",
            "stats",
            json!({"name": "stats", "ttl": "2d"}),
        )];
        let rec = reg.apply_feature_definitions(&v2, "bob").await.unwrap();
        assert_eq!(rec.len(), 2, "{rec:?}");
        let latest = reg.feature_definitions().await.unwrap();
        let stats = latest.iter().find(|x| x.name == "stats").unwrap();
        assert_eq!((stats.version, stats.spec["ttl"].clone()), (2, json!("2d")));
        let user = latest.iter().find(|x| x.name == "user").unwrap();
        assert!(user.spec.is_null(), "removed entity gets a null version");
        let hist = reg
            .feature_definition_history("feature_view", "stats")
            .await
            .unwrap();
        assert_eq!(hist.len(), 2);
        assert_eq!(hist[0].spec["ttl"], json!("1d"));
        assert_eq!(hist[1].applied_by, "bob");
    }
}
