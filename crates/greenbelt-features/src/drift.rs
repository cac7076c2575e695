//! `greenbelt drift compare`: every column two files (Parquet or CSV, local
//! or `s3://`) have in common, compared with the statistics of
//! `greenbelt-drift`, a verdict per column from [`Thresholds`], and the
//! share of drifted columns.
//!
//! Numeric columns get KS, PSI (reference deciles, numpy-linear quantiles,
//! a value on an edge in the upper bin) and Wasserstein-1; categorical
//! (string, bool) columns get chi-square, Jensen–Shannon and PSI over the
//! categories. Missing values (null, NaN, ±∞) are counted, not compared.
//!
//! Memory stays bounded whatever the file size: a numeric column is a
//! count pass (all numeric columns of a file in one scan), then two
//! DataFusion sorts (which spill to disk past the session's memory limit)
//! streamed into one merge pass ([`numeric`]) that computes D, W1, the PSI
//! bins and the chart's histogram without holding the values; a
//! categorical column is a group-by whose result is capped at
//! `max_categories`. Columns run in parallel, one tokio task each.
//!
//! This module owns the comparison and its report (text, JSON via serde,
//! HTML in [`html`]); it does not print or choose exit codes.

mod categorical;
pub mod html;
mod numeric;
mod text;

use std::path::Path;
use std::str::FromStr;

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use greenbelt_drift::{ChiSquare, KsResult};
use serde::Serialize;

use crate::defs::Location;
use crate::error::{FeatureError, Result};
use crate::source::{EngineOptions, format_of, read_file, session};

pub use text::render_text;

/// Format version of the JSON [`Report`].
pub const REPORT_FORMAT: u32 = 1;

/// The test a verdict comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Test {
    /// Two-sample Kolmogorov–Smirnov; drift when p < `ks_pvalue`.
    Ks,
    /// Wasserstein-1 divided by the reference's standard deviation (at
    /// least 0.001); drift when ≥ `wasserstein`.
    Wasserstein,
    /// Population stability index; drift when ≥ `psi`.
    Psi,
    /// Chi-square of the current counts against the reference shares;
    /// drift when p < `chisquare_pvalue`.
    ChiSquare,
    /// Jensen–Shannon distance (natural log); drift when ≥ `jensenshannon`.
    JensenShannon,
}

impl Test {
    pub fn name(self) -> &'static str {
        match self {
            Test::Ks => "ks",
            Test::Wasserstein => "wasserstein",
            Test::Psi => "psi",
            Test::ChiSquare => "chisquare",
            Test::JensenShannon => "jensenshannon",
        }
    }
}

/// Which test decides a numeric column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NumericTest {
    /// KS up to `small_rows` reference values, normed Wasserstein above.
    Auto,
    Ks,
    Wasserstein,
    Psi,
}

/// Which test decides a categorical column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CategoricalTest {
    /// Chi-square up to `small_rows` reference values, Jensen–Shannon above.
    Auto,
    ChiSquare,
    JensenShannon,
    Psi,
}

impl FromStr for NumericTest {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(NumericTest::Auto),
            "ks" => Ok(NumericTest::Ks),
            "wasserstein" => Ok(NumericTest::Wasserstein),
            "psi" => Ok(NumericTest::Psi),
            _ => Err(format!(
                "unknown numeric test \"{s}\"; use auto, ks, wasserstein or psi"
            )),
        }
    }
}

impl FromStr for CategoricalTest {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(CategoricalTest::Auto),
            "chisquare" => Ok(CategoricalTest::ChiSquare),
            "jensenshannon" => Ok(CategoricalTest::JensenShannon),
            "psi" => Ok(CategoricalTest::Psi),
            _ => Err(format!(
                "unknown categorical test \"{s}\"; use auto, chisquare, jensenshannon or psi"
            )),
        }
    }
}

