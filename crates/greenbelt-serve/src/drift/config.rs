//! `[drift]` (the live monitor of every version that has a reference
//! profile) and `[deployments.drift_routing]` (drifted traffic to a
//! challenger).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[drift]`: tumbling windows of live inputs and outputs compared with each
/// version's reference profile at every close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Monitor versions that have a profile (`<model>.profile.json` beside
    /// the model file, or the registry's profile artifact).
    pub enabled: bool,
    /// A window closes after this long (humantime), or earlier at
    /// `window_requests`.
    pub window: String,
    /// A window also closes once it has counted this many requests,
    /// whichever of this and `window` comes first (0: by time only).
    /// Checked at each tick of `[drift] tick`.
    pub window_requests: u64,
    /// How often windows are checked for closing (humantime).
    pub tick: String,
    /// A feature counts as drifted when its PSI is above this (or its KS
    /// p-value below `ks_pvalue`).
    pub psi_threshold: f64,
    /// A feature counts as drifted when its KS p-value (from the window's
    /// sketch) is below this (or its PSI above `psi_threshold`).
    pub ks_pvalue: f64,
    /// Fewest values a window needs before its statistics are published.
    pub min_window_rows: u64,
    /// Rows of one request counted into the window (the rest are skipped),
    /// so one large batch costs a bounded time.
    pub max_rows_per_request: usize,
    /// Delayed labels: recorded predictions and the rolling metrics.
    pub labels: LabelsConfig,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            window: "60s".into(),
            window_requests: 0,
            tick: "1s".into(),
            psi_threshold: 0.2,
            ks_pvalue: 0.01,
            min_window_rows: 50,
            max_rows_per_request: 1024,
            labels: LabelsConfig::default(),
        }
    }
}

/// `[drift.labels]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    /// Predictions kept per model for joining with labels (oldest evicted first).
    pub capacity: usize,
    /// Predictions older than this are forgotten (humantime).
    pub retention: String,
    /// Labelled predictions per version the rolling metrics are computed over.
    pub window: usize,
    /// Rows of one request recorded for joining.
    pub max_rows: usize,
}

impl Default for LabelsConfig {
    fn default() -> Self {
        LabelsConfig {
            capacity: 100_000,
            retention: "24h".into(),
            window: 10_000,
            max_rows: 64,
        }
    }
}

/// The validated `[drift]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftSettings {
    pub enabled: bool,
    pub window: Duration,
    pub window_requests: u64,
    pub tick: Duration,
    pub psi_threshold: f64,
    pub ks_pvalue: f64,
    pub min_window_rows: u64,
    pub max_rows_per_request: usize,
    pub label_capacity: usize,
    pub label_retention: Duration,
    pub label_window: usize,
    pub label_max_rows: usize,
}

impl Default for DriftSettings {
    /// The settings of `DriftConfig::default()` (a test keeps them equal).
    fn default() -> Self {
        let c = LabelsConfig::default();
        DriftSettings {
            enabled: true,
            window: Duration::from_secs(60),
            window_requests: 0,
            tick: Duration::from_secs(1),
            psi_threshold: 0.2,
            ks_pvalue: 0.01,
            min_window_rows: 50,
            max_rows_per_request: 1024,
            label_capacity: c.capacity,
            label_retention: Duration::from_secs(24 * 3600),
            label_window: c.window,
            label_max_rows: c.max_rows,
        }
    }
}

