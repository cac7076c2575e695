//! The online store: the latest value of every feature of a view per entity
//! key, behind one trait with two backends (embedded redb, Redis). A stored
//! value carries its event and created timestamps; a write never replaces a
//! newer value (by event time, then created time) with an older one. Reads
//! fetch all keys of a request in one call (one transaction for redb, one
//! `MGET` for Redis). This module owns the storage format; TTL, caching and
//! the request shape live in `service`.

pub mod embedded;
pub mod redis;
pub mod resilience;
pub mod service;

use std::future::Future;

use serde_json::{Map, Value};

use crate::error::{FeatureError, Result};

/// Length of the ordering prefix of an encoded record.
pub const ORDER_LEN: usize = 40;

/// One stored value: a view's features for one entity key.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Event time, µs UTC.
    pub event_us: i64,
    /// Created time, µs UTC (`i64::MIN` when the source has none).
    pub created_us: i64,
    /// Feature name → value.
    pub values: Map<String, Value>,
}

fn order_part(v: i64) -> String {
    // Shift to unsigned so that text order is numeric order.
    format!("{:020}", (v as i128 - i64::MIN as i128) as u128)
}

impl Record {
    /// The ordering prefix: text order of it is (event, created) order.
    pub fn order(&self) -> String {
        format!(
            "{}{}",
            order_part(self.event_us),
            order_part(self.created_us)
        )
    }

    /// `order` followed by the values as JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.order().into_bytes();
        out.extend_from_slice(Value::Object(self.values.clone()).to_string().as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let bad = || FeatureError::Online("a stored value is not a Greenbelt record".into());
        if bytes.len() < ORDER_LEN {
            return Err(bad());
        }
        let head = std::str::from_utf8(&bytes[..ORDER_LEN]).map_err(|_| bad())?;
        let part = |s: &str| -> Result<i64> {
            let u: u128 = s.parse().map_err(|_| bad())?;
            i64::try_from(u as i128 + i64::MIN as i128).map_err(|_| bad())
        };
        let event_us = part(&head[..20])?;
        let created_us = part(&head[20..])?;
        let values: Map<String, Value> =
            serde_json::from_slice(&bytes[ORDER_LEN..]).map_err(|_| bad())?;
        Ok(Record {
            event_us,
            created_us,
            values,
        })
    }
}

/// Whether stored bytes `new` may replace `old` (not older).
pub fn newer_or_equal(new: &[u8], old: &[u8]) -> bool {
    let n = &new[..ORDER_LEN.min(new.len())];
    let o = &old[..ORDER_LEN.min(old.len())];
    n >= o
}

/// The storage key of one entity of one view: `view`, then the join-key
/// values as text, separated by U+001F.
pub fn storage_key(view: &str, key_values: &[String]) -> String {
    let mut k = String::with_capacity(view.len() + 16);
    k.push_str(view);
    for v in key_values {
        k.push('\u{1f}');
        k.push_str(v);
    }
    k
}

/// A backend of the online store.
pub trait OnlineBackend: Send + Sync {
    /// Write encoded records, keeping any stored one that is newer; returns
    /// how many were written.
    fn write(&self, items: Vec<(String, Vec<u8>)>) -> impl Future<Output = Result<u64>> + Send;
    /// Read encoded records for `keys`, in order.
    fn read(&self, keys: Vec<String>) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>>> + Send;
}

/// The configured backend.
#[derive(Clone)]
pub enum OnlineStore {
    Embedded(embedded::EmbeddedStore),
    Redis(redis::RedisStore),
}

impl OnlineStore {
    /// Open by URL: `redis://...` for Redis, anything else is a redb file
    /// path. Redis is connected on first use (a server starts while Redis is
    /// down); a bad URL fails here.
    pub async fn open(url: &str) -> Result<OnlineStore> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(OnlineStore::Redis(redis::RedisStore::new(url, "gb:")?))
        } else {
            Ok(OnlineStore::Embedded(embedded::EmbeddedStore::open(
                std::path::Path::new(url.strip_prefix("file://").unwrap_or(url)),
            )?))
        }
    }
}

/// What the online store holds, by view: (keys, bytes).
pub type Usage = std::collections::BTreeMap<String, (u64, u64)>;

/// Count one stored key (`storage_key` form, any backend prefix already
/// stripped) of `bytes` toward its view.
fn count_key(usage: &mut Usage, key: &str, bytes: u64) {
    let view = key.split('\u{1f}').next().unwrap_or(key);
    let e = usage.entry(view.to_string()).or_default();
    e.0 += 1;
    e.1 += bytes;
}

impl OnlineStore {
    /// Keys and bytes held per view: a full pass over the store (redb: the
    /// table on a blocking thread, key and value bytes; Redis: `SCAN` over
    /// the store's prefix with `MEMORY USAGE` per key, `STRLEN` + key
    /// length where `MEMORY USAGE` is refused). Meant for a periodic scan
    /// (the cost ledger's), not the request path.
    pub async fn usage(&self) -> Result<Usage> {
        match self {
            OnlineStore::Embedded(s) => s.usage().await,
            OnlineStore::Redis(s) => s.usage().await,
        }
    }

    /// Whether the store keeps its data in memory (Redis) rather than on
    /// disk (redb): its bytes cost RAM, not storage.
    pub fn in_memory(&self) -> bool {
        matches!(self, OnlineStore::Redis(_))
    }
}

impl OnlineBackend for OnlineStore {
    async fn write(&self, items: Vec<(String, Vec<u8>)>) -> Result<u64> {
        match self {
            OnlineStore::Embedded(s) => s.write(items).await,
            OnlineStore::Redis(s) => s.write(items).await,
        }
    }

    async fn read(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        match self {
            OnlineStore::Embedded(s) => s.read(keys).await,
            OnlineStore::Redis(s) => s.read(keys).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_prefix_sorts_like_the_timestamps() {
        let r = |e: i64, c: i64| Record {
            event_us: e,
            created_us: c,
            values: Map::new(),
        };
        let cases = [
            (-5, 0),
            (0, i64::MIN),
            (0, -1),
            (0, 0),
            (0, 7),
            (1, i64::MIN),
            (i64::MAX, i64::MAX),
        ];
        for w in cases.windows(2) {
            assert!(
                r(w[0].0, w[0].1).order() < r(w[1].0, w[1].1).order(),
                "{w:?}"
            );
        }
        let mut rec = r(123, 456);
        rec.values.insert("a".into(), Value::from(1.5));
        let back = Record::decode(&rec.encode()).unwrap();
        assert_eq!(back, rec);
        assert!(Record::decode(b"garbage").is_err());
        assert!(newer_or_equal(&rec.encode(), &r(123, 455).encode()));
        assert!(!newer_or_equal(&r(122, 999).encode(), &rec.encode()));
    }
}
