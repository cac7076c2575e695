//! The scored rows: the input columns (unless left out), one column per
//! model output (an output `[N, K]` becomes `name_0 .. name_{K-1}`, `[N]`
//! and `[N, 1]` one column `name`), then `model_name` and
//! `model_version`; and the file they go to (Parquet, or CSV for a `.csv`
//! name), written as `NAME.tmp` and renamed when complete.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;
use greenbelt_core::{Signature, Tensor, TensorData};
use greenbelt_features::defs::SourceFormat;

use crate::error::{AppError, Result};

/// The column with the model's name.
pub const MODEL_NAME: &str = "model_name";
/// The column with the model's registry version (null for a plain file).
pub const MODEL_VERSION: &str = "model_version";

/// A Parquet row group is flushed once its encoded size passes this, so
/// the writer's buffer stays bounded whatever the row count.
const ROW_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// What goes beside the model's outputs.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    /// Keep the input columns.
    pub passthrough: bool,
    /// Put before every output column's name.
    pub prefix: String,
    pub model_name: String,
    pub model_version: Option<i64>,
}

impl OutputSpec {
    /// The scored batch: `input`'s columns (if kept), the outputs, the model.
    pub fn batch(
        &self,
        input: &RecordBatch,
        outputs: &[Tensor],
        file: &str,
    ) -> Result<RecordBatch> {
        let rows = input.num_rows();
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        if self.passthrough {
            fields.extend(input.schema().fields().iter().map(|f| f.as_ref().clone()));
            columns.extend(input.columns().iter().cloned());
        }
        for t in outputs {
            for (field, column) in self.output_columns(t, rows)? {
                fields.push(field);
                columns.push(column);
            }
        }
        let (f, c) = self.model_columns(rows);
        fields.extend(f);
        columns.extend(c);
        check_unique(&fields, input, file)?;
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| AppError::Invalid(format!("the scored rows of {file}: {e}")))
    }

    /// The schema of a file with no rows scored: what [`OutputSpec::batch`]
    /// gives, with a dynamic output width taken as 1.
    pub fn empty_schema(&self, input: &Schema, signature: &Signature) -> SchemaRef {
        let mut fields: Vec<Field> = Vec::new();
        if self.passthrough {
            fields.extend(input.fields().iter().map(|f| f.as_ref().clone()));
        }
        for o in &signature.outputs {
            let width = crate::score::columns::width(o).unwrap_or(1);
            for name in self.names(&o.name, width) {
                fields.push(Field::new(
                    name,
                    super::columns::arrow_type(o.datatype),
                    false,
                ));
            }
        }
        fields.extend(self.model_columns(0).0);
        Arc::new(Schema::new(fields))
    }

    fn names(&self, output: &str, width: usize) -> Vec<String> {
        if width == 1 {
            vec![format!("{}{output}", self.prefix)]
        } else {
            (0..width)
                .map(|k| format!("{}{output}_{k}", self.prefix))
                .collect()
        }
    }

    fn model_columns(&self, rows: usize) -> (Vec<Field>, Vec<ArrayRef>) {
        let names: ArrayRef = Arc::new(StringArray::from(vec![self.model_name.as_str(); rows]));
        let versions: ArrayRef = Arc::new(Int64Array::from(vec![self.model_version; rows]));
        (
            vec![
                Field::new(MODEL_NAME, ArrowType::Utf8, false),
                Field::new(MODEL_VERSION, ArrowType::Int64, true),
            ],
            vec![names, versions],
        )
    }

    /// One column per element of a row of `t`.
    fn output_columns(&self, t: &Tensor, rows: usize) -> Result<Vec<(Field, ArrayRef)>> {
        let per_row = t.shape.iter().skip(1).try_fold(1usize, |acc, d| {
            usize::try_from(*d).ok().map(|d| acc.saturating_mul(d))
        });
        let width = match per_row {
            Some(w)
                if t.shape.first() == Some(&(rows as i64))
                    && w.saturating_mul(rows) == t.data.len() =>
            {
                w
            }
            _ => {
                return Err(AppError::Invalid(format!(
                    "the model's output \"{}\" has shape {:?} for {rows} rows: batch scoring needs outputs with one row per input row",
                    t.name, t.shape
                )));
            }
        };
        let names = self.names(&t.name, width);
        let mut out = Vec::with_capacity(width);
        for (k, name) in names.into_iter().enumerate() {
            let column = strided(&t.data, k, width.max(1));
            out.push((Field::new(name, column.data_type().clone(), false), column));
        }
        Ok(out)
    }
}

