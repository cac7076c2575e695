//! Online store and service: newer-wins writes, one read across views,
//! TTL on read (OUTSIDE_MAX_AGE), NOT_FOUND, the Feast response shape, the
//! cache (hit, and invalidation on push), on the embedded store and on Redis
//! (`GREENBELT_TEST_REDIS_URL`; skipped with a printed line when unset).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use greenbelt_features::Definitions;
use greenbelt_features::online::redis::RedisStore;
use greenbelt_features::online::service::{
    CacheOptions, FieldStatus, OnlineRequest, OnlineService, PushRequest,
};
use greenbelt_features::online::{OnlineBackend, OnlineStore, Record, storage_key};
use serde_json::{Value, json};

use crate::common::*;

pub const DEFS: &str = r#"
[[entity]]
name = "user"
join_keys = [{ name = "user_id", type = "string" }]
[[entity]]
name = "merchant"
join_keys = [{ name = "merchant_id", type = "int64" }]
[[source]]
name = "tx"
path = "tx.csv"
event_timestamp = "event_ts"
[[feature_view]]
name = "user_stats"
entities = ["user"]
source = "tx"
ttl = "1h"
features = [{ name = "amount", type = "float64" }, { name = "country", type = "string" }]
[feature_view.contract]
rules = [{ check = "range", column = "amount", min = 0.0 }]
[[feature_view]]
name = "merchant_stats"
entities = ["merchant"]
source = "tx"
features = [{ name = "risk", type = "float64" }]
[[feature_service]]
name = "model"
features = ["user_stats:*", "merchant_stats:risk"]
"#;

pub fn defs() -> Arc<Definitions> {
    Arc::new(Definitions::parse(DEFS, std::path::Path::new("/tmp")).unwrap())
}

fn rec(event_s: i64, created_s: Option<i64>, amount: f64) -> Vec<u8> {
    let mut values = serde_json::Map::new();
    values.insert("amount".into(), json!(amount));
    Record {
        event_us: T0 + event_s * SEC,
        created_us: created_s.map_or(i64::MIN, |c| T0 + c * SEC),
        values,
    }
    .encode()
}

async fn newer_wins(store: &OnlineStore) {
    let k = storage_key("user_stats", &["u1".into()]);
    assert_eq!(
        store
            .write(vec![(k.clone(), rec(10, None, 1.0))])
            .await
            .unwrap(),
        1
    );
    // Older event: ignored.
    assert_eq!(
        store
            .write(vec![(k.clone(), rec(5, Some(99), 2.0))])
            .await
            .unwrap(),
        0
    );
    // Same event, later created: replaces.
    assert_eq!(
        store
            .write(vec![(k.clone(), rec(10, Some(1), 3.0))])
            .await
            .unwrap(),
        1
    );
    // Same event, earlier created: ignored.
    assert_eq!(
        store
            .write(vec![(k.clone(), rec(10, Some(0), 4.0))])
            .await
            .unwrap(),
        0
    );
    let got = store
        .read(vec![k, "user_stats\u{1f}nobody".into()])
        .await
        .unwrap();
    let r = Record::decode(got[0].as_ref().unwrap()).unwrap();
    assert_eq!(r.values["amount"], json!(3.0));
    assert!(got[1].is_none());
}

fn push(view: &str, cols: Value) -> PushRequest {
    let df: BTreeMap<String, Vec<Value>> = serde_json::from_value(cols).unwrap();
    PushRequest {
        feature_view: view.into(),
        df,
    }
}

fn req(users: Value, merchants: Value) -> OnlineRequest {
    let mut entities = BTreeMap::new();
    entities.insert(
        "user_id".to_string(),
        serde_json::from_value(users).unwrap(),
    );
    entities.insert(
        "merchant_id".to_string(),
        serde_json::from_value(merchants).unwrap(),
    );
    OnlineRequest {
        entities,
        feature_service: Some("model".into()),
        features: None,
        full_feature_names: false,
    }
}

