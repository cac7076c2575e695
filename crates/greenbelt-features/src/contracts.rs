//! Data contracts: rules on sources and feature views in the vocabulary of
//! Great Expectations / pandera / Deequ (type, not_null with `mostly`,
//! range, allowed set, unique key, regex, row-count bounds, freshness, PSI
//! against a reference), their policy (`fail` the run, or `quarantine` the
//! offending rows to a side table with a reason), and the validation report.
//! This module owns the rules and their evaluation over Arrow record
//! batches; it does not read sources or write the offline store.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::defs::ValueType;
use crate::error::{FeatureError, Result};
use crate::time::parse_duration;

/// What to do with rows that break a row-level rule.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Stop the run with an error naming the rule.
    #[default]
    Fail,
    /// Write the offending rows to the quarantine table with a reason and go on.
    Quarantine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// What to do with rows that break a row-level rule: `fail` the run,
    /// or `quarantine` them to a side table with a reason.
    #[serde(default)]
    pub policy: Policy,
    /// The rules, each tagged by `check`.
    pub rules: Vec<RuleSpec>,
}

/// One rule, tagged by `check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "check", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleSpec {
    /// The column has this type.
    Type {
        /// The column checked.
        column: String,
        /// `string`, `int64`, `float64` or `bool`.
        #[serde(rename = "type")]
        dtype: ValueType,
    },
    /// At least `mostly` (default 1.0) of the values are not null.
    NotNull {
        /// The column checked.
        column: String,
        /// Share of values that must pass, 0..=1 (default 1.0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mostly: Option<f64>,
    },
    /// Non-null values lie in [min, max] (either bound optional).
    Range {
        /// The column checked.
        column: String,
        /// Lowest allowed value; unset: no lower bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        /// Highest allowed value; unset: no upper bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
        /// Share of values that must pass, 0..=1 (default 1.0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mostly: Option<f64>,
    },
    /// Non-null values are one of `values`.
    Allowed {
        /// The column checked.
        column: String,
        /// The allowed values.
        values: Vec<serde_json::Value>,
    },
    /// No two rows share the values of `columns`.
    Unique {
        /// The columns that together must be unique.
        columns: Vec<String>,
    },
    /// Non-null values (as text) match the regular expression.
    Regex {
        /// The column checked.
        column: String,
        /// The regular expression (Rust `regex` syntax).
        pattern: String,
    },
    /// The number of rows lies in [min, max].
    RowCount {
        /// Fewest rows; unset: 0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<u64>,
        /// Most rows; unset: no limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<u64>,
    },
    /// The newest event is at most `max_age` old.
    Freshness {
        /// The oldest the newest event may be (humantime).
        max_age: String,
    },
    /// Population stability index of `column` against the same column of a
    /// reference file is at most `max` (default 0.2).
    Psi {
        /// The column checked.
        column: String,
        /// The reference file (CSV or Parquet): a path relative to the
        /// definitions file, or `s3://bucket/key`.
        reference: String,
        /// Highest PSI allowed (default 0.2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
        /// Bins of the PSI histogram of a numeric column, 2..=1000 (default
        /// 10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bins: Option<usize>,
    },
}

impl RuleSpec {
    /// Short name of the rule for reports, e.g. `not_null(amount)`.
    pub fn label(&self) -> String {
        match self {
            RuleSpec::Type { column, dtype } => format!("type({column}={})", dtype.name()),
            RuleSpec::NotNull { column, .. } => format!("not_null({column})"),
            RuleSpec::Range {
                column, min, max, ..
            } => format!(
                "range({column} in [{}, {}])",
                min.map_or("-inf".to_string(), |v| v.to_string()),
                max.map_or("inf".to_string(), |v| v.to_string())
            ),
            RuleSpec::Allowed { column, .. } => format!("allowed({column})"),
            RuleSpec::Unique { columns } => format!("unique({})", columns.join(",")),
            RuleSpec::Regex { column, pattern } => format!("regex({column} ~ {pattern})"),
            RuleSpec::RowCount { min, max } => format!(
                "row_count in [{}, {}]",
                min.map_or("0".to_string(), |v| v.to_string()),
                max.map_or("inf".to_string(), |v| v.to_string())
            ),
            RuleSpec::Freshness { max_age } => format!("freshness(max_age={max_age})"),
            RuleSpec::Psi { column, max, .. } => {
                format!("psi({column}) <= {}", max.unwrap_or(0.2))
            }
        }
    }
}