/// Element `k` of every row of a row-major buffer `width` wide, as a column.
fn strided(data: &TensorData, k: usize, width: usize) -> ArrayRef {
    fn take<T: Copy>(v: &[T], k: usize, width: usize) -> Vec<T> {
        v.iter().skip(k).step_by(width).copied().collect()
    }
    match data {
        TensorData::Bool(v) => Arc::new(BooleanArray::from(take(v, k, width))),
        TensorData::Uint8(v) => Arc::new(UInt8Array::from(take(v, k, width))),
        TensorData::Uint16(v) => Arc::new(UInt16Array::from(take(v, k, width))),
        TensorData::Uint32(v) => Arc::new(UInt32Array::from(take(v, k, width))),
        TensorData::Uint64(v) => Arc::new(UInt64Array::from(take(v, k, width))),
        TensorData::Int8(v) => Arc::new(Int8Array::from(take(v, k, width))),
        TensorData::Int16(v) => Arc::new(Int16Array::from(take(v, k, width))),
        TensorData::Int32(v) => Arc::new(Int32Array::from(take(v, k, width))),
        TensorData::Int64(v) => Arc::new(Int64Array::from(take(v, k, width))),
        TensorData::Fp16(v) => Arc::new(Float32Array::from(
            v.iter()
                .skip(k)
                .step_by(width)
                .map(|x| x.to_f32())
                .collect::<Vec<_>>(),
        )),
        TensorData::Fp32(v) => Arc::new(Float32Array::from(take(v, k, width))),
        TensorData::Fp64(v) => Arc::new(Float64Array::from(take(v, k, width))),
        TensorData::Bytes(v) => Arc::new(StringArray::from(
            v.iter()
                .skip(k)
                .step_by(width)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>(),
        )),
    }
}

