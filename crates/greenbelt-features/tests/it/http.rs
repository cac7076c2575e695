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