/// A validated contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    pub policy: Policy,
    pub rules: Vec<RuleSpec>,
}

impl Contract {
    /// Check a contract as written; `what` names its owner in errors and
    /// `base` resolves relative reference paths.
    pub fn from_spec(what: &str, spec: &ContractSpec, base: &Path) -> Result<Contract> {
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (i, r) in spec.rules.iter().enumerate() {
            let at = format!("{what}: contract rule {} ({})", i + 1, r.label());
            let bad_mostly =
                |m: &Option<f64>| m.is_some_and(|m| !(0.0..=1.0).contains(&m) || m.is_nan());
            let mut r = r.clone();
            match &mut r {
                RuleSpec::NotNull { mostly, .. } if bad_mostly(mostly) => {
                    return Err(FeatureError::Invalid(format!(
                        "{at}: mostly must be between 0 and 1"
                    )));
                }
                RuleSpec::Range {
                    min, max, mostly, ..
                } => {
                    if bad_mostly(mostly) {
                        return Err(FeatureError::Invalid(format!(
                            "{at}: mostly must be between 0 and 1"
                        )));
                    }
                    if min.is_none() && max.is_none() {
                        return Err(FeatureError::Invalid(format!("{at}: set min, max or both")));
                    }
                    if let (Some(a), Some(b)) = (min, max)
                        && a > b
                    {
                        return Err(FeatureError::Invalid(format!("{at}: min is above max")));
                    }
                }
                RuleSpec::Allowed { values, .. } if values.is_empty() => {
                    return Err(FeatureError::Invalid(format!(
                        "{at}: values is empty; list the allowed values"
                    )));
                }
                RuleSpec::Unique { columns } if columns.is_empty() => {
                    return Err(FeatureError::Invalid(format!(
                        "{at}: columns is empty; name the key columns"
                    )));
                }
                RuleSpec::Regex { pattern, .. } => {
                    regex::Regex::new(pattern).map_err(|e| {
                        FeatureError::Invalid(format!("{at}: pattern is not a valid regex: {e}"))
                    })?;
                }
                RuleSpec::RowCount { min, max } => {
                    if let (Some(a), Some(b)) = (min, max)
                        && a > b
                    {
                        return Err(FeatureError::Invalid(format!("{at}: min is above max")));
                    }
                }
                RuleSpec::Freshness { max_age } => {
                    parse_duration(&format!("{at}: max_age"), max_age)?;
                }
                RuleSpec::Psi {
                    reference,
                    max,
                    bins,
                    ..
                } => {
                    if max.is_some_and(|m| m.is_nan() || m < 0.0) {
                        return Err(FeatureError::Invalid(format!("{at}: max must be >= 0")));
                    }
                    if bins.is_some_and(|b| !(2..=1000).contains(&b)) {
                        return Err(FeatureError::Invalid(format!(
                            "{at}: bins must be between 2 and 1000"
                        )));
                    }
                    // A relative path resolves against the definitions'
                    // directory; an s3:// URL stays as written.
                    *reference = crate::defs::Location::parse(reference, base)
                        .map_err(|e| FeatureError::Invalid(format!("{at}: reference {e}")))?
                        .to_path()
                        .to_string_lossy()
                        .into_owned();
                }
                _ => {}
            }
            rules.push(r);
        }
        Ok(Contract {
            policy: spec.policy,
            rules,
        })
    }
}

// ---------- rules one value can break ----------

/// One value as a row-level rule sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    Number(f64),
    Text(&'a str),
}

impl Cell<'_> {
    /// A model-input value: NaN is the serving path's "missing", so it is null.
    pub fn from_f64(x: f64) -> Cell<'static> {
        if x.is_nan() {
            Cell::Null
        } else {
            Cell::Number(x)
        }
    }

    fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Cell::Null => None,
            Cell::Text(s) => Some(std::borrow::Cow::Borrowed(s)),
            Cell::Number(x) => Some(std::borrow::Cow::Owned(number_text(*x))),
        }
    }
}

