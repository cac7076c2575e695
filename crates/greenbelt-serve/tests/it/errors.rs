//! Every client mistake gets a clear JSON error with the right status.

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn client_mistakes_get_4xx_json_errors_naming_the_field() {
    let mut s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), "").await;
    let row: Vec<f32> = logreg_row();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v2/models/nope/infer",
            logreg_request(1),
            404,
            "unknown model \"nope\"",
        ),
        (
            "/v2/models/logreg/versions/9/infer",
            logreg_request(1),
            404,
            "no version \"9\"",
        ),
        (
            "/v2/models/logreg/versions/abc/infer",
            logreg_request(1),
            404,
            "no version \"abc\"",
        ),
        (
            "/v2/models/logreg/infer",
            json!({"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP32", "data": row}]}),
            400,
            "unknown input \"x\"",
        ),
        (
            "/v2/models/logreg/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP64", "data": row}]}),
            400,
            "input \"input\": datatype is FP64, model expects FP32",
        ),
        (
            "/v2/models/logreg/infer",
            json!({"inputs": [{"name": "input", "shape": [2, 10], "datatype": "FP32", "data": row}]}),
            400,
            "input \"input\": shape is [2, 10]",
        ),
        (
            "/v2/models/logreg/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP32", "data": [1, 2]}]}),
            400,
            "holds 20 elements but 2",
        ),
        (
            "/v2/models/logreg/infer",
            json!({"inputs": []}),
            400,
            "missing input \"input\"",
        ),
        (
            "/v2/models/logreg/infer",
            json!({"nothing": 1}),
            400,
            "missing field `inputs`",
        ),
        (
            "/v2/models/logreg/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP32", "data": row}],
                   "outputs": [{"name": "nope"}]}),
            400,
            "unknown output \"nope\"",
        ),
        (
            "/v2/models/logreg/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP32", "data": ["a"]}]}),
            400,
            "is not a valid FP32 value",
        ),
    ];
    for (path, body, status, want) in cases {
        let (got, resp) = s.post(path, &body).await;
        assert_eq!(got, status, "{path} {body}: {resp}");
        let msg = resp["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(want),
            "{path}: {msg:?} should contain {want:?}"
        );
    }
    // Not JSON at all, and a bad binary header.
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .body("{{{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .header("Inference-Header-Content-Length", "lots")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Inference-Header-Content-Length")
    );
    // Unknown endpoint.
    assert_eq!(s.get("/v3/nothing").await.0, 404);
    // The server is still healthy after all that.
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let mut s = start(
        |r| copy_model(r, "logreg", 1, "logreg", 1),
        "max_request_bytes = 2048\n",
    )
    .await;
    let (status, body) = s.post("/v2/models/logreg/infer", &logreg_request(64)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("2048-byte limit"),
        "{body}"
    );
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn identity_headers_and_metrics() {
    let mut s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), "").await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .header("traceparent", tp)
        .header("x-request-id", "req-42")
        .json(&logreg_request(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let echoed = r.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && echoed != tp,
        "{echoed}"
    );
    let _ = s.infer_logreg("/v2/models/nope/infer").await;
    let text = s.metrics_text().await;
    for want in [
        "greenbelt_requests_total{model=\"logreg\",version=\"1\",protocol=\"rest\",outcome=\"success\"} 1",
        "greenbelt_requests_total{model=\"_unknown\",version=\"\",protocol=\"rest\",outcome=\"client_error\"} 1",
        "greenbelt_request_duration_seconds_count{model=\"logreg\",version=\"1\"} 1",
        "greenbelt_compute_duration_seconds_count{model=\"logreg\",version=\"1\"} 1",
        "greenbelt_queue_duration_seconds_count{model=\"logreg\",version=\"1\"} 1",
        "greenbelt_request_payload_bytes_sum{model=\"logreg\",version=\"1\"} 160",
        "greenbelt_model_ready{model=\"logreg\",version=\"1\"} 1",
        "greenbelt_inflight_requests{model=\"logreg\"} 0",
        "greenbelt_model_load_duration_seconds{model=\"logreg\",version=\"1\"}",
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
    // Health and server metadata.
    assert_eq!(s.get("/v2/health/live").await, (200, json!({"live": true})));
    assert_eq!(
        s.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    let (_, meta) = s.get("/v2").await;
    assert_eq!(meta["name"], "greenbelt");
    s.stop().await;
}

#[tokio::test]
async fn binary_tensor_extension_round_trips() {
    let mut s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), "").await;
    let header = json!({
        "inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP32", "parameters": {"binary_data_size": 80}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}, {"name": "label", "parameters": {"binary_data": false}}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for x in logreg_row() {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let json: Value = serde_json::from_slice(&bytes[..n]).unwrap();
    assert_eq!(json["outputs"][0]["name"], "probabilities");
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert_eq!(json["outputs"][1]["data"], json!([0]));
    let p: Vec<f64> = bytes[n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    assert_close(&p, &logreg_golden_probs(1));
    s.stop().await;
}
