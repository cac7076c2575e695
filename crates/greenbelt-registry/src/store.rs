//! Registry storage over sqlx's `Any` driver: one code path for SQLite and
//! PostgreSQL. Writes that must serialize per model (version numbering, alias
//! moves) take a per-model lock: `BEGIN IMMEDIATE` on SQLite, a transaction
//! advisory lock on PostgreSQL. Every alias move and its audit event commit
//! in one transaction, so a crash leaves either both or neither.

use greenbelt_core::spans::{attr, int, traced};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, AssertSqlSafe, Executor, Row, Transaction};

use crate::schema::{Dialect, migrations};
use crate::{RegistryError, check_name, now_us};

/// A registered model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub model: String,
    pub version: i64,
    pub artifact_uri: String,
    pub sha256: String,
    pub format: String,
    /// Inputs and outputs (V2 names, datatypes, shapes).
    pub signature: Value,
    pub params: Value,
    /// Evaluation metrics computed by Greenbelt.
    pub metrics: Value,
    pub gate_report: Value,
    /// Dataset identity and hash, feature views, parent version, code reference.
    pub lineage: Value,
    pub tags: Value,
    pub created_us: i64,
    pub created_by: String,
}

/// What a caller gives to register a version; the registry numbers it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    pub model: String,
    pub artifact_uri: String,
    pub sha256: String,
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default)]
    pub signature: Value,
    #[serde(default)]
    pub params: Value,
    #[serde(default)]
    pub metrics: Value,
    #[serde(default)]
    pub gate_report: Value,
    #[serde(default)]
    pub lineage: Value,
    #[serde(default)]
    pub tags: Value,
    #[serde(default)]
    pub created_by: String,
}

fn default_format() -> String {
    "onnx".into()
}

/// One alias move in the audit history. `from` None: the alias was created;
/// `to` None: it was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasEvent {
    pub id: i64,
    pub model: String,
    pub alias: String,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    pub at_us: i64,
    pub at: String,
    pub actor: String,
    pub reason: String,
}

#[derive(Clone)]
pub struct Registry {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
    /// The PostgreSQL URL, for [`Registry::alias_listener`]; None on SQLite.
    listen_url: Option<String>,
}

/// A stable 63-bit lock key for a model name (FNV-1a).
fn lock_key(model: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in model.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 1) as i64
}

fn json_text(v: &Value) -> String {
    if v.is_null() {
        "{}".into()
    } else {
        v.to_string()
    }
}

fn json_col(row: &AnyRow, col: &str) -> Result<Value, RegistryError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text)
        .map_err(|e| RegistryError::Db(format!("column {col} is not JSON: {e}")))
}

fn version_from_row(row: &AnyRow) -> Result<ModelVersion, RegistryError> {
    Ok(ModelVersion {
        model: row.try_get("model")?,
        version: row.try_get("version")?,
        artifact_uri: row.try_get("artifact_uri")?,
        sha256: row.try_get("sha256")?,
        format: row.try_get("format")?,
        signature: json_col(row, "signature")?,
        params: json_col(row, "params")?,
        metrics: json_col(row, "metrics")?,
        gate_report: json_col(row, "gate_report")?,
        lineage: json_col(row, "lineage")?,
        tags: json_col(row, "tags")?,
        created_us: row.try_get("created_us")?,
        created_by: row.try_get("created_by")?,
    })
}

fn event_from_row(row: &AnyRow) -> Result<AliasEvent, RegistryError> {
    let at_us: i64 = row.try_get("at_us")?;
    Ok(AliasEvent {
        id: row.try_get("id")?,
        model: row.try_get("model")?,
        alias: row.try_get("alias")?,
        from_version: row.try_get("from_version")?,
        to_version: row.try_get("to_version")?,
        at_us,
        at: crate::format_us(at_us),
        actor: row.try_get("actor")?,
        reason: row.try_get("reason")?,
    })
}

const EVENT_COLUMNS: &str = "id, model, alias, from_version, to_version, at_us, actor, reason";

const VERSION_COLUMNS: &str = "model, version, artifact_uri, sha256, format, signature, params, metrics, gate_report, lineage, tags, created_us, created_by";