impl DriftConfig {
    /// Check every field, naming it.
    pub fn settings(&self) -> Result<DriftSettings, String> {
        let d = |field: &str, text: &str| {
            crate::deployment::duration(&format!("[drift] {field}"), text)
        };
        let window = d("window", &self.window)?;
        let tick = d("tick", &self.tick)?;
        let retention = d("labels.retention", &self.labels.retention)?;
        if tick < Duration::from_millis(10) || window < tick {
            return Err(format!(
                "[drift] tick = \"{}\" must be at least 10ms and at most window = \"{}\"",
                self.tick, self.window
            ));
        }
        if !(self.psi_threshold > 0.0 && self.psi_threshold.is_finite()) {
            return Err(format!(
                "[drift] psi_threshold = {} must be a positive number (0.1 is moderate, 0.2 large)",
                self.psi_threshold
            ));
        }
        if !(self.ks_pvalue > 0.0 && self.ks_pvalue < 1.0) {
            return Err(format!(
                "[drift] ks_pvalue = {} must be between 0 and 1 (e.g. 0.01)",
                self.ks_pvalue
            ));
        }
        for (field, v) in [
            ("max_rows_per_request", self.max_rows_per_request),
            ("labels.capacity", self.labels.capacity),
            ("labels.window", self.labels.window),
            ("labels.max_rows", self.labels.max_rows),
        ] {
            if v == 0 {
                return Err(format!("[drift] {field} must be >= 1"));
            }
        }
        Ok(DriftSettings {
            enabled: self.enabled,
            window,
            window_requests: self.window_requests,
            tick,
            psi_threshold: self.psi_threshold,
            ks_pvalue: self.ks_pvalue,
            min_window_rows: self.min_window_rows,
            max_rows_per_request: self.max_rows_per_request,
            label_capacity: self.labels.capacity,
            label_retention: retention,
            label_window: self.labels.window,
            label_max_rows: self.labels.max_rows,
        })
    }
}

/// What happens to a request whose features fall outside the reference.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DriftAction {
    /// Answered by the stable version, a copy sent to the challenger.
    #[default]
    Mirror,
    /// Answered by the challenger instead.
    Route,
}

/// `[deployments.drift_routing]`: requests outside the stable version's
/// reference go to a challenger. The challenger must be one of the
/// deployment's `[[deployments.shadow]]` entries (its `fraction` may be 0,
/// so that only drifted traffic reaches it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriftRoutingSpec {
    /// The shadow's alias or version (as written in its shadow entry).
    pub challenger: String,
    /// `mirror` (answered by the stable version, a copy to the challenger)
    /// or `route` (answered by the challenger).
    #[serde(default)]
    pub action: DriftAction,
    /// A feature is outside when below this quantile of the reference (or
    /// above `upper_quantile`).
    #[serde(default = "default_lower")]
    pub lower_quantile: f64,
    /// A feature is outside when above this quantile of the reference (or
    /// below `lower_quantile`).
    #[serde(default = "default_upper")]
    pub upper_quantile: f64,
    /// A row is drifted when at least this many of its features are outside.
    #[serde(default = "default_min_features")]
    pub min_features: usize,
}

fn default_lower() -> f64 {
    0.005
}
fn default_upper() -> f64 {
    0.995
}
fn default_min_features() -> usize {
    1
}

impl DriftRoutingSpec {
    pub fn validate(&self, shadows: &[crate::deployment::ShadowSpec]) -> Result<(), String> {
        let (lo, hi) = (self.lower_quantile, self.upper_quantile);
        if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo >= hi {
            return Err(format!(
                "drift_routing: lower_quantile = {lo} and upper_quantile = {hi} must be in [0, 1] with lower < upper"
            ));
        }
        if self.min_features == 0 {
            return Err("drift_routing: min_features must be >= 1".into());
        }
        if !shadows.iter().any(|s| self.names(s)) {
            return Err(format!(
                "drift_routing: challenger \"{}\" is not one of the deployment's shadows; add [[deployments.shadow]] with alias or version = {:?} (fraction = 0 sends it only drifted traffic)",
                self.challenger, self.challenger
            ));
        }
        Ok(())
    }

    /// Whether a shadow entry is this challenger.
    pub fn names(&self, s: &crate::deployment::ShadowSpec) -> bool {
        s.alias.as_deref() == Some(self.challenger.as_str())
            || s.version.is_some_and(|v| v.to_string() == self.challenger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_gives_the_default_settings() {
        assert_eq!(
            DriftConfig::default().settings(),
            Ok(DriftSettings::default())
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let c = DriftConfig {
            psi_threshold: -1.0,
            ..Default::default()
        };
        assert!(c.settings().unwrap_err().contains("psi_threshold"));
        let c = DriftConfig {
            tick: "2m".into(),
            ..Default::default()
        };
        assert!(c.settings().unwrap_err().contains("tick"));
        let c = DriftConfig {
            window: "soon".into(),
            ..Default::default()
        };
        assert!(c.settings().unwrap_err().contains("window"));
    }
}
