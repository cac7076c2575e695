//! One model version's live monitor: its reference profile resolved onto
//! the version's tensors, and the open window of what traffic looked like.
//!
//! The request path calls [`DriftMonitor::observe`]; it never waits: the
//! window is split into shards, a request takes the first free one
//! (`try_lock`), and when every shard is busy the sample is dropped and
//! counted. Closing a window ([`DriftMonitor::close`]) swaps every shard
//! for an empty one, merges them (the sketches are mergeable) and compares
//! the result with the reference. Time is an argument, so the window is a
//! pure state machine under a clock the caller owns.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use greenbelt_core::{Tensor, TensorData};
use greenbelt_drift::model::{ModelProfile, Task, argmax};
use greenbelt_drift::profile::{
    CategoricalProfile, CategoricalWindow, ColumnProfile, NumericProfile, NumericWindow,
};
use serde::Serialize;

use greenbelt_core::Signature;

const SHARDS: usize = 8;

/// A profile column resolved for counting.
#[derive(Debug)]
enum Column {
    Numeric(NumericProfile),
    Categorical(CategoricalProfile),
}

#[derive(Debug, Clone, PartialEq)]
enum ColumnWindow {
    Numeric(NumericWindow),
    Categorical(CategoricalWindow),
}

impl Column {
    fn of(p: &ColumnProfile) -> Column {
        match p {
            ColumnProfile::Numeric(n) => Column::Numeric(n.clone()),
            ColumnProfile::Categorical(c) => Column::Categorical(c.clone()),
        }
    }
    fn window(&self) -> ColumnWindow {
        match self {
            Column::Numeric(n) => ColumnWindow::Numeric(n.window()),
            Column::Categorical(c) => ColumnWindow::Categorical(c.window()),
        }
    }
    fn observe_number(&self, w: &mut ColumnWindow, x: f64) {
        match (self, w) {
            (Column::Numeric(p), ColumnWindow::Numeric(w)) => p.observe(w, x),
            (Column::Categorical(p), ColumnWindow::Categorical(w)) => {
                if x.is_nan() {
                    p.observe(w, None)
                } else {
                    p.observe(w, Some(&format_category(x)))
                }
            }
            _ => {}
        }
    }
    fn observe_text(&self, w: &mut ColumnWindow, s: Option<&str>) {
        match (self, w) {
            (Column::Categorical(p), ColumnWindow::Categorical(w)) => p.observe(w, s),
            (Column::Numeric(p), ColumnWindow::Numeric(w)) => p.observe(
                w,
                s.and_then(|s| s.trim().parse::<f64>().ok())
                    .unwrap_or(f64::NAN),
            ),
            _ => {}
        }
    }
    fn stats(&self, w: &ColumnWindow) -> ColumnStats {
        match (self, w) {
            (Column::Numeric(p), ColumnWindow::Numeric(w)) => {
                // Asymptotic p-value: D from the grid is approximate, and the
                // exact one would cost O(n_ref·n_window) per feature per window.
                let ks = p.ks_asymptotic(w);
                let n = w.count();
                ColumnStats {
                    rows: n,
                    missing: w.missing,
                    psi: p.psi(w),
                    ks_statistic: ks.map(|k| k.statistic),
                    ks_pvalue: ks.map(|k| k.pvalue),
                    chi2_pvalue: None,
                    jensenshannon: None,
                    mean: (n > 0).then(|| w.sum / n as f64),
                }
            }
            (Column::Categorical(p), ColumnWindow::Categorical(w)) => {
                let n = w.counts.values().sum::<u64>() + w.other;
                ColumnStats {
                    rows: n,
                    missing: w.missing,
                    psi: p.psi(w),
                    ks_statistic: None,
                    ks_pvalue: None,
                    chi2_pvalue: p.chisquare(w).map(|c| c.pvalue),
                    jensenshannon: p.jensenshannon(w),
                    mean: None,
                }
            }
            _ => ColumnStats::default(),
        }
    }
}

