//! Batch scoring (`greenbelt_app::score`) end to end on files written
//! here: the scores of the logreg and forest fixtures equal the runtime's
//! own `infer` on the same rows (native engine and ONNX Runtime), rows
//! stay in input order across threads, columns come from the model's
//! profile, CSV in and out, point-in-time features from the feature store,
//! a bounded number of batches in flight, and a peak RSS that does not grow
//! with the file (in a child process).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::file::properties::WriterProperties;
use greenbelt_app::score::{
    FeatureInput, Input, Progress, ScoreOptions, ScoringModel, Summary, score,
};
use greenbelt_core::{Tensor, TensorData};
use greenbelt_drift::model::{ModelProfile, Task};
use greenbelt_runtime::{Backend, LoadOptions, Runtimes};
use greenbelt_serve::Config;

use crate::child;

const FEATURES: usize = 20;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/models/{name}/1/model.onnx"))
}

/// Deterministic values in [-3, 3) (a 64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 6.0 - 3.0
    }
}

fn names(prefix: &str) -> Vec<String> {
    (0..FEATURES).map(|j| format!("{prefix}{j}")).collect()
}

/// `rows` rows: `id` (0..rows) then `f0..f19`; every `null_every`-th value
/// of f3 is null (0: none). Row-major values returned beside the batch.
fn table(rows: usize, seed: u64, null_every: usize) -> (RecordBatch, Vec<f64>) {
    let mut rng = Lcg(seed);
    let matrix: Vec<f64> = (0..rows * FEATURES).map(|_| rng.next()).collect();
    let mut fields = vec![Field::new("id", DataType::Int64, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))];
    for (j, name) in names("f").into_iter().enumerate() {
        let values = (0..rows).map(|i| {
            let null = null_every > 0 && j == 3 && i % null_every == 0;
            (!null).then(|| matrix[i * FEATURES + j])
        });
        fields.push(Field::new(name, DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from_iter(values)));
    }
    let mut matrix = matrix;
    if null_every > 0 {
        for i in (0..rows).step_by(null_every) {
            matrix[i * FEATURES + 3] = f64::NAN;
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    (batch, matrix)
}

fn write_parquet(path: &Path, batch: &RecordBatch, row_group: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn read_parquet(path: &Path) -> (RecordBatch, Vec<(String, String)>) {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let kv = b
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let schema = b.schema().clone();
    let batches: Vec<RecordBatch> = b.build().unwrap().map(Result::unwrap).collect();
    let all = datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap();
    (all, kv)
}

/// The runtime's own answer for a row-major f64 matrix: (labels, row-major probabilities).
fn reference(model: &Path, backend: Backend, matrix: &[f64]) -> (Vec<i64>, Vec<f32>) {
    let rows = matrix.len() / FEATURES;
    let m = Runtimes::probe(None)
        .load(
            model,
            &LoadOptions {
                backend,
                ..LoadOptions::default()
            },
        )
        .unwrap();
    let input = Tensor::new(
        "input",
        vec![rows as i64, FEATURES as i64],
        TensorData::Fp32(matrix.iter().map(|v| *v as f32).collect()),
    )
    .unwrap();
    let out = m.infer(&[input]).unwrap();
    let (TensorData::Int64(labels), TensorData::Fp32(probs)) = (&out[0].data, &out[1].data) else {
        panic!("unexpected outputs {out:?}")
    };
    (labels.clone(), probs.clone())
}

fn f32_column(b: &RecordBatch, name: &str) -> Vec<f32> {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", b.schema()))
        .as_primitive::<Float32Type>()
        .values()
        .to_vec()
}

fn i64_column(b: &RecordBatch, name: &str) -> Vec<i64> {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", b.schema()))
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 || (g.is_nan() && w.is_nan()),
            "{what}: row {i}: {g} vs {w}"
        );
    }
}

/// The scored probabilities and labels of a file equal `reference`.
fn assert_scores(out: &RecordBatch, want: &(Vec<i64>, Vec<f32>), prefix: &str, what: &str) {
    let (labels, probs) = want;
    assert_eq!(
        &i64_column(out, &format!("{prefix}label")),
        labels,
        "{what}"
    );
    let p0: Vec<f32> = probs.iter().step_by(2).copied().collect();
    let p1: Vec<f32> = probs.iter().skip(1).step_by(2).copied().collect();
    assert_close(
        &f32_column(out, &format!("{prefix}probabilities_0")),
        &p0,
        what,
    );
    assert_close(
        &f32_column(out, &format!("{prefix}probabilities_1")),
        &p1,
        what,
    );
}

