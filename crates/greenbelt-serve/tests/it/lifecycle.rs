//! Batching, shedding, timeouts and graceful drain, through the real server.

use std::time::Duration;

use crate::support::*;

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_answered_correctly() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "logreg", 1);
            write_model_config(
                r,
                "logreg",
                "[batching]\nmax_batch_size = 16\nmax_queue_delay_us = 50000\n",
            );
        },
        "",
    )
    .await;
    let bodies: Vec<_> = (1..=8).map(logreg_request).collect();
    let futs: Vec<_> = bodies
        .iter()
        .map(|b| s.post("/v2/models/logreg/infer", b))
        .collect();
    let results = futures::future::join_all(futs).await;
    let want = logreg_golden_probs(1);
    for (i, (status, body)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        let p = probs(body);
        assert_eq!(
            p.len(),
            2 * (i + 1),
            "each caller gets exactly its own rows back"
        );
        for row in p.chunks(2) {
            assert_close(row, &want);
        }
    }
    let text = s.metrics_text().await;
    let rows = metric(
        &text,
        "greenbelt_batch_size_sum{model=\"logreg\",version=\"1\"}",
    );
    let calls = metric(
        &text,
        "greenbelt_batch_size_count{model=\"logreg\",version=\"1\"}",
    );
    assert_eq!(
        rows, 36.0,
        "1+2+...+8 rows went through the batcher\n{text}"
    );
    assert!(
        calls < 8.0,
        "concurrent requests were merged: {calls} runtime calls for 8 requests"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_full_server_sheds_with_503_and_retry_after() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "logreg", 1);
            write_model_config(
                r,
                "logreg",
                "[batching]\nmax_batch_size = 8\nmax_queue_delay_us = 400000\n",
            );
        },
        "max_inflight = 1\n",
    )
    .await;
    let body = logreg_request(1);
    let slow = s.post("/v2/models/logreg/infer", &body);
    let shed = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.client
            .post(format!("{}/v2/models/logreg/infer", s.http))
            .json(&logreg_request(1))
            .send()
            .await
            .unwrap()
    };
    let ((status, _), shed) = tokio::join!(slow, shed);
    assert_eq!(status, 200);
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(shed.text().await.unwrap().contains("in flight"));
    let text = s.metrics_text().await;
    assert!(
        text.contains("greenbelt_shed_total{reason=\"inflight\"} 1"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn slow_requests_time_out_with_504() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "logreg", 1);
            write_model_config(
                r,
                "logreg",
                "[batching]\nmax_batch_size = 8\nmax_queue_delay_us = 1000000\n",
            );
        },
        "request_timeout_ms = 100\n",
    )
    .await;
    let (status, body) = s.infer_logreg("/v2/models/logreg/infer").await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 100 ms")
    );
    let text = s.metrics_text().await;
    assert!(text.contains("outcome=\"timeout\"} 1"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "logreg", 1);
            write_model_config(
                r,
                "logreg",
                "[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 300000\n",
            );
        },
        "",
    )
    .await;
    let client = s.client.clone();
    let url = format!("{}/v2/models/logreg/infer", s.http);
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&logreg_request(1))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let started = tokio::time::Instant::now();
    s.stop().await;
    for h in in_flight {
        let status = h
            .await
            .unwrap()
            .expect("an in-flight request must get an answer");
        assert_eq!(status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing listens any more.
    assert!(
        reqwest::Client::new()
            .get(format!("{}/v2/health/live", s.http))
            .send()
            .await
            .is_err()
    );
}

/// `/metrics` answers in the format the scraper asks for: OpenMetrics (with
/// `# EOF`) for Prometheus' Accept header, the 0.0.4 text format otherwise,
/// and both carry the scrape-time series (build info, process, batch queue).
#[tokio::test]
async fn metrics_negotiate_openmetrics_and_carry_process_series() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "logreg", 1);
            write_model_config(r, "logreg", "[batching]\nmax_batch_size = 8\n");
        },
        "",
    )
    .await;
    let (status, _) = s.post("/v2/models/logreg/infer", &logreg_request(1)).await;
    assert_eq!(status, 200);
    assert_eq!(s.get("/v2/models/logreg").await.0, 200);
    assert_eq!(s.get("/v2/models/nope/stats").await.0, 404);
    let get = |accept: Option<&'static str>| {
        let mut req = s.client.get(format!("{}/metrics", s.http));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        async move {
            let resp = req.send().await.unwrap();
            let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
            (ct, resp.text().await.unwrap())
        }
    };
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (ct, om) = get(Some(prometheus_accept)).await;
    assert!(
        ct.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ct}"
    );
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE greenbelt_requests counter\n"), "{om}");
    let (ct, text) = get(None).await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    assert!(
        text.contains("# TYPE greenbelt_requests_total counter\n"),
        "{text}"
    );
    for body in [&om, &text] {
        assert!(body.contains(&format!(
            "greenbelt_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(
            metric(
                body,
                "greenbelt_requests_total{model=\"logreg\",version=\"1\",protocol=\"rest\",outcome=\"success\"}"
            ) == 1.0
        );
        // the API outside inference, by route template (inference is not in it)
        assert_eq!(
            metric(
                body,
                "greenbelt_http_requests_total{route=\"/v2/models/{model}\",method=\"GET\",status=\"200\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(
                body,
                "greenbelt_http_requests_total{route=\"/v2/models/{model}/stats\",method=\"GET\",status=\"404\"}"
            ),
            1.0
        );
        assert!(!body.contains("route=\"/v2/models/{model}/infer\""));
        assert!(metric(body, "process_resident_memory_bytes") > 0.0);
        assert!(metric(body, "process_cpu_seconds_total") > 0.0);
        assert_eq!(
            metric(
                body,
                "greenbelt_batch_queue_depth{model=\"logreg\",version=\"1\"}"
            ),
            0.0
        );
    }
    s.stop().await;
}

/// The payload schema each version sees on the wire: the first request sets
/// it, batch sizes widen it silently, and an answer that departs from it
/// (here: a client asking for one output only) is a schema-change event in
/// `/admin/schema` and on `/metrics`; wire sizes are the bodies' bytes.
#[tokio::test]
async fn schema_is_tracked_and_changes_are_events() {
    let mut s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), "").await;
    for rows in [1, 4] {
        let (status, _) = s
            .post("/v2/models/logreg/infer", &logreg_request(rows))
            .await;
        assert_eq!(status, 200);
    }
    let (_, report) = s.get("/admin/schema/logreg").await;
    let v = &report["versions"]["1"];
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["inputs"][0]["datatype"], "FP32");
    assert_eq!(
        v["inputs"][0]["dims"],
        serde_json::json!([[1, 4], [20, 20]])
    );
    assert_eq!(v["changes_total"], 0, "{report}");
    let mut one_output = logreg_request(1);
    one_output["outputs"] = serde_json::json!([{ "name": "probabilities" }]);
    let (status, _) = s.post("/v2/models/logreg/infer", &one_output).await;
    assert_eq!(status, 200);
    let (_, report) = s.get("/admin/schema/logreg").await;
    let v = &report["versions"]["1"];
    assert_eq!(v["changes_total"], 1, "{report}");
    assert_eq!(v["recent_changes"][0]["side"], "output");
    assert!(
        v["recent_changes"][0]["change"]
            .as_str()
            .unwrap()
            .contains("\"label\" is missing"),
        "{report}"
    );
    assert_eq!(s.get("/admin/schema/nope").await.0, 404);
    let text = s.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "greenbelt_schema_changes_total{model=\"logreg\",version=\"1\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "greenbelt_request_wire_bytes_count{model=\"logreg\",version=\"1\"}"
        ),
        3.0
    );
    let body_bytes: usize = [1, 4]
        .iter()
        .map(|r| serde_json::to_vec(&logreg_request(*r)).unwrap().len())
        .sum::<usize>()
        + serde_json::to_vec(&one_output).unwrap().len();
    assert_eq!(
        metric(
            &text,
            "greenbelt_request_wire_bytes_sum{model=\"logreg\",version=\"1\"}"
        ),
        body_bytes as f64
    );
    assert!(
        metric(
            &text,
            "greenbelt_response_wire_bytes_sum{model=\"logreg\",version=\"1\"}"
        ) > 0.0
    );
    s.stop().await;
}