fn check_unique(fields: &[Field], input: &RecordBatch, file: &str) -> Result<()> {
    let mut seen = HashSet::with_capacity(fields.len());
    for f in fields {
        if !seen.insert(f.name().as_str()) {
            let from_input = input.schema().index_of(f.name()).is_ok();
            return Err(AppError::Invalid(format!(
                "the output would have two columns \"{}\"{}; pass --output-prefix (e.g. pred_) to rename the model's columns{}",
                f.name(),
                if from_input {
                    format!(" (one from {file})")
                } else {
                    String::new()
                },
                if from_input {
                    ", or --no-passthrough to leave the input columns out"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

/// An output file being written: `PATH.tmp` until [`Sink::finish`]
/// renames it to `PATH`. The file is created with the first batch's schema.
pub struct Sink {
    path: PathBuf,
    tmp: PathBuf,
    format: SourceFormat,
    metadata: Vec<(String, String)>,
    writer: Option<Writer>,
}

enum Writer {
    Parquet(ArrowWriter<File>),
    Csv(datafusion::arrow::csv::Writer<BufWriter<File>>),
}

/// The format of an output path: CSV for `.csv`, else Parquet.
pub fn format_of(path: &Path) -> SourceFormat {
    match path.extension() {
        Some(e) if e.eq_ignore_ascii_case("csv") => SourceFormat::Csv,
        _ => SourceFormat::Parquet,
    }
}

impl Sink {
    /// A sink for `path`; `metadata` goes in a Parquet file's key-value metadata.
    pub fn new(path: &Path, metadata: Vec<(String, String)>) -> Sink {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        Sink {
            path: path.to_path_buf(),
            tmp: PathBuf::from(tmp),
            format: format_of(path),
            metadata,
            writer: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self, schema: SchemaRef) -> Result<&mut Writer> {
        if self.writer.is_none() {
            if let Some(dir) = self.path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(AppError::io(format!("creating {}", dir.display())))?;
            }
            let file = File::create(&self.tmp)
                .map_err(AppError::io(format!("creating {}", self.tmp.display())))?;
            let writer = match self.format {
                SourceFormat::Parquet => {
                    let kv = self
                        .metadata
                        .iter()
                        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                        .collect();
                    let props = WriterProperties::builder()
                        .set_compression(Compression::SNAPPY)
                        .set_key_value_metadata(Some(kv))
                        .build();
                    Writer::Parquet(
                        ArrowWriter::try_new(file, schema, Some(props))
                            .map_err(|e| self.error(e))?,
                    )
                }
                SourceFormat::Csv => Writer::Csv(
                    datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(BufWriter::new(file)),
                ),
            };
            self.writer = Some(writer);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| AppError::Invalid("the output writer is gone (a bug)".into()))
    }

    fn error(&self, e: impl std::fmt::Display) -> AppError {
        AppError::Invalid(format!("writing {}: {e}", self.tmp.display()))
    }

    /// Append `batch` (the first one decides the file's columns).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let tmp = self.tmp.display().to_string();
        let e = |e: &dyn std::fmt::Display| AppError::Invalid(format!("writing {tmp}: {e}"));
        match self.open(batch.schema())? {
            Writer::Parquet(w) => {
                w.write(batch).map_err(|x| e(&x))?;
                if w.memory_size() > ROW_GROUP_BYTES {
                    w.flush().map_err(|x| e(&x))?;
                }
            }
            Writer::Csv(w) => w.write(batch).map_err(|x| e(&x))?,
        }
        Ok(())
    }

    /// Close the file (created with `schema` when nothing was written) and
    /// rename it into place.
    pub fn finish(mut self, schema: SchemaRef) -> Result<()> {
        self.open(schema)?;
        match self.writer.take() {
            Some(Writer::Parquet(w)) => {
                w.close().map_err(|e| self.error(e))?;
            }
            Some(Writer::Csv(w)) => {
                use std::io::Write;
                w.into_inner().flush().map_err(|e| self.error(e))?;
            }
            None => {}
        }
        std::fs::rename(&self.tmp, &self.path).map_err(AppError::io(format!(
            "renaming {} to {}",
            self.tmp.display(),
            self.path.display()
        )))
    }

    /// Drop what was written (a run that failed leaves no partial output).
    pub fn abort(mut self) {
        self.writer = None;
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Float32Type, Int64Type};
    use greenbelt_core::DataType;

    use super::*;

    fn spec() -> OutputSpec {
        OutputSpec {
            passthrough: true,
            prefix: String::new(),
            model_name: "logreg".into(),
            model_version: Some(3),
        }
    }

    fn input() -> RecordBatch {
        let id: ArrayRef = Arc::new(Int64Array::from(vec![10, 11]));
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", ArrowType::Int64, false)])),
            vec![id],
        )
        .unwrap()
    }

    #[test]
    fn a_wide_output_becomes_one_column_per_element_and_the_model_is_named() {
        let label = Tensor::new("label", vec![2], TensorData::Int64(vec![0, 1])).unwrap();
        let probs = Tensor::new(
            "probabilities",
            vec![2, 2],
            TensorData::Fp32(vec![0.9, 0.1, 0.2, 0.8]),
        )
        .unwrap();
        let b = spec().batch(&input(), &[label, probs], "f").unwrap();
        let names: Vec<&str> = b
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "label",
                "probabilities_0",
                "probabilities_1",
                "model_name",
                "model_version"
            ]
        );
        let p1 = b.column(3).as_primitive::<Float32Type>();
        assert_eq!(p1.values().to_vec(), vec![0.1, 0.8]);
        assert_eq!(b.column(5).as_primitive::<Int64Type>().value(1), 3);
        assert_eq!(b.column(4).as_string::<i32>().value(0), "logreg");
        let empty = spec().empty_schema(
            &input().schema(),
            &Signature {
                inputs: vec![],
                outputs: vec![greenbelt_core::TensorSpec::new(
                    "probabilities",
                    DataType::Fp32,
                    vec![-1, 2],
                )],
            },
        );
        assert_eq!(empty.fields().len(), 5);
        assert_eq!(b.column(5).null_count(), 0);
    }

    #[test]
    fn an_output_named_like_an_input_column_is_refused_with_the_fix() {
        let id = Tensor::new("id", vec![2], TensorData::Int64(vec![0, 1])).unwrap();
        let e = spec()
            .batch(&input(), std::slice::from_ref(&id), "in.parquet")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("two columns \"id\" (one from in.parquet)")
                && e.contains("--no-passthrough"),
            "{e}"
        );
        let prefixed = OutputSpec {
            prefix: "pred_".into(),
            ..spec()
        };
        let b = prefixed.batch(&input(), &[id], "in.parquet").unwrap();
        assert_eq!(b.schema_ref().field(1).name(), "pred_id");
    }

    #[test]
    fn an_output_without_one_row_per_input_row_is_refused() {
        let t = Tensor::new("s", vec![1], TensorData::Fp32(vec![0.5])).unwrap();
        let e = spec().batch(&input(), &[t], "f").unwrap_err().to_string();
        assert!(e.contains("one row per input row"), "{e}");
    }
}