fn merge(into: &mut ColumnWindow, from: &ColumnWindow) {
    match (into, from) {
        (ColumnWindow::Numeric(a), ColumnWindow::Numeric(b)) => a.merge(b),
        (ColumnWindow::Categorical(a), ColumnWindow::Categorical(b)) => {
            for (k, v) in &b.counts {
                *a.counts.entry(k.clone()).or_default() += v;
            }
            a.other += b.other;
            a.missing += b.missing;
        }
        _ => {}
    }
}

/// Integers print without a fraction, so a numeric class 1.0 is category "1".
fn format_category(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

/// One input tensor's columns in the feature list.
#[derive(Debug)]
struct InputMap {
    tensor: String,
    /// Index into `features` of each column of the tensor's last dimension.
    columns: Vec<usize>,
}

/// A window's worth of counts.
#[derive(Debug, Clone)]
struct Window {
    requests: u64,
    features: Vec<ColumnWindow>,
    prediction: ColumnWindow,
    /// Sum over classified rows of the largest class probability.
    confidence: f64,
    /// Sum over classified rows of the prediction's entropy (nats).
    entropy: f64,
    classified: u64,
    /// Feature-store cells in the window, and how many were not PRESENT.
    store_cells: u64,
    store_not_present: u64,
}

/// The statistics of one column in a closed window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ColumnStats {
    pub rows: u64,
    pub missing: u64,
    pub psi: Option<f64>,
    pub ks_statistic: Option<f64>,
    pub ks_pvalue: Option<f64>,
    pub chi2_pvalue: Option<f64>,
    pub jensenshannon: Option<f64>,
    pub mean: Option<f64>,
}

impl ColumnStats {
    /// Drifted by the thresholds (PSI above, or the test's p-value below).
    pub fn drifted(&self, psi_threshold: f64, pvalue: f64) -> bool {
        self.psi.is_some_and(|p| p > psi_threshold)
            || self
                .ks_pvalue
                .or(self.chi2_pvalue)
                .is_some_and(|p| p < pvalue)
    }
    /// Missing values as a share of all values seen.
    pub fn missing_ratio(&self) -> Option<f64> {
        let all = self.rows + self.missing;
        (all > 0).then(|| self.missing as f64 / all as f64)
    }
}

/// A closed window compared with the reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowReport {
    /// Monotonic milliseconds (the monitor's clock) the window opened and closed.
    pub opened_ms: u64,
    pub closed_ms: u64,
    pub requests: u64,
    /// Per feature, in the profile's order.
    pub features: Vec<(String, ColumnStats)>,
    /// The prediction column (`score`, `class` or `value`).
    pub prediction: (String, ColumnStats),
    pub confidence_mean: Option<f64>,
    pub entropy_mean: Option<f64>,
    /// Share of feature-store cells that were not PRESENT (missing or defaulted).
    pub store_not_present_ratio: Option<f64>,
    /// Features over the thresholds.
    pub drifted: Vec<String>,
    /// Observations dropped because every shard was busy (since start).
    pub dropped: u64,
}

/// The live monitor of one served version.
#[derive(Debug)]
pub struct DriftMonitor {
    task: Task,
    names: Vec<String>,
    features: Vec<Column>,
    inputs: Vec<InputMap>,
    prediction_output: String,
    prediction_name: String,
    prediction: Column,
    /// Reference quantile bounds are read off the grid on demand.
    shards: Vec<Mutex<Window>>,
    next: AtomicUsize,
    dropped: AtomicU64,
    requests: AtomicU64,
    opened_ms: AtomicU64,
    max_rows: usize,
}

