//! Reference profiles of a model version's inputs and outputs, and the
//! bounded, mergeable window sketches live traffic is counted into.
//!
//! A numeric column's profile is a histogram on a fine grid of the
//! reference's own quantiles (`resolution` bins, default 100, numpy linear
//! quantiles, equal edges kept once); the PSI deciles are a subset of that
//! grid, so PSI from a window equals PSI from the raw values. KS from a window
//! is evaluated at the grid's edges only, so it can under-read D by at most
//! the largest bin's share (the bound and a measurement are in the tests).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ChiSquare, KsResult, Result};

/// Format version of [`Profile`] (stored with registry versions).
pub const PROFILE_FORMAT: u32 = 1;

/// The reference profile of one dataset: per column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub format: u32,
    pub rows: u64,
    pub columns: BTreeMap<String, ColumnProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ColumnProfile {
    Numeric(NumericProfile),
    Categorical(CategoricalProfile),
}

/// A numeric column: counts on a fine quantile grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericProfile {
    /// Inner edges of the fine grid (sorted, distinct).
    pub edges: Vec<f64>,
    /// Reference values per fine bin (`edges.len() + 1`).
    pub counts: Vec<u64>,
    /// Inner edges of the PSI bins (deciles by default), a subset of `edges`.
    pub psi_edges: Vec<f64>,
    /// NaN (missing) values seen in the reference.
    pub missing: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// A categorical column: counts per category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalProfile {
    pub counts: BTreeMap<String, u64>,
    pub missing: u64,
}

/// A window of live numeric values counted on a profile's fine grid.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NumericWindow {
    pub counts: Vec<u64>,
    pub missing: u64,
    pub sum: f64,
}

/// A window of live categories; categories not in the reference beyond a
/// bound are counted together as "other" so memory stays bounded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CategoricalWindow {
    pub counts: BTreeMap<String, u64>,
    pub other: u64,
    pub missing: u64,
}

impl NumericProfile {
    /// Profile of values (NaN counts as missing; infinities are values).
    pub fn from_values(values: &[f64], resolution: usize, psi_bins: usize) -> Result<Self> {
        let _ = (values, resolution, psi_bins);
        todo!("helper")
    }
    /// An empty window on this profile's grid.
    pub fn window(&self) -> NumericWindow {
        todo!("helper")
    }
    /// Count one value into a window made by [`NumericProfile::window`].
    pub fn observe(&self, window: &mut NumericWindow, x: f64) {
        let _ = (window, x);
        todo!("helper")
    }
    /// PSI of the window against the reference; `None` for an empty window.
    pub fn psi(&self, window: &NumericWindow) -> Option<f64> {
        let _ = window;
        todo!("helper")
    }
    /// KS from the grid (see the module doc for the approximation); `None`
    /// for an empty window.
    pub fn ks(&self, window: &NumericWindow) -> Option<KsResult> {
        let _ = window;
        todo!("helper")
    }
    /// The approximate reference quantile `q` read off the grid.
    pub fn quantile(&self, q: f64) -> f64 {
        let _ = q;
        todo!("helper")
    }
}

impl NumericWindow {
    /// Add another window on the same grid.
    pub fn merge(&mut self, other: &NumericWindow) {
        let _ = other;
        todo!("helper")
    }
    /// Values counted (not missing).
    pub fn count(&self) -> u64 {
        todo!("helper")
    }
}

impl CategoricalProfile {
    pub fn from_values<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let _ = values.into_iter();
        todo!("helper")
    }
    pub fn window(&self) -> CategoricalWindow {
        todo!("helper")
    }
    pub fn observe(&self, window: &mut CategoricalWindow, value: Option<&str>) {
        let _ = (window, value);
        todo!("helper")
    }
    pub fn psi(&self, window: &CategoricalWindow) -> Option<f64> {
        let _ = window;
        todo!("helper")
    }
    pub fn chisquare(&self, window: &CategoricalWindow) -> Option<ChiSquare> {
        let _ = window;
        todo!("helper")
    }
    pub fn jensenshannon(&self, window: &CategoricalWindow) -> Option<f64> {
        let _ = window;
        todo!("helper")
    }
}
