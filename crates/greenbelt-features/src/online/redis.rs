//! The Redis online store. Keys are `<prefix><view>\x1f<key values>`; a
//! value is the encoded record. Writes are pipelines of one small Lua script
//! (loaded once, called by `EVALSHA`) that keeps a newer stored value and
//! sets the key's expiry in the same step; reads are one `MGET`. Every call
//! has a timeout.
//!
//! The connection is a redis-rs `ConnectionManager`: a dropped connection is
//! re-established in the background (a failed attempt is retried on the
//! next call), so a Redis restart costs the calls made while it is down,
//! not the process. It is made on first use, not at start-up: a server
//! starts while Redis is down and serves what needs no features. The
//! circuit breaker and fallbacks around these calls live in `service`.
//!
//! Expiry: a record written with a deadline (its event time + its view's
//! TTL, see [`RedisStore::write_expiring`]) lives until that deadline plus
//! [`EXPIRY_MARGIN`], measured from the writer's clock; a record past that
//! already is not written. Records without a deadline (views without a TTL)
//! never expire. Reads enforce the TTL themselves; the expiry only keeps
//! Redis from holding values nobody can be served any more.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::OnlineBackend;
use crate::error::{FeatureError, Result};

/// Set the value unless the stored one is newer (40-character order
/// prefix); `ARGV[2]` is the time to live in ms, 0 for none. The check and
/// the write are one script, so they are atomic.
const NEWER_WINS: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 40) > string.sub(ARGV[1], 1, 40) then return 0 end
local px = tonumber(ARGV[2])
if px and px > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
";

/// How long a key outlives its view's TTL: a read between TTL and
/// TTL + margin still says `OUTSIDE_MAX_AGE` rather than `NOT_FOUND`, and
/// service clocks that disagree by less than this see the same values.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(3600);

const TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per pipeline when writing large batches.
const CHUNK: usize = 1000;
/// Pipelines in flight at once on the multiplexed connection.
const IN_FLIGHT: usize = 4;

fn err(e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Online(format!("redis: {e}"))
}

/// The timeout of one connection attempt (first connect and reconnects).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    /// Made on first use; reconnects by itself after that.
    conn: Arc<OnceCell<ConnectionManager>>,
    prefix: String,
    /// SHA1 of `NEWER_WINS` as Redis reported it on `SCRIPT LOAD` (first
    /// write).
    sha: Arc<OnceCell<String>>,
}

impl RedisStore {
    /// A store over `url` that connects on first use; fails only when the
    /// URL is not a Redis URL. Every key gets `prefix`.
    pub fn new(url: &str, prefix: &str) -> Result<RedisStore> {
        let client = redis::Client::open(url).map_err(err)?;
        Ok(RedisStore {
            client,
            conn: Arc::new(OnceCell::new()),
            prefix: prefix.to_string(),
            sha: Arc::new(OnceCell::new()),
        })
    }

    /// [`RedisStore::new`], then connect now (with a timeout) and load the
    /// write script: for tools that should fail at once when Redis is down.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore> {
        let store = RedisStore::new(url, prefix)?;
        let mut conn = store.connection().await?;
        store.script(&mut conn).await?;
        Ok(store)
    }

    /// The connection, made on the first call. Concurrent first calls wait
    /// for one attempt; a failed attempt leaves it unmade for the next call.
    async fn connection(&self) -> Result<ConnectionManager> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                // Each attempt (the first and every reconnect) is cut at
                // CONNECT_TIMEOUT and retried twice with a short backoff
                // (at most 500 ms); the whole first connect at 4 s. The
                // caller's own timeout (the breaker's) is usually shorter;
                // a cut first connect is tried again on the next call.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(TIMEOUT)
                    .set_number_of_retries(2)
                    .set_exponent_base(2)
                    .set_factor(100)
                    .set_max_delay(500);
                let first = ConnectionManager::new_with_config(self.client.clone(), config);
                tokio::time::timeout(CONNECT_TIMEOUT * 4, first)
                    .await
                    .map_err(|_| {
                        FeatureError::Online(format!(
                            "redis: no connection within {:?}",
                            CONNECT_TIMEOUT * 4
                        ))
                    })?
                    .map_err(err)
            })
            .await?;
        Ok(conn.clone())
    }

    /// The write script's SHA1, loading it on first use.
    async fn script(&self, conn: &mut ConnectionManager) -> Result<String> {
        let sha = self.sha.get_or_try_init(|| load_script(conn)).await?;
        Ok(sha.clone())
    }

    /// Write encoded records, keeping any stored one that is newer; an item
    /// with a deadline (µs UTC, on the same clock as `now_us`) expires at
    /// the deadline plus [`EXPIRY_MARGIN`], and one already past that is
    /// skipped. Returns how many were written.
    pub async fn write_expiring(
        &self,
        items: Vec<(String, Vec<u8>, Option<i64>)>,
        now_us: i64,
    ) -> Result<u64> {
        let margin_us = EXPIRY_MARGIN.as_micros() as i64;
        // Time to live in ms (0 = no expiry); None = expired already.
        let live: Vec<(&str, &[u8], u64)> = items
            .iter()
            .filter_map(|(k, v, deadline)| match deadline {
                None => Some((k.as_str(), v.as_slice(), 0)),
                Some(d) => {
                    let left_us = d.saturating_add(margin_us).saturating_sub(now_us);
                    // Round up so that a live record never gets 0 (= no expiry).
                    (left_us > 0)
                        .then(|| (k.as_str(), v.as_slice(), (left_us as u64).div_ceil(1000)))
                }
            })
            .collect();
        if live.is_empty() {
            return Ok(0);
        }
        let mut conn = self.connection().await?;
        let sha = self.script(&mut conn).await?;
        let pipes: Vec<redis::Pipeline> = live
            .chunks(CHUNK)
            .map(|chunk| {
                let mut pipe = redis::pipe();
                for (k, v, px) in chunk {
                    pipe.cmd("EVALSHA")
                        .arg(&sha)
                        .arg(1)
                        .arg(format!("{}{k}", self.prefix))
                        .arg(*v)
                        .arg(*px);
                }
                pipe
            })
            .collect();
        let results: Vec<Result<u64>> = futures::stream::iter(
            pipes
                .into_iter()
                .map(|pipe| run_pipeline(conn.clone(), pipe)),
        )
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
        results.into_iter().sum()
    }
}

