//! `greenbelt score` as a user runs it: a CSV scored with a model file, a
//! registry model by alias, version and name, a multi-input model, a
//! partitioned input that resumes after an output is lost, and errors
//! (missing and mistyped columns, an unreadable file, an operator the
//! native engine does not run, a null in an integer input) that name the
//! thing at fault and exit 2. Also `greenbelt bench devices`, the in-process
//! CPU/GPU comparison beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const FEATURES: usize = 20;

fn fixture(name: &str, version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../fixtures/models/{name}/{version}/model.onnx"))
}

fn greenbelt(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .args(args)
        .output()
        .unwrap()
}

/// `greenbelt score ARGS`, which must succeed; its stdout.
fn score_ok(dir: &Path, args: &[&str]) -> String {
    let out = greenbelt(dir, &[&["score"][..], args].concat());
    assert!(
        out.status.success(),
        "greenbelt score {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `greenbelt score ARGS`, which must fail with exit 2; its stderr.
fn score_err(dir: &Path, args: &[&str]) -> String {
    let out = greenbelt(dir, &[&["score"][..], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn feature_list() -> String {
    (0..FEATURES)
        .map(|j| format!("f{j}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `rows` rows: `id` from `first_id`, then `f0..f19`.
fn batch(rows: usize, first_id: i64) -> RecordBatch {
    let mut fields = vec![Field::new("id", DataType::Int64, false)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
        first_id..first_id + rows as i64,
    ))];
    for j in 0..FEATURES {
        fields.push(Field::new(format!("f{j}"), DataType::Float64, false));
        cols.push(Arc::new(Float64Array::from_iter_values((0..rows).map(
            |i| (((first_id as usize + i) * 31 + j * 17) % 97) as f64 / 16.0 - 3.0,
        ))));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

fn write_parquet(path: &Path, b: &RecordBatch) {
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
}

fn write_csv(path: &Path, b: &RecordBatch) {
    let mut w = datafusion::arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(std::fs::File::create(path).unwrap());
    w.write(b).unwrap();
}

fn read_parquet(path: &Path) -> RecordBatch {
    let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let schema = r.schema().clone();
    let batches: Vec<RecordBatch> = r.build().unwrap().map(Result::unwrap).collect();
    datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap()
}

fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", b.schema()))
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

#[test]
fn score_a_csv_and_registry_models_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_csv(&d.join("in.csv"), &batch(500, 0));
    let cols = feature_list();
    let logreg = fixture("logreg", 1);
    let line = score_ok(
        d,
        &[
            "--model-file",
            logreg.to_str().unwrap(),
            "-i",
            "in.csv",
            "-o",
            "out.parquet",
            "--columns",
            &cols,
        ],
    );
    assert!(
        line.starts_with("scored 500 rows in ")
            && line.contains("rows/s) with logreg:1 (native) into out.parquet"),
        "{line}"
    );
    let from_file = read_parquet(&d.join("out.parquet"));
    assert_eq!(i64s(&from_file, "id"), (0..500).collect::<Vec<_>>());

    // The registry in this directory (the default .greenbelt/registry.db):
    // v1 and v2 of the logreg, champion on v1.
    for v in [1, 2] {
        let f = fixture("logreg", v);
        let out = greenbelt(
            d,
            &["registry", "register", "lr", "--file", f.to_str().unwrap()],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let out = greenbelt(d, &["registry", "alias", "set", "lr", "champion", "1"]);
    assert!(out.status.success(), "{out:?}");
    for (model, version) in [("lr@champion", 1), ("lr:2", 2), ("lr", 2)] {
        let json = score_ok(
            d,
            &[
                "--model",
                model,
                "-i",
                "in.csv",
                "-o",
                "reg.parquet",
                "--columns",
                &cols,
                "--json",
            ],
        );
        let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(summary["model"], "lr", "{summary}");
        assert_eq!(summary["model_version"], version, "{summary}");
        assert_eq!(summary["rows"], 500, "{summary}");
        let scored = read_parquet(&d.join("reg.parquet"));
        assert!(i64s(&scored, "model_version").iter().all(|v| *v == version));
        if version == 1 {
            // The artifact from the store scores as the file did.
            assert_eq!(i64s(&scored, "label"), i64s(&from_file, "label"));
            assert_eq!(
                scored.column_by_name("probabilities_1").unwrap(),
                from_file.column_by_name("probabilities_1").unwrap()
            );
        }
    }
    let err = score_err(
        d,
        &["--model", "lr@nope", "-i", "in.csv", "-o", "x.parquet"],
    );
    assert!(err.contains("no alias \"nope\""), "{err}");
    let err = score_err(d, &["--model", "lr:x", "-i", "in.csv", "-o", "x.parquet"]);
    assert!(err.contains("NAME@ALIAS"), "{err}");
}

#[test]
fn a_model_with_several_inputs_takes_columns_named_like_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = String::from("a_0,a_1,a_2,a_3,b_0,b_1,b_2,b_3,c\n");
    for i in 0..5 {
        let c = if i == 2 { String::new() } else { i.to_string() };
        csv.push_str(&format!("{i},1,2,3,0.5,1,5,0,{c}\n"));
    }
    std::fs::write(d.join("in.csv"), &csv).unwrap();
    let multi = fixture("multi_io", 1);
    let m = multi.to_str().unwrap();
    // A null in the INT64 input: an error with the column and the row.
    let err = score_err(d, &["--model-file", m, "-i", "in.csv", "-o", "out.parquet"]);
    assert!(
        err.contains("column \"c\" is null at row 3 of in.csv"),
        "{err}"
    );
    assert!(!d.join("out.parquet").exists() && !d.join("out.parquet.tmp").exists());

    std::fs::write(d.join("in.csv"), csv.replace(",\n", ",9\n")).unwrap();
    score_ok(d, &["--model-file", m, "-i", "in.csv", "-o", "out.parquet"]);
    let b = read_parquet(&d.join("out.parquet"));
    assert_eq!(i64s(&b, "count"), vec![1, 2, 10, 4, 5]);
    let sum0 = b
        .column_by_name("sum_0")
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Float32Type>();
    assert_eq!(sum0.values().to_vec(), vec![0.5, 1.5, 2.5, 3.5, 4.5]);
    let greater = b.column_by_name("greater_3").unwrap().as_boolean();
    assert!(greater.iter().all(|g| g == Some(true)));

    // The native engine does not run Greater: the error names the operator.
    let err = score_err(
        d,
        &[
            "--model-file",
            m,
            "-i",
            "in.csv",
            "-o",
            "x.parquet",
            "--backend",
            "native",
        ],
    );
    assert!(err.contains("operator \"Greater\""), "{err}");
}

#[test]
fn a_partitioned_input_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("parts")).unwrap();
    for p in 0..3 {
        write_parquet(
            &d.join(format!("parts/p{p}.parquet")),
            &batch(1000, p * 1000),
        );
    }
    let forest = fixture("forest", 1);
    let cols = feature_list();
    let args = |input: &'static str, out: &'static str| -> Vec<String> {
        [
            "--model-file",
            forest.to_str().unwrap(),
            "-i",
            input,
            "-o",
            out,
            "--columns",
            &cols,
            "--json",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |a: Vec<String>| -> serde_json::Value {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        serde_json::from_str(&score_ok(d, &a)).unwrap()
    };
    let first = run(args("parts", "out"));
    assert_eq!(
        (
            &first["rows"],
            &first["partitions_scored"],
            &first["partitions_skipped"]
        ),
        (&3000.into(), &3.into(), &0.into()),
        "{first}"
    );
    let mtime = |p: &str| std::fs::metadata(d.join(p)).unwrap().modified().unwrap();
    let before = [mtime("out/p0.parquet"), mtime("out/p2.parquet")];
    for p in 0..3 {
        let b = read_parquet(&d.join(format!("out/p{p}.parquet")));
        assert_eq!(
            i64s(&b, "id"),
            (p * 1000..(p + 1) * 1000).collect::<Vec<_>>()
        );
    }

    // A run killed while writing p1: its output is gone, a .tmp is left.
    std::fs::remove_file(d.join("out/p1.parquet")).unwrap();
    std::fs::write(d.join("out/p1.parquet.tmp"), b"half a file").unwrap();
    let second = run(args("parts", "out"));
    assert_eq!(
        (
            &second["rows"],
            &second["partitions_scored"],
            &second["partitions_skipped"]
        ),
        (&1000.into(), &1.into(), &2.into()),
        "{second}"
    );
    assert_eq!([mtime("out/p0.parquet"), mtime("out/p2.parquet")], before);
    assert_eq!(
        i64s(&read_parquet(&d.join("out/p1.parquet")), "id"),
        (1000..2000).collect::<Vec<_>>()
    );
    assert!(!d.join("out/p1.parquet.tmp").exists());

    // A glob picks the partitions the same way; the text summary counts them.
    let a: Vec<String> = args("parts/p?.parquet", "out2")
        .into_iter()
        .filter(|a| a != "--json")
        .collect();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let line = score_ok(d, &a);
    assert!(line.contains("partitions: 3 scored, 0 skipped"), "{line}");
}

#[test]
fn errors_name_the_column_file_or_operator_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_parquet(&d.join("in.parquet"), &batch(50, 0));
    let logreg = fixture("logreg", 1);
    let m = logreg.to_str().unwrap();
    let base = ["--model-file", m, "-i", "in.parquet", "-o", "out.parquet"];

    // 21 numeric columns (id and f0..f19) for 20 features, no profile.
    let err = score_err(d, &base);
    assert!(
        err.contains("takes 20 columns") && err.contains("--columns"),
        "{err}"
    );
    // A column that is not there.
    let cols = feature_list().replace("f19", "nope");
    let err = score_err(d, &[&base[..], &["--columns", &cols]].concat());
    assert!(
        err.contains("column \"nope\" is not in in.parquet"),
        "{err}"
    );

    // A text column where the model takes numbers.
    let mut csv = String::from("city,");
    csv.push_str(&feature_list().replace("f0,", ""));
    csv.push('\n');
    csv.push_str(&format!("Oslo{}\n", ",1.5".repeat(FEATURES - 1)));
    std::fs::write(d.join("typed.csv"), csv).unwrap();
    let cols = feature_list().replace("f0,", "city,");
    let err = score_err(
        d,
        &[
            "--model-file",
            m,
            "-i",
            "typed.csv",
            "-o",
            "o.parquet",
            "--columns",
            &cols,
        ],
    );
    assert!(
        err.contains("column \"city\" is Utf8 in typed.csv") && err.contains("FP32"),
        "{err}"
    );

    // A file that is not Parquet, and one that is not there.
    std::fs::write(d.join("bad.parquet"), b"not parquet at all").unwrap();
    let err = score_err(
        d,
        &["--model-file", m, "-i", "bad.parquet", "-o", "o.parquet"],
    );
    assert!(err.contains("bad.parquet"), "{err}");
    let err = score_err(
        d,
        &["--model-file", m, "-i", "gone.parquet", "-o", "o.parquet"],
    );
    assert!(err.contains("gone.parquet: no such file"), "{err}");
    let err = score_err(
        d,
        &[
            "--model-file",
            "nope.onnx",
            "-i",
            "in.parquet",
            "-o",
            "o.parquet",
        ],
    );
    assert!(err.contains("nope.onnx"), "{err}");
    // An output column that clashes with an input column.
    let cols = feature_list();
    write_parquet(&d.join("clash.parquet"), &{
        let b = batch(10, 0);
        let mut fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[0] = Field::new("label", DataType::Int64, false);
        RecordBatch::try_new(Arc::new(Schema::new(fields)), b.columns().to_vec()).unwrap()
    });
    let err = score_err(
        d,
        &[
            "--model-file",
            m,
            "-i",
            "clash.parquet",
            "-o",
            "o.parquet",
            "--columns",
            &cols,
        ],
    );
    assert!(
        err.contains("two columns \"label\"") && err.contains("--output-prefix"),
        "{err}"
    );
    assert!(!d.join("o.parquet").exists() && !d.join("o.parquet.tmp").exists());
    score_ok(
        d,
        &[
            "--model-file",
            m,
            "-i",
            "clash.parquet",
            "-o",
            "o.parquet",
            "--columns",
            &cols,
            "--output-prefix",
            "pred_",
        ],
    );
}

/// `greenbelt bench devices`: the CPU is measured across batch sizes and a
/// GPU this machine lacks is reported with its reason, not a failure.
#[test]
fn bench_devices_measures_the_cpu_and_says_why_the_gpu_was_not() {
    let model = fixture("logreg", 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .env("GREENBELT_LOG", "warn")
        .args(["bench", "devices", "--model-file"])
        .arg(&model)
        .args([
            "--batch-sizes",
            "1,16",
            "--window-ms",
            "20",
            "--max-windows",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs[0]["device"], "cpu");
    let points = runs[0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[1]["batch"], 16);
    assert!(
        points
            .iter()
            .all(|p| p["rows_per_s"].as_f64().unwrap() > 0.0)
    );
    assert_eq!(runs[1]["device"], "cuda");
    if !runs[1]["error"].is_null() {
        assert!(runs[1]["points"].as_array().unwrap().is_empty());
        assert!(r["gpu_faster_from_batch"].is_null());
    }

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .args(["bench", "devices", "--model-file"])
        .arg(&model)
        .args(["--devices", "tpu"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("cpu, cuda, cuda:N"), "{err}");
}

/// `greenbelt score ARGS` with the AWS environment for `endpoint`.
fn score_s3(dir: &Path, endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "greenbelt-test")
        .env("AWS_SECRET_ACCESS_KEY", "greenbelt-test")
        .args([&["score"][..], args, &["--json"]].concat())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "greenbelt score {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Outputs on S3 (moto's server, started by scripts/test.sh): one file, read
/// back through `s3://` as the next run's input, and partitions that a rerun
/// skips because their objects exist.
#[test]
fn score_writes_s3_outputs_and_resumes_partitions_there() {
    let Ok(endpoint) = std::env::var("GREENBELT_TEST_S3_ENDPOINT") else {
        eprintln!(
            "SKIP score_writes_s3_outputs_and_resumes_partitions_there: GREENBELT_TEST_S3_ENDPOINT is not set"
        );
        return;
    };
    let endpoint = endpoint.trim_end_matches('/').to_string();
    let bucket = format!("score-{}", std::process::id());
    let host = endpoint.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_parquet(&d.join("in.parquet"), &batch(300, 0));
    let logreg = fixture("logreg", 1);
    let model = logreg.to_str().unwrap();
    let cols = feature_list();
    let remote = format!("s3://{bucket}/scores/out.parquet");
    let first = score_s3(
        d,
        &endpoint,
        &[
            "--model-file",
            model,
            "--input",
            "in.parquet",
            "--output",
            &remote,
            "--columns",
            &cols,
        ],
    );
    assert_eq!(first["rows"], 300, "{first}");
    // The uploaded file is a whole Parquet file: score it again, from S3.
    let again = score_s3(
        d,
        &endpoint,
        &[
            "--model-file",
            model,
            "--input",
            &remote,
            "--output",
            "back.parquet",
            "--columns",
            &cols,
            "--no-passthrough",
        ],
    );
    assert_eq!(again["rows"], 300, "{again}");
    let back = read_parquet(&d.join("back.parquet"));
    assert_eq!(back.num_rows(), 300);
    assert!(
        back.column_by_name("label").is_some(),
        "{:?}",
        back.schema()
    );

    // Partitions: two objects; the rerun finds both and scores nothing.
    std::fs::create_dir(d.join("parts")).unwrap();
    write_parquet(&d.join("parts/a.parquet"), &batch(10, 0));
    write_parquet(&d.join("parts/b.parquet"), &batch(20, 10));
    let parts = format!("s3://{bucket}/parts");
    let args = [
        "--model-file",
        model,
        "--input",
        "parts",
        "--output",
        &parts,
        "--columns",
        &cols,
    ];
    let one = score_s3(d, &endpoint, &args);
    assert_eq!(
        (&one["partitions_scored"], &one["rows"]),
        (&2.into(), &30.into()),
        "{one}"
    );
    let two = score_s3(d, &endpoint, &args);
    assert_eq!(
        (&two["partitions_scored"], &two["partitions_skipped"]),
        (&0.into(), &2.into()),
        "{two}"
    );
}
