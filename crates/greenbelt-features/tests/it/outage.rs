//! A Redis outage with real processes: the test starts its own
//! `redis-server`, serves features through it, kills it. Reads of services
//! with `last_value` and `default` fallbacks keep answering (STALE /
//! DEFAULT, flagged degraded, no failures), a service with `error` fails
//! fast, the read breaker opens within a bounded time; after Redis comes
//! back on the same port the breaker half-opens and closes and values are
//! fresh (PRESENT) again. A hung Redis (SIGSTOP) is cut at the read
//! timeout, or at half of a caller's remaining budget when that is less.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_core::breaker::State;
use greenbelt_features::Definitions;
use greenbelt_features::online::OnlineStore;
use greenbelt_features::online::service::{
    CacheOptions, FieldStatus, OnlineRequest, OnlineService, PushRequest,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::redis_proc::{self, RedisProc};

fn defs(url: &str) -> Arc<Definitions> {
    let text = format!(
        r#"
[store]
online = "{url}"
online_timeout = "200ms"
[store.online_breaker]
sliding_window_size = 8
minimum_number_of_calls = 4
wait_duration_in_open = "1s"
permitted_calls_in_half_open = 2

[[entity]]
name = "user"
join_keys = [{{ name = "user_id", type = "string" }}]
[[source]]
name = "tx"
path = "tx.csv"
event_timestamp = "event_ts"
[[feature_view]]
name = "stats"
entities = ["user"]
source = "tx"
features = [{{ name = "amount", type = "float64", default = -1.0 }}, {{ name = "count", type = "int64", default = 0 }}]
[[feature_service]]
name = "lv"
features = ["stats:*"]
fallback = "last_value"
[[feature_service]]
name = "dv"
features = ["stats:*"]
fallback = "default"
[[feature_service]]
name = "strict"
features = ["stats:*"]
"#
    );
    Arc::new(Definitions::parse(&text, std::path::Path::new("/tmp")).unwrap())
}

fn users(ids: &[&str]) -> BTreeMap<String, Vec<Value>> {
    let mut e = BTreeMap::new();
    e.insert("user_id".into(), ids.iter().map(|u| json!(u)).collect());
    e
}

async fn push(svc: &OnlineService, amount: f64, count: i64) {
    let now = greenbelt_features::time::format_ts(greenbelt_features::time::now_us());
    let df: BTreeMap<String, Vec<Value>> = serde_json::from_value(json!({
        "user_id": ["u1"], "event_timestamp": [now], "amount": [amount], "count": [count],
    }))
    .unwrap();
    svc.push(&PushRequest {
        feature_view: "stats".into(),
        df,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn redis_outage_serves_fallbacks_opens_the_breaker_and_recovers() {
    if !redis_proc::available() {
        return;
    }
    let mut redis = RedisProc::start().await;
    let store = OnlineStore::open(&redis.url()).await.unwrap();
    let cache = CacheOptions {
        enabled: false,
        ..CacheOptions::default()
    };
    let svc = OnlineService::new(defs(&redis.url()), store, cache);
    push(&svc, 1.5, 3).await;
    let m = svc.lookup("lv", &users(&["u1"])).await.unwrap();
    assert_eq!(m.values, [Some(1.5), Some(3.0)]);
    assert_eq!(m.statuses, [FieldStatus::Present; 2]);
    assert!(m.degraded.is_none());

    redis.kill();
    let killed = Instant::now();
    let mut opened_after = None;
    let mut reads = 0;
    while killed.elapsed() < Duration::from_secs(3) {
        let m = svc.lookup("lv", &users(&["u1"])).await.unwrap();
        assert_eq!(m.values, [Some(1.5), Some(3.0)], "the last values");
        assert_eq!(m.statuses, [FieldStatus::Stale; 2]);
        let d = m.degraded.as_ref().unwrap();
        assert_eq!(d.fallback, "last_value");
        assert!(d.stale_age_seconds.unwrap() >= 0.0);
        // A user never read before has no last value: the defaults.
        let m = svc.lookup("lv", &users(&["u9"])).await.unwrap();
        assert_eq!(m.values, [Some(-1.0), Some(0.0)]);
        assert_eq!(m.statuses, [FieldStatus::Default; 2]);
        let m = svc.lookup("dv", &users(&["u1"])).await.unwrap();
        assert_eq!(m.values, [Some(-1.0), Some(0.0)]);
        assert_eq!(m.statuses, [FieldStatus::Default; 2]);
        let e = svc.lookup("strict", &users(&["u1"])).await.unwrap_err();
        assert_eq!(e.status_code(), 503, "{e}");
        reads += 4;
        if opened_after.is_none() && svc.online_status().read.state == State::Open {
            opened_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened_after = opened_after.expect("the read breaker opens while Redis is down");
    assert!(
        opened_after < Duration::from_secs(2),
        "opened after {opened_after:?}"
    );
    // Open: a read is refused without waiting for the store. (The breaker
    // half-opens every second and its trials fail: wait for it to be open.)
    let status = loop {
        assert!(killed.elapsed() < Duration::from_secs(10), "never open");
        if svc.online_status().read.state == State::Open {
            let t = Instant::now();
            let e = svc.lookup("strict", &users(&["u1"])).await.unwrap_err();
            if e.to_string().contains("circuit breaker") {
                assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
                let status = svc.online_status();
                if status.read.state == State::Open {
                    break status;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.read.counts.rejected > 0);
    assert!(status.degraded_reads["lv"].reads > 0);
    assert!(status.degraded_reads["dv"].default_values > 0);
    let text = status.prometheus_text();
    assert!(
        text.contains("greenbelt_feature_store_breaker_state{store=\"online\",op=\"read\"} 1"),
        "{text}"
    );
    println!("{reads} reads during the outage; breaker opened after {opened_after:?}");

    redis.restart().await;
    // Keep reading: the breaker half-opens after its wait, its trial calls
    // reach the reconnected store and it closes.
    let back = Instant::now();
    let mut saw_half_open = false;
    loop {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the breaker did not close within 15s of Redis coming back: {:?}",
            svc.online_status().read
        );
        let state = svc.online_status().read.state;
        saw_half_open |= state == State::HalfOpen;
        let m = svc.lookup("lv", &users(&["u1"])).await.unwrap();
        if state == State::Closed && m.degraded.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = svc.online_status();
    assert_eq!(status.read.state, State::Closed);
    assert!(saw_half_open || status.read.counts.opened >= 1);
    // The restarted Redis is empty: a value pushed now reads back fresh.
    push(&svc, 2.5, 4).await;
    let m = svc.lookup("lv", &users(&["u1"])).await.unwrap();
    assert_eq!(m.values, [Some(2.5), Some(4.0)]);
    assert_eq!(m.statuses, [FieldStatus::Present; 2]);
    assert!(m.degraded.is_none());
    // The Feast-shaped read agrees.
    let r = svc
        .get_online_features(&OnlineRequest {
            entities: users(&["u1"]),
            feature_service: Some("lv".into()),
            features: None,
            full_feature_names: false,
        })
        .await
        .unwrap();
    assert_eq!(r.results[1].statuses, [FieldStatus::Present]);
    assert!(r.degraded.is_none());
}

#[tokio::test]
async fn a_store_that_is_down_from_the_start_falls_back_and_fails_writes_clearly() {
    if !redis_proc::available() {
        return;
    }
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let store = OnlineStore::open(&url)
        .await
        .expect("opening does not connect");
    let svc = OnlineService::new(defs(&url), store, CacheOptions::default());
    let m = svc.lookup("dv", &users(&["u1"])).await.unwrap();
    assert_eq!(m.statuses, [FieldStatus::Default; 2]);
    let r = svc
        .get_online_features(&OnlineRequest {
            entities: users(&["u1"]),
            feature_service: Some("dv".into()),
            features: None,
            full_feature_names: false,
        })
        .await
        .unwrap();
    assert_eq!(r.results[1].statuses, [FieldStatus::Default]);
    assert_eq!(r.results[1].values, [json!(-1.0)]);
    assert_eq!(r.degraded.as_ref().unwrap().default_values, 2);
    // `last_value` with nothing read yet: the defaults.
    let m = svc.lookup("lv", &users(&["u1"])).await.unwrap();
    assert_eq!(m.statuses, [FieldStatus::Default; 2]);
    let now = greenbelt_features::time::format_ts(greenbelt_features::time::now_us());
    let df: BTreeMap<String, Vec<Value>> = serde_json::from_value(json!({
        "user_id": ["u1"], "event_timestamp": [now], "amount": [1.0], "count": [1],
    }))
    .unwrap();
    let e = svc
        .push(&PushRequest {
            feature_view: "stats".into(),
            df,
        })
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), 503, "{e}");
    assert!(e.to_string().contains("redis"), "{e}");
}

#[tokio::test]
async fn a_hung_redis_is_cut_at_half_the_remaining_budget() {
    if !redis_proc::available() {
        return;
    }
    let redis = RedisProc::start().await;
    let store = OnlineStore::open(&redis.url()).await.unwrap();
    let cache = CacheOptions {
        enabled: false,
        ..CacheOptions::default()
    };
    let svc = OnlineService::new(defs(&redis.url()), store, cache);
    push(&svc, 1.5, 3).await;
    assert_eq!(
        svc.lookup("lv", &users(&["u1"])).await.unwrap().statuses,
        [FieldStatus::Present; 2]
    );
    redis.pause();
    // A request with 100 ms left: the read gets 50 ms (not the 200 ms
    // online_timeout), the fallback answers.
    let t = Instant::now();
    let m = svc
        .lookup_by(
            "lv",
            &users(&["u1"]),
            Some(Instant::now() + Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(m.statuses, [FieldStatus::Stale; 2]);
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_millis(190),
        "{took:?}"
    );
    // No deadline: the configured online_timeout (200 ms).
    let t = Instant::now();
    let m = svc.lookup("lv", &users(&["u1"])).await.unwrap();
    let took = t.elapsed();
    assert_eq!(m.statuses, [FieldStatus::Stale; 2]);
    assert!(
        took >= Duration::from_millis(195) && took < Duration::from_millis(400),
        "{took:?}"
    );
    assert!(m.degraded.unwrap().reason.contains("no answer within"));
    redis.resume();
}