/// The verdict rule. The defaults are Evidently's `DataDriftPreset`
/// defaults: small data (≤ 1000 reference values) is judged by p-values (KS,
/// chi-square at 0.05), larger data by distances that do not turn every
/// tiny shift significant (normed Wasserstein, Jensen–Shannon at 0.1); the
/// dataset drifts when at least half of the compared columns do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    pub numeric_test: NumericTest,
    pub categorical_test: CategoricalTest,
    /// `auto` uses the p-value tests up to this many reference values.
    pub small_rows: u64,
    pub ks_pvalue: f64,
    pub chisquare_pvalue: f64,
    pub wasserstein: f64,
    pub jensenshannon: f64,
    pub psi: f64,
    /// The dataset drifts when the share of drifted columns is at least this.
    pub drift_share: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            numeric_test: NumericTest::Auto,
            categorical_test: CategoricalTest::Auto,
            small_rows: 1000,
            ks_pvalue: 0.05,
            chisquare_pvalue: 0.05,
            wasserstein: 0.1,
            jensenshannon: 0.1,
            psi: 0.1,
            drift_share: 0.5,
        }
    }
}

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Only these columns (each must be in both files); default: every
    /// column the two files have in common.
    pub columns: Option<Vec<String>>,
    pub thresholds: Thresholds,
    /// The DataFusion session: its memory limit bounds the sorts (they
    /// spill past it), its partitions the parallel scan.
    pub engine: EngineOptions,
    /// Columns compared at once (default: the engine's partitions).
    pub parallel_columns: usize,
    /// PSI bins for numeric columns (reference quantiles).
    pub psi_bins: usize,
    /// Bins of the numeric histograms in the report (equal width over the
    /// two files' common range).
    pub chart_bins: usize,
    /// A categorical column with more distinct values than this (in the two
    /// files together) is not compared: it is an id or free text.
    pub max_categories: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        let engine = EngineOptions::default();
        CompareOptions {
            columns: None,
            thresholds: Thresholds::default(),
            parallel_columns: engine.target_partitions,
            engine,
            psi_bins: 10,
            chart_bins: 30,
            max_categories: 1000,
        }
    }
}

/// The comparison of two files.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: u32,
    pub reference: FileSummary,
    pub current: FileSummary,
    pub thresholds: Thresholds,
    pub columns: Vec<ColumnReport>,
    /// Columns only one file has (not compared).
    pub only_in_reference: Vec<String>,
    pub only_in_current: Vec<String>,
    /// Columns with a verdict (not skipped).
    pub compared: usize,
    pub drifted: usize,
    /// `drifted / compared` (0 when nothing was compared).
    pub share: f64,
    /// `share >= thresholds.drift_share` (and something was compared).
    pub dataset_drift: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    pub path: String,
    pub rows: u64,
}

/// The kind of comparison a column gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Numeric,
    Categorical,
    /// Dates, timestamps, binary, nested and all-null columns.
    Unsupported,
}

/// Values and missing values (null, NaN, ±∞) of one column in one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub values: u64,
    pub missing: u64,
}

/// One column's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnReport {
    pub name: String,
    pub kind: Kind,
    pub reference_type: String,
    pub current_type: String,
    pub reference: Counts,
    pub current: Counts,
    /// Why the column has no verdict (None when it was compared).
    pub skipped: Option<String>,
    /// The test the verdict comes from, its statistic, p-value (KS and
    /// chi-square) and threshold.
    pub test: Option<Test>,
    pub statistic: Option<f64>,
    pub pvalue: Option<f64>,
    pub threshold: Option<f64>,
    pub drifted: bool,
    pub numeric: Option<NumericStats>,
    pub categorical: Option<CategoricalStats>,
}

/// A numeric column's statistics (JSON: non-finite numbers are `null`).
#[derive(Debug, Clone, Serialize)]
pub struct NumericStats {
    pub ks: KsResult,
    pub psi: f64,
    /// The PSI bins: inner edges (reference quantiles) and counts per bin.
    pub psi_edges: Vec<f64>,
    pub psi_reference: Vec<u64>,
    pub psi_current: Vec<u64>,
    /// Wasserstein-1 and W1 / max(reference std, 0.001) (Evidently's norm).
    pub wasserstein: f64,
    pub wasserstein_norm: f64,
    pub reference_mean: f64,
    pub reference_std: f64,
    pub current_mean: f64,
    pub current_std: f64,
    /// The chart: equal-width bins over both files' range, counts per file.
    pub histogram: Histogram,
}

#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    /// `bins + 1` edges.
    pub edges: Vec<f64>,
    pub reference: Vec<u64>,
    pub current: Vec<u64>,
}

