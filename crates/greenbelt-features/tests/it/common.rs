//! Helpers shared by the integration tests.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;

pub fn ts_array(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

pub fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect()).unwrap()
}

pub fn i64s(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let c = b.column_by_name(name).unwrap();
    let a = c.as_any().downcast_ref::<Int64Array>().unwrap();
    (0..a.len())
        .map(|i| if a.is_null(i) { None } else { Some(a.value(i)) })
        .collect()
}

pub fn strs(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = b.column_by_name(name).unwrap();
    let c = datafusion::arrow::compute::cast(c, &DataType::Utf8).unwrap();
    let a = c.as_any().downcast_ref::<StringArray>().unwrap();
    (0..a.len())
        .map(|i| {
            if a.is_null(i) {
                None
            } else {
                Some(a.value(i).to_string())
            }
        })
        .collect()
}

pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    let schema = batches[0].schema();
    datafusion::arrow::compute::concat_batches(&schema, batches).unwrap()
}

pub const SEC: i64 = 1_000_000;
pub const T0: i64 = 1_767_225_600 * SEC; // 2026-01-01T00:00:00Z

pub fn f64s(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let c = b.column_by_name(name).unwrap();
    let c = datafusion::arrow::compute::cast(c, &DataType::Float64).unwrap();
    let a = c
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Float64Array>()
        .unwrap();
    (0..a.len())
        .map(|i| if a.is_null(i) { None } else { Some(a.value(i)) })
        .collect()
}
