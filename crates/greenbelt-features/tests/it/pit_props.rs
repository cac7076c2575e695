//! Point-in-time retrieval against a naive reference on random data:
//! duplicate entity rows, equal timestamps, created-timestamp ties, TTL
//! edges, keys with no rows, two views with different keys, and the
//! `as_of_known_time` mode. Also a leakage check: no value ever comes from
//! a row with an event time after the entity row's.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use greenbelt_features::Definitions;
use greenbelt_features::defs::Location;
use greenbelt_features::pit::{Entities, EntityRows, HistoricalOptions, historical_of};
use greenbelt_features::source::{EngineOptions, session};
use proptest::prelude::*;

use crate::common::*;

/// One view row: key, event second, created second, value.
#[derive(Debug, Clone)]
pub struct Row {
    key: i64,
    ts: i64,
    created: Option<i64>,
    value: Option<i64>,
}

fn rows(max_key: i64) -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(
        (
            0..max_key,
            0i64..12,
            prop::option::weighted(0.7, 0i64..14),
            prop::option::weighted(0.9, 0i64..1000),
        ),
        0..40,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(key, ts, created, value)| Row {
                key,
                ts,
                created,
                value,
            })
            .collect()
    })
}

/// Acceptable values for one entity row from one view (several when rows tie
/// on both timestamps); empty = must be null.
fn reference(
    rows: &[Row],
    key: Option<i64>,
    et: i64,
    ttl: Option<i64>,
    known: bool,
) -> Vec<Option<i64>> {
    let Some(key) = key else { return vec![] };
    let ok: Vec<&Row> = rows
        .iter()
        .filter(|r| r.key == key && r.ts <= et)
        .filter(|r| ttl.is_none_or(|t| r.ts >= et - t))
        .filter(|r| !known || r.created.unwrap_or(r.ts) <= et)
        .collect();
    let order = |r: &Row| (r.ts, r.created.unwrap_or(i64::MIN));
    let Some(best) = ok.iter().map(|r| order(r)).max() else {
        return vec![];
    };
    ok.iter()
        .filter(|r| order(r) == best)
        .map(|r| r.value)
        .collect()
}

fn write_view(dir: &Path, name: &str, rows: &[Row], key_as_string: bool) {
    let keys: ArrayRef = if key_as_string {
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| format!("m{}", r.key)),
        ))
    } else {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.key)))
    };
    let key_name = if key_as_string {
        "merchant_id"
    } else {
        "user_id"
    };
    let b = batch(vec![
        (key_name, keys),
        (
            "ts",
            ts_array(rows.iter().map(|r| Some(T0 + r.ts * SEC)).collect()),
        ),
        (
            "created",
            ts_array(
                rows.iter()
                    .map(|r| r.created.map(|c| T0 + c * SEC))
                    .collect(),
            ),
        ),
        (
            if key_as_string { "b_val" } else { "a_val" },
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.value).collect::<Vec<_>>(),
            )),
        ),
    ]);
    write_parquet(&dir.join(format!("{name}.parquet")), &b);
}

fn definitions(dir: &Path, ttl_a: Option<i64>, ttl_b: Option<i64>) -> Definitions {
    let ttl = |t: Option<i64>| t.map(|t| format!("ttl = \"{t}s\"\n")).unwrap_or_default();
    let text = format!(
        r#"
[[entity]]
name = "user"
join_keys = [{{ name = "user_id", type = "int64" }}]
[[entity]]
name = "merchant"
join_keys = [{{ name = "merchant_id", type = "string" }}]
[[source]]
name = "a"
path = "a.parquet"
event_timestamp = "ts"
created_timestamp = "created"
[[source]]
name = "b"
path = "b.parquet"
event_timestamp = "ts"
created_timestamp = "created"
[[feature_view]]
name = "va"
entities = ["user"]
source = "a"
{ta}features = [{{ name = "a_val", type = "int64" }}]
[[feature_view]]
name = "vb"
entities = ["merchant"]
source = "b"
{tb}features = [{{ name = "b_val", type = "int64" }}]
"#,
        ta = ttl(ttl_a),
        tb = ttl(ttl_b)
    );
    Definitions::parse(&text, dir).unwrap()
}

#[derive(Debug, Clone)]
struct Ent {
    user: Option<i64>,
    merchant: Option<i64>,
    ts: i64,
}

fn ents() -> impl Strategy<Value = Vec<Ent>> {
    prop::collection::vec(
        (
            prop::option::weighted(0.9, 0i64..6),
            prop::option::weighted(0.9, 0i64..5),
            0i64..16,
        ),
        0..30,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(user, merchant, ts)| Ent { user, merchant, ts })
            .collect()
    })
}

