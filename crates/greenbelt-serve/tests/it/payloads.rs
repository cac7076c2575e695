//! The sampled payload log end to end: a served model with `fraction = 1.0`
//! writes a request and a response CloudEvent per answered request to
//! rotating JSONL files, or publishes them to a real NATS JetStream
//! (`GREENBELT_TEST_NATS_URL`; skipped with a printed line when unset).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use greenbelt_serve::payloadlog::{REQUEST_TYPE, RESPONSE_TYPE, jsonl_files};
use serde_json::Value;

use crate::support::{TestServer, copy_model, logreg_request, logreg_row, start};

/// Send one logreg request with our request id; the response body.
async fn infer(s: &TestServer, request_id: &str) -> Value {
    let (status, body) = s
        .post_with(
            "/v2/models/logreg/infer",
            &logreg_request(1),
            &[("x-request-id", request_id)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The request event's and the response event's V2 bodies agree with what
/// was sent and answered.
fn check_bodies(request: &Value, response: &Value, answered: &Value) {
    let input = &request["inputs"][0];
    assert_eq!(input["name"], "input");
    assert_eq!(input["datatype"], "FP32");
    assert_eq!(input["shape"], serde_json::json!([1, 20]));
    // FP32 data round-trips exactly through its shortest JSON form.
    let logged: Vec<f32> = input["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(logged, logreg_row());
    assert_eq!(response["model_name"], "logreg");
    assert_eq!(response["model_version"], "1");
    assert_eq!(response["outputs"], answered["outputs"]);
}

fn lines(dir: &Path) -> Vec<Value> {
    jsonl_files(dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<Value>>()
        })
        .collect()
}

#[tokio::test]
async fn jsonl_sink_writes_both_events_and_rotates() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("payloads");
    let max_file_bytes = 3000;
    let extra = format!(
        "[telemetry.payload_log]\nsink = \"jsonl\"\nfraction = 1.0\npath = \"{}\"\nmax_file_bytes = {max_file_bytes}\nmax_files = 100\n",
        dir.display()
    );
    let s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), &extra).await;
    let mut answers = Vec::new();
    for i in 0..6 {
        answers.push(infer(&s, &format!("payload-{i}")).await);
    }
    // A failed request is not logged.
    let (status, _) = s
        .post(
            "/v2/models/logreg/infer",
            &serde_json::json!({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}),
        )
        .await;
    assert_eq!(status, 400);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut events = lines(&dir);
    while events.len() < 12 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        events = lines(&dir);
    }
    assert_eq!(events.len(), 12, "{events:#?}");
    for (i, pair) in events.chunks(2).enumerate() {
        let (req, resp) = (&pair[0], &pair[1]);
        assert_eq!(req["id"], format!("payload-{i}"));
        assert_eq!(resp["id"], req["id"]);
        assert_eq!(req["type"], REQUEST_TYPE);
        assert_eq!(resp["type"], RESPONSE_TYPE);
        assert_eq!(req["specversion"], "1.0");
        assert_eq!(req["inferenceservicename"], "logreg");
        assert!(
            req["source"]
                .as_str()
                .unwrap()
                .ends_with("/greenbelt/logreg")
        );
        assert_eq!(req["traceid"], resp["traceid"]);
        check_bodies(&req["data"], &resp["data"], &answers[i]);
    }
    // Six requests of ~1.3 KB in 3000-byte files: two requests a file,
    // each file within the limit and holding whole requests.
    let files = jsonl_files(&dir);
    let mut total = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.len() as u64 <= max_file_bytes, "{f:?}: {}", text.len());
        assert_eq!(text.lines().count() % 2, 0, "{f:?}");
        total += text.len() as u64;
    }
    assert!(files.len() >= 3, "{files:?}");
    assert!(
        files.len() as u64 >= total.div_ceil(max_file_bytes),
        "{files:?}"
    );
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains("greenbelt_payload_log_events_total 12"),
        "{metrics}"
    );
    assert!(metrics.contains("greenbelt_payload_log_dropped_total 0"));
    assert!(metrics.contains("greenbelt_payload_log_failed_total 0"));
}

#[tokio::test]
async fn nats_sink_publishes_binary_mode_cloudevents_to_jetstream() {
    let Ok(url) = std::env::var("GREENBELT_TEST_NATS_URL") else {
        println!("SKIP: GREENBELT_TEST_NATS_URL is not set; NATS payload-log test skipped");
        return;
    };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let subject = format!("greenbelt.test{tag}");
    let stream = format!("GREENBELT_TEST_{tag}");
    let extra = format!(
        "[telemetry.payload_log]\nsink = \"nats\"\nfraction = 1.0\nnats_url = \"{url}\"\nsubject = \"{subject}\"\nstream = \"{stream}\"\nstream_max_bytes = 10000000\ntimeout_ms = 3000\n"
    );
    let s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), &extra).await;
    let mut answers = Vec::new();
    for i in 0..3 {
        answers.push(infer(&s, &format!("nats-{tag}-{i}")).await);
    }

    let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url.as_str()))
        .await
        .expect("connect timed out")
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    // The server's sink creates the stream on its first publish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let jstream = loop {
        match js.get_stream(&stream).await {
            Ok(st) => break st,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("no stream {stream}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let consumer = jstream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("{subject}.>"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 6 && tokio::time::Instant::now() < deadline {
        let mut batch = consumer
            .fetch()
            .max_messages(6 - got.len())
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            m.ack().await.unwrap();
            got.push(m);
        }
    }
    let _ = js.delete_stream(&stream).await;
    assert_eq!(got.len(), 6);
    let header = |m: &async_nats::jetstream::Message, name: &str| -> String {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| panic!("{} has no {name} header", m.subject))
    };
    for (i, pair) in got.chunks(2).enumerate() {
        let (req, resp) = (&pair[0], &pair[1]);
        assert_eq!(req.subject.as_str(), format!("{subject}.logreg.request"));
        assert_eq!(resp.subject.as_str(), format!("{subject}.logreg.response"));
        assert_eq!(header(req, "ce-id"), format!("nats-{tag}-{i}"));
        assert_eq!(header(resp, "ce-id"), header(req, "ce-id"));
        assert_eq!(header(req, "ce-type"), REQUEST_TYPE);
        assert_eq!(header(resp, "ce-type"), RESPONSE_TYPE);
        assert_eq!(header(req, "ce-specversion"), "1.0");
        assert!(header(req, "ce-source").ends_with("/greenbelt/logreg"));
        assert_eq!(header(req, "content-type"), "application/json");
        assert_eq!(header(req, "ce-traceid"), header(resp, "ce-traceid"));
        let request: Value = serde_json::from_slice(&req.payload).unwrap();
        let response: Value = serde_json::from_slice(&resp.payload).unwrap();
        check_bodies(&request, &response, &answers[i]);
    }
    // The acks are counted just after the messages land: wait a moment.
    let mut metrics = s.metrics_text().await;
    while !metrics.contains("greenbelt_payload_log_events_total 6")
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = s.metrics_text().await;
    }
    assert!(
        metrics.contains("greenbelt_payload_log_events_total 6"),
        "{metrics}"
    );
    assert!(metrics.contains("greenbelt_payload_log_failed_total 0"));
}
