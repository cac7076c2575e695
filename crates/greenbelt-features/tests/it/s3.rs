//! The offline store and sources on S3, against a local endpoint (moto's
//! server; `scripts/test.sh` starts one and sets GREENBELT_TEST_S3_ENDPOINT,
//! e.g. http://127.0.0.1:5000). The work runs in a child process whose
//! environment carries the standard AWS variables, as a deployment's would.
//! Skipped, with a SKIP line, without an endpoint or without the `s3`
//! feature.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use datafusion::object_store::ObjectStoreExt;
use datafusion::object_store::path::Path as StorePath;
use futures::StreamExt;
use greenbelt_features::Definitions;
use greenbelt_features::offline::{
    MaterializeOptions, OfflineStore, REASON, materialize, materialize_incremental,
};
use greenbelt_features::pit::{HistoricalOptions, historical_to_parquet, read_entities};
use greenbelt_features::source::{s3_store, session};
use greenbelt_features::time::parse_ts;

use crate::child;
use crate::common::*;

const BUCKET_VAR: &str = "GREENBELT_TEST_S3_BUCKET";

/// The endpoint, or None with the reason printed.
fn endpoint(test: &str) -> Option<String> {
    let Ok(endpoint) = std::env::var("GREENBELT_TEST_S3_ENDPOINT") else {
        eprintln!("SKIP {test}: GREENBELT_TEST_S3_ENDPOINT is not set");
        return None;
    };
    if !cfg!(feature = "s3") {
        eprintln!(
            "SKIP {test}: greenbelt-features was built without the `s3` feature (cargo nextest run -p greenbelt-features --features s3)"
        );
        return None;
    }
    Some(endpoint.trim_end_matches('/').to_string())
}

/// Create a bucket with a plain HTTP request (moto accepts unsigned ones).
fn create_bucket(endpoint: &str, name: &str) {
    let host = endpoint
        .strip_prefix("http://")
        .expect("a plain-HTTP test endpoint");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "create bucket {name}: {resp}"
    );
}

/// The AWS environment a deployment would set for this endpoint.
fn aws_env(endpoint: &str, bucket: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "greenbelt-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "greenbelt-test".into()),
        (BUCKET_VAR, bucket.to_string()),
    ]
}

#[test]
fn s3_materialize_rerun_and_retrieve() {
    let Some(endpoint) = endpoint("s3_materialize_rerun_and_retrieve") else {
        return;
    };
    let bucket = format!(
        "gb-features-{}-{}",
        std::process::id(),
        greenbelt_features::time::now_us()
    );
    create_bucket(&endpoint, &bucket);
    child::run("s3::s3_child", &aws_env(&endpoint, &bucket));
}

fn t(s: &str) -> i64 {
    parse_ts("t", s).unwrap()
}