/// A categorical column's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct CategoricalStats {
    /// Chi-square of the current counts against the reference shares; a
    /// category the reference lacks gets the share `PSI_EPS` (see
    /// `greenbelt_drift::chisquare`); one category in all: statistic 0, p 1.
    pub chisquare: ChiSquare,
    pub jensenshannon: f64,
    pub psi: f64,
    /// Every category of either file (sorted), counts per file.
    pub categories: Vec<Category>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Category {
    pub value: String,
    pub reference: u64,
    pub current: u64,
}

impl Report {
    /// Whether the share of drifted columns exceeds `fail_share` (the CLI's
    /// `--fail-share`).
    pub fn exceeds(&self, fail_share: f64) -> bool {
        self.compared > 0 && self.share > fail_share
    }
}

/// Compare `current` with `reference` (paths or `s3://` URLs; `.csv` is
/// CSV, anything else Parquet).
pub async fn compare(reference: &str, current: &str, opts: &CompareOptions) -> Result<Report> {
    if opts.psi_bins < 2 || opts.chart_bins < 1 {
        return Err(FeatureError::Invalid(
            "PSI needs at least 2 bins and the chart at least 1".into(),
        ));
    }
    let ctx = session(&opts.engine)?;
    let (r, c) = futures::try_join!(
        open(&ctx, reference, "reference"),
        open(&ctx, current, "current")
    )?;
    let plan = plan_columns(&r, &c, opts.columns.as_deref())?;

    let numeric: Vec<String> = plan
        .iter()
        .filter(|p| p.kind == Kind::Numeric)
        .map(|p| p.name.clone())
        .collect();
    let (r_moments, c_moments) = futures::try_join!(
        numeric::moments(r.df.clone(), &numeric, &r.label),
        numeric::moments(c.df.clone(), &numeric, &c.label)
    )?;

    let jobs = plan.into_iter().map(|p| {
        let idx = numeric.iter().position(|n| *n == p.name);
        let moments =
            idx.and_then(|i| Some((r_moments.1.get(i)?.clone(), c_moments.1.get(i)?.clone())));
        let job = ColumnJob {
            plan: p,
            reference: r.df.clone(),
            current: c.df.clone(),
            labels: (r.label.clone(), c.label.clone()),
            moments,
            opts: opts.clone(),
        };
        tokio::spawn(job.run())
    });
    let mut columns = Vec::new();
    let mut results = futures::stream::iter(jobs).buffered(opts.parallel_columns.max(1));
    while let Some(joined) = results.next().await {
        let column = joined
            .map_err(|e| FeatureError::Data(format!("a column's comparison stopped: {e}")))??;
        columns.push(column);
    }

    Ok(summarise(
        FileSummary {
            path: reference.to_string(),
            rows: r_moments.0,
        },
        FileSummary {
            path: current.to_string(),
            rows: c_moments.0,
        },
        columns,
        (r.only(&c), c.only(&r)),
        &opts.thresholds,
    ))
}

fn summarise(
    reference: FileSummary,
    current: FileSummary,
    columns: Vec<ColumnReport>,
    (only_in_reference, only_in_current): (Vec<String>, Vec<String>),
    thresholds: &Thresholds,
) -> Report {
    let compared = columns.iter().filter(|c| c.skipped.is_none()).count();
    let drifted = columns.iter().filter(|c| c.drifted).count();
    let share = if compared == 0 {
        0.0
    } else {
        drifted as f64 / compared as f64
    };
    Report {
        format: REPORT_FORMAT,
        reference,
        current,
        thresholds: thresholds.clone(),
        columns,
        only_in_reference,
        only_in_current,
        compared,
        drifted,
        share,
        dataset_drift: compared > 0 && share >= thresholds.drift_share,
    }
}

/// One opened file: its frame, its columns' types, and how errors name it.
struct Opened {
    df: DataFrame,
    fields: Vec<(String, DataType)>,
    /// "the reference file R" / "the current file C".
    label: String,
    side: &'static str,
}

