//! The registry's JSON API: reads, writes, bearer-token auth, and errors.

use std::sync::Arc;

use greenbelt_auth::{Auth, ModelControl, Role, TokenSpec};
use greenbelt_registry::http::{ApiState, router};
use serde_json::{Value, json};

/// The registry API behind the server's auth layer, with `tokens`.
async fn serve(tokens: &[TokenSpec]) -> (String, tempfile::TempDir) {
    let (registry, dir) = crate::backends::sqlite().await;
    let auth = Arc::new(Auth::new(tokens, ModelControl::None).unwrap());
    let app = router(Arc::new(ApiState { registry })).layer(axum::middleware::from_fn_with_state(
        auth,
        greenbelt_auth::middleware,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/registry"), dir)
}

async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn version_body(n: u8) -> Value {
    json!({"artifact_uri": format!("file:///a/{n}.onnx"), "sha256": format!("{n:064x}"), "metrics": {"auc": 0.9}})
}

#[tokio::test]
async fn writes_need_a_token_and_record_its_name() {
    use reqwest::Method;
    let tokens = [
        TokenSpec::plain("alice", Role::Deployer, "tok-alice"),
        TokenSpec::plain("root", Role::Admin, "tok-root"),
        TokenSpec::plain("etl", Role::FeatureWriter, "tok-etl"),
    ];
    let (base, _dir) = serve(&tokens).await;
    let (s, b) = call(
        Method::POST,
        &format!("{base}/models/fraud/versions"),
        None,
        Some(version_body(1)),
    )
    .await;
    assert_eq!(s, 401, "{b}");
    let (s, b) = call(
        Method::POST,
        &format!("{base}/models/fraud/versions"),
        Some("wrong"),
        Some(version_body(1)),
    )
    .await;
    assert_eq!(s, 401, "{b}");
    // A token whose role is not deployer: 403.
    let (s, b) = call(
        Method::POST,
        &format!("{base}/models/fraud/versions"),
        Some("tok-etl"),
        Some(version_body(1)),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("role deployer"),
        "{b}"
    );
    // The actor is the token's name, whatever the body or a header claims.
    let mut body = version_body(1);
    body["created_by"] = json!("mallory");
    let r = reqwest::Client::new()
        .post(format!("{base}/models/fraud/versions"))
        .bearer_auth("tok-alice")
        .header("x-greenbelt-actor", "mallory")
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let b: Value = r.json().await.unwrap();
    assert_eq!((s, b["version"].as_i64()), (201, Some(1)), "{b}");
    assert_eq!(b["created_by"], "alice");
    call(
        Method::POST,
        &format!("{base}/models/fraud/versions"),
        Some("tok-alice"),
        Some(version_body(2)),
    )
    .await;
    let (s, _) = call(
        Method::PUT,
        &format!("{base}/models/fraud/aliases/champion"),
        None,
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(s, 401);
    for v in [1, 2] {
        let (s, b) = call(
            Method::PUT,
            &format!("{base}/models/fraud/aliases/champion"),
            Some("tok-alice"),
            Some(json!({"version": v, "reason": "r"})),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = call(
        Method::POST,
        &format!("{base}/models/fraud/aliases/champion/rollback"),
        Some("tok-alice"),
        Some(json!({"reason": "drill"})),
    )
    .await;
    assert_eq!(
        (
            s,
            b["event"]["to_version"].as_i64(),
            b["event"]["actor"].as_str()
        ),
        (200, Some(1), Some("alice")),
        "{b}"
    );
    // Reads are open.
    let (s, b) = call(
        Method::GET,
        &format!("{base}/models/fraud/aliases/champion"),
        None,
        None,
    )
    .await;
    assert_eq!((s, b["version"].as_i64()), (200, Some(1)));
    let (_, b) = call(
        Method::GET,
        &format!("{base}/models/fraud/history?alias=champion"),
        None,
        None,
    )
    .await;
    assert_eq!(b["events"].as_array().unwrap().len(), 3);
    let (_, b) = call(
        Method::GET,
        &format!("{base}/models/fraud/history?alias=champion&at=2000-01-01T00:00:00Z"),
        None,
        None,
    )
    .await;
    assert_eq!(b["version"], Value::Null);
    let (_, b) = call(
        Method::GET,
        &format!("{base}/models/fraud/compare?a=1&b=2"),
        None,
        None,
    )
    .await;
    assert_eq!(b["metrics"]["auc"]["delta"], 0.0);
    let (_, b) = call(Method::GET, &format!("{base}/models"), None, None).await;
    assert_eq!(b["models"], json!(["fraud"]));
}

#[tokio::test]
async fn fault_tagged_versions_need_an_admin() {
    use reqwest::Method;
    let tokens = [
        TokenSpec::plain("alice", Role::Deployer, "tok-alice"),
        TokenSpec::plain("root", Role::Admin, "tok-root"),
    ];
    let (base, _dir) = serve(&tokens).await;
    let mut body = version_body(1);
    body["tags"] = json!({"fault": "error"});
    let url = format!("{base}/models/fraud/versions");
    let (s, b) = call(Method::POST, &url, Some("tok-alice"), Some(body.clone())).await;
    assert_eq!(s, 403, "{b}");
    assert!(b["error"].as_str().unwrap().contains("admin"), "{b}");
    let (s, b) = call(Method::POST, &url, Some("tok-root"), Some(body)).await;
    assert_eq!((s, b["created_by"].as_str()), (201, Some("root")), "{b}");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    use reqwest::Method;
    let (base, _dir) = serve(&[]).await;
    let cases: Vec<(Method, String, Option<Value>, u16, &str)> = vec![
        (
            Method::GET,
            format!("{base}/models/nope/versions"),
            None,
            404,
            "unknown model",
        ),
        (
            Method::GET,
            format!("{base}/models/nope/versions/x"),
            None,
            400,
            "not a positive integer",
        ),
        (
            Method::POST,
            format!("{base}/models/fraud/versions"),
            Some(json!({"sha256": "zz", "artifact_uri": "u"})),
            400,
            "64 hex",
        ),
        (
            Method::POST,
            format!("{base}/models/fraud/versions"),
            Some(json!({"bogus": 1})),
            400,
            "bogus",
        ),
        (
            Method::PUT,
            format!("{base}/models/fraud/aliases/champion"),
            Some(json!({"v": 1})),
            400,
            "expected",
        ),
        (
            Method::PUT,
            format!("{base}/models/fraud/aliases/champion"),
            Some(json!({"version": 5})),
            404,
            "no version 5",
        ),
        (
            Method::POST,
            format!("{base}/models/fraud/aliases/champion/rollback"),
            None,
            404,
            "no alias",
        ),
        (
            Method::GET,
            format!("{base}/models/fraud/history?at=2020-01-01T00:00:00Z"),
            None,
            400,
            "needs `alias`",
        ),
        (
            Method::GET,
            format!("{base}/models/fraud/history?alias=a&at=yesterday"),
            None,
            400,
            "RFC 3339",
        ),
    ];
    for (method, url, body, status, want) in cases {
        let (s, b) = call(method, &url, None, body).await;
        assert_eq!(s, status, "{url}: {b}");
        assert!(
            b["error"].as_str().unwrap_or_default().contains(want),
            "{url}: {b}"
        );
    }
}