/// A number as text the way a JSON value or an integer column prints it
/// (`3`, not `3.0`, for whole numbers).
fn number_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

/// The check of a contract rule that one value can break on its own:
/// `not_null` and `range` without `mostly` (or with `mostly = 1`),
/// `allowed` and `regex`. Rules over a whole data set (`mostly < 1`,
/// `unique`, `row_count`, `freshness`, `psi`, `type`) have none.
#[derive(Debug, Clone)]
pub enum RowCheck {
    NotNull,
    Range {
        min: Option<f64>,
        max: Option<f64>,
    },
    Allowed {
        texts: HashSet<String>,
        numbers: Vec<f64>,
    },
    Regex(regex::Regex),
}

/// A row-level rule of a contract: the column it reads, its label (as in
/// reports, e.g. `range(amount in [0, inf])`) and its check.
#[derive(Debug, Clone)]
pub struct RowRule {
    pub column: String,
    pub label: String,
    pub check: RowCheck,
}

impl RowRule {
    /// The row-level part of `rule`, if it has one.
    pub fn from_spec(rule: &RuleSpec) -> Result<Option<RowRule>> {
        if !row_level(rule) {
            return Ok(None);
        }
        RowRule::per_value(rule)
    }

    /// The per-value check of `rule` whether or not `mostly` lets a data
    /// set tolerate failures (the checker counts them either way).
    fn per_value(rule: &RuleSpec) -> Result<Option<RowRule>> {
        let (column, check) = match rule {
            RuleSpec::NotNull { column, .. } => (column, RowCheck::NotNull),
            RuleSpec::Range {
                column, min, max, ..
            } => (
                column,
                RowCheck::Range {
                    min: *min,
                    max: *max,
                },
            ),
            RuleSpec::Allowed { column, values } => (
                column,
                RowCheck::Allowed {
                    texts: values.iter().map(json_text).collect(),
                    numbers: values.iter().filter_map(|v| v.as_f64()).collect(),
                },
            ),
            RuleSpec::Regex { column, pattern } => (
                column,
                RowCheck::Regex(regex::Regex::new(pattern).map_err(|e| {
                    FeatureError::Invalid(format!("contract rule {}: {e}", rule.label()))
                })?),
            ),
            _ => return Ok(None),
        };
        Ok(Some(RowRule {
            column: column.clone(),
            label: rule.label(),
            check,
        }))
    }

    /// Why `cell` breaks this rule (`None`: it keeps it). Only `not_null`
    /// looks at nulls; a NaN breaks a range.
    pub fn broken_by(&self, cell: Cell<'_>) -> Option<String> {
        match (&self.check, cell) {
            (RowCheck::NotNull, Cell::Null) => Some("null".into()),
            (RowCheck::NotNull, _) | (_, Cell::Null) => None,
            (RowCheck::Range { min, max }, c) => {
                let x = match c {
                    Cell::Number(x) => Some(x),
                    Cell::Text(t) => t.trim().parse::<f64>().ok(),
                    Cell::Null => None,
                };
                match x {
                    None => Some("not a number".into()),
                    Some(x)
                        if x.is_nan()
                            || min.is_some_and(|m| x < m)
                            || max.is_some_and(|m| x > m) =>
                    {
                        Some(number_text(x))
                    }
                    Some(_) => None,
                }
            }
            (RowCheck::Allowed { texts, numbers }, c) => {
                let ok = matches!(c, Cell::Number(x) if numbers.contains(&x))
                    || c.text().is_some_and(|t| texts.contains(t.as_ref()));
                (!ok).then(|| c.text().map(|t| t.into_owned()).unwrap_or_default())
            }
            (RowCheck::Regex(re), c) => {
                let t = c.text().map(|t| t.into_owned()).unwrap_or_default();
                (!re.is_match(&t)).then_some(t)
            }
        }
    }
}

impl Contract {
    /// The rules of this contract that one value can break.
    pub fn row_rules(&self) -> Result<Vec<RowRule>> {
        let mut out = Vec::new();
        for r in &self.rules {
            if let Some(rr) = RowRule::from_spec(r)? {
                out.push(rr);
            }
        }
        Ok(out)
    }
}

