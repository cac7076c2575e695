//! Point-in-time retrieval on hand-made data with known answers: TTL edges,
//! created-timestamp ties, duplicate entity rows, naive CSV timestamps read
//! as UTC, a SQL transformation, Parquet output, and leakage.

use std::path::Path;

use greenbelt_features::Definitions;
use greenbelt_features::pit::{HistoricalOptions, historical_to_parquet, read_entities};

use crate::common::*;

const DEFS: &str = r#"
[[entity]]
name = "user"
join_keys = [{ name = "user_id", type = "string" }]

[[source]]
name = "tx"
path = "tx.csv"
event_timestamp = "event_ts"
created_timestamp = "created_ts"

[[feature_view]]
name = "user_stats"
entities = ["user"]
source = "tx"
ttl = "1h"
features = [{ name = "amount", type = "float64" }]

[[feature_view]]
name = "user_doubled"
entities = ["user"]
source = "tx"
transformation = "SELECT user_id, event_ts, created_ts, amount * 2 AS amount2 FROM source"
features = [{ name = "amount2", type = "float64" }]
"#;

// Naive timestamps (no offset) are UTC.
const TX: &str = "user_id,event_ts,created_ts,amount
u1,2026-01-01 10:00:00,2026-01-01 10:00:00,1
u1,2026-01-01 11:00:00,2026-01-01 11:00:00,2
u1,2026-01-01 11:00:00,2026-01-01 11:30:00,3
u2,2026-01-01 09:00:00,2026-01-01 12:00:00,7
";

const ENTITIES: &str = "user_id,event_timestamp,label
u1,2026-01-01T09:59:59Z,a
u1,2026-01-01T10:00:00Z,b
u1,2026-01-01T10:59:59Z,c
u1,2026-01-01T11:00:00Z,d
u1,2026-01-01T11:00:00Z,e
u1,2026-01-01T12:00:00Z,f
u1,2026-01-01T12:00:01Z,g
u2,2026-01-01T09:30:00Z,h
u3,2026-01-01T11:00:00Z,i
u1,2026-01-01T12:00:00+01:00,j
u1,,k
";

async fn run(dir: &Path, known: bool) -> datafusion::arrow::array::RecordBatch {
    std::fs::write(dir.join("tx.csv"), TX).unwrap();
    std::fs::write(dir.join("entities.csv"), ENTITIES).unwrap();
    let defs = Definitions::parse(DEFS, dir).unwrap();
    let features = defs
        .resolve_features(&["user_stats:amount".into(), "user_doubled:amount2".into()])
        .unwrap();
    let out = dir.join("out/train.parquet");
    let opts = HistoricalOptions {
        as_of_known_time: known,
        ..HistoricalOptions::default()
    };
    let n = historical_to_parquet(&defs, &features, &dir.join("entities.csv"), &out, &opts)
        .await
        .unwrap();
    assert_eq!(n, 11);
    let back = read_entities(&out).await.unwrap();
    concat(&back.batches)
}

#[tokio::test]
async fn known_answers_ttl_edges_ties_duplicates_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = run(dir.path(), false).await;
    assert_eq!(
        strs(&b, "label"),
        ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"].map(|s| Some(s.to_string()))
    );
    let amount = f64s(&b, "amount");
    assert_eq!(
        amount,
        vec![
            None,      // before the first event
            Some(1.0), // event_ts == entity ts is included
            Some(1.0),
            Some(3.0), // tie on event time: the later created wins
            Some(3.0), // duplicate entity row, same answer
            Some(3.0), // exactly ttl old: still valid
            None,      // one second past the ttl
            Some(7.0),
            None,      // unknown key
            Some(3.0), // 12:00+01:00 is 11:00 UTC
            None,      // no timestamp: no value, never the newest one
        ]
    );
    // No TTL on the transformed view: the value stays.
    assert_eq!(f64s(&b, "amount2")[6], Some(6.0));
}

#[tokio::test]
async fn as_of_known_time_hides_values_created_later() {
    let dir = tempfile::tempdir().unwrap();
    let b = run(dir.path(), true).await;
    let amount = f64s(&b, "amount");
    // At 11:00 the row created at 11:30 was not known yet: the 11:00/11:00 row.
    assert_eq!(amount[3], Some(2.0));
    // u2's only row was created at 12:00: unknown at 09:30.
    assert_eq!(amount[7], None);
}

