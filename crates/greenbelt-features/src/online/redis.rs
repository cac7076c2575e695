//! The Redis online store. Keys are `<prefix><view>\x1f<key values>`; a
//! value is the encoded record. Writes are one pipeline of a small Lua
//! script that keeps a newer stored value; reads are one `MGET`. Every call
//! has a timeout.

use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::OnlineBackend;
use crate::error::{FeatureError, Result};

/// Set the value unless the stored one is newer (40-character order prefix).
const NEWER_WINS: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 40) > string.sub(ARGV[1], 1, 40) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

const TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per pipeline when writing large batches.
const CHUNK: usize = 1000;

fn err(e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Online(format!("redis: {e}"))
}

#[derive(Clone)]
pub struct RedisStore {
    conn: MultiplexedConnection,
    prefix: String,
}

impl RedisStore {
    /// Connect (with a timeout); every key gets `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        let conn = tokio::time::timeout(
            TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| FeatureError::Online(format!("redis: no connection within {TIMEOUT:?}")))?
        .map_err(err)?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_string(),
        })
    }
}

impl OnlineBackend for RedisStore {
    async fn write(&self, items: Vec<(String, Vec<u8>)>) -> Result<u64> {
        let mut written = 0u64;
        for chunk in items.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for (k, v) in chunk {
                pipe.cmd("EVAL")
                    .arg(NEWER_WINS)
                    .arg(1)
                    .arg(format!("{}{k}", self.prefix))
                    .arg(v.as_slice());
            }
            let mut conn = self.conn.clone();
            let res: Vec<i64> = tokio::time::timeout(TIMEOUT, pipe.query_async(&mut conn))
                .await
                .map_err(|_| FeatureError::Online("redis: write timed out".into()))?
                .map_err(err)?;
            written += res.iter().filter(|r| **r == 1).count() as u64;
        }
        Ok(written)
    }

    async fn read(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = keys.iter().map(|k| format!("{}{k}", self.prefix)).collect();
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("MGET").arg(full).clone();
        tokio::time::timeout(TIMEOUT, cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn))
            .await
            .map_err(|_| FeatureError::Online("redis: read timed out".into()))?
            .map_err(err)
    }
}
