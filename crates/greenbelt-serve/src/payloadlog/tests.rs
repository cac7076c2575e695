//! Unit tests of the payload log: event format, queue, sampling, rotation, settings.

use super::*;
use greenbelt_core::TensorData;

fn payload(request_id: &str) -> Payload {
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_780_000_000_123_456);
    Payload {
        received: at,
        answered: at + Duration::from_micros(1500),
        request_id: request_id.into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        model: "logreg".into(),
        version: "2".into(),
        track: "stable",
        client_id: Some("client-7".into()),
        inputs: vec![
            Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![1.0, 2.5, 3.0, 4.0])).unwrap(),
        ],
        outputs: vec![Tensor::new("label", vec![2], TensorData::Int64(vec![0, 1])).unwrap()],
    }
}

#[test]
fn the_two_events_share_the_id_and_carry_v2_bodies() {
    let mut buf = Vec::new();
    jsonl_lines(&payload("req-1"), "http://host/greenbelt", &mut buf);
    let events: Vec<serde_json::Value> = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    let (req, resp) = (&events[0], &events[1]);
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], "req-1");
        assert_eq!(e["source"], "http://host/greenbelt/logreg");
        assert_eq!(e["datacontenttype"], "application/json");
        assert_eq!(e["inferenceservicename"], "logreg");
        assert_eq!(e["modelversion"], "2");
        assert_eq!(e["endpoint"], "stable");
        assert_eq!(e["traceid"], "0af7651916cd43dd8448eb211c80319c");
    }
    assert_eq!(req["type"], "org.kubeflow.serving.inference.request");
    assert_eq!(resp["type"], "org.kubeflow.serving.inference.response");
    assert_eq!(req["time"], "2026-05-28T20:26:40.123456Z");
    assert_eq!(resp["time"], "2026-05-28T20:26:40.124956Z");
    assert_eq!(
        req["data"],
        serde_json::json!({"id": "client-7", "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.5, 3.0, 4.0]}
        ]})
    );
    assert_eq!(
        resp["data"],
        serde_json::json!({"model_name": "logreg", "model_version": "2", "id": "client-7",
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]}]})
    );
}

#[test]
fn binary_mode_headers_and_body_match_the_structured_event() {
    let p = payload("req-2");
    let a = Attributes::of(&p, Kind::Response, "http://h/greenbelt");
    let headers: std::collections::HashMap<_, _> = a.headers().into_iter().collect();
    assert_eq!(headers["ce-id"], "req-2");
    assert_eq!(headers["ce-type"], RESPONSE_TYPE);
    assert_eq!(headers["ce-specversion"], "1.0");
    assert_eq!(headers["ce-source"], "http://h/greenbelt/logreg");
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&data(&p, Kind::Response)).unwrap();
    assert_eq!(body["outputs"][0]["data"], serde_json::json!([0, 1]));
    let nats = nats::Nats::from_config(&PayloadLogConfig::default());
    assert_eq!(
        nats.subject_for("fraud.v2", Kind::Request),
        "greenbelt.payloads.fraud_v2.request"
    );
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    // Nobody reads the queue: it holds 2 requests, the rest are dropped.
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    let counters = PayloadCounters::default();
    let log = PayloadLog::over(tx, counters.clone());
    let started = tokio::time::Instant::now();
    for i in 0..100 {
        log.offer(payload(&format!("r{i}")));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counters.dropped.get(), 2 * 98);
    assert_eq!(rx.try_iter().count(), 2);
    // A log whose sink has gone also drops and counts.
    drop(rx);
    log.offer(payload("late"));
    assert_eq!(counters.dropped.get(), 2 * 99);
}

#[test]
fn sampling_follows_the_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = PayloadLogConfig {
        sink: Sink::Jsonl,
        fraction: 0.25,
        path: dir.path().to_path_buf(),
        ..PayloadLogConfig::default()
    };
    let log = PayloadLog::start(&config, PayloadCounters::default());
    let kept = (0..4000u64)
        .filter(|i| log.wants(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .count();
    assert!((900..1100).contains(&kept), "kept {kept} of 4000 at 0.25");
    let same = 12345u64.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    assert_eq!(log.wants(same), log.wants(same));
    let none = PayloadLog::start(
        &PayloadLogConfig {
            fraction: 0.0,
            ..config.clone()
        },
        PayloadCounters::default(),
    );
    assert!(!none.wants(same));
    let off = PayloadLog::start(&PayloadLogConfig::default(), PayloadCounters::default());
    assert!(!off.wants(same));
}

#[test]
fn jsonl_files_rotate_at_the_size_limit_and_keep_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut one = Vec::new();
    jsonl_lines(&payload("r"), "http://h/greenbelt", &mut one);
    let config = PayloadLogConfig {
        sink: Sink::Jsonl,
        fraction: 1.0,
        path: dir.path().join("p"),
        // Three requests per file.
        max_file_bytes: 3 * one.len() as u64 + 10,
        max_files: 3,
        ..PayloadLogConfig::default()
    };
    let counters = PayloadCounters::default();
    let log = PayloadLog::start(&config, counters.clone());
    for i in 0..20 {
        // Same-length ids keep every request the same size.
        log.offer(payload(&format!("{}", (b'a' + i) as char)));
    }
    drop(log);
    assert_eq!(counters.events.get(), 40);
    assert_eq!(counters.failed.get(), 0);
    let files = jsonl_files(&dir.path().join("p"));
    assert_eq!(files.len(), 3, "{files:?}");
    let lines: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        })
        .collect();
    for (f, l) in files.iter().zip(&lines) {
        assert!(
            std::fs::metadata(f).unwrap().len() <= config.max_file_bytes,
            "{f:?}"
        );
        assert_eq!(l.len() % 2, 0);
    }
    // 20 requests, 3 per file: 7 files, the 3 newest kept (18..20 last).
    assert_eq!(lines[0].len(), 6);
    assert_eq!(lines[2].len(), 4);
    let last: serde_json::Value = serde_json::from_str(&lines[2][3]).unwrap();
    assert_eq!(last["id"], "t");
    assert_eq!(last["type"], RESPONSE_TYPE);
}

#[test]
fn bad_settings_name_the_field() {
    for (config, field) in [
        (
            PayloadLogConfig {
                fraction: 1.5,
                ..Default::default()
            },
            "fraction",
        ),
        (
            PayloadLogConfig {
                sink: Sink::Nats,
                ..Default::default()
            },
            "nats_url",
        ),
        (
            PayloadLogConfig {
                sink: Sink::Nats,
                nats_url: Some("nats://h:4222".into()),
                subject: "a.*".into(),
                ..Default::default()
            },
            "subject",
        ),
        (
            PayloadLogConfig {
                queue: 0,
                ..Default::default()
            },
            "queue",
        ),
    ] {
        let e = config.validate().unwrap_err();
        assert!(e.contains(field), "{e}");
    }
    assert!(PayloadLogConfig::default().validate().is_ok());
}
