//! Parquet and CSV inputs give the pipeline the same training data.

use std::sync::Arc;

use greenbelt_control::pipeline::dataset::{Column, prepare, read};
use greenbelt_control::pipeline::definition::DataDef;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

#[test]
fn parquet_and_csv_prepare_identically() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("tx.csv");
    std::fs::write(&csv_path, greenbelt_control::demo::fraud_csv(3000, 5, 0.3)).unwrap();
    let csv = read(&csv_path).unwrap();
    let num = |name: &str| match &csv.columns[name] {
        Column::Num(v) => v.clone(),
        Column::Text(_) => panic!("{name} is text"),
    };
    let amount = num("amount");
    let risk = num("merchant_risk");
    let label: Vec<i64> = num("is_fraud").iter().map(|v| *v as i64).collect();
    let ts: Vec<ByteArray> = match &csv.columns["event_ts"] {
        Column::Text(v) => v
            .iter()
            .map(|s| ByteArray::from(s.clone().unwrap().as_str()))
            .collect(),
        Column::Num(_) => panic!("event_ts is numeric"),
    };

    let pq_path = dir.path().join("tx.parquet");
    let schema = Arc::new(
        parse_message_type(
            "message tx { REQUIRED DOUBLE amount; REQUIRED DOUBLE merchant_risk; REQUIRED BYTE_ARRAY event_ts (UTF8); REQUIRED INT64 is_fraud; }",
        )
        .unwrap(),
    );
    let mut writer = SerializedFileWriter::new(
        std::fs::File::create(&pq_path).unwrap(),
        schema,
        Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut rg = writer.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<DoubleType>()
        .write_batch(&amount, None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<DoubleType>()
        .write_batch(&risk, None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&ts, None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(&label, None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    writer.close().unwrap();

    let pq = read(&pq_path).unwrap();
    assert_eq!(pq.rows, 3000);
    let def: DataDef = toml::from_str(
        "path = \"x\"\nlabel = \"is_fraud\"\ntimestamp = \"event_ts\"\nfeatures = [\"amount\", \"merchant_risk\"]\n",
    )
    .unwrap();
    let a = prepare(&csv, &def).unwrap();
    let b = prepare(&pq, &def).unwrap();
    assert_eq!(a.train_x, b.train_x);
    assert_eq!(a.holdout_y, b.holdout_y);
    assert_eq!(a.split.cutoff, b.split.cutoff);
    assert_eq!(b.split.kind, "time");
    // A file that is not Parquet is a clear error.
    let bad = dir.path().join("bad.parquet");
    std::fs::write(&bad, b"PAR1 not really").unwrap();
    let err = read(&bad).unwrap_err().to_string();
    assert!(err.contains("not a readable Parquet file"), "{err}");
}