async fn service_behaviour(store: OnlineStore) {
    let now = Arc::new(AtomicI64::new(T0 + 100 * SEC));
    let clock = now.clone();
    let svc = OnlineService::new(defs(), store.clone(), CacheOptions::default())
        .with_clock(move || clock.load(Ordering::SeqCst));
    svc.push(&push("user_stats", json!({
        "user_id": ["u1", "u2", "u1"],
        "event_timestamp": ["2026-01-01T00:01:00Z", "2026-01-01T00:00:30Z", "2026-01-01T00:00:10Z"],
        "amount": [10.0, 20.0, 99.0],
        "country": ["NL", null, "XX"],
    })))
    .await
    .unwrap();
    svc.push(&push(
        "merchant_stats",
        json!({
            "merchant_id": [7], "event_timestamp": ["2026-01-01T00:00:00Z"], "risk": [0.5],
        }),
    ))
    .await
    .unwrap();
    let r = svc
        .get_online_features(&req(json!(["u1", "u2", "u9"]), json!([7, 7, 8])))
        .await
        .unwrap();
    assert_eq!(
        r.metadata.feature_names,
        ["user_id", "merchant_id", "amount", "country", "risk"]
    );
    assert_eq!(
        r.results[0].values,
        vec![json!("u1"), json!("u2"), json!("u9")]
    );
    assert_eq!(
        r.results[2].values,
        vec![json!(10.0), json!(20.0), Value::Null],
        "the older push row did not win"
    );
    assert_eq!(
        r.results[2].statuses,
        [
            FieldStatus::Present,
            FieldStatus::Present,
            FieldStatus::NotFound
        ]
    );
    assert_eq!(
        r.results[3].statuses,
        [
            FieldStatus::Present,
            FieldStatus::NullValue,
            FieldStatus::NotFound
        ]
    );
    assert_eq!(
        r.results[2].event_timestamps[0],
        "2026-01-01T00:01:00.000000Z"
    );
    assert_eq!(
        r.results[4].values,
        vec![json!(0.5), json!(0.5), Value::Null]
    );
    let shape = serde_json::to_value(&r).unwrap();
    assert_eq!(shape["results"][2]["statuses"][2], json!("NOT_FOUND"));
    assert!(shape["metadata"]["feature_names"].is_array());

    // TTL on read: 1h after the event the value is OUTSIDE_MAX_AGE; the view without a TTL stays.
    now.store(T0 + 60 * SEC + 3600 * SEC + 1, Ordering::SeqCst);
    let r = svc
        .get_online_features(&req(json!(["u1"]), json!([7])))
        .await
        .unwrap();
    assert_eq!(r.results[2].statuses, [FieldStatus::OutsideMaxAge]);
    assert_eq!(r.results[2].values, [Value::Null]);
    assert_eq!(r.results[4].statuses, [FieldStatus::Present]);
    now.store(T0 + 100 * SEC, Ordering::SeqCst);

    // Cache: a write that bypasses the service is not seen while cached ...
    let k = storage_key("user_stats", &["u1".into()]);
    let mut values = serde_json::Map::new();
    values.insert("amount".into(), json!(555.0));
    store
        .write(vec![(
            k,
            Record {
                event_us: T0 + 90 * SEC,
                created_us: i64::MIN,
                values,
            }
            .encode(),
        )])
        .await
        .unwrap();
    let r = svc
        .get_online_features(&req(json!(["u1"]), json!([7])))
        .await
        .unwrap();
    assert_eq!(r.results[2].values, [json!(10.0)], "served from the cache");
    // ... and a push through the service invalidates it.
    svc.push(&push("user_stats", json!({
        "user_id": ["u1"], "event_timestamp": ["2026-01-01T00:01:35Z"], "amount": [11.0], "country": ["DE"],
    })))
    .await
    .unwrap();
    let r = svc
        .get_online_features(&req(json!(["u1"]), json!([7])))
        .await
        .unwrap();
    assert_eq!(r.results[2].values, [json!(11.0)]);

    // A push that breaks the contract is refused, naming the rule.
    let e = svc
        .push(&push("user_stats", json!({
            "user_id": ["u1"], "event_timestamp": ["2026-01-01T00:02:00Z"], "amount": [-1.0], "country": ["DE"],
        })))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("range(amount"), "{e}");
    // Bad types and missing columns name the field.
    let e = svc
        .push(&push("user_stats", json!({ "user_id": [1], "event_timestamp": ["2026-01-01T00:02:00Z"], "amount": [1.0], "country": ["DE"] })))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("df.user_id[0]"), "{e}");
    let e = svc
        .push(&push("user_stats", json!({ "user_id": ["u1"], "event_timestamp": ["2026-01-01T00:02:00Z"], "amount": [1.0] })))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("df.country"), "{e}");
    let e = svc
        .get_online_features(&req(json!(["u1"]), json!(["7"])))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("entities.merchant_id[0]"), "{e}");
}

