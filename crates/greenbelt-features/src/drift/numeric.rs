//! Numeric columns in bounded memory.
//!
//! A count pass ([`moments`]) scans a file once for all its numeric
//! columns: values, missing values (null, NaN, ±∞), mean, spread and range.
//! Then, per column, the two files' values are sorted by DataFusion (which
//! spills to disk past the session's memory limit) and one merge pass
//! ([`merge`]) walks the two sorted streams value by value. Knowing `n`
//! from the count pass, it finds the reference's PSI edges at their ranks
//! as the stream passes them, and gets in the same walk:
//!
//! - D, the largest gap between the two empirical CDFs after each distinct
//!   value (ties handled as scipy: both CDFs step over all equal values);
//! - W1 = Σ |F_ref − F_cur| · (next value − value), compensated sum;
//! - how many values of each file lie below each PSI edge, so a value on an
//!   edge lands in the upper bin, as `greenbelt_drift::bin_of` puts it;
//! - the chart's histogram on equal-width bins shared by the two files.
//!
//! Nothing here holds more than one record batch per file.

use datafusion::arrow::array::{Array, ArrayRef, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{DataFrame, cast as cast_expr, col, ident};
use futures::StreamExt;
use greenbelt_drift::ks::MAX_EXACT_N;
use greenbelt_drift::{KsResult, ks_pvalue, psi};

use super::{CompareOptions, Counts, Histogram, NumericStats, stat_error};
use crate::error::{FeatureError, Result};

/// What the count pass learns about one numeric column of one file.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Moments {
    /// Finite values.
    pub n: u64,
    /// Nulls, NaNs and infinities.
    pub missing: u64,
    pub mean: f64,
    /// Σ (x − mean)², merged batch by batch (Chan et al.).
    pub m2: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            n: 0,
            missing: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Moments {
    pub fn counts(&self) -> Counts {
        Counts {
            values: self.n,
            missing: self.missing,
        }
    }

    /// Population standard deviation (numpy's `std`, ddof 0).
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }

    fn add(&mut self, a: &Float64Array) {
        let (mut k, mut sum) = (0u64, 0.0f64);
        for x in a.iter() {
            match x {
                Some(x) if x.is_finite() => {
                    k += 1;
                    sum += x;
                    self.min = self.min.min(x);
                    self.max = self.max.max(x);
                }
                _ => self.missing += 1,
            }
        }
        if k == 0 {
            return;
        }
        let mean = sum / k as f64;
        let m2: f64 = a
            .iter()
            .flatten()
            .filter(|x| x.is_finite())
            .map(|x| (x - mean) * (x - mean))
            .sum();
        let n = self.n + k;
        let delta = mean - self.mean;
        self.mean += delta * (k as f64 / n as f64);
        self.m2 += m2 + delta * delta * (self.n as f64 * k as f64 / n as f64);
        self.n = n;
    }
}

/// An error reading `label` (a file), kept as this crate's error.
pub(super) fn reading(label: &str) -> impl Fn(DataFusionError) -> FeatureError + '_ {
    move |e| match FeatureError::from(e) {
        FeatureError::Data(m) => FeatureError::Data(format!("reading {label}: {m}")),
        other => other,
    }
}

pub(super) fn as_f64(a: &ArrayRef) -> Result<Float64Array> {
    let c = cast(a, &DataType::Float64)?;
    c.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| {
            FeatureError::Data(format!(
                "a {} column did not cast to Float64",
                a.data_type()
            ))
        })
}

/// The count pass: rows of the file and the [`Moments`] of each of
/// `columns`, in one scan.
pub(super) async fn moments(
    df: DataFrame,
    columns: &[String],
    label: &str,
) -> Result<(u64, Vec<Moments>)> {
    if columns.is_empty() {
        let rows = df.count().await.map_err(reading(label))?;
        return Ok((rows as u64, Vec::new()));
    }
    let exprs = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cast_expr(ident(c), DataType::Float64).alias(format!("c{i}")))
        .collect::<Vec<_>>();
    let mut stream = df
        .select(exprs)
        .map_err(reading(label))?
        .execute_stream()
        .await
        .map_err(reading(label))?;
    let mut all = vec![Moments::default(); columns.len()];
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(reading(label))?;
        rows += batch.num_rows() as u64;
        for (m, a) in all.iter_mut().zip(batch.columns()) {
            m.add(&as_f64(a)?);
        }
    }
    Ok((rows, all))
}

