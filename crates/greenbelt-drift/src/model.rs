//! The reference profile of one model version, as the registry stores it
//! and the server reads it: the training features' profile, the profile of
//! its predictions on the holdout, and how both map onto the version's
//! input and output tensors.
//!
//! File form (JSON, `<model file stem>.profile.json` beside the model file
//! on disk, an artifact referenced from the version's lineage in the
//! registry):
//!
//! ```json
//! {"format": 1, "task": "classification",
//!  "inputs": {"input": ["amount", "hour", "..."]},
//!  "prediction": "probabilities",
//!  "features": {"format": 1, "rows": 8000, "columns": {"amount": {"kind": "numeric", "...": "..."}}},
//!  "predictions": {"format": 1, "rows": 2000, "columns": {"score": {"kind": "numeric", "...": "..."}}}}
//! ```
//!
//! `inputs` names the feature in each column of an input tensor's last
//! dimension (a tensor of shape `[-1]` or `[-1, 1]` has one name). The
//! prediction column is `score` (the last class's probability) for a binary
//! classifier, `class` (the arg-max, categorical) for more classes and
//! `value` for a regressor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::profile::{CategoricalProfile, ColumnProfile, NumericProfile, PROFILE_FORMAT, Profile};
use crate::{DriftError, Result};

/// Fine-grid bins per numeric column (see [`crate::profile`]).
pub const RESOLUTION: usize = 100;
/// PSI bins (deciles).
pub const PSI_BINS: usize = 10;

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classification,
    Regression,
}

/// A model version's reference profile (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProfile {
    pub format: u32,
    pub task: Task,
    /// Input tensor → the feature in each column of its last dimension.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// The output tensor that holds the prediction (class probabilities or values).
    pub prediction: String,
    /// The training features' profile, columns named as in `inputs`.
    pub features: Profile,
    /// The holdout predictions' profile (one column, see the module doc).
    pub predictions: Profile,
}

/// The name of the prediction column for a task and class count.
pub fn prediction_column(task: Task, classes: usize) -> &'static str {
    match task {
        Task::Regression => "value",
        Task::Classification if classes > 2 => "class",
        Task::Classification => "score",
    }
}

impl ModelProfile {
    /// Build a profile from a row-major feature matrix (`rows × names.len()`,
    /// NaN = missing) fed to input tensor `input`, and the holdout
    /// predictions: for a classifier, class probabilities row-major
    /// (`rows × classes`); for a regressor, one value per row.
    pub fn build(
        task: Task,
        input: &str,
        names: &[String],
        matrix: &[f64],
        prediction: &str,
        predictions: &[f64],
        classes: usize,
    ) -> Result<ModelProfile> {
        let k = names.len();
        if k == 0 || !matrix.len().is_multiple_of(k) {
            return Err(DriftError::Mismatch(format!(
                "profile: {} feature values do not fill rows of {k} features",
                matrix.len()
            )));
        }
        let rows = matrix.len() / k;
        let mut columns = BTreeMap::new();
        for (j, name) in names.iter().enumerate() {
            let values: Vec<f64> = matrix.iter().skip(j).step_by(k).copied().collect();
            let p = NumericProfile::from_values(&values, RESOLUTION, PSI_BINS)?;
            columns.insert(name.clone(), ColumnProfile::Numeric(p));
        }
        let features = Profile {
            format: PROFILE_FORMAT,
            rows: rows as u64,
            columns,
        };
        let per_row = match task {
            Task::Regression => 1,
            Task::Classification => classes.max(1),
        };
        if per_row == 0 || !predictions.len().is_multiple_of(per_row) {
            return Err(DriftError::Mismatch(format!(
                "profile: {} prediction values do not fill rows of {per_row}",
                predictions.len()
            )));
        }
        let column = prediction_column(task, classes);
        let col = match column {
            "class" => {
                let labels: Vec<String> = predictions
                    .chunks(per_row)
                    .map(|row| argmax(row).to_string())
                    .collect();
                ColumnProfile::Categorical(CategoricalProfile::from_values(
                    labels.iter().map(|s| Some(s.as_str())),
                ))
            }
            _ => {
                let values: Vec<f64> = predictions
                    .chunks(per_row)
                    .filter_map(|row| row.last().copied())
                    .collect();
                ColumnProfile::Numeric(NumericProfile::from_values(&values, RESOLUTION, PSI_BINS)?)
            }
        };
        let predictions = Profile {
            format: PROFILE_FORMAT,
            rows: (predictions.len() / per_row) as u64,
            columns: BTreeMap::from([(column.to_string(), col)]),
        };
        Ok(ModelProfile {
            format: PROFILE_FORMAT,
            task,
            inputs: BTreeMap::from([(input.to_string(), names.to_vec())]),
            prediction: prediction.to_string(),
            features,
            predictions,
        })
    }

    /// Parse and check a profile file's text.
    pub fn from_json(text: &str) -> Result<ModelProfile> {
        let p: ModelProfile = serde_json::from_str(text)
            .map_err(|e| DriftError::Mismatch(format!("profile: {e}")))?;
        p.check()?;
        Ok(p)
    }

    /// Every input column has a feature profile; the format is known.
    pub fn check(&self) -> Result<()> {
        if self.format != PROFILE_FORMAT {
            return Err(DriftError::Mismatch(format!(
                "profile: format {} is not supported (this build reads format {PROFILE_FORMAT})",
                self.format
            )));
        }
        for (tensor, names) in &self.inputs {
            if names.is_empty() {
                return Err(DriftError::Mismatch(format!(
                    "profile: inputs.{tensor} names no feature"
                )));
            }
            if let Some(missing) = names
                .iter()
                .find(|n| !self.features.columns.contains_key(*n))
            {
                return Err(DriftError::Mismatch(format!(
                    "profile: inputs.{tensor} names feature \"{missing}\", which has no profile under features.columns"
                )));
            }
        }
        if self.predictions.columns.len() != 1 {
            return Err(DriftError::Mismatch(format!(
                "profile: predictions must have exactly one column (score, class or value), found {}",
                self.predictions.columns.len()
            )));
        }
        Ok(())
    }
}

/// The index of the largest value (the first on ties; 0 for an empty row),
/// on any element type that widens to `f64` (an fp32 output is read in
/// place, not copied first).
pub fn argmax<T: Copy + Into<f64>>(row: &[T]) -> usize {
    let mut best = 0;
    let mut top = row.first().map_or(f64::NAN, |x| (*x).into());
    for (i, x) in row.iter().enumerate() {
        let v: f64 = (*x).into();
        if v > top {
            best = i;
            top = v;
        }
    }
    best
}