fn tx(rows: &[(&str, &str, f64)]) -> Vec<u8> {
    let b = batch(vec![
        (
            "user_id",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
        ),
        (
            "event_ts",
            ts_array(rows.iter().map(|r| Some(t(r.1))).collect()),
        ),
        (
            "amount",
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.parquet");
    write_parquet(&f, &b);
    std::fs::read(f).unwrap()
}

fn defs_text(bucket: &str) -> String {
    format!(
        r#"
[store]
offline = "s3://{bucket}/offline"
[[entity]]
name = "user"
join_keys = [{{ name = "user_id", type = "string" }}]
[[source]]
name = "tx"
path = "s3://{bucket}/src/"
format = "parquet"
event_timestamp = "event_ts"
[source.contract]
policy = "quarantine"
rules = [{{ check = "regex", column = "user_id", pattern = "^u[0-9]+$" }}]
[[feature_view]]
name = "user_stats"
entities = ["user"]
source = "tx"
features = [{{ name = "amount", type = "float64" }}]
[feature_view.contract]
policy = "quarantine"
rules = [{{ check = "range", column = "amount", min = 0.0 }}]
"#
    )
}

/// Every key in the bucket.
async fn keys(s3: &Arc<dyn datafusion::object_store::ObjectStore>) -> Vec<String> {
    let mut out = Vec::new();
    let mut l = s3.list(None);
    while let Some(m) = l.next().await {
        out.push(m.unwrap().location.to_string());
    }
    out.sort();
    out
}

/// The view's offline rows as sorted `user amount@date` text, read back
/// through DataFusion from S3.
async fn offline_rows(store: &OfflineStore) -> Vec<String> {
    let ctx = session(&Default::default()).unwrap();
    let b = store
        .read_view(&ctx, "user_stats")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let b = concat(&b);
    let mut out: Vec<String> = strs(&b, "user_id")
        .into_iter()
        .zip(f64s(&b, "amount"))
        .zip(strs(&b, "event_timestamp"))
        .map(|((u, a), ts)| format!("{} {}@{}", u.unwrap(), a.unwrap(), &ts.unwrap()[..10]))
        .collect();
    out.sort();
    out
}

#[tokio::test]
#[ignore = "run by s3_materialize_rerun_and_retrieve in a child process, with the AWS settings in its environment"]
async fn s3_child() {
    if !child::in_child() {
        return;
    }
    let bucket = std::env::var(BUCKET_VAR).unwrap();
    let s3 = s3_store(&bucket).unwrap();
    // The source: a directory (prefix) of two Parquet files.
    let put = |key: &str, bytes: Vec<u8>| {
        let s3 = s3.clone();
        let key = StorePath::from(key);
        async move { s3.put(&key, bytes.into()).await.unwrap() }
    };
    put(
        "src/a.parquet",
        tx(&[
            ("u1", "2026-01-01T10:00:00Z", 1.0),
            ("u2", "2026-01-01T20:00:00Z", 2.0),
            ("bad", "2026-01-01T21:00:00Z", 9.0),
        ]),
    )
    .await;
    put(
        "src/b.parquet",
        tx(&[
            ("u1", "2026-01-02T09:00:00Z", 3.0),
            ("u3", "2026-01-02T12:00:00Z", -4.0),
            ("u2", "2026-01-03T08:00:00Z", 5.0),
        ]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let defs = Definitions::parse(&defs_text(&bucket), dir.path()).unwrap();
    assert_eq!(
        defs.offline_path.to_string_lossy(),
        format!("s3://{bucket}/offline")
    );
    let store = OfflineStore::open(&defs.offline_path).unwrap();
    let o = MaterializeOptions::default();

    // First run: three day partitions, one source row and one view row set aside.
    let r = materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &o,
    )
    .await
    .unwrap();
    assert_eq!(r.rows, 4);
    assert_eq!(
        r.partitions_written,
        ["2026-01-01", "2026-01-02", "2026-01-03"]
    );
    assert_eq!((r.quarantined, r.source_quarantined), (2, 1));
    assert_eq!(
        store.partitions("user_stats").await.unwrap(),
        r.partitions_written
    );
    let want = vec![
        "u1 1@2026-01-01".to_string(),
        "u1 3@2026-01-02".to_string(),
        "u2 2@2026-01-01".to_string(),
        "u2 5@2026-01-03".to_string(),
    ];
    assert_eq!(offline_rows(&store).await, want);
    assert_eq!(
        store.watermark("user_stats").await.unwrap(),
        Some(t("2026-01-04"))
    );
    let (start, end) = (t("2026-01-01"), t("2026-01-04"));
    let view_q = format!("offline/_quarantine/user_stats/{start}_{end}.parquet");
    let source_q = format!("offline/_quarantine/user_stats.source/{start}_{end}.parquet");
    assert_eq!(
        r.quarantine_file.as_deref(),
        Some(format!("s3://{bucket}/{view_q}").as_str())
    );
    assert_eq!(
        r.source_quarantine_file.as_deref(),
        Some(format!("s3://{bucket}/{source_q}").as_str())
    );
    // Only finished objects are in the bucket: no temporaries.
    let all = keys(&s3).await;
    let mut expected = vec![
        "offline/user_stats/_watermark.json".to_string(),
        "offline/user_stats/date=2026-01-01/part-0.parquet".to_string(),
        "offline/user_stats/date=2026-01-02/part-0.parquet".to_string(),
        "offline/user_stats/date=2026-01-03/part-0.parquet".to_string(),
        source_q.clone(),
        view_q.clone(),
        "src/a.parquet".to_string(),
        "src/b.parquet".to_string(),
    ];
    expected.sort();
    assert_eq!(all, expected);
    // The side tables, read back from S3, carry the rows and their reasons.
    let q = concat(
        &read_entities(Path::new(r.source_quarantine_file.as_ref().unwrap()))
            .await
            .unwrap()
            .batches,
    );
    assert_eq!(strs(&q, "user_id"), [Some("bad".to_string())]);
    assert!(
        strs(&q, REASON)[0]
            .as_ref()
            .unwrap()
            .contains("regex(user_id")
    );
    let q = concat(
        &read_entities(Path::new(r.quarantine_file.as_ref().unwrap()))
            .await
            .unwrap()
            .batches,
    );
    assert_eq!(strs(&q, "user_id"), [Some("u3".to_string())]);
    assert!(
        strs(&q, REASON)[0]
            .as_ref()
            .unwrap()
            .contains("range(amount")
    );

    // Re-running the range is idempotent: the same rows, byte-identical files.
    let part = StorePath::from("offline/user_stats/date=2026-01-02/part-0.parquet");
    let before = s3.get(&part).await.unwrap().bytes().await.unwrap();
    materialize(&defs, &store, "user_stats", start, end, &o)
        .await
        .unwrap();
    let after = s3.get(&part).await.unwrap().bytes().await.unwrap();
    assert_eq!(before, after);
    assert_eq!(offline_rows(&store).await, want);
    assert_eq!(keys(&s3).await, expected);
    // A range that starts and ends inside days keeps the rest of those days.
    materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01T15:00:00Z"),
        t("2026-01-03T01:00:00Z"),
        &o,
    )
    .await
    .unwrap();
    assert_eq!(offline_rows(&store).await, want);

    // Incremental runs follow the watermark kept on S3.
    put("src/c.parquet", tx(&[("u1", "2026-01-04T06:00:00Z", 7.0)])).await;
    let r = materialize_incremental(&defs, &store, "user_stats", t("2026-01-05"), &o)
        .await
        .unwrap();
    assert_eq!(r.start, "2026-01-04T00:00:00.000000Z");
    assert_eq!(r.rows, 1);
    assert_eq!(
        store.watermark("user_stats").await.unwrap(),
        Some(t("2026-01-05"))
    );

    // Historical retrieval: entity rows from S3, the training set to S3.
    put(
        "entities.csv",
        b"user_id,event_timestamp
u1,2026-01-01T12:00:00Z
u1,2026-01-02T10:00:00Z
u2,2026-01-03T09:00:00Z
u3,2026-01-01T00:00:00Z
u1,2026-01-01T12:00:00Z
"
        .to_vec(),
    )
    .await;
    let refs = defs
        .resolve_features(&["user_stats:amount".to_string()])
        .unwrap();
    let out = format!("s3://{bucket}/out/train.parquet");
    let n = historical_to_parquet(
        &defs,
        &refs,
        Path::new(&format!("s3://{bucket}/entities.csv")),
        Path::new(&out),
        &HistoricalOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(n, 5);
    let b = concat(&read_entities(Path::new(&out)).await.unwrap().batches);
    assert_eq!(
        f64s(&b, "amount"),
        [Some(1.0), Some(3.0), Some(5.0), None, Some(1.0)]
    );
    assert!(!keys(&s3).await.iter().any(|k| k.ends_with(".tmp")));

    // A source that is not there is a clear error.
    let missing = defs_text(&bucket).replace("/src/", "/nothing/");
    let defs = Definitions::parse(&missing, dir.path()).unwrap();
    let e = materialize(&defs, &store, "user_stats", start, end, &o)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("s3://{bucket}/nothing/")) && e.contains("does not exist"),
        "{e}"
    );
}
