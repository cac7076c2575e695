//! The input of the batch-scoring benchmark (bench/score.sh): a Parquet
//! file (or CSV for a `.csv` name) of `ROWS` rows, an `id` column and
//! `FEATURES` standard-normal Float64 features `f0..`, in row groups of
//! 65,536 rows.
//!
//!     score_bench_data OUT.parquet|OUT.csv [ROWS=1000000] [FEATURES=20] [ROW_GROUP=65536]

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;

enum Writer {
    Parquet(ArrowWriter<std::fs::File>),
    Csv(datafusion::arrow::csv::Writer<std::io::BufWriter<std::fs::File>>),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .get(1)
        .ok_or("usage: score_bench_data OUT.parquet [ROWS] [FEATURES]")?;
    let rows: usize = args.get(2).map_or(Ok(1_000_000), |s| s.parse())?;
    let features: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let row_group: usize = args.get(4).map_or(Ok(65_536), |s| s.parse())?;
    let mut fields = vec![Field::new("id", DataType::Int64, false)];
    fields.extend((0..features).map(|j| Field::new(format!("f{j}"), DataType::Float64, false)));
    let schema = Arc::new(Schema::new(fields));
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let file = std::fs::File::create(out)?;
    let mut writer = if out.ends_with(".csv") {
        Writer::Csv(
            datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::BufWriter::new(file)),
        )
    } else {
        Writer::Parquet(ArrowWriter::try_new(file, schema.clone(), Some(props))?)
    };
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let chunk = row_group.clamp(1, 65_536);
    for start in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - start);
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
            start as i64..(start + n) as i64,
        ))];
        for _ in 0..features {
            // Box–Muller: standard normals.
            let values = (0..n).map(|_| {
                let (u1, u2) = (uniform(), uniform());
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            });
            columns.push(Arc::new(Float64Array::from_iter_values(values)));
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        match &mut writer {
            Writer::Parquet(w) => w.write(&batch)?,
            Writer::Csv(w) => w.write(&batch)?,
        }
    }
    if let Writer::Parquet(w) = writer {
        w.close()?;
    }
    println!("wrote {rows} rows x {features} features to {out}");
    Ok(())
}
