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
    let text = s
        .client
        .get(format!("{}/metrics", s.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let text = s
        .client
        .get(format!("{}/metrics", s.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let text = s
        .client
        .get(format!("{}/metrics", s.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