impl DriftMonitor {
    /// Resolve `profile` onto `signature`: every input tensor it names must
    /// exist with a last dimension that fits its feature list, and its
    /// prediction output must exist.
    pub fn new(
        profile: &ModelProfile,
        signature: &Signature,
        max_rows: usize,
        now_ms: u64,
    ) -> Result<DriftMonitor, String> {
        let mut names = Vec::new();
        let mut features = Vec::new();
        let mut inputs = Vec::new();
        for (tensor, cols) in &profile.inputs {
            let spec = signature
                .inputs
                .iter()
                .find(|s| &s.name == tensor)
                .ok_or_else(|| {
                    format!(
                        "profile inputs name tensor \"{tensor}\", which the model does not have (inputs: {})",
                        signature
                            .inputs
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            let last = if spec.shape.len() >= 2 {
                spec.shape.last().copied().unwrap_or(1)
            } else {
                1
            };
            if last >= 0 && last as usize != cols.len() {
                return Err(format!(
                    "profile inputs.{tensor} names {} features, the tensor's last dimension is {last}",
                    cols.len()
                ));
            }
            let mut columns = Vec::with_capacity(cols.len());
            for c in cols {
                let p = profile.features.columns.get(c).ok_or_else(|| {
                    format!("profile inputs.{tensor}: feature \"{c}\" has no profile")
                })?;
                columns.push(features.len());
                names.push(c.clone());
                features.push(Column::of(p));
            }
            inputs.push(InputMap {
                tensor: tensor.clone(),
                columns,
            });
        }
        if !signature
            .outputs
            .iter()
            .any(|o| o.name == profile.prediction)
        {
            return Err(format!(
                "profile prediction names output \"{}\", which the model does not have",
                profile.prediction
            ));
        }
        let (prediction_name, prediction) = profile
            .predictions
            .columns
            .iter()
            .next()
            .map(|(n, p)| (n.clone(), Column::of(p)))
            .ok_or("profile predictions have no column")?;
        let mut m = DriftMonitor {
            task: profile.task,
            names,
            features,
            inputs,
            prediction_output: profile.prediction.clone(),
            prediction_name,
            prediction,
            shards: Vec::new(),
            next: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            opened_ms: AtomicU64::new(now_ms),
            max_rows: max_rows.max(1),
        };
        m.shards = (0..SHARDS).map(|_| Mutex::new(m.empty())).collect();
        Ok(m)
    }

    fn empty(&self) -> Window {
        Window {
            requests: 0,
            features: self.features.iter().map(Column::window).collect(),
            prediction: self.prediction.window(),
            confidence: 0.0,
            entropy: 0.0,
            classified: 0,
            store_cells: 0,
            store_not_present: 0,
        }
    }

    /// Feature names in the profile's order.
    pub fn feature_names(&self) -> &[String] {
        &self.names
    }

    /// Requests counted into the open window.
    pub fn window_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// When the open window opened (the caller's clock, ms).
    pub fn opened_ms(&self) -> u64 {
        self.opened_ms.load(Ordering::Relaxed)
    }

    /// Count one request's validated inputs, and the feature store's
    /// statuses when it was assembled from the store. Never blocks.
    pub fn observe_inputs(&self, inputs: &[Tensor], statuses: Option<&Tensor>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.with_shard(|w| self.count_inputs(w, inputs, statuses));
    }

    /// Count the outputs the model produced for a request. Never blocks.
    pub fn observe_outputs(&self, outputs: &[Tensor]) {
        if let Some(out) = outputs.iter().find(|t| t.name == self.prediction_output) {
            self.with_shard(|w| self.count_prediction(w, out));
        }
    }

    /// Run `f` on the first free shard; drop and count when all are busy.
    fn with_shard(&self, f: impl FnOnce(&mut Window)) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.shards.len() {
            let Some(shard) = self.shards.get((start + i) % self.shards.len()) else {
                continue;
            };
            if let Ok(mut w) = shard.try_lock() {
                f(&mut w);
                return;
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn count_inputs(&self, w: &mut Window, inputs: &[Tensor], statuses: Option<&Tensor>) {
        w.requests += 1;
        for map in &self.inputs {
            let Some(t) = inputs.iter().find(|t| t.name == map.tensor) else {
                continue;
            };
            let k = map.columns.len();
            let rows = (t.data.len() / k.max(1)).min(self.max_rows);
            for r in 0..rows {
                for (j, &c) in map.columns.iter().enumerate() {
                    let (Some(col), Some(win)) = (self.features.get(c), w.features.get_mut(c))
                    else {
                        continue;
                    };
                    let i = r * k + j;
                    match &t.data {
                        TensorData::Bytes(v) => col.observe_text(
                            win,
                            v.get(i).map(|b| std::str::from_utf8(b).unwrap_or("")),
                        ),
                        data => col.observe_number(win, number(data, i)),
                    }
                }
            }
        }
        if let Some(TensorData::Bytes(s)) = statuses.map(|t| &t.data) {
            w.store_cells += s.len() as u64;
            w.store_not_present += s.iter().filter(|b| b.as_ref() != b"PRESENT").count() as u64;
        }
    }

    fn count_prediction(&self, w: &mut Window, out: &Tensor) {
        let per_row = match (self.task, out.shape.as_slice()) {
            (Task::Classification, [_, k, ..]) if *k > 0 => *k as usize,
            _ => 1,
        };
        let rows = (out.data.len() / per_row).min(self.max_rows);
        let mut row = Vec::with_capacity(per_row);
        for r in 0..rows {
            row.clear();
            row.extend((0..per_row).map(|j| number(&out.data, r * per_row + j)));
            match self.task {
                Task::Regression => {
                    let v = row.first().copied().unwrap_or(f64::NAN);
                    self.prediction.observe_number(&mut w.prediction, v);
                }
                Task::Classification => {
                    if per_row >= 2 {
                        let (conf, ent) = confidence_entropy(&row);
                        w.confidence += conf;
                        w.entropy += ent;
                        w.classified += 1;
                    }
                    match &self.prediction {
                        Column::Categorical(_) => {
                            let class = argmax(&row) as f64;
                            self.prediction.observe_number(&mut w.prediction, class);
                        }
                        Column::Numeric(_) => {
                            let score = row.last().copied().unwrap_or(f64::NAN);
                            self.prediction.observe_number(&mut w.prediction, score);
                        }
                    }
                }
            }
        }
    }

    /// Close the open window at `now_ms` and compare it with the reference.
    pub fn close(&self, now_ms: u64, psi_threshold: f64, pvalue: f64) -> WindowReport {
        let mut total = self.empty();
        for shard in &self.shards {
            let taken = match shard.lock() {
                Ok(mut w) => std::mem::replace(&mut *w, self.empty()),
                Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), self.empty()),
            };
            total.requests += taken.requests;
            for (a, b) in total.features.iter_mut().zip(&taken.features) {
                merge(a, b);
            }
            merge(&mut total.prediction, &taken.prediction);
            total.confidence += taken.confidence;
            total.entropy += taken.entropy;
            total.classified += taken.classified;
            total.store_cells += taken.store_cells;
            total.store_not_present += taken.store_not_present;
        }
        self.requests.store(0, Ordering::Relaxed);
        let opened_ms = self.opened_ms.swap(now_ms, Ordering::Relaxed);
        let features: Vec<(String, ColumnStats)> = self
            .names
            .iter()
            .zip(&self.features)
            .zip(&total.features)
            .map(|((n, c), w)| (n.clone(), c.stats(w)))
            .collect();
        let drifted = features
            .iter()
            .filter(|(_, s)| s.drifted(psi_threshold, pvalue))
            .map(|(n, _)| n.clone())
            .collect();
        let per = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
        WindowReport {
            opened_ms,
            closed_ms: now_ms,
            requests: total.requests,
            features,
            prediction: (
                self.prediction_name.clone(),
                self.prediction.stats(&total.prediction),
            ),
            confidence_mean: per(total.confidence, total.classified),
            entropy_mean: per(total.entropy, total.classified),
            store_not_present_ratio: per(total.store_not_present as f64, total.store_cells),
            drifted,
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Per feature, the reference's `[lower, upper]` quantiles (numeric
    /// features only; categorical ones have no bounds), for drift routing.
    pub fn bounds(&self, lower: f64, upper: f64) -> OodBounds {
        let mut inputs = Vec::new();
        for map in &self.inputs {
            let cols = map
                .columns
                .iter()
                .map(|&c| match self.features.get(c) {
                    Some(Column::Numeric(p)) => Some(ood_range(p, lower, upper)),
                    _ => None,
                })
                .collect();
            inputs.push((map.tensor.clone(), cols));
        }
        OodBounds { inputs }
    }
}

/// One column's in-distribution range (None: no bound, e.g. categorical).
type Range = Option<(f64, f64)>;

/// Per input tensor, per column, the in-distribution range.
#[derive(Debug, Clone, PartialEq)]
pub struct OodBounds {
    inputs: Vec<(String, Vec<Range>)>,
}

impl OodBounds {
    /// Whether any row of the request has at least `min_features` features
    /// outside their range (a missing value is not outside).
    pub fn drifted(&self, inputs: &[Tensor], min_features: usize, max_rows: usize) -> bool {
        let Some(rows) = inputs
            .first()
            .map(|t| t.shape.first().copied().unwrap_or(1).max(0) as usize)
        else {
            return false;
        };
        (0..rows.min(max_rows)).any(|r| self.outside_in_row(inputs, r) >= min_features)
    }

    fn outside_in_row(&self, inputs: &[Tensor], r: usize) -> usize {
        let mut outside = 0;
        for (tensor, cols) in &self.inputs {
            let Some(t) = inputs.iter().find(|t| &t.name == tensor) else {
                continue;
            };
            let k = cols.len();
            for (j, b) in cols.iter().enumerate() {
                if let Some((lo, hi)) = b {
                    let x = number(&t.data, r * k + j);
                    if x < *lo || x > *hi {
                        outside += 1;
                    }
                }
            }
        }
        outside
    }
}

/// The in-distribution range of a numeric feature: its reference
/// quantiles, widened outward to the profile grid's own edges (the
/// reference min and max beyond the first and last), so a value tied with
/// a grid edge (discrete features: flags, counts, hours) is never outside
/// because interpolation inside a bin put the bound a hair past it. With
/// the default 100-bin grid, quantiles beyond 1% / 99% become the
/// reference's min / max.
pub fn ood_range(p: &NumericProfile, lower: f64, upper: f64) -> (f64, f64) {
    let (q_lo, q_hi) = (p.quantile(lower), p.quantile(upper));
    let lo = p
        .edges
        .iter()
        .rev()
        .find(|e| **e <= q_lo)
        .copied()
        .unwrap_or(p.min);
    let hi = p
        .edges
        .iter()
        .find(|e| **e >= q_hi)
        .copied()
        .unwrap_or(p.max);
    (lo.min(q_lo), hi.max(q_hi))
}

/// Element `i` as f64 (NaN when absent or not numeric).
fn number(data: &TensorData, i: usize) -> f64 {
    let v = match data {
        TensorData::Bool(v) => v.get(i).map(|b| f64::from(u8::from(*b))),
        TensorData::Uint8(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Uint16(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Uint32(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Uint64(v) => v.get(i).map(|x| *x as f64),
        TensorData::Int8(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Int16(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Int32(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Int64(v) => v.get(i).map(|x| *x as f64),
        TensorData::Fp16(v) => v.get(i).map(|x| x.to_f64()),
        TensorData::Fp32(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Fp64(v) => v.get(i).copied(),
        TensorData::Bytes(_) => None,
    };
    v.unwrap_or(f64::NAN)
}

/// The largest probability and the entropy (nats) of one row of class
/// probabilities (normalised first; a row that sums to 0 gives (0, 0)).
pub fn confidence_entropy(row: &[f64]) -> (f64, f64) {
    let sum: f64 = row.iter().filter(|p| p.is_finite() && **p > 0.0).sum();
    if sum <= 0.0 {
        return (0.0, 0.0);
    }
    let mut conf: f64 = 0.0;
    let mut ent = 0.0;
    for p in row.iter().filter(|p| p.is_finite() && **p > 0.0) {
        let q = p / sum;
        conf = conf.max(q);
        ent -= q * q.ln();
    }
    (conf, ent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::{DataType, TensorSpec};

    fn profile(features: usize) -> ModelProfile {
        let names: Vec<String> = (0..features).map(|i| format!("f{i}")).collect();
        let x: Vec<f64> = (0..features * 200)
            .map(|i| f64::from(i as u32 % 97))
            .collect();
        let scores: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        ModelProfile::build(
            Task::Classification,
            "input",
            &names,
            &x,
            "probabilities",
            &scores,
            1,
        )
        .unwrap()
    }

    fn signature(width: i64) -> Signature {
        Signature {
            inputs: vec![TensorSpec::new("input", DataType::Fp32, vec![-1, width])],
            outputs: vec![TensorSpec::new(
                "probabilities",
                DataType::Fp32,
                vec![-1, 2],
            )],
        }
    }

    #[test]
    fn a_profile_that_does_not_fit_the_model_is_refused_naming_why() {
        let e = DriftMonitor::new(&profile(3), &signature(4), 16, 0).unwrap_err();
        assert!(e.contains("names 3 features") && e.contains("is 4"), "{e}");
        let mut p = profile(3);
        p.prediction = "scores".into();
        let e = DriftMonitor::new(&p, &signature(3), 16, 0).unwrap_err();
        assert!(e.contains("output \"scores\""), "{e}");
        let mut p = profile(3);
        let cols = p.inputs.remove("input").unwrap();
        p.inputs.insert("pixels".into(), cols);
        let e = DriftMonitor::new(&p, &signature(3), 16, 0).unwrap_err();
        assert!(
            e.contains("tensor \"pixels\"") && e.contains("input"),
            "{e}"
        );
        assert!(DriftMonitor::new(&profile(3), &signature(3), 16, 0).is_ok());
    }

    #[test]
    fn garbage_profile_files_are_errors_not_panics() {
        for text in [
            "",
            "{",
            "[]",
            "{\"format\": 1}",
            "{\"format\": 9, \"task\": \"classification\", \"inputs\": {}, \"prediction\": \"p\", \"features\": {\"format\": 1, \"rows\": 0, \"columns\": {}}, \"predictions\": {\"format\": 1, \"rows\": 0, \"columns\": {}}}",
        ] {
            let e = ModelProfile::from_json(text).unwrap_err().to_string();
            assert!(e.contains("profile"), "{text}: {e}");
        }
    }

    #[test]
    fn requests_that_do_not_match_the_profile_count_nothing_and_do_not_panic() {
        let m = DriftMonitor::new(&profile(3), &signature(3), 16, 0).unwrap();
        // Short data, a wrong datatype, a missing tensor: no panic.
        let short = Tensor::new("input", vec![1, 2], TensorData::Fp32(vec![1.0, 2.0])).unwrap();
        let bytes = Tensor::new(
            "input",
            vec![1, 3],
            TensorData::Bytes(vec![bytes::Bytes::from_static(b"\xff"); 3]),
        )
        .unwrap();
        m.observe_inputs(&[short], None);
        m.observe_inputs(&[bytes], None);
        m.observe_inputs(&[], None);
        m.observe_outputs(&[]);
        let r = m.close(1, 0.2, 0.01);
        assert_eq!(r.requests, 3);
        assert_eq!(r.features.len(), 3);
    }
}
