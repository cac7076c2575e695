//! Safe to expose: tokens and roles on every state-changing endpoint and on
//! request data, model control off by default, a public bind refused without
//! tokens, release tracks and analysis samples that clients cannot steer,
//! duplicate outputs refused, connections that cannot be held forever.
//! Every check goes through the real server over HTTP, gRPC or raw TCP.

use std::path::Path;
use std::time::Duration;

use greenbelt_serve::grpc::pb;
use greenbelt_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use greenbelt_serve::{Config, Server};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use crate::support::*;

const TOKENS: &str = "[[tokens]]\nname = \"root\"\nrole = \"admin\"\ntoken = \"tok-root\"\n\n[[tokens]]\nname = \"ci\"\nrole = \"deployer\"\ntoken = \"tok-ci\"\n\n[[tokens]]\nname = \"etl\"\nrole = \"feature-writer\"\ntoken = \"tok-etl\"\n\n[[tokens]]\nname = \"analyst\"\nrole = \"viewer\"\ntoken = \"tok-view\"\n";

fn logreg(r: &Path) {
    copy_model(r, "logreg", 1, "logreg", 1);
}

/// A server with the four tokens above and model control on.
async fn with_tokens(dir: &tempfile::TempDir) -> TestServer {
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, TOKENS).unwrap();
    start(
        logreg,
        &format!(
            "[auth]\ntokens_file = \"{}\"\nmodel_control = \"explicit\"\n",
            file.display()
        ),
    )
    .await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn grpc_unload(s: &TestServer, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::RepositoryModelUnloadRequest {
        model_name: "logreg".into(),
        ..Default::default()
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", bearer(t).parse().unwrap());
    }
    c.repository_model_unload(req).await.map(|_| ())
}

#[tokio::test]
async fn model_control_is_off_by_default_over_rest_and_grpc() {
    let mut s = start(logreg, "[auth]\n").await;
    let (status, body) = s
        .post("/v2/repository/models/logreg/unload", &json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("model_control"),
        "{body}"
    );
    let e = grpc_unload(&s, None).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Still serving.
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn state_changes_and_request_data_need_a_token_of_the_right_role() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_tokens(&dir).await;
    let unload = "/v2/repository/models/logreg/unload";
    let load = "/v2/repository/models/logreg/load";
    let r = s
        .client
        .post(format!("{}{unload}", s.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let (status, _) = s
        .post_with(unload, &json!({}), &[("authorization", &bearer("wrong"))])
        .await;
    assert_eq!(status, 401);
    let (status, body) = s
        .post_with(unload, &json!({}), &[("authorization", &bearer("tok-etl"))])
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("role deployer"),
        "{body}"
    );
    // gRPC: the same rules.
    assert_eq!(
        grpc_unload(&s, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        grpc_unload(&s, Some("tok-view")).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    grpc_unload(&s, Some("tok-ci")).await.unwrap();
    let (status, body) = s
        .post_with(load, &json!({}), &[("authorization", &bearer("tok-ci"))])
        .await;
    assert_eq!(status, 200, "{body}");
    // Inference and reads stay open...
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);
    // ...but a token that matches nothing is refused there as well: the
    // infer routes, routed apart from the rest, are behind the same layer.
    for path in [
        "/v2/models/logreg/infer",
        "/v2/models/logreg/versions/1/infer",
    ] {
        let (status, _) = s
            .post_with(
                path,
                &logreg_request(1),
                &[("authorization", &bearer("wrong"))],
            )
            .await;
        assert_eq!(status, 401, "{path}");
    }
    // The API metrics sit outside the layer: refusals are counted by route.
    let text = s.metrics_text().await;
    assert!(
        text.contains(
            "greenbelt_http_requests_total{route=\"/v2/repository/models/{model}/unload\",method=\"POST\",status=\"401\"} 2"
        ),
        "{text}"
    );
    assert_eq!(s.get("/v2/models/logreg").await.0, 200);
    assert_eq!(s.get("/metrics").await.0, 200);
    // Shadow reports carry request inputs: a viewer (or better) only.
    assert_eq!(s.get("/admin/shadow/logreg").await.0, 401);
    let (status, body) = s
        .get_with(
            "/admin/shadow/logreg",
            &[("authorization", &bearer("tok-view"))],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // An unknown write endpoint is closed, not open.
    let (status, _) = s
        .post_with(
            "/admin/reset",
            &json!({}),
            &[("authorization", &bearer("tok-ci"))],
        )
        .await;
    assert_eq!(status, 403);
    s.stop().await;
}

#[tokio::test]
async fn forcing_a_release_track_needs_a_deployer_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_tokens(&dir).await;
    let path = "/v2/models/logreg/infer";
    let body = logreg_request(1);
    let (status, msg) = s
        .post_with(path, &body, &[("x-greenbelt-track", "canary")])
        .await;
    assert_eq!(status, 401, "{msg}");
    assert!(
        msg["error"].as_str().unwrap().contains("x-greenbelt-track"),
        "{msg}"
    );
    let (status, _) = s
        .post_with(
            path,
            &body,
            &[
                ("x-greenbelt-track", "stable"),
                ("authorization", &bearer("tok-etl")),
            ],
        )
        .await;
    assert_eq!(status, 403);
    let (status, msg) = s
        .post_with(
            path,
            &body,
            &[
                ("x-greenbelt-track", "stable"),
                ("authorization", &bearer("tok-ci")),
            ],
        )
        .await;
    assert_eq!(status, 200, "{msg}");
    s.stop().await;
}

#[tokio::test]
async fn a_public_address_without_tokens_refuses_to_start_unless_insecure() {
    let repo = tempfile::tempdir().unwrap();
    let text = |extra: &str| {
        format!(
            "[server]\nhttp_addr = \"0.0.0.0:0\"\ngrpc_addr = \"\"\n[repository]\npath = \"{}\"\n{extra}",
            repo.path().display()
        )
    };
    let config = Config::from_toml_str(&text(""), Path::new("t.toml"), std::iter::empty()).unwrap();
    let e = Server::build(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("0.0.0.0:0") && e.contains("--insecure"), "{e}");
    assert!(e.contains("tokens_file"), "{e}");
    let config = Config::from_toml_str(
        &text("[auth]\ninsecure = true\n"),
        Path::new("t.toml"),
        std::iter::empty(),
    )
    .unwrap();
    assert!(Server::build(config).await.is_ok());
}

#[tokio::test]
async fn client_errors_are_not_release_analysis_samples() {
    let mut s = start(logreg, "").await;
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    for _ in 0..5 {
        assert_eq!(s.post("/v2/models/logreg/infer", &bad).await.0, 400);
    }
    let (_, st) = s.get("/admin/deployments/logreg").await;
    assert_eq!(st["versions"]["1"]["client_errors"], 5, "{st}");
    assert_eq!(st["versions"]["1"]["requests"], 0, "{st}");
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);
    let (_, st) = s.get("/admin/deployments/logreg").await;
    assert_eq!(st["versions"]["1"]["requests"], 1, "{st}");
    s.stop().await;
}

#[tokio::test]
async fn duplicate_requested_outputs_are_a_400() {
    let mut s = start(logreg, "").await;
    let mut body = logreg_request(1);
    body["outputs"] = json!(vec![json!({"name": "label"}); 50_000]);
    let (status, msg) = s.post("/v2/models/logreg/infer", &body).await;
    assert_eq!(status, 400, "{msg}");
    assert!(
        msg["error"].as_str().unwrap().contains("more than once"),
        "{msg}"
    );
    s.stop().await;
}

/// Read until the server closes the connection (or `limit` passes).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.is_ok()
}