async fn run(model: &ScoringModel, input: &Path, out: &Path, opts: &ScoreOptions) -> Summary {
    let progress = Arc::new(Progress::default());
    score(
        model,
        &Input::Files(input.display().to_string()),
        out,
        opts,
        &progress,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logreg_and_forest_scores_equal_the_runtime_on_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 20_000;
    let (batch, matrix) = table(rows, 7, 0);
    let input = dir.path().join("in.parquet");
    write_parquet(&input, &batch, 4096);
    let config = Config::default();
    for (name, backend, expect) in [
        ("logreg", Backend::Auto, "native"),
        ("forest", Backend::Auto, "native"),
        ("forest", Backend::Onnxruntime, "onnxruntime"),
    ] {
        let what = format!("{name} on {expect}");
        let model = ScoringModel::from_file(&config, &fixture(name), backend, 3)
            .await
            .unwrap();
        let opts = ScoreOptions {
            threads: 3,
            batch_rows: 1000,
            columns: Some(names("f")),
            ..ScoreOptions::default()
        };
        let out = dir.path().join(format!("{name}-{expect}.parquet"));
        let summary = run(&model, &input, &out, &opts).await;
        assert_eq!(summary.rows, rows as u64, "{what}");
        assert_eq!(summary.backend, expect);
        assert_eq!(
            (summary.model.as_str(), summary.model_version),
            (name, Some(1))
        );
        assert!(
            summary.line().contains(&format!("{name}:1 ({expect})")),
            "{}",
            summary.line()
        );

        let (scored, kv) = read_parquet(&out);
        // Input columns pass through, in input order across three threads.
        assert_eq!(
            i64_column(&scored, "id"),
            (0..rows as i64).collect::<Vec<_>>()
        );
        assert_eq!(
            scored.num_columns(),
            1 + FEATURES + 3 + 2,
            "{:?}",
            scored.schema()
        );
        assert_scores(
            &scored,
            &reference(&fixture(name), backend, &matrix),
            "",
            &what,
        );
        // The model's name and version on every row and in the file's metadata.
        let names = scored
            .column_by_name("model_name")
            .unwrap()
            .as_string::<i32>();
        assert!(names.iter().all(|n| n == Some(name)));
        assert!(i64_column(&scored, "model_version").iter().all(|v| *v == 1));
        assert!(
            kv.contains(&("greenbelt.model_version".into(), "1".into())),
            "{kv:?}"
        );
        assert!(kv.contains(&(
            "greenbelt.model_sha256".into(),
            summary.model_sha256.clone()
        )));
        assert!(
            !dir.path()
                .join(format!("{name}-{expect}.parquet.tmp"))
                .exists()
        );
    }
}

/// The logreg fixture copied into `dir` with a profile whose feature names
/// are `c19, c18, ..., c0` (the file holds them in the other order).
fn logreg_with_reversed_profile(dir: &Path) -> PathBuf {
    let model = dir.join("churn.onnx");
    std::fs::copy(fixture("logreg"), &model).unwrap();
    let mut reversed = names("c");
    reversed.reverse();
    let mut rng = Lcg(3);
    let matrix: Vec<f64> = (0..200 * FEATURES).map(|_| rng.next()).collect();
    let preds: Vec<f64> = (0..200).flat_map(|_| [0.5, 0.5]).collect();
    let profile = ModelProfile::build(
        Task::Classification,
        "input",
        &reversed,
        &matrix,
        "probabilities",
        &preds,
        2,
    )
    .unwrap();
    std::fs::write(
        greenbelt_serve::repository::profile_path(&model),
        serde_json::to_string(&profile).unwrap(),
    )
    .unwrap();
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_in_and_out_with_the_columns_the_profile_names() {
    let dir = tempfile::tempdir().unwrap();
    let model_file = logreg_with_reversed_profile(dir.path());
    let rows = 3000;
    let mut rng = Lcg(11);
    let matrix: Vec<f64> = (0..rows * FEATURES)
        .map(|_| (rng.next() * 1e4).round() / 1e4)
        .collect();
    let mut text = format!("city,{}\n", names("c").join(","));
    for row in matrix.chunks(FEATURES) {
        let values: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        text.push_str(&format!("Oslo,{}\n", values.join(",")));
    }
    let input = dir.path().join("in.csv");
    std::fs::write(&input, text).unwrap();

    let model = ScoringModel::from_file(&Config::default(), &model_file, Backend::Auto, 2)
        .await
        .unwrap();
    assert_eq!((model.name.as_str(), model.version), ("churn", None));
    let opts = ScoreOptions {
        threads: 2,
        batch_rows: 512,
        passthrough: false,
        output_prefix: "pred_".into(),
        ..ScoreOptions::default()
    };
    let out = dir.path().join("out.csv");
    let summary = run(&model, &input, &out, &opts).await;
    assert_eq!(summary.rows, rows as u64);

    // The profile's order (c19 .. c0) feeds the model.
    let reordered: Vec<f64> = matrix
        .chunks(FEATURES)
        .flat_map(|row| row.iter().rev().copied().collect::<Vec<_>>())
        .collect();
    let (labels, probs) = reference(&model_file, Backend::Auto, &reordered);
    let mut reader = csv::Reader::from_path(&out).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "pred_label",
            "pred_probabilities_0",
            "pred_probabilities_1",
            "model_name",
            "model_version"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), rows);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r[0].parse::<i64>().unwrap(), labels[i], "row {i}");
        let p1: f32 = r[2].parse().unwrap();
        assert!((p1 - probs[2 * i + 1]).abs() <= 1e-6, "row {i}: {p1}");
        assert_eq!((&r[3], &r[4]), ("churn", ""), "row {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_stay_bounded_and_nulls_are_missing_values() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 30_000;
    let (batch, matrix) = table(rows, 5, 7);
    let input = dir.path().join("in.parquet");
    write_parquet(&input, &batch, 2000);
    let model = ScoringModel::from_file(&Config::default(), &fixture("forest"), Backend::Auto, 2)
        .await
        .unwrap();
    let opts = ScoreOptions {
        threads: 2,
        batch_rows: 100,
        columns: Some(names("f")),
        ..ScoreOptions::default()
    };
    let out = dir.path().join("out.parquet");
    let summary = run(&model, &input, &out, &opts).await;
    // 300 batches went through; never more than the bound were held at once.
    assert_eq!(summary.rows, rows as u64);
    assert!(
        summary.max_batches_in_flight <= opts.batch_bound(),
        "{} batches held at once, bound {}",
        summary.max_batches_in_flight,
        opts.batch_bound()
    );
    assert!(
        summary.max_batches_in_flight >= 2,
        "nothing overlapped: {summary:?}"
    );
    // A null in a float input is NaN, which the trees route down their missing-value track.
    let (scored, _) = read_parquet(&out);
    assert_scores(
        &scored,
        &reference(&fixture("forest"), Backend::Auto, &matrix),
        "",
        "forest with nulls",
    );
    assert_eq!(
        i64_column(&scored, "id"),
        (0..rows as i64).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_features_from_the_store_are_scored_in_entity_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    // Two users, each with two feature rows a day apart.
    let mut rng = Lcg(9);
    let mut source = format!("user_id,event_ts,{}\n", names("f").join(","));
    let mut rows_by_user = std::collections::BTreeMap::new();
    for (user, day) in [("u1", 1), ("u2", 1), ("u1", 3), ("u2", 3)] {
        let row: Vec<f64> = (0..FEATURES)
            .map(|_| (rng.next() * 1e4).round() / 1e4)
            .collect();
        let text: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        source.push_str(&format!(
            "{user},2026-01-0{day}T00:00:00Z,{}\n",
            text.join(",")
        ));
        rows_by_user.insert((user, day), row);
    }
    std::fs::write(d.join("data/source.csv"), source).unwrap();
    let features: Vec<String> = names("f")
        .iter()
        .map(|n| format!("{{ name = \"{n}\", type = \"float64\" }}"))
        .collect();
    std::fs::write(
        d.join("features.toml"),
        format!(
            "[store]\noffline = \"data/offline\"\nonline = \"data/online.redb\"\n\
             [[entity]]\nname = \"user\"\njoin_keys = [{{ name = \"user_id\", type = \"string\" }}]\n\
             [[source]]\nname = \"s\"\npath = \"data/source.csv\"\nevent_timestamp = \"event_ts\"\n\
             [[feature_view]]\nname = \"stats\"\nentities = [\"user\"]\nsource = \"s\"\nttl = \"30days\"\nfeatures = [{}]\n\
             [[feature_service]]\nname = \"scoring\"\nfeatures = [\"stats:*\"]\n",
            features.join(", ")
        ),
    )
    .unwrap();
    // Entity rows out of time order: each gets the newest values at or before its time.
    std::fs::write(
        d.join("entities.csv"),
        "user_id,event_timestamp\nu2,2026-01-04T00:00:00Z\nu1,2026-01-02T00:00:00Z\nu1,2026-01-05T00:00:00Z\n",
    )
    .unwrap();
    let want = [("u2", 3), ("u1", 1), ("u1", 3)];

    let model = ScoringModel::from_file(&Config::default(), &fixture("logreg"), Backend::Auto, 2)
        .await
        .unwrap();
    let input = Input::Features(FeatureInput {
        definitions: d.join("features.toml"),
        service: "scoring".into(),
        entities: d.join("entities.csv").display().to_string(),
        entity_timestamp: "event_timestamp".into(),
        as_of_known_time: false,
        from_offline_store: false,
    });
    let out = d.join("scored.parquet");
    let progress = Arc::new(Progress::default());
    let summary = score(&model, &input, &out, &ScoreOptions::default(), &progress)
        .await
        .unwrap();
    assert_eq!(summary.rows, 3);
    let (scored, _) = read_parquet(&out);
    let users: Vec<&str> = scored
        .column_by_name("user_id")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(users, ["u2", "u1", "u1"]);
    let matrix: Vec<f64> = want.iter().flat_map(|k| rows_by_user[k].clone()).collect();
    assert_scores(
        &scored,
        &reference(&fixture("logreg"), Backend::Auto, &matrix),
        "",
        "features",
    );
}

/// Rows of the bounded-memory test's file; `GREENBELT_TEST_SCORE_ROWS`
/// overrides it for exploring by hand.
fn big_rows() -> usize {
    std::env::var("GREENBELT_TEST_SCORE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000_000)
}

#[test]
fn a_file_several_times_the_memory_bound_is_scored_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.parquet");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(65_536))
        .build();
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    let mut in_memory = 0u64;
    let chunk = 100_000;
    for i in 0..big_rows().div_ceil(chunk) {
        let (b, _) = table(chunk, 100 + i as u64, 0);
        let w = writer.get_or_insert_with(|| {
            ArrowWriter::try_new(
                std::fs::File::create(&input).unwrap(),
                b.schema(),
                Some(props.clone()),
            )
            .unwrap()
        });
        in_memory += b.get_array_memory_size() as u64;
        w.write(&b).unwrap();
    }
    writer.unwrap().close().unwrap();
    let out = child::run(
        "score::bounded_memory_child",
        &[
            ("GREENBELT_TEST_SCORE_DIR", dir.path().display().to_string()),
            ("MALLOC_MMAP_THRESHOLD_", (1024 * 1024).to_string()),
        ],
    );
    let line = out
        .lines()
        .find_map(|l| l.find("MEMORY ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no MEMORY line in:\n{out}"));
    eprintln!("{line}; the input holds {} MiB in memory", in_memory >> 20);
    let peak: u64 = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("peak_rss_kib="))
        .unwrap()
        .parse()
        .unwrap();
    // Measured (debug build, 2 cores, 2 threads): 166 MiB at 0.5M rows, 181
    // at 3M (the default, 480 MiB of Arrow data), 196 at 6M: the process
    // with ONNX Runtime loaded (~85 MiB), a row group of the input, the
    // batches in flight and the Parquet writer's row group (flushed at 16
    // MiB); only the output file's footer metadata grows with the rows.
    let bound_mib = 256;
    assert!(
        bound_mib << 20 < in_memory,
        "the bound must be below the data's size for the test to mean anything"
    );
    assert!(peak < bound_mib * 1024, "peak RSS {} MiB", peak / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the bounded-memory test in a child process"]
async fn bounded_memory_child() {
    if !child::in_child() {
        return;
    }
    let dir = PathBuf::from(std::env::var("GREENBELT_TEST_SCORE_DIR").unwrap());
    let model = ScoringModel::from_file(&Config::default(), &fixture("logreg"), Backend::Auto, 2)
        .await
        .unwrap();
    let opts = ScoreOptions {
        threads: 2,
        columns: Some(names("f")),
        ..ScoreOptions::default()
    };
    let summary = run(
        &model,
        &dir.join("big.parquet"),
        &dir.join("out.parquet"),
        &opts,
    )
    .await;
    assert_eq!(summary.rows, big_rows().div_ceil(100_000) as u64 * 100_000);
    println!(
        "MEMORY peak_rss_kib={} rows={} rows_per_second={:.0} max_batches_in_flight={}",
        child::peak_rss_kib(),
        summary.rows,
        summary.rows_per_second,
        summary.max_batches_in_flight
    );
}