impl Opened {
    fn get(&self, name: &str) -> Option<&DataType> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    fn names(&self) -> String {
        self.fields
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn only(&self, other: &Opened) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(n, _)| other.get(n).is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

async fn open(ctx: &SessionContext, path: &str, side: &'static str) -> Result<Opened> {
    let label = format!("the {side} file {path}");
    let loc = Location::from_path(Path::new(path))?;
    let df = read_file(ctx, &loc, format_of(&loc))
        .await
        .map_err(|e| match e {
            FeatureError::NotFound(m) => FeatureError::NotFound(format!("{label}: {m}")),
            e => FeatureError::Invalid(format!(
                "reading {label}: {e}; it must be Parquet, or CSV with a header row and a .csv name"
            )),
        })?;
    let fields = df
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    Ok(Opened {
        df,
        fields,
        label,
        side,
    })
}

/// A column to compare: its kind and both types.
#[derive(Debug, Clone)]
struct Planned {
    name: String,
    kind: Kind,
    reference_type: DataType,
    current_type: DataType,
}

fn kind_of(t: &DataType) -> Kind {
    match t {
        t if t.is_numeric() => Kind::Numeric,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean => {
            Kind::Categorical
        }
        DataType::Dictionary(_, v) => kind_of(v),
        _ => Kind::Unsupported,
    }
}

/// A type as a person reads it: the string types are all "Utf8".
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "Utf8".into(),
        DataType::Dictionary(_, v) => type_name(v),
        t => t.to_string(),
    }
}

fn plan_columns(r: &Opened, c: &Opened, only: Option<&[String]>) -> Result<Vec<Planned>> {
    let names: Vec<String> = match only {
        Some(list) => {
            for name in list {
                for side in [r, c] {
                    if side.get(name).is_none() {
                        return Err(FeatureError::Invalid(format!(
                            "column \"{name}\" is not in {} (its columns: {}); fix --columns or the file",
                            side.label,
                            side.names()
                        )));
                    }
                }
            }
            list.to_vec()
        }
        None => r
            .fields
            .iter()
            .filter(|(n, _)| c.get(n).is_some())
            .map(|(n, _)| n.clone())
            .collect(),
    };
    if names.is_empty() {
        return Err(FeatureError::Invalid(format!(
            "the two files have no column in common (reference: {}; current: {}); are they the same dataset?",
            r.names(),
            c.names()
        )));
    }
    let mut planned = Vec::with_capacity(names.len());
    for name in names {
        let (Some(rt), Some(ct)) = (r.get(&name), c.get(&name)) else {
            continue;
        };
        let (rk, ck) = (kind_of(rt), kind_of(ct));
        let kind = match (rk, ck) {
            (a, b) if a == b => a,
            // An all-null column has type Null; it is skipped, not a mismatch.
            _ if *rt == DataType::Null || *ct == DataType::Null => Kind::Unsupported,
            _ => {
                return Err(FeatureError::Invalid(format!(
                    "column \"{name}\" is {} in the reference and {} in the current file; make the two files use one type (fix the values that do not parse in the {} file, or cast one of them), or leave the column out with --columns",
                    type_name(rt),
                    type_name(ct),
                    if rk == Kind::Numeric { c.side } else { r.side },
                )));
            }
        };
        planned.push(Planned {
            name,
            kind,
            reference_type: rt.clone(),
            current_type: ct.clone(),
        });
    }
    Ok(planned)
}

/// One column's work, run as its own task.
struct ColumnJob {
    plan: Planned,
    reference: DataFrame,
    current: DataFrame,
    labels: (String, String),
    moments: Option<(numeric::Moments, numeric::Moments)>,
    opts: CompareOptions,
}

