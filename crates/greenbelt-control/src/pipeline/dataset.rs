//! Training data: a CSV or Parquet file read into columns, checked, and split
//! into training and holdout sets (by time when a timestamp column exists).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::PipelineError;
use super::definition::DataDef;

/// One column: numbers (NaN = missing) or text.
#[derive(Debug, Clone)]
pub enum Column {
    Num(Vec<f64>),
    Text(Vec<Option<String>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Num(v) => v.len(),
            Column::Text(v) => v.len(),
        }
    }
}

/// A table read from a file.
#[derive(Debug, Clone)]
pub struct Table {
    pub columns: BTreeMap<String, Column>,
    pub rows: usize,
    /// sha256 of the file's bytes, for lineage.
    pub sha256: String,
}

/// Features and labels ready for training, split.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub features: Vec<String>,
    pub train_x: Vec<f64>,
    pub train_y: Vec<f64>,
    pub holdout_x: Vec<f64>,
    pub holdout_y: Vec<f64>,
    /// Table row numbers of the holdout set, in order (to evaluate another
    /// model with its own features on the same rows).
    pub holdout_rows: Vec<usize>,
    pub split: SplitInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitInfo {
    /// "time" (by the timestamp column) or "random" (seeded).
    pub kind: String,
    pub train_rows: usize,
    pub holdout_rows: usize,
    /// For a time split: the first holdout timestamp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutoff: Option<String>,
}

fn err(msg: impl Into<String>) -> PipelineError {
    PipelineError::Data(msg.into())
}

/// Read `path` (.csv or .parquet).
pub fn read(path: &Path) -> Result<Table, PipelineError> {
    let bytes =
        std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let sha256 = greenbelt_registry::artifacts::sha256_hex(&bytes);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (columns, rows) = match ext {
        "csv" => read_csv(path, &bytes)?,
        "parquet" | "pq" => read_parquet(path, bytes)?,
        other => {
            return Err(err(format!(
                "{}: unsupported extension \"{other}\"; use .csv or .parquet",
                path.display()
            )));
        }
    };
    Ok(Table {
        columns,
        rows,
        sha256,
    })
}

type Columns = (BTreeMap<String, Column>, usize);

fn read_csv(path: &Path, bytes: &[u8]) -> Result<Columns, PipelineError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut raw: Vec<Vec<String>> = vec![Vec::new(); headers.len()];
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| err(format!("{} row {}: {e}", path.display(), i + 2)))?;
        if record.len() != headers.len() {
            return Err(err(format!(
                "{} row {}: {} fields, header has {}",
                path.display(),
                i + 2,
                record.len(),
                headers.len()
            )));
        }
        for (col, field) in raw.iter_mut().zip(record.iter()) {
            col.push(field.to_string());
        }
    }
    let rows = raw.first().map_or(0, Vec::len);
    let mut columns = BTreeMap::new();
    for (name, values) in headers.into_iter().zip(raw) {
        let numeric = values
            .iter()
            .all(|v| v.is_empty() || v.parse::<f64>().is_ok());
        let col = if numeric {
            Column::Num(
                values
                    .iter()
                    .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                    .collect(),
            )
        } else {
            Column::Text(
                values
                    .into_iter()
                    .map(|v| (!v.is_empty()).then_some(v))
                    .collect(),
            )
        };
        columns.insert(name, col);
    }
    Ok((columns, rows))
}

