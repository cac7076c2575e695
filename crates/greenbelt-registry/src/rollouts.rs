//! Rollout state storage: one row per deployment holding the rollout
//! controller's state as opaque JSON, and an append-only event log. Writes
//! are compare-and-swap on a revision number, so replicas sharing one
//! database agree: a writer that read an older revision loses and re-reads.
//!
//! The registry does not interpret the state; `greenbelt-control` owns it.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::Registry;
use crate::{RegistryError, now_us};

/// The stored state of one deployment's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRollout {
    pub deployment: String,
    pub rev: i64,
    pub state: serde_json::Value,
    pub updated_us: i64,
}

/// One entry of a deployment's rollout log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub id: i64,
    pub deployment: String,
    pub rollout: String,
    pub at_us: i64,
    pub event: String,
    pub detail: serde_json::Value,
}

impl Registry {
    /// The current rollout state of `deployment`, if one was ever stored.
    pub async fn rollout(&self, deployment: &str) -> Result<Option<StoredRollout>, RegistryError> {
        let row = sqlx::query(
            "SELECT deployment, rev, state, updated_us FROM gb_rollouts WHERE deployment = $1",
        )
        .bind(deployment)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let text: String = r.try_get("state")?;
            Ok(StoredRollout {
                deployment: r.try_get("deployment")?,
                rev: r.try_get("rev")?,
                state: serde_json::from_str(&text).map_err(|e| {
                    RegistryError::Db(format!(
                        "rollout state of \"{deployment}\" is not JSON: {e}"
                    ))
                })?,
                updated_us: r.try_get("updated_us")?,
            })
        })
        .transpose()
    }

    /// Store `state` if the stored revision is still `expected` (None: no
    /// row yet). Returns the new revision, or a `Conflict` when another
    /// writer got there first. `events` are appended in the same transaction.
    pub async fn put_rollout(
        &self,
        deployment: &str,
        expected: Option<i64>,
        state: &serde_json::Value,
        rollout: &str,
        events: &[(String, serde_json::Value)],
    ) -> Result<i64, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let now = now_us();
        let text = state.to_string();
        let rev = match expected {
            None => {
                let inserted = sqlx::query(
                    "INSERT INTO gb_rollouts (deployment, rev, state, updated_us) VALUES ($1, 1, $2, $3) ON CONFLICT (deployment) DO NOTHING",
                )
                .bind(deployment)
                .bind(&text)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Err(RegistryError::Conflict(format!(
                        "rollout of \"{deployment}\" was created by another writer; re-read it"
                    )));
                }
                1
            }
            Some(rev) => {
                let updated = sqlx::query(
                    "UPDATE gb_rollouts SET rev = rev + 1, state = $1, updated_us = $2 WHERE deployment = $3 AND rev = $4",
                )
                .bind(&text)
                .bind(now)
                .bind(deployment)
                .bind(rev)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    return Err(RegistryError::Conflict(format!(
                        "rollout of \"{deployment}\" changed since revision {rev}; re-read it"
                    )));
                }
                rev + 1
            }
        };
        for (event, detail) in events {
            sqlx::query(
                "INSERT INTO gb_rollout_events (deployment, rollout, at_us, event, detail) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(deployment)
            .bind(rollout)
            .bind(now)
            .bind(event)
            .bind(detail.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rev)
    }

    /// The newest `limit` events of `deployment`'s rollouts, oldest first.
    pub async fn rollout_events(
        &self,
        deployment: &str,
        limit: i64,
    ) -> Result<Vec<RolloutEvent>, RegistryError> {
        let rows = sqlx::query(
            "SELECT id, deployment, rollout, at_us, event, detail FROM gb_rollout_events WHERE deployment = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(deployment)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(RolloutEvent {
                    id: r.try_get("id")?,
                    deployment: r.try_get("deployment")?,
                    rollout: r.try_get("rollout")?,
                    at_us: r.try_get("at_us")?,
                    event: r.try_get("event")?,
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                })
            })
            .collect::<Result<Vec<_>, RegistryError>>()?;
        out.reverse();
        Ok(out)
    }
}