/// The column's finite values, sorted ascending (nulls filtered here,
/// NaN and ±∞ skipped by the [`Cursor`]).
async fn sorted(df: DataFrame, name: &str) -> datafusion::error::Result<SendableRecordBatchStream> {
    df.select(vec![cast_expr(ident(name), DataType::Float64).alias("v")])?
        .filter(col("v").is_not_null())?
        .sort(vec![col("v").sort(true, false)])?
        .execute_stream()
        .await
}

/// Compare one numeric column of two files whose count passes gave
/// `moments` (both with at least one value).
pub(super) async fn compare(
    reference: &DataFrame,
    current: &DataFrame,
    name: &str,
    (rm, cm): (&Moments, &Moments),
    (r_label, c_label): &(String, String),
    opts: &CompareOptions,
) -> Result<NumericStats> {
    let r = sorted(reference.clone(), name)
        .await
        .map_err(reading(r_label))?;
    let c = sorted(current.clone(), name)
        .await
        .map_err(reading(c_label))?;
    let grid = Grid::new(rm.min.min(cm.min), rm.max.max(cm.max), opts.chart_bins);
    let m = merge(
        Cursor::new(r, r_label),
        Cursor::new(c, c_label),
        (rm.n, cm.n),
        opts.psi_bins,
        &grid,
    )
    .await?;
    let (pvalue, method) = ks_pvalue(m.d, rm.n, cm.n);
    let d = reported_d(m.d, rm.n, cm.n);
    let shares = |counts: &[u64], n: u64| -> Vec<f64> {
        counts.iter().map(|c| *c as f64 / n as f64).collect()
    };
    let psi_value = psi(
        &shares(&m.psi_reference, rm.n),
        &shares(&m.psi_current, cm.n),
    )
    .map_err(|e| stat_error("PSI", e))?;
    let reference_std = rm.std();
    Ok(NumericStats {
        ks: KsResult {
            statistic: d,
            pvalue,
            method,
        },
        psi: psi_value,
        psi_edges: m.edges,
        psi_reference: m.psi_reference,
        psi_current: m.psi_current,
        wasserstein: m.w1,
        wasserstein_norm: m.w1 / reference_std.max(0.001),
        reference_mean: rm.mean,
        reference_std,
        current_mean: cm.mean,
        current_std: cm.std(),
        histogram: Histogram {
            edges: grid.edges(),
            reference: m.hist_reference,
            current: m.hist_current,
        },
    })
}

/// D as scipy reports it (and `greenbelt_drift::ks_2samp`): where the exact
/// p-value is tried (both samples ≤ `MAX_EXACT_N`), D rounded to a multiple
/// of 1/lcm(n1, n2). `ks_pvalue` rounds the same way for the p-value but
/// returns only the p-value, so the rounding is mirrored here.
fn reported_d(d: f64, n1: u64, n2: u64) -> f64 {
    if n1.max(n2) > MAX_EXACT_N || n1 == 0 || n2 == 0 {
        return d;
    }
    let (mut a, mut b) = (n1, n2);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    let lcm = (n1 / a) * n2;
    (d * lcm as f64).round_ties_even() / lcm as f64
}

/// Equal-width bins over `[lo, hi]`; the last bin is closed.
#[derive(Debug, Clone)]
pub(super) struct Grid {
    lo: f64,
    width: f64,
    bins: usize,
}

impl Grid {
    pub fn new(lo: f64, hi: f64, bins: usize) -> Grid {
        let bins = bins.max(1);
        let width = (hi - lo) / bins as f64;
        if width.is_finite() && width > 0.0 {
            Grid { lo, width, bins }
        } else {
            // One value (or a range too wide for f64): one bin.
            Grid {
                lo,
                width: 0.0,
                bins: 1,
            }
        }
    }

