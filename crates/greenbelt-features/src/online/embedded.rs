//! The embedded online store: one redb file on local disk (persistent, no
//! server). Writes run in one write transaction per call on a blocking
//! thread; the newer-wins check happens inside the transaction.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{OnlineBackend, newer_or_equal};
use crate::error::{FeatureError, Result};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("gb_online");

fn err(e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Online(format!("embedded store: {e}"))
}

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Open (or create) the store file.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path)
            .map_err(|e| FeatureError::Online(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(TABLE).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }
}

impl EmbeddedStore {
    /// Keys and key + value bytes per view (one read transaction).
    pub async fn usage(&self) -> Result<super::Usage> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<super::Usage> {
            let tx = db.begin_read().map_err(err)?;
            let t = tx.open_table(TABLE).map_err(err)?;
            let mut usage = super::Usage::new();
            for entry in t.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                let key = k.value();
                super::count_key(&mut usage, key, (key.len() + v.value().len()) as u64);
            }
            Ok(usage)
        })
        .await
        .map_err(err)?
    }
}

impl OnlineBackend for EmbeddedStore {
    async fn write(&self, items: Vec<(String, Vec<u8>)>) -> Result<u64> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let tx = db.begin_write().map_err(err)?;
            let mut written = 0;
            {
                let mut t = tx.open_table(TABLE).map_err(err)?;
                for (k, v) in &items {
                    let keep_old = match t.get(k.as_str()).map_err(err)? {
                        Some(old) => !newer_or_equal(v, old.value()),
                        None => false,
                    };
                    if !keep_old {
                        t.insert(k.as_str(), v.as_slice()).map_err(err)?;
                        written += 1;
                    }
                }
            }
            tx.commit().map_err(err)?;
            Ok(written)
        })
        .await
        .map_err(err)?
    }

    async fn read(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<Option<Vec<u8>>>> {
            let tx = db.begin_read().map_err(err)?;
            let t = tx.open_table(TABLE).map_err(err)?;
            keys.iter()
                .map(|k| Ok(t.get(k.as_str()).map_err(err)?.map(|v| v.value().to_vec())))
                .collect()
        })
        .await
        .map_err(err)?
    }
}