/// Keys and bytes by view: 3 keys of one view, 2 of another (one of them
/// written twice: still one key).
async fn usage_by_view(store: &OnlineStore) {
    let mut items = Vec::new();
    for u in ["u1", "u2", "u3"] {
        items.push((storage_key("user_stats", &[u.into()]), rec(10, None, 1.0)));
    }
    for m in ["7", "8"] {
        items.push((
            storage_key("merchant_stats", &[m.into()]),
            rec(10, None, 2.0),
        ));
    }
    store.write(items.clone()).await.unwrap();
    store
        .write(vec![(
            storage_key("merchant_stats", &["7".into()]),
            rec(11, None, 3.0),
        )])
        .await
        .unwrap();
    let usage = store.usage().await.unwrap();
    assert_eq!(usage.len(), 2, "{usage:?}");
    let (keys, bytes) = usage["user_stats"];
    assert_eq!(keys, 3);
    // At least the keys and values themselves (Redis adds its overhead).
    let raw: u64 = items[..3]
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    assert!(bytes >= raw, "{bytes} < {raw}");
    assert_eq!(usage["merchant_stats"].0, 2);
}

#[tokio::test]
async fn embedded_store_counts_keys_and_bytes_by_view() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("online.redb").to_str().unwrap())
        .await
        .unwrap();
    assert!(!store.in_memory());
    usage_by_view(&store).await;
    // redb: exactly key + value bytes.
    let usage = store.usage().await.unwrap();
    let k = storage_key("user_stats", &["u1".into()]);
    assert_eq!(
        usage["user_stats"].1,
        3 * (k.len() + rec(10, None, 1.0).len()) as u64
    );
}

#[tokio::test]
async fn redis_store_counts_keys_and_bytes_by_view() {
    let Some(url) = redis_url() else { return };
    let store = OnlineStore::Redis(
        RedisStore::connect(&url, &unique_prefix("usage"))
            .await
            .unwrap(),
    );
    assert!(store.in_memory());
    usage_by_view(&store).await;
}

#[tokio::test]
async fn embedded_store_keeps_the_newest_value_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("online.redb");
    let store = OnlineStore::open(path.to_str().unwrap()).await.unwrap();
    newer_wins(&store).await;
    drop(store);
    let again = OnlineStore::open(path.to_str().unwrap()).await.unwrap();
    let got = again
        .read(vec![storage_key("user_stats", &["u1".into()])])
        .await
        .unwrap();
    assert!(got[0].is_some(), "persisted across reopen");
}

#[tokio::test]
async fn embedded_service_ttl_cache_and_push() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("o.redb").to_str().unwrap())
        .await
        .unwrap();
    service_behaviour(store).await;
}

fn redis_url() -> Option<String> {
    match std::env::var("GREENBELT_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            println!("SKIP: GREENBELT_TEST_REDIS_URL is not set; Redis online-store tests skipped");
            None
        }
    }
}

fn unique_prefix(test: &str) -> String {
    format!(
        "gbtest:{test}:{}:{}:",
        std::process::id(),
        greenbelt_features::time::now_us()
    )
}

#[tokio::test]
async fn redis_store_keeps_the_newest_value() {
    let Some(url) = redis_url() else { return };
    let store = OnlineStore::Redis(
        RedisStore::connect(&url, &unique_prefix("newer"))
            .await
            .unwrap(),
    );
    newer_wins(&store).await;
}

#[tokio::test]
async fn redis_service_ttl_cache_and_push() {
    let Some(url) = redis_url() else { return };
    let store = OnlineStore::Redis(
        RedisStore::connect(&url, &unique_prefix("svc"))
            .await
            .unwrap(),
    );
    service_behaviour(store).await;
}