    fn bin(&self, x: f64) -> usize {
        if self.width == 0.0 {
            return 0;
        }
        // `as` saturates (and maps NaN to 0): no panic on odd input.
        (((x - self.lo) / self.width) as usize).min(self.bins - 1)
    }

    fn edges(&self) -> Vec<f64> {
        (0..=self.bins)
            .map(|i| self.lo + self.width * i as f64)
            .collect()
    }
}

/// A sorted stream of one file's values, read one value at a time.
pub(super) struct Cursor<'l> {
    stream: SendableRecordBatchStream,
    batch: Float64Array,
    at: usize,
    /// Values taken so far: the rank of the head.
    taken: u64,
    label: &'l str,
}

impl<'l> Cursor<'l> {
    pub fn new(stream: SendableRecordBatchStream, label: &'l str) -> Self {
        Cursor {
            stream,
            batch: Float64Array::from(Vec::<f64>::new()),
            at: 0,
            taken: 0,
            label,
        }
    }

    /// The next finite value, not taken.
    async fn head(&mut self) -> Result<Option<f64>> {
        loop {
            let values = self.batch.values();
            while let Some(x) = values.get(self.at) {
                if x.is_finite() && self.batch.is_valid(self.at) {
                    return Ok(Some(*x));
                }
                self.at += 1;
            }
            match self.stream.next().await {
                None => return Ok(None),
                Some(b) => {
                    let b = b.map_err(reading(self.label))?;
                    self.batch = match b.columns().first() {
                        Some(a) => as_f64(a)?,
                        None => Float64Array::from(Vec::<f64>::new()),
                    };
                    self.at = 0;
                }
            }
        }
    }

    /// Take every value equal to `v` from the head on.
    async fn take(&mut self, v: f64) -> Result<()> {
        loop {
            let values = self.batch.values();
            let start = self.at;
            if self.batch.null_count() == 0 {
                while values.get(self.at) == Some(&v) {
                    self.at += 1;
                }
            } else {
                while values.get(self.at) == Some(&v) && self.batch.is_valid(self.at) {
                    self.at += 1;
                }
            }
            self.taken += (self.at - start) as u64;
            match self.head().await? {
                Some(x) if x == v => continue,
                _ => return Ok(()),
            }
        }
    }
}

/// One PSI edge: numpy's linear quantile between the values at ranks `lo`
/// and `hi` of the sorted reference, and the counts below it once known.
#[derive(Debug, Clone)]
struct Edge {
    lo: u64,
    hi: u64,
    frac: f64,
    lo_value: f64,
    hi_value: f64,
    value: f64,
    /// Values of (reference, current) strictly below the edge.
    below: (u64, u64),
}

/// The inner edges of `bins` bins at the quantiles i/bins of `n` sorted
/// values: the ranks and weights `greenbelt_drift::quantile` uses.
fn plan_edges(n: u64, bins: usize) -> Vec<Edge> {
    // Callers have n ≥ 1; saturate anyway so no input can underflow.
    let last = n.saturating_sub(1);
    (1..bins)
        .map(|i| {
            let q = i as f64 / bins as f64;
            let h = last as f64 * q.clamp(0.0, 1.0);
            let lo = h.floor() as u64;
            Edge {
                lo,
                hi: (lo + 1).min(last),
                frac: h - lo as f64,
                lo_value: f64::NAN,
                hi_value: f64::NAN,
                value: f64::NAN,
                below: (0, 0),
            }
        })
        .collect()
}

/// Neumaier's compensated sum.
#[derive(Default)]
struct Sum {
    s: f64,
    c: f64,
}

impl Sum {
    fn add(&mut self, x: f64) {
        let t = self.s + x;
        if self.s.abs() >= x.abs() {
            self.c += (self.s - t) + x;
        } else {
            self.c += (x - t) + self.s;
        }
        self.s = t;
    }
    fn value(&self) -> f64 {
        self.s + self.c
    }
}

/// What the merge pass computes.
#[derive(Debug, Clone)]
pub(super) struct Merged {
    pub d: f64,
    pub w1: f64,
    /// PSI edges (equal ones kept once) and counts per bin.
    pub edges: Vec<f64>,
    pub psi_reference: Vec<u64>,
    pub psi_current: Vec<u64>,
    pub hist_reference: Vec<u64>,
    pub hist_current: Vec<u64>,
}