#[tokio::test]
async fn no_label_leaks_from_the_future() {
    // The feature is the label itself, published at the event time; a
    // correct join can only see labels of earlier (or same-time) rows.
    let dir = tempfile::tempdir().unwrap();
    let mut tx = String::from("user_id,event_ts,created_ts,amount\n");
    let mut ents = String::from("user_id,event_timestamp,label\n");
    for i in 0..200 {
        let t = T0 + i * 37 * SEC;
        let ts = greenbelt_features::time::format_ts(t);
        tx.push_str(&format!("u{},{ts},{ts},{i}\n", i % 7));
        let te = greenbelt_features::time::format_ts(t - SEC);
        ents.push_str(&format!("u{},{te},{i}\n", i % 7));
    }
    std::fs::write(dir.path().join("tx.csv"), tx).unwrap();
    std::fs::write(dir.path().join("entities.csv"), ents).unwrap();
    let defs = Definitions::parse(&DEFS.replace("ttl = \"1h\"", ""), dir.path()).unwrap();
    let features = defs
        .resolve_features(&["user_stats:amount".into()])
        .unwrap();
    let out = dir.path().join("t.parquet");
    historical_to_parquet(
        &defs,
        &features,
        &dir.path().join("entities.csv"),
        &out,
        &HistoricalOptions::default(),
    )
    .await
    .unwrap();
    let b = concat(&read_entities(&out).await.unwrap().batches);
    let labels = i64s(&b, "label");
    let amounts = f64s(&b, "amount");
    for (l, a) in labels.iter().zip(amounts) {
        let l = l.unwrap();
        // The latest earlier row of the same user is label - 7.
        let want = if l >= 7 { Some((l - 7) as f64) } else { None };
        assert_eq!(a, want, "label {l}");
    }
}

#[tokio::test]
async fn order_is_kept_on_many_rows_and_partitions() {
    // 30k entity rows in random key order, 4 partitions, small batches: the
    // output is still in input order.
    let dir = tempfile::tempdir().unwrap();
    let mut tx = String::from("user_id,event_ts,created_ts,amount\n");
    for i in 0..3000 {
        let ts = greenbelt_features::time::format_ts(T0 + i * 60 * SEC);
        tx.push_str(&format!("u{},{ts},{ts},{i}\n", (i * 31) % 97));
    }
    let mut ents = String::from("user_id,event_timestamp,label\n");
    for i in 0..30_000i64 {
        let ts = greenbelt_features::time::format_ts(T0 + ((i * 7919) % 200_000) * SEC);
        ents.push_str(&format!("u{},{ts},{i}\n", (i * 13) % 101));
    }
    std::fs::write(dir.path().join("tx.csv"), tx).unwrap();
    std::fs::write(dir.path().join("entities.csv"), ents).unwrap();
    let defs = Definitions::parse(DEFS, dir.path()).unwrap();
    let features = defs
        .resolve_features(&["user_stats:amount".into(), "user_doubled:amount2".into()])
        .unwrap();
    let out = dir.path().join("t.parquet");
    let opts = HistoricalOptions {
        engine: greenbelt_features::source::EngineOptions {
            target_partitions: 4,
            batch_size: 1000,
            ..Default::default()
        },
        ..HistoricalOptions::default()
    };
    let n = historical_to_parquet(
        &defs,
        &features,
        &dir.path().join("entities.csv"),
        &out,
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(n, 30_000);
    let b = concat(&read_entities(&out).await.unwrap().batches);
    let labels = i64s(&b, "label");
    assert!(
        labels.iter().enumerate().all(|(i, l)| *l == Some(i as i64)),
        "entity order kept"
    );
    // Spot-check values against a direct computation.
    let amounts = f64s(&b, "amount2");
    for i in (0..30_000i64).step_by(997) {
        let user = (i * 13) % 101;
        let et = (i * 7919) % 200_000;
        let want = (0..3000i64)
            .filter(|j| (j * 31) % 97 == user && j * 60 <= et)
            .max()
            .map(|j| (j * 2) as f64);
        assert_eq!(amounts[i as usize], want, "row {i}");
    }
}