/// Milliseconds to live of a key of this test's store, straight from Redis.
async fn pttl(url: &str, full_key: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL")
        .arg(full_key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_keys_expire_after_the_view_ttl_plus_a_margin() {
    use greenbelt_features::online::redis::EXPIRY_MARGIN;
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("expiry");
    let store = OnlineStore::Redis(RedisStore::connect(&url, &prefix).await.unwrap());
    // The service clock, not Redis's, decides how long is left.
    let now = T0 + 100 * SEC;
    let svc =
        OnlineService::new(defs(), store.clone(), CacheOptions::default()).with_clock(move || now);
    let margin_ms = EXPIRY_MARGIN.as_millis() as i64;
    let u1 = format!("{prefix}{}", storage_key("user_stats", &["u1".into()]));
    // Within a few seconds of `want` ms, never above it.
    let close = |got: i64, want: i64| got <= want && got > want - 5_000;

    // user_stats has a 1 h TTL: event + 1 h + margin, from the service's now.
    let r = svc
        .push(&push("user_stats", json!({
            "user_id": ["u1"], "event_timestamp": ["2026-01-01T00:01:00Z"], "amount": [10.0], "country": ["NL"],
        })))
        .await
        .unwrap();
    assert_eq!(r.written, 1);
    let want = (60 + 3600 - 100) * 1000 + margin_ms;
    let got = pttl(&url, &u1).await;
    assert!(close(got, want), "PTTL {got}, want about {want}");

    // merchant_stats has no TTL: no expiry.
    svc.push(&push(
        "merchant_stats",
        json!({ "merchant_id": [7], "event_timestamp": ["2026-01-01T00:00:00Z"], "risk": [0.5] }),
    ))
    .await
    .unwrap();
    let m7 = format!("{prefix}{}", storage_key("merchant_stats", &["7".into()]));
    assert_eq!(
        pttl(&url, &m7).await,
        -1,
        "a view without TTL never expires"
    );

    // An older write changes neither the value nor the expiry (one atomic step).
    let r = svc
        .push(&push("user_stats", json!({
            "user_id": ["u1"], "event_timestamp": ["2026-01-01T00:00:10Z"], "amount": [99.0], "country": ["XX"],
        })))
        .await
        .unwrap();
    assert_eq!(r.written, 0);
    let got = pttl(&url, &u1).await;
    assert!(
        close(got, want),
        "PTTL {got} after an older write, want about {want}"
    );
    let stored = store
        .read(vec![storage_key("user_stats", &["u1".into()])])
        .await
        .unwrap();
    let rec = Record::decode(stored[0].as_ref().unwrap()).unwrap();
    assert_eq!(rec.values["amount"], json!(10.0));

    // A newer write moves the expiry with its event time.
    svc.push(&push("user_stats", json!({
        "user_id": ["u1"], "event_timestamp": ["2026-01-01T00:01:30Z"], "amount": [11.0], "country": ["NL"],
    })))
    .await
    .unwrap();
    let want = (90 + 3600 - 100) * 1000 + margin_ms;
    let got = pttl(&url, &u1).await;
    assert!(
        close(got, want),
        "PTTL {got} after a newer write, want about {want}"
    );

    // A value already past TTL + margin on the writer's clock is not stored at all.
    let late = T0 + 3600 * SEC + EXPIRY_MARGIN.as_secs() as i64 * SEC + 61 * SEC;
    let svc_late =
        OnlineService::new(defs(), store.clone(), CacheOptions::default()).with_clock(move || late);
    let r = svc_late
        .push(&push("user_stats", json!({
            "user_id": ["u2"], "event_timestamp": ["2026-01-01T00:00:00Z"], "amount": [1.0], "country": ["NL"],
        })))
        .await
        .unwrap();
    assert_eq!(r.written, 0);
    let u2 = format!("{prefix}{}", storage_key("user_stats", &["u2".into()]));
    assert_eq!(pttl(&url, &u2).await, -2, "no key for an expired value");

    // Clean up this test's keys.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&u1)
        .arg(&m7)
        .query_async(&mut conn)
        .await
        .unwrap();
}

const MATERIALIZE_DEFS: &str = r#"
[store]
offline = "offline"
[[entity]]
name = "user"
join_keys = [{ name = "user_id", type = "string" }]
[[source]]
name = "tx"
path = "tx.parquet"
event_timestamp = "event_ts"
created_timestamp = "created_ts"
[[feature_view]]
name = "user_stats"
entities = ["user"]
source = "tx"
features = [{ name = "amount", type = "float64" }, { name = "country", type = "string" }]
[[feature_service]]
name = "model"
features = ["user_stats:*"]
"#;

/// Online materialization writes each key's newest row in the range once:
/// newest by event time, then created time (missing = oldest), whatever the
/// order of the rows and however the stream is cut into batches.
async fn materialize_online_behaviour(store: OnlineStore) {
    use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
    use greenbelt_features::offline::{MaterializeOptions, OfflineStore, materialize};
    use greenbelt_features::source::EngineOptions;
    use greenbelt_features::time::parse_ts;

    let dir = tempfile::tempdir().unwrap();
    let t = |s: &str| parse_ts("t", s).unwrap();
    let rows: Vec<(&str, &str, Option<&str>, f64, &str)> = vec![
        (
            "u1",
            "2026-01-01T10:00:00Z",
            Some("2026-01-01T10:00:00Z"),
            1.0,
            "NL",
        ),
        (
            "u1",
            "2026-01-02T09:00:00Z",
            Some("2026-01-02T10:00:00Z"),
            3.0,
            "DE",
        ),
        (
            "u1",
            "2026-01-02T09:00:00Z",
            Some("2026-01-02T09:00:00Z"),
            2.0,
            "NL",
        ),
        ("u2", "2026-01-03T08:00:00Z", None, 5.0, "FR"),
        (
            "u2",
            "2026-01-01T08:00:00Z",
            Some("2026-01-09T00:00:00Z"),
            6.0,
            "XX",
        ),
        ("u2", "2026-01-03T08:00:00Z", None, 5.0, "FR"),
        ("u3", "2026-01-04T00:00:00Z", None, 7.0, "US"),
        ("u3", "2026-01-01T00:00:00Z", None, 8.0, "US"),
    ];
    let users: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    let countries: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|r| r.4).collect::<Vec<_>>(),
    ));
    let b = batch(vec![
        ("user_id", users),
        (
            "event_ts",
            ts_array(rows.iter().map(|r| Some(t(r.1))).collect()),
        ),
        (
            "created_ts",
            ts_array(rows.iter().map(|r| r.2.map(&t)).collect()),
        ),
        (
            "amount",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ),
        ("country", countries),
    ]);
    write_parquet(&dir.path().join("tx.parquet"), &b);
    let defs = Arc::new(Definitions::parse(MATERIALIZE_DEFS, dir.path()).unwrap());
    let offline = OfflineStore::open(&dir.path().join("offline")).unwrap();
    materialize(
        &defs,
        &offline,
        "user_stats",
        t("2026-01-01T00:00:00Z"),
        t("2026-01-05T00:00:00Z"),
        &MaterializeOptions::default(),
    )
    .await
    .unwrap();
    let svc = OnlineService::new(defs.clone(), store, CacheOptions::default());
    // Batches of 2 rows: keys' rows arrive in different batches.
    let engine = EngineOptions {
        batch_size: 2,
        ..EngineOptions::default()
    };
    let written = svc
        .materialize_online(
            &offline,
            "user_stats",
            t("2026-01-01T00:00:00Z"),
            t("2026-01-04T00:00:00Z"),
            &engine,
        )
        .await
        .unwrap();
    assert_eq!(written, 3, "one write per key");
    let ask = || {
        let mut entities = BTreeMap::new();
        entities.insert(
            "user_id".to_string(),
            vec![json!("u1"), json!("u2"), json!("u3")],
        );
        OnlineRequest {
            entities,
            feature_service: Some("model".into()),
            features: None,
            full_feature_names: false,
        }
    };
    let r = svc.get_online_features(&ask()).await.unwrap();
    assert_eq!(
        r.results[1].values,
        [json!(3.0), json!(5.0), json!(8.0)],
        "newest event, then newest created; u3's row at the range end is not in it"
    );
    assert_eq!(r.results[2].values, [json!("DE"), json!("FR"), json!("US")]);
    assert_eq!(
        r.results[1].event_timestamps[0],
        "2026-01-02T09:00:00.000000Z"
    );
    // The next range brings u3's later row; the others stay.
    let written = svc
        .materialize_online(
            &offline,
            "user_stats",
            t("2026-01-04T00:00:00Z"),
            t("2026-01-05T00:00:00Z"),
            &engine,
        )
        .await
        .unwrap();
    assert_eq!(written, 1);
    let r = svc.get_online_features(&ask()).await.unwrap();
    assert_eq!(r.results[1].values, [json!(3.0), json!(5.0), json!(7.0)]);
    // The batch canary reads the newest event the batch path delivered.
    let b = greenbelt_features::canary::run_batch(&svc, "user_stats", t("2026-01-05T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(b.newest_event, "2026-01-04T00:00:00.000000Z");
    assert_eq!(b.age_seconds, 86_400.0);
    assert!(!b.breach, "no freshness_sla: nothing to breach");
}

#[tokio::test]
async fn embedded_materialize_online_writes_the_newest_row_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("o.redb").to_str().unwrap())
        .await
        .unwrap();
    materialize_online_behaviour(store).await;
}

