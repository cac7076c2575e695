//! The cost meter on a live server: predictions and wire bytes are counted
//! exactly (the client's own byte counts), a batched version is charged
//! its batches' CPU, a gRPC request is metered like a REST one, an
//! unloaded version stops accruing memory and leaves `/metrics` but keeps
//! its dollars in the ledger's report, and
//! `/admin/cost` refuses a bad query with a JSON error.

use std::time::Duration;

use greenbelt_serve::grpc::pb;
use greenbelt_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn requests_are_metered_exactly_and_batches_charge_their_version() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "plain", 1);
            copy_model(r, "logreg", 1, "batched", 1);
            write_model_config(
                r,
                "batched",
                "[batching]\nmax_batch_size = 16\nmax_queue_delay_us = 2000\n",
            );
        },
        "[telemetry]\nlog_requests = false\n",
    )
    .await;
    let body = serde_json::to_vec(&logreg_request(3)).unwrap();
    let (mut sent, mut received) = (0usize, 0usize);
    for _ in 0..40 {
        let r = s
            .client
            .post(format!("{}/v2/models/plain/infer", s.http))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        sent += body.len();
        received += r.bytes().await.unwrap().len();
    }
    // concurrent requests, so the batcher merges some
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let (c, url, b) = (
                s.client.clone(),
                format!("{}/v2/models/batched/infer", s.http),
                body.clone(),
            );
            tokio::spawn(async move {
                c.post(url)
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let (status, view) = s.get("/admin/cost?by=version").await;
    assert_eq!(status, 200, "{view}");
    let row = |name: &str| -> Value {
        view["snapshot"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["deployment"] == name)
            .unwrap()
            .clone()
    };
    let plain = row("plain");
    let u = &plain["usage"];
    assert_eq!(u["requests"], 40);
    assert_eq!(u["predictions"], 120);
    assert_eq!(u["ingress_bytes"].as_f64().unwrap() as usize, sent);
    assert_eq!(u["egress_bytes"].as_f64().unwrap() as usize, received);
    assert!(u["compute_cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(u["wall_seconds"].as_f64().unwrap() > 0.0);
    assert!(u["memory_gib_hours"].as_f64().unwrap() > 0.0);
    assert!(plain["dollars"]["egress"].as_f64().unwrap() > 0.0);
    let batched = row("batched");
    assert_eq!(batched["usage"]["predictions"], 96);
    assert!(batched["usage"]["compute_cpu_seconds"].as_f64().unwrap() > 0.0);
    let groups = view["report"]["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["key"] == "plain/1"), "{view}");

    // gRPC is metered too
    let mut grpc = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let raw: Vec<u8> = (0..2)
        .flat_map(|_| logreg_row())
        .flat_map(|x| x.to_le_bytes())
        .collect();
    grpc.model_infer(pb::ModelInferRequest {
        model_name: "plain".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![2, 20],
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (_, view) = s.get("/admin/cost").await;
    let plain = view["snapshot"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["deployment"] == "plain")
        .unwrap()
        .clone();
    assert_eq!(plain["usage"]["predictions"], 122);

    // unloaded: its dollars stay, its memory stops
    let r = s
        .client
        .post(format!("{}/v2/repository/models/plain/unload", s.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let held = |v: &Value| {
        v["snapshot"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["deployment"] == "plain")
            .unwrap()["usage"]["memory_gib_hours"]
            .as_f64()
            .unwrap()
    };
    let (_, a) = s.get("/admin/cost").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, b) = s.get("/admin/cost").await;
    assert_eq!(held(&a), held(&b), "an unloaded version accrued memory");
    // its series leave /metrics with the version's others; the report keeps it
    let text = s.metrics_text().await;
    assert!(!text.contains("deployment=\"plain\""), "{text}");
    assert!(text.contains(
        "greenbelt_predictions_total{model=\"batched\",version=\"1\",deployment=\"batched\"} 96"
    ));
    let row = b["snapshot"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["deployment"] == "plain")
        .unwrap()
        .clone();
    assert_eq!(row["usage"]["predictions"], 122);

    for bad in [
        "/admin/cost?since=soon",
        "/admin/cost?by=colour",
        "/admin/cost?colour=1",
    ] {
        let (status, body) = s.get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    s.stop().await;
}
