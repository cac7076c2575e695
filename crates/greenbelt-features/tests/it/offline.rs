//! Offline store and materialization: date partitions, quarantine with a
//! reason, fail policy writes nothing, idempotent and overlapping re-runs
//! give no duplicates, incremental runs follow the watermark, and a source
//! several times the engine's memory limit materializes (sorts spill).

use std::path::Path;

use greenbelt_features::Definitions;
use greenbelt_features::offline::{
    MaterializeOptions, OfflineStore, REASON, materialize, materialize_incremental,
};
use greenbelt_features::pit::read_entities;
use greenbelt_features::source::EngineOptions;
use greenbelt_features::time::parse_ts;

use crate::common::*;

fn defs_text(policy: &str) -> String {
    format!(
        r#"
[store]
offline = "offline"
[[entity]]
name = "user"
join_keys = [{{ name = "user_id", type = "string" }}]
[[source]]
name = "tx"
path = "tx.csv"
event_timestamp = "event_ts"
[[feature_view]]
name = "user_stats"
entities = ["user"]
source = "tx"
features = [{{ name = "amount", type = "float64" }}]
[feature_view.contract]
policy = "{policy}"
rules = [{{ check = "range", column = "amount", min = 0.0 }}]
"#
    )
}

const TX: &str = "user_id,event_ts,amount
u1,2026-01-01T10:00:00Z,1
u2,2026-01-01T23:59:59Z,2
u1,2026-01-02T00:00:00Z,3
u3,2026-01-02T12:00:00Z,-4
u2,2026-01-03T08:00:00Z,5
";

fn t(s: &str) -> i64 {
    parse_ts("t", s).unwrap()
}

/// All rows of the view's partitions, sorted, as (user, amount) text.
async fn offline_rows(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = root.join("user_stats");
    let mut dates: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("date="))
        .collect();
    dates.sort_by_key(|e| e.file_name());
    for d in dates {
        let f = d.path().join("part-0.parquet");
        let rows = read_entities(&f).await.unwrap();
        if rows.batches.is_empty() {
            continue;
        }
        let b = concat(&rows.batches);
        let date = d.file_name().to_string_lossy().into_owned();
        for (u, (a, ts)) in strs(&b, "user_id").into_iter().zip(
            f64s(&b, "amount")
                .into_iter()
                .zip(strs(&b, "event_timestamp")),
        ) {
            let ts = ts.unwrap();
            assert!(date.ends_with(&ts[..10]), "{ts} in {date}");
            out.push((u.unwrap(), format!("{}@{}", a.unwrap(), &ts[..10])));
        }
    }
    out.sort();
    out
}

fn setup(policy: &str) -> (tempfile::TempDir, Definitions, OfflineStore) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tx.csv"), TX).unwrap();
    let defs = Definitions::parse(&defs_text(policy), dir.path()).unwrap();
    let store = OfflineStore::open(&defs.offline_path).unwrap();
    (dir, defs, store)
}

#[tokio::test]
async fn materialize_partitions_by_date_and_quarantines_with_a_reason() {
    let (_dir, defs, store) = setup("quarantine");
    let o = MaterializeOptions::default();
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
    assert_eq!(r.quarantined, 1);
    assert_eq!(
        r.partitions_written,
        ["2026-01-01", "2026-01-02", "2026-01-03"]
    );
    assert_eq!(store.partitions("user_stats").await.unwrap().len(), 3);
    let rows = offline_rows(store.root()).await;
    assert_eq!(rows.len(), 4);
    assert!(!rows.iter().any(|(u, _)| u == "u3"), "{rows:?}");
    // The quarantined row is in the side table with its reason.
    let q = read_entities(Path::new(r.quarantine_file.as_ref().unwrap()))
        .await
        .unwrap();
    let q = concat(&q.batches);
    assert_eq!(strs(&q, "user_id"), [Some("u3".to_string())]);
    assert!(
        strs(&q, REASON)[0]
            .as_ref()
            .unwrap()
            .contains("range(amount")
    );
    assert_eq!(
        store.watermark("user_stats").await.unwrap(),
        Some(t("2026-01-04"))
    );
    let v = r.validation.unwrap();
    assert_eq!(v.quarantined, 1);
}

#[tokio::test]
async fn fail_policy_writes_nothing() {
    let (_dir, defs, store) = setup("fail");
    let e = materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &MaterializeOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("range(amount") && e.contains("nothing was written"),
        "{e}"
    );
    assert!(store.partitions("user_stats").await.unwrap().is_empty());
    assert_eq!(store.watermark("user_stats").await.unwrap(), None);
    // A range without the bad row goes through.
    materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-02"),
        &MaterializeOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        store.partitions("user_stats").await.unwrap(),
        ["2026-01-01"]
    );
}

