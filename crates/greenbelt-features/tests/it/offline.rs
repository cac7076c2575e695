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

/// Materialize `user_stats` for 2026-01-01 up to (not including) 2026-01-04.
async fn materialize_jan_1_to_3(
    defs: &Definitions,
    store: &OfflineStore,
) -> greenbelt_features::offline::MaterializeReport {
    materialize(
        defs,
        store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &MaterializeOptions::default(),
    )
    .await
    .unwrap()
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
    materialize_jan_1_to_3(&defs, &store).await;
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

/// Definitions whose source carries a contract (`source_rules`, policy
/// `policy`); the view optionally transforms the source.
fn source_contract_defs(policy: &str, source_rules: &str, transformation: Option<&str>) -> String {
    let t = transformation
        .map(|t| format!("transformation = \"{t}\"\n"))
        .unwrap_or_default();
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
[source.contract]
policy = "{policy}"
rules = [{source_rules}]
[[feature_view]]
name = "user_stats"
entities = ["user"]
source = "tx"
{t}features = [{{ name = "amount", type = "float64" }}]
"#
    )
}

/// The source: one row with a malformed user id in the range, one outside it.
const TX_BAD_USERS: &str = "user_id,event_ts,amount
u1,2026-01-01T10:00:00Z,1
x2,2026-01-01T11:00:00Z,2
u3,2026-01-02T12:00:00Z,3
y4,2026-01-05T12:00:00Z,4
";

const USER_ID_RULE: &str = r#"{ check = "regex", column = "user_id", pattern = "^u[0-9]+$" }"#;

fn setup_source(text: &str, tx: &str) -> (tempfile::TempDir, Definitions, OfflineStore) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tx.csv"), tx).unwrap();
    let defs = Definitions::parse(text, dir.path()).unwrap();
    let store = OfflineStore::open(&defs.offline_path).unwrap();
    (dir, defs, store)
}

#[tokio::test]
async fn source_contract_fail_stops_the_run_and_writes_nothing() {
    let (_dir, defs, store) = setup_source(
        &source_contract_defs("fail", USER_ID_RULE, None),
        TX_BAD_USERS,
    );
    let o = MaterializeOptions::default();
    let e = materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &o,
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, greenbelt_features::FeatureError::Contract(_)),
        "{e:?}"
    );
    assert!(
        msg.contains("source \"tx\"")
            && msg.contains("regex(user_id")
            && msg.contains("nothing was written"),
        "{msg}"
    );
    assert!(store.partitions("user_stats").await.unwrap().is_empty());
    assert_eq!(store.watermark("user_stats").await.unwrap(), None);
    assert!(!store.root().join("_quarantine").exists());
    // Only the range's rows are judged: a range without bad rows goes through
    // (the bad row of 2026-01-05 is outside it).
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
    assert_eq!(r.rows, 1);
    let v = r.source_validation.unwrap();
    assert!(v.passed);
    assert_eq!(v.rows, 1);
}

#[tokio::test]
async fn source_contract_fail_on_a_dataset_rule_writes_nothing() {
    let rules = r#"{ check = "row_count", min = 10 }"#;
    let (_dir, defs, store) = setup_source(
        &source_contract_defs("quarantine", rules, None),
        TX_BAD_USERS,
    );
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
        e.contains("source \"tx\"") && e.contains("row_count") && e.contains("nothing was written"),
        "{e}"
    );
    assert!(store.partitions("user_stats").await.unwrap().is_empty());
}

async fn quarantined_source_rows(file: &str) -> Vec<(String, String)> {
    let q = read_entities(Path::new(file)).await.unwrap();
    let q = concat(&q.batches);
    // The side table keeps the source's own columns, then the reason.
    let names: Vec<String> = q
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["user_id", "event_ts", "amount", REASON]);
    strs(&q, "user_id")
        .into_iter()
        .zip(strs(&q, REASON))
        .map(|(u, r)| (u.unwrap(), r.unwrap()))
        .collect()
}

#[tokio::test]
async fn source_contract_quarantine_sets_source_rows_aside_with_the_reason() {
    let (dir, defs, store) = setup_source(
        &source_contract_defs("quarantine", USER_ID_RULE, None),
        TX_BAD_USERS,
    );
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
    assert_eq!(r.rows, 2);
    assert_eq!(r.source_quarantined, 1);
    assert_eq!(r.quarantined, 1, "the total counts source rows too");
    assert_eq!(r.quarantine_file, None, "no view rows were set aside");
    let file = r.source_quarantine_file.clone().unwrap();
    assert!(
        file.ends_with(&format!(
            "_quarantine/user_stats.source/{}_{}.parquet",
            t("2026-01-01"),
            t("2026-01-04")
        )),
        "{file}"
    );
    let q = quarantined_source_rows(&file).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].0, "x2");
    assert!(q[0].1.contains("regex(user_id"), "{q:?}");
    let rows = offline_rows(store.root()).await;
    assert_eq!(
        rows,
        vec![
            ("u1".to_string(), "1@2026-01-01".to_string()),
            ("u3".to_string(), "3@2026-01-02".to_string()),
        ]
    );
    let v = r.source_validation.unwrap();
    assert_eq!((v.rows, v.quarantined), (3, 1));

    // Re-running the range gives the same side table, not a second copy;
    // once the source is fixed, the range's side table goes away.
    let again = materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &o,
    )
    .await
    .unwrap();
    assert_eq!(quarantined_source_rows(&file).await.len(), 1);
    assert_eq!(again.source_quarantine_file.as_deref(), Some(file.as_str()));
    std::fs::write(dir.path().join("tx.csv"), TX_BAD_USERS.replace("x2", "u2")).unwrap();
    let fixed = materialize(
        &defs,
        &store,
        "user_stats",
        t("2026-01-01"),
        t("2026-01-04"),
        &o,
    )
    .await
    .unwrap();
    assert_eq!((fixed.rows, fixed.source_quarantined), (3, 0));
    assert_eq!(fixed.source_quarantine_file, None);
    assert!(!Path::new(&file).exists());
    let leftovers: Vec<_> = walk(store.root())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn source_contract_quarantine_applies_before_the_transformation() {
    // The transformation sums amounts per user and hour; a bad source row
    // must not reach it, and rows outside the range pass unchecked.
    let sql = "SELECT user_id, date_trunc('hour', CAST(event_ts AS TIMESTAMP)) AS event_ts, sum(amount) AS amount FROM source GROUP BY 1, 2";
    let tx = "user_id,event_ts,amount
u1,2026-01-01T10:00:00Z,1
u1,2026-01-01T10:10:00Z,-100
u1,2026-01-01T10:20:00Z,2
u1,2026-01-05T10:00:00Z,-7
";
    let rules = r#"{ check = "range", column = "amount", min = 0.0 }"#;
    let (_dir, defs, store) =
        setup_source(&source_contract_defs("quarantine", rules, Some(sql)), tx);
    let r = materialize_jan_1_to_3(&defs, &store).await;
    assert_eq!(r.source_quarantined, 1);
    assert_eq!(
        offline_rows(store.root()).await,
        vec![("u1".to_string(), "3@2026-01-01".to_string())]
    );
    let q = quarantined_source_rows(r.source_quarantine_file.as_ref().unwrap()).await;
    assert_eq!(q.len(), 1);
    assert!(q[0].1.contains("range(amount"), "{q:?}");
}