#[tokio::test]
async fn redis_materialize_online_writes_the_newest_row_per_key() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("materialize");
    let store = OnlineStore::Redis(RedisStore::connect(&url, &prefix).await.unwrap());
    materialize_online_behaviour(store).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for u in ["u1", "u2", "u3"] {
        let k = format!("{prefix}{}", storage_key("user_stats", &[u.into()]));
        let _: i64 = redis::cmd("DEL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

const FRESHNESS_DEFS: &str = r#"
[[entity]]
name = "user"
join_keys = [{ name = "user_id", type = "string" }]
[[source]]
name = "tx"
path = "tx.csv"
event_timestamp = "event_ts"
[[feature_view]]
name = "activity"
entities = ["user"]
source = "tx"
ttl = "1h"
freshness_sla = "1m"
features = [{ name = "amount", type = "float64", default = 0.5 }]
[[feature_service]]
name = "keep"
features = ["activity:amount"]
fallback = "last_value"
[[feature_service]]
name = "defaults"
features = ["activity:amount"]
fallback = "default"
"#;

fn freshness(breach: bool) -> Vec<greenbelt_features::freshness::ViewFreshness> {
    vec![
        serde_json::from_value(json!({
            "view": "activity", "watermark": null, "newest_event": null,
            "age_seconds": if breach { 600.0 } else { 10.0 }, "sla_seconds": 60.0, "breach": breach,
        }))
        .unwrap(),
    ]
}

/// A pipeline outage leaves the store healthy and its values ageing: once
/// the freshness check finds the view past its SLA, every read of it is
/// flagged (STALE, or DEFAULT under `fallback = "default"`) with the
/// reason, and counted; a later check that finds it fresh clears the flag.
#[tokio::test]
async fn a_view_past_its_freshness_sla_is_served_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("o.redb").to_str().unwrap())
        .await
        .unwrap();
    let defs = Arc::new(Definitions::parse(FRESHNESS_DEFS, dir.path()).unwrap());
    let svc = OnlineService::new(defs, store, CacheOptions::default());
    let now = greenbelt_features::time::format_ts(greenbelt_features::time::now_us());
    svc.push(&push(
        "activity",
        json!({"user_id": ["u1"], "event_timestamp": [now], "amount": [2.0]}),
    ))
    .await
    .unwrap();
    let ask = |service: &str| OnlineRequest {
        entities: BTreeMap::from([("user_id".to_string(), vec![json!("u1")])]),
        feature_service: Some(service.into()),
        features: None,
        full_feature_names: false,
    };
    let r = svc.get_online_features(&ask("keep")).await.unwrap();
    assert_eq!(r.results[1].statuses, [FieldStatus::Present]);
    assert!(r.degraded.is_none());

    // A check that finds no offline data judges nothing.
    let mut unknown = freshness(true);
    unknown[0].age_seconds = None;
    svc.set_freshness(&unknown);
    assert!(svc.stale_views().is_empty());

    svc.set_freshness(&freshness(true));
    let r = svc.get_online_features(&ask("keep")).await.unwrap();
    assert_eq!(r.results[1].statuses, [FieldStatus::Stale]);
    assert_eq!(r.results[1].values, [json!(2.0)]);
    let d = r.degraded.expect("a stale view's read is degraded");
    assert!(
        d.reason
            .contains("feature view \"activity\" is past its freshness SLA"),
        "{}",
        d.reason
    );
    assert_eq!((d.stale_values, d.default_values), (1, 0));
    assert_eq!(d.stale_age_seconds, Some(600.0));
    let r = svc.get_online_features(&ask("defaults")).await.unwrap();
    assert_eq!(r.results[1].statuses, [FieldStatus::Default]);
    assert_eq!(r.results[1].values, [json!(0.5)]);
    // The serving path's typed lookup flags the same way.
    let m = svc
        .lookup(
            "keep",
            &BTreeMap::from([("user_id".to_string(), vec![json!("u1")])]),
        )
        .await
        .unwrap();
    assert_eq!(m.statuses, [FieldStatus::Stale]);
    assert_eq!(m.values, [Some(2.0)]);
    assert!(m.degraded.is_some());
    let status = svc.online_status();
    assert_eq!(status.stale_views.len(), 1);
    assert_eq!(status.stale_views[0].view, "activity");
    assert_eq!(status.degraded_reads["keep"].stale_values, 2);
    assert_eq!(status.degraded_reads["defaults"].default_values, 1);

    svc.set_freshness(&freshness(false));
    let r = svc.get_online_features(&ask("keep")).await.unwrap();
    assert_eq!(r.results[1].statuses, [FieldStatus::Present]);
    assert!(r.degraded.is_none());
    assert!(svc.online_status().stale_views.is_empty());
}