// ---------- evaluation ----------

use std::collections::{BTreeMap, BTreeSet, HashSet};

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};

/// Failures kept per rule as examples in the report.
const SAMPLES: usize = 5;

/// The outcome of one rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleReport {
    pub rule: String,
    /// Rows (or values) the rule looked at.
    pub checked: u64,
    pub failed: u64,
    pub failed_percent: f64,
    pub passed: bool,
    /// A few failing values, as text.
    pub samples: Vec<String>,
    /// Measured value for dataset-level rules (row count, age, PSI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A validation report: one entry per rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub target: String,
    pub policy: Policy,
    pub rows: u64,
    /// Rows written to the quarantine table (policy quarantine).
    pub quarantined: u64,
    pub passed: bool,
    pub rules: Vec<RuleReport>,
}

impl ValidationReport {
    /// The report as text for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}: {} ({} rows, policy {:?}, {} quarantined)\n",
            self.target,
            if self.passed { "PASSED" } else { "FAILED" },
            self.rows,
            self.policy,
            self.quarantined
        );
        for r in &self.rules {
            out.push_str(&format!(
                "  {} {:<40} checked {:>9}  failed {:>7} ({:.2}%)",
                if r.passed { "ok  " } else { "FAIL" },
                r.rule,
                r.checked,
                r.failed,
                r.failed_percent
            ));
            if let Some(d) = &r.detail {
                out.push_str(&format!("  {d}"));
            }
            if !r.samples.is_empty() {
                out.push_str(&format!("  e.g. {}", r.samples.join(", ")));
            }
            out.push('\n');
        }
        out
    }

    /// The first failing rule, as an error message.
    pub fn failure(&self) -> Option<String> {
        self.rules.iter().find(|r| !r.passed).map(|r| {
            format!(
                "{}: rule {} failed on {} of {} ({:.2}%){}{}",
                self.target,
                r.rule,
                r.failed,
                r.checked,
                r.failed_percent,
                r.detail
                    .as_ref()
                    .map(|d| format!(", {d}"))
                    .unwrap_or_default(),
                if r.samples.is_empty() {
                    String::new()
                } else {
                    format!(", e.g. {}", r.samples.join(", "))
                }
            )
        })
    }
}

enum Psi {
    Numeric {
        edges: Vec<f64>,
        reference: Vec<f64>,
        counts: Vec<u64>,
    },
    Categorical {
        reference: BTreeMap<String, f64>,
        counts: BTreeMap<String, u64>,
    },
}

struct State {
    checked: u64,
    failed: u64,
    samples: Vec<String>,
    seen: HashSet<String>,
    psi: Option<Psi>,
    detail: Option<String>,
    /// The per-value check (not_null, range, allowed, regex).
    row: Option<RowRule>,
}

/// Evaluates a contract over a stream of record batches.
pub struct Checker {
    target: String,
    contract: Contract,
    states: Vec<State>,
    rows: u64,
    quarantined: u64,
    newest_us: Option<i64>,
    ts_column: Option<String>,
    now_us: i64,
}

fn column<'a>(batch: &'a RecordBatch, rule: &RuleSpec, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        FeatureError::Invalid(format!(
            "contract rule {}: column \"{name}\" is not in the data (columns: {})",
            rule.label(),
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn as_text(a: &ArrayRef) -> Result<StringArray> {
    let c = cast(a, &DataType::Utf8)?;
    Ok(c.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .unwrap_or_else(|| StringArray::from(Vec::<Option<String>>::new())))
}

fn as_f64(a: &ArrayRef) -> Result<Float64Array> {
    let c = cast(a, &DataType::Float64)?;
    Ok(c.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .unwrap_or_else(|| Float64Array::from(Vec::<Option<f64>>::new())))
}

/// The first row of `batch` that breaks one of `rules`: the row, the rule
/// and the offending value as text.
#[derive(Debug)]
pub struct Broken<'r> {
    pub row: usize,
    pub rule: &'r RowRule,
    pub value: String,
}

/// Check every row of `batch` against `rules`; the earliest row that breaks
/// one (the first such rule in order) comes back.
pub fn first_broken<'r>(rules: &'r [RowRule], batch: &RecordBatch) -> Result<Option<Broken<'r>>> {
    let mut first: Option<Broken<'r>> = None;
    for rule in rules {
        let a = batch.column_by_name(&rule.column).ok_or_else(|| {
            FeatureError::Invalid(format!(
                "contract rule {}: column \"{}\" is not in the data",
                rule.label, rule.column
            ))
        })?;
        let cells = Cells::new(a)?;
        let upto = first.as_ref().map_or(batch.num_rows(), |b| b.row);
        for i in 0..upto {
            if let Some(value) = rule.broken_by(cells.get(i)) {
                first = Some(Broken {
                    row: i,
                    rule,
                    value,
                });
                break;
            }
        }
    }
    Ok(first)
}