impl ColumnJob {
    async fn run(self) -> Result<ColumnReport> {
        let name = self.plan.name.clone();
        let mut report = ColumnReport {
            name: name.clone(),
            kind: self.plan.kind,
            reference_type: type_name(&self.plan.reference_type),
            current_type: type_name(&self.plan.current_type),
            reference: Counts::default(),
            current: Counts::default(),
            skipped: None,
            test: None,
            statistic: None,
            pvalue: None,
            threshold: None,
            drifted: false,
            numeric: None,
            categorical: None,
        };
        let in_column = |e: FeatureError| match e {
            FeatureError::Invalid(m) => FeatureError::Invalid(format!("column \"{name}\": {m}")),
            FeatureError::Data(m) => FeatureError::Data(format!("column \"{name}\": {m}")),
            other => other,
        };
        match self.plan.kind {
            Kind::Unsupported => {
                report.skipped = Some(format!(
                    "type {} is not compared (cast it to a number or text)",
                    if kind_of(&self.plan.reference_type) == Kind::Unsupported {
                        type_name(&self.plan.reference_type)
                    } else {
                        type_name(&self.plan.current_type)
                    }
                ));
            }
            Kind::Numeric => {
                let Some((rm, cm)) = self.moments.clone() else {
                    return Err(FeatureError::Data(format!(
                        "column \"{name}\": no count pass ran for it (a bug)"
                    )));
                };
                report.reference = rm.counts();
                report.current = cm.counts();
                match empty_side(&report) {
                    Some(why) => report.skipped = Some(why),
                    None => {
                        let stats = numeric::compare(
                            &self.reference,
                            &self.current,
                            &name,
                            (&rm, &cm),
                            &self.labels,
                            &self.opts,
                        )
                        .await
                        .map_err(in_column)?;
                        apply_numeric(&mut report, stats, &self.opts.thresholds);
                    }
                }
            }
            Kind::Categorical => {
                let max = self.opts.max_categories;
                let (r, c) = futures::try_join!(
                    categorical::counts(self.reference.clone(), &name, max, &self.labels.0),
                    categorical::counts(self.current.clone(), &name, max, &self.labels.1)
                )
                .map_err(in_column)?;
                report.reference = r.counts();
                report.current = c.counts();
                if let Some(why) = empty_side(&report) {
                    report.skipped = Some(why);
                } else if let Some(stats) = categorical::compare(&r, &c, max).map_err(in_column)? {
                    apply_categorical(&mut report, stats, &self.opts.thresholds);
                } else {
                    report.skipped = Some(format!(
                        "more than {max} distinct values (an id or free text?); raise --max-categories to compare it"
                    ));
                }
            }
        }
        Ok(report)
    }
}

fn empty_side(report: &ColumnReport) -> Option<String> {
    if report.reference.values == 0 {
        Some("no values in the reference file".into())
    } else if report.current.values == 0 {
        Some("no values in the current file".into())
    } else {
        None
    }
}

fn apply_numeric(report: &mut ColumnReport, stats: NumericStats, t: &Thresholds) {
    let test = match t.numeric_test {
        NumericTest::Auto if report.reference.values <= t.small_rows => Test::Ks,
        NumericTest::Auto | NumericTest::Wasserstein => Test::Wasserstein,
        NumericTest::Ks => Test::Ks,
        NumericTest::Psi => Test::Psi,
    };
    let (statistic, pvalue, threshold, drifted) = match test {
        Test::Ks => (
            stats.ks.statistic,
            Some(stats.ks.pvalue),
            t.ks_pvalue,
            stats.ks.pvalue < t.ks_pvalue,
        ),
        Test::Psi => (stats.psi, None, t.psi, stats.psi >= t.psi),
        _ => (
            stats.wasserstein_norm,
            None,
            t.wasserstein,
            stats.wasserstein_norm >= t.wasserstein,
        ),
    };
    set_verdict(report, test, statistic, pvalue, threshold, drifted);
    report.numeric = Some(stats);
}

fn apply_categorical(report: &mut ColumnReport, stats: CategoricalStats, t: &Thresholds) {
    let test = match t.categorical_test {
        CategoricalTest::Auto if report.reference.values <= t.small_rows => Test::ChiSquare,
        CategoricalTest::Auto | CategoricalTest::JensenShannon => Test::JensenShannon,
        CategoricalTest::ChiSquare => Test::ChiSquare,
        CategoricalTest::Psi => Test::Psi,
    };
    let (statistic, pvalue, threshold, drifted) = match test {
        Test::ChiSquare => (
            stats.chisquare.statistic,
            Some(stats.chisquare.pvalue),
            t.chisquare_pvalue,
            stats.chisquare.pvalue < t.chisquare_pvalue,
        ),
        Test::Psi => (stats.psi, None, t.psi, stats.psi >= t.psi),
        _ => (
            stats.jensenshannon,
            None,
            t.jensenshannon,
            stats.jensenshannon >= t.jensenshannon,
        ),
    };
    set_verdict(report, test, statistic, pvalue, threshold, drifted);
    report.categorical = Some(stats);
}

fn set_verdict(
    report: &mut ColumnReport,
    test: Test,
    statistic: f64,
    pvalue: Option<f64>,
    threshold: f64,
    drifted: bool,
) {
    report.test = Some(test);
    report.statistic = Some(statistic);
    report.pvalue = pvalue;
    report.threshold = Some(threshold);
    report.drifted = drifted;
}

/// A statistic from `greenbelt-drift` that refused its input, as this
/// crate's error.
fn stat_error(what: &str, e: greenbelt_drift::DriftError) -> FeatureError {
    FeatureError::Data(format!("{what}: {e}"))
}
