//! Which columns of the input feed which input tensor of the model, and
//! the tensors of one record batch.
//!
//! A model with one input `[N, F]` takes F columns: those `--columns`
//! names, else the feature names of the model's reference profile, else
//! the column named like the input when F is 1, else every numeric column
//! in file order when there are exactly F of them. A model with several
//! inputs takes, per input, the profile's names, else the column named
//! like the input (`[N]`, `[N, 1]`), else `input_0 .. input_{F-1}`.
//!
//! Columns are cast to the input's datatype: numbers to float inputs
//! (null becomes NaN), integers and booleans to integer inputs (null is an
//! error naming the column and row), text to BYTES inputs.

use std::collections::BTreeMap;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType as ArrowType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    Schema, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use greenbelt_core::{DataType, Signature, Tensor, TensorData, TensorSpec};
use half::f16;

use crate::error::{AppError, Result};

/// The columns of every model input, in signature order.
#[derive(Debug, Clone)]
pub struct InputPlan {
    feeds: Vec<Feed>,
}

/// One input tensor and the columns (index in the batch, name) that fill
/// its last dimension.
#[derive(Debug, Clone)]
struct Feed {
    spec: TensorSpec,
    columns: Vec<(usize, String)>,
}

/// Where the column names of an input came from (for error messages).
#[derive(Debug, Clone, Copy)]
enum Origin {
    Flag,
    Profile,
    InputName,
    Numeric,
}

impl Origin {
    fn says(self) -> &'static str {
        match self {
            Origin::Flag => "--columns names",
            Origin::Profile => "the model's profile names",
            Origin::InputName => "the input's name is",
            Origin::Numeric => "the file's numeric columns are",
        }
    }
}

/// Columns per row of `spec` (the product of its dimensions after the
/// first); `None` when one of them is dynamic.
pub fn width(spec: &TensorSpec) -> Option<usize> {
    spec.shape.iter().skip(1).try_fold(1usize, |acc, d| {
        usize::try_from(*d).ok().map(|d| acc.saturating_mul(d))
    })
}