fn read_parquet(path: &Path, bytes: Vec<u8>) -> Result<Columns, PipelineError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).map_err(|e| {
        err(format!(
            "{}: not a readable Parquet file: {e}",
            path.display()
        ))
    })?;
    let mut columns: BTreeMap<String, Column> = BTreeMap::new();
    let mut rows = 0usize;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    for row in iter {
        let row = row.map_err(|e| err(format!("{} row {rows}: {e}", path.display())))?;
        for (name, field) in row.get_column_iter() {
            let num = match field {
                Field::Null => None,
                Field::Bool(b) => Some(f64::from(u8::from(*b))),
                Field::Byte(v) => Some(f64::from(*v)),
                Field::Short(v) => Some(f64::from(*v)),
                Field::Int(v) => Some(f64::from(*v)),
                Field::Long(v) => Some(*v as f64),
                Field::UByte(v) => Some(f64::from(*v)),
                Field::UShort(v) => Some(f64::from(*v)),
                Field::UInt(v) => Some(f64::from(*v)),
                Field::ULong(v) => Some(*v as f64),
                Field::Float(v) => Some(f64::from(*v)),
                Field::Double(v) => Some(*v),
                _ => None,
            };
            let text = match field {
                Field::Str(s) => Some(s.clone()),
                Field::TimestampMillis(_) | Field::TimestampMicros(_) | Field::Date(_) => {
                    Some(field.to_string())
                }
                _ => None,
            };
            let col = columns.entry(name.clone()).or_insert_with(|| {
                if text.is_some() {
                    Column::Text(vec![None; rows])
                } else {
                    Column::Num(vec![f64::NAN; rows])
                }
            });
            match col {
                Column::Num(v) => v.push(num.unwrap_or(f64::NAN)),
                Column::Text(v) => v.push(text.or_else(|| num.map(|n| n.to_string()))),
            }
        }
        rows += 1;
    }
    if let Some((name, _)) = columns.iter().find(|(_, c)| c.len() != rows) {
        return Err(err(format!(
            "{}: column \"{name}\" is ragged",
            path.display()
        )));
    }
    Ok((columns, rows))
}

/// Check the table and build the training and holdout sets.
pub fn prepare(table: &Table, def: &DataDef) -> Result<Prepared, PipelineError> {
    if table.rows == 0 {
        return Err(err("the dataset has no rows"));
    }
    let label = match table.columns.get(&def.label) {
        Some(Column::Num(v)) => v,
        Some(Column::Text(_)) => {
            return Err(err(format!(
                "label column \"{}\" must be numeric 0/1",
                def.label
            )));
        }
        None => {
            let names: Vec<&String> = table.columns.keys().collect();
            return Err(err(format!(
                "label column \"{}\" is missing; columns are {names:?}",
                def.label
            )));
        }
    };
    let classification = def.task == super::definition::Task::Classification;
    if let Some((i, v)) = label.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(err(format!(
            "label \"{}\" row {i} is {v}; labels must be present",
            def.label
        )));
    }
    if classification {
        if let Some((i, v)) = label
            .iter()
            .enumerate()
            .find(|(_, v)| **v != 0.0 && **v != 1.0)
        {
            return Err(err(format!(
                "label \"{}\" row {i} is {v}; a binary label must be 0 or 1 (or set [data] task = \"regression\")",
                def.label
            )));
        }
        let positives = label.iter().filter(|v| **v == 1.0).count();
        if positives == 0 || positives == label.len() {
            return Err(err(format!(
                "label \"{}\" has only one class ({positives} positives in {} rows)",
                def.label,
                label.len()
            )));
        }
    }
    let features: Vec<String> = match &def.features {
        Some(list) => list.clone(),
        None => table
            .columns
            .iter()
            .filter(|(name, col)| {
                matches!(col, Column::Num(_))
                    && **name != def.label
                    && Some(name.as_str()) != def.timestamp.as_deref()
                    && !def.exclude.contains(name)
            })
            .map(|(name, _)| name.clone())
            .collect(),
    };
    if features.is_empty() {
        return Err(err("no feature columns: list them in [data] features"));
    }
    let label_lc = def.label.to_ascii_lowercase();
    let mut matrix: Vec<&Vec<f64>> = Vec::with_capacity(features.len());
    for f in &features {
        // Leakage by name: an inferred feature that is (or embeds) the label.
        // An explicit `features` list is a deliberate choice and is trusted.
        if def.features.is_none() && f.to_ascii_lowercase().contains(&label_lc) {
            return Err(err(format!(
                "feature \"{f}\" looks like the label \"{}\" (label leakage by name); exclude it in [data] exclude, or list the features explicitly",
                def.label
            )));
        }
        match table.columns.get(f) {
            Some(Column::Num(v)) => {
                let missing = v.iter().filter(|x| !x.is_finite()).count();
                if missing == v.len() {
                    return Err(err(format!(
                        "feature \"{f}\" is empty (every value is missing)"
                    )));
                }
                if missing > 0 {
                    return Err(err(format!(
                        "feature \"{f}\" has {missing} missing or non-finite values; fill or drop them before training"
                    )));
                }
                matrix.push(v);
            }
            Some(Column::Text(_)) => {
                return Err(err(format!(
                    "feature \"{f}\" is text; encode it as numbers first"
                )));
            }
            None => {
                return Err(err(format!(
                    "feature \"{f}\" is not a column of the dataset"
                )));
            }
        }
    }
    // Row order for the split.
    let (order, kind, cutoff) = match &def.timestamp {
        Some(ts) => {
            let keys: Vec<String> = match table.columns.get(ts) {
                Some(Column::Text(v)) => v.iter().map(|s| s.clone().unwrap_or_default()).collect(),
                Some(Column::Num(v)) => v.iter().map(|x| format!("{x:020.6}")).collect(),
                None => return Err(err(format!("timestamp column \"{ts}\" is missing"))),
            };
            let mut order: Vec<usize> = (0..table.rows).collect();
            order.sort_by(|a, b| keys[*a].cmp(&keys[*b]).then(a.cmp(b)));
            let n_holdout = holdout_rows(table.rows, def.holdout_fraction)?;
            let cutoff = order.get(table.rows - n_holdout).map(|i| keys[*i].clone());
            (order, "time", cutoff)
        }
        None => {
            let mut rng = greenbelt_train::rng::SplitMix64::new(def.seed);
            let mut order: Vec<usize> = (0..table.rows).collect();
            for i in (1..order.len()).rev() {
                let j = rng.below(i + 1);
                order.swap(i, j);
            }
            (order, "random", None)
        }
    };
    let n_holdout = holdout_rows(table.rows, def.holdout_fraction)?;
    let n_train = table.rows - n_holdout;
    let take = |rows: &[usize]| -> (Vec<f64>, Vec<f64>) {
        let mut x = Vec::with_capacity(rows.len() * features.len());
        let mut y = Vec::with_capacity(rows.len());
        for &r in rows {
            for col in &matrix {
                x.push(col[r]);
            }
            y.push(label[r]);
        }
        (x, y)
    };
    let (train_x, train_y) = take(&order[..n_train]);
    let (holdout_x, holdout_y) = take(&order[n_train..]);
    for (what, y) in [("training", &train_y), ("holdout", &holdout_y)] {
        if !classification {
            break;
        }
        let pos = y.iter().filter(|v| **v == 1.0).count();
        if pos == 0 || pos == y.len() {
            return Err(err(format!(
                "the {what} set has only one class after the {kind} split; use more data or another holdout_fraction"
            )));
        }
    }
    Ok(Prepared {
        features,
        train_x,
        train_y,
        holdout_x,
        holdout_y,
        holdout_rows: order[n_train..].to_vec(),
        split: SplitInfo {
            kind: kind.into(),
            train_rows: n_train,
            holdout_rows: n_holdout,
            cutoff,
        },
    })
}