fn run_case(
    a: Vec<Row>,
    b: Vec<Row>,
    e: Vec<Ent>,
    ttl_a: Option<i64>,
    ttl_b: Option<i64>,
    known: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    write_view(dir.path(), "a", &a, false);
    write_view(dir.path(), "b", &b, true);
    let defs = definitions(dir.path(), ttl_a, ttl_b);
    let eb = batch(vec![
        (
            "row_tag",
            Arc::new(Int64Array::from_iter_values(0..e.len() as i64)) as ArrayRef,
        ),
        (
            "user_id",
            Arc::new(Int64Array::from(
                e.iter().map(|x| x.user).collect::<Vec<_>>(),
            )),
        ),
        (
            "merchant_id",
            Arc::new(StringArray::from(
                e.iter()
                    .map(|x| x.merchant.map(|m| format!("m{m}")))
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "event_timestamp",
            ts_array(e.iter().map(|x| Some(T0 + x.ts * SEC)).collect()),
        ),
    ]);
    // Several small batches, so order across batches is exercised too.
    let mut batches = Vec::new();
    let mut at = 0;
    while at < eb.num_rows() {
        let n = 7.min(eb.num_rows() - at);
        batches.push(eb.slice(at, n));
        at += n;
    }
    // The same rows in a Parquet file of 7-row row groups, streamed.
    let file = dir.path().join("entities.parquet");
    let props = datafusion::parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(7))
        .build();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        eb.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&eb).unwrap();
    w.close().unwrap();
    let rows = EntityRows {
        schema: eb.schema(),
        batches,
    };
    for entities in [Entities::Rows(rows), Entities::File(Location::Local(file))] {
        check_case(&defs, entities, &a, &b, &e, ttl_a, ttl_b, known);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_case(
    defs: &Definitions,
    entities: Entities,
    a: &[Row],
    b: &[Row],
    e: &[Ent],
    ttl_a: Option<i64>,
    ttl_b: Option<i64>,
    known: bool,
) {
    let from = match &entities {
        Entities::Rows(_) => "rows in memory",
        Entities::File(_) => "a file",
    };
    let features = defs
        .resolve_features(&["va:a_val".to_string(), "vb:b_val".to_string()])
        .unwrap();
    let opts = HistoricalOptions {
        as_of_known_time: known,
        engine: EngineOptions {
            target_partitions: 3,
            batch_size: 5,
            ..EngineOptions::default()
        },
        ..HistoricalOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async {
        let ctx = session(&opts.engine).unwrap();
        historical_of(&ctx, defs, &features, entities, &opts)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    });
    let total: usize = out.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, e.len(), "every entity row is kept ({from})");
    if e.is_empty() {
        return;
    }
    let out = concat(&out);
    assert_eq!(
        out.schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        [
            "row_tag",
            "user_id",
            "merchant_id",
            "event_timestamp",
            "a_val",
            "b_val"
        ]
    );
    let tags = i64s(&out, "row_tag");
    let av = i64s(&out, "a_val");
    let bv = i64s(&out, "b_val");
    for (i, ent) in e.iter().enumerate() {
        assert_eq!(tags[i], Some(i as i64), "entity order kept ({from})");
        let want_a = reference(a, ent.user, ent.ts, ttl_a, known);
        let want_b = reference(b, ent.merchant, ent.ts, ttl_b, known);
        let ok_a = if want_a.is_empty() {
            av[i].is_none()
        } else {
            want_a.contains(&av[i])
        };
        let ok_b = if want_b.is_empty() {
            bv[i].is_none()
        } else {
            want_b.contains(&bv[i])
        };
        assert!(
            ok_a,
            "row {i} {ent:?} ({from}): a_val {:?}, reference {want_a:?}",
            av[i]
        );
        assert!(
            ok_b,
            "row {i} {ent:?} ({from}): b_val {:?}, reference {want_b:?}",
            bv[i]
        );
        // Leakage: the value's row never has an event time after the entity row's.
        if let Some(v) = av[i] {
            assert!(
                a.iter().any(|r| r.value == Some(v)
                    && r.ts <= ent.ts
                    && r.key == ent.user.unwrap_or(-1))
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn pit_matches_the_naive_reference(
        a in rows(5), b in rows(4), e in ents(),
        ttl_a in prop::option::of(1i64..6), ttl_b in prop::option::of(0i64..4).prop_map(|t| t.map(|t| t + 1)),
    ) {
        run_case(a, b, e, ttl_a, ttl_b, false);
    }

    #[test]
    fn pit_as_of_known_time_matches_the_naive_reference(
        a in rows(5), b in rows(4), e in ents(),
        ttl_a in prop::option::of(1i64..6), ttl_b in prop::option::of(1i64..4),
    ) {
        run_case(a, b, e, ttl_a, ttl_b, true);
    }
}
