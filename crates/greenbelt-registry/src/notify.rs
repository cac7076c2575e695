//! Alias-change notifications on PostgreSQL. Every alias move sends
//! `pg_notify('greenbelt_alias', <json>)` inside its own transaction, so the
//! notification is delivered at commit and never for a move that rolled back.
//! [`AliasListener`] receives them; servers use it to switch without waiting
//! for their next poll. SQLite has no such channel: callers poll.
//!
//! Notifications are a hint, not the source of truth: a listener that loses
//! its connection says so ([`Notice::Lost`]) because it may have missed some,
//! and the registry tables remain what a watcher reads.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// The PostgreSQL channel alias moves are announced on.
pub const ALIAS_CHANNEL: &str = "greenbelt_alias";

/// How long connecting and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One alias move, as announced. `version` None: the alias was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasChange {
    pub model: String,
    pub alias: String,
    pub version: Option<i64>,
}

/// What [`AliasListener::recv`] hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An alias moved (committed).
    Changed(AliasChange),
    /// The connection dropped (it reconnects on the next `recv`); moves may
    /// have been missed, so re-read whatever is watched.
    Lost,
}

/// A subscription to [`ALIAS_CHANNEL`].
pub struct AliasListener {
    inner: sqlx::postgres::PgListener,
}

impl AliasListener {
    pub(crate) async fn connect(url: &str) -> Result<AliasListener, RegistryError> {
        let subscribe = async {
            let mut inner = sqlx::postgres::PgListener::connect(url).await?;
            inner.listen(ALIAS_CHANNEL).await?;
            Ok::<_, sqlx::Error>(inner)
        };
        let inner = tokio::time::timeout(CONNECT_TIMEOUT, subscribe)
            .await
            .map_err(|_| {
                RegistryError::Db(format!(
                    "LISTEN {ALIAS_CHANNEL}: no answer from PostgreSQL within {CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| RegistryError::Db(format!("LISTEN {ALIAS_CHANNEL}: {e}")))?;
        Ok(AliasListener { inner })
    }

    /// The next notice. Waits as long as nothing happens: callers that must
    /// also do other work select on it with a timer.
    pub async fn recv(&mut self) -> Result<Notice, RegistryError> {
        match self.inner.try_recv().await {
            Ok(Some(n)) => match serde_json::from_str::<AliasChange>(n.payload()) {
                Ok(change) => Ok(Notice::Changed(change)),
                // Someone else's message on our channel: treat as "look again".
                Err(_) => Ok(Notice::Lost),
            },
            Ok(None) => Ok(Notice::Lost),
            Err(e) => Err(RegistryError::Db(format!("LISTEN {ALIAS_CHANNEL}: {e}"))),
        }
    }
}