impl Registry {
    /// Open (and migrate) the registry at `url`: `sqlite://path` (created if
    /// missing) or `postgres://...`.
    pub async fn open(url: &str) -> Result<Registry, RegistryError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let url = if rest.contains('?') || rest.contains(":memory:") {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            (Dialect::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_string())
        } else {
            return Err(RegistryError::Invalid(format!(
                "registry url \"{}\" must start with sqlite:// or postgres://",
                greenbelt_auth::redact_url(url)
            )));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::Sqlite => 4,
                Dialect::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                RegistryError::Db(format!(
                    "cannot open registry {}: {e}",
                    greenbelt_auth::redact_url(&url)
                ))
            })?;
        let listen_url = (dialect == Dialect::Postgres).then(|| url.clone());
        let registry = Registry {
            pool,
            dialect,
            listen_url,
        };
        if registry.in_recovery().await? {
            // A hot standby (streaming replica) refuses every write, the
            // migrations' bookkeeping included: serve reads from it if the
            // primary has migrated it; writes answer `ReadOnly` until it is
            // promoted, and then work on the same connections.
            registry.check_migrated().await?;
            tracing::warn!(registry = %greenbelt_auth::redact_url(&url), "the registry database is a read-only hot standby: reads are served, writes are refused until it is promoted");
        } else {
            registry.migrate().await?;
        }
        Ok(registry)
    }

    /// Whether the database is a PostgreSQL hot standby (in recovery).
    pub async fn in_recovery(&self) -> Result<bool, RegistryError> {
        if self.dialect != Dialect::Postgres {
            return Ok(false);
        }
        let row = sqlx::query("SELECT CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END AS r")
            .fetch_one(&self.pool)
            .await?;
        let r: i32 = row.try_get("r")?;
        Ok(r == 1)
    }

    /// A standby cannot migrate itself: every migration this build knows
    /// must already be recorded (applied on the primary, replicated).
    async fn check_migrated(&self) -> Result<(), RegistryError> {
        let want: Vec<i64> = migrations(self.dialect).iter().map(|(v, _)| *v).collect();
        let rows = sqlx::query("SELECT version FROM gb_schema_migrations")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                RegistryError::Db(format!(
                    "the registry database is a read-only standby without the registry schema ({e}); start a server against the primary first so it migrates"
                ))
            })?;
        let have = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("version"))
            .collect::<Result<Vec<_>, _>>()?;
        match want.iter().find(|v| !have.contains(v)) {
            None => Ok(()),
            Some(v) => Err(RegistryError::Db(format!(
                "the registry database is a read-only standby whose schema lacks migration {v}; upgrade the primary first (a server against it migrates), then this standby replicates it"
            ))),
        }
    }

    /// A subscription to alias moves (PostgreSQL LISTEN/NOTIFY), or None on
    /// SQLite, where watchers poll.
    pub async fn alias_listener(
        &self,
    ) -> Result<Option<crate::notify::AliasListener>, RegistryError> {
        match &self.listen_url {
            Some(url) => Ok(Some(crate::notify::AliasListener::connect(url).await?)),
            None => Ok(None),
        }
    }

    /// A transaction holding the per-`key` write lock.
    async fn begin_locked(&self, key: &str) -> Result<Transaction<'static, Any>, RegistryError> {
        match self.dialect {
            Dialect::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Dialect::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(lock_key(key))
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    async fn migrate(&self) -> Result<(), RegistryError> {
        self.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS gb_schema_migrations (version BIGINT PRIMARY KEY, applied_us BIGINT NOT NULL)",
            )
            .await?;
        for (version, statements) in migrations(self.dialect) {
            let mut tx = self.begin_locked("gb_schema_migrations").await?;
            let done: Option<i64> =
                sqlx::query("SELECT version FROM gb_schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get("version"))
                    .transpose()?;
            if done.is_some() {
                tx.rollback().await?;
                continue;
            }
            for sql in statements {
                sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO gb_schema_migrations (version, applied_us) VALUES ($1, $2)")
                .bind(version)
                .bind(now_us())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "registry migration applied");
        }
        Ok(())
    }

    /// Register a new version of `new.model` (created if new), numbered one
    /// past the highest existing version.
    pub async fn register(&self, new: NewVersion) -> Result<ModelVersion, RegistryError> {
        let attrs = vec![
            attr("greenbelt.model", new.model.clone()),
            attr("greenbelt.format", new.format.clone()),
        ];
        traced("registry.register", attrs, self.register_untraced(new)).await
    }

    async fn register_untraced(&self, new: NewVersion) -> Result<ModelVersion, RegistryError> {
        check_name("model", &new.model)?;
        if new.sha256.len() != 64 || !new.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Invalid(format!(
                "sha256 \"{}\" is not 64 hex digits",
                new.sha256
            )));
        }
        if new.artifact_uri.is_empty() {
            return Err(RegistryError::Invalid("artifact_uri is empty".into()));
        }
        let mut tx = self.begin_locked(&new.model).await?;
        let now = now_us();
        sqlx::query("INSERT INTO gb_models (name, created_us) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(&new.model)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) + 1 AS next FROM gb_versions WHERE model = $1",
        )
        .bind(&new.model)
        .fetch_one(&mut *tx)
        .await?
        .try_get("next")?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO gb_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        )))
        .bind(&new.model)
        .bind(next)
        .bind(&new.artifact_uri)
        .bind(&new.sha256)
        .bind(&new.format)
        .bind(json_text(&new.signature))
        .bind(json_text(&new.params))
        .bind(json_text(&new.metrics))
        .bind(json_text(&new.gate_report))
        .bind(json_text(&new.lineage))
        .bind(json_text(&new.tags))
        .bind(now)
        .bind(&new.created_by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.version(&new.model, next).await
    }

    pub async fn models(&self) -> Result<Vec<String>, RegistryError> {
        let rows = sqlx::query("SELECT name FROM gb_models ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("name").map_err(RegistryError::from))
            .collect()
    }

    pub async fn version(&self, model: &str, version: i64) -> Result<ModelVersion, RegistryError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM gb_versions WHERE model = $1 AND version = $2"
        )))
        .bind(model)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            RegistryError::NotFound(format!("model \"{model}\" has no version {version}"))
        })?;
        version_from_row(&row)
    }

    pub async fn versions(&self, model: &str) -> Result<Vec<ModelVersion>, RegistryError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM gb_versions WHERE model = $1 ORDER BY version"
        )))
        .bind(model)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() && !self.models().await?.iter().any(|m| m == model) {
            return Err(RegistryError::NotFound(format!(
                "unknown model \"{model}\""
            )));
        }
        rows.iter().map(version_from_row).collect()
    }

    /// The version `alias` points to, if it exists.
    pub async fn alias(&self, model: &str, alias: &str) -> Result<Option<i64>, RegistryError> {
        Ok(
            sqlx::query("SELECT version FROM gb_aliases WHERE model = $1 AND alias = $2")
                .bind(model)
                .bind(alias)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get("version"))
                .transpose()?,
        )
    }

    /// Every alias of `model` and its version.
    pub async fn aliases(&self, model: &str) -> Result<Vec<(String, i64)>, RegistryError> {
        let rows =
            sqlx::query("SELECT alias, version FROM gb_aliases WHERE model = $1 ORDER BY alias")
                .bind(model)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("alias")?, r.try_get("version")?)))
            .collect()
    }

    /// Point `alias` at `version`, recording who and why. Moving an alias to
    /// the version it already has records nothing and returns None.
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: i64,
        actor: &str,
        reason: &str,
    ) -> Result<Option<AliasEvent>, RegistryError> {
        let attrs = vec![
            attr("greenbelt.model", model),
            attr("greenbelt.alias", alias),
            int("greenbelt.model_version", version),
            attr("greenbelt.actor", actor),
        ];
        traced(
            "registry.set_alias",
            attrs,
            self.set_alias_untraced(model, alias, version, actor, reason),
        )
        .await
    }

    async fn set_alias_untraced(
        &self,
        model: &str,
        alias: &str,
        version: i64,
        actor: &str,
        reason: &str,
    ) -> Result<Option<AliasEvent>, RegistryError> {
        check_name("alias", alias)?;
        let mut tx = self.begin_locked(model).await?;
        let exists =
            sqlx::query("SELECT version FROM gb_versions WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if !exists {
            return Err(RegistryError::NotFound(format!(
                "model \"{model}\" has no version {version}"
            )));
        }
        let event = move_alias(&mut tx, model, alias, Some(version), actor, reason).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Remove `alias`, recording who and why.
    pub async fn delete_alias(
        &self,
        model: &str,
        alias: &str,
        actor: &str,
        reason: &str,
    ) -> Result<AliasEvent, RegistryError> {
        let attrs = vec![
            attr("greenbelt.model", model),
            attr("greenbelt.alias", alias),
            attr("greenbelt.actor", actor),
        ];
        traced(
            "registry.delete_alias",
            attrs,
            self.delete_alias_untraced(model, alias, actor, reason),
        )
        .await
    }

    async fn delete_alias_untraced(
        &self,
        model: &str,
        alias: &str,
        actor: &str,
        reason: &str,
    ) -> Result<AliasEvent, RegistryError> {
        let mut tx = self.begin_locked(model).await?;
        let event = move_alias(&mut tx, model, alias, None, actor, reason)
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("model \"{model}\" has no alias \"{alias}\""))
            })?;
        tx.commit().await?;
        Ok(event)
    }

    /// Move `alias` back to the version it pointed to before its last move.
    pub async fn rollback(
        &self,
        model: &str,
        alias: &str,
        actor: &str,
        reason: &str,
    ) -> Result<AliasEvent, RegistryError> {
        let mut tx = self.begin_locked(model).await?;
        let current: Option<i64> =
            sqlx::query("SELECT version FROM gb_aliases WHERE model = $1 AND alias = $2")
                .bind(model)
                .bind(alias)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("version"))
                .transpose()?;
        let Some(current) = current else {
            return Err(RegistryError::NotFound(format!(
                "model \"{model}\" has no alias \"{alias}\""
            )));
        };
        let last = sqlx::query(
            "SELECT from_version FROM gb_alias_events WHERE model = $1 AND alias = $2 AND to_version = $3 ORDER BY id DESC LIMIT 1",
        )
        .bind(model)
        .bind(alias)
        .bind(current)
        .fetch_optional(&mut *tx)
        .await?;
        let previous: Option<i64> = match last {
            Some(r) => r.try_get("from_version")?,
            None => None,
        };
        let Some(previous) = previous else {
            return Err(RegistryError::Conflict(format!(
                "\"{model}@{alias}\" has no earlier version to roll back to (it was created at version {current})"
            )));
        };
        let event = move_alias(&mut tx, model, alias, Some(previous), actor, reason)
            .await?
            .ok_or_else(|| {
                RegistryError::Conflict("alias already at the previous version".into())
            })?;
        tx.commit().await?;
        Ok(event)
    }

    /// The audit history of `model` (one alias, or all), oldest first.
    pub async fn history(
        &self,
        model: &str,
        alias: Option<&str>,
    ) -> Result<Vec<AliasEvent>, RegistryError> {
        let filter = if alias.is_some() {
            " AND alias = $2"
        } else {
            ""
        };
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM gb_alias_events WHERE model = $1{filter} ORDER BY id"
        )))
        .bind(model);
        if let Some(a) = alias {
            query = query.bind(a);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Which version `alias` pointed to at `at_us` (None: it did not exist then).
    pub async fn alias_at(
        &self,
        model: &str,
        alias: &str,
        at_us: i64,
    ) -> Result<Option<i64>, RegistryError> {
        let row = sqlx::query(
            "SELECT to_version FROM gb_alias_events WHERE model = $1 AND alias = $2 AND at_us <= $3 ORDER BY at_us DESC, id DESC LIMIT 1",
        )
        .bind(model)
        .bind(alias)
        .bind(at_us)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get("to_version")?,
            None => None,
        })
    }

    /// Set (`value` Some) or delete (None) one tag of a version, as
    /// MLflow's `set_model_version_tag` / `delete_model_version_tag`;
    /// returns the version's tags after. Deleting a tag it does not have
    /// is an error naming the tags it has.
    pub async fn set_tag(
        &self,
        model: &str,
        version: i64,
        key: &str,
        value: Option<&str>,
    ) -> Result<Value, RegistryError> {
        if key.is_empty() || key.len() > 250 {
            return Err(RegistryError::Invalid(
                "a tag key is 1 to 250 characters".into(),
            ));
        }
        let mut tx = self
            .begin_locked(&format!("tags:{model}:{version}"))
            .await?;
        let row = sqlx::query("SELECT tags FROM gb_versions WHERE model = $1 AND version = $2")
            .bind(model)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("model \"{model}\" has no version {version}"))
            })?;
        let mut tags = match json_col(&row, "tags")? {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        match value {
            Some(v) => {
                tags.insert(key.to_string(), Value::String(v.to_string()));
            }
            None => {
                if tags.remove(key).is_none() {
                    let have: Vec<&String> = tags.keys().collect();
                    return Err(RegistryError::NotFound(format!(
                        "{model}:{version} has no tag \"{key}\" (its tags: {have:?})"
                    )));
                }
            }
        }
        let tags = Value::Object(tags);
        sqlx::query("UPDATE gb_versions SET tags = $1 WHERE model = $2 AND version = $3")
            .bind(json_text(&tags))
            .bind(model)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(tags)
    }

    /// Store the gate report on a version after the fact.
    pub async fn set_gate_report(
        &self,
        model: &str,
        version: i64,
        report: &Value,
    ) -> Result<(), RegistryError> {
        let done = sqlx::query(
            "UPDATE gb_versions SET gate_report = $1 WHERE model = $2 AND version = $3",
        )
        .bind(json_text(report))
        .bind(model)
        .bind(version)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::NotFound(format!(
                "model \"{model}\" has no version {version}"
            )));
        }
        Ok(())
    }
}