fn holdout_rows(rows: usize, fraction: f64) -> Result<usize, PipelineError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(err(format!(
            "holdout_fraction {fraction} must be between 0 and 1"
        )));
    }
    let n = ((rows as f64) * fraction).round() as usize;
    if n == 0 || n >= rows {
        return Err(err(format!(
            "{rows} rows are too few for a holdout of {fraction}"
        )));
    }
    Ok(n)
}

/// Row-major values of `features` for `rows` of `table`.
pub fn matrix(
    table: &Table,
    features: &[String],
    rows: &[usize],
) -> Result<Vec<f64>, PipelineError> {
    let cols: Vec<&Vec<f64>> = features
        .iter()
        .map(|f| match table.columns.get(f) {
            Some(Column::Num(v)) => Ok(v),
            _ => Err(err(format!(
                "feature \"{f}\" is not a numeric column of the dataset"
            ))),
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for &r in rows {
        for c in &cols {
            out.push(c.get(r).copied().unwrap_or(f64::NAN));
        }
    }
    Ok(out)
}

/// Write features and label as CSV (for external training commands).
pub fn write_csv(
    path: &Path,
    features: &[String],
    label: &str,
    x: &[f64],
    y: &[f64],
) -> Result<(), PipelineError> {
    let mut w =
        csv::Writer::from_path(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let mut header: Vec<&str> = features.iter().map(String::as_str).collect();
    header.push(label);
    w.write_record(&header).map_err(|e| err(e.to_string()))?;
    let cols = features.len();
    for (row, label) in x.chunks(cols.max(1)).zip(y) {
        let mut rec: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        rec.push(label.to_string());
        w.write_record(&rec).map_err(|e| err(e.to_string()))?;
    }
    w.flush().map_err(|e| err(e.to_string()))
}