/// Every file under `root`.
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn rows_without_an_event_time_are_quarantined_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let rows = batch(vec![
        (
            "user_id",
            std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "u1", "u2", "u3",
            ])),
        ),
        (
            "event_ts",
            ts_array(vec![
                Some(t("2026-01-01T10:00:00Z")),
                None,
                Some(t("2026-01-02T10:00:00Z")),
            ]),
        ),
        (
            "amount",
            std::sync::Arc::new(datafusion::arrow::array::Float64Array::from(vec![
                1.0, 2.0, 3.0,
            ])),
        ),
    ]);
    write_parquet(&dir.path().join("tx.parquet"), &rows);
    let text = defs_text("quarantine").replace("tx.csv", "tx.parquet");
    let defs = Definitions::parse(&text, dir.path()).unwrap();
    let store = OfflineStore::open(&defs.offline_path).unwrap();
    let r = materialize_jan_1_to_3(&defs, &store).await;
    assert_eq!((r.rows, r.quarantined), (2, 1));
    assert_eq!(r.partitions_written, ["2026-01-01", "2026-01-02"]);
    let q = read_entities(Path::new(r.quarantine_file.as_ref().unwrap()))
        .await
        .unwrap();
    let q = concat(&q.batches);
    assert_eq!(strs(&q, "user_id"), [Some("u2".to_string())]);
    assert_eq!(strs(&q, "event_timestamp"), [None]);
    assert!(
        strs(&q, REASON)[0]
            .as_ref()
            .unwrap()
            .starts_with("event_timestamp is null"),
        "{:?}",
        strs(&q, REASON)
    );
}

#[tokio::test]
async fn historical_from_the_offline_store_leaves_quarantined_rows_out() {
    use greenbelt_features::pit::{HistoricalOptions, historical_to_parquet};
    let (dir, defs, store) = setup("quarantine");
    materialize_jan_1_to_3(&defs, &store).await;
    // u3's only row (amount -4) broke the range rule and was quarantined;
    // u1 at noon on the 2nd sees its row of midnight (3).
    std::fs::write(
        dir.path().join("entities.csv"),
        "user_id,event_timestamp\nu3,2026-01-02T13:00:00Z\nu1,2026-01-02T12:00:00Z\n",
    )
    .unwrap();
    let features = defs
        .resolve_features(&["user_stats:amount".into()])
        .unwrap();
    let amounts = |from_offline_store: bool| {
        let defs = &defs;
        let features = &features;
        let dir = dir.path().to_path_buf();
        async move {
            let out = dir.join(format!("train-{from_offline_store}.parquet"));
            let opts = HistoricalOptions {
                from_offline_store,
                ..HistoricalOptions::default()
            };
            historical_to_parquet(defs, features, &dir.join("entities.csv"), &out, &opts)
                .await
                .unwrap();
            f64s(
                &concat(&read_entities(&out).await.unwrap().batches),
                "amount",
            )
        }
    };
    assert_eq!(
        amounts(false).await,
        [Some(-4.0), Some(3.0)],
        "the source has it"
    );
    assert_eq!(
        amounts(true).await,
        [None, Some(3.0)],
        "the offline store does not"
    );
}

#[tokio::test]
async fn historical_from_an_offline_store_with_no_data_says_to_materialize() {
    use greenbelt_features::pit::{HistoricalOptions, historical_to_parquet};
    let (dir, defs, _store) = setup("quarantine");
    std::fs::write(
        dir.path().join("entities.csv"),
        "user_id,event_timestamp\nu1,2026-01-02T12:00:00Z\n",
    )
    .unwrap();
    let features = defs
        .resolve_features(&["user_stats:amount".into()])
        .unwrap();
    let opts = HistoricalOptions {
        from_offline_store: true,
        ..HistoricalOptions::default()
    };
    let out = dir.path().join("train.parquet");
    let e = historical_to_parquet(
        &defs,
        &features,
        &dir.path().join("entities.csv"),
        &out,
        &opts,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("\"user_stats\" has no offline data") && e.contains("materialize first"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written");
}