#[tokio::test]
async fn reruns_and_overlaps_never_duplicate() {
    let (dir, defs, store) = setup("quarantine");
    let o = MaterializeOptions::default();
    materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &o,
    )
    .await
    .unwrap();
    let first = offline_rows(store.root()).await;
    let bytes_before = std::fs::read(
        store
            .root()
            .join("user_stats/date=2026-01-02/part-0.parquet"),
    )
    .unwrap();
    materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &o,
    )
    .await
    .unwrap();
    assert_eq!(
        offline_rows(store.root()).await,
        first,
        "same range, same rows"
    );
    let bytes_after = std::fs::read(
        store
            .root()
            .join("user_stats/date=2026-01-02/part-0.parquet"),
    )
    .unwrap();
    assert_eq!(bytes_before, bytes_after, "same range, same file");
    // A range that starts and ends inside days keeps the rest of those days.
    materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01T12:00:00Z"),
        t("2026-01-03T01:00:00Z"),
        &o,
    )
    .await
    .unwrap();
    assert_eq!(
        offline_rows(store.root()).await,
        first,
        "overlapping range, same rows"
    );
    // New source rows in a re-run range appear once; removed ones disappear.
    let tx2 = TX.replace("u2,2026-01-03T08:00:00Z,5\n", "u4,2026-01-02T13:00:00Z,6\n");
    std::fs::write(dir.path().join("tx.csv"), tx2).unwrap();
    let r = materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-02"),
        t("2026-01-04"),
        &o,
    )
    .await
    .unwrap();
    assert_eq!(r.partitions_removed, ["2026-01-03"]);
    let rows = offline_rows(store.root()).await;
    assert_eq!(
        rows,
        vec![
            ("u1".to_string(), "1@2026-01-01".to_string()),
            ("u1".to_string(), "3@2026-01-02".to_string()),
            ("u2".to_string(), "2@2026-01-01".to_string()),
            ("u4".to_string(), "6@2026-01-02".to_string()),
        ]
    );
}

#[tokio::test]
async fn incremental_follows_the_watermark() {
    let (_dir, defs, store) = setup("quarantine");
    let o = MaterializeOptions::default();
    let r = materialize_incremental(&defs, &store, "user_stats", t("2026-01-02"), &o)
        .await
        .unwrap();
    assert_eq!(r.start, "2026-01-01T00:00:00.000000Z");
    assert_eq!(r.rows, 2);
    let r = materialize_incremental(&defs, &store, "user_stats", t("2026-01-04"), &o)
        .await
        .unwrap();
    assert_eq!(r.start, "2026-01-02T00:00:00.000000Z");
    assert_eq!(r.rows, 2);
    assert_eq!(offline_rows(store.root()).await.len(), 4);
    let e = materialize_incremental(&defs, &store, "user_stats", t("2026-01-03"), &o)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nothing to do"), "{e}");
}

#[tokio::test]
async fn a_source_larger_than_the_memory_limit_materializes() {
    // 1M rows (~40 MiB of CSV, ~30 MiB in Arrow) against a 12 MiB engine limit.
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("user_id,event_ts,amount\n");
    let n: u64 = 1_000_000;
    for i in 0..n {
        // Out of time order, so the sort really has to work (and spill).
        let s = (i * 7919) % n;
        let ts = greenbelt_features::time::format_ts(T0 + s as i64 * 30 * SEC);
        csv.push_str(&format!("u{:05},{ts},{}.5\n", i % 5000, i % 1000));
    }
    std::fs::write(dir.path().join("tx.csv"), &csv).unwrap();
    assert!(csv.len() > 3 * 12 * 1024 * 1024);
    let defs = Definitions::parse(&defs_text("quarantine"), dir.path()).unwrap();
    let store = OfflineStore::open(&defs.offline_path).unwrap();
    let o = MaterializeOptions {
        engine: EngineOptions {
            memory_limit: 12 * 1024 * 1024,
            target_partitions: 2,
            batch_size: 4096,
        },
        now_us: None,
    };
    let r = materialize(&defs, &store, "user_stats", T0, T0 + 400 * 86_400 * SEC, &o)
        .await
        .unwrap();
    assert_eq!(r.rows, n);
    assert_eq!(r.partitions_written.len(), (n * 30 / 86_400 + 1) as usize);
}

#[tokio::test]
async fn freshness_reports_watermark_newest_event_and_breach() {
    let (_dir, defs, store) = setup("quarantine");
    let mut text =
        defs_text("quarantine").replace("features = [", "freshness_sla = \"1day\"\nfeatures = [");
    text.push('\n');
    let defs2 = Definitions::parse(&text, defs.offline_path.parent().unwrap()).unwrap();
    let before =
        greenbelt_features::freshness::freshness(&defs2, &store, t("2026-01-03T09:00:00Z"))
            .await
            .unwrap();
    assert!(
        before[0].breach,
        "no data yet is a breach when there is an SLA"
    );
    materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &MaterializeOptions::default(),
    )
    .await
    .unwrap();
    let f = greenbelt_features::freshness::freshness(&defs2, &store, t("2026-01-03T09:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        f[0].newest_event.as_deref(),
        Some("2026-01-03T08:00:00.000000Z")
    );
    assert_eq!(
        f[0].watermark.as_deref(),
        Some("2026-01-04T00:00:00.000000Z")
    );
    assert_eq!(f[0].age_seconds, Some(3600.0));
    assert!(!f[0].breach);
    let late = greenbelt_features::freshness::freshness(&defs2, &store, t("2026-01-05"))
        .await
        .unwrap();
    assert!(late[0].breach);
    let prom = greenbelt_features::freshness::prometheus_text(&late);
    assert!(
        prom.contains("greenbelt_feature_view_age_seconds{view=\"user_stats\"} 144000"),
        "{prom}"
    );
    assert!(
        prom.contains("greenbelt_feature_view_freshness_breach{view=\"user_stats\"} 1"),
        "{prom}"
    );
}
