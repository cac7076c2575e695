//! The `/features` HTTP API through the axum router: the Feast shape,
//! push then read, and errors as `{"error"}` with 400/404 naming the field.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use greenbelt_features::http::router;
use greenbelt_features::online::OnlineStore;
use greenbelt_features::online::service::{CacheOptions, OnlineService};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(app: &axum::Router, path: &str, body: &str) -> (StatusCode, Value) {
    let resp = app
        .clone()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn push_then_read_and_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("o.redb").to_str().unwrap())
        .await
        .unwrap();
    let svc = OnlineService::new(crate::online::defs(), store, CacheOptions::default());
    let app = router(svc);
    let now = greenbelt_features::time::format_ts(greenbelt_features::time::now_us());
    let (s, b) = call(
        &app,
        "/features/push",
        &json!({"feature_view": "user_stats", "df": {"user_id": ["u1"], "event_timestamp": [now], "amount": [3.5], "country": ["NL"]}}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["written"], json!(1));
    let (s, b) = call(
        &app,
        "/features/online",
        r#"{"entities": {"user_id": ["u1", "u2"]}, "features": ["user_stats:amount"]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["metadata"]["feature_names"], json!(["user_id", "amount"]));
    assert_eq!(b["results"][1]["values"], json!([3.5, null]));
    assert_eq!(b["results"][1]["statuses"], json!(["PRESENT", "NOT_FOUND"]));

    let (s, b) = call(
        &app,
        "/features/online",
        r#"{"entities": {"user_id": ["u1"]}, "feature_servic": "model"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["error"].as_str().unwrap().contains("feature_servic"),
        "{b}"
    );
    let (s, b) = call(
        &app,
        "/features/online",
        r#"{"entities": {"user_id": ["u1"]}, "feature_service": "nope"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(b["error"].as_str().unwrap().contains("\"nope\""), "{b}");
    let (s, b) = call(
        &app,
        "/features/online",
        r#"{"entities": {"user_id": [5]}, "features": ["user_stats:amount"]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["error"].as_str().unwrap().contains("entities.user_id[0]"),
        "{b}"
    );
    let (s, b) = call(
        &app,
        "/features/online",
        r#"{"entities": {}, "features": ["user_stats:amount"]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["error"].as_str().unwrap().contains("entities.user_id"),
        "{b}"
    );
    let (s, b) = call(
        &app,
        "/features/push",
        r#"{"feature_view": "ghost", "df": {}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = call(
        &app,
        "/features/push",
        &json!({"feature_view": "user_stats", "df": {"user_id": ["u1"], "event_timestamp": [now], "amount": [-3.5], "country": ["NL"]}}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["error"].as_str().unwrap().contains("range(amount"), "{b}");
    let (s, _) = call(&app, "/features/push", "not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// A push whose event time is far ahead of the server's clock would pin its
/// value: the TTL check never expires it and later pushes, older by event
/// time, would report `written: 0`. It is refused with a 400 naming the
/// row, its event time and the limit; a later honest push still writes.
#[tokio::test]
async fn a_push_from_the_future_is_refused_and_does_not_pin_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("o.redb").to_str().unwrap())
        .await
        .unwrap();
    let svc = OnlineService::new(crate::online::defs(), store, CacheOptions::default());
    let app = router(svc);
    let now_us = greenbelt_features::time::now_us();
    let now = greenbelt_features::time::format_ts(now_us);
    let far = "9999-01-01T00:00:00Z";
    let (s, b) = call(
        &app,
        "/features/push",
        &json!({"feature_view": "user_stats", "df": {
            "user_id": ["u1", "u2"], "event_timestamp": [now, far],
            "amount": [1.0, 9.0], "country": ["NL", "NL"]}})
        .to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let e = b["error"].as_str().unwrap();
    assert!(
        e.contains("df row 1")
            && e.contains("9999-01-01T00:00:00")
            && e.contains("the limit is 5m ahead")
            && e.contains("max_clock_skew"),
        "{e}"
    );
    // Nothing of the refused push was written.
    let (_, b) = call(
        &app,
        "/features/online",
        r#"{"entities": {"user_id": ["u1", "u2"]}, "features": ["user_stats:amount"]}"#,
    )
    .await;
    assert_eq!(
        b["results"][1]["statuses"],
        json!(["NOT_FOUND", "NOT_FOUND"])
    );
    // Within the skew (a clock a minute ahead) is fine, and a later push
    // with the current time still replaces values.
    let soon = greenbelt_features::time::format_ts(now_us + 60_000_000);
    for (t, amount) in [(soon.as_str(), 2.0), (now.as_str(), 3.0)] {
        let (s, b) = call(
            &app,
            "/features/push",
            &json!({"feature_view": "user_stats", "df": {
                "user_id": ["u2"], "event_timestamp": [t], "amount": [amount], "country": ["NL"]}})
            .to_string(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (_, b) = call(
        &app,
        "/features/online",
        r#"{"entities": {"user_id": ["u2"]}, "features": ["user_stats:amount"]}"#,
    )
    .await;
    assert_eq!(
        b["results"][1]["values"],
        json!([2.0]),
        "the newer event wins"
    );
}

/// The skew is configurable in features.toml (`[push] max_clock_skew`).
#[tokio::test]
async fn the_clock_skew_limit_is_configurable() {
    let text = format!(
        "{}\n[push]\nmax_clock_skew = \"10s\"\n",
        crate::online::DEFS
    );
    let defs = std::sync::Arc::new(
        greenbelt_features::Definitions::parse(&text, std::path::Path::new("/tmp")).unwrap(),
    );
    assert_eq!(defs.push_max_clock_skew_us, 10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("o.redb").to_str().unwrap())
        .await
        .unwrap();
    let app = router(OnlineService::new(defs, store, CacheOptions::default()));
    let in_a_minute =
        greenbelt_features::time::format_ts(greenbelt_features::time::now_us() + 60_000_000);
    let (s, b) = call(
        &app,
        "/features/push",
        &json!({"feature_view": "user_stats", "df": {
            "user_id": ["u1"], "event_timestamp": [in_a_minute], "amount": [1.0], "country": ["NL"]}})
        .to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b["error"].as_str().unwrap().contains("10s ahead"), "{b}");
    let bad = format!(
        "{}\n[push]\nmax_clock_skew = \"soon\"\n",
        crate::online::DEFS
    );
    let e = greenbelt_features::Definitions::parse(&bad, std::path::Path::new("/tmp"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[push] max_clock_skew"), "{e}");
}

/// A pushed value that breaks one of the view's contract rules is refused
/// with a 400 naming the row, the feature, the value and the rule.
#[tokio::test]
async fn a_push_that_breaks_the_contract_names_row_feature_value_and_rule() {
    let text = crate::online::DEFS.replace(
        r#"rules = [{ check = "range", column = "amount", min = 0.0 }]"#,
        r#"rules = [
  { check = "range", column = "amount", min = 0.0 },
  { check = "allowed", column = "country", values = ["NL", "DE"] },
  { check = "not_null", column = "country" },
  { check = "range", column = "amount", max = 1.0, mostly = 0.5 },
]"#,
    );
    let defs = std::sync::Arc::new(
        greenbelt_features::Definitions::parse(&text, std::path::Path::new("/tmp")).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("o.redb").to_str().unwrap())
        .await
        .unwrap();
    let app = router(OnlineService::new(defs, store, CacheOptions::default()));
    let now = greenbelt_features::time::format_ts(greenbelt_features::time::now_us());
    let push = |amount: Vec<Value>, country: Vec<Value>| {
        let n = amount.len();
        json!({"feature_view": "user_stats", "df": {
            "user_id": (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>(),
            "event_timestamp": vec![now.clone(); n],
            "amount": amount, "country": country}})
        .to_string()
    };
    let (s, b) = call(
        &app,
        "/features/push",
        &push(
            vec![json!(1.0), json!(-2.5)],
            vec![json!("NL"), json!("NL")],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let e = b["error"].as_str().unwrap();
    assert!(
        e.contains("df row 1")
            && e.contains("feature \"amount\" = -2.5")
            && e.contains("range(amount in [0, inf])"),
        "{e}"
    );
    let (s, b) = call(
        &app,
        "/features/push",
        &push(vec![json!(1.0), json!(2.0)], vec![json!("NL"), json!("FR")]),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let e = b["error"].as_str().unwrap();
    assert!(
        e.contains("df row 1")
            && e.contains("feature \"country\" = FR")
            && e.contains("allowed(country)"),
        "{e}"
    );
    let (s, b) = call(
        &app,
        "/features/push",
        &push(vec![json!(1.0)], vec![Value::Null]),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("feature \"country\" = null"),
        "{b}"
    );
    // A `mostly` rule judges materialized data, not one pushed value.
    let (s, b) = call(
        &app,
        "/features/push",
        &push(vec![json!(5.0)], vec![json!("DE")]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// Feast's feature-server routes: the body a Feast client sends to `/push`
/// and `/get-online-features`, answered in Feast's shape.
#[tokio::test]
async fn feast_clients_work_by_changing_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path().join("o.redb").to_str().unwrap())
        .await
        .unwrap();
    let svc = OnlineService::new(crate::online::defs(), store, CacheOptions::default());
    let app = router(svc);
    let now = greenbelt_features::time::format_ts(greenbelt_features::time::now_us());
    // push_source_name: the view itself, as Feast's PushSource of one view.
    let (s, b) = call(
        &app,
        "/push",
        &json!({
            "push_source_name": "user_stats",
            "df": {"user_id": ["u1"], "event_timestamp": [now], "amount": [7.25], "country": ["SE"]},
            "to": "online",
            "allow_registry_cache": true,
        })
        .to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["pushed"][0]["feature_view"], "user_stats");
    assert_eq!(b["pushed"][0]["written"], 1);
    let (s, b) = call(
        &app,
        "/get-online-features",
        r#"{"features": ["user_stats:amount", "user_stats:country"], "entities": {"user_id": ["u1"]}, "full_feature_names": true}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["metadata"]["feature_names"],
        json!(["user_id", "user_stats__amount", "user_stats__country"])
    );
    assert_eq!(b["results"][1]["values"], json!([7.25]));
    assert_eq!(b["results"][2]["statuses"], json!(["PRESENT"]));

    for (body, status, needle) in [
        (
            json!({"push_source_name": "nope", "df": {}}),
            StatusCode::NOT_FOUND,
            "push_source_name \"nope\"",
        ),
        (
            json!({"push_source_name": "user_stats", "df": {}, "to": "offline"}),
            StatusCode::BAD_REQUEST,
            "online store only",
        ),
        (
            json!({"push_source_name": "user_stats", "df": {}, "to": "lake"}),
            StatusCode::BAD_REQUEST,
            "expected online",
        ),
        (
            json!({"push_sorce_name": "user_stats", "df": {}}),
            StatusCode::BAD_REQUEST,
            "push_sorce_name",
        ),
    ] {
        let (s, b) = call(&app, "/push", &body.to_string()).await;
        assert_eq!(s, status, "{body}: {b}");
        assert!(b["error"].as_str().unwrap().contains(needle), "{b}");
    }
}