/// Move (or delete, when `to` is None) an alias inside `tx` and append the
/// event. None when nothing changed.
async fn move_alias(
    tx: &mut Transaction<'static, Any>,
    model: &str,
    alias: &str,
    to: Option<i64>,
    actor: &str,
    reason: &str,
) -> Result<Option<AliasEvent>, RegistryError> {
    let from: Option<i64> =
        sqlx::query("SELECT version FROM gb_aliases WHERE model = $1 AND alias = $2")
            .bind(model)
            .bind(alias)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get("version"))
            .transpose()?;
    if from == to {
        return Ok(None);
    }
    let now = now_us();
    match to {
        Some(v) => {
            sqlx::query(
                "INSERT INTO gb_aliases (model, alias, version, updated_us) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version, updated_us = excluded.updated_us",
            )
            .bind(model)
            .bind(alias)
            .bind(v)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM gb_aliases WHERE model = $1 AND alias = $2")
                .bind(model)
                .bind(alias)
                .execute(&mut **tx)
                .await?;
        }
    }
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO gb_alias_events (model, alias, from_version, to_version, at_us, actor, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {EVENT_COLUMNS}"
    )))
    .bind(model)
    .bind(alias)
    .bind(from)
    .bind(to)
    .bind(now)
    .bind(actor)
    .bind(reason)
    .fetch_one(&mut **tx)
    .await?;
    // Announced at commit (NOTIFY is transactional); see crate::notify.
    if tx.backend_name() == "PostgreSQL" {
        let change = crate::notify::AliasChange {
            model: model.to_string(),
            alias: alias.to_string(),
            version: to,
        };
        // Wrapped so the result is a count, not pg_notify's `void`, which
        // the Any driver cannot decode.
        sqlx::query("SELECT count(*) AS n FROM (SELECT pg_notify($1, $2)) AS notified")
            .bind(crate::notify::ALIAS_CHANNEL)
            .bind(serde_json::to_string(&change).unwrap_or_default())
            .execute(&mut **tx)
            .await?;
    }
    Ok(Some(event_from_row(&row)?))
}

/// Side-by-side metrics of two versions, with b - a for numeric ones.
pub fn compare(a: &ModelVersion, b: &ModelVersion) -> Value {
    let mut rows = serde_json::Map::new();
    let empty = serde_json::Map::new();
    let am = a.metrics.as_object().unwrap_or(&empty);
    let bm = b.metrics.as_object().unwrap_or(&empty);
    let mut names: Vec<&String> = am.keys().chain(bm.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let (x, y) = (am.get(name), bm.get(name));
        let delta = match (x.and_then(Value::as_f64), y.and_then(Value::as_f64)) {
            (Some(x), Some(y)) => serde_json::json!(y - x),
            _ => Value::Null,
        };
        rows.insert(
            name.clone(),
            serde_json::json!({ "a": x, "b": y, "delta": delta }),
        );
    }
    serde_json::json!({
        "model": a.model,
        "a": a.version,
        "b": b.version,
        "metrics": rows,
    })
}