/// An Arrow column read as cells: numbers from numeric columns, text from
/// the rest.
enum Cells {
    Numbers(Float64Array),
    Texts(StringArray),
}

impl Cells {
    fn new(a: &ArrayRef) -> Result<Cells> {
        Ok(if a.data_type().is_numeric() {
            Cells::Numbers(as_f64(a)?)
        } else {
            Cells::Texts(as_text(a)?)
        })
    }

    fn get(&self, i: usize) -> Cell<'_> {
        match self {
            Cells::Numbers(v) if v.is_valid(i) => Cell::Number(v.value(i)),
            Cells::Texts(t) if t.is_valid(i) => Cell::Text(t.value(i)),
            _ => Cell::Null,
        }
    }
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether a rule judges single rows (and can quarantine them).
fn row_level(rule: &RuleSpec) -> bool {
    match rule {
        RuleSpec::NotNull { mostly, .. } | RuleSpec::Range { mostly, .. } => {
            mostly.is_none_or(|m| m >= 1.0)
        }
        RuleSpec::Allowed { .. } | RuleSpec::Regex { .. } | RuleSpec::Unique { .. } => true,
        RuleSpec::Type { .. }
        | RuleSpec::RowCount { .. }
        | RuleSpec::Freshness { .. }
        | RuleSpec::Psi { .. } => false,
    }
}

impl Checker {
    /// A checker for `contract` on data named `target`; `ts_column` is the
    /// event-time column (for freshness); `now_us` is the time freshness is
    /// measured against. PSI references are read here.
    pub async fn new(
        target: &str,
        contract: &Contract,
        ts_column: Option<&str>,
        now_us: i64,
    ) -> Result<Checker> {
        let mut states = Vec::new();
        for rule in &contract.rules {
            let mut st = State {
                checked: 0,
                failed: 0,
                samples: Vec::new(),
                seen: HashSet::new(),
                psi: None,
                detail: None,
                row: RowRule::per_value(rule)?,
            };
            if let RuleSpec::Psi {
                column,
                reference,
                bins,
                ..
            } = rule
            {
                st.psi = Some(load_reference(rule, column, reference, bins.unwrap_or(10)).await?);
            }
            states.push(st);
        }
        Ok(Checker {
            target: target.to_string(),
            contract: contract.clone(),
            states,
            rows: 0,
            quarantined: 0,
            newest_us: None,
            ts_column: ts_column.map(str::to_string),
            now_us,
        })
    }

    pub fn policy(&self) -> Policy {
        self.contract.policy
    }