/// The merge pass over two sorted streams holding `n = (n1, n2)` finite
/// values (both ≥ 1).
pub(super) async fn merge(
    mut r: Cursor<'_>,
    mut c: Cursor<'_>,
    (n1, n2): (u64, u64),
    psi_bins: usize,
    grid: &Grid,
) -> Result<Merged> {
    let mut edges = plan_edges(n1, psi_bins);
    // The reference ranks the edges need, in order: (rank, edge, is hi).
    let mut needs: Vec<(u64, usize, bool)> = edges
        .iter()
        .enumerate()
        .flat_map(|(j, e)| [(e.lo, j, false), (e.hi, j, true)])
        .collect();
    needs.sort_by_key(|n| n.0);
    let (mut filled, mut resolved) = (0usize, 0usize);
    let mut hist_reference = vec![0u64; grid.bins];
    let mut hist_current = vec![0u64; grid.bins];
    let (mut d, mut w1) = (0.0f64, Sum::default());
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let mut rh = r.head().await?;
    let mut ch = c.head().await?;
    loop {
        let v = match (rh, ch) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        let before = (r.taken, c.taken);
        if rh == Some(v) {
            r.take(v).await?;
        }
        if ch == Some(v) {
            c.take(v).await?;
        }
        while let Some(&(rank, j, hi)) = needs.get(filled) {
            if rank >= r.taken {
                break;
            }
            if let Some(e) = edges.get_mut(j) {
                if hi {
                    e.hi_value = v;
                } else {
                    e.lo_value = v;
                }
            }
            filled += 1;
        }
        rh = r.head().await?;
        ch = c.head().await?;
        // Edges at or below v: every value below them was taken before v.
        let known = |rank: u64, value: f64| match rank.cmp(&r.taken) {
            std::cmp::Ordering::Less => Some(value),
            std::cmp::Ordering::Equal => rh,
            std::cmp::Ordering::Greater => None,
        };
        while let Some(e) = edges.get_mut(resolved) {
            let (Some(a), Some(b)) = (known(e.lo, e.lo_value), known(e.hi, e.hi_value)) else {
                break;
            };
            e.value = greenbelt_drift::lerp(a, b, e.frac);
            if e.value > v {
                break;
            }
            e.below = before;
            resolved += 1;
        }
        let gap = (r.taken as f64 / n1f - c.taken as f64 / n2f).abs();
        if gap > d {
            d = gap;
        }
        if let Some(next) = match (rh, ch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        } {
            w1.add(gap * (next - v));
        }
        let bin = grid.bin(v);
        if let (Some(hr), Some(hc)) = (hist_reference.get_mut(bin), hist_current.get_mut(bin)) {
            *hr += r.taken - before.0;
            *hc += c.taken - before.1;
        }
    }
    if (r.taken, c.taken) != (n1, n2) {
        return Err(FeatureError::Data(format!(
            "the sorted pass read {} and {} values where the count pass read {n1} and {n2}; did a file change while it was read?",
            r.taken, c.taken
        )));
    }
    for e in edges.iter_mut().skip(resolved) {
        e.value = greenbelt_drift::lerp(e.lo_value, e.hi_value, e.frac);
        e.below = (n1, n2);
    }
    edges.dedup_by(|b, a| a.value == b.value);
    let bins = |below: &dyn Fn(&Edge) -> u64, n: u64| {
        let mut out = Vec::with_capacity(edges.len() + 1);
        let mut prev = 0u64;
        for e in &edges {
            let b = below(e);
            out.push(b.saturating_sub(prev));
            prev = b;
        }
        out.push(n.saturating_sub(prev));
        out
    };
    Ok(Merged {
        d,
        w1: w1.value(),
        psi_reference: bins(&|e| e.below.0, n1),
        psi_current: bins(&|e| e.below.1, n2),
        edges: edges.iter().map(|e| e.value).collect(),
        hist_reference,
        hist_current,
    })
}
