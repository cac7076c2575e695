//! The staged request path: a slow feature store is cut by the request
//! timeout and holds its admission slot while it runs; a full admission
//! sheds before any feature lookup. Time-based checks run on tokio's paused
//! clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use greenbelt_core::{InferRequest, Tensor, TensorData};
use greenbelt_serve::error::ServeError;
use greenbelt_serve::features::{FeatureRows, FeatureSource, LookupFuture};
use greenbelt_serve::infer::{RequestContext, infer};
use greenbelt_serve::metrics::Protocol;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::support::{copy_model, start_with, write_model_config};

/// A feature store that answers after `delay`.
pub struct SlowSource {
    delay: Duration,
    pub lookups: AtomicUsize,
    pub entered: Notify,
}

impl SlowSource {
    pub fn new(delay: Duration) -> Arc<SlowSource> {
        Arc::new(SlowSource {
            delay,
            lookups: AtomicUsize::new(0),
            entered: Notify::new(),
        })
    }
}

impl FeatureSource for SlowSource {
    fn join_keys(&self, _service: &str) -> Result<Vec<String>, String> {
        Ok(vec!["user_id".into()])
    }

    fn feature_names(&self, _service: &str) -> Result<Vec<String>, String> {
        Ok((0..20).map(|i| format!("v:f{i}")).collect())
    }

    fn lookup<'a>(
        &'a self,
        _service: &'a str,
        entities: BTreeMap<String, Vec<serde_json::Value>>,
        _deadline: Option<tokio::time::Instant>,
    ) -> LookupFuture<'a> {
        Box::pin(async move {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            self.entered.notify_one();
            tokio::time::sleep(self.delay).await;
            let rows = entities.values().next().map_or(0, Vec::len);
            Ok(FeatureRows {
                names: (0..20).map(|i| format!("v:f{i}")).collect(),
                values: vec![Some(0.5); rows * 20],
                statuses: vec!["PRESENT"; rows * 20],
                rows,
            })
        })
    }

    fn check(&self, _service: &str, _width: usize, _values: &[f64]) -> Result<(), String> {
        Ok(())
    }
}

fn scorer(repo: &std::path::Path) {
    copy_model(repo, "logreg", 1, "scorer", 1);
    write_model_config(
        repo,
        "scorer",
        "backend = \"tract\"\n[features]\nservice = \"svc\"\n",
    );
}

fn by_key() -> InferRequest {
    InferRequest {
        inputs: vec![
            Tensor::new(
                "user_id",
                vec![1],
                TensorData::Bytes(vec![Bytes::from_static(b"u1")]),
            )
            .unwrap(),
        ],
        ..Default::default()
    }
}

fn ctx() -> RequestContext {
    RequestContext::new(
        Protocol::Rest,
        "/v2/models/{model_name}/infer",
        Default::default(),
        None,
        &greenbelt_serve::traces::Tracer::disabled(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_slow_feature_lookup_is_cut_at_the_request_deadline_holding_its_slot() {
    let source = SlowSource::new(Duration::from_secs(60));
    let mut s = start_with(
        scorer,
        "request_timeout_ms = 1000\nmax_inflight = 1\n",
        Some(source.clone()),
    )
    .await;
    let state = s.state.clone();
    let permit = state.admission.admit(100).unwrap();
    let started = Instant::now();
    let st = state.clone();
    let a = tokio::spawn(async move {
        let ctx = ctx();
        infer(&st, permit, "scorer", None, by_key(), &ctx)
            .await
            .map(|_| ())
    });
    source.entered.notified().await;
    // While the lookup runs, the request holds the only admission slot.
    let shed = state.admission.admit(100).unwrap_err();
    assert!(matches!(shed, ServeError::Overloaded { .. }), "{shed}");
    let e = a.await.unwrap().unwrap_err();
    assert!(matches!(e, ServeError::Timeout(_)), "{e}");
    assert_eq!(e.http_status().as_u16(), 504);
    // Cut at the deadline, not after the 60 s lookup.
    assert_eq!(started.elapsed(), Duration::from_millis(1000));
    assert_eq!(source.lookups.load(Ordering::SeqCst), 1);
    // The slot is free again.
    assert!(state.admission.admit(100).is_ok());
    s.stop().await;
}

#[tokio::test]
async fn over_http_a_full_admission_sheds_before_any_feature_lookup() {
    let source = SlowSource::new(Duration::from_secs(60));
    let mut s = start_with(
        scorer,
        "request_timeout_ms = 1500\nmax_inflight = 1\n",
        Some(source.clone()),
    )
    .await;
    let body =
        json!({"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u1"]}]});
    let url = format!("{}/v2/models/scorer/infer", s.http);
    let client = s.client.clone();
    let b = body.clone();
    let slow = tokio::spawn(async move { client.post(url).json(&b).send().await.unwrap() });
    tokio::time::timeout(Duration::from_secs(10), source.entered.notified())
        .await
        .expect("the first request reached its feature lookup");
    let r = s
        .client
        .post(format!("{}/v2/models/scorer/infer", s.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let msg: serde_json::Value = r.json().await.unwrap();
    assert!(
        msg["error"].as_str().unwrap().contains("in flight"),
        "{msg}"
    );
    assert_eq!(
        source.lookups.load(Ordering::SeqCst),
        1,
        "the shed request must not have reached the feature store"
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.status().as_u16(), 504);
    // The slot came back: a request with the features themselves is served.
    let (status, body) = s.infer_logreg("/v2/models/scorer/infer").await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}