/// Decide the columns of every input of `signature` from the input's
/// `schema`. `features` is the profile's (input → feature names),
/// `columns` the `--columns` flag, `file` how errors name the input.
pub fn plan(
    signature: &Signature,
    schema: &Schema,
    features: &BTreeMap<String, Vec<String>>,
    columns: Option<&[String]>,
    file: &str,
) -> Result<InputPlan> {
    if signature.inputs.is_empty() {
        return Err(AppError::Invalid("the model has no inputs".into()));
    }
    if columns.is_some() && signature.inputs.len() > 1 {
        return Err(AppError::Invalid(format!(
            "--columns is for models with one input; this one has {} ({}): name the columns like the inputs (or input_0, input_1, ... for a wide input)",
            signature.inputs.len(),
            input_names(signature)
        )));
    }
    let single = signature.inputs.len() == 1;
    let mut feeds = Vec::with_capacity(signature.inputs.len());
    for spec in &signature.inputs {
        check_shape(spec)?;
        let (names, origin) = choose(spec, schema, features, columns, single, file)?;
        let mut cols = Vec::with_capacity(names.len());
        for name in names {
            let Ok(index) = schema.index_of(&name) else {
                return Err(AppError::Invalid(format!(
                    "column \"{name}\" is not in {file} ({} it for input \"{}\"); its columns: {}",
                    origin.says(),
                    spec.name,
                    column_list(schema)
                )));
            };
            check_type(schema.field(index).data_type(), spec, &name, file)?;
            cols.push((index, name));
        }
        if let Some(w) = width(spec)
            && w != cols.len()
        {
            return Err(AppError::Invalid(format!(
                "the model's input \"{}\" ({} {:?}) takes {w} columns, and {} {} ({}); name {w} columns with --columns a,b,c",
                spec.name,
                spec.datatype,
                spec.shape,
                origin.says(),
                cols.len(),
                cols.iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if cols.is_empty() {
            return Err(AppError::Invalid(format!(
                "no column for the model's input \"{}\" in {file}; name them with --columns",
                spec.name
            )));
        }
        feeds.push(Feed {
            spec: spec.clone(),
            columns: cols,
        });
    }
    Ok(InputPlan { feeds })
}

/// The column names for `spec` and where they came from.
fn choose(
    spec: &TensorSpec,
    schema: &Schema,
    features: &BTreeMap<String, Vec<String>>,
    columns: Option<&[String]>,
    single: bool,
    file: &str,
) -> Result<(Vec<String>, Origin)> {
    if let Some(cols) = columns {
        return Ok((cols.to_vec(), Origin::Flag));
    }
    if let Some(names) = features.get(&spec.name) {
        return Ok((names.clone(), Origin::Profile));
    }
    let w = width(spec);
    let has = |n: &str| schema.index_of(n).is_ok();
    if w == Some(1) && (has(&spec.name) || !single) {
        return Ok((vec![spec.name.clone()], Origin::InputName));
    }
    if !single {
        let Some(w) = w else {
            return Err(AppError::Invalid(format!(
                "the model's input \"{}\" has shape {:?}: with several inputs each needs a fixed width",
                spec.name, spec.shape
            )));
        };
        let names = (0..w).map(|i| format!("{}_{i}", spec.name)).collect();
        return Ok((names, Origin::InputName));
    }
    let numeric: Vec<String> = schema
        .fields()
        .iter()
        .filter(|f| is_number(f.data_type()))
        .map(|f| f.name().clone())
        .collect();
    match w {
        Some(w) if w != numeric.len() => Err(AppError::Invalid(format!(
            "the model's input \"{}\" ({} {:?}) takes {w} columns, the model has no profile naming them, and {file} has {} numeric columns ({}); name the {w} columns with --columns a,b,c",
            spec.name,
            spec.datatype,
            spec.shape,
            numeric.len(),
            numeric.join(", ")
        ))),
        _ => Ok((numeric, Origin::Numeric)),
    }
}

fn check_shape(spec: &TensorSpec) -> Result<()> {
    if !spec.batchable() {
        return Err(AppError::Invalid(format!(
            "the model's input \"{}\" has shape {:?}: batch scoring needs a dynamic first (batch) dimension (-1)",
            spec.name, spec.shape
        )));
    }
    let dynamic = spec.shape.iter().skip(1).filter(|d| **d < 0).count();
    if dynamic > 1 || (dynamic == 1 && spec.shape.len() > 2) {
        return Err(AppError::Invalid(format!(
            "the model's input \"{}\" has shape {:?}: batch scoring fills inputs of shape [-1], [-1, F] or fixed inner dimensions",
            spec.name, spec.shape
        )));
    }
    Ok(())
}

fn is_number(t: &ArrowType) -> bool {
    match t {
        ArrowType::Dictionary(_, v) => is_number(v),
        t => t.is_numeric(),
    }
}

fn is_integer(t: &ArrowType) -> bool {
    match t {
        ArrowType::Dictionary(_, v) => is_integer(v),
        t => t.is_integer(),
    }
}

fn is_text(t: &ArrowType) -> bool {
    match t {
        ArrowType::Dictionary(_, v) => is_text(v),
        t => matches!(
            t,
            ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View
        ),
    }
}

/// Refuse a column whose type does not fit the input's datatype.
fn check_type(t: &ArrowType, spec: &TensorSpec, column: &str, file: &str) -> Result<()> {
    let (ok, takes) = match spec.datatype {
        DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => (
            is_number(t) || matches!(t, ArrowType::Boolean | ArrowType::Null),
            "numbers",
        ),
        DataType::Bool => (matches!(t, ArrowType::Boolean), "booleans"),
        DataType::Bytes => (is_text(t), "text"),
        _ => (
            is_integer(t) || matches!(t, ArrowType::Boolean | ArrowType::Null),
            "whole numbers",
        ),
    };
    if ok {
        return Ok(());
    }
    Err(AppError::Invalid(format!(
        "column \"{column}\" is {} in {file}; the model's input \"{}\" is {} and takes {takes}: cast the column in the data, or choose other columns with --columns",
        greenbelt_features::drift::type_name(t),
        spec.name,
        spec.datatype
    )))
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn input_names(signature: &Signature) -> String {
    signature
        .inputs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A null where the input has no missing value: the column (its index in
/// the feed) and the row (in the batch).
struct NullAt(usize, usize);

impl InputPlan {
    /// The input columns, in the order they feed the inputs.
    pub fn column_names(&self) -> Vec<&str> {
        self.feeds
            .iter()
            .flat_map(|f| f.columns.iter().map(|(_, n)| n.as_str()))
            .collect()
    }

    /// The input tensors for `batch`, whose first row is row `first_row`
    /// (from 0) of `file`.
    pub fn tensors(&self, batch: &RecordBatch, first_row: u64, file: &str) -> Result<Vec<Tensor>> {
        self.feeds
            .iter()
            .map(|feed| feed.tensor(batch, first_row, file))
            .collect()
    }
}

impl Feed {
    fn tensor(&self, batch: &RecordBatch, first_row: u64, file: &str) -> Result<Tensor> {
        let rows = batch.num_rows();
        let target = arrow_type(self.spec.datatype);
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (index, name) in &self.columns {
            let column = batch.columns().get(*index).ok_or_else(|| {
                AppError::Invalid(format!("{file}: a batch has no column \"{name}\""))
            })?;
            let options = CastOptions {
                safe: false,
                ..CastOptions::default()
            };
            let cast = cast_with_options(column, &target, &options).map_err(|e| {
                AppError::Invalid(format!(
                    "column \"{name}\" of {file} (rows {}..{}) does not fit the model's input \"{}\" ({}): {e}",
                    first_row + 1,
                    first_row + rows as u64,
                    self.spec.name,
                    self.spec.datatype
                ))
            })?;
            arrays.push(cast);
        }
        let data = fill(self.spec.datatype, &arrays, rows).map_err(|NullAt(col, row)| {
            let name = self.columns.get(col).map_or("?", |(_, n)| n.as_str());
            AppError::Invalid(format!(
                "column \"{name}\" is null at row {} of {file} (counting from 1); the model's input \"{}\" is {} and has no missing value: fill or drop those rows",
                first_row + row as u64 + 1,
                self.spec.name,
                self.spec.datatype
            ))
        })?;
        let mut shape = self.spec.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = rows as i64;
        }
        for d in shape.iter_mut().skip(1) {
            if *d < 0 {
                *d = self.columns.len() as i64;
            }
        }
        Tensor::new(self.spec.name.clone(), shape, data)
            .map_err(|e| AppError::Invalid(format!("input \"{}\": {e}", self.spec.name)))
    }
}

/// The Arrow type of a column for tensors of `datatype`: what an input
/// column is cast to, and what an output column is written as (FP16 widened).
pub(super) fn arrow_type(datatype: DataType) -> ArrowType {
    match datatype {
        DataType::Bool => ArrowType::Boolean,
        DataType::Uint8 => ArrowType::UInt8,
        DataType::Uint16 => ArrowType::UInt16,
        DataType::Uint32 => ArrowType::UInt32,
        DataType::Uint64 => ArrowType::UInt64,
        DataType::Int8 => ArrowType::Int8,
        DataType::Int16 => ArrowType::Int16,
        DataType::Int32 => ArrowType::Int32,
        DataType::Int64 => ArrowType::Int64,
        DataType::Fp16 | DataType::Fp32 => ArrowType::Float32,
        DataType::Fp64 => ArrowType::Float64,
        DataType::Bytes => ArrowType::Utf8,
    }
}

/// Row-major values of `arrays` (already cast to [`arrow_type`]).
fn fill(datatype: DataType, arrays: &[ArrayRef], rows: usize) -> Result<TensorData, NullAt> {
    Ok(match datatype {
        DataType::Fp32 => TensorData::Fp32(gather::<Float32Type>(arrays, rows, Some(f32::NAN))?),
        DataType::Fp64 => TensorData::Fp64(gather::<Float64Type>(arrays, rows, Some(f64::NAN))?),
        DataType::Fp16 => TensorData::Fp16(
            gather::<Float32Type>(arrays, rows, Some(f32::NAN))?
                .into_iter()
                .map(f16::from_f32)
                .collect(),
        ),
        DataType::Int8 => TensorData::Int8(gather::<Int8Type>(arrays, rows, None)?),
        DataType::Int16 => TensorData::Int16(gather::<Int16Type>(arrays, rows, None)?),
        DataType::Int32 => TensorData::Int32(gather::<Int32Type>(arrays, rows, None)?),
        DataType::Int64 => TensorData::Int64(gather::<Int64Type>(arrays, rows, None)?),
        DataType::Uint8 => TensorData::Uint8(gather::<UInt8Type>(arrays, rows, None)?),
        DataType::Uint16 => TensorData::Uint16(gather::<UInt16Type>(arrays, rows, None)?),
        DataType::Uint32 => TensorData::Uint32(gather::<UInt32Type>(arrays, rows, None)?),
        DataType::Uint64 => TensorData::Uint64(gather::<UInt64Type>(arrays, rows, None)?),
        DataType::Bool => TensorData::Bool(gather_with(arrays, rows, |a, i| {
            a.as_boolean_opt().map(|b| b.value(i))
        })?),
        DataType::Bytes => TensorData::Bytes(gather_with(arrays, rows, |a, i| {
            a.as_string_opt::<i32>()
                .map(|s| Bytes::copy_from_slice(s.value(i).as_bytes()))
        })?),
    })
}

/// Interleave primitive columns into rows; a null is `missing`, or an
/// error when there is none.
fn gather<T: ArrowPrimitiveType>(
    arrays: &[ArrayRef],
    rows: usize,
    missing: Option<T::Native>,
) -> Result<Vec<T::Native>, NullAt> {
    let w = arrays.len();
    let mut out = vec![T::Native::default(); rows * w];
    if w == 0 {
        return Ok(out);
    }
    for (j, a) in arrays.iter().enumerate() {
        let Some(a) = a.as_primitive_opt::<T>() else {
            return Err(NullAt(j, 0));
        };
        for (row, v) in out.chunks_exact_mut(w).zip(a.values().iter()) {
            row[j] = *v;
        }
        if a.null_count() > 0 {
            for (i, row) in out.chunks_exact_mut(w).enumerate() {
                if a.is_null(i) {
                    row[j] = missing.ok_or(NullAt(j, i))?;
                }
            }
        }
    }
    Ok(out)
}

/// [`gather`] for non-primitive columns, value by value; nulls are errors.
fn gather_with<V>(
    arrays: &[ArrayRef],
    rows: usize,
    value: impl Fn(&ArrayRef, usize) -> Option<V>,
) -> Result<Vec<V>, NullAt> {
    let mut out = Vec::with_capacity(rows * arrays.len());
    for i in 0..rows {
        for (j, a) in arrays.iter().enumerate() {
            if a.is_null(i) {
                return Err(NullAt(j, i));
            }
            out.push(value(a, i).ok_or(NullAt(j, i))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;

    use super::*;

    fn sig(inputs: Vec<TensorSpec>) -> Signature {
        Signature {
            inputs,
            outputs: vec![],
        }
    }

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = cols
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            cols.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    #[test]
    fn numeric_columns_fill_a_wide_input_row_major_with_nan_for_null() {
        let b = batch(vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            ("x", Arc::new(Float64Array::from(vec![Some(1.5), None]))),
            ("n", Arc::new(Int64Array::from(vec![3, 4]))),
        ]);
        let s = sig(vec![TensorSpec::new("input", DataType::Fp32, vec![-1, 2])]);
        let p = plan(&s, &b.schema(), &BTreeMap::new(), None, "f").unwrap();
        assert_eq!(p.column_names(), ["x", "n"]);
        let t = p.tensors(&b, 0, "f").unwrap();
        assert_eq!(t[0].shape, vec![2, 2]);
        let TensorData::Fp32(v) = &t[0].data else {
            panic!("{:?}", t[0].data)
        };
        assert_eq!(v[0], 1.5);
        assert_eq!(v[1], 3.0);
        assert!(v[2].is_nan());
        assert_eq!(v[3], 4.0);
    }

    #[test]
    fn the_profile_and_the_flag_choose_and_order_the_columns() {
        let b = batch(vec![
            ("a", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
            ("b", Arc::new(Float64Array::from(vec![2.0]))),
            ("c", Arc::new(Float64Array::from(vec![3.0]))),
        ]);
        let s = sig(vec![TensorSpec::new("input", DataType::Fp64, vec![-1, 2])]);
        let profile = BTreeMap::from([("input".to_string(), vec!["c".into(), "a".into()])]);
        let p = plan(&s, &b.schema(), &profile, None, "f").unwrap();
        assert_eq!(p.column_names(), ["c", "a"]);
        let flag = ["b".to_string(), "c".to_string()];
        let p = plan(&s, &b.schema(), &profile, Some(&flag), "f").unwrap();
        assert_eq!(p.column_names(), ["b", "c"]);
        // Three numeric columns for two features, no profile: an error
        // that names the count and the fix.
        let e = plan(&s, &b.schema(), &BTreeMap::new(), None, "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("takes 2 columns") && e.contains("--columns"),
            "{e}"
        );
        let flag = ["a".to_string(), "zz".to_string()];
        let e = plan(&s, &b.schema(), &profile, Some(&flag), "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"zz\" is not in f") && e.contains("a, b, c"),
            "{e}"
        );
    }

    #[test]
    fn several_inputs_take_columns_named_like_them() {
        let b = batch(vec![
            ("a_0", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
            ("a_1", Arc::new(Float64Array::from(vec![2.0]))),
            ("c", Arc::new(Int64Array::from(vec![Some(7)]))),
        ]);
        let s = sig(vec![
            TensorSpec::new("a", DataType::Fp32, vec![-1, 2]),
            TensorSpec::new("c", DataType::Int64, vec![-1, 1]),
        ]);
        let p = plan(&s, &b.schema(), &BTreeMap::new(), None, "f").unwrap();
        assert_eq!(p.column_names(), ["a_0", "a_1", "c"]);
        let t = p.tensors(&b, 0, "f").unwrap();
        assert_eq!(t[1].data, TensorData::Int64(vec![7]));
        assert_eq!(t[1].shape, vec![1, 1]);
    }

    #[test]
    fn wrong_types_and_nulls_in_integer_inputs_name_the_column_and_row() {
        let b = batch(vec![
            (
                "c",
                Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
            ),
            ("x", Arc::new(Float64Array::from(vec![1.0, 2.0]))),
            ("s", Arc::new(StringArray::from(vec!["1", "2"]))),
        ]);
        let s = sig(vec![TensorSpec::new("c", DataType::Int64, vec![-1, 1])]);
        let p = plan(&s, &b.schema(), &BTreeMap::new(), None, "in.parquet").unwrap();
        let e = p.tensors(&b, 100, "in.parquet").unwrap_err().to_string();
        assert!(
            e.contains("column \"c\" is null at row 102 of in.parquet"),
            "{e}"
        );
        for col in ["x", "s"] {
            let flag = [col.to_string()];
            let e = plan(&s, &b.schema(), &BTreeMap::new(), Some(&flag), "in.parquet")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("column \"{col}\" is")) && e.contains("INT64"),
                "{e}"
            );
        }
    }
}