    /// Check one batch. Returns, per row, the reason it breaks a row-level
    /// rule (`None` = good).
    pub fn check(&mut self, batch: &RecordBatch) -> Result<Vec<Option<String>>> {
        let n = batch.num_rows();
        self.rows += n as u64;
        let mut reasons: Vec<Option<String>> = vec![None; n];
        if let Some(tc) = &self.ts_column
            && let Some(a) = batch.column_by_name(tc)
        {
            let t = cast(
                a,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )?;
            if let Some(t) = t.as_any().downcast_ref::<TimestampMicrosecondArray>() {
                for i in 0..t.len() {
                    if t.is_valid(i) {
                        let v = t.value(i);
                        self.newest_us = Some(self.newest_us.map_or(v, |m| m.max(v)));
                    }
                }
            }
        }
        for (rule, st) in self.contract.rules.iter().zip(self.states.iter_mut()) {
            let label = rule.label();
            let rl = row_level(rule);
            let mut fail = |i: usize, sample: String, st: &mut State| {
                st.failed += 1;
                if st.samples.len() < SAMPLES {
                    st.samples.push(sample);
                }
                if rl && reasons[i].is_none() {
                    reasons[i] = Some(label.clone());
                }
            };
            match rule {
                RuleSpec::Type { column: c, dtype } => {
                    let a = column(batch, rule, c)?;
                    st.checked += n as u64;
                    if a.data_type() != &dtype.arrow() {
                        st.failed += n as u64;
                        st.detail = Some(format!("column is {}", a.data_type()));
                    }
                }
                RuleSpec::NotNull { column: c, .. }
                | RuleSpec::Range { column: c, .. }
                | RuleSpec::Allowed { column: c, .. }
                | RuleSpec::Regex { column: c, .. } => {
                    let cells = Cells::new(column(batch, rule, c)?)?;
                    let Some(row) = st.row.take() else {
                        continue;
                    };
                    let not_null = matches!(row.check, RowCheck::NotNull);
                    for i in 0..n {
                        let cell = cells.get(i);
                        if cell == Cell::Null && !not_null {
                            continue;
                        }
                        st.checked += 1;
                        if let Some(why) = row.broken_by(cell) {
                            let sample = if not_null {
                                format!("row {}: {why}", self.rows - n as u64 + i as u64)
                            } else {
                                why
                            };
                            fail(i, sample, st);
                        }
                    }
                    st.row = Some(row);
                }
                RuleSpec::Unique { columns } => {
                    let mut texts = Vec::with_capacity(columns.len());
                    for c in columns {
                        texts.push(as_text(column(batch, rule, c)?)?);
                    }
                    for i in 0..n {
                        st.checked += 1;
                        let key = texts
                            .iter()
                            .map(|t| {
                                if t.is_null(i) {
                                    "\u{0}null".to_string()
                                } else {
                                    t.value(i).to_string()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join("\u{1f}");
                        if !st.seen.insert(key.clone()) {
                            fail(i, key.replace('\u{1f}', "/"), st);
                        }
                    }
                }
                RuleSpec::Psi { column: c, .. } => {
                    let a = column(batch, rule, c)?;
                    match &mut st.psi {
                        Some(Psi::Numeric { edges, counts, .. }) => {
                            let v = as_f64(a)?;
                            for i in 0..n {
                                if v.is_valid(i) && !v.value(i).is_nan() {
                                    st.checked += 1;
                                    let b = greenbelt_drift::bin_of(edges, v.value(i));
                                    if let Some(c) = counts.get_mut(b) {
                                        *c += 1;
                                    }
                                }
                            }
                        }
                        Some(Psi::Categorical { counts, .. }) => {
                            let t = as_text(a)?;
                            for i in 0..n {
                                if t.is_valid(i) {
                                    st.checked += 1;
                                    *counts.entry(t.value(i).to_string()).or_default() += 1;
                                }
                            }
                        }
                        None => {}
                    }
                }
                RuleSpec::RowCount { .. } | RuleSpec::Freshness { .. } => {}
            }
        }
        self.quarantined += match self.contract.policy {
            Policy::Quarantine => reasons.iter().filter(|r| r.is_some()).count() as u64,
            Policy::Fail => 0,
        };
        Ok(reasons)
    }

    /// The report, with the dataset-level rules evaluated.
    pub fn finish(self) -> ValidationReport {
        let mut rules = Vec::new();
        let rows = self.rows;
        for (rule, st) in self.contract.rules.iter().zip(self.states) {
            let mut r = RuleReport {
                rule: rule.label(),
                checked: st.checked,
                failed: st.failed,
                failed_percent: 0.0,
                passed: true,
                samples: st.samples,
                detail: st.detail,
            };
            match rule {
                RuleSpec::RowCount { min, max } => {
                    r.checked = 1;
                    let bad = min.is_some_and(|m| rows < m) || max.is_some_and(|m| rows > m);
                    r.failed = u64::from(bad);
                    r.detail = Some(format!("{rows} rows"));
                }
                RuleSpec::Freshness { max_age } => {
                    r.checked = 1;
                    let max_us = parse_duration("max_age", max_age).unwrap_or(0);
                    match self.newest_us {
                        Some(t) => {
                            let age = self.now_us - t;
                            r.failed = u64::from(age > max_us);
                            r.detail = Some(format!(
                                "newest event {} is {}s old",
                                crate::time::format_ts(t),
                                age / 1_000_000
                            ));
                        }
                        None => {
                            r.failed = 1;
                            r.detail = Some("no events".into());
                        }
                    }
                }
                RuleSpec::Psi { max, .. } => {
                    let psi = st.psi.as_ref().map(psi_value).unwrap_or(0.0);
                    let bound = max.unwrap_or(0.2);
                    r.failed = u64::from(psi > bound);
                    r.checked = r.checked.max(1);
                    r.detail = Some(format!("psi {psi:.4} (max {bound})"));
                }
                _ => {}
            }
            let mostly = match rule {
                RuleSpec::NotNull { mostly, .. } | RuleSpec::Range { mostly, .. } => {
                    mostly.unwrap_or(1.0)
                }
                _ => 1.0,
            };
            let frac = if r.checked == 0 {
                0.0
            } else {
                r.failed as f64 / r.checked as f64
            };
            r.failed_percent = (frac * 10_000.0).round() / 100.0;
            r.passed = match rule {
                RuleSpec::RowCount { .. } | RuleSpec::Freshness { .. } | RuleSpec::Psi { .. } => {
                    r.failed == 0
                }
                _ => frac <= 1.0 - mostly + 1e-12,
            };
            if matches!(rule, RuleSpec::Psi { .. }) {
                r.failed_percent = if r.passed { 0.0 } else { 100.0 };
            }
            rules.push(r);
        }
        let passed = rules.iter().all(|r| r.passed);
        ValidationReport {
            target: self.target,
            policy: self.contract.policy,
            rows,
            quarantined: self.quarantined,
            passed,
            rules,
        }
    }
}

/// Whether a run with this report goes on: under `quarantine` the row-level
/// failures were set aside, so only dataset-level rules stop it.
pub fn run_may_continue(contract: &Contract, report: &ValidationReport) -> bool {
    match contract.policy {
        Policy::Fail => report.passed,
        Policy::Quarantine => contract
            .rules
            .iter()
            .zip(&report.rules)
            .all(|(rule, r)| r.passed || row_level(rule)),
    }
}

/// PSI of the rule's checked values against its reference, with the one
/// convention of `greenbelt_drift::psi` (0 when nothing was checked).
fn psi_value(p: &Psi) -> f64 {
    let (reference, current): (Vec<f64>, Vec<f64>) = match p {
        Psi::Numeric {
            reference, counts, ..
        } => {
            let total: u64 = counts.iter().sum();
            if total == 0 {
                return 0.0;
            }
            let current = counts.iter().map(|c| *c as f64 / total as f64).collect();
            (reference.clone(), current)
        }
        Psi::Categorical { reference, counts } => {
            let total: u64 = counts.values().sum();
            if total == 0 {
                return 0.0;
            }
            let mut keys: BTreeSet<&String> = reference.keys().collect();
            keys.extend(counts.keys());
            keys.into_iter()
                .map(|k| {
                    (
                        reference.get(k).copied().unwrap_or(0.0),
                        counts.get(k).copied().unwrap_or(0) as f64 / total as f64,
                    )
                })
                .unzip()
        }
    };
    // Same lengths by construction, so this cannot fail.
    greenbelt_drift::psi(&reference, &current).unwrap_or(0.0)
}

/// Read a PSI reference in streaming passes over the one column (memory
/// does not grow with the file): numeric columns get decile-style edges at
/// exact ranks (a DataFusion sort, which spills) and the share of values
/// per bin; other columns the share of each value (a group-by).
async fn load_reference(
    rule: &RuleSpec,
    column_name: &str,
    path: &str,
    bins: usize,
) -> Result<Psi> {
    use datafusion::functions_aggregate::expr_fn::count;
    use datafusion::prelude::{col, ident};
    use futures::StreamExt;

    let ctx = crate::source::session(&crate::source::EngineOptions::default())?;
    let loc = crate::defs::Location::from_path(Path::new(path))?;
    let bad = |e: &dyn std::fmt::Display| {
        FeatureError::Invalid(format!("contract rule {}: reference: {e}", rule.label()))
    };
    let df = crate::source::read_file(&ctx, &loc, crate::source::format_of(&loc))
        .await
        .map_err(|e| bad(&e))?;
    let fields: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    if !fields.iter().any(|f| f == column_name) {
        return Err(FeatureError::Invalid(format!(
            "contract rule {}: column \"{column_name}\" is not in the reference (columns: {})",
            rule.label(),
            fields.join(", ")
        )));
    }
    let df = df.select(vec![ident(column_name).alias("v")])?;
    let numeric = df.schema().field(0).data_type().is_numeric();
    let no_values = || {
        FeatureError::Invalid(format!(
            "contract rule {}: the reference has no values in \"{column_name}\"",
            rule.label()
        ))
    };
    if !numeric {
        let mut cats: BTreeMap<String, f64> = BTreeMap::new();
        let counted = df
            .filter(col("v").is_not_null())?
            .aggregate(vec![col("v")], vec![count(col("v")).alias("n")])?;
        let mut stream = counted.execute_stream().await?;
        while let Some(b) = stream.next().await {
            let b = b?;
            let names = as_text(b.column(0))?;
            let ns = as_f64(b.column(1))?;
            for (k, n) in names.iter().zip(ns.iter()) {
                if let (Some(k), Some(n)) = (k, n) {
                    *cats.entry(k.to_string()).or_default() += n;
                }
            }
        }
        let total: f64 = cats.values().sum();
        if total == 0.0 {
            return Err(no_values());
        }
        for v in cats.values_mut() {
            *v /= total;
        }
        return Ok(Psi::Categorical {
            reference: cats,
            counts: BTreeMap::new(),
        });
    }

    // Pass 1: how many values (not null, not NaN).
    let values = |df: datafusion::prelude::DataFrame| async move {
        Ok::<_, FeatureError>(
            df.execute_stream()
                .await?
                .map(|b| -> Result<Float64Array> { as_f64(b?.column(0)) }),
        )
    };
    let mut n = 0usize;
    let mut stream = values(df.clone()).await?;
    while let Some(a) = stream.next().await {
        n += a?.iter().flatten().filter(|x| !x.is_nan()).count();
    }
    if n == 0 {
        return Err(no_values());
    }
    // Pass 2: the edges, numpy's linear quantiles i/bins of the sorted
    // values (greenbelt_drift's convention), from the values at the ranks
    // each quantile interpolates between.
    let at: Vec<(usize, usize, f64)> = (1..bins)
        .map(|i| greenbelt_drift::quantile_ranks(n, i as f64 / bins as f64))
        .collect();
    let wanted: BTreeSet<usize> = at.iter().flat_map(|(lo, hi, _)| [*lo, *hi]).collect();
    let mut value_at: BTreeMap<usize, f64> = BTreeMap::new();
    let mut seen = 0usize;
    let mut stream = values(df.clone().sort(vec![col("v").sort(true, false)])?).await?;
    while let Some(a) = stream.next().await {
        for x in a?.iter().flatten().filter(|x| !x.is_nan()) {
            if wanted.contains(&seen) {
                value_at.insert(seen, x);
            }
            seen += 1;
        }
    }
    let mut edges: Vec<f64> = at
        .iter()
        .filter_map(|(lo, hi, t)| {
            Some(greenbelt_drift::lerp(
                *value_at.get(lo)?,
                *value_at.get(hi)?,
                *t,
            ))
        })
        .collect();
    edges.dedup();
    // Pass 3: the share of values per bin.
    let mut reference = vec![0u64; edges.len() + 1];
    let mut stream = values(df).await?;
    while let Some(a) = stream.next().await {
        for x in a?.iter().flatten().filter(|x| !x.is_nan()) {
            let b = greenbelt_drift::bin_of(&edges, x);
            if let Some(c) = reference.get_mut(b) {
                *c += 1;
            }
        }
    }
    let total = n as f64;
    let reference: Vec<f64> = reference.into_iter().map(|c| c as f64 / total).collect();
    let counts = vec![0; reference.len()];
    Ok(Psi::Numeric {
        edges,
        reference,
        counts,
    })
}