/// Run one pipeline of `NEWER_WINS` calls; returns how many wrote.
async fn run_pipeline(mut conn: ConnectionManager, pipe: redis::Pipeline) -> Result<u64> {
    let mut reloaded = false;
    loop {
        let res = tokio::time::timeout(TIMEOUT, pipe.query_async::<Vec<i64>>(&mut conn))
            .await
            .map_err(|_| FeatureError::Online("redis: write timed out".into()))?;
        match res {
            Ok(r) => return Ok(r.iter().filter(|r| **r == 1).count() as u64),
            // The server lost its script cache (restart, SCRIPT FLUSH): load
            // the script again (same SHA1) and retry once.
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError && !reloaded => {
                load_script(&mut conn).await?;
                reloaded = true;
            }
            Err(e) => return Err(err(e)),
        }
    }
}

async fn load_script(conn: &mut ConnectionManager) -> Result<String> {
    let cmd = redis::cmd("SCRIPT").arg("LOAD").arg(NEWER_WINS).clone();
    tokio::time::timeout(TIMEOUT, cmd.query_async::<String>(conn))
        .await
        .map_err(|_| FeatureError::Online("redis: SCRIPT LOAD timed out".into()))?
        .map_err(err)
}

/// Keys a `SCAN` step asks for.
const SCAN_COUNT: usize = 1000;

impl RedisStore {
    /// Keys and bytes per view under this store's prefix (see
    /// [`super::OnlineStore::usage`]); every round trip has [`TIMEOUT`].
    pub async fn usage(&self) -> Result<super::Usage> {
        let mut conn = self.connection().await?;
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut usage = super::Usage::new();
        let mut cursor: u64 = 0;
        let mut memory_usage = true;
        loop {
            let step = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .clone();
            let (next, keys): (u64, Vec<String>) =
                tokio::time::timeout(TIMEOUT, step.query_async(&mut conn))
                    .await
                    .map_err(|_| FeatureError::Online("redis: SCAN timed out".into()))?
                    .map_err(err)?;
            if !keys.is_empty() {
                let measured = if memory_usage {
                    sizes(&mut conn, &keys, true).await
                } else {
                    sizes(&mut conn, &keys, false).await
                };
                let measured = match measured {
                    Ok(m) => m,
                    // MEMORY USAGE is refused on some managed Redis.
                    Err(_) if memory_usage => {
                        memory_usage = false;
                        sizes(&mut conn, &keys, false).await?
                    }
                    Err(e) => return Err(e),
                };
                for (k, n) in keys.iter().zip(measured) {
                    let key = k.strip_prefix(&self.prefix).unwrap_or(k);
                    super::count_key(&mut usage, key, n);
                }
            }
            if next == 0 {
                return Ok(usage);
            }
            cursor = next;
        }
    }
}

/// Bytes of each key: `MEMORY USAGE` (what Redis holds for it, overhead
/// included), or the value's `STRLEN` plus the key's length.
async fn sizes(conn: &mut ConnectionManager, keys: &[String], memory: bool) -> Result<Vec<u64>> {
    let mut pipe = redis::pipe();
    for k in keys {
        if memory {
            pipe.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
        } else {
            pipe.cmd("STRLEN").arg(k);
        }
    }
    let got: Vec<Option<u64>> = tokio::time::timeout(TIMEOUT, pipe.query_async(conn))
        .await
        .map_err(|_| FeatureError::Online("redis: size query timed out".into()))?
        .map_err(err)?;
    Ok(got
        .into_iter()
        .zip(keys)
        .map(|(n, k)| {
            let n = n.unwrap_or(0);
            if memory { n } else { n + k.len() as u64 }
        })
        .collect())
}

/// `s` as a literal in a Redis glob pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl OnlineBackend for RedisStore {
    /// Writes without expiry (see [`RedisStore::write_expiring`]).
    async fn write(&self, items: Vec<(String, Vec<u8>)>) -> Result<u64> {
        self.write_expiring(items.into_iter().map(|(k, v)| (k, v, None)).collect(), 0)
            .await
    }

    async fn read(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = keys.iter().map(|k| format!("{}{k}", self.prefix)).collect();
        let mut conn = self.connection().await?;
        let cmd = redis::cmd("MGET").arg(full).clone();
        tokio::time::timeout(TIMEOUT, cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn))
            .await
            .map_err(|_| FeatureError::Online("redis: read timed out".into()))?
            .map_err(err)
    }
}