#[tokio::test]
async fn half_a_request_or_an_idle_connection_does_not_hold_a_connection() {
    let mut s = start(
        logreg,
        "header_read_timeout_ms = 300\nidle_timeout_ms = 500\nrequest_timeout_ms = 500\n",
    )
    .await;
    let http = s.http.trim_start_matches("http://").to_string();
    let grpc = s.grpc.trim_start_matches("http://").to_string();
    // Half a request line, then silence.
    let mut c = TcpStream::connect(&http).await.unwrap();
    c.write_all(b"POST /v2/models/logreg/infer HT")
        .await
        .unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(5)).await);
    // A connection that never says anything, on either listener.
    for addr in [&http, &grpc] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut c, Duration::from_secs(5)).await,
            "{addr} kept an idle connection open"
        );
    }
    s.stop().await;
}

/// The idle timer re-arms lazily (from the last byte moved, when it fires):
/// a keep-alive connection that sends a request every 200 ms outlives three
/// idle periods of 500 ms, and is closed once it falls silent.
#[tokio::test]
async fn a_busy_connection_outlives_the_idle_timeout_and_a_silent_one_does_not() {
    let mut s = start(logreg, "idle_timeout_ms = 500\nrequest_timeout_ms = 500\n").await;
    let http = s.http.trim_start_matches("http://").to_string();
    let mut c = TcpStream::connect(&http).await.unwrap();
    let mut buf = [0u8; 1024];
    for i in 0..8 {
        c.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "request {i} on a connection busy for {} ms",
            i * 200
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let silent = tokio::time::Instant::now();
    assert!(closed_within(&mut c, Duration::from_secs(5)).await);
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed {waited:?} after the last answer, before the idle timeout"
    );
    s.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let mut s = start(logreg, "max_connections = 2\n").await;
    let http = s.http.trim_start_matches("http://").to_string();
    let held1 = TcpStream::connect(&http).await.unwrap();
    let _held2 = TcpStream::connect(&http).await.unwrap();
    let mut third = TcpStream::connect(&http).await.unwrap();
    third
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "answered beyond max_connections");
    drop(held1);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("answered once a slot was free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.stop().await;
}

/// The dashboard page is static and public; its data (live traffic of every
/// deployment) needs a viewer token when tokens are configured.
#[tokio::test]
async fn dashboard_data_needs_a_viewer_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_tokens(&dir).await;
    let (status, _) = s.get("/dashboard/data").await;
    assert_eq!(status, 401);
    let (status, data) = s
        .get_with("/dashboard/data", &[("authorization", &bearer("tok-view"))])
        .await;
    assert_eq!(status, 200);
    assert_eq!(data["models"][0]["name"], "logreg");
    let page = s
        .client
        .get(format!("{}/dashboard", s.http))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/dashboard/data"));
    s.stop().await;
}

#[tokio::test]
async fn posting_labels_needs_a_feature_writer_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_tokens(&dir).await;
    let body = json!({"labels": [{"id": "r1", "label": 1}]});
    let (status, _) = s.post("/v2/models/logreg/labels", &body).await;
    assert_eq!(status, 401);
    let (status, _) = s
        .post_with(
            "/v2/models/logreg/labels",
            &body,
            &[("authorization", &bearer("tok-view"))],
        )
        .await;
    assert_eq!(status, 403);
    let (status, got) = s
        .post_with(
            "/v2/models/logreg/labels",
            &body,
            &[("authorization", &bearer("tok-etl"))],
        )
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["unknown"], 1, "{got}");
    s.stop().await;
}
